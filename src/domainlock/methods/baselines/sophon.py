"""SOPHON -- non-fine-tunable learning (Deng et al., IEEE S&P 2024; METHODS.md §3), a baseline.

Starting from the source weights θ, every iteration takes one fine-tuning simulation step, then
``normal_steps`` normal steps; each kind of step has its own Adam optimizer over all weights.

(a) Simulation (first-order MAML, :func:`simulate_finetuning`). A functional copy of the model plays the
    attacker: its head re-initialized (``reinit_head``; the model's own head is untouched), it takes
    K = ``inner_batches`` SGD steps  θ_k = θ_{k-1} - η ∇ CE(θ_{k-1}; S_k)  on the support sets S_k of K
    labelled target batches, and after each step its suppression loss L_sup (ICE or KLU,
    :mod:`domainlock.losses.suppression`) is measured on the rest Q_k of the same batch (the query):

        L_FTS = (1/K) Σ_k L_sup(θ_k; Q_k),        g = (1/K) Σ_k ∇_{θ_k} L_sup(θ_k; Q_k)

    g, the first-order gradient (no second derivatives through the inner steps), is applied to θ: clipped
    to norm ``clip``, one Adam step at ``alpha * lr``. Weights the copy re-initialized get no part of g.
(b) Normal step: cross-entropy on a labelled source batch, Adam at ``beta * lr``.

Batches: each target batch has ``inner_batch_size`` images, of which ``support`` form a C-way support set
(⌊support / C⌋ per class as far as the batch has them, the rest at random) and the others the query.
BatchNorm: the copy runs on batch statistics, like the attacker, over *copies* of the running statistics,
so a simulation step leaves the model's statistics exactly as they were (the reference saves and restores
them). Normal steps run BN frozen by default (eval mode, source statistics kept; see
:mod:`.nontransfer`) or in train mode (``bn="train"``, the reference's).

Project extension (``direct_weight`` w, 0 in the ``reference`` preset): w · L_sup of the model as released
(own head, running statistics) on Q_1 joins L_FTS, with its exact gradient. With a re-initialized head
nothing else pushes the released model's own target predictions.

Reconstruction choices: no roll-back when the source accuracy falls (the reference restores the last
iterate under 80%; here the held-out source accuracy is logged); the inner optimizer is plain SGD as in
the reference, optionally with momentum and a separate rate for the fresh head.
CPU-sized defaults (Method.presets["reference"] keeps the paper's; measurements in docs/design/sophon.md):
* ``inner_lr = 0.01``, ``inner_head_lr = 0.05`` (the fine-tuning attack's fresh-head rate): in 8 steps the
  simulated attacker reaches 77% on syn from the mnist model, where 8 steps at 1e-4 reach 20%;
* ``inner_batch_size = 64``, ``support = 50``: 5 shots per class for 10 classes, a 14-image query;
* ``alpha = 5``, ``normal_steps = 4``: alpha 10 with one normal step wrecked the source (mnist 99 -> 35%);
  four cheap source steps per simulation step hold it within a point at alpha 5;
* ``iterations = 160``: ~3.5 minutes on a shared CPU (mnist->syn); the attacker's accuracy was still falling.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DomainlockError, TrainingDivergedError, check_choice, check_finite, check_integer, check_range
from ...evaluation import accuracy_on
from ...losses.suppression import SUPPRESSION_LOSSES, suppression_loss
from ...models import reinitialize, split_model
from ...utils.layout import batch_to_channels_last, to_channels_last, to_contiguous
from ..base import DataAccess, Method, MethodResult, RunContext, Sampler
from ..registry import register_method
from .nontransfer import BN_MODES, set_bn_eval, subsample
from .ntl import source_data

# ------------------------------------------------------------------------------------------ configuration


@dataclass
class SophonConfig:
    """Hyper-parameters of SOPHON (flat: every field is a CLI flag)."""

    loss: str = field(default="ice", metadata={
        "help": "suppression loss on the simulated attacker's target predictions: ice (inverse cross-entropy "
                "-log(1 - p_y)) or klu (KL divergence between the uniform distribution and p)",
        "choices": SUPPRESSION_LOSSES})
    alpha: float = field(default=5.0, metadata={"help": "simulation steps' Adam rate is alpha * lr (> 0)"})
    beta: float = field(default=5.0, metadata={"help": "normal steps' Adam rate is beta * lr (> 0)"})
    lr: float = field(default=1e-4, metadata={"help": "base learning rate of both Adam optimizers"})
    iterations: int = field(default=160, metadata={
        "help": "outer iterations, each one simulation step then normal_steps normal steps (0 = return the "
                "source model)"})
    normal_steps: int = field(default=4, metadata={"help": "normal (source cross-entropy) steps per iteration"})
    batch_size: int = field(default=64, metadata={"help": "source images per normal step"})
    inner_batches: int = field(default=8, metadata={
        "help": "simulated fine-tuning steps per simulation step, one labelled target batch each"})
    inner_batch_size: int = field(default=64, metadata={"help": "target images per inner batch (support + query)"})
    support: int = field(default=50, metadata={
        "help": "images of each inner batch the simulated attacker trains on (a C-way support set, support/C per "
                "class); the rest is the query its suppression loss is measured on"})
    inner_lr: float = field(default=0.01, metadata={"help": "SGD rate of the simulated attacker"})
    inner_head_lr: float = field(default=0.05, metadata={
        "help": "SGD rate of the simulated attacker's re-initialized head (0 = inner_lr)"})
    inner_momentum: float = field(default=0.0, metadata={
        "help": "SGD momentum of the simulated attacker, in [0, 1) (0 = plain SGD, the reference's)"})
    reinit_head: bool = field(default=True, metadata={
        "help": "the simulated attacker starts from a freshly initialized head (a new draw every simulation step)"})
    clip: float = field(default=0.5, metadata={"help": "max norm of the simulation gradient (0 = no clipping)"})
    direct_weight: float = field(default=1.0, metadata={
        "help": "weight of the suppression loss of the model as released (its own head) added to the "
                "simulation loss (0 = off, the reference)"})
    bn: str = field(default="frozen", metadata={
        "help": "BatchNorm in the normal steps: frozen (eval mode, source running statistics kept) or train",
        "choices": BN_MODES})
    target_size: int = field(default=0, metadata={
        "help": "use at most this many target training images (0 = all)"})
    val_size: int = field(default=512, metadata={
        "help": "held-out source images (source val split) measured before, during and after, for the card"})
    log_every: int = field(default=20, metadata={"help": "iterations between logged diagnostics"})


#: the paper's reference values (ICE); ``reference-klu``: its KLU setting (alpha = beta = 1, 5 normal steps)
REFERENCE = {"loss": "ice", "alpha": 3.0, "beta": 5.0, "lr": 1e-4, "iterations": 1000, "normal_steps": 1,
             "batch_size": 150, "inner_batches": 50, "inner_batch_size": 150, "support": 130, "inner_lr": 1e-4,
             "inner_head_lr": 0.0, "inner_momentum": 0.0, "reinit_head": True, "clip": 0.5, "direct_weight": 0.0,
             "bn": "train"}
PRESETS = {"reference": REFERENCE,
           "reference-klu": {**REFERENCE, "loss": "klu", "alpha": 1.0, "beta": 1.0, "normal_steps": 5}}


def validate_sophon(hp: Any) -> None:
    """One-line errors naming the bad value and its valid range."""
    if not isinstance(hp, SophonConfig):
        raise DomainlockError(f"SOPHON hyper-parameters must be a SophonConfig, got {type(hp).__name__}")
    check_choice("loss", hp.loss, SUPPRESSION_LOSSES)
    check_choice("bn", hp.bn, BN_MODES)
    for name in ("alpha", "beta"):
        check_range(name, check_finite(name, getattr(hp, name)), 0.0, 1e4, low_open=True)
    check_range("lr", check_finite("lr", hp.lr), 0.0, 1.0, low_open=True)
    check_range("inner_lr", check_finite("inner_lr", hp.inner_lr), 0.0, 10.0, low_open=True)
    check_range("inner_head_lr", check_finite("inner_head_lr", hp.inner_head_lr), 0.0, 10.0)
    check_range("inner_momentum", check_finite("inner_momentum", hp.inner_momentum), 0.0, 1.0, high_open=True)
    check_range("clip", check_finite("clip", hp.clip), 0.0, 1e6)
    check_range("direct_weight", check_finite("direct_weight", hp.direct_weight), 0.0, 1e4)
    check_integer("iterations", hp.iterations, 0, 10_000_000)
    check_integer("normal_steps", hp.normal_steps, 0, 10_000)
    check_integer("batch_size", hp.batch_size, 2, 1 << 16)
    check_integer("inner_batches", hp.inner_batches, 1, 100_000)
    check_integer("inner_batch_size", hp.inner_batch_size, 3, 1 << 16)
    check_integer("support", hp.support, 2, hp.inner_batch_size - 1)
    check_integer("target_size", hp.target_size, 0, 1 << 30)
    check_integer("val_size", hp.val_size, 0, 1 << 24)
    check_integer("log_every", hp.log_every, 1, 10_000_000)
    if not isinstance(hp.reinit_head, bool):
        raise DomainlockError(f"reinit_head={hp.reinit_head!r} must be true or false")


def labelled_target(data: Any, num_outputs: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a labelled target split, else a one-line error: SOPHON's simulated attacker trains on
    target labels. Missing labels are ``y is None`` or negative entries (an unlabelled-sample marker)."""
    y = getattr(data, "y", None)
    x = getattr(data, "x", None)
    if y is None or x is None:
        raise DomainlockError(f"target {name!r} has no labels; sophon needs labelled target data (its simulated "
                              "attacker fine-tunes on target labels)")
    y = torch.as_tensor(y)
    if y.dim() != 1 or len(y) != len(x) or y.is_floating_point() or y.dtype == torch.bool:
        raise DomainlockError(f"target {name!r} labels must be one integer class per image, got {tuple(y.shape)} "
                              f"{y.dtype} for {len(x)} images")
    missing = int((y < 0).sum())
    if missing:
        raise DomainlockError(f"target {name!r} has {missing} of {len(y)} images without a label (negative); sophon "
                              "needs labelled target data")
    if len(y) and int(y.max()) >= num_outputs:
        raise DomainlockError(f"target {name!r} has label {int(y.max())}; the model has {num_outputs} outputs "
                              f"(valid labels: 0..{num_outputs - 1})")
    if len(torch.unique(y)) < 2:
        raise DomainlockError(f"target {name!r} has {len(torch.unique(y))} labelled class(es); sophon needs at "
                              "least 2")
    return x, y.long()


