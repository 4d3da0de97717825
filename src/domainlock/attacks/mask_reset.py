"""Mask and re-parameterization removal (METHODS.md §4.8): undo what a protection did to the weights'
*form* — exact zeros, an exact rescale — then fine-tune on ``n`` labelled target samples exactly like the
fine-tuning attack (:mod:`.finetune`, reused as is).

1. **Undo the re-parameterization** (``normalize``): NTP's optional rescale ``W <- s W`` of BatchNorm-fed
   layers (running statistics following) leaves the function unchanged but slows fine-tuning ``s``-fold;
   :func:`~domainlock.methods.ntp.rescale.normalize_scales` brings every such layer back to the weight RMS of
   PyTorch's default initialization, exactly (checked on the attacker's own images).
2. **Reset the mask** (``reset``): every exactly-zero weight ``w_ij`` of a conv/linear layer is redrawn,

       w_ij <- w'_ij  (init: w' a fresh initialization of that layer)   or   w_ij <- ε_ij ~ N(0, σ²)  (noise),

   so pruned positions start from live values instead of a dead zero (a mask is no protection if the
   weights it removed can simply grow back from a sensible start).
3. **Fine-tune** with the fine-tuning attack's protocol and strategies (dense: nothing is held at zero).

A fresh initialization is the architecture's own (the model's registered builder, seeded, when the model
records ``arch``; VGG and ResNet do not use PyTorch's defaults), else the layer's ``reset_parameters``.

Why the defaults:

* ``normalize = True``: exact, so the function does not change; a model never rescaled only has its
  BatchNorm-fed layers' norms moved back to their initialization scale.
* Normalize before reset: reset values at init scale next to survivors still scaled by ``s`` would be
  ``s`` times too small.
* ``noise_std = 1e-3``: breaks every exact zero while staying far below the init scale of any layer here.
* ``reset`` draws from its own seeded generator (``seed + 101``): on a model without zeros (and without
  ``normalize``) the attack is exactly the fine-tuning attack with the same seed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import check_choice, check_range
from ..masking.pruning import prunable_modules
from ..models.base import ARCHS, build_model
from .base import Attack, AttackOutcome, ThreatModel
from .finetune import STRATEGIES, AttackProtocol, check_split, finetune_attack
from .registry import register_attack

RESETS = ("init", "noise")
RESET_SEED_OFFSET = 101


def _fresh_layers(model: nn.Module, seed: int) -> tuple[dict[str, nn.Module], str]:
    """``name -> freshly initialized copy`` of each conv/linear layer of ``model`` and where the init came from
    (``arch``: the model's registered builder; ``reset_parameters``: PyTorch's per-layer default)."""
    layers = prunable_modules(model)
    fresh: dict[str, nn.Module] = {}
    source = "reset_parameters"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        arch, k = getattr(model, "arch", None), getattr(model, "num_classes", None)
        if arch in ARCHS and k:
            built = prunable_modules(build_model(arch, int(k), **dict(getattr(model, "arch_kwargs", {}) or {})))
            fresh = {n: m for n, m in built.items() if n in layers and m.weight.shape == layers[n].weight.shape}
            source = "arch" if len(fresh) == len(layers) else "arch+reset_parameters"
        for name, layer in layers.items():
            if name not in fresh:
                fresh[name] = copy.deepcopy(layer).cpu()
                fresh[name].reset_parameters()
    return fresh, source


@torch.no_grad()
def reset_zeros(model: nn.Module, mode: str = "init", noise_std: float = 1e-3, seed: int = 0) -> dict[str, Any]:
    """Redraw every exactly-zero weight of ``model``'s conv/linear layers in place (see the module docstring):
    ``init`` copies a fresh initialization of the layer into its zero positions, ``noise`` draws N(0,
    ``noise_std``²). Seeded by ``seed`` alone; the global random state is untouched. Returns counts."""
    check_choice("reset", mode, RESETS)
    check_range("noise_std", noise_std, 0.0, math.inf, low_open=True)
    layers = prunable_modules(model)
    zeros = {n: m.weight == 0 for n, m in layers.items()}
    total = sum(int(z.numel()) for z in zeros.values())
    count = sum(int(z.sum()) for z in zeros.values())
    source = "noise"
    if count and mode == "init":
        fresh, source = _fresh_layers(model, seed)
        for name, z in zeros.items():
            w = layers[name].weight
            w[z] = fresh[name].weight.to(w.device, w.dtype)[z]
    elif count:
        g = torch.Generator().manual_seed(int(seed))
        for name, z in zeros.items():
            w = layers[name].weight
            w[z] = (noise_std * torch.randn(w.shape, generator=g)).to(w.device, w.dtype)[z]
    return {"reset": mode, "reset_from": source if count else None, "reset_weights": count,
            "reset_fraction": round(count / total, 6) if total else 0.0,
            "reset_layers": sorted(n for n, z in zeros.items() if z.any())}


@dataclass
class MaskResetParams(AttackProtocol):
    """Reset the zeros (and undo NTP's rescale), then the fine-tuning attack with ``n`` target samples."""

    n: int = field(default=100, metadata={"help": "labelled target samples the attacker holds (per-class balanced)"})
    strategy: str = field(default="reinit-head+all", metadata={"help": "what the attacker trains after the reset",
                                                               "choices": list(STRATEGIES)})
    reset: str = field(default="init", metadata={
        "help": "what replaces an exactly-zero weight: a fresh initialization of its layer (init) or small "
                "Gaussian noise (noise)", "choices": list(RESETS)})
    noise_std: float = field(default=1e-3, metadata={"help": "standard deviation of the noise (reset=noise)"})
    normalize: bool = field(default=True, metadata={
        "help": "undo NTP's exact weight rescale first (BatchNorm-fed layers back to their init-scale RMS)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("reset", self.reset, RESETS)
        check_range("noise_std", self.noise_std, 0.0, math.inf, low_open=True)


@register_attack
class MaskReset(Attack):
    name = "mask-reset"
    summary = "re-initialize exactly-zero weights and undo NTP's rescale, then fine-tune on n target samples"
    example = "domainlock attack mask-reset --model runs/ntp --target syn --n 100 --reset init"
    Params = MaskResetParams

    def threat(self, params: MaskResetParams) -> ThreatModel:
        return ThreatModel(target_labelled=params.n)

    def run(self, model, access, params, ctx):
        check_split(model)
        data = access.target_labelled()
        normalized = None
        if params.normalize:
            from ..methods.ntp.rescale import normalize_scales

            dev = next(model.parameters()).device
            normalized = normalize_scales(model, data.x[:64].to(dev))
        done = reset_zeros(model, params.reset, params.noise_std, ctx.seed + RESET_SEED_OFFSET)
        r = finetune_attack(model, data, len(data), params.strategy, False, params.protocol(), ctx.seed,
                            device=ctx.device, sample=torch.arange(len(data)), progress=ctx.progress)
        info = {k: v for k, v in r.as_dict().items() if k not in ("accuracy", "masked", "from_scratch")}
        return AttackOutcome(r.model, {**done, "normalized": normalized, **info})
