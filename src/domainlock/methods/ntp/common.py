"""Helpers the NTP modules share: BatchNorm layers that normalize with batch statistics without updating their
running ones (or re-estimate them), and encoder features computed in batches."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ...utils.layout import batch_to_channels_last


def _bn_modules(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def frozen_bn_stats(module: nn.Module):
    """Inside: BatchNorm layers in training mode still normalize with batch statistics but do not update
    their running statistics (momentum 0 for the duration; safe inside an autograd graph, unlike copying
    saved statistics back, which would bump the version of tensors saved for backward)."""
    saved = [(bn, bn.momentum, None if bn.num_batches_tracked is None else int(bn.num_batches_tracked))
             for bn in _bn_modules(module)]
    for bn, _, _ in saved:
        bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, mom, nb in saved:
            bn.momentum = mom
            if nb is not None:
                bn.num_batches_tracked.fill_(nb)



@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, dev: torch.device, bs: int = 256) -> None:
    """Replace every BatchNorm's running statistics by their plain average over ``x`` (train-mode passes)."""
    bns = _bn_modules(model)
    saved = [bn.momentum for bn in bns]
    was = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None   # cumulative average
    model.train()
    try:
        for i in range(0, len(x), bs):
            if len(x[i:i + bs]) >= 2:
                model(batch_to_channels_last(x[i:i + bs].to(dev)))
    finally:
        for bn, mom in zip(bns, saved, strict=True):
            bn.momentum = mom
        model.train(was)


@torch.no_grad()
def _features(encoder: nn.Module, x: torch.Tensor, dev: torch.device, bs: int = 256, running: bool = False
              ) -> torch.Tensor:
    """Encoder features with BatchNorm on batch statistics (running statistics untouched), or on the running
    statistics (``running``)."""
    was = encoder.training
    out = []
    try:
        if running:
            encoder.eval()
            for i in range(0, len(x), bs):
                out.append(encoder(batch_to_channels_last(x[i:i + bs].to(dev))).flatten(1).cpu())
            return torch.cat(out)
        encoder.train()
        with frozen_bn_stats(encoder):
            for i in range(0, len(x), bs):
                xb = x[i:i + bs]
                if len(xb) < 2:   # a batch of 1 cannot be normalized with its own statistics
                    xb = x[max(0, len(x) - bs):]
                    out.append(encoder(batch_to_channels_last(xb.to(dev)))[-1:].flatten(1).cpu())
                    continue
                out.append(encoder(batch_to_channels_last(xb.to(dev))).flatten(1).cpu())
        return torch.cat(out)
    finally:
        encoder.train(was)

