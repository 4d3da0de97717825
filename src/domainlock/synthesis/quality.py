"""How good a pseudo-source is, measured from the source model and the pseudo-source alone (no real data).

The figures SF-MAP and DF-MAP record in ``protection.info["pseudo_source_quality"]`` (METHODS.md §1):

* ``bn_distance``: the DeepInversion BN-statistics distance of the **whole** set under the source model f,
  ``D = Σ_l ‖μ_l − μ̂_l‖₂ + ‖σ²_l − σ̂²_l‖₂``, μ_l/σ²_l the per-channel mean and (biased) variance of the
  input of BN layer l over every image (accumulated batch by batch from the
  :class:`~domainlock.synthesis.inversion.BNStatsHook` moments: ``μ = Σ_b n_b μ_b / N``,
  ``σ² = Σ_b n_b (σ²_b + μ_b²) / N − μ²``), μ̂_l/σ̂²_l the layer's running statistics. 0: the set has
  exactly the source's feature statistics. Not the per-batch optimization loss (no first-layer weight).
* ``class_coverage``: ``shares`` p_c (the share of images f predicts as class c), ``entropy``
  ``H(p) / ln C`` (1: balanced, 0: one class) and ``min_share``.
* ``agreement``: the share of images f predicts as their intended class; ``confidence``: mean max-softmax.
* ``neighbours`` (DF-MAP): for each neighbour family n applied to a fixed sample of the pseudo-source,
  ``agreement`` = mean[f(n(x)) = f(x)] (how far the family moves the source model's accuracy) and
  ``feature_shift`` = mean ‖z(n(x)) − z(x)‖₂ / ‖z(x)‖₂ with z the encoder of ``split_model(f)``.

:func:`grid_sample` picks the few images per predicted class a report shows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .inversion import attach_bn_hooks

Family = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@torch.no_grad()
def _pass(model: nn.Module, x: torch.Tensor, device: str | torch.device, batch_size: int
          ) -> tuple[torch.Tensor, float | None]:
    """One eval-mode pass over ``x``: the softmax outputs and the whole-set BN-statistics distance (``None``
    without BN layers), accumulated from the same forwards. The model is left as it was."""
    hooks = attach_bn_hooks(model)
    was = model.training
    model.eval()
    sums = [[0.0, 0.0] for _ in hooks]
    probs, n = [], 0
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            probs.append(F.softmax(model(xb).float(), 1).cpu())
            b = len(xb)
            for s, h in zip(sums, hooks, strict=True):
                s[0] = s[0] + h.mean.double() * b
                s[1] = s[1] + (h.var.double() + h.mean.double() ** 2) * b
            n += b
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    if not hooks:
        return torch.cat(probs), None
    total = 0.0
    for (s1, s2), h in zip(sums, hooks, strict=True):
        mean = s1 / n
        var = (s2 / n - mean ** 2).clamp_min(0)
        rm, rv = h.module.running_mean.double(), h.module.running_var.double()
        total += float(torch.linalg.vector_norm(mean - rm) + torch.linalg.vector_norm(var - rv))
    return torch.cat(probs), total


def bn_distance(model: nn.Module, x: torch.Tensor, *, device: str | torch.device = "cpu", batch_size: int = 256
                ) -> float | None:
    """``Σ_l ‖μ_l − μ̂_l‖ + ‖σ²_l − σ̂²_l‖`` over the whole of ``x`` (see the module docstring); ``None``
    when ``model`` has no BN layer with running statistics. The model is left as it was."""
    return _pass(model, x, device, batch_size)[1]


def class_coverage(pred: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Per-class share of the predictions ``pred``, their normalized entropy ``H(p) / ln C`` and the
    smallest share."""
    counts = torch.bincount(pred.long().cpu(), minlength=num_classes)[:num_classes].double()
    p = counts / max(1.0, float(counts.sum()))
    h = float(-(p * torch.log(p.clamp_min(1e-12))).sum())
    ent = h / math.log(num_classes) if num_classes > 1 else 1.0
    return {"shares": [round(float(v), 5) for v in p], "entropy": round(ent, 5),
            "min_share": round(float(p.min()), 5)}


