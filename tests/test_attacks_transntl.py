"""TransNTL (source-side recovery with corruption consistency, group DRO and adaptive SAM): what it reads, its
SAM step and DRO weights against hand computations, and that it recovers a model made deliberately bad on noisy
images — where training on the source labels alone does not.

The recovery toy: the source is :func:`toys.toy` ("src"); the target is the same images plus Gaussian noise
(σ = 0.2, the attack's own first corruption). The protected tiny digitnet is trained to be right on clean images
and to call every noisy image the next class: 100 % source, 0 % target.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from domainlock.attacks import AttackAccessError, get_attack, get_attack_class, run_attack
from domainlock.attacks.registry import BUILTIN_ATTACKS
from domainlock.attacks.sam import SAM
from domainlock.attacks.transntl import (
    CORRUPTIONS,
    TransNTLParams,
    _FrozenBNStats,
    consistency,
    corrupt,
    dro_update,
)
from domainlock.data import DomainData
from domainlock.errors import DomainlockError
from domainlock.evaluation import accuracy
from toys import C, Loader, tiny_model, toy

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"epochs": 1, "steps": 4, "batch_size": 16}
SIGMA = 0.2


# ------------------------------------------------------------------------------------------------ the door
def test_registered_with_documented_parameters():
    assert "transntl" in BUILTIN_ATTACKS and get_attack_class("transntl").name == "transntl"
    att = get_attack("transntl")
    assert att.summary and att.example.startswith("domainlock attack transntl ")
    for f in dataclasses.fields(att.Params):
        assert f.metadata.get("help"), f"transntl --{f.name} has no help"
    threat = att.threat(TransNTLParams())
    assert threat.source_fraction == 0.1 and threat.white_box and threat.needs() == ["target", "source"]


@pytest.mark.parametrize("select", ["last", "holdout"])
def test_reads_only_its_source_share_never_a_test_split(select):
    loader = Loader()
    rep = run_attack(tiny_model(), "transntl", target="tgt", source="src", device="cpu", loader=loader,
                     params=TransNTLParams(p=0.5, select=select, **FAST))
    assert rep.reads == ["source:src:train"]
    assert loader.calls[0] == ("src", "train")
    assert all(s == "test" for _, s in loader.calls[1:])   # only the evaluator's scoring after that
    assert rep.info["source_samples"] == 24 and rep.info["select"] == select
    assert rep.info["holdout_samples"] == (0 if select == "last" else 4)


def test_without_a_source_it_names_the_flag():
    with pytest.raises(AttackAccessError, match="--source") as e:
        run_attack(tiny_model(), "transntl", target="tgt", params=TransNTLParams(**FAST), loader=Loader())
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad, match", [
    ({"p": 0}, r"p=0 is out of range; valid: \(0.0, 1.0\]"),
    ({"p": 1.5}, r"p=1.5 is out of range; valid: \(0.0, 1.0\]"),
    ({"p": -0.1}, r"p=-0.1 is out of range"),
    ({"blur_kernel": 4}, r"blur_kernel=4 must be odd; valid: 3, 5"),
    ({"rho": -1.0}, r"rho=-1.0 is out of range"),
    ({"select": "best"}, r"unknown select 'best'; valid choices: holdout, last"),
])
def test_bad_parameters_are_one_line_errors(bad, match):
    with pytest.raises(DomainlockError, match=match) as e:
        TransNTLParams(**bad)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ SAM
def _sam_step(w0: list[float], loss_fn, adaptive: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights at the ascent point, weights after one SAM step over SGD lr 0.1)``."""
    w = nn.Parameter(torch.tensor(w0))
    sam = SAM([w], torch.optim.SGD([w], lr=0.1), rho=0.5, adaptive=adaptive)
    loss_fn(w).backward()
    sam.ascend()
    ascent = w.detach().clone()
    loss_fn(w).backward()
    sam.descend()
    return ascent, w.detach()


def test_adaptive_sam_one_weight_by_hand():
    # L = w², w = 2: g = 4; adaptive e = ρ·w²·g/|w·g| = 0.5·16/8 = 1 -> w + e = 3, gradient there 6;
    # SGD lr 0.1 from w = 2: 2 - 0.6 = 1.4. Plain SAM: e = ρ·g/|g| = 0.5 -> 2.5, gradient 5 -> 1.5.
    ascent, after = _sam_step([2.0], lambda w: (w ** 2).sum(), adaptive=True)
    assert torch.allclose(ascent, torch.tensor([3.0])) and torch.allclose(after, torch.tensor([1.4]))
    ascent, after = _sam_step([2.0], lambda w: (w ** 2).sum(), adaptive=False)
    assert torch.allclose(ascent, torch.tensor([2.5])) and torch.allclose(after, torch.tensor([1.5]))


def test_adaptive_sam_normalizes_over_all_weights_and_scales_by_their_size():
    # L = 1.5·a² + 2·b², (a, b) = (1, 1): g = (3, 4), |w|·g = (3, 4), norm 5; e = 0.5·(3, 4)/5 = (0.3, 0.4);
    # gradient at (1.3, 1.4) is (3.9, 5.6); SGD lr 0.1: (0.61, 0.44).
    ascent, after = _sam_step([1.0, 1.0], lambda w: 1.5 * w[0] ** 2 + 2 * w[1] ** 2, adaptive=True)
    assert torch.allclose(ascent, torch.tensor([1.3, 1.4])) and torch.allclose(after, torch.tensor([0.61, 0.44]))
    # w = (2, 1), L = a + b: g = (1, 1), |w|·g = (2, 1), norm √5; e = 0.5·(4, 1)/√5: the larger weight moves more
    ascent, _ = _sam_step([2.0, 1.0], lambda w: w.sum(), adaptive=True)
    assert torch.allclose(ascent - torch.tensor([2.0, 1.0]), 0.5 * torch.tensor([4.0, 1.0]) / 5 ** 0.5)


