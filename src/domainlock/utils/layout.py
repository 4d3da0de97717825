"""Memory layout of a model's convolution weights: channels-last to compute, contiguous to store.

A 4-D tensor ``[N, C, H, W]`` stored channels-last keeps the ``C`` values of one pixel side by side. On CPU
the convolution, batch-norm and pooling kernels of the project's convolutional models run faster on it
(digitnet at one thread: 1.7x training, 2.3x inference; docs/bench/layout.md). Only the weights need the
layout: a convolution with channels-last weights returns channels-last activations for any input. A layout
change copies values, never changes them; results differ only by the order of floating-point sums.

safetensors stores contiguous tensors only, so a model goes back to :func:`to_contiguous` before it is saved
or handed back to a caller (:func:`channels_last` does it on exit). :func:`set_channels_last` turns the
conversion off process-wide (a device whose kernels prefer the standard layout; the speed benchmark's
reference).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_ENABLED = True


def set_channels_last(enabled: bool) -> bool:
    """Whether :func:`to_channels_last` converts from now on (process-wide); returns the previous setting."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


def to_channels_last(model: nn.Module) -> nn.Module:
    """Put every 4-D parameter and buffer of ``model`` in channels-last layout, in place (unless turned off by
    :func:`set_channels_last`); returns ``model``."""
    return model.to(memory_format=torch.channels_last) if _ENABLED else model


def to_contiguous(model: nn.Module) -> nn.Module:
    """Make every parameter and buffer of ``model`` contiguous (the layout safetensors stores), in place."""
    model.to(memory_format=torch.contiguous_format)
    for t in [*model.parameters(), *model.buffers()]:   # .to() leaves some 4-D views as they were
        if not t.data.is_contiguous():
            t.data = t.data.contiguous()
    return model


def batch_to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """An image batch ``[N, C, H, W]`` in channels-last layout (other tensors as they are): the input layout
    of a model that computes in channels-last."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def is_channels_last(model: nn.Module) -> bool:
    """Whether every 4-D parameter of ``model`` is channels-last (``False`` when it has none)."""
    four = [p for p in model.parameters() if p.dim() == 4]
    return bool(four) and all(p.is_contiguous(memory_format=torch.channels_last) for p in four)


@contextmanager
def channels_last(model: nn.Module) -> Iterator[nn.Module]:
    """Compute in channels-last inside the block; a model that came in contiguous leaves contiguous."""
    was = is_channels_last(model)
    if not _ENABLED:
        yield model
        return
    to_channels_last(model)
    try:
        yield model
    finally:
        if not was:
            to_contiguous(model)
