"""The protection contract: settings decide what a method may read, protect() evaluates and records
everything in the card, and bad requests fail before any work."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from domainlock.artifact import load_artifact
from domainlock.data import DomainData
from domainlock.errors import DomainlockError, UnknownChoiceError
from domainlock.methods import (
    DataAccess,
    DataAccessError,
    Method,
    MethodResult,
    protect,
    register_method,
    unregister_method,
)


def toy(name: str, split: str, n: int = 40, size: int = 32) -> DomainData:
    g = torch.Generator().manual_seed(hash((name, split)) % 1000)
    y = torch.arange(n) % 4
    x = torch.rand(n, 3, size, size, generator=g) * 0.2
    x[:, (0 if name == "src" else 1)] += (y.float() / 4).view(-1, 1, 1)   # class is coded in one channel
    return DomainData(name, split, x.clamp(0, 1), y, 4)


class RecordingLoader:
    def __init__(self, size: int = 32):
        self.calls: list[tuple[str, str]] = []
        self.size = size

    def __call__(self, name, split, root=None):
        self.calls.append((name, split))
        return toy(name, split, size=self.size if name == "big" else 32)


class Colour(nn.Module):
    """Predicts from mean channel intensity: a tiny model whose outputs we can reason about."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head(self.encoder(x))


@dataclass
class ToyHp:
    scale: float = 0.0


class ReadsEverything(Method):
    name = "test-reads-everything"
    settings = ("source-available", "source-free", "data-free")
    Hparams = ToyHp
    needs_target = False

    def validate(self, hp, setting):
        if hp.scale < 0:
            raise DomainlockError(f"scale={hp.scale} is out of range; valid: [0, inf)")

    def run(self, model, access, hp, ctx):
        for read in (lambda: access.source("train"), lambda: access.target("train")):
            try:
                read()
            except DataAccessError as e:
                ctx.log.setdefault("refused", []).append(str(e))
        with torch.no_grad():
            model.head.weight.mul_(hp.scale)
        return MethodResult(model, {"done": True})


@pytest.fixture(autouse=True)
def registered():
    register_method(ReadsEverything)
    yield
    unregister_method(ReadsEverything.name)


def test_access_follows_the_setting():
    for setting, src_ok, tgt_ok in [("source-available", True, True), ("source-free", False, True),
                                    ("data-free", False, False)]:
        loader = RecordingLoader()
        a = DataAccess(setting, "src", "tgt", loader=loader)
        for ok, read in [(src_ok, a.source), (tgt_ok, a.target)]:
            if ok:
                read("train")
            else:
                with pytest.raises(DataAccessError):
                    read("train")
        assert len(loader.calls) == src_ok + tgt_ok
    with pytest.raises(DataAccessError, match="test split"):
        DataAccess("source-available", "src", "tgt", loader=RecordingLoader()).source("test")
    with pytest.raises(UnknownChoiceError):
        DataAccess("mostly-free", "src", "tgt", loader=RecordingLoader())


@pytest.mark.parametrize("setting", ["source-free", "data-free"])
def test_source_loader_never_called_without_source_access(setting):
    loader = RecordingLoader()
    res = protect(Colour(), ReadsEverything.name, source="src", target="tgt", setting=setting,
                  hparams=ToyHp(1.0), loader=loader, device="cpu", progress=False)
    # the only source reads are protect()'s own evaluation on the test split, never the method's
    assert [c for c in loader.calls if c[0] == "src" and c[1] != "test"] == []
    assert all(r.startswith("target:") for r in res.card["protection"]["data_read"])
    assert res.card["protection"]["info"]["refused"]


def test_card_records_everything_and_identity_keeps_accuracy(tmp_path):
    torch.manual_seed(0)
    model = Colour()
    out = tmp_path / "prot"
    res = protect(model, ReadsEverything.name, source="src", target="tgt", eval_domains=["other"],
                  hparams=ToyHp(1.0), loader=RecordingLoader(), device="cpu", out=out, progress=False)
    prot = res.card["protection"]
    assert prot["method"] == ReadsEverything.name and prot["setting"] == "source-available"
    assert prot["data_read"] == ["source:src:train", "target:tgt:train"]
    assert set(prot["accuracy_test"]) == {"src", "tgt", "other"}
    for acc in prot["accuracy_test"].values():
        assert acc["before"] == acc["after"]          # scale 1 changes nothing
    assert prot["st_d"]["retain_s"] == 1.0 and prot["wall_time_s"] >= 0 and prot["hparams"] == {"scale": 1.0}
    reloaded = load_artifact(out, model=Colour())
    x = toy("src", "test").x
    assert torch.equal(reloaded.model(x), res.model(x))
    assert reloaded.card["protection"]["info"]["done"] is True


def test_zeroed_head_gives_sparsity_one_in_head():
    res = protect(Colour(), ReadsEverything.name, source="src", target="tgt", hparams=ToyHp(0.0),
                  loader=RecordingLoader(), device="cpu", progress=False)
    assert res.card["protection"]["sparsity"] == 1.0   # the only weight layer was zeroed


