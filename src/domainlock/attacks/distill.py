"""Model stealing by distillation (ATEsc, Hong et al., ICML 2025; METHODS.md §4.7): a black-box attacker
that only sees the protected model's output probabilities trains a fresh student of a chosen architecture
to answer like it, on queries of its own making. The student is the stolen copy and what is scored.

Both players use one per-image disagreement between the teacher's probabilities ``p_T(x)`` and the
student's logits ``s(x)`` (``loss``): ``l1`` (DFME) ``D = mean_c |ŝ_c − t̂_c|`` with ``t̂ = log p_T`` and
``ŝ = s``, each centred over the classes (logits up to a constant), or ``kl`` ``D = KL(p_T ‖ softmax(s))``.
The student minimizes ``E_x D(x)`` over the queries ``x``; where they come from (``queries``):

* ``generator`` (data-free, DFAD/DFME): a conditional generator ``G(z, y)`` (:mod:`.distill_generator`)
  ascends ``J = D − λ·CE(p_T, y)`` (disagreement up; ``λ = class_weight``: the teacher should answer the
  asked class ``y``, so the queries cover every class) while the student descends ``D``: each round
  ``generator_iters`` steps of ``G``, then ``student_iters`` of the student on fresh ``G(z, y)``. No gradient
  flows through the teacher: ``∇_x J`` is estimated by forward differences from ``directions + 1`` queries
  per image (DFME). The first batch is uniform noise; its answers give the number of classes.
* ``other``: the attacker's unlabelled images of another domain (``--other``), augmented; every augmented
  view is sent to the teacher, whose probabilities are the soft labels of that same view.

``fragile_only`` (ATEsc's filter): an NTL teacher is robust on out-of-distribution inputs and fragile on
in-distribution ones, so only queries whose teacher arg max changes under a small perturbation train the
student. ATEsc finds the perturbation by PGD on the (white-box) teacher; a black box cannot, so each query
is also sent with ``fragile_tries`` random corners ``x + ε·sign(n)`` of the L∞ ball of radius
``fragile_eps``, and is fragile if any of them changes the arg max (weaker than PGD: it keeps fewer). ATEsc's
second term, forgetting on the robust queries, is not implemented.

Every image sent counts against ``budget`` (``QueryOnly.queries``); a batch that would exceed it is not
sent and the attack stops. The student is built fresh (``arch``, ``width``; classes from the width of the
teacher's answers) and never reads the teacher's weights.

Why the defaults:

* ``loss = l1``: DFME's finding — KL's gradient vanishes as the student nears the teacher, starving ``G``.
* ``directions = 1``, ``step = 1e-3``, ``student_iters = 5``, ``generator_iters = 1``: DFME's values.
* ``lr = 0.1`` (SGD, cosine), ``lr_generator = 5e-4`` (Adam): DFME's rates (CIFAR-10; SVHN: 5e-5).
* ``class_weight = 1``: without it a 4-class toy teacher's queries collapsed onto 2-3 classes.
* ``budget = 2M`` images (DFME's SVHN budget), ``steps = 5000``: ~10 source trainings, but every shorter or
  narrower recipe measured steals less (width 16 and 2500 steps: 0.36x the CPU, 1.5 points lower); a bf16
  forward (``precision``) costs 0.63x at the same strength (docs/bench/distill.md).
* ``fragile_eps = 8/255``: the usual L∞ radius of an imperceptible perturbation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import AUGMENTS, get_augment
from ..errors import DomainlockError, TrainingDivergedError, check_choice, check_integer, check_range
from ..evaluation import EVAL_BATCH
from ..models import arch_names, build_model
from ..training.loop import TrainConfig, make_optimizer, make_scheduler
from ..utils.layout import to_channels_last
from ..utils.precision import PRECISIONS, forward_autocast, resolve_bf16
from .base import Attack, AttackOutcome, QueryOnly, ThreatModel
from .distill_generator import QueryGenerator, forward_difference_grad
from .registry import register_attack

QUERIES = ("generator", "other")
LOSSES = ("l1", "kl")
P_MIN = 1e-8   #: the teacher's probabilities are clamped here before a logarithm


@dataclass
class DistillParams:
    """The distillation attacker: its queries, its budget, its student and both players' optimizers."""

    queries: str = field(default="generator", metadata={
        "help": "where queries come from: a generator trained to maximize disagreement (data-free), or "
                "unlabelled images of the --other domain", "choices": list(QUERIES)})
    budget: int = field(default=2_000_000, metadata={"help": "teacher queries (images sent) at most"})
    steps: int = field(default=5000, metadata={"help": "student optimizer steps at most"})
    batch_size: int = field(default=128, metadata={"help": "images per batch (queries=other: min(batch_size, n))"})
    lr: float = field(default=0.1, metadata={"help": "peak learning rate of the student (SGD, cosine)"})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay of the student"})
    loss: str = field(default="l1", metadata={
        "help": "disagreement: l1 between centred logits (DFME) or KL(teacher || student)", "choices": list(LOSSES)})
    arch: str = field(default="digitnet", metadata={"help": "architecture of the student (built fresh)"})
    width: int = field(default=0, metadata={"help": "channel width of the student (0: the architecture's default)"})
    augment: str = field(default="crop", metadata={"help": "augmentation of the other-domain images (queries=other)",
                                                   "choices": list(AUGMENTS)})
    directions: int = field(default=1, metadata={"help": "random directions per image of a forward difference"})
    step: float = field(default=1e-3, metadata={"help": "step of a forward difference"})
    student_iters: int = field(default=5, metadata={"help": "student steps per round (queries=generator)"})
    generator_iters: int = field(default=1, metadata={"help": "generator steps per round (queries=generator)"})
    lr_generator: float = field(default=5e-4, metadata={"help": "learning rate of the generator (Adam)"})
    z_dim: int = field(default=64, metadata={"help": "noise dimension of the generator"})
    class_weight: float = field(default=1.0, metadata={
        "help": "weight of the generator's class term: the teacher should answer the class it was asked for "
                "(0: DFME's disagreement alone)"})
    generator_width: int = field(default=32, metadata={"help": "channel width of the generator"})
    image_size: int = field(default=32, metadata={"help": "side of the generated (RGB) images"})
    fragile_only: bool = field(default=False, metadata={
        "help": "train on fragile queries only (ATEsc): those whose teacher prediction flips under a small "
                "random perturbation"})
    fragile_eps: float = field(default=8 / 255, metadata={"help": "L-inf radius of the fragility perturbation"})
    fragile_tries: int = field(default=2, metadata={"help": "random perturbations (queries) per image tested"})
    precision: str = field(default="fp32", metadata={
        "help": "precision of the student's and the generator's forward (utils.precision; the teacher's answers "
                "are the model's own)", "choices": list(PRECISIONS)})

    def __post_init__(self) -> None:
        check_choice("queries", self.queries, QUERIES)
        check_choice("loss", self.loss, LOSSES)
        check_choice("augment", self.augment, AUGMENTS)
        check_choice("arch", self.arch, arch_names())
        check_choice("precision", self.precision, PRECISIONS)
        check_integer("budget", self.budget, 1)
        check_integer("steps", self.steps, 1)
        check_integer("batch_size", self.batch_size, 2)
        check_integer("width", self.width, 0)
        for name in ("directions", "student_iters", "generator_iters", "z_dim", "generator_width",
                     "fragile_tries"):
            check_integer(name, getattr(self, name), 1)
        check_integer("image_size", self.image_size, 4)
        for name in ("lr", "lr_generator", "step", "fragile_eps"):
            check_range(name, getattr(self, name), 0, math.inf, low_open=True)
        check_range("weight_decay", self.weight_decay, 0, math.inf)
        check_range("class_weight", self.class_weight, 0, math.inf)


