"""Magnitude pruning (METHODS.md §3), the control baseline: prune the source model to the same sparsity as
a protection method, with no target objective at all, to show that sparsity alone is not protection.

Global magnitude pruning (:func:`domainlock.masking.pruning.magnitude_masks`): the ``sparsity`` fraction of
all conv and linear weights with the smallest |w| is set to zero (``scope="layer"``: each layer to that
fraction on its own; ``prefix="encoder"``: only the encoder, as NTP prunes). Then, by default, a short
masked fine-tune on the labelled source recovers what pruning cost: ``finetune_epochs`` epochs of the
source recipe's SGD (:func:`domainlock.training.fit` with ``after_step=FixedMask.apply``, so pruned weights
stay exactly zero; cosine schedule, label smoothing 0.1, the source ``augment`` preset, best source-val
epoch). ``finetune_epochs=0`` returns the pruned weights as they are.

It never reads the target (``--target`` is only used by ``protect()`` to evaluate). Default sparsity 0.5:
the comparison sparsity is whatever the protection method under test reached (pass it with
``--sparsity``); ``docs/offline/digits.md`` reports 0.5 and 0.9.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ...data.augment import AUGMENTS
from ...errors import DomainlockError, check_choice, check_finite, check_integer, check_range
from ...masking.pruning import MAGNITUDE_SCOPES, FixedMask, magnitude_masks, mask_sparsity, prunable_modules
from ..base import DataAccess, Method, MethodResult, RunContext
from ..registry import register_method


@dataclass
class MagnitudeConfig:
    """Hyper-parameters of magnitude pruning (flat: every field is a CLI flag)."""

    sparsity: float = field(default=0.5, metadata={
        "help": "fraction of conv/linear weights pruned, in (0, 1) (use the sparsity of the method compared)"})
    scope: str = field(default="global", metadata={
        "help": "global: one magnitude threshold over all layers; layer: each layer pruned to sparsity",
        "choices": MAGNITUDE_SCOPES})
    prefix: str = field(default="", metadata={
        "help": "prune only modules under this name (e.g. encoder); empty = the whole model"})
    finetune_epochs: int = field(default=1, metadata={
        "help": "masked source fine-tune epochs after pruning (pruned weights stay zero; 0 = none)"})
    lr: float = field(default=0.01, metadata={"help": "fine-tune peak learning rate (SGD, cosine)"})
    batch_size: int = field(default=128, metadata={"help": "fine-tune batch size"})
    augment: str = field(default="default", metadata={
        "help": "fine-tune augmentation preset (default = the source recipe's)", "choices": list(AUGMENTS)})


def validate_magnitude(hp: MagnitudeConfig) -> None:
    if not isinstance(hp, MagnitudeConfig):
        raise DomainlockError(f"magnitude hyper-parameters must be a MagnitudeConfig, got {type(hp).__name__}")
    check_range("sparsity", check_finite("sparsity", hp.sparsity), 0.0, 1.0, low_open=True, high_open=True)
    check_choice("scope", hp.scope, MAGNITUDE_SCOPES)
    check_choice("augment", hp.augment, AUGMENTS)
    check_integer("finetune_epochs", hp.finetune_epochs, 0, 10_000)
    check_integer("batch_size", hp.batch_size, 2, 1 << 16)
    check_range("lr", check_finite("lr", hp.lr), 0.0, 10.0, low_open=True)


@register_method
class Magnitude(Method):
    """Global magnitude pruning to a given sparsity, optionally with a short masked source fine-tune."""

    name = "magnitude"
    settings = ("source-available",)
    Hparams = MagnitudeConfig
    needs_target = False
    summary = "magnitude pruning to a given sparsity (control baseline: sparsity is not protection)"

    def validate(self, hp: Any, setting: str) -> None:
        validate_magnitude(hp)

    def reads_target(self, hp: Any) -> bool:
        return False

    def target_refusal(self, hp: Any) -> str:
        return "magnitude pruning reads no target data"

    def run(self, model: nn.Module, access: DataAccess, hp: MagnitudeConfig, ctx: RunContext) -> MethodResult:
        if not prunable_modules(model, hp.prefix):
            raise DomainlockError(f"prefix={hp.prefix!r} names no conv or linear layer of the model")
        masks = magnitude_masks(model, hp.sparsity, scope=hp.scope, prefix=hp.prefix)
        fm = FixedMask(model, masks)          # zeroes the pruned weights now
        info: dict[str, Any] = {"sparsity_pruned": mask_sparsity(masks), "scope": hp.scope,
                                "prefix": hp.prefix, "finetune_epochs": hp.finetune_epochs}
        if hp.finetune_epochs > 0:
            from ...training.loop import TrainConfig, fit

            train, val = access.source("train"), access.source("val")
            cfg = TrainConfig(epochs=hp.finetune_epochs, batch_size=hp.batch_size, lr=hp.lr, schedule="cosine",
                              warmup_epochs=0.0, augment=hp.augment, seed=ctx.seed, select="best")
            summary = fit(model, train, val, cfg, device=ctx.device, progress=ctx.progress,
                          desc="magnitude fine-tune", after_step=fm.apply)
            info.update({"finetune": {k: summary[k] for k in ("history", "best_epoch", "wall_s", "img_per_s")}})
        fm.apply()
        fm.remove()
        model.eval()
        return MethodResult(model, info)


__all__ = ["Magnitude", "MagnitudeConfig", "validate_magnitude"]
