"""An exact reparameterization that slows fine-tuning of a BatchNorm network (NTP's optional rescale).

Fine-tuning moves a weight by about ``lr`` per step (Adam) or ``lr * grad`` (SGD), whatever the weight's
size. A conv/linear layer that feeds a BatchNorm can be multiplied by ``s`` without changing the function
when that BatchNorm's running statistics follow:

    W <- s W,   b <- s b,   running_mean <- s running_mean,   running_var <- s^2 (running_var + eps) - eps

and so can the affine parameters of a BatchNorm whose output reaches (through ReLU, pooling, flatten or
dropout, which are positively homogeneous) only such bias-free layers. Afterwards the same fine-tuning
changes the encoder ``s`` times slower (Adam; ``s^2`` for SGD, whose gradients shrink by ``1/s``), and
pruned weights regrow from zero at the same absolute rate, negligibly next to the survivors. The BatchNorm
that makes the encoder output is never rescaled: scaling the features would only raise a fresh attacker
head's effective learning rate.

The rescale is exact in eval mode. With batch statistics the unscaled ``eps`` makes the rescaled model train
like the original with ``eps / s^2`` (the same except on near-constant channels). Every step is checked on
real images and undone when it changes the outputs (e.g. a BatchNorm that also feeds a residual addition).
It is not robust to an attacker who knows it: :func:`normalize_scales` undoes it exactly. A rescaled model
needs fp32/bf16 (conv outputs reach ~1e5; fp16 overflows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...masking.pruning import prunable_modules
from ...models import split_model
from .common import frozen_bn_stats

_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
                nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


@dataclass
class ScalePlan:
    """What :func:`rescale` may multiply without changing the model's function (found by tracing).

    ``layers``: prunable layers whose output goes straight into a BatchNorm (``(name, layer, bn)``);
    ``bn_affine``: ``(name, bn, layers it feeds)`` for BatchNorms whose output reaches only such (bias-free)
    layers through positively homogeneous modules (ReLU, pooling, flatten, dropout). The BatchNorm that
    makes the encoder output is never among them: scaling it would scale the features a fresh attacker head
    sees, i.e. raise that head's effective learning rate, which is not what NTP is about."""

    layers: list[tuple[str, nn.Module, nn.Module]]
    bn_affine: list[tuple[str, nn.Module, list[nn.Module]]]


