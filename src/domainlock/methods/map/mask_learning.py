"""MAP's mask-learning loop (:func:`learn_mask`), shared by ``sa-map``, ``sf-map`` and ``df-map``.

The source weights are frozen; a learnable binary mask over them (:class:`~domainlock.masking.MaskedModel`:
straight-through estimator, BatchNorm in eval with the source statistics, biases unmasked by default) is
trained on its scores to minimize the objective of :mod:`domainlock.methods.map.loss`.

Optimizer and the pruning burst. Per-entry Adam moves every score by about ``lr`` per step whatever its
gradient, so every score the loss pushes down reaches the threshold at the same step
(~``(init_score - threshold) / lr``) and the source collapses in one burst (METHODS.md). ``nsgd`` (the
default; a reconstructed choice) is SGD with momentum on gradients divided by each tensor's RMS: all layers
move at the same overall rate, but within a tensor the entries with the largest gradients reach the
threshold first, so pruning is gradual and the source term can answer. ``layer-adam`` (one second moment
per tensor) and per-entry ``adam`` are kept as options.

Selection. A transient dip of the held-out source accuracy can occur while the target is being cut
(``worst_source_acc`` in the info records it). ``guard`` returns the last evaluated mask whose held-out
source accuracy is within ``guard_tol`` of the unmasked model's (or the unmasked model if none is), so a
collapsed mask is never returned. ``early_stop`` ends the loop at the first evaluation where the held-out
source passes the guard and the mean capped target damage since the previous evaluation is at least
``early_stop`` times its largest value (:func:`~domainlock.methods.map.loss.max_damage`).

Restyled keep set (``keep_restyle``, off by default): each step also adds ``keep_restyle_weight · (KL(p_src(x̃) ||
p_m(x̃)) + source_ce · CE(argmax p_src(x̃), p_m(x̃)))`` on a batch x̃ of target images seen through
:mod:`~domainlock.methods.map.restyle` (BN inputs re-normalized to the source statistics in both models).

Why the defaults are what they are: :mod:`domainlock.methods.map.config`; measurements: ``docs/design/map.md``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...data.augment import get_augment
from ...errors import DomainlockError
from ...masking import MaskedModel
from ...models import split_model
from ...utils.layout import to_contiguous
from ..base import RunContext, Sampler
from .config import MAPConfig
from .loss import map_loss, max_damage, source_kl
from .restyle import Restyler


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, device: torch.device, bs: int = 1024) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        out = [model(x[i:i + bs].to(device)) for i in range(0, len(x), bs)]
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.empty(0)


class LayerAdam(torch.optim.Optimizer):
    """Adam whose second moment is one scalar per tensor (the mean squared gradient), not per entry.

    Per-entry Adam moves every score by about ``lr`` per step whatever its gradient, so all the scores
    the loss pushes down reach the threshold together (the pruning burst); with one scale per tensor
    the entries with the largest gradients are pruned first, and the steps shrink as the loss settles.
    """

    def __init__(self, params, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-12):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["t"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros((), device=p.device)
                st["t"] += 1
                st["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["v"].mul_(b2).add_(p.grad.pow(2).mean(), alpha=1 - b2)
                mhat = st["m"] / (1 - b1 ** st["t"])
                vhat = st["v"] / (1 - b2 ** st["t"])
                p.add_(mhat / (vhat.sqrt() + group["eps"]), alpha=-group["lr"])
        return None


@torch.no_grad()
def _normalize_grads(params: list[nn.Parameter]) -> None:
    """Divide each tensor's gradient by its RMS (so every layer moves at the same overall rate)."""
    for p in params:
        if p.grad is not None:
            p.grad.div_(p.grad.pow(2).mean().sqrt().clamp_min(1e-12))


def _lr_factor(step: int, total: int, warmup: float, schedule: str, cooldown: float = 0.0) -> float:
    warm = int(round(warmup * total))
    if step < warm:
        return (step + 1) / (warm + 1)
    if schedule == "cosine":
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    cool = int(round(cooldown * total))
    if cool > 0 and step >= total - cool:
        return (total - step) / (cool + 1)
    return 1.0