# ------------------------------------------------------------------------------------------ the simulation


@dataclass
class InnerBatch:
    """One inner step's data: the support set the attacker trains on and the query it is judged on."""

    xs: torch.Tensor
    ys: torch.Tensor
    xq: torch.Tensor
    yq: torch.Tensor


def split_support(y: torch.Tensor, support: int, num_classes: int, g: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(support_idx, query_idx)`` partitioning ``range(len(y))``: up to ``support // num_classes`` rows of each
    class (random ones), then random rows until ``support`` are chosen; the remaining rows are the query."""
    n = len(y)
    if not 0 < support < n:
        raise DomainlockError(f"support={support} needs a batch of more than {support} images, got {n}")
    order = torch.randperm(n, generator=g)
    shots = support // num_classes
    chosen = torch.zeros(n, dtype=torch.bool)
    if shots:
        ys = y[order]
        for c in range(num_classes):
            chosen[order[ys == c][:shots]] = True
    rest = order[~chosen[order]]
    chosen[rest[:support - int(chosen.sum())]] = True
    return torch.nonzero(chosen).flatten(), torch.nonzero(~chosen).flatten()


class TargetBatches:
    """Endless inner batches of labelled target images (a :class:`~domainlock.methods.base.Sampler` pass order)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, support: int, num_classes: int,
                 g: torch.Generator, device: torch.device):
        if len(x) <= support:
            raise DomainlockError(f"support={support} needs more than {support} target images, got {len(x)}")
        self.x, self.y, self.support, self.num_classes, self.g, self.device = x, y, support, num_classes, g, device
        self.sampler = Sampler(len(x), batch_size, g)

    def next(self) -> InnerBatch:
        idx = self.sampler.next()
        s, q = split_support(self.y[idx], self.support, self.num_classes, self.g)
        xb, yb = self.x[idx].to(self.device), self.y[idx].to(self.device)
        return InnerBatch(batch_to_channels_last(xb[s]), yb[s], batch_to_channels_last(xb[q]), yb[q])


