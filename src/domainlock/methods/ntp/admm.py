"""NTP -- non-transferable pruning by ADMM (METHODS.md section 2; seed paper: Ding et al., ECCV 2024).

Only the encoder ``g`` is pruned. A target head ``h_T`` is first fit on frozen encoder features of the
target (the owner plays the attacker's head); then ADMM over the encoder's conv/linear weights ``W`` with a
sparse copy ``Z``, scaled dual ``U`` and mask ``M`` (all ones at the start). Each outer iteration:

1. W-step: ``steps_per_iter`` Adam steps on

       L(W) = CE(h_S(g(x_s)), y_s) - alpha * mean_i min(CE(h_T(g(x_t,i)), y_t,i), c)
              + lambda * R_F(g(x_t), y_t) + (rho / 2) * sum ||W - Z + U||^2

   (plus the simulated-attack term of :mod:`~domainlock.methods.ntp.simulated_attack`, whose gradient is
   computed every ``sim_every``-th step and applied again on the steps in between), re-applying
   ``W <- W * M`` after every step; ``R_F`` is the Fisher ratio of :mod:`domainlock.losses.fisher` on the
   target features (with ``fisher_at`` also on chosen intermediate feature maps);
2. Z-step: ``Z = prox(W + U)``: ``topk`` keeps the k largest magnitudes (projection onto the cardinality
   constraint), ``soft`` soft-thresholds by ``delta / rho`` (the L1 prox of the reference code);
3. ``U <- U + W - Z``;   4. ``M <- 1[Z != 0]``.

It stops when the mask reaches the requested sparsity and ``||W - Z|| / ||Z|| < tol``, or after
``iterations``; then hard-prunes ``W <- W * M`` (further by magnitude if the L1 prox fell short), fine-tunes
the survivors on the source with the mask fixed (:class:`~domainlock.masking.FixedMask`), re-estimates the
BatchNorm statistics and, if asked, applies the exact rescale of :mod:`~domainlock.methods.ntp.rescale`.

Reconstructed choices (the spec leaves them open; the project's own, not the paper's):

* the cap ``c`` applies per target image: it stops pushing images that are already at chance level;
* target batches pass the encoder with BatchNorm on batch statistics without updating the running ones
  (which stay the source's; source batches update them); ``h_T`` is fit on features computed the same way;
* ``topk`` follows a schedule (``cubic``: Zhu & Gupta's ``s_k = s (1 - (1 - k/K)^3)``; ``linear``;
  ``constant``); ``soft`` with ``delta = 0`` thresholds at the scheduled quantile of ``|W + U|``, with
  ``delta > 0`` it is the fixed-threshold prox and stops as soon as it reaches the requested sparsity;
* ``head_mode``: ``fixed`` fits ``h_T`` once (the spec), ``refit`` re-fits a fresh ``h_T`` on the current
  features before every W-step, ``online`` takes one head step before every encoder step.

Why the defaults are what they are: :mod:`~domainlock.methods.ntp.config`; measurements: ``docs/design/ntp.md``.
"""

from __future__ import annotations

import copy
import math
import time
from fnmatch import fnmatch
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...data.augment import get_augment
from ...errors import DomainlockError, check_choice
from ...evaluation import accuracy_on
from ...losses.fisher import fisher_terms
from ...masking.pruning import FixedMask, mask_sparsity, prunable_modules
from ...models import reinitialize, split_model
from ...utils.layout import batch_to_channels_last
from ..base import RunContext, Sampler
from .common import _features, frozen_bn_stats, recalibrate_bn
from .config import SCHEDULES, NTPConfig, _patterns, validate_config
from .rescale import reparameterize
from .simulated_attack import simulated_attack_grads, train_target_head


def scheduled_sparsity(iteration: int, iterations: int, sparsity: float, schedule: str = "cubic") -> float:
    """Sparsity the Z-step aims at after outer iteration ``iteration`` (1-based) of ``iterations``."""
    check_choice("prune_schedule", schedule, SCHEDULES)
    if schedule == "constant":
        return sparsity
    t = min(1.0, iteration / max(1, iterations))
    return sparsity * (t if schedule == "linear" else 1.0 - (1.0 - t) ** 3)


