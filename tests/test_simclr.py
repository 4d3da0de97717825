"""SimCLR source models: the NT-Xent loss by hand, its invariants, a tiny end-to-end run to a loadable
artifact whose encoder never needed labels, output checks and config validation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import domainlock.training.loop as loop
import domainlock.training.simclr as simclr
from domainlock.artifact import load_artifact
from domainlock.data import DomainData
from domainlock.errors import DomainlockError, OutputExistsError, TrainingDivergedError, UnknownChoiceError
from domainlock.models import build_model
from domainlock.training.simclr import (
    ProbeConfig,
    SimCLRConfig,
    get_view_augment,
    linear_probe,
    nt_xent,
    pretrain_simclr,
    train_simclr_source,
)
from domainlock.utils.runtime import seed_everything
from toys import TINY_ARCH, square_split


# ------------------------------------------------------------------------------------------------ loss
def test_nt_xent_matches_a_hand_computed_value():
    # views: a=(1,0) with c=(0.6,0.8); b=(0,1) with d=(0,2) (normalised to (0,1)). tau = 0.5, so s = 2 cos.
    # cos: ab=0, ac=0.6, ad=0, bc=0.8, bd=1, cd=0.8.
    #   l_a = -log(e^1.2 / (e^0 + e^1.2 + e^0))      l_b = -log(e^2 / (e^0 + e^1.6 + e^2))
    #   l_c = -log(e^1.2 / (e^1.2 + e^1.6 + e^1.6))  l_d = -log(e^2 / (e^0 + e^2 + e^1.6))
    e = math.exp
    l_a = math.log(2 + e(1.2)) - 1.2
    l_b = math.log(1 + e(1.6) + e(2)) - 2
    l_c = math.log(e(1.2) + 2 * e(1.6)) - 1.2
    want = (l_a + 2 * l_b + l_c) / 4  # l_d == l_b
    assert want == pytest.approx(0.758885, abs=1e-6)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.6, 0.8], [0.0, 2.0]])
    assert float(nt_xent(z1, z2, 0.5)) == pytest.approx(want, abs=1e-5)
    # tau = 1 with identical orthogonal views: every anchor sees e^1 against e^1 + 2 e^0
    eye = torch.eye(2)
    assert float(nt_xent(eye, eye, 1.0)) == pytest.approx(math.log(e(1) + 2) - 1, abs=1e-6)


def test_nt_xent_is_symmetric_in_the_views_and_rewards_alignment():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    for tau in (0.1, 0.5, 1.0):
        assert float(nt_xent(z1, z2, tau)) == pytest.approx(float(nt_xent(z2, z1, tau)), rel=1e-6)
        aligned = float(nt_xent(z1, 3.0 * z1, tau))  # same direction: only the norm differs
        assert aligned < float(nt_xent(z1, z2, tau))
    # batch order does not matter (the same pairs, permuted together)
    perm = torch.randperm(16, generator=g)
    assert float(nt_xent(z1[perm], z2[perm], 0.5)) == pytest.approx(float(nt_xent(z1, z2, 0.5)), rel=1e-6)
    with pytest.raises(DomainlockError, match="same shape"):
        nt_xent(z1, z2[:4], 0.5)


def test_view_augment_is_label_free_and_random_per_view():
    x = torch.rand(8, 3, 32, 32)
    aug = get_view_augment("strong")
    assert get_view_augment("simclr-crop").steps[0][0] == "affine"
    g = torch.Generator().manual_seed(0)
    v1, v2 = aug(x, g), aug(x, g)
    assert v1.shape == x.shape and 0 <= float(v1.min()) and float(v1.max()) <= 1
    assert not torch.equal(v1, v2)
    with pytest.raises(UnknownChoiceError, match="unknown augment 'wild'"):
        get_view_augment("wild")


# ---------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def splits():
    return {"train": square_split(64, "train", 0), "val": square_split(32, "val", 1),
            "test": square_split(32, "test", 2)}


def _cfg(**kw):
    base = {"epochs": 2, "batch_size": 16, "lr": 3e-3, "seed": 5}
    base.update(kw)
    return SimCLRConfig(**base)


PROBE = ProbeConfig(probe_l2="1e-4,1e-2", probe_max_iter=50, probe_views=2)


def test_tiny_run_writes_a_loadable_simclr_artifact(splits, tmp_path):
    out = tmp_path / "ssl"
    art = train_simclr_source("toy", "digitnet", _cfg(), PROBE, out=out, splits=splits, progress=False,
                              device="cpu", arch_kwargs=TINY_ARCH)
    loaded = load_artifact(out)
    card = loaded.card
    assert card["arch"] == "digitnet" and card["arch_kwargs"] == TINY_ARCH and card["num_classes"] == 4
    tr = card["training"]
    assert tr["recipe"] == "simclr" and tr["encoder_saw_labels"] is False
    assert tr["simclr"]["epochs"] == 2 and tr["simclr"]["temperature"] == 0.5
    assert tr["linear_probe"]["probe_l2"] == "1e-4,1e-2" and tr["wall_s"] > 0 and tr["device"] == "cpu"
    assert set(tr["accuracy"]) == {"train", "val", "test"} == set(card["metrics"]["accuracy"])
    assert card["hparams"]["recipe"] == "simclr" and card["seed"] == 5 and card["domain"] == "toy"
    assert len(card["metrics"]["ssl_history"]) == 2
    assert card["metrics"]["linear_probe"]["l2"] in (1e-4, 1e-2)
    # the linear head on the frozen encoder learns the easy toy task
    assert card["metrics"]["accuracy"]["test"] > 0.5
    x = splits["test"].x
    with torch.no_grad():
        assert torch.equal(loaded.model(x), art.model.to("cpu").eval()(x))
    # pre-training moved the encoder away from its (seeded) initialisation
    seed_everything(5)
    init = build_model("digitnet", num_classes=4, **TINY_ARCH)
    changed = [k for k, v in init.encoder.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, loaded.model.encoder.state_dict()[k])]
    assert any(k.endswith("weight") for k in changed)


def test_pretraining_never_reads_labels():
    images_only = SimpleNamespace(x=square_split(32, "train", 0).x)  # no .y at all
    enc = build_model("digitnet", num_classes=4, **TINY_ARCH).encoder
    summary = pretrain_simclr(enc, images_only, _cfg(epochs=1), device="cpu", progress=False)
    assert summary["train_images"] == 32 and summary["history"][0]["loss"] > 0
    assert 0 <= summary["history"][0]["pos_top1"] <= 1


def test_seeded_pretraining_is_bit_identical(splits):
    def run(seed):
        seed_everything(seed)
        enc = build_model("digitnet", num_classes=4, **TINY_ARCH).encoder
        pretrain_simclr(enc, splits["train"], _cfg(epochs=1, seed=seed, limit_train=32), device="cpu",
                        progress=False)
        return enc.state_dict()

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_linear_probe_picks_l2_on_val_and_leaves_the_encoder_alone(splits):
    model = build_model("digitnet", num_classes=4, **TINY_ARCH)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head, info = linear_probe(model.encoder, splits["train"], splits["val"], PROBE)
    assert isinstance(head, nn.Linear) and head.weight.shape == (4, 16)
    assert info["selected_on"] == "val" and set(info["tried"]) == {"0.0001", "0.01"}
    assert info["train_features"] == 64 * (1 + PROBE.probe_views)
    _, clean = linear_probe(model.encoder, splits["train"], None, ProbeConfig(probe_views=0, probe_max_iter=5))
    assert clean["train_features"] == 64 and clean["selected_on"] == "train"
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())


def test_nan_loss_raises_and_writes_nothing(splits, tmp_path):
    bad = dict(splits)
    x = splits["train"].x.clone()
    x[:] = float("nan")
    bad["train"] = DomainData("toy", "train", x, splits["train"].y, 4)
    with pytest.raises(TrainingDivergedError, match="SimCLR loss became nan at epoch 1 step 1"):
        train_simclr_source("toy", "digitnet", _cfg(augment="none"), PROBE, out=tmp_path / "o", splits=bad,
                            progress=False, device="cpu", arch_kwargs=TINY_ARCH)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_mlp_head_fail_before_training(tmp_path, monkeypatch):
    out = tmp_path / "exists"
    out.mkdir()

    def no(*a, **k):
        raise AssertionError("must fail before loading data or training")

    monkeypatch.setattr(loop, "_load_splits", no)  # train_simclr_source loads through loop
    monkeypatch.setattr(simclr, "pretrain_simclr", no)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        train_simclr_source("mnist", "digitnet", out=out, progress=False)
    with pytest.raises(UnknownChoiceError, match="unknown arch 'nonet'"):
        train_simclr_source("mnist", "nonet", progress=False)
    tiny = {"train": square_split(8, "train", 0)}
    with pytest.raises(DomainlockError, match="not a single Linear"):
        train_simclr_source("toy", "vgg11", splits=tiny, progress=False, device="cpu")


@pytest.mark.parametrize("kw, match", [
    ({"temperature": 0.0}, r"^temperature=0\.0 is out of range"),
    ({"epochs": 0}, r"^epochs=0 is out of range"),
    ({"lr": -1.0}, r"^lr=-1\.0 is out of range"),
    ({"batch_size": 1}, r"^batch_size=1 is out of range"),
    ({"proj_dim": 0}, r"^proj_dim=0 is out of range"),
    ({"augment": "wild"}, r"^unknown augment 'wild'; valid choices: .*simclr-crop"),
    ({"optimizer": "lion"}, r"^unknown optimizer 'lion'"),
])
def test_bad_ssl_config_is_one_line_naming_the_value(kw, match):
    with pytest.raises(DomainlockError, match=match) as e:
        SimCLRConfig(**kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw, match", [
    ({"probe_l2": "-1"}, r"^probe_l2=-1\.0 is out of range"),
    ({"probe_l2": "a,b"}, r"^probe_l2='a,b' is not a comma-separated list"),
    ({"probe_l2": ""}, r"^probe_l2='' names no L2 strength"),
    ({"probe_max_iter": 0}, r"^probe_max_iter=0 is out of range"),
    ({"probe_views": -1}, r"^probe_views=-1 is out of range"),
    ({"probe_augment": "wild"}, r"^unknown probe_augment 'wild'"),
])
def test_bad_probe_config_is_one_line_naming_the_value(kw, match):
    with pytest.raises(DomainlockError, match=match):
        ProbeConfig(**kw)


def test_every_config_field_documents_itself_as_a_flag():
    import argparse
    import dataclasses

    from domainlock.utils.hparams import add_dataclass_args, dataclass_from_args

    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, SimCLRConfig, prefix="ssl_")
    add_dataclass_args(parser, ProbeConfig)
    for cls in (SimCLRConfig, ProbeConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f.name
    args = parser.parse_args(["--temperature", "0.1", "--epochs", "3", "--probe-views", "0"])
    cfg, probe = dataclass_from_args(SimCLRConfig, args, prefix="ssl_"), dataclass_from_args(ProbeConfig, args)
    assert (cfg.temperature, cfg.epochs, probe.probe_views) == (0.1, 3, 0)
    assert cfg.batch_size == SimCLRConfig().batch_size
