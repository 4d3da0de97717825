"""The registered MAP methods and the data each setting reads.

* ``sa-map`` (source-available): x_s from ``access.source("train")`` (images only), x_t from
  ``access.target("train")`` (labels only with ``use_target_labels``); the held-out source accuracy is
  measured on ``val_size`` images of ``access.source("val")``.
* ``sf-map`` (source-free): x_s = a pseudo-source synthesized from the model by
  :func:`domainlock.synthesis.inversion.synthesize_pseudo_source` (or loaded from ``pseudo_source``), plus
  ``pseudo_source_restyled`` target training images moved into the source's style
  (:func:`domainlock.synthesis.source_style.source_styled`) and ``pseudo_source_recoloured`` recoloured ones
  (``pseudo_source_size = 0``: those alone); x_t = ``access.target("train")``. Never reads
  the real source. The "source accuracy" logged during the run
  is the agreement with the source model on held-out pseudo-source images.
* ``df-map`` (data-free): x_s = pseudo-source, x_t = ``neighbour_copies`` neighbour-domain copies of it
  made by :func:`domainlock.synthesis.neighbours.make_neighbours` (fresh ones for every target batch when
  0). Reads no real data at all.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ...errors import DomainlockError
from ..base import DataAccess, Method, MethodResult, RunContext
from ..registry import register_method
from .config import MAPConfig, PseudoSourceMAPConfig, validate_config
from .mask_learning import _logits, learn_mask


def _split_val(x: torch.Tensor, y: torch.Tensor, n_val: int, g: torch.Generator):
    perm = torch.randperm(len(x), generator=g)
    n_val = min(n_val, len(x) // 4)
    return x[perm[n_val:]], y[perm[n_val:]], x[perm[:n_val]], y[perm[:n_val]]


def _subsample(x: torch.Tensor, y: torch.Tensor, n: int, g: torch.Generator):
    if n >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=g)[:n]
    return x[idx], y[idx]


def _pseudo_source(model: nn.Module, hp: MAPConfig, ctx: RunContext, neighbours: bool = False,
                   target: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any], dict[str, Any]]:
    """Synthesize the pseudo-source (plus ``pseudo_source_restyled`` of the ``target`` images moved into the
    source's style); return (train x, val x, val labels = source model's predictions, extras (a few images per
    class for a sample grid), info with its quality block, the neighbours' with ``neighbours``)."""
    from ...synthesis import inversion, pseudo_source, quality

    kw: dict[str, Any] = {"gray": True} if hp.synthesis_gray else {}
    if hp.synthesis_steps > 0:
        kw["steps"] = hp.synthesis_steps
    cfg = inversion.SynthesisConfig(**kw) if kw else None
    t0 = time.perf_counter()
    if hp.pseudo_source:
        out = pseudo_source.load_pseudo_source(hp.pseudo_source)
        if len(out) > hp.pseudo_source_size:
            keep = torch.randperm(len(out), generator=ctx.generator(7))[:hp.pseudo_source_size]
            out = pseudo_source.PseudoSource(out.x[keep], out.y[keep], out.info)
    elif hp.pseudo_source_size == 0:     # sf-map keeping the restyled / recoloured target alone
        out = (torch.empty(0, *target.shape[1:]), torch.empty(0, dtype=torch.long))
    else:
        out = inversion.synthesize_pseudo_source(model, hp.pseudo_source_size, device=ctx.device,
                                                 seed=ctx.seed, progress=ctx.progress, cfg=cfg)
    secs = time.perf_counter() - t0
    # a PseudoSource (x, y, info) or a plain (x, y) tuple
    x, y_int = (out[0], out[1]) if isinstance(out, tuple) else (out.x, out.y)
    syn_info = {} if isinstance(out, tuple) else dict(getattr(out, "info", {}) or {})
    x = x.detach().float().clamp(0, 1)
    restyled: dict[str, Any] = {}
    if (hp.pseudo_source_restyled > 0 or hp.pseudo_source_recoloured > 0) and target is not None:
        x, y_int, restyled = _add_target_in_source_style(model, x, y_int, target, hp, ctx)
    if len(x) < 8:
        raise DomainlockError(f"the keep set has {len(x)} images (pseudo_source_size={hp.pseudo_source_size}; "
                              "recoloured copies are made of a greyscale target only); valid: at least 8")
    pred = _logits(model.eval(), x, ctx.device).argmax(1).cpu()  # what the source model says: the reference
    agree = float((pred == y_int.cpu()).float().mean())
    if hp.pseudo_source and agree < 0.5:
        raise DomainlockError(f"pseudo-source {hp.pseudo_source!r} was not made from this model: the model "
                              f"agrees with its intended classes on only {100 * agree:.0f}% of the images")
    xs, _, xv, yv = _split_val(x.cpu(), pred, hp.val_size, ctx.generator(3))
    # measured from the model and the pseudo-source alone; a few % of the method's time
    cpu0 = time.process_time()
    qual = quality.pseudo_source_quality(model, x, y_int, neighbours=neighbours, seed=ctx.seed, device=ctx.device)
    qual["cpu_s"] = round(time.process_time() - cpu0, 3)
    gx, gy = quality.grid_sample(x, pred, len(qual["class_coverage"]["shares"]))
    extras = {"pseudo_source_grid": (gx, gy)}
    info = {"pseudo_source_size": int(len(x)), "pseudo_source_s": round(secs, 3),
            "pseudo_source_from": hp.pseudo_source or "synthesized", "pseudo_source_agreement": agree,
            "pseudo_source_train": int(len(xs)), "pseudo_source_val": int(len(xv)),
            "pseudo_source_classes": torch.bincount(pred, minlength=int(pred.max()) + 1).tolist(),
            # the synthesis config and its final BN-matching loss: what decides how well SF/DF-MAP keep the
            # real source (see domainlock.synthesis.inversion's docstring)
            "pseudo_source_synthesis": {k: syn_info[k] for k in ("teacher_acc", "teacher_confidence",
                                                                  "used_bn_matching", "time_s", "config",
                                                                  "final_losses")
                                        if k in syn_info},
            "pseudo_source_quality": qual}
    info.update(restyled)
    return xs, xv, yv, extras, info


def _greyscale(x: torch.Tensor) -> bool:
    """Whether every image of ``x`` [n, 3, H, W] has equal channels (to 8-bit precision)."""
    return x.shape[1] == 1 or bool((x.amax(1) - x.amin(1)).max() <= 1 / 255)


def _add_target_in_source_style(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
                                 hp: MAPConfig, ctx: RunContext
                                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``x``, ``y`` with ``pseudo_source_restyled`` target images (a random subset) moved into the source's style
    and ``pseudo_source_recoloured`` others recoloured appended, and what was done (for the card). Recoloured
    copies are made of a greyscale target only: a colour target's duotones keep its textures (its luminance),
    and on syn -> mnistm no mask then passes the guard."""
    from ...synthesis.source_style import MIN_SATURATION, SourceStyleConfig, recoloured, source_styled

    parts_x, parts_y, info = [x.cpu()], [y.cpu()], {}
    order = torch.randperm(len(target), generator=ctx.generator(13))
    n = min(hp.pseudo_source_restyled, len(target))
    if n:
        cfg = SourceStyleConfig(steps=hp.restyle_steps, gray=hp.synthesis_gray, start=hp.restyle_start,
                                precision=hp.restyle_precision)
        xr, yr, info["pseudo_source_restyled"] = source_styled(model, target[order[:n]].float(), device=ctx.device,
                                                               cfg=cfg, seed=ctx.seed)
        parts_x.append(xr)
        parts_y.append(yr)
    m = min(hp.pseudo_source_recoloured, len(target))
    pick = order[n:n + m] if n + m <= len(target) else order[:m]   # after the restyled ones, if there are enough
    if m and not _greyscale(target[pick]):
        info["pseudo_source_recoloured"] = {"n": 0, "skipped": "the target is in colour"}
    elif m:
        xc = recoloured(target[pick].float(), ctx.generator(17), MIN_SATURATION)
        xc = (xc * 255).round() / 255
        parts_x.append(xc)
        parts_y.append(_logits(model.eval(), xc, ctx.device).argmax(1).cpu())
        info["pseudo_source_recoloured"] = {"n": int(m), "min_saturation": MIN_SATURATION}
    return torch.cat(parts_x), torch.cat(parts_y), info


class _MAPBase(Method):
    Hparams = MAPConfig

    def validate(self, hp: Any, setting: str) -> None:
        validate_config(hp)
        if hp.use_target_labels and setting == "data-free":
            raise DomainlockError("use_target_labels needs target data; the data-free setting has none")
        if setting == "data-free" and (hp.pseudo_source_size == 0 or hp.pseudo_source_restyled
                                       or hp.pseudo_source_recoloured):
            raise DomainlockError("df-map reads no target images: it needs pseudo_source_size >= 8 and "
                                  "pseudo_source_restyled = pseudo_source_recoloured = 0")


@register_method
class SAMAP(_MAPBase):
    """MAP with the real source available (images only; distillation from the frozen source model)."""

    name = "sa-map"
    settings = ("source-available",)
    summary = "mask pruning: keep the source by distillation, destroy the target (label-free by default)"

    def run(self, model: nn.Module, access: DataAccess, hp: MAPConfig, ctx: RunContext) -> MethodResult:
        g = ctx.generator(1)
        src = access.source("train")
        val = access.source("val")
        tgt = access.target("train")
        vx, vy = _subsample(val.x, val.y, hp.val_size, g)
        folded, info = learn_mask(model, src.x, tgt.x, hp, ctx, val_x=vx, val_y=vy,
                                  y_t=tgt.y if hp.use_target_labels else None, desc="sa-map")
        info["source_val_size"] = int(len(vx))
        return MethodResult(folded, info)


@register_method
class SFMAP(_MAPBase):
    """MAP without the source data: a pseudo-source synthesized from the model stands in for it."""

    name = "sf-map"
    settings = ("source-free",)
    Hparams = PseudoSourceMAPConfig
    summary = "mask pruning with a synthesized pseudo-source and real unlabelled target data"

    def run(self, model: nn.Module, access: DataAccess, hp: MAPConfig, ctx: RunContext) -> MethodResult:
        tgt = access.target("train")
        xs, xv, yv, extras, pinfo = _pseudo_source(model, hp, ctx, target=tgt.x)
        keep = None
        if hp.keep_neighbours > 0:
            from ...synthesis.neighbours import make_neighbours

            g = ctx.generator(11)

            def keep(x: torch.Tensor) -> torch.Tensor:
                return make_neighbours(x, generator=g).float().clamp(0, 1)

        folded, info = learn_mask(model, xs, tgt.x, hp, ctx, val_x=xv, val_y=yv, make_keep=keep,
                                  y_t=tgt.y if hp.use_target_labels else None, desc="sf-map")
        info.update(pinfo)
        info["worst_source_acc_is"] = "agreement with the source model on held-out pseudo-source images"
        return MethodResult(folded, info, extras)


@register_method
class DFMAP(_MAPBase):
    """MAP without any real data: pseudo-source plus synthesized neighbour domains as the target."""

    name = "df-map"
    settings = ("data-free",)
    Hparams = PseudoSourceMAPConfig
    needs_target = False
    summary = "mask pruning with a synthesized pseudo-source and synthesized neighbour domains"

    def run(self, model: nn.Module, access: DataAccess, hp: MAPConfig, ctx: RunContext) -> MethodResult:
        from ...synthesis.neighbours import make_neighbours

        xs, xv, yv, extras, pinfo = _pseudo_source(model, hp, ctx, neighbours=True)
        t0 = time.perf_counter()
        g = ctx.generator(5)
        if hp.neighbour_copies > 0:
            xt = torch.cat([make_neighbours(xs, generator=g).detach().float().clamp(0, 1).cpu()
                            for _ in range(hp.neighbour_copies)])
            fresh = None
            pinfo["neighbours"] = int(len(xt))
        else:   # new neighbour styles for every target batch
            xt = xs

            def fresh(x: torch.Tensor) -> torch.Tensor:
                return make_neighbours(x, generator=g).float().clamp(0, 1)

            pinfo["neighbours"] = "fresh per step"
        pinfo["neighbours_s"] = round(time.perf_counter() - t0, 3)
        folded, info = learn_mask(model, xs, xt, hp, ctx, val_x=xv, val_y=yv, make_target=fresh, desc="df-map")
        info.update(pinfo)
        info["worst_source_acc_is"] = "agreement with the source model on held-out pseudo-source images"
        return MethodResult(folded, info, extras)