def project_topk(tensors: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Projection onto the cardinality constraint: keep the ``round((1 - sparsity) * N)`` largest
    magnitudes over all tensors together (one global ranking), zero the rest. Ties broken by position."""
    flat = torch.cat([t.detach().abs().flatten().cpu() for t in tensors])
    n_prune = min(flat.numel(), max(0, round(sparsity * flat.numel())))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_prune > 0:
        keep[torch.argsort(flat, stable=True)[:n_prune]] = False
    out, i = [], 0
    for t in tensors:
        k = t.numel()
        out.append(t.detach() * keep[i:i + k].view_as(t).to(t.device, t.dtype))
        i += k
    return out


def soft_threshold(tensors: list[torch.Tensor], threshold: float) -> list[torch.Tensor]:
    """The L1 prox: ``sign(v) * max(|v| - threshold, 0)`` entrywise."""
    return [torch.sign(t.detach()) * (t.detach().abs() - threshold).clamp_min(0) for t in tensors]


def quantile_threshold(tensors: list[torch.Tensor], sparsity: float) -> float:
    """The magnitude below which a fraction ``sparsity`` of the entries lies (the soft threshold that
    zeroes that fraction)."""
    flat = torch.cat([t.detach().abs().flatten().cpu() for t in tensors])
    k = round(sparsity * flat.numel())
    if k <= 0:
        return 0.0
    return float(torch.kthvalue(flat, min(k, flat.numel())).values)



def _module_name(model: nn.Module, target: nn.Module) -> str:
    for name, mod in model.named_modules():
        if mod is target:
            return name
    raise DomainlockError("the encoder is not a submodule of the model")  # pragma: no cover



def ntp_prune(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
              hp: NTPConfig, ctx: RunContext, *, val_x: torch.Tensor | None = None,
              val_y: torch.Tensor | None = None, num_classes: int | None = None) -> tuple[nn.Module, dict]:
    """Run NTP on ``model`` in place (see the module docstring); return it (dense, pruned weights exactly
    zero, no hooks left) and the diagnostics."""
    validate_config(hp)
    t_start = time.perf_counter()
    encoder, head = split_model(model)   # raises, saying how to name the split
    dev = ctx.device
    model.to(dev)
    model.to(memory_format=torch.channels_last)   # ~1.7x faster convolutions on CPU; undone at the end
    enc_name = _module_name(model, encoder)
    layers = prunable_modules(encoder)
    if not layers:
        raise DomainlockError(f"the encoder of {type(model).__name__} has no conv or linear layer to prune")
    full = {n: (f"{enc_name}.{n}" if enc_name else n) for n in layers}
    head_name = _module_name(model, head)
    enc_params = {(f"{enc_name}.{n}" if enc_name else n): p for n, p in encoder.named_parameters()}
    weights = [m.weight for m in layers.values()]
    n_weights = sum(w.numel() for w in weights)
    if num_classes is None:
        num_classes = int(getattr(model, "num_classes", None) or int(max(ys.max(), yt.max())) + 1)
    cap = hp.cap if hp.cap > 0 else math.log(num_classes)
    g = ctx.generator(1)
    g_aug = ctx.generator(2)
    aug_s = get_augment(hp.source_augment) if hp.source_augment != "none" else None
    aug_t = get_augment(hp.target_augment) if hp.target_augment != "none" else None
    history: list[dict[str, Any]] = []

    # -- 1. the target head h_T on frozen encoder features (the attacker's view: batch statistics)
    t0 = time.perf_counter()
    head_t = reinitialize(copy.deepcopy(head), ctx.seed + 17)
    pick = torch.randperm(len(xt), generator=g)[:hp.head_size]
    feats = _features(encoder, xt[pick], dev, running=hp.target_bn == "running")
    head_info = train_target_head(head_t, feats, yt[pick].cpu(), hp.head_steps, hp.head_lr, ctx.generator(3), dev)
    head_s = time.perf_counter() - t0
    del feats

    # -- hooks that capture intermediate target features for R_F
    pats = _patterns(hp.fisher_at)
    taps = {n: m for n, m in encoder.named_modules() if n and any(fnmatch(n, p) for p in pats)}
    if pats and not taps:
        names = [n for n, _ in encoder.named_modules() if n]
        raise DomainlockError(f"fisher_at={hp.fisher_at!r} matches no encoder submodule; names: "
                              f"{', '.join(names[:40])}")
    captured: dict[str, torch.Tensor] = {}
    capture = {"on": False}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: captured.__setitem__(n, o) if capture["on"] else None)
             for n, m in taps.items()]

    head_opt = None
    if hp.head_mode == "online":
        for p in head_t.parameters():
            p.requires_grad_(True)
        head_opt = torch.optim.Adam(head_t.parameters(), lr=hp.head_lr)
    params = list(encoder.parameters()) + (list(head.parameters()) if hp.train_head else [])
    for p in head.parameters():
        p.requires_grad_(hp.train_head)
    for p in encoder.parameters():
        p.requires_grad_(True)
    s_sampler = Sampler(len(xs), hp.batch_size, g)
    t_sampler = Sampler(len(xt), hp.target_batch_size or hp.batch_size, g)

    def loss_terms(admm: tuple[list[torch.Tensor], list[torch.Tensor]] | None) -> dict[str, torch.Tensor]:
        i_s, i_t = s_sampler.next(), t_sampler.next()
        xb_s, yb_s = xs[i_s].to(dev), ys[i_s].to(dev)
        xb_t, yb_t = xt[i_t].to(dev), yt[i_t].to(dev)
        if aug_s:
            xb_s = aug_s(xb_s, g_aug)
        if aug_t:
            xb_t = aug_t(xb_t, g_aug)
        xb_s, xb_t = batch_to_channels_last(xb_s), batch_to_channels_last(xb_t)
        model.train()
        ce_s = F.cross_entropy(head(encoder(xb_s)), yb_s)
        out = {"ce_s": ce_s}
        total = ce_s
        if hp.alpha > 0 or hp.fisher > 0:
            captured.clear()
            capture["on"] = True
            if hp.target_bn == "running":
                encoder.eval()
                ft = encoder(xb_t)
                encoder.train()
            else:
                with frozen_bn_stats(encoder):
                    ft = encoder(xb_t)
            capture["on"] = False
            if head_opt is not None and admm is not None:   # the adversary's step first, on fixed features
                head_opt.zero_grad(set_to_none=True)
                F.cross_entropy(head_t(ft.detach()), yb_t).backward()
                head_opt.step()
            ce_t = F.cross_entropy(head_t(ft), yb_t, reduction="none")
            out["ce_t"] = ce_t.mean()
            if hp.alpha > 0:
                total = total - hp.alpha * ce_t.clamp(max=cap).mean()
            if hp.fisher > 0:
                rf = fisher_terms(ft, yb_t, num_classes).ratio
                for n in taps:
                    rf = rf + fisher_terms(captured[n], yb_t, num_classes).ratio
                out["fisher"] = rf
                total = total + hp.fisher * rf
        if admm is not None:
            zs, us = admm
            pen = sum((w - z + u).pow(2).sum() for w, z, u in zip(weights, zs, us, strict=True))
            out["admm"] = pen
            total = total + 0.5 * hp.rho * pen
        out["total"] = total
        return out

    def val_acc() -> float:
        if val_x is None or val_y is None or len(val_y) == 0:
            return float("nan")
        return accuracy_on(model, val_x, val_y, dev)

    # -- 2. ADMM
    t0 = time.perf_counter()
    acc0 = val_acc()
    opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=hp.lr)
    zs = [w.detach().clone() for w in weights]
    us = [torch.zeros_like(w) for w in weights]
    masks = [torch.ones_like(w, dtype=torch.bool) for w in weights]
    fm: FixedMask | None = None
    sparsity_now = 0.0
    iters_done = 0
    try:
        for it in range(1, hp.iterations + 1):
            if fm is not None:
                fm.remove()
            fm = FixedMask(model, {full[n]: m for n, m in zip(layers, masks, strict=True)})
            if hp.head_mode == "refit" and it > 1:
                pick = torch.randperm(len(xt), generator=g)[:hp.head_size]
                reinitialize(head_t, ctx.seed + 17 + it)
                for p in head_t.parameters():
                    p.requires_grad_(True)
                ft_pick = _features(encoder, xt[pick], dev, running=hp.target_bn == "running")
                refit = train_target_head(head_t, ft_pick, yt[pick].cpu(), hp.head_steps,
                                          hp.head_lr, ctx.generator(3 + it), dev)
            sums: dict[str, float] = {}
            for step in range(hp.steps_per_iter):
                terms = loss_terms((zs, us))
                if not torch.isfinite(terms["total"]):
                    raise DomainlockError(f"NTP loss became {float(terms['total'])} in iteration {it}; lower "
                                          f"--lr (now {hp.lr}), --alpha (now {hp.alpha}) or --rho (now {hp.rho})")
                opt.zero_grad(set_to_none=True)
                terms["total"].backward()
                if hp.sim_weight > 0:
                    if step % hp.sim_every == 0:   # in between, the last simulated attack's gradient again
                        sim_grads, sim_loss = simulated_attack_grads(
                            model, head_name, enc_params, xt, yt, steps=hp.sim_steps, lr=hp.sim_lr,
                            head_lr=hp.sim_head_lr, shots=hp.sim_shots, batch_size=32, cap=cap, g=g,
                            seed=ctx.seed + 1000 * it + step, dev=dev)
                    for p, sg in zip(enc_params.values(), sim_grads, strict=True):
                        p.grad = -hp.sim_weight * sg if p.grad is None else p.grad - hp.sim_weight * sg
                    terms["sim_ce"] = torch.tensor(sim_loss)
                opt.step()
                fm.apply()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            # Z-step, dual update, mask
            with torch.no_grad():
                vs = [w.detach() + u for w, u in zip(weights, us, strict=True)]
                goal = scheduled_sparsity(it, hp.iterations, hp.sparsity, hp.prune_schedule)
                if hp.zstep == "topk":
                    thr = None
                    z_new = project_topk(vs, goal)
                else:
                    thr = hp.delta / hp.rho if hp.delta > 0 else quantile_threshold(vs, goal)
                    z_new = soft_threshold(vs, thr)
                dual = math.sqrt(sum(float((zn - z).pow(2).sum()) for zn, z in zip(z_new, zs, strict=True)))
                zs = z_new
                for w, z, u in zip(weights, zs, us, strict=True):
                    u.add_(w.detach() - z)
                primal = math.sqrt(sum(float((w.detach() - z).pow(2).sum()) for w, z in zip(weights, zs, strict=True)))
                z_norm = math.sqrt(sum(float(z.pow(2).sum()) for z in zs))
                masks = [z != 0 for z in zs]
            sparsity_now = mask_sparsity({str(i): m for i, m in enumerate(masks)})
            iters_done = it
            rel = primal / max(z_norm, 1e-12)
            steps = max(1, hp.steps_per_iter)
            rec = {"iteration": it, "goal_sparsity": round(goal, 5), "sparsity": round(sparsity_now, 5),
                   "primal_residual": round(primal, 6), "relative_residual": round(rel, 6),
                   "dual_residual": round(hp.rho * dual, 6), "val_acc": val_acc(),
                   **{f"mean_{k}": round(v / steps, 5) for k, v in sums.items()}}
            if thr is not None:
                rec["threshold"] = thr
            if hp.head_mode == "refit" and it > 1:
                rec["refit_head_acc"] = round(refit["heldout_acc"], 4)
            history.append(rec)
            if ctx.progress:
                print(f"ntp it {it}: sparsity {sparsity_now:.3f} residual {rel:.4f} val {rec['val_acc']:.3f} "
                      + " ".join(f"{k}={v / steps:.3f}" for k, v in sums.items()), flush=True)
            if sparsity_now >= hp.sparsity - 1e-9 and (rel < hp.tol or hp.zstep == "soft" and hp.delta > 0):
                break
        admm_s = time.perf_counter() - t0

        # -- 3. hard prune (more by magnitude if the mask fell short of the requested sparsity)
        with torch.no_grad():
            if sparsity_now < hp.sparsity - 0.5 / n_weights:
                kept = [w.detach() * m for w, m in zip(weights, masks, strict=True)]
                masks = [z != 0 for z in project_topk(kept, hp.sparsity)]
            # a weight the mask keeps but that is exactly 0 would be read back as pruned; nudge it
            for w, m in zip(weights, masks, strict=True):
                w.mul_(m)
                tiny = m & (w == 0)
                if tiny.any():
                    w[tiny] = 1e-12
        final_masks = {full[n]: m for n, m in zip(layers, masks, strict=True)}
        if fm is not None:
            fm.remove()
        fm = FixedMask(model, final_masks)
        acc_pruned = val_acc()

        # -- 4. fine-tune the survivors with the mask fixed
        t0 = time.perf_counter()
        if hp.finetune_steps > 0:
            opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=hp.finetune_lr)
            for _ in range(hp.finetune_steps):
                if hp.finetune_objective == "source":
                    i_s = s_sampler.next()
                    xb = xs[i_s].to(dev)
                    if aug_s:
                        xb = aug_s(xb, g_aug)
                    xb = batch_to_channels_last(xb)
                    model.train()
                    loss = F.cross_entropy(head(encoder(xb)), ys[i_s].to(dev))
                else:
                    loss = loss_terms(None)["total"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                fm.apply()
        finetune_s = time.perf_counter() - t0
    finally:
        if fm is not None:
            fm.remove()
        for h in hooks:
            h.remove()
    acc_finetuned = val_acc()
    if hp.recalibrate > 0:
        pick = torch.randperm(len(xs), generator=ctx.generator(6))[:hp.recalibrate]
        recalibrate_bn(model, xs[pick], dev)
    acc_final = val_acc()

    # -- 5. optional reparameterization
    scaled: dict[str, Any] = {}
    if hp.weight_scale != 1.0 or hp.bn_scale != 1.0:
        scaled = reparameterize(model, encoder, batch_to_channels_last(xs[:8].to(dev)), hp.weight_scale, hp.bn_scale)
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
        if not p.data.is_contiguous():
            p.data = p.data.contiguous()
    model.eval()
    # target features after protection: Fisher ratio and h_T accuracy (attacker's view, train split)
    with torch.no_grad():
        k = min(len(xt), 2000)
        ft = _features(encoder, xt[:k], dev)
        rf_after = float(fisher_terms(ft, yt[:k].cpu(), num_classes).ratio)
        ht_after = float((head_t(ft.to(dev)).argmax(1).cpu() == yt[:k].cpu()).float().mean())
    reached = mask_sparsity(final_masks)
    info = {
        "sparsity_requested": hp.sparsity, "sparsity": reached, "prunable_weights": n_weights,
        "layer_sparsity": {n: round(1 - float(m.float().mean()), 5) for n, m in final_masks.items()},
        "iterations": iters_done, "history": history, "cap": cap,
        "target_head": head_info, "target_head_acc_after": ht_after, "target_fisher_after": rf_after,
        "source_val_acc_before": acc0, "source_val_acc_pruned": acc_pruned,
        "source_val_acc_finetuned": acc_finetuned, "source_val_acc_after": acc_final,
        "reparameterized": scaled,
        "time_s": {"target_head": round(head_s, 3), "admm": round(admm_s, 3), "finetune": round(finetune_s, 3),
                   "total": round(time.perf_counter() - t_start, 3)},
    }
    return model, info
