"""``domainlock import``: a network defined outside the registry (a builder file the test writes) becomes a
standard artifact that every verb takes; its builder is hashed and re-checked, its weights never unpickled."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from domainlock.artifact import load_artifact
from domainlock.cli.main import main
from domainlock.errors import DomainlockError
from domainlock.importing import import_model, read_state_dict
from domainlock.models import build_model, split_model
from domainlock.models.imported import InputAdapter

pytestmark = pytest.mark.usefixtures("one_thread")

#: a small CNN the registry does not know: its own normalization module (buffers) and its own BatchNorm,
#: global pooling so any input size works; ``SETSTATE`` records any unpickling of a ``Net``
BUILDER = textwrap.dedent('''
    import torch
    from torch import nn

    SETSTATE = []


    class OwnNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("m", torch.tensor(0.25))
            self.register_buffer("s", torch.tensor(2.0))

        def forward(self, x):
            return (x - self.m) / self.s


    class Net(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.features = nn.Sequential(OwnNorm(), nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1))
            self.classifier = nn.Linear(4, classes)

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

        def __setstate__(self, state):
            SETSTATE.append(1)
            super().__setstate__(state)


    def make_model():
        return Net()
''')


def _user_net(builder: Path):
    """The user's network, built the way the user would (their own module, not through domainlock)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"user_{builder.parent.name}", builder)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[mod.__name__] = mod   # importable, so a plain unpickler could rebuild a pickled Net
    return mod


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A builder file, trained-looking weights (non-trivial BatchNorm statistics) as .safetensors and .pt."""
    d = tmp_path_factory.mktemp("user")
    builder = d / "mynet.py"
    builder.write_text(BUILDER)
    mod = _user_net(builder)
    torch.manual_seed(0)
    net = mod.make_model()
    with torch.no_grad():
        bn = net.features[2]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    sd = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(d / "w.safetensors"))
    torch.save(net.state_dict(), d / "w.pt")
    return {"dir": d, "builder": builder, "net": net.eval(), "mod": mod}


ADAPT = ["--input-size", "28", "--grayscale", "--mean", "0.5", "--std", "0.25"]


def flags(user, weights="w.safetensors", *extra, out=None):
    return ["import", "--builder", f"{user['builder']}:make_model", "--weights", str(user["dir"] / weights),
            "--encoder", "features", "--head", "classifier", "--grayscale", *extra,
            *(["--out", str(out)] if out is not None else [])]


def run(argv, capsys, data_root=None):
    rc = main(list(argv) + (["--data-root", str(data_root)] if data_root is not None else []))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("domainlock: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def imported(user, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "mine"
    assert main(flags(user, "w.safetensors", *ADAPT, "--domain", "uci-digits", out=out)) == 0
    return out


# ------------------------------------------------------------------------------------- outputs and card
def test_outputs_are_the_users_network_on_adapted_inputs(user, imported):
    art = load_artifact(imported)
    # hand-checkable: a constant image R=1, G=0.5, B=0 at 4 px -> 28 px (still constant) -> grey
    # 0.299 + 0.587 * 0.5 = 0.5925 -> (0.5925 - 0.5) / 0.25 = 0.37: the user's network on a constant 0.37 image
    x = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), 0.5), torch.zeros(4, 4)])[None]
    with torch.no_grad():
        assert torch.allclose(art.model.encoder.adapt(x), torch.full((1, 1, 28, 28), 0.37), atol=1e-6)
        assert torch.allclose(art.model(x), user["net"](torch.full((1, 1, 28, 28), 0.37)), atol=1e-6)
        # any batch of project images: resize (bilinear, antialiased), luma, normalize, then the user's network
        xs = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        small = F.interpolate(xs, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        grey = 0.299 * small[:, :1] + 0.587 * small[:, 1:2] + 0.114 * small[:, 2:]
        assert torch.allclose(art.model(xs), user["net"]((grey - 0.5) / 0.25), atol=1e-5)
    card = art.card
    assert card["arch"] == "imported" and card["num_classes"] == 10 and card["domain"] == "uci-digits"
    kw = card["arch_kwargs"]
    assert kw["builder"] == str(user["builder"].resolve()) and kw["builder_callable"] == "make_model"
    assert kw["builder_sha256"] == hashlib.sha256(user["builder"].read_bytes()).hexdigest()
    assert card["import"]["input"].startswith("32 px RGB in [0, 1] -> 28 px") and "grey" in card["import"]["input"]
    assert card["normalization"] == {"mean": [0.5], "std": [0.25]}


def test_the_split_is_the_users_and_the_adapter_trains_nothing(user, imported):
    model = load_artifact(imported).model
    enc, head = split_model(model)
    assert isinstance(enc[0], InputAdapter) and not list(enc[0].parameters())
    assert isinstance(head, torch.nn.Linear) and head.out_features == 10
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in user["net"].parameters())


def test_pt_state_dict_gives_the_same_model(user, imported, tmp_path):
    art = import_model(f"{user['builder']}:make_model", user["dir"] / "w.pt", encoder="features", head="classifier",
                       input_size=28, grayscale=True, mean=[0.5], std=[0.25], out=tmp_path / "pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_artifact(tmp_path / "pt").model(x), load_artifact(imported).model(x))
    assert art.card["import"]["weights"].endswith("w.pt")


def test_pickled_whole_model_is_refused_and_never_unpickled(user, tmp_path, capsys, monkeypatch):
    torch.save(user["net"], tmp_path / "full.pt")   # a whole pickled model, not a state dict

    def boom(*a, **k):
        raise AssertionError("the standard unpickler was used")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    weights = tmp_path / "full.pt"
    rc, _, err = run(["import", "--builder", f"{user['builder']}:make_model", "--weights", str(weights),
                      "--encoder", "features", "--head", "classifier", "--out", str(tmp_path / "o")], capsys)
    line = one_line_error(err)
    assert rc == 2 and "full.pt" in line and "never unpickles" in line and "state_dict()" in line
    assert not (tmp_path / "o").exists()
    assert user["mod"].SETSTATE == []   # no Net was rebuilt from the file


# ------------------------------------------------------------------------------- the builder's digest
def test_changed_or_missing_builder_is_refused(user, imported, tmp_path, capsys, data_root):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(user["dir"], d)
    art = import_model(f"{d / 'mynet.py'}:make_model", d / "w.safetensors", encoder="features",
                       head="classifier", grayscale=True, out=tmp_path / "a")
    want = art.card["arch_kwargs"]["builder_sha256"]
    (d / "mynet.py").write_text(BUILDER + "\n# edited\n")
    rc, _, err = run(["eval", "--model", str(tmp_path / "a"), "--domains", "uci-digits"], capsys, data_root)
    line = one_line_error(err)
    now = hashlib.sha256((d / "mynet.py").read_bytes()).hexdigest()
    assert rc == 2 and str(d / "mynet.py") in line and want in line and now in line and "changed" in line
    (d / "mynet.py").unlink()
    with pytest.raises(DomainlockError, match="missing"):
        load_artifact(tmp_path / "a")


# ------------------------------------------------------------------------- one-line errors, nothing written
@pytest.mark.parametrize("extra, needle", [
    (["--encoder", "backbone"], "no submodule 'backbone' to use as the encoder; its children are: features"),
    (["--head", "fc"], "no submodule 'fc' to use as the head"),
    (["--head", "features.4"], "the head ('features.4') returns [1, 1] on a batch of 2"),
    (["--mean", "0.5,0.5,0.5"], "--mean has 3 values but the network takes 1 channel (--grayscale); give 1"),
    (["--std", "0.2", "0.3"], "--std has 2 values but the network takes 1 channel"),
    (["--std", "0"], "--std [0.0]: every value must be > 0"),
    (["--mean", "a,b,c"], "--mean must be numbers"),
    (["--num-classes", "5"], "gives 10 outputs, not the --num-classes 5"),
    (["--input-size", "0"], "--input-size=0 is out of range"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_flags_are_one_line_errors(user, tmp_path, capsys, extra, needle):
    rc, _, err = run(flags(user, "w.safetensors", out=tmp_path / "o") + extra, capsys)   # the last flag counts
    line = one_line_error(err)
    assert rc == 2 and needle in line, line
    assert not (tmp_path / "o").exists()


def _builder(tmp_path: Path, body: str, name: str = "b.py") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


@pytest.mark.parametrize("spec, needle", [
    ("{d}/mynet.py", "expected FILE.py:CALLABLE"),
    ("{d}/nope.py:make_model", "is missing"),
    ("{d}/mynet.py:make_modle", "defines no callable 'make_modle'; callables it defines: Net, OwnNorm, make_model"),
    ("{d}/w.pt:make_model", "is not a Python file"),
], ids=["no callable", "no file", "misspelt", "not python"])
def test_bad_builder_spec(user, tmp_path, capsys, spec, needle):
    rc, _, err = run(["import", "--builder", spec.format(d=user["dir"]), "--weights", str(user["dir"] / "w.pt"),
                      "--encoder", "features", "--head", "classifier", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and needle in one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_builder_that_fails_or_returns_no_module(tmp_path, user, capsys):
    for body, needle in (("raise ImportError('no such package: fancylayers')\n", "failed to run: ImportError"),
                         ("def make_model():\n    return 3\n", "returned a int, not a torch.nn.Module"),
                         ("def make_model():\n    raise ValueError('bad')\n", "raised ValueError: bad")):
        b = _builder(tmp_path, body, f"b{abs(hash(body))}.py")
        rc, _, err = run(["import", "--builder", f"{b}:make_model", "--weights", str(user["dir"] / "w.pt"),
                          "--encoder", "features", "--head", "classifier", "--out", str(tmp_path / "o")], capsys)
        assert rc == 2 and needle in one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_builder_imports_its_sibling_modules(tmp_path):
    _builder(tmp_path, """
        from torch import nn

        class Head(nn.Linear):
            pass
    """, "layers.py")
    b = _builder(tmp_path, """
        from torch import nn
        from layers import Head

        def make_model(num_classes=10):
            from layers import Head as LazyHead   # imported when called, not only when the file runs
            net = nn.Module()
            net.features = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1))
            net.classifier = LazyHead(2, num_classes)
            return net
    """, "sib.py")
    ns: dict = {}
    sys.path.insert(0, str(tmp_path))
    try:
        exec(compile(b.read_text(), str(b), "exec"), ns)
        torch.save(ns["make_model"](num_classes=4).state_dict(), tmp_path / "w.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("layers", None)
    art = import_model(f"{b}:make_model", tmp_path / "w.pt", encoder="features", head="classifier", num_classes=4,
                       out=tmp_path / "o")
    assert art.card["num_classes"] == 4 and art.card["arch_kwargs"]["builder_kwargs"] == {"num_classes": 4}
    assert any("could not compare" in n for n in art.notices)   # an nn.Module() container has no forward
    sys.modules.pop("layers", None)
    assert load_artifact(tmp_path / "o").model.head.out_features == 4
    assert str(tmp_path) not in sys.path


def test_state_dict_of_another_network_names_the_keys(user, tmp_path, capsys):
    sd = {k: v for k, v in user["net"].state_dict().items() if k != "classifier.bias"}
    sd["extra.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "other.pt")
    rc, _, err = run(["import", "--builder", f"{user['builder']}:make_model", "--weights", str(tmp_path / "other.pt"),
                      "--encoder", "features", "--head", "classifier", "--out", str(tmp_path / "o")], capsys)
    line = one_line_error(err)
    assert rc == 2 and "1 missing (first 'classifier.bias')" in line and "1 unexpected (first 'extra.weight')" in line
    torch.save({"classifier.weight": torch.zeros(3, 4)}, tmp_path / "shape.pt")
    with pytest.raises(DomainlockError, match="another shape"):
        import_model(f"{user['builder']}:make_model", tmp_path / "shape.pt", encoder="features", head="classifier",
                     grayscale=True)


def test_forward_that_differs_from_encoder_then_head_is_refused(tmp_path, user):
    b = _builder(tmp_path, '''
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))
                self.classifier = nn.Linear(4, 10)

            def forward(self, x):   # a ReLU between the two that head(encoder(x)) would lose
                return self.classifier(torch.relu(torch.flatten(self.features(x), 1)))

        def make_model():
            return Net()
    ''')
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(b.read_text(), str(b), "exec"), ns)
    torch.save(ns["make_model"]().state_dict(), tmp_path / "w.pt")
    with pytest.raises(DomainlockError, match="differs from the network's own forward"):
        import_model(f"{b}:make_model", tmp_path / "w.pt", encoder="features", head="classifier")


def test_checkpoints_and_dataparallel_prefixes_are_read(user, tmp_path):
    sd = user["net"].state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ckpt.pth")
    art = import_model(f"{user['builder']}:make_model", tmp_path / "ckpt.pth", encoder="features", head="classifier",
                       grayscale=True)
    assert any("under its key 'state_dict'" in n for n in art.notices)
    assert any("'module.' prefix" in n for n in art.notices)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DomainlockError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(DomainlockError, match="valid: .safetensors, .pt, .pth"):
        read_state_dict(tmp_path / "w.bin")


def test_overwrite_rules(user, tmp_path, capsys):
    out = tmp_path / "o"
    assert run(flags(user, out=out), capsys)[0] == 0
    before = (out / "card.json").read_text()
    rc, _, err = run(flags(user, out=out), capsys)   # exists, no --overwrite
    assert rc == 2 and "already exists; pass --overwrite" in one_line_error(err)
    rc, _, err = run(flags(user, "w.safetensors", "--head", "nope", "--overwrite", out=out), capsys)
    assert rc == 2 and (out / "card.json").read_text() == before   # a failed import leaves the old one
    assert run(flags(user, "w.safetensors", *ADAPT, "--overwrite", out=out), capsys)[0] == 0
    assert json.loads((out / "card.json").read_text())["arch_kwargs"]["input_size"] == 28
    rc, _, err = run(flags(user, "w.safetensors", "--overwrite", out=user["dir"]), capsys)   # would delete inputs
    assert rc == 2 and "holds the input" in one_line_error(err)
    assert user["builder"].is_file()


def test_imported_is_not_a_choice_by_name(capsys, tmp_path):
    with pytest.raises(DomainlockError, match="built from an artifact written by `domainlock import`"):
        build_model("imported")
    rc, _, err = run(["train", "--domain", "uci-digits", "--arch", "imported", "--out", str(tmp_path / "o")], capsys)
    line = one_line_error(err)
    assert rc == 2 and "unknown arch 'imported'" in line and "digitnet" in line


# ----------------------------------------------------------------------------- every verb, end to end
def test_eval_protect_attack_on_an_imported_model(user, imported, tmp_path, capsys, data_root):
    rc, out, err = run(["eval", "--model", str(imported), "--domains", "uci-digits", "--json", "-q"], capsys,
                       data_root)
    assert rc == 0, err
    acc = json.loads(out)["results"]["uci-digits"]["accuracy"]
    prot = tmp_path / "prot"
    rc, out, err = run(["protect", "--method", "magnitude", "--model", str(imported), "--source", "uci-digits",
                        "--sparsity", "0.5", "--finetune-epochs", "0", "--out", str(prot), "--json", "-q"],
                       capsys, data_root)
    assert rc == 0, err
    card = json.loads(out)["card"]
    assert card["protection"]["accuracy_test"]["uci-digits"]["before"] == pytest.approx(acc)
    again = load_artifact(prot)   # the protected artifact keeps the builder reference and loads again
    assert again.card["arch"] == "imported"
    assert again.card["arch_kwargs"] == load_artifact(imported).card["arch_kwargs"]
    assert float((again.model.head.weight == 0).float().mean()) > 0.2
    rc, out, err = run(["attack", "finetune", "--model", str(prot), "--target", "uci-digits", "--n", "20",
                        "--steps", "3", "--epochs", "1", "--scratch", "--json", "-q"], capsys, data_root)
    assert rc == 0, err
    assert {r["start"] for r in json.loads(out)["results"]} == {"model", "scratch"}
    rc, out, err = run(["attack", "mask-reset", "--model", str(prot), "--target", "uci-digits", "--n", "20",
                        "--steps", "3", "--epochs", "1", "--json", "-q"], capsys, data_root)
    assert rc == 0, err
    assert json.loads(out)["info"]["reset_from"] == "arch"   # a fresh init from the user's builder
    rc, out, err = run(["slc", "--model", str(prot), "--target", "uci-digits", "--shots", "10,20", "--steps", "2",
                        "--epochs", "1", "--no-plot", "--no-cache", "--json", "-q"], capsys, data_root)
    assert rc == 0, err
    rc, out, err = run(["verify", "--model", str(prot), "--owner-data", "uci-digits", "--json", "-q"], capsys,
                       data_root)
    assert rc == 0, err


def test_bench_on_a_suite_that_names_the_imported_model(imported, tmp_path, capsys, data_root):
    suite = tmp_path / "mine.yaml"
    suite.write_text(textwrap.dedent(f"""
        name: mine
        arch: imported
        domains: [uci-digits, mnist]
        pairs: [uci-digits->mnist]
        sources: {{uci-digits: {imported}}}
        methods:
          - {{method: magnitude, hparams: {{sparsity: 0.5, finetune_epochs: 0}}}}
        attacks:
          - {{name: finetune, kind: finetune, params: {{shots: [10, 20], protocol: {{steps: 2, epochs: 1}}}}}}
    """))
    rc, out, err = run(["bench", "--suite", str(suite), "--out", str(tmp_path / "b"), "--json", "-q"], capsys,
                       data_root)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["cells"] == doc["done"] == 4 and doc["failed"] == 0   # scratch built from the user's builder
    plain = tmp_path / "plain.yaml"
    plain.write_text(suite.read_text().replace(f"sources: {{uci-digits: {imported}}}\n", ""))
    rc, _, err = run(["bench", "--suite", str(plain), "--out", str(tmp_path / "b2")], capsys, data_root)
    line = one_line_error(err)
    assert rc == 2 and "--source-model uci-digits=ARTIFACT" in line and not (tmp_path / "b2").exists()
    rc, _, err = run(["bench", "--suite", str(plain), "--out", str(tmp_path / "b3"), "--dry-run",
                      "--source-model", f"uci-digits={imported}"], capsys, data_root)
    assert rc == 0, err
