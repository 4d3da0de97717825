"""The registered ``ntp`` method: :func:`~domainlock.methods.ntp.admm.ntp_prune` under the protection
contract (source-available: labelled source and target train data, source val for the held-out log)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...models import split_model
from ..base import DataAccess, Method, MethodResult, RunContext
from ..registry import register_method
from .admm import ntp_prune
from .config import NTPConfig, validate_config


@register_method
class NTP(Method):
    """Non-transferable pruning: ADMM pruning of the encoder that keeps the source and collapses the
    target's class separability (capped target CE against a simulated attacker head + Fisher ratio)."""

    name = "ntp"
    settings = ("source-available",)
    Hparams = NTPConfig
    summary = "ADMM pruning of the encoder: keep the source, collapse the target (Fisher ratio, capped CE)"

    def validate(self, hp: Any, setting: str) -> None:
        validate_config(hp)

    def run(self, model: nn.Module, access: DataAccess, hp: NTPConfig, ctx: RunContext) -> MethodResult:
        split_model(model)   # fail before reading any data when the model has no encoder/head split
        src = access.source("train")
        tgt = access.target("train")
        vx = vy = None
        if hp.val_size > 0:
            val = access.source("val")
            n = min(hp.val_size, len(val.y))
            keep = torch.randperm(len(val.y), generator=ctx.generator(4))[:n]
            vx, vy = val.x[keep], val.y[keep]
        classes = max(int(getattr(src, "num_classes", 0) or 0), int(getattr(tgt, "num_classes", 0) or 0)) or None
        protected, info = ntp_prune(model, src.x, src.y, tgt.x, tgt.y, hp, ctx, val_x=vx, val_y=vy,
                                    num_classes=classes)
        info["source_val_size"] = 0 if vy is None else int(len(vy))
        return MethodResult(protected, info)