def test_sam_step_with_a_closure_and_a_zero_gradient():
    w = nn.Parameter(torch.tensor([2.0]))
    sam = SAM([w], torch.optim.SGD([w], lr=0.1), rho=0.5)

    def closure():
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    assert float(sam.step(closure)) == 4.0 and torch.allclose(w.detach(), torch.tensor([1.4]))
    ascent, after = _sam_step([0.0], lambda w: (w ** 2).sum(), adaptive=True)   # at a zero gradient: no step
    assert torch.equal(ascent, torch.tensor([0.0])) and torch.equal(after, torch.tensor([0.0]))


# ------------------------------------------------------------------------------------------------ pieces
def test_dro_weights_move_toward_the_largest_loss():
    q = torch.full((3,), 1 / 3)
    # step 1, losses (0, ln 2, ln 4): q ∝ (1, 2, 4)
    moved = dro_update(q, torch.tensor([1.0, 2.0, 4.0]).log(), 1.0)
    assert torch.allclose(moved, torch.tensor([1.0, 2.0, 4.0]) / 7)
    # the paper's step 0.01, losses (0, 1, 2): q ∝ (1, e^0.01, e^0.02) = (0.330006, 0.333322, 0.336672)
    small = dro_update(q, torch.tensor([0.0, 1.0, 2.0]), 0.01)
    assert torch.allclose(small, torch.tensor([0.330006, 0.333322, 0.336672]), atol=1e-6)
    assert small.argmax() == 2 and small.sum().item() == pytest.approx(1.0)


def test_consistency_is_zero_for_agreeing_views_and_never_moves_the_clean_prediction():
    clean = torch.randn(5, C, requires_grad=True)
    same, kl = consistency(torch.cat([clean] * 4), 3)
    assert torch.equal(same, clean) and torch.allclose(kl, torch.zeros(3), atol=1e-6)
    views = torch.randn(15, C, requires_grad=True)
    _, kl = consistency(torch.cat([clean, views]), 3)
    assert (kl > 0).all()
    kl.sum().backward()
    assert not clean.grad.any() and views.grad.abs().sum() > 0   # the clean prediction is the detached target


def test_corruptions_are_seeded_views_in_the_unit_range():
    x = toy("src", "train", n=8).x
    views = corrupt(x, torch.Generator().manual_seed(0), TransNTLParams())
    again = corrupt(x, torch.Generator().manual_seed(0), TransNTLParams())
    assert len(views) == len(CORRUPTIONS)
    for v, w in zip(views, again, strict=True):
        assert v.shape == x.shape and 0 <= v.min() and v.max() <= 1 and torch.equal(v, w)
        assert not torch.equal(v, x)
    noise, mult, _ = views
    assert 0.15 < float((noise - x)[(x > 0.3) & (x < 0.7)].std()) < 0.25     # σ = 0.2, away from the clip
    assert 0.15 < float((mult / x - 1)[(x > 0.1) & (x < 0.5)].std()) < 0.25  # x·(1 + ε), ε ~ N(0, 0.2²)


def test_the_second_sam_pass_leaves_batchnorm_statistics_alone():
    bn = nn.BatchNorm1d(3).train()
    bn(torch.randn(8, 3))
    before = bn.running_mean.clone()
    with _FrozenBNStats(bn):
        bn(torch.randn(8, 3) + 5)
    assert torch.equal(bn.running_mean, before) and bn.momentum == 0.1


# ------------------------------------------------------------------------------------------------ recovery
def _noisy(d: DomainData, name: str = "noisy") -> DomainData:
    g = torch.Generator().manual_seed(99)
    return DomainData(name, d.split, (d.x + SIGMA * torch.randn(d.x.shape, generator=g)).clamp(0, 1), d.y, C)


class NoisyLoader(Loader):
    """Serves ``src`` clean and ``noisy`` as the same images plus Gaussian noise."""

    def __call__(self, name, split, root=None):
        self.calls.append((name, split))
        d = toy("src", split)
        return _noisy(d) if name == "noisy" else d


@pytest.fixture(scope="module")
def protected():
    """Right on clean source images, the next class on noisy ones."""
    model = tiny_model(0).train()
    d = toy("src", "train")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        xn = (d.x + SIGMA * torch.randn(d.x.shape, generator=g)).clamp(0, 1)
        out = model(torch.cat([d.x, xn]))
        loss = F.cross_entropy(out[:len(d)], d.y) + F.cross_entropy(out[len(d):], (d.y + 1) % C)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_transntl_recovers_a_model_made_bad_on_noisy_images(protected):
    assert accuracy(protected, _noisy(toy("src", "test"))) < 0.1
    assert accuracy(protected, toy("src", "test")) > 0.95
    params = TransNTLParams(p=1.0, lr=3e-3, steps=40, epochs=1, batch_size=16, kl_weight=1.0)
    rep = run_attack(protected, "transntl", target="noisy", source="src", params=params, device="cpu",
                     loader=NoisyLoader())
    assert rep.target_acc >= 0.9 and rep.source_acc >= 0.95
    # 48 images in batches of 16 are 3 steps an epoch: 14 epochs reach the 40 steps asked for
    assert rep.info["steps"] == 42 and len(rep.info["q"]) == 3
    # the consistency term does the work: the same run on the source labels alone stays far below
    ce_only = run_attack(protected, "transntl", target="noisy", source="src", device="cpu", loader=NoisyLoader(),
                         params=dataclasses.replace(params, kl_weight=0.0))
    assert ce_only.target_acc <= rep.target_acc - 0.25