def default_families() -> dict[str, Family]:
    """Every family of :func:`~domainlock.synthesis.neighbours.neighbour_families` at full strength."""
    from .neighbours import apply_family, neighbour_families

    return {name: (lambda x, g, name=name: apply_family(name, x, g)) for name in neighbour_families()}


@torch.no_grad()
def neighbour_effects(model: nn.Module, x: torch.Tensor, *, families: dict[str, Family] | None = None,
                      generator: torch.Generator | None = None, device: str | torch.device = "cpu",
                      batch_size: int = 256) -> dict[str, dict[str, float | None]]:
    """Per family: ``agreement`` of the model's prediction on n(x) with its prediction on x, and the mean
    relative ``feature_shift`` of the encoder features (``None`` when the model cannot be split)."""
    from ..errors import DomainlockError
    from ..models import split_model

    families = default_families() if families is None else families
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    was = model.training
    model.eval()
    try:
        enc = split_model(model)[0]
    except DomainlockError:
        enc = None

    def run(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        xb = xb.to(device)
        z = enc(xb).flatten(1).float() if enc is not None else None
        return model(xb).argmax(1).cpu(), z

    out: dict[str, dict[str, float | None]] = {}
    try:
        ref = [run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        for name, fam in families.items():
            agree, shift = 0.0, 0.0
            for k, i in enumerate(range(0, len(x), batch_size)):
                xb = x[i:i + batch_size]
                pred, z = run(fam(xb, g).float().clamp(0, 1))
                p0, z0 = ref[k]
                agree += float((pred == p0).sum())
                if z is not None:
                    shift += float(((z - z0).norm(dim=1) / z0.norm(dim=1).clamp_min(1e-12)).sum())
            out[name] = {"agreement": round(agree / len(x), 5),
                         "feature_shift": round(shift / len(x), 5) if enc is not None else None}
    finally:
        model.train(was)
    return out


def grid_sample(x: torch.Tensor, pred: torch.Tensor, num_classes: int, per_class: int = 2
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_class`` images of each predicted class (classes in order) as uint8, with their classes."""
    idx = torch.cat([torch.nonzero(pred == c).flatten()[:per_class] for c in range(num_classes)])
    x8 = (x[idx].detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x8, pred[idx].cpu()


@torch.no_grad()
def pseudo_source_quality(model: nn.Module, x: torch.Tensor, intended: torch.Tensor | None = None, *,
                          neighbours: bool = False, sample: int = 256, seed: int = 0,
                          device: str | torch.device = "cpu") -> dict[str, Any]:
    """The JSON-able quality block of the pseudo-source ``x`` under ``model`` (module docstring); with
    ``neighbours`` also the per-family effects on a fixed sample of ``sample`` images. ``time_s`` is its cost."""
    t0 = time.perf_counter()
    probs, bn = _pass(model, x, device, 256)
    pred = probs.argmax(1)
    num_classes = probs.shape[1]
    out: dict[str, Any] = {
        "n": int(len(x)), "bn_distance": None if bn is None else round(bn, 5),
        "class_coverage": class_coverage(pred, num_classes),
        "agreement": None if intended is None else round(float((pred == intended.cpu()).float().mean()), 5),
        "confidence": round(float(probs.max(1).values.mean()), 5)}
    if neighbours:
        g = torch.Generator().manual_seed(int(seed) + 17)
        keep = torch.randperm(len(x), generator=g)[:sample]
        out["neighbours"] = neighbour_effects(model, x[keep], generator=g, device=device)
        out["neighbour_sample"] = int(len(keep))
    out["time_s"] = round(time.perf_counter() - t0, 3)
    return out
