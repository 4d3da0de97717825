"""The distillation attack (model stealing from outputs only): it gets a query-only view and never the
teacher's weights, reads only the other domain it is told, keeps to its query budget, steals a teacher on its
query distribution (other-domain images, or a data-free generator), bad input.

The toy: four classes, the class shows in the brightness of channel 0 (``toys.toy``, domain ``src``). The
teacher and student are a tiny BatchNorm-free CNN (``pooled``: one strided conv, global average pool,
linear), so a student's eval-mode statistics cannot differ from the ones it was trained with: what it agrees
on, it learned from the teacher's answers.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from domainlock.attacks import QueryOnly, run_attack
from domainlock.attacks.distill import BudgetSpent, Distill, DistillParams, Oracle, disagreement, fragile_mask
from domainlock.errors import DomainlockError
from domainlock.evaluation import predict
from domainlock.models import Classifier, build_model, encoder_with_norm
from domainlock.models.base import ARCHS
from domainlock.training.loop import TrainConfig, fit
from toys import C, toy

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = "distill-test-pooled"
N = 192   #: images per toy split


def pooled(num_classes: int = C, width: int = 8) -> Classifier:
    body = [nn.Conv2d(3, width, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    return Classifier(encoder_with_norm((0.5,) * 3, (0.5,) * 3, *body), nn.Linear(width, num_classes),
                      num_classes=num_classes)


@pytest.fixture(scope="module")
def teacher():
    ARCHS[ARCH] = pooled
    torch.manual_seed(0)
    model = build_model(ARCH, num_classes=C)
    cfg = TrainConfig(epochs=15, batch_size=32, lr=0.1, augment="none", label_smoothing=0.0, select="last")
    fit(model, toy("src", "train", N), cfg=cfg, device="cpu", progress=False)
    yield model.eval()
    ARCHS.pop(ARCH, None)


def serve(name, split, root=None):
    return toy(name, split, N)


def agreement(student: nn.Module, teacher: nn.Module) -> float:
    held = toy("src", "val", N).x            # never queried: the attacker reads only train splits
    return float((predict(student, held) == predict(teacher, held)).float().mean())


class Guarded(nn.Module):
    """A teacher whose weights can be read only by its own forward pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.inside = model, False

    def forward(self, x):
        self.inside = True
        try:
            return self.model(x)
        finally:
            self.inside = False

    def parameters(self, recurse=True):
        if not self.inside:
            raise AssertionError("the attack read the teacher's weights")
        return super().parameters(recurse)

    def state_dict(self, *args, **kwargs):
        raise AssertionError("the attack read the teacher's state")


def test_the_attack_gets_outputs_only_and_keeps_its_budget(teacher, monkeypatch):
    seen = []
    run = Distill.run

    def spy(self, model, access, params, ctx):
        seen.append(model)
        return run(self, model, access, params, ctx)

    monkeypatch.setattr(Distill, "run", spy)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    calls = []

    def loader(name, split, root=None):
        calls.append((name, split))
        return serve(name, split)

    params = DistillParams(queries="other", arch=ARCH, budget=500, batch_size=64, steps=100)
    rep = run_attack(Guarded(teacher), "distill", target="tgt", other="src", params=params, loader=loader,
                     device="cpu")
    assert isinstance(seen[0], QueryOnly)
    assert rep.reads == ["other:src:train"] and calls[0] == ("src", "train")
    assert rep.info["queries"] == seen[0].queries == 448 <= 500     # 7 batches of 64; the 8th would exceed
    assert rep.info["student_steps"] == 7 and "query access to the outputs only" in rep.threat
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    gen = dataclasses.replace(params, queries="generator", budget=1000, batch_size=16, directions=2,
                              generator_width=4)
    rep = run_attack(Guarded(teacher), "distill", target="tgt", params=gen, loader=loader, device="cpu")
    assert rep.reads == [] and seen[1].queries == rep.info["queries"] <= 1000
    assert rep.info["generator_steps"] >= 1


def test_other_queries_need_the_other_domain(teacher):
    with pytest.raises(DomainlockError, match=r"name the other domain \(--other\)") as e:
        run_attack(teacher, "distill", target="tgt", params=DistillParams(queries="other", arch=ARCH),
                   loader=serve, device="cpu")
    assert "\n" not in str(e.value)


