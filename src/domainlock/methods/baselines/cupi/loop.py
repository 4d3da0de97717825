"""The training loop of CUPI-domain: fine-tune the whole source model on the loss of :mod:`.pyramid`.

Each step draws ``batch_size`` source images (x_s, y_s) and as many other images (x_o, y_o): real labelled target
images, or neighbourhood images made from the source for the target-free variant
(:func:`~domainlock.methods.baselines.ntl.other_data`). The isolation anchors are the first
k = max(1, round(cupi_share * |x_o|)) other images, fed a second time (the reference code feeds the same target
images twice: once plain, once fused); fused row j takes its style from source row j mod |x_s| (the authorized
anchor; both batches are shuffled, so the pairing is random). One forward pass of [x_s; x_o; x_o[:k]] runs with
:class:`~.pyramid.PyramidFusion` hooked after every encoder block (CUTI's hook points and hook context); the banks
are updated from that pass (detached), then the loss is taken with kappa_t = :func:`~.pyramid.kappa_at`.

Choices of the shared loop kept (:mod:`domainlock.methods.baselines.nontransfer`): fine-tuning from the source
weights with Adam, BatchNorm frozen by default (``bn="frozen"``), source images used as they are, hooks removed
on exit so the returned model is the plain classifier. Added: the learning rate is multiplied by ``lr_decay``
after every step (the reference code: 0.999 per iteration; 1.0 keeps it constant).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ....errors import DomainlockError
from ....evaluation import accuracy_on
from ....models import split_model
from ...base import RunContext, Sampler, StepLog
from ..cuti import restyling
from ..nontransfer import OtherBatch, draw_batches, set_bn_eval
from .pyramid import CUPIBanks, PyramidFusion, cupi_loss, kappa_at


def anchor_count(share: float, n_other: int) -> int:
    """k: the isolation anchors fed per step (at least one)."""
    return max(1, int(round(share * n_other)))


def train_cupi(model: nn.Module, x_s: torch.Tensor, y_s: torch.Tensor, n_classes: int, other: OtherBatch,
               points: list[nn.Module], hp: Any, ctx: RunContext, *,
               val: tuple[torch.Tensor, torch.Tensor] | None, desc: str = "cupi",
               on_step: Callable[[int, dict[str, float]], None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune ``model`` in place (hyper-parameters ``hp``: a :class:`~.method.CUPIConfig`) and return it with
    diagnostics. ``points``: the modules after which :class:`PyramidFusion` runs. ``val``: held-out source
    images measured before and after. ``on_step(step, losses)`` sees every step's loss parts (tests)."""
    dev = ctx.device
    t0 = time.perf_counter()
    model.to(dev)
    encoder, head = split_model(model)
    g = ctx.generator(71)
    sampler = Sampler(len(x_s), hp.batch_size, ctx.generator(41))
    fusion = PyramidFusion(hp.generator, rng=g)
    acc0 = accuracy_on(model, *val, dev) if val is not None else float("nan")
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: hp.lr_decay ** t)
    banks: CUPIBanks | None = None
    log = StepLog(hp.steps, 20, desc, ctx.progress,
                  lambda last: {"ks": f"{last['source_ce']:.3f}", "kc": f"{last['cupi_ce']:.2f}",
                                "ko": f"{last['other_ce']:.2f}"})
    t_loop, n_imgs, k = time.perf_counter(), 0, 0
    try:
        with restyling(points, fusion):
            model.train()
            if hp.bn == "frozen":
                set_bn_eval(model)
            for step in range(hp.steps):
                xs, ys, xo, yo = draw_batches(sampler, x_s, y_s, other, step, dev)
                ns, no = len(xs), len(xo)
                k = anchor_count(hp.cupi_share, no)
                yc = yo[:k]
                fusion.set_rows(ns + no + torch.arange(k), torch.arange(k) % ns, n_stats=ns + no)
                feats = encoder(torch.cat([xs, xo, xo[:k]]))
                logits = head(feats)
                levels = fusion.levels
                if banks is None:
                    banks = CUPIBanks.create(n_classes, feats[0].numel(), [m.shape[1] for m, _ in levels],
                                             hp.momentum, dev)
                banks.update(feats[ns + no:], yc, [(m[:ns], s[:ns]) for m, s in levels], ys)
                loss = cupi_loss(logits[:ns], ys, logits[ns:ns + no], yo, logits[ns + no:], yc, feats[:ns],
                                 feats[ns:ns + no], [(m[ns:], s[ns:]) for m, s in levels], banks, alpha=hp.alpha,
                                 beta=hp.beta, kappa=kappa_at(step + 1, hp.steps, hp.kappa))
                if not torch.isfinite(loss.total):
                    raise DomainlockError(f"{desc} loss became {float(loss.total)} at step {step + 1}; lower --lr "
                                          f"(now {hp.lr})")
                opt.zero_grad(set_to_none=True)
                loss.total.backward()
                opt.step()
                sched.step()
                n_imgs += ns + no + k
                if on_step is not None:
                    on_step(step, loss.floats())
                log.step(step, loss.floats)
    finally:
        log.close()
        model.eval()
    last, history = log.last, log.history
    loop_s = time.perf_counter() - t_loop
    acc1 = accuracy_on(model, *val, dev) if val is not None else float("nan")
    info = {
        "steps": hp.steps, "final_losses": last, "history": history,
        "source_val_acc_before": acc0, "source_val_acc_after": acc1,
        "loop_s": round(loop_s, 3), "step_img_per_s": round(n_imgs / max(loop_s, 1e-9), 1) if hp.steps else None,
        "train_total_s": round(time.perf_counter() - t0, 3), "fusion_calls": fusion.calls,
        "anchors_per_step": k,
        "bank_classes_seen": int(banks.features.seen.sum()) if banks is not None else 0,
    }
    return model, info


__all__ = ["anchor_count", "train_cupi"]
