"""The ``cupi`` method: hyper-parameters, their checks, the reference preset, and the contract's ``run``.

Why the CPU-sized defaults are what they are (measurements: docs/design/cupi.md):
* ``steps=150``, ``batch_size=64``, ``cupi_share=0.5``: protects a digit CNN on mnist->syn within about a CPU
  minute at 1 thread; the reference runs 30 epochs of 5000 image triples at batch 32 on a GPU.
* ``kappa=1.0``: the ramped discrimination/style weight reaches 1 at the last step (the reference ramps to ~2.1
  over its 30 epochs; each term is capped at beta either way).
* ``momentum=0.1``: with ~6 source images of a class per batch, the banks average over the last ~10 steps;
  the reference's per-image slots refresh at batch/train-size = 32/5000 per step (the ``reference`` preset).
* ``lr_decay=1.0``: over a short fine-tune the reference's 0.999 per step would change little.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ....errors import DomainlockError, check_choice, check_finite, check_range
from ...base import DataAccess, MethodResult, RunContext
from ...registry import register_method
from ..cuti import restyle_points
from ..nontransfer import NonTransferConfig, NonTransferMethod
from ..ntl import other_data, source_data, validate_common
from .loop import train_cupi
from .pyramid import GENERATORS

CUPI_VARIANTS = ("target", "target-free")


@dataclass
class CUPIConfig(NonTransferConfig):
    """Hyper-parameters of CUPI-domain (flat: every field is a CLI flag)."""

    steps: int = field(default=150, metadata={"help": "fine-tuning steps from the source weights (0 = return the "
                                                      "source model)"})
    variant: str = field(default="target", metadata={
        "help": "target: real labelled target data are the isolation anchors (target-specified CUPI-domain); "
                "target-free: neighbourhood data generated from the source (never reads the target; --target is "
                "then used for evaluation only)", "choices": CUPI_VARIANTS})
    cupi_share: float = field(default=0.5, metadata={
        "help": "isolation anchors fused per step, as a share of the target/neighbourhood rows, in (0, 1] "
                "(1 = the reference's equal thirds)"})
    generator: str = field(default="conv", metadata={
        "help": "style of the fused rows: conv (sigmoid of a random 1x1 convolution of the authorized anchor's "
                "statistics, the reference) or mix (random interpolation of the two anchors' statistics)",
        "choices": GENERATORS})
    kappa: float = field(default=1.0, metadata={
        "help": "final weight of the discrimination and style terms, ramped as kappa*(t/T)^0.9 (0 = off)"})
    momentum: float = field(default=0.1, metadata={
        "help": "memory-bank momentum in (0, 1]: running mean over the first 1/momentum updates, EMA after"})
    lr_decay: float = field(default=1.0, metadata={
        "help": "learning-rate factor applied after every step, in (0, 1] (reference 0.999)"})
    pyramid_layers: str = field(default="auto", metadata={
        "help": "encoder modules after which the pyramid fusion runs: auto (every MaxPool2d, else every "
                "Sequential stage) or comma-separated fnmatch patterns of module names"})


#: the reference code's values (train_ts_digit.py / train_tf_digit.py of the authors' release); the paper's
#: image size (64 px), VGG-11 backbone and 5000 training images per domain are not hyper-parameters here
REFERENCE = {"alpha": 0.1, "beta": 1.0, "lr": 1e-4, "lr_decay": 0.999, "batch_size": 32, "steps": 4680,
             "cupi_share": 1.0, "generator": "conv", "kappa": 2.07, "momentum": 0.0064}


def validate_cupi(hp: CUPIConfig) -> None:
    if not isinstance(hp, CUPIConfig):
        raise DomainlockError(f"CUPI hyper-parameters must be a CUPIConfig, got {type(hp).__name__}")
    validate_common(hp, CUPI_VARIANTS, "target-free")
    check_range("cupi_share", check_finite("cupi_share", hp.cupi_share), 0.0, 1.0, low_open=True)
    check_choice("generator", hp.generator, GENERATORS)
    check_range("kappa", check_finite("kappa", hp.kappa), 0.0, 1e3)
    check_range("momentum", check_finite("momentum", hp.momentum), 0.0, 1.0, low_open=True)
    check_range("lr_decay", check_finite("lr_decay", hp.lr_decay), 0.0, 1.0, low_open=True)
    if not isinstance(hp.pyramid_layers, str):
        raise DomainlockError(f"pyramid_layers={hp.pyramid_layers!r} must be 'auto' or comma-separated patterns")


@register_method
class CUPI(NonTransferMethod):
    """CUPI-domain: NTL's KL terms on a pyramid isolation domain, with memory-bank discrimination and style terms."""

    name = "cupi"
    settings = ("source-available",)
    Hparams = CUPIConfig
    presets = {"reference": REFERENCE}
    summary = ("compact un-transferable pyramid isolation domain (baseline): fused anchor styles at every block, "
               "class memory banks, discrimination and style losses")

    def validate(self, hp: Any, setting: str) -> None:
        validate_cupi(hp)

    def run(self, model: nn.Module, access: DataAccess, hp: CUPIConfig, ctx: RunContext) -> MethodResult:
        points = restyle_points(model, hp.pyramid_layers, "pyramid_layers")   # fail before reading data
        src, val = source_data(access, hp, ctx)
        other, oinfo = other_data(access, hp, ctx, src, self.reads_target(hp))
        model, info = train_cupi(model, src.x, src.y, src.num_classes, other, [m for _, m in points], hp, ctx,
                                 val=val, desc=f"cupi/{hp.variant}")
        info.update(oinfo)
        info.update({"variant": hp.variant, "generator": hp.generator, "cupi_share": hp.cupi_share,
                     "pyramid_layers": [n for n, _ in points]})
        return MethodResult(model, info)


__all__ = ["CUPI", "CUPIConfig", "CUPI_VARIANTS", "REFERENCE", "validate_cupi"]