def test_distilling_on_the_teachers_own_distribution_steals_it(teacher):
    params = DistillParams(queries="other", arch=ARCH, steps=150, batch_size=64, lr=0.1, augment="crop")
    rep = run_attack(teacher, "distill", target="tgt", other="src", params=params, loader=serve, device="cpu")
    torch.manual_seed(3)
    fresh = build_model(ARCH, num_classes=C)
    assert agreement(rep.model, teacher) >= 0.9 > agreement(fresh, teacher) + 0.4
    assert rep.info["queries"] == 150 * 64


def test_data_free_distillation_beats_chance(teacher):
    params = DistillParams(arch=ARCH, steps=100, batch_size=24, generator_width=8, z_dim=16, lr_generator=2e-2,
                           student_iters=1)
    rep = run_attack(teacher, "distill", target="tgt", params=params, loader=serve, device="cpu")
    assert rep.reads == [] and rep.info["generator_steps"] == 99
    assert agreement(rep.model, teacher) >= 0.7        # chance: 0.25 (seeds 0-2 of this setting: 1, 0.75, 1)


def test_a_bf16_attacker_runs_the_student_and_generator_in_bf16_and_still_steals(teacher, monkeypatch):
    from domainlock.attacks import distill as distill_mod

    dtypes = set()
    real = distill_mod.QueryGenerator.forward

    def spy(self, z, y):
        out = real(self, z, y)
        dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(distill_mod.QueryGenerator, "forward", spy)
    params = DistillParams(arch=ARCH, steps=100, batch_size=24, generator_width=8, z_dim=16, lr_generator=2e-2,
                           student_iters=1, precision="bf16")
    rep = run_attack(teacher, "distill", target="tgt", params=params, loader=serve, device="cpu")
    assert dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in rep.model.parameters())
    assert agreement(rep.model, teacher) >= 0.7        # as in float32 (chance: 0.25)


class OnePixel(nn.Module):
    """Two classes: is pixel (0, 0, 0) above 0.5?"""

    def forward(self, x):
        v = x[:, 0, 0, 0:1] - 0.5
        return 100 * torch.cat([v, -v], 1)


def test_fragile_queries_are_those_a_small_perturbation_flips():
    x = torch.full((6, 3, 32, 32), 0.9)
    x[:3, 0, 0, 0] = torch.tensor([0.49, 0.51, 0.52])              # near the teacher's boundary
    view = QueryOnly(OnePixel(), torch.device("cpu"))
    oracle = Oracle(view, 100, torch.device("cpu"))
    t = oracle(x)
    keep = fragile_mask(oracle, x, t, eps=0.05, tries=8, g=torch.Generator().manual_seed(0))
    assert keep.tolist() == [True] * 3 + [False] * 3 and view.queries == 6 + 6 * 8
    oracle(x)                                                      # 60 of 100
    with pytest.raises(BudgetSpent):
        oracle(torch.cat([x] * 7))                                 # 42 more would exceed the budget: not sent
    assert view.queries == 60


def test_with_nothing_fragile_the_student_learns_nothing(teacher):
    """The toy teacher's classes are far apart: no query is fragile, every step is skipped, queries still
    count (the teacher's answer and two perturbed copies per image)."""
    params = DistillParams(queries="other", arch=ARCH, steps=20, batch_size=32, fragile_only=True,
                           fragile_eps=0.05, fragile_tries=2)
    rep = run_attack(teacher, "distill", target="tgt", other="src", params=params, loader=serve, device="cpu")
    assert rep.info["queries"] == 20 * 32 * 3 and rep.info["fragile_fraction"] == 0
    assert rep.info["skipped_steps"] == 20 and rep.info["loss"] == []


def test_disagreement_is_zero_when_the_student_answers_like_the_teacher():
    logits = torch.randn(5, C)
    probs = torch.softmax(logits, 1)
    for loss in ("l1", "kl"):
        assert torch.allclose(disagreement(probs, logits + 3.0, loss), torch.zeros(5), atol=1e-5)
        assert (disagreement(probs, -logits, loss) > 0.1).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"budget": 0}, r"budget=0 is out of range"),
    ({"budget": -5}, r"budget=-5 is out of range"),
    ({"queries": "images"}, r"unknown queries 'images'; valid choices: generator, other"),
    ({"loss": "mse"}, r"unknown loss 'mse'"),
    ({"arch": "nope"}, r"unknown arch 'nope'"),
    ({"fragile_eps": 0.0}, r"fragile_eps=0.0 is out of range"),
])
def test_bad_input_is_one_line(kwargs, match):
    with pytest.raises(DomainlockError, match=match) as e:
        DistillParams(**kwargs)
    assert "\n" not in str(e.value)