def scale_plan(encoder: nn.Module, example: torch.Tensor) -> ScalePlan:
    """Trace ``example`` through ``encoder`` with forward hooks and return the :class:`ScalePlan`."""
    layers = prunable_modules(encoder)
    lname = {id(m): n for n, m in layers.items()}
    bns = {id(m): n for n, m in encoder.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    bn_mod = {n: m for n, m in encoder.named_modules() if id(m) in bns}
    layer_out: dict[int, str] = {}     # tensor id -> prunable layer that produced it
    bn_out: dict[int, str] = {}        # tensor id -> BatchNorm it comes from through homogeneous modules
    fed: dict[str, nn.Module] = {}     # prunable layer -> the BatchNorm its output feeds
    feeds: dict[str, list[str]] = {}   # BatchNorm -> prunable layers its (homogeneous) output feeds
    hooks = []
    alive: list[torch.Tensor] = []     # keeps every traced tensor alive, so no id is reused by a new one

    def hook(mod, inp, out):
        alive.append(out)
        x = inp[0] if inp and isinstance(inp[0], torch.Tensor) else None
        if id(mod) in lname:
            layer_out[id(out)] = lname[id(mod)]
            if x is not None and id(x) in bn_out:
                feeds.setdefault(bn_out[id(x)], []).append(lname[id(mod)])
        elif id(mod) in bns:
            if x is not None and id(x) in layer_out and layer_out[id(x)] not in fed:
                fed[layer_out[id(x)]] = mod
            bn_out[id(out)] = bns[id(mod)]
        elif isinstance(mod, _HOMOGENEOUS) and x is not None and id(x) in bn_out:
            bn_out[id(out)] = bn_out[id(x)]

    for m in encoder.modules():
        if id(m) in lname or id(m) in bns or isinstance(m, _HOMOGENEOUS):
            hooks.append(m.register_forward_hook(hook))
    was = encoder.training
    try:
        encoder.eval()
        with torch.no_grad():
            encoder(example)
    finally:
        encoder.train(was)
        for h in hooks:
            h.remove()
    pairs = [(n, layers[n], fed[n]) for n in layers if n in fed]
    # a BatchNorm's affine can be scaled when everything it feeds is a bias-free layer followed by a BN
    affine = [(b, bn_mod[b], [layers[n] for n in dict.fromkeys(feeds[b])]) for b in bn_mod
              if b in feeds and bn_mod[b].affine
              and all(n in fed and getattr(layers[n], "bias", None) is None for n in feeds[b])]
    return ScalePlan(pairs, affine)


def _scale_stats(bn: nn.Module, s: float) -> None:
    """Running statistics of a BatchNorm whose input gets multiplied by ``s`` (composes: s1 then s2 = s1*s2)."""
    if bn.running_mean is not None:
        bn.running_mean.mul_(s)
    if bn.running_var is not None:
        bn.running_var.copy_(s * s * (bn.running_var + bn.eps) - bn.eps)


@torch.no_grad()
def _scale_layer(layer: nn.Module, bn: nn.Module, s: float) -> None:
    layer.weight.mul_(s)
    if getattr(layer, "bias", None) is not None:
        layer.bias.mul_(s)
    _scale_stats(bn, s)


@torch.no_grad()
def _scale_affine(bn: nn.Module, fed_bns: list[nn.Module], s: float) -> None:
    bn.weight.mul_(s)
    bn.bias.mul_(s)
    for b in fed_bns:
        _scale_stats(b, s)


def rescale(plan: ScalePlan, weight_scale: float, bn_scale: float = 1.0) -> None:
    """Multiply the planned layers' weights (and biases) by ``weight_scale`` and the planned BatchNorm
    affine parameters by ``bn_scale``, fixing the running statistics of the BatchNorms they feed as in the
    module docstring, so that the function is unchanged. No check; :func:`reparameterize` checks every step."""
    fed_by = {id(layer): bn for _, layer, bn in plan.layers}
    if weight_scale != 1.0:
        for _, layer, bn in plan.layers:
            _scale_layer(layer, bn, weight_scale)
    if bn_scale != 1.0:
        for _, bn, fed in plan.bn_affine:
            _scale_affine(bn, [fed_by[id(layer)] for layer in fed], bn_scale)


def _apply_scales(model: nn.Module, encoder: nn.Module, example: torch.Tensor,
                  layer_scale: Callable[[nn.Module], float], affine_scale: Callable[[nn.Module], float] | None,
                  rtol: float) -> dict[str, Any]:
    """Scale each planned layer by ``layer_scale(layer)`` and each planned BatchNorm affine by
    ``affine_scale(bn)``, one at a time, keeping a step only if the outputs on ``example`` stay the same."""
    plan = scale_plan(encoder, example)
    was = model.training
    names = {id(m): n for n, m in model.named_modules()}
    fed_by = {id(layer): bn for _, layer, bn in plan.layers}

    def outputs() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            model.eval()
            a = model(example).float()
            model.train()
            with frozen_bn_stats(model):
                b = model(example).float()
        return a, b

    ref = outputs()

    def same() -> bool:
        for x0, x1, tol in zip(ref, outputs(), (rtol, 50 * rtol), strict=True):
            err = float((x1 - x0).abs().max()) / max(float(x0.abs().max()), 1e-6)
            if not math.isfinite(err) or err > tol:
                return False
        return True

    done: dict[str, list[str]] = {"layers": [], "bn_affine": [], "rejected": []}
    try:
        for _, layer, bn in plan.layers:
            f = float(layer_scale(layer))
            if f != 1.0:
                _scale_layer(layer, bn, f)
                ok = same()
                if not ok:
                    _scale_layer(layer, bn, 1.0 / f)
                done["layers" if ok else "rejected"].append(names[id(layer)])
        for _, bn, fed in plan.bn_affine if affine_scale is not None else []:
            f = float(affine_scale(bn))
            if f != 1.0:
                fbs = [fed_by[id(layer)] for layer in fed]
                _scale_affine(bn, fbs, f)
                ok = same()
                if not ok:
                    _scale_affine(bn, fbs, 1.0 / f)
                done["bn_affine" if ok else "rejected"].append(names[id(bn)])
    finally:
        model.train(was)
    return done


def reparameterize(model: nn.Module, encoder: nn.Module, example: torch.Tensor, weight_scale: float,
                   bn_scale: float = 1.0, rtol: float = 1e-3) -> dict[str, Any]:
    """Apply :func:`rescale` to ``model`` one layer / one BatchNorm at a time, keeping a step only if the
    model's outputs on ``example`` (eval mode and batch statistics) stay the same; a step that changes
    them (an operation the trace cannot see, such as a residual addition, also uses the scaled tensor) is
    undone and listed under ``rejected``. Returns what was scaled.

    Exact in eval mode. With batch statistics (training mode) the BatchNorm's ``eps`` stays as it is, so the
    scaled model trains as the unscaled one would with ``eps / s^2``: the same except on channels whose
    batch variance is near ``eps`` (hence the looser bound there)."""
    done = _apply_scales(model, encoder, example, lambda _: weight_scale,
                         (lambda _: bn_scale) if bn_scale != 1.0 else None, rtol)
    return {"weight_scale": weight_scale, "bn_scale": bn_scale, **done}


def normalize_scales(model: nn.Module, example: torch.Tensor, rtol: float = 1e-3) -> dict[str, Any]:
    """What a knowledgeable attacker does before fine-tuning a model protected with ``weight_scale`` /
    ``bn_scale``: bring every BN-fed layer back to the weight RMS of PyTorch's default initialization for
    its fan-in (``1 / sqrt(3 fan_in)``) and every scalable BatchNorm affine to ``RMS(gamma) = 1``, with the
    same exactness checks (the function does not change). For evaluations: it measures how much of the
    protection is NTP's feature collapse and how much is only the weights' scale."""
    encoder, _ = split_model(model)

    def layer_scale(layer: nn.Module) -> float:
        w = layer.weight.detach()
        rms = float(w.pow(2).mean().sqrt())
        fan_in = w[0].numel()
        return 1.0 if rms == 0 else (1.0 / math.sqrt(3 * fan_in)) / rms

    def affine_scale(bn: nn.Module) -> float:
        rms = float(bn.weight.detach().pow(2).mean().sqrt())
        return 1.0 if rms == 0 else 1.0 / rms

    return _apply_scales(model, encoder, example, layer_scale, affine_scale, rtol)
