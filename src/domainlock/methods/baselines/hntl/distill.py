"""H-NTL stage 2 (METHODS.md §3): dual-path knowledge distillation into the released classifier f.

The stage-1 model gives every training image x two teachers' logits: the *content path* c(x) = h_y(mu_c(x))
and the *style path* s(x) = h_y(mu_s(x)). The student f (a copy of the source model, the same class) sees
a batch of source rows S and target (or neighbourhood) rows T, and each row gets the teacher of its domain:

    t(x) = c(x) for x in S,    t(x) = s(x) for x in T                 (:func:`dual_path_targets`)
    L2 = mean_x KD( f(x), t(x) ) + w_ce * CE( f(x_S), y_S )

with KD the temperature-softened distillation tau^2 * KL( softmax(t / tau) || softmax(f / tau) )
(``kd_loss="kl"``) or the mean squared error of the logits (``kd_loss="mse"``, what the public reference
trainer uses, there without the CE term). On the source the student fits the content (label-causal)
factor; on the target it fits the style factor, which the stage-1 terms leave without label information,
so the target predictions carry no label.

Shared with the project's NTL loop (:mod:`domainlock.methods.baselines.nontransfer`): the whole model is
fine-tuned from the source weights, BatchNorm statistics are frozen by default (``bn="frozen"``: a mixed
source/target batch in train mode would overwrite them), and equal source and other batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ....errors import TrainingDivergedError
from ....evaluation import accuracy_on
from ...base import RunContext, Sampler, StepLog
from ..nontransfer import set_bn_eval
from .disentangle import make_optimizer

KD_LOSSES = ("kl", "mse")


def dual_path_targets(content: torch.Tensor, style: torch.Tensor, is_source: torch.Tensor) -> torch.Tensor:
    """Row-wise teacher logits: ``content`` where ``is_source`` is true, ``style`` elsewhere."""
    return torch.where(is_source.view(-1, 1), content, style)


def distill(student: torch.Tensor, teacher: torch.Tensor, temperature: float, kind: str = "kl") -> torch.Tensor:
    """``KD(student, teacher)`` of the module docstring, averaged over rows."""
    if kind == "mse":
        return F.mse_loss(student, teacher)
    log_p_s = F.log_softmax(student / temperature, 1)
    p_t = F.softmax(teacher / temperature, 1)
    return temperature ** 2 * (p_t * (p_t.clamp_min(1e-12).log() - log_p_s)).sum(1).mean()


def hntl_loss(student: torch.Tensor, content: torch.Tensor, style: torch.Tensor, is_source: torch.Tensor,
              y: torch.Tensor, *, temperature: float, kind: str, ce_weight: float) -> dict[str, torch.Tensor]:
    """``L2`` of the module docstring on one batch (``y`` is read on the source rows only)."""
    kd = distill(student, dual_path_targets(content, style, is_source), temperature, kind)
    zero = student.new_zeros(())
    ce = F.cross_entropy(student[is_source], y[is_source]) if ce_weight > 0 and bool(is_source.any()) else zero
    return {"total": kd + ce_weight * ce, "kd": kd, "source_ce": ce}


@dataclass
class DistillSpec:
    """What stage 2 needs from the method's hyper-parameters."""

    steps: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    temperature: float = 4.0
    kd_loss: str = "kl"
    ce_weight: float = 1.0
    bn: str = "frozen"
    log_every: int = 20


def train_student(model: nn.Module, x_s: torch.Tensor, y_s: torch.Tensor, teach_s: tuple[torch.Tensor, torch.Tensor],
                  x_o: torch.Tensor, teach_o: tuple[torch.Tensor, torch.Tensor], spec: DistillSpec, ctx: RunContext,
                  *, val: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune ``model`` in place on ``L2``. ``teach_s``/``teach_o``: the (content, style) teacher logits of
    every source / other image, row-aligned with ``x_s`` / ``x_o``; ``val``: held-out source images and
    labels measured before and after."""
    dev = ctx.device
    t0 = time.perf_counter()
    model.to(dev)
    g = ctx.generator(43)
    ss, so = Sampler(len(x_s), spec.batch_size, g), Sampler(len(x_o), spec.batch_size, g)
    acc0 = accuracy_on(model, *val, dev) if val is not None else float("nan")
    for p in model.parameters():
        p.requires_grad_(True)
    opt = make_optimizer(model.parameters(), spec.optimizer, spec.lr, spec.momentum, spec.weight_decay)
    log = StepLog(spec.steps, spec.log_every, "hntl/distill", ctx.progress,
                  lambda last: {"kd": f"{last['kd']:.3f}", "ce": f"{last['source_ce']:.3f}"})
    try:
        model.train()
        if spec.bn == "frozen":
            set_bn_eval(model)
        for step in range(spec.steps):
            i, j = ss.next(), so.next()
            x = torch.cat([x_s[i], x_o[j]]).to(dev)
            content = torch.cat([teach_s[0][i], teach_o[0][j]]).to(dev)
            style = torch.cat([teach_s[1][i], teach_o[1][j]]).to(dev)
            y = torch.cat([y_s[i], torch.zeros(len(j), dtype=y_s.dtype)]).to(dev)   # other labels never read
            is_source = torch.arange(len(x), device=dev) < len(i)
            loss = hntl_loss(model(x), content, style, is_source, y, temperature=spec.temperature,
                             kind=spec.kd_loss, ce_weight=spec.ce_weight)
            if not torch.isfinite(loss["total"]):
                raise TrainingDivergedError(f"hntl distillation loss became {float(loss['total'])} at step "
                                            f"{step + 1}; lower --lr (now {spec.lr})")
            opt.zero_grad(set_to_none=True)
            loss["total"].backward()
            opt.step()
            log.step(step, lambda loss=loss: {k: float(v.detach()) for k, v in loss.items()})
    finally:
        log.close()
        model.eval()
    history = log.history
    acc1 = accuracy_on(model, *val, dev) if val is not None else float("nan")
    return model, {"steps": spec.steps, "history": history, "source_val_acc_before": acc0,
                   "source_val_acc_after": acc1, "stage2_s": round(time.perf_counter() - t0, 3)}


__all__ = ["KD_LOSSES", "DistillSpec", "distill", "dual_path_targets", "hntl_loss", "train_student"]