def disagreement(t_probs: torch.Tensor, s_logits: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-image ``D`` between teacher probabilities ``[B, C]`` and student logits ``[B, C]`` (docstring)."""
    log_t = t_probs.clamp_min(P_MIN).log()
    if loss == "kl":
        return (t_probs * (log_t - F.log_softmax(s_logits, 1))).sum(1)
    t_hat = log_t - log_t.mean(1, keepdim=True)
    s_hat = s_logits - s_logits.mean(1, keepdim=True)
    return (s_hat - t_hat).abs().mean(1)


class BudgetSpent(Exception):
    """The next batch of queries would exceed the budget."""


class Oracle:
    """The teacher behind a query budget: ``oracle(x)`` sends ``x`` unless that would exceed ``budget``."""

    def __init__(self, view: QueryOnly, budget: int, device: torch.device):
        self.view, self.budget, self.device, self._start = view, int(budget), device, view.queries

    @property
    def used(self) -> int:
        return self.view.queries - self._start

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.used + len(x) > self.budget:
            raise BudgetSpent
        return self.view(x.detach()).to(self.device)


def generator_objective(t_probs: torch.Tensor, s_logits: torch.Tensor, y: torch.Tensor, params: DistillParams
                        ) -> torch.Tensor:
    """Per-image ``J = D − λ·CE(p_T, y)`` the generator ascends (module docstring)."""
    j = disagreement(t_probs, s_logits, params.loss)
    if params.class_weight:
        j = j - params.class_weight * F.nll_loss(t_probs.clamp_min(P_MIN).log(), y, reduction="none")
    return j


def fragile_mask(oracle: Oracle, x: torch.Tensor, t_probs: torch.Tensor, eps: float, tries: int,
                 g: torch.Generator) -> torch.Tensor:
    """Which images of ``x`` are fragile: the teacher's arg max changes for one of ``tries`` random corners of
    the L∞ ball of radius ``eps`` (``tries · len(x)`` queries)."""
    signs = torch.randn(tries, *x.shape, generator=g).sign().to(x.device)
    moved = (x.unsqueeze(0) + eps * signs).clamp(0, 1).flatten(0, 1)
    flipped = oracle(moved).argmax(1).view(tries, len(x)) != t_probs.argmax(1)
    return flipped.any(0)


class _Student:
    """The student, its optimizer and schedule, and the bookkeeping of its steps."""

    def __init__(self, params: DistillParams, num_classes: int, planned: int, seed: int, device: torch.device):
        kwargs = {"width": params.width} if params.width else {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                self.model = to_channels_last(build_model(params.arch, num_classes=num_classes, **kwargs).to(device))
            except TypeError:
                raise DomainlockError(f"width={params.width!r} is not an option of arch {params.arch!r}; "
                                      "valid: width=0 (its default)") from None
        cfg = TrainConfig(epochs=1, lr=params.lr, weight_decay=params.weight_decay, schedule="cosine",
                          warmup_epochs=0.0)
        self.opt = make_optimizer(self.model.parameters(), cfg)
        self.sched = make_scheduler(self.opt, cfg, max(1, planned))
        self.loss, self.steps, self.skipped, self.kept, self.seen = params.loss, 0, 0, 0, 0
        self.device, self.bf16 = device, resolve_bf16(params.precision, device)
        self.losses: list[float] = []
        self.agree: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The student's float32 logits on ``x`` (its forward in the attack's precision). The generator's forward
        differences evaluate the student in float32: bf16's 8-bit mantissa would drown a step of 1e-3."""
        with forward_autocast(self.bf16, self.device):
            return self.model(x).float()

    def train_step(self, x: torch.Tensor, t_probs: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        self.steps += 1
        self.seen += len(x)
        if keep is not None:
            x, t_probs = x[keep], t_probs[keep]
        self.kept += len(x)
        if len(x) >= 2:   # BatchNorm needs two images
            self.model.train()
            logits = self.forward(x)
            loss = disagreement(t_probs, logits, self.loss).mean()
            if not torch.isfinite(loss):
                raise TrainingDivergedError("the distillation loss became NaN/inf; lower --lr")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            self.losses.append(float(loss.detach()))
            self.agree.append(float((logits.argmax(1) == t_probs.argmax(1)).float().mean()))
        else:
            self.skipped += 1


def _teacher(oracle: Oracle, x: torch.Tensor, params: DistillParams, g: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The teacher's probabilities on ``x`` and, with ``fragile_only``, which images are fragile (both
    sent in one budget check, so a batch is either fully labelled or not sent)."""
    extra = params.fragile_tries * len(x) if params.fragile_only else 0
    if oracle.used + len(x) + extra > oracle.budget:
        raise BudgetSpent
    t = oracle(x)
    if not params.fragile_only:
        return t, None
    return t, fragile_mask(oracle, x, t, params.fragile_eps, params.fragile_tries, g)


def _per_student_step(params: DistillParams, batch: int) -> int:
    return batch * (1 + (params.fragile_tries if params.fragile_only else 0))


def distill_from_images(oracle: Oracle, x_all: torch.Tensor, params: DistillParams, seed: int,
                        device: torch.device) -> tuple[_Student, dict[str, Any]]:
    """``queries=other``: the student learns the teacher's soft labels of augmented views of ``x_all``."""
    n = len(x_all)
    if n < 2:
        raise DomainlockError(f"the other domain has {n} image(s); distillation needs at least 2")
    bs = min(params.batch_size, n)
    planned = min(params.steps, oracle.budget // _per_student_step(params, bs))
    g = torch.Generator().manual_seed(seed + 31)
    aug = get_augment(params.augment)
    student, order, pos = None, torch.randperm(n, generator=g), 0
    try:
        while student is None or student.steps < params.steps:
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=g), 0
            xb = x_all[order[pos:pos + bs]].to(device)
            pos += bs
            xb = aug(xb, g) if aug else xb
            t, keep = _teacher(oracle, xb, params, g)
            if student is None:
                student = _Student(params, t.shape[1], planned, seed, device)
            student.train_step(xb, t, keep)
    except BudgetSpent:
        pass
    if student is None:
        raise DomainlockError(f"budget={params.budget!r} is below one batch of queries "
                              f"({_per_student_step(params, bs)}); valid: a larger budget")
    return student, {"other_images": n}


def distill_from_generator(oracle: Oracle, params: DistillParams, seed: int, device: torch.device
                           ) -> tuple[_Student, dict[str, Any]]:
    """``queries=generator``: the minimax between a conditional query generator and the student (docstring)."""
    bs, m = params.batch_size, params.directions
    per_round = params.generator_iters * bs * (m + 1) + params.student_iters * _per_student_step(params, bs)
    planned = min(params.steps, (oracle.budget // per_round) * params.student_iters + 1)
    g = torch.Generator().manual_seed(seed + 37)
    shape = (3, params.image_size, params.image_size)
    gen_steps, gen_d = 0, []
    try:
        xb = torch.rand(bs, *shape, generator=g).to(device)
        t, keep = _teacher(oracle, xb, params, g)
    except BudgetSpent:
        raise DomainlockError(f"budget={params.budget!r} is below one batch of queries "
                              f"({_per_student_step(params, bs)}); valid: a larger budget") from None
    student = _Student(params, t.shape[1], planned, seed, device)
    student.train_step(xb, t, keep)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        gen = to_channels_last(QueryGenerator(params.z_dim, shape, t.shape[1], params.generator_width).to(device))
    opt_g = torch.optim.Adam(gen.parameters(), lr=params.lr_generator)
    try:
        while student.steps < params.steps:
            for _ in range(params.generator_iters):
                gen_d.append(_generator_step(gen, opt_g, student, oracle, params, g, device))
                gen_steps += 1
            for _ in range(min(params.student_iters, params.steps - student.steps)):
                with torch.no_grad():
                    xb, _ = _sample(gen, bs, g, student)
                t, keep = _teacher(oracle, xb, params, g)
                student.train_step(xb, t, keep)
    except BudgetSpent:
        pass
    return student, {"generator_steps": gen_steps, "generator_objective": _curve(gen_d)}


def _sample(gen: QueryGenerator, n: int, g: torch.Generator, student: _Student) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float32 queries and their classes, the generator's forward in the student's precision."""
    with forward_autocast(student.bf16, student.device):
        x, y = gen.sample(n, g, student.device)
    return x.float(), y


def _generator_step(gen: QueryGenerator, opt: torch.optim.Optimizer, student: _Student, oracle: Oracle,
                    params: DistillParams, g: torch.Generator, device: torch.device) -> float:
    """One ascent step of the generator on ``J`` (module docstring); returns the batch's mean ``J``."""
    gen.train()
    student.model.eval()
    x, y = _sample(gen, params.batch_size, g, student)
    reps = params.directions + 1

    def objective(xs: torch.Tensor) -> torch.Tensor:
        s_logits = torch.cat([student.model(c) for c in xs.split(EVAL_BATCH)])   # float32: see _Student.forward
        return generator_objective(oracle(xs), s_logits, y.repeat(reps), params)

    with torch.no_grad():   # the gradient is estimated from the values: no graph through the student
        grad, j = forward_difference_grad(objective, x.detach(), params.directions, params.step, g)
    opt.zero_grad(set_to_none=True)
    x.backward(-grad / len(x))          # ascent: minimize -J
    opt.step()
    return float(j.detach().mean())


def _curve(values: list[float], points: int = 10) -> list[float]:
    """``values`` averaged over ``points`` equal chunks (a short history for the record)."""
    if not values:
        return []
    k = max(1, math.ceil(len(values) / points))
    return [round(sum(values[i:i + k]) / len(values[i:i + k]), 4) for i in range(0, len(values), k)]


@register_attack
class Distill(Attack):
    name = "distill"
    summary = "steal the model by distillation from its outputs only (black box; ATEsc, DFME)"
    example = "domainlock attack distill --model runs/sa-map --target syn --queries other --other uci-digits"
    Params = DistillParams

    def threat(self, params: DistillParams) -> ThreatModel:
        return ThreatModel(other_unlabelled=params.queries == "other", white_box=False)

    def run(self, model: nn.Module | QueryOnly, access, params: DistillParams, ctx) -> AttackOutcome:
        view = model if isinstance(model, QueryOnly) else QueryOnly(model, ctx.device)
        oracle = Oracle(view, params.budget, ctx.device)
        if params.queries == "other":
            student, extra = distill_from_images(oracle, access.other_unlabelled(), params, ctx.seed, ctx.device)
        else:
            student, extra = distill_from_generator(oracle, params, ctx.seed, ctx.device)
        info = {"queries": oracle.used, "budget": params.budget, "student_steps": student.steps,
                "skipped_steps": student.skipped, "num_classes": student.model.num_classes,
                "loss": _curve(student.losses), "batch_agreement": _curve(student.agree), **extra}
        if params.fragile_only:
            info["fragile_fraction"] = round(student.kept / max(1, student.seen), 4)
        return AttackOutcome(student.model.eval(), info)
