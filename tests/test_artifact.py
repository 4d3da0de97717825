"""Model artifacts: round trip, verification (hash, truncation, missing files, wrong arch), no pickle."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from domainlock.artifact import (
    CARD_FILE,
    WEIGHTS_FILE,
    load_artifact,
    read_card,
    save_artifact,
    update_card,
)
from domainlock.errors import ArtifactError, OutputExistsError
from domainlock.models import build_model, wrap_model
from domainlock.utils.io import sha256_file


def _model(arch="digitnet", **kw):
    torch.manual_seed(0)
    m = build_model(arch, **kw)
    # move BN statistics away from their defaults so the round trip checks buffers too
    m.train()
    with torch.no_grad():
        m(torch.rand(8, 3, 32, 32))
    return m.eval()


@pytest.fixture()
def saved(tmp_path) -> tuple[Path, nn.Module]:
    m = _model(width=8, feat_dim=16)
    card = {"domain": "mnist", "seed": 3, "hparams": {"lr": 0.1}, "metrics": {"accuracy": {"test": 0.5}},
            "provenance": {"note": "unit test"}}
    return save_artifact(tmp_path / "art", m, card), m


def _rewrite_card(path: Path, **changes) -> None:
    card = json.loads((path / CARD_FILE).read_text())
    card.update(changes)
    (path / CARD_FILE).write_text(json.dumps(card))


def test_round_trip_gives_identical_outputs(saved):
    path, m = saved
    art = load_artifact(path)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(art.model(x), m(x))
    assert not art.model.training
    assert art.path == path and art.arch == "digitnet" and art.num_classes == 10
    card = art.card
    for key in ("format_version", "arch", "arch_kwargs", "num_classes", "normalization", "domain", "seed",
                "hparams", "metrics", "domainlock_version", "torch_version", "sha256", "created_utc"):
        assert key in card, key
    assert card["arch_kwargs"] == {"width": 8, "feat_dim": 16}
    assert card["sha256"] == sha256_file(path / WEIGHTS_FILE)
    assert card["provenance"] == {"note": "unit test"} and card["seed"] == 3
    assert card["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert read_card(path) == card
    assert sorted(p.name for p in path.iterdir()) == [CARD_FILE, WEIGHTS_FILE]


def test_existing_output_needs_overwrite(saved):
    path, m = saved
    with pytest.raises(OutputExistsError, match="--overwrite"):
        save_artifact(path, m, {})
    m2 = _model("digitnet", width=4)
    save_artifact(path, m2, {"domain": "syn"}, overwrite=True)
    assert load_artifact(path).card["domain"] == "syn"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_tampered_byte_is_a_hash_mismatch(saved):
    path, _ = saved
    w = path / WEIGHTS_FILE
    data = bytearray(w.read_bytes())
    data[-5] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="hash mismatch"):
        load_artifact(path)


def test_truncated_weights(saved):
    path, _ = saved
    w = path / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="truncated"):
        load_artifact(path)


def test_corrupt_safetensors_with_matching_hash(saved):
    path, _ = saved
    w = path / WEIGHTS_FILE
    w.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" + b"\x00" * 64)
    _rewrite_card(path, sha256=sha256_file(w), size_bytes=w.stat().st_size)
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        load_artifact(path)


def test_missing_folder_and_files(tmp_path, saved):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nope")
    path, _ = saved
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match=WEIGHTS_FILE):
        load_artifact(path)
    (path / CARD_FILE).unlink()
    with pytest.raises(ArtifactError, match=CARD_FILE):
        load_artifact(path)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ArtifactError, match="not a directory"):
        load_artifact(f)


def test_bad_card(saved):
    path, _ = saved
    (path / CARD_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(path)
    (path / CARD_FILE).write_text(json.dumps({"arch": "digitnet"}))
    with pytest.raises(ArtifactError, match="not a domainlock artifact"):
        load_artifact(path)


def test_weights_of_another_arch(saved):
    path, _ = saved
    _rewrite_card(path, arch="vgg11", arch_kwargs={})  # sha256 still matches the (digitnet) weights
    with pytest.raises(ArtifactError, match="holds a digitnet state dict, not vgg11"):
        load_artifact(path)


def test_unknown_arch_lists_valid_ones(saved):
    path, _ = saved
    _rewrite_card(path, arch="mystery")
    with pytest.raises(ArtifactError, match="'mystery'.*valid archs: .*digitnet.*resnet18"):
        load_artifact(path)


def test_expect_arch(saved):
    path, _ = saved
    assert load_artifact(path, expect_arch="digitnet").arch == "digitnet"
    with pytest.raises(ArtifactError, match="not the expected resnet18"):
        load_artifact(path, expect_arch="resnet18")


def test_loading_never_unpickles(saved, monkeypatch):
    path, m = saved

    def boom(*a, **k):
        raise AssertionError("unpickling is not allowed")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    art = load_artifact(path)
    assert torch.equal(art.model.head.weight, m.head.weight)
    assert (path / WEIGHTS_FILE).read_bytes()[8:9] == b"{"  # a safetensors JSON header, not a pickle


class UserNet(nn.Module):
    def __init__(self, hidden=6):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, hidden, 3), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def test_user_module_round_trip(tmp_path):
    torch.manual_seed(0)
    m = wrap_model(UserNet(), "features", "classifier")
    path = save_artifact(tmp_path / "user", m, {"domain": "mnist"})
    card = read_card(path)
    assert card["arch"] == "custom:UserNet" and card["num_classes"] == 10
    with pytest.raises(ArtifactError, match="pass model="):
        load_artifact(path)
    fresh = wrap_model(UserNet(), "features", "classifier")
    art = load_artifact(path, model=fresh)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(art.model(x), m.eval()(x))
    with pytest.raises(ArtifactError, match="not custom:UserNet"):
        load_artifact(path, model=wrap_model(UserNet(hidden=5), "features", "classifier"))
    # a plain (unwrapped) module works too
    plain = UserNet()
    path2 = save_artifact(tmp_path / "plain", plain, {})
    assert load_artifact(path2, model=UserNet()).card["arch"] == "custom:UserNet"


def test_update_card_merges_sections(saved):
    path, _ = saved
    card = update_card(path, {"metrics": {"accuracy": {"syn": 0.1}}, "protection": {"method": "map"}})
    assert card["metrics"]["accuracy"] == {"test": 0.5, "syn": 0.1}
    assert read_card(path)["protection"] == {"method": "map"}
    load_artifact(path)  # still verifies
    with pytest.raises(ArtifactError, match="cannot change sha256"):
        update_card(path, {"sha256": "0" * 64})


def test_channels_last_model_saves_contiguous(tmp_path):
    m = _model(width=4).to(memory_format=torch.channels_last)
    path = save_artifact(tmp_path / "cl", m, {})
    art = load_artifact(path)
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        assert torch.allclose(art.model(x), m(x))


def test_other_arch_is_identified_by_shapes_alone(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_artifact(tmp_path / "a", _model("digitnet"), {})
    w = path / WEIGHTS_FILE
    save_file(load_file(str(w)), str(w))  # drop the metadata that names the arch
    _rewrite_card(path, arch="resnet18", sha256=sha256_file(w), size_bytes=w.stat().st_size)
    with pytest.raises(ArtifactError, match="holds a digitnet state dict, not resnet18"):
        load_artifact(path)
