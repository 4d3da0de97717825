"""The fine-tuning family of attacks: source fine-tuning (``source-ft``), mask and re-parameterization removal
(``mask-reset``) and the attacker's own hyper-parameter search (``finetune-search``).

Each is checked at the door (it reads only what its threat model gives it, never a test split, and bad input
is a one-line error) and where it should work, on the tiny toy domains of ``toys.py``."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from domainlock.attacks import (
    AttackAccess,
    AttackAccessError,
    AttackContext,
    AttackProtocol,
    SampleCountError,
    finetune_attack,
    get_attack,
    run_attack,
)
from domainlock.attacks.finetune import FinetuneParams
from domainlock.attacks.finetune_search import FinetuneSearchParams
from domainlock.attacks.mask_reset import MaskResetParams, reset_zeros
from domainlock.attacks.registry import BUILTIN_ATTACKS, get_attack_class
from domainlock.attacks.source_ft import SourceFTParams
from domainlock.errors import DomainlockError, UnknownChoiceError
from domainlock.evaluation import accuracy
from domainlock.masking import magnitude_masks
from domainlock.methods.ntp.rescale import reparameterize
from toys import Loader, tiny_model, toy

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"steps": 4, "epochs": 1, "batch_size": 8, "augment": "none"}


@pytest.fixture(scope="module")
def source_model() -> nn.Module:
    """A tiny digitnet trained on the toy source ``src`` (100 % on its test split, chance on ``tgt``)."""
    proto = AttackProtocol(steps=40, epochs=1, batch_size=16, lr=0.05, lr_pretrained=0.05, augment="none")
    return finetune_attack(tiny_model(0), toy("src", "train"), 48, "all", protocol=proto, device="cpu").model


def pruned(model: nn.Module, sparsity: float = 0.5) -> nn.Module:
    with torch.no_grad():
        for name, mask in magnitude_masks(model, sparsity).items():
            model.get_submodule(name).weight.mul_(mask)
    return model


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


# ------------------------------------------------------------------------------------------------ the door
@pytest.mark.parametrize("name", ["source-ft", "mask-reset", "finetune-search"])
def test_registered_with_documented_parameters(name):
    assert name in BUILTIN_ATTACKS and get_attack_class(name).name == name
    att = get_attack(name)
    assert att.summary and att.example.startswith(f"domainlock attack {name} ")
    for f in dataclasses.fields(att.Params):
        assert f.metadata.get("help"), f"{name} --{f.name} has no help"
    assert att.threat(att.Params()).white_box


@pytest.mark.parametrize("name, params, reads", [
    ("source-ft", SourceFTParams(p=0.5, **FAST), ["source:src:train"]),
    ("mask-reset", MaskResetParams(n=8, **FAST), ["target:tgt:train"]),
    ("finetune-search", FinetuneSearchParams(n=16, optimizers="sgd", lrs="0.01", **FAST), ["target:tgt:train"]),
])
def test_each_attack_reads_only_what_its_threat_model_gives(name, params, reads):
    loader = Loader()
    rep = run_attack(tiny_model(), name, target="tgt", source="src", params=params, device="cpu", loader=loader)
    assert rep.reads == reads
    # the loader saw the attack's reads, then only the evaluator's test reads
    assert [f"{n}:{s}" for n, s in loader.calls[:len(reads)]] == [r.split(":", 1)[1] for r in reads]
    assert all(s == "test" for _, s in loader.calls[len(reads):])


def test_no_attack_can_open_a_test_split():
    access = AttackAccess(get_attack("source-ft").threat(SourceFTParams()), target="tgt", source="src",
                          loader=Loader())
    with pytest.raises(AttackAccessError, match="never reads a test split"):
        access._load("target", "tgt", "test")


def test_source_ft_without_a_source_names_the_flag():
    with pytest.raises(AttackAccessError, match="--source") as e:
        run_attack(tiny_model(), "source-ft", target="tgt", params=SourceFTParams(**FAST), loader=Loader())
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("p", [0, 0.0, -0.1, 1.5])
def test_source_fraction_outside_0_1_is_one_line(p):
    with pytest.raises(DomainlockError, match=rf"p={p!r} is out of range; valid: \(0.0, 1.0\]") as e:
        SourceFTParams(p=p)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, params", [("mask-reset", MaskResetParams(n=500, **FAST)),
                                          ("finetune-search", FinetuneSearchParams(n=500, **FAST))])
def test_n_larger_than_the_split_is_one_line(name, params):
    with pytest.raises(SampleCountError, match="n=500 exceeds the 48 samples of tgt/train") as e:
        run_attack(tiny_model(), name, target="tgt", params=params, device="cpu", loader=Loader())
    assert "\n" not in str(e.value)


def test_bad_choices_are_one_line():
    with pytest.raises(UnknownChoiceError, match="unknown reset 'zero'; valid choices: init, noise"):
        MaskResetParams(reset="zero")
    with pytest.raises(DomainlockError, match="noise_std=0"):
        MaskResetParams(noise_std=0)
    with pytest.raises(UnknownChoiceError, match="unknown optimizer 'rmsprop'"):
        FinetuneSearchParams(optimizers="sgd,rmsprop")
    with pytest.raises(DomainlockError, match=r"lrs='0.1,fast' must be a comma-separated list"):
        FinetuneSearchParams(lrs="0.1,fast")
    with pytest.raises(DomainlockError, match=r"adam_lrs='-1'"):
        FinetuneSearchParams(adam_lrs="-1")
    with pytest.raises(UnknownChoiceError, match="strategy"):
        SourceFTParams(strategy="everything")


def test_search_needs_two_samples_per_class():
    with pytest.raises(DomainlockError, match=r"n=4 leaves a class with 1 sample.*n >= 8"):
        run_attack(tiny_model(), "finetune-search", target="tgt", params=FinetuneSearchParams(n=4, **FAST),
                   device="cpu", loader=Loader())


# ------------------------------------------------------------------------------------------------ source-ft
def test_source_ft_restores_a_damaged_source_ability(source_model):
    model = copy.deepcopy(source_model)
    with torch.no_grad():   # scramble the head: class k's row answers for class k+1
        model.head.weight.copy_(model.head.weight.roll(1, 0))
        model.head.bias.copy_(model.head.bias.roll(1, 0))
    before = accuracy(model, toy("src", "test"))
    assert before < 0.3
    params = SourceFTParams(p=1.0, strategy="head", steps=30, lr_pretrained=0.05, batch_size=16)
    rep = run_attack(model, "source-ft", target="tgt", source="src", params=params, device="cpu", loader=Loader())
    assert rep.source_acc > before + 0.5
    assert rep.info["source_samples"] == 48 and rep.info["select"] == "holdout" and rep.info["n_holdout"] > 0


def test_source_ft_defaults_are_ntlbenchs():
    p = SourceFTParams()
    assert (p.p, p.optimizer, p.lr_pretrained, p.momentum, p.weight_decay, p.batch_size) == \
        (0.1, "sgd", 1e-4, 0.9, 1e-4, 32)
    assert p.select == "holdout" and p.strategy == "all"
    assert get_attack("source-ft").threat(p).source_fraction == 0.1


# ------------------------------------------------------------------------------------------------ mask-reset
@pytest.mark.parametrize("mode", ["init", "noise"])
def test_reset_redraws_exactly_the_zeros(mode):
    model = pruned(tiny_model())
    before = weights(model)
    done = reset_zeros(model, mode, noise_std=1e-3, seed=7)
    after = weights(model)
    assert done["reset_fraction"] > 0.45
    for k, w in before.items():
        zero = w == 0
        assert torch.equal(after[k][~zero], w[~zero]), k          # survivors untouched
        assert (after[k][zero] != 0).all(), k                      # no zero left
    if mode == "init":   # each layer's own init scale (tiny_model(7) draws the same architecture's init)
        fresh = weights(tiny_model(7))
        assert done["reset_from"] == "arch"
        for k, w in before.items():
            assert torch.equal(after[k][w == 0], fresh[k][w == 0]), k
    else:
        redrawn = torch.cat([after[k][w == 0] for k, w in before.items()])
        assert redrawn.std() == pytest.approx(1e-3, rel=0.1) and done["reset_from"] == "noise"


def test_reset_is_seeded_and_leaves_the_global_rng_alone():
    a, b = pruned(tiny_model()), pruned(tiny_model())
    state = torch.random.get_rng_state()
    reset_zeros(a, "init", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    reset_zeros(b, "init", seed=3)
    assert all(torch.equal(w, weights(b)[k]) for k, w in weights(a).items())


def test_mask_reset_regrows_what_plain_finetune_leaves_dead():
    model = pruned(tiny_model())
    zeros = {k: w == 0 for k, w in weights(model).items()}
    slow = {**FAST, "lr": 1e-9, "lr_pretrained": 1e-9, "weight_decay": 0.0}
    rep = run_attack(model, "mask-reset", target="tgt", params=MaskResetParams(n=8, strategy="all", **slow),
                     device="cpu", loader=Loader())
    plain = run_attack(model, "finetune", target="tgt", params=FinetuneParams(n=8, strategy="all", **slow),
                       device="cpu", loader=Loader())
    got, dead = weights(rep.model), weights(plain.model)
    assert rep.info["reset_weights"] == sum(int(z.sum()) for z in zeros.values())
    assert min(float(got[k][z].abs().mean()) for k, z in zeros.items()) > 1e-3     # live values
    assert max(float(dead[k][z].abs().max()) for k, z in zeros.items()) < 1e-6     # still ~zero


def test_mask_reset_without_zeros_is_the_finetune_attack(source_model):
    common = {**FAST, "n": 8, "strategy": "reinit-head+all"}
    a = run_attack(source_model, "mask-reset", target="tgt", params=MaskResetParams(normalize=False, **common),
                   device="cpu", seed=2, loader=Loader())
    b = run_attack(source_model, "finetune", target="tgt", params=FinetuneParams(**common), device="cpu", seed=2,
                   loader=Loader())
    assert a.info["reset_weights"] == 0
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sb)


def test_mask_reset_undoes_ntps_rescale(source_model):
    model = copy.deepcopy(source_model)
    x = toy("tgt", "train").x[:16]
    done = reparameterize(model, model.encoder, x, weight_scale=100.0)
    assert done["layers"]
    rms = {n: float(w.pow(2).mean().sqrt()) for n, w in weights(model).items()}
    slow = {**FAST, "lr": 1e-9, "lr_pretrained": 1e-9, "weight_decay": 0.0}
    rep = run_attack(model, "mask-reset", target="tgt", params=MaskResetParams(n=8, strategy="all", **slow),
                     device="cpu", loader=Loader())
    assert rep.info["normalized"]["layers"] == done["layers"]
    after = weights(rep.model)
    for name in done["layers"]:
        fan_in = after[name][0].numel()
        assert float(after[name].pow(2).mean().sqrt()) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=1e-3)
        assert rms[name] > 10 / math.sqrt(3 * fan_in)   # it was far off before


# ------------------------------------------------------------------------------------------------ finetune-search
def test_search_picks_the_rate_that_learns_and_never_reads_test_data(source_model):
    # lr 1e-7 moves nothing, lr 1e6 diverges: the attacker's own held-out share must point to 0.05
    params = FinetuneSearchParams(n=24, strategy="reinit-head+all", optimizers="sgd", lrs="1e-7,0.05,1e6",
                                  lr=1e-7, lr_pretrained=1e-7, steps=30, epochs=1, batch_size=16, augment="none")
    att = get_attack("finetune-search")
    forbid = (("tgt", "test"), ("src", "test"), "src")
    access = AttackAccess(att.threat(params), target="tgt", loader=Loader(forbid=forbid))
    out = att.run(copy.deepcopy(source_model), access, params,
                  AttackContext(torch.device("cpu"), seed=0))
    assert access.reads == ["target:tgt:train"]
    assert out.info["pick"]["lr"] == 0.05 and out.info["pick"]["optimizer"] == "sgd"
    grid = {row["lr"]: row for row in out.info["grid"]}
    assert set(grid) == {1e-7, 0.05, 1e6}                     # the protocol's own point is not tried twice
    assert grid[0.05]["holdout_acc"] == 1.0 and grid[1e-7]["holdout_acc"] <= 0.5 and grid[1e6]["diverged"]
    assert accuracy(out.model, toy("tgt", "test")) > 0.9     # the evaluator's view, after the attack
    assert out.info["search_holdout"] == 4 and out.info["kept"] == "retrained on all n" and out.info["n"] == 24
    assert grid[0.05]["lr_pretrained"] == pytest.approx(0.05)   # inherited rate keeps the protocol's ratio (1)


def test_search_grid_order_and_pick_model_option():
    p = FinetuneSearchParams()
    grid = p.grid()
    assert grid[0] == ("sgd", 0.05, 0.003) and len(grid) == len(set(grid)) == 6
    assert ("adam", 0.001, 6e-05) in grid
    rep = run_attack(tiny_model(), "finetune-search", target="tgt", device="cpu", loader=Loader(),
                     params=FinetuneSearchParams(n=16, optimizers="sgd,adam", lrs="0.01", adam_lrs="0.001",
                                                 select="holdout", **FAST))
    assert rep.info["kept"] == "the pick's model" and rep.info["n_train"] == rep.info["search_train"] == 12
    assert len(rep.info["grid"]) == 3 and rep.info["pick"] in [
        {k: row[k] for k in ("optimizer", "lr", "lr_pretrained", "holdout_acc")} for row in rep.info["grid"]]