def test_bad_requests_fail_before_any_read(tmp_path):
    loader = RecordingLoader()
    kw = dict(loader=loader, device="cpu", progress=False)
    with pytest.raises(DomainlockError, match="equals source"):
        protect(Colour(), ReadsEverything.name, source="mnist", target="mnist", **kw)
    with pytest.raises(DomainlockError, match="scale=-1"):
        protect(Colour(), ReadsEverything.name, source="src", target="tgt", hparams=ToyHp(-1.0), **kw)
    with pytest.raises(UnknownChoiceError, match="unknown setting"):
        protect(Colour(), ReadsEverything.name, source="src", target="tgt", setting="free", **kw)
    (tmp_path / "exists").mkdir()
    with pytest.raises(DomainlockError, match="--overwrite"):
        protect(Colour(), ReadsEverything.name, source="src", target="tgt", out=tmp_path / "exists", **kw)
    assert loader.calls == []


def test_watermark_target_is_not_the_same_domain():
    res = protect(Colour(), ReadsEverything.name, source="mnist", target="wm:mnist", hparams=ToyHp(1.0),
                  loader=RecordingLoader(), device="cpu", progress=False)
    assert res.card["protection"]["target"] == "wm:mnist"


def test_domains_of_another_image_size_are_refused():
    with pytest.raises(DomainlockError, match="different image sizes"):
        protect(Colour(), ReadsEverything.name, source="src", target="big", loader=RecordingLoader(size=64),
                device="cpu", progress=False)


class ReadsNoTarget(ReadsEverything):
    """Promises (through its hyper-parameters) not to read the target, then tries anyway."""

    name = "test-reads-no-target"
    settings = ("source-available",)
    needs_target = True

    def reads_target(self, hp):
        return hp.scale != 0.5

    def target_refusal(self, hp):
        return "scale 0.5 means source-only"


def test_a_method_that_reads_no_target_gets_it_for_evaluation_only():
    register_method(ReadsNoTarget)
    try:
        loader = RecordingLoader()
        res = protect(Colour(), ReadsNoTarget.name, source="src", target="tgt", hparams=ToyHp(0.5),
                      loader=loader, device="cpu", progress=False)
        prot = res.card["protection"]
        assert [c for c in loader.calls if c[0] == "tgt"] == [("tgt", "test")]   # evaluation, never the method
        assert prot["data_read"] == ["source:src:train"] and prot["target_use"] == "evaluation only"
        assert "scale 0.5 means source-only; the target domain 'tgt' is used for evaluation only" in \
            prot["info"]["refused"][0]
        assert prot["st_d"] is not None
        # needs_target only applies when the hyper-parameters read the target
        protect(Colour(), ReadsNoTarget.name, source="src", hparams=ToyHp(0.5), loader=RecordingLoader(),
                device="cpu", progress=False)
        with pytest.raises(DomainlockError, match="needs --target"):
            protect(Colour(), ReadsNoTarget.name, source="src", hparams=ToyHp(1.0), loader=RecordingLoader(),
                    device="cpu", progress=False)
        res = protect(Colour(), ReadsNoTarget.name, source="src", target="tgt", hparams=ToyHp(1.0),
                      loader=RecordingLoader(), device="cpu", progress=False)
        assert res.card["protection"]["target_use"] == "method and evaluation"
    finally:
        unregister_method(ReadsNoTarget.name)


def test_presets_layer_between_defaults_and_explicit_values(monkeypatch):
    from dataclasses import dataclass

    from domainlock.bench.suite import SuiteError, parse_suite
    from domainlock.cli.main import main

    @dataclass
    class PresetHparams:
        lr: float = 0.1
        steps: int = 5

    class WithPresets(ReadsEverything):
        name = "with-presets"
        Hparams = PresetHparams
        presets = {"paper": {"lr": 0.001, "steps": 500}}

        def validate(self, hp, setting):
            return None

    register_method(WithPresets)
    try:
        assert WithPresets.make_hparams() == PresetHparams(0.1, 5)
        assert WithPresets.make_hparams("paper") == PresetHparams(0.001, 500)
        assert WithPresets.make_hparams("paper", steps=7) == PresetHparams(0.001, 7)
        with pytest.raises(UnknownChoiceError, match="'fast'.*valid choices: paper"):
            WithPresets.make_hparams("fast")
        with pytest.raises(UnknownChoiceError, match="has no presets"):
            ReadsEverything.make_hparams("paper")
        doc = {"name": "p", "domains": ["mnist", "syn"], "methods": [
            {"method": "with-presets", "preset": "paper", "hparams": {"steps": 9}},
            {"method": "with-presets", "name": "plain"}]}
        runs = parse_suite(doc).methods
        assert runs[0].hparams == {"lr": 0.001, "steps": 9} and runs[1].hparams == {"lr": 0.1, "steps": 5}
        doc["methods"][0]["preset"] = "fast"
        with pytest.raises(SuiteError, match=r"methods\[0\]\.preset: unknown preset .*'fast'"):
            parse_suite(doc)
        # the CLI: --preset, then the flags given beside it
        class Captured(Exception):
            pass

        def fake_protect(*args, hparams, **kwargs):
            raise Captured(hparams)

        monkeypatch.setattr("domainlock.methods.protect", fake_protect)
        for argv, lr, steps in [([], 0.1, 5), (["--preset", "paper"], 0.001, 500),
                                (["--preset", "paper", "--steps", "3"], 0.001, 3)]:
            with pytest.raises(Captured) as got:
                main(["protect", "--method", "with-presets", "--model", "x", "--source", "src", *argv])
            assert got.value.args[0] == PresetHparams(lr, steps)
    finally:
        unregister_method(WithPresets.name)
