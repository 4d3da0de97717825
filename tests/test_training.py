"""Source training: seeded determinism, divergence handling, output checks, the card, CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest
import torch

import domainlock.training.loop as loop
from domainlock.artifact import load_artifact
from domainlock.data import DomainData
from domainlock.errors import DomainlockError, OutputExistsError, TrainingDivergedError, UnknownChoiceError
from domainlock.training import TrainConfig, train_source
from domainlock.utils.hparams import add_dataclass_args, dataclass_from_args
from toys import TINY_ARCH, square_split


@pytest.fixture(scope="module")
def splits():
    return {"train": square_split(96, "train", 0), "val": square_split(32, "val", 1),
            "test": square_split(32, "test", 2)}


def _cfg(**kw):
    base = {"epochs": 2, "batch_size": 16, "lr": 0.05, "augment": "default", "seed": 7}
    base.update(kw)
    return TrainConfig(**base)


def test_seeded_training_is_bit_identical(splits):
    a = train_source("toy", "digitnet", _cfg(), splits=splits, progress=False, device="cpu",
                     arch_kwargs=TINY_ARCH)
    b = train_source("toy", "digitnet", _cfg(), splits=splits, progress=False, device="cpu",
                     arch_kwargs=TINY_ARCH)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train_source("toy", "digitnet", _cfg(seed=8), splits=splits, progress=False, device="cpu",
                     arch_kwargs=TINY_ARCH)
    assert not all(torch.equal(sa[k], c.model.state_dict()[k]) for k in sa)


def test_train_writes_a_complete_artifact(splits, tmp_path):
    out = tmp_path / "art"
    art = train_source("toy", "digitnet", _cfg(epochs=3, augment="none"), out=out, splits=splits,
                       progress=False, device="cpu", arch_kwargs=TINY_ARCH)
    assert art.path == out
    card = art.card
    assert card["domain"] == "toy" and card["seed"] == 7 and card["arch"] == "digitnet"
    assert card["hparams"]["epochs"] == 3 and card["hparams"]["augment"] == "none"
    assert set(card["metrics"]["accuracy"]) == {"train", "val", "test"}
    assert card["metrics"]["accuracy"]["test"] > 0.5  # the toy task is easy
    assert 1 <= card["metrics"]["best_epoch"] <= 3 and len(card["metrics"]["history"]) == 3
    assert card["training"]["wall_s"] > 0 and card["training"]["img_per_s"] > 0
    assert 0 < card["training"]["train_loop_cpu_s"] < 4 * card["training"]["train_loop_s"] + 1
    assert card["normalization"]["mean"] == [0.5, 0.5, 0.5] and card["num_classes"] == 4
    loaded = load_artifact(out)
    x = splits["test"].x
    with torch.no_grad():
        assert torch.equal(loaded.model(x), art.model.to("cpu").eval()(x))
    for p in loaded.model.parameters():
        assert p.is_contiguous()


def test_select_last_keeps_final_weights(splits):
    art = train_source("toy", "digitnet", _cfg(select="last", epochs=2), splits=splits, progress=False,
                       device="cpu", arch_kwargs=TINY_ARCH)
    assert art.card["metrics"]["best_epoch"] == 2


def test_nan_loss_raises_and_writes_nothing(splits, tmp_path):
    bad = dict(splits)
    x = splits["train"].x.clone()
    x[:] = float("nan")
    bad["train"] = DomainData("toy", "train", x, splits["train"].y, 4)
    out = tmp_path / "diverged"
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 1 step 1; lower --lr"):
        train_source("toy", "digitnet", _cfg(augment="none"), out=out, splits=bad, progress=False,
                     device="cpu", arch_kwargs=TINY_ARCH)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_huge_lr_diverges(splits, tmp_path):
    out = tmp_path / "diverged"
    with pytest.raises(TrainingDivergedError, match="lower --lr"):
        train_source("toy", "digitnet", _cfg(lr=1e12, epochs=3, schedule="constant", warmup_epochs=0,
                                             augment="none"),
                     out=out, splits=splits, progress=False, device="cpu", arch_kwargs=TINY_ARCH)
    assert not out.exists()


def test_existing_output_fails_before_training(tmp_path, monkeypatch):
    out = tmp_path / "exists"
    out.mkdir()

    def no(*a, **k):
        raise AssertionError("must fail before loading data or training")

    monkeypatch.setattr(loop, "_load_splits", no)
    monkeypatch.setattr(loop, "fit", no)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        train_source("mnist", "digitnet", TrainConfig(), out=out, progress=False)


def test_overwrite_replaces(splits, tmp_path):
    out = tmp_path / "o"
    train_source("toy", "digitnet", _cfg(epochs=1), out=out, splits=splits, progress=False, device="cpu",
                 arch_kwargs=TINY_ARCH)
    art = train_source("toy", "digitnet", _cfg(epochs=1, seed=3), out=out, splits=splits, progress=False,
                       device="cpu", arch_kwargs=TINY_ARCH, overwrite=True)
    assert load_artifact(out).card["seed"] == 3 == art.card["seed"]


def test_interrupt_leaves_no_half_artifact(splits, tmp_path, monkeypatch):
    out = tmp_path / "int"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("domainlock.artifact.save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_source("toy", "digitnet", _cfg(epochs=1), out=out, splits=splits, progress=False, device="cpu",
                     arch_kwargs=TINY_ARCH)
    assert list(tmp_path.iterdir()) == []


def test_unknown_domain_arch_and_bad_config(splits, monkeypatch):
    with pytest.raises(UnknownChoiceError):
        train_source("toy", "nonet", _cfg(), splits=splits, progress=False, device="cpu")
    with pytest.raises(UnknownChoiceError):
        TrainConfig(augment="wild")
    with pytest.raises(UnknownChoiceError):
        TrainConfig(optimizer="lion")
    with pytest.raises(DomainlockError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(DomainlockError, match="epochs"):
        TrainConfig(epochs=0)


def test_config_fields_become_cli_flags():
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name
    args = parser.parse_args(["--epochs", "3", "--lr", "0.2", "--augment", "none", "--no-channels-last"])
    cfg = dataclass_from_args(TrainConfig, args)
    assert (cfg.epochs, cfg.lr, cfg.augment, cfg.channels_last) == (3, 0.2, "none", False)
    assert cfg.batch_size == TrainConfig().batch_size
    with pytest.raises(SystemExit):
        parser.parse_args(["--schedule", "linear"])


def test_limit_train_and_adam_and_cosine(splits):
    art = train_source("toy", "digitnet", _cfg(limit_train=40, optimizer="adamw", lr=3e-3, schedule="cosine",
                                               epochs=1), splits=splits, progress=False, device="cpu",
                       arch_kwargs=TINY_ARCH)
    assert art.card["training"]["train_images"] == 40


def _two_groups(params, lr):
    return [{"params": params[:2], "lr": 0.003}, {"params": params[2:], "lr": lr}]


@pytest.mark.parametrize("optimizer", loop.OPTIMIZERS)
def test_multi_tensor_optimizer_is_bitwise_the_per_tensor_loop(optimizer):
    """make_optimizer's multi-tensor (foreach) updates give exactly the weights of torch's per-tensor loop,
    with two parameter groups and a schedule, as fit runs them."""
    cfg = TrainConfig(optimizer=optimizer, lr=0.05, schedule="cosine", warmup_epochs=0.5)
    weights = []
    for fast in (True, False):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 5))
        params = list(net.parameters())
        opt = loop.make_optimizer(_two_groups(params, cfg.lr), cfg)
        assert opt.defaults["foreach"] is True
        if not fast:
            accepted = inspect.signature(type(opt)).parameters
            kw = {k: v for k, v in opt.defaults.items() if k in accepted}
            opt = type(opt)(_two_groups(params, cfg.lr), **{**kw, "foreach": False})
            assert all(g["foreach"] is False for g in opt.param_groups)
        sched = loop.make_scheduler(opt, cfg, 4)
        g = torch.Generator().manual_seed(1)
        for _ in range(12):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
            sched.step()
        weights.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_on_cuda(splits, tmp_path):
    art = train_source("toy", "digitnet", _cfg(epochs=2), out=tmp_path / "gpu", splits=splits, progress=False,
                       device="cuda", arch_kwargs=TINY_ARCH)
    assert art.card["training"]["device"].startswith("cuda")
    assert next(art.model.parameters()).device.type == "cuda"
    assert load_artifact(tmp_path / "gpu", device="cuda").card["metrics"]["accuracy"]["test"] >= 0


@pytest.mark.slow
def test_default_recipe_reaches_the_target(data_root, tmp_path):
    """The recipe: digitnet on 7,000 MNIST images reaches >= 98.5 % MNIST test and transfers to the
    colour digit domains (what protection methods need to protect). About 1.5 min on 2 CPU cores."""
    from domainlock.evaluation import evaluate

    art = train_source("mnist", "digitnet", TrainConfig(), out=tmp_path / "mnist", data_root=data_root,
                       progress=False)
    assert art.card["metrics"]["accuracy"]["test"] >= 0.985
    res = evaluate(art.model, ["syn", "mnistm", "uci-digits"], data_root=data_root)
    for name, r in res.items():
        assert r["accuracy"] > 0.5, (name, r)
