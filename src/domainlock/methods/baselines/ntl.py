"""NTL -- non-transferable learning (Wang et al., ICLR 2022; METHODS.md §3), a baseline the seed papers beat.

The whole model is fine-tuned on the objective of :mod:`domainlock.methods.baselines.nontransfer` with the
MMD factor on (``alpha = 0.1``, ``beta = 1`` by default, as the reference code): KL_S and KL_T are the
cross-entropies of the labelled source and "target" batches, and MMD is the multi-kernel Gaussian MMD of
:mod:`domainlock.losses.mmd` (its defaults are NTL's reference code's) between their encoder features.
Maximizing KL_T * MMD pushes the target predictions away from their labels *and* the target features away
from the source features; the cap beta stops the push once the product is large enough. The shared loop's
docstring lists its reconstruction choices (fine-tuning from the source weights, frozen BatchNorm
statistics, equal batches).

Variants (``variant``):

* ``target`` (target-specified NTL): x_t = real labelled target training images
  (``access.target("train")``; labels are read: NTL is a supervised method).
* ``source-only``: no target data; x_t = neighbourhood data generated from the source. The paper trains a
  conditional GAN on the source and shifts its outputs in several directions and distances; here the
  project's neighbour-domain generator (:func:`domainlock.synthesis.neighbours.make_neighbours`: colour,
  texture, rendering, blur/noise, random convolutions, resolution, strokes, ...) makes the neighbourhood
  from source images, each labelled with its source image's label (reconstruction: no GAN). This variant
  never reads the target: ``protect()`` refuses every target read and uses ``--target`` for evaluation only.

Further differences from the reference code, on purpose (the contract's equation is implemented): the
reference divides its KL terms by the number of classes (``KLDivLoss``'s ``mean`` reduction), computes the
MMD on a mid-network VGG feature map and caps ``0.1 * KL_T`` and ``0.1 * MMD`` separately at 1; here the KL
terms are per-image cross-entropies averaged over the batch, the MMD is on the encoder output g(x), and the
cap applies to the product as METHODS.md writes it. Defaults (steps, lr) and their measurements:
``docs/offline/digits.md`` (runs ``ntl`` and ``ntl-source-only``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ...errors import DomainlockError, check_choice, check_finite, check_integer, check_range
from ...losses.mmd import HEURISTICS
from ..base import DataAccess, MethodResult, RunContext
from ..registry import register_method
from .nontransfer import (
    BN_MODES,
    LoopSpec,
    NonTransferConfig,
    NonTransferMethod,
    finetune_non_transferable,
    neighbour_source,
    subsample,
    target_source,
)

NTL_VARIANTS = ("target", "source-only")


@dataclass
class NTLConfig(NonTransferConfig):
    """Hyper-parameters of NTL (flat: every field is a CLI flag)."""

    variant: str = field(default="target", metadata={
        "help": "target: real labelled target data (target-specified NTL); source-only: neighbourhood data "
                "generated from the source instead (never reads the target; --target is then used for "
                "evaluation only)", "choices": NTL_VARIANTS})
    mmd_kernels: int = field(default=5, metadata={"help": "number of Gaussian kernels of the MMD"})
    mmd_mul: float = field(default=2.0, metadata={"help": "bandwidth ratio between consecutive MMD kernels"})
    mmd_bandwidth: float = field(default=0.0, metadata={
        "help": "fixed base bandwidth h of the MMD kernels (0 = from mmd_heuristic on each batch)"})
    mmd_heuristic: str = field(default="mean", metadata={
        "help": "base bandwidth heuristic: mean or median pairwise squared distance of the pooled batch",
        "choices": HEURISTICS})


def validate_common(hp: Any, variants: tuple[str, ...], no_target_variant: str) -> None:
    """Checks NTL and CUTI share (one-line errors naming the bad value)."""
    check_choice("variant", hp.variant, variants)
    check_choice("bn", hp.bn, BN_MODES)
    check_range("alpha", check_finite("alpha", hp.alpha), 0.0, 1e3, low_open=True)
    check_range("beta", check_finite("beta", hp.beta), 0.0, 1e3, low_open=True)
    check_range("lr", check_finite("lr", hp.lr), 0.0, 1.0, low_open=True)
    check_range("weight_decay", check_finite("weight_decay", hp.weight_decay), 0.0, 1.0)
    check_integer("steps", hp.steps, 0, 10_000_000)
    check_integer("batch_size", hp.batch_size, 2, 1 << 16)
    check_integer("target_size", hp.target_size, 0, 1 << 30)
    check_integer("neighbour_pool", hp.neighbour_pool, 0, 1 << 22)
    check_integer("val_size", hp.val_size, 0, 1 << 24)
    check_range("neighbour_strength", check_finite("neighbour_strength", hp.neighbour_strength), 0.0, 1.0,
                low_open=True)
    from ...synthesis.neighbours import NeighbourConfig

    NeighbourConfig(families=hp.neighbour_families, strength=hp.neighbour_strength)  # family names
    if hp.variant == no_target_variant and hp.target_size != 0:
        raise DomainlockError(f"target_size={hp.target_size} selects target images, but variant "
                              f"{no_target_variant!r} reads no target data; use target_size=0 or variant='target'")


def validate_ntl(hp: NTLConfig) -> None:
    if not isinstance(hp, NTLConfig):
        raise DomainlockError(f"NTL hyper-parameters must be an NTLConfig, got {type(hp).__name__}")
    validate_common(hp, NTL_VARIANTS, "source-only")
    check_integer("mmd_kernels", hp.mmd_kernels, 1, 64)
    check_range("mmd_mul", check_finite("mmd_mul", hp.mmd_mul), 1.0, 1e3, low_open=True)
    check_range("mmd_bandwidth", check_finite("mmd_bandwidth", hp.mmd_bandwidth), 0.0, 1e12)
    check_choice("mmd_heuristic", hp.mmd_heuristic, HEURISTICS)


def source_data(access: DataAccess, hp: Any, ctx: RunContext):
    """Labelled source training images and ``val_size`` held-out source val images."""
    src = access.source("train")
    val = None
    if hp.val_size > 0:
        v = access.source("val")
        val = subsample(v.x, v.y, hp.val_size, ctx.generator(3))
    return src, val


def other_data(access: DataAccess, hp: Any, ctx: RunContext, src, target_variant: bool):
    """The batch source of the target term: real target data or neighbourhood data from the source."""
    if target_variant:
        tgt = access.target("train")
        x_t, y_t = subsample(tgt.x, tgt.y, hp.target_size, ctx.generator(5))
        return target_source(x_t, y_t, hp.batch_size, ctx), {"target_train_images": int(len(x_t)),
                                                             "used_target_labels": True}
    other, info = neighbour_source(src.x, src.y, hp.batch_size, ctx, pool=hp.neighbour_pool,
                                   strength=hp.neighbour_strength, families=hp.neighbour_families)
    info["used_target_labels"] = False
    return other, info


@register_method
class NTL(NonTransferMethod):
    """Non-transferable learning: the shared loop with the MMD factor, whole model fine-tuned."""

    name = "ntl"
    settings = ("source-available",)
    Hparams = NTLConfig
    summary = "non-transferable learning (baseline): fine-tune on KL_S - min(beta, alpha*KL_T*MMD)"

    def validate(self, hp: Any, setting: str) -> None:
        validate_ntl(hp)

    def run(self, model: nn.Module, access: DataAccess, hp: NTLConfig, ctx: RunContext) -> MethodResult:
        src, val = source_data(access, hp, ctx)
        other, oinfo = other_data(access, hp, ctx, src, self.reads_target(hp))
        spec = LoopSpec(alpha=hp.alpha, beta=hp.beta, steps=hp.steps, batch_size=hp.batch_size, lr=hp.lr,
                        weight_decay=hp.weight_decay, bn=hp.bn, use_mmd=True, mmd_kernels=hp.mmd_kernels,
                        mmd_mul=hp.mmd_mul, mmd_bandwidth=hp.mmd_bandwidth, mmd_heuristic=hp.mmd_heuristic)
        model, info = finetune_non_transferable(model, src.x, src.y, other, spec, ctx, val=val,
                                                desc=f"ntl/{hp.variant}")
        info.update(oinfo)
        info["variant"] = hp.variant
        return MethodResult(model, info)


__all__ = ["NTL", "NTLConfig", "NTL_VARIANTS", "validate_ntl"]