@dataclass
class Simulation:
    grads: dict[str, torch.Tensor]   # parameter name -> first-order gradient of L_FTS (kept weights only)
    loss: float                      # L_FTS
    query_acc: list[float]           # the copy's accuracy on Q_k after inner step k
    fresh: list[str]                 # the parameters the copy re-initialized
    eval_acc: float = float("nan")   # the adapted copy's accuracy on ``evaluate`` (eval mode, its own statistics)


def head_name(model: nn.Module) -> str:
    _, head = split_model(model)
    return next(n for n, m in model.named_modules() if m is head)


def fresh_head(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Freshly initialized head parameters (qualified names), seeded; the model and the global RNG untouched."""
    name = head_name(model)
    _, head = split_model(model)
    new = copy.deepcopy(head).cpu()
    with torch.random.fork_rng(devices=[]):
        reinitialize(new, seed)
    dev = next(head.parameters()).device
    return {f"{name}.{n}" if name else n: p.detach().to(dev) for n, p in new.named_parameters()}


def simulate_finetuning(model: nn.Module, batches: list[InnerBatch], *, loss: str, inner_lr: float,
                        inner_head_lr: float = 0.0, inner_momentum: float = 0.0, reinit_head: bool = True,
                        head_seed: int = 0, evaluate: tuple[torch.Tensor, torch.Tensor] | None = None
                        ) -> Simulation:
    """The fine-tuning simulation of the module docstring: the first-order gradient of L_FTS w.r.t. the model's
    weights, computed on a functional copy (parameters and buffers cloned: nothing of ``model`` changes, its
    ``.grad`` included). ``inner_head_lr`` applies to re-initialized head weights (0 = ``inner_lr``).
    ``evaluate``: images and labels the adapted copy is finally scored on, as an attacker would use it."""
    from torch.func import functional_call

    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    fresh = fresh_head(model, head_seed) if reinit_head else {}
    params.update({n: p.clone() for n, p in fresh.items()})
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    names = list(params)
    kept = [n for n in names if n not in fresh]
    rate = {n: (inner_head_lr or inner_lr) if n in fresh else inner_lr for n in names}
    velocity = {n: torch.zeros_like(p) for n, p in params.items()} if inner_momentum else {}
    outer = {n: torch.zeros_like(params[n]) for n in kept}
    total, accs, k = 0.0, [], len(batches)
    modes = [(m, m.training) for m in model.modules()]
    model.train()   # the attacker's BN: batch statistics (running ones updated in the cloned buffers only)
    try:
        for b in batches:
            for p in params.values():
                p.requires_grad_(True)
            ce = F.cross_entropy(functional_call(model, {**params, **buffers}, (b.xs,)), b.ys)
            grads = torch.autograd.grad(ce, [params[n] for n in names])
            with torch.no_grad():
                for n, gr in zip(names, grads, strict=True):
                    if inner_momentum:
                        velocity[n].mul_(inner_momentum).add_(gr)
                        gr = velocity[n]
                    params[n] = params[n] - rate[n] * gr
            for p in params.values():
                p.requires_grad_(True)
            logits = functional_call(model, {**params, **buffers}, (b.xq,))
            sup = suppression_loss(loss, logits, b.yq)
            if not torch.isfinite(sup):
                raise TrainingDivergedError(f"sophon simulation loss became {float(sup.detach())}; lower --inner-lr "
                                            f"(now {inner_lr}) or --alpha")
            for n, gr in zip(kept, torch.autograd.grad(sup, [params[n] for n in kept]), strict=True):
                outer[n].add_(gr, alpha=1.0 / k)
            total += float(sup.detach()) / k
            accs.append(float((logits.argmax(1) == b.yq).float().mean()))
        eval_acc = float("nan")
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                state = {n: p.detach() for n, p in params.items()} | buffers
                pred = torch.cat([functional_call(model, state, (batch_to_channels_last(xb),)).argmax(1).cpu()
                                  for xb in evaluate[0].split(512)])
            eval_acc = float((pred == evaluate[1].cpu()).float().mean())
    finally:
        for m, was in modes:
            m.training = was
    return Simulation(outer, total, accs, sorted(fresh), eval_acc)


def direct_suppression(model: nn.Module, batch: InnerBatch, loss: str, weight: float
                       ) -> tuple[dict[str, torch.Tensor], float]:
    """Gradient of ``weight * L_sup`` of the model as released (eval mode) on the query of ``batch``."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        value = suppression_loss(loss, model(batch.xq), batch.yq)
        grads = torch.autograd.grad(weight * value, [p for _, p in named], allow_unused=True)
    finally:
        for m, was in modes:
            m.training = was
    return {n: g for (n, _), g in zip(named, grads, strict=True) if g is not None}, float(value.detach())


# ------------------------------------------------------------------------------------------ the loop


def _train_mode(model: nn.Module, bn: str) -> None:
    model.train()
    if bn == "frozen":
        set_bn_eval(model)


def train_sophon(model: nn.Module, x_s: torch.Tensor, y_s: torch.Tensor, x_t: torch.Tensor, y_t: torch.Tensor,
                 hp: SophonConfig, ctx: RunContext, *, num_classes: int,
                 val: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``model`` in place by the alternation of the module docstring; return it with diagnostics."""
    dev = ctx.device
    t0 = time.perf_counter()
    to_channels_last(model.to(dev))
    for p in model.parameters():
        p.requires_grad_(True)
    src = Sampler(len(x_s), hp.batch_size, ctx.generator(71))
    tgt = TargetBatches(x_t, y_t, hp.inner_batch_size, hp.support, num_classes, ctx.generator(73), dev)
    sim_kw = dict(loss=hp.loss, inner_lr=hp.inner_lr, inner_head_lr=hp.inner_head_lr,
                  inner_momentum=hp.inner_momentum, reinit_head=hp.reinit_head)
    check = TargetBatches(x_t, y_t, hp.inner_batch_size, hp.support, num_classes, ctx.generator(79), dev)
    check_batches = [check.next() for _ in range(hp.inner_batches)]   # the same draw before and after
    held = subsample(x_t, y_t, 512, ctx.generator(83))

    def attacker_acc(seed: int) -> float:   # the simulated attacker's accuracy on 512 target training images
        return simulate_finetuning(model, check_batches, head_seed=seed, evaluate=held, **sim_kw).eval_acc

    acc0 = accuracy_on(model, *val, dev) if val is not None else float("nan")
    sim0 = attacker_acc(-1)
    params = list(model.parameters())
    opt_sup = torch.optim.Adam(params, lr=hp.alpha * hp.lr)
    opt_norm = torch.optim.Adam(params, lr=hp.beta * hp.lr)
    history: list[dict[str, Any]] = []
    worst_src = acc0
    bar = None
    if ctx.progress and hp.iterations > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=hp.iterations, desc=f"sophon/{hp.loss}", unit="it", dynamic_ncols=True, leave=False)
    t_loop = time.perf_counter()
    try:
        for it in range(hp.iterations):
            batches = [tgt.next() for _ in range(hp.inner_batches)]
            sim = simulate_finetuning(model, batches, head_seed=ctx.seed * 1_000_003 + it, **sim_kw)
            grads, direct = dict(sim.grads), float("nan")
            if hp.direct_weight > 0:
                dg, direct = direct_suppression(model, batches[0], hp.loss, hp.direct_weight)
                for n, g in dg.items():
                    grads[n] = grads[n] + g if n in grads else g
            for n, p in model.named_parameters():
                p.grad = grads.get(n)
            if hp.clip > 0:
                nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], hp.clip)
            opt_sup.step()
            _train_mode(model, hp.bn)
            ce = float("nan")
            for _ in range(hp.normal_steps):
                idx = src.next()
                out = model(batch_to_channels_last(x_s[idx].to(dev)))
                loss = F.cross_entropy(out, y_s[idx].to(dev))
                opt_norm.zero_grad(set_to_none=True)
                loss.backward()
                opt_norm.step()
                ce = float(loss.detach())
            if not (math.isfinite(ce) or hp.normal_steps == 0):
                raise TrainingDivergedError(f"sophon source loss became {ce} at iteration {it + 1}; lower --lr "
                                            f"(now {hp.lr}) or --beta")
            model.eval()
            if (it + 1) % hp.log_every == 0 or it + 1 == hp.iterations:
                src_acc = accuracy_on(model, *val, dev) if val is not None else float("nan")
                worst_src = min(worst_src, src_acc) if val is not None else worst_src
                history.append({"iteration": it + 1, "fts_loss": round(sim.loss, 5), "source_ce": round(ce, 5),
                                "direct_loss": round(direct, 5) if math.isfinite(direct) else None,
                                "query_acc_last": round(sim.query_acc[-1], 4), "source_val_acc": src_acc})
                if bar is not None:
                    bar.set_postfix(fts=f"{sim.loss:.3f}", q=f"{sim.query_acc[-1]:.2f}", ce=f"{ce:.3f}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for p in model.parameters():
            p.grad = None
        model.eval()
    loop_s = time.perf_counter() - t_loop
    to_contiguous(model)
    acc1 = accuracy_on(model, *val, dev) if val is not None else float("nan")
    info = {
        "iterations": hp.iterations, "history": history, "loss": hp.loss,
        "source_val_acc_before": acc0, "source_val_acc_after": acc1,
        "source_val_acc_worst": min(worst_src, acc1) if val is not None else float("nan"),
        "simulated_attacker_acc_before": sim0, "simulated_attacker_acc_after": attacker_acc(-1),
        "loop_s": round(loop_s, 3), "train_total_s": round(time.perf_counter() - t0, 3),
    }
    return model, info


# ------------------------------------------------------------------------------------------ the method


@register_method
class Sophon(Method):
    """SOPHON: first-order-MAML fine-tuning simulation with a suppression loss, alternated with source training."""

    name = "sophon"
    settings = ("source-available",)
    Hparams = SophonConfig
    presets = PRESETS
    summary = ("non-fine-tunable learning (baseline): simulated fine-tuning on the target with a suppression "
               "loss (ice|klu), alternated with source cross-entropy")

    def validate(self, hp: Any, setting: str) -> None:
        validate_sophon(hp)

    def run(self, model: nn.Module, access: DataAccess, hp: SophonConfig, ctx: RunContext) -> MethodResult:
        head_name(model)   # a model that cannot be split fails before any read
        tgt = access.target("train")
        num_classes = _num_outputs(model, tgt.x[:1], ctx.device)
        x_t, y_t = labelled_target(tgt, num_classes, access.target_name)
        x_t, y_t = subsample(x_t, y_t, hp.target_size, ctx.generator(5))
        if len(x_t) <= hp.support:
            raise DomainlockError(f"support={hp.support} needs more than {hp.support} target training images; "
                                  f"{access.target_name!r} has {len(x_t)}")
        src, val = source_data(access, hp, ctx)
        model, info = train_sophon(model, src.x, src.y, x_t, y_t, hp, ctx, num_classes=num_classes, val=val)
        info.update({"target_train_images": int(len(x_t)), "used_target_labels": True,
                     "reinit_head": hp.reinit_head, "direct_weight": hp.direct_weight})
        return MethodResult(model, info)


@torch.no_grad()
def _num_outputs(model: nn.Module, x: torch.Tensor, dev: torch.device) -> int:
    was = model.training
    model.eval()
    try:
        return int(model.to(dev)(batch_to_channels_last(x.to(dev))).shape[1])
    finally:
        model.train(was)


__all__ = ["PRESETS", "InnerBatch", "Simulation", "Sophon", "SophonConfig", "TargetBatches", "direct_suppression",
           "fresh_head", "labelled_target", "simulate_finetuning", "split_support", "train_sophon",
           "validate_sophon"]