def learn_mask(model: nn.Module, x_s: torch.Tensor, x_t: torch.Tensor, hp: MAPConfig, ctx: RunContext, *,
               val_x: torch.Tensor | None = None, val_y: torch.Tensor | None = None,
               y_t: torch.Tensor | None = None, make_target: Any = None, make_keep: Any = None,
               desc: str = "map") -> tuple[nn.Module, dict[str, Any]]:
    """The mask-learning loop shared by the three settings.

    ``model`` is the frozen source model (also the teacher; never modified). ``x_s``/``x_t``: source and
    target images in [0, 1]. ``val_x``/``val_y``: held-out source images and the labels the source
    accuracy is measured against (true labels, or the source model's predictions for a pseudo-source).
    ``y_t``: true target labels (only with ``use_target_labels``). ``make_target``: a function
    ``f(images) -> images``; when given, every target batch is ``f`` applied to a fresh batch of ``x_t``
    (df-map: new neighbour styles at every step). ``make_keep``: a function ``f(images) -> images`` applied
    to a batch of ``keep_neighbours * batch_size`` further target images; its output joins the source batch
    (distilled from the source model like x_s). Returns the folded dense model and info.
    """
    dev = ctx.device
    t_start = time.perf_counter()
    teacher = model.to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    masked = MaskedModel(teacher, hp.mask_config()).to(dev)
    masked.train()
    fmt = torch.channels_last if hp.channels_last else torch.contiguous_format
    masked.to(memory_format=fmt)
    need_feats = hp.target_loss == "feature-collapse"
    if need_feats:
        encoder, head = split_model(masked.model)

    g = ctx.generator(17)
    g_aug = ctx.generator(29)
    aug_s = get_augment(hp.source_augment)
    aug_t = get_augment(hp.target_augment)
    x_s, x_t = x_s.to(dev), x_t.to(dev)
    teacher_s = None if aug_s else _logits(teacher, x_s, dev)      # cached when x_s is not augmented
    pseudo_all = None
    garbage = hp.garbage_class
    if hp.target_loss == "garbage" and garbage < 0:
        # the class the source model predicts least often on (up to 2048 random) target images
        pick = torch.randperm(len(x_t), generator=g)[:2048].to(x_t.device)
        sample = x_t[pick] if make_target is None else make_target(x_t[pick])
        teacher_t = _logits(teacher, sample, dev)
        garbage = int(torch.bincount(teacher_t.argmax(1), minlength=teacher_t.shape[1]).argmin())
    if hp.target_loss == "pseudo-kl":
        if make_target is not None and not hp.use_target_labels:
            raise DomainlockError("pseudo-kl needs fixed target images; it cannot be used with fresh "
                                  "neighbours (set neighbour_copies >= 1)")
        teacher_t = _logits(teacher, x_t, dev)
        if hp.use_target_labels:
            if y_t is None:
                raise DomainlockError("use_target_labels needs target labels")
            pseudo_all = y_t.to(dev)
        else:
            pseudo_all = teacher_t.softmax(1) if hp.soft_pseudo else teacher_t.argmax(1)

    def val_acc() -> float:
        if val_x is None or len(val_x) == 0:
            return float("nan")
        pred = _logits(masked, val_x, dev).argmax(1)
        return float((pred.cpu() == val_y.cpu()).float().mean())

    acc0 = val_acc()
    worst = acc0
    history: list[dict[str, Any]] = [{"step": 0, "val_acc": acc0, "sparsity": 0.0}]
    kept_masks: dict[str, torch.Tensor] | None = None
    kept_step = 0
    scores = masked.score_parameters()
    if hp.optimizer == "adam":
        opt = torch.optim.Adam(scores, lr=hp.lr, betas=(hp.momentum, 0.999))
    elif hp.optimizer == "layer-adam":
        opt = LayerAdam(scores, lr=hp.lr, betas=(hp.momentum, 0.999))
    else:
        opt = torch.optim.SGD(scores, lr=hp.lr, momentum=hp.momentum)
    floor = masked.cfg.threshold - hp.score_floor if hp.score_floor > 0 else None
    s_sampler = Sampler(len(x_s), hp.batch_size, g)
    t_sampler = Sampler(len(x_t), hp.target_batch_size or hp.batch_size, g)
    n_keep = int(round(hp.keep_neighbours * hp.batch_size))
    k_sampler = Sampler(len(x_t), n_keep, g) if (make_keep is not None and n_keep >= 1) else None
    r_sampler = Sampler(len(x_t), hp.batch_size, ctx.generator(31)) if hp.keep_restyle != "none" else None
    last: dict[str, float] = {}
    damage_cap = max_damage(hp.target_loss, hp.beta, num_classes=teacher_s.shape[1] if teacher_s is not None
                            else _logits(teacher, x_s[:2], dev).shape[1])
    window: list[float] = []   # capped damage of every step since the last evaluation
    stopped_at = None
    restylers = ((Restyler(teacher, hp.keep_restyle), Restyler(masked.model, hp.keep_restyle))
                 if hp.keep_restyle != "none" else ())
    bar = None
    if ctx.progress and hp.steps > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=hp.steps, desc=desc, unit="step", dynamic_ncols=True, leave=False)
    t_loop = time.perf_counter()
    try:
        for step in range(hp.steps):
            for group in opt.param_groups:
                group["lr"] = hp.lr * _lr_factor(step, hp.steps, hp.warmup, hp.schedule, hp.cooldown)
            i_s, i_t = s_sampler.next(), t_sampler.next()
            xs, xt = x_s[i_s], x_t[i_t]
            if make_target is not None:
                xt = make_target(xt).detach().to(dev)
            if aug_s:
                xs = aug_s(xs, g_aug)
            if aug_t:
                xt = aug_t(xt, g_aug)
            if teacher_s is None:
                with torch.no_grad():
                    ts = teacher(xs)
            else:
                ts = teacher_s[i_s]
            if k_sampler is not None:
                xk = make_keep(x_t[k_sampler.next()]).detach().to(dev)
                with torch.no_grad():
                    tk = teacher(xk)
                xs, ts = torch.cat([xs, xk]), torch.cat([ts, tk])
            ns = len(xs)
            xb = torch.cat([xs, xt]).contiguous(memory_format=fmt)
            if need_feats:
                feats = encoder(xb)
                logits = head(feats)
                fs, ft = feats[:ns], feats[ns:]
            else:
                logits = masked(xb)
                fs = ft = None
            loss = map_loss(ts, logits[:ns], logits[ns:], target_loss=hp.target_loss, alpha=hp.alpha,
                            beta=hp.beta, temperature=hp.temperature,
                            pseudo=None if pseudo_all is None else pseudo_all[i_t], garbage_class=garbage,
                            feats_t=ft, feats_s=fs, source_ce=hp.source_ce,
                            penalty=masked.score_penalty() if hp.l1 > 0 else None)
            if restylers:
                xr = x_t[r_sampler.next()].contiguous(memory_format=fmt)
                if make_target is not None:
                    xr = make_target(xr).detach().to(dev)
                with restylers[0].on(), restylers[1].on():
                    with torch.no_grad():
                        tr = teacher(xr)
                    mr = masked(xr)
                restyled = source_kl(tr, mr) + hp.source_ce * F.cross_entropy(mr, tr.argmax(1))
                loss.total = loss.total + hp.keep_restyle_weight * restyled
            if not torch.isfinite(loss.total):
                raise DomainlockError(f"MAP loss became {float(loss.total)} at step {step + 1}; lower --lr "
                                      f"(now {hp.lr}) or --alpha (now {hp.alpha})")
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
            if hp.optimizer == "nsgd":
                _normalize_grads(scores)
            opt.step()
            if floor is not None:
                with torch.no_grad():
                    for sc in scores:
                        sc.clamp_(min=floor)
            window.append(float(loss.capped.detach()))
            if (step + 1) % hp.eval_every == 0 or step + 1 == hp.steps:
                last = loss.floats()
                if restylers:
                    last["restyled"] = float(restyled.detach())
                acc = val_acc()
                worst = min(worst, acc) if not math.isnan(acc) else worst
                rep = masked.sparsity()
                sp = rep.fraction
                history.append({"step": step + 1, "val_acc": acc, "sparsity": sp,
                                "layers": [round(layer.fraction, 4) for layer in rep.layers],
                                **{k: round(v, 5) for k, v in last.items()}})
                source_ok = not math.isnan(acc) and acc >= acc0 - hp.guard_tol
                if hp.select == "guard" and source_ok:
                    kept_masks, kept_step = {k: v.clone() for k, v in masked.masks().items()}, step + 1
                window_damage = sum(window) / len(window)
                history[-1]["window_damage"] = round(window_damage, 5)
                window = []
                if bar is not None:
                    bar.set_postfix(val=f"{acc:.3f}", sp=f"{sp:.3f}", ks=f"{last['source_kl']:.3f}",
                                    dt=f"{last['damage']:.3f}")
                if hp.early_stop > 0 and source_ok and window_damage >= hp.early_stop * damage_cap:
                    stopped_at = step + 1
                    break
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for r in restylers:
            r.remove()
    loop_s = time.perf_counter() - t_loop
    steps_run = stopped_at or hp.steps
    selected = steps_run
    if hp.select == "guard" and hp.steps > 0 and not math.isnan(acc0):
        if kept_masks is None:   # never within tolerance: the all-ones mask (the source model)
            masked.reset_scores()
            selected = 0
        else:
            masked.set_masks_from(kept_masks)
            selected = kept_step
    final_acc = val_acc()
    sp = masked.sparsity()
    info = {
        "target_loss": hp.target_loss, "garbage_class": garbage if hp.target_loss == "garbage" else None,
        "steps": hp.steps, "steps_run": steps_run, "early_stopped": stopped_at is not None,
        "selected_step": selected, "sparsity": sp.fraction,
        "layer_sparsity": {layer.name: round(layer.fraction, 5) for layer in sp.layers},
        "source_val_acc_before": acc0, "worst_source_acc": worst, "source_val_acc_after": final_acc,
        "final_losses": last, "history": history, "mask_loop_s": round(loop_s, 3),
        "step_img_per_s": round(steps_run * (s_sampler.bs + t_sampler.bs + (k_sampler.bs if k_sampler else 0))
                                / max(loop_s, 1e-9), 1)
        if hp.steps else None,
        "mask_total_s": round(time.perf_counter() - t_start, 3),
        "used_target_labels": bool(hp.use_target_labels and hp.target_loss == "pseudo-kl"),
    }
    folded = masked.fold()
    to_contiguous(folded)
    return folded, info
