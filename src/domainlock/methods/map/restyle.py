"""The restyled keep set of MAP (``keep_restyle``): target images seen with the source's BatchNorm statistics.

A BatchNorm layer's running statistics are the only record of the source's style a source-free owner holds. While
a :class:`Restyler` is on, a forward pre-hook on each chosen BN layer l re-normalizes that layer's input h, per
channel c, from the batch's own statistics to the running ones:

    R_l(h)_c = (h_c − μ_B(h_c)) / σ_B(h_c) · sqrt(σ̂²_l,c) + μ̂_l,c        (μ_B, σ_B: batch mean and std)

so a batch of target images is processed as if its low-level statistics were the source's. Distilling the
source model on such batches (:func:`domainlock.methods.map.mask_learning.learn_mask`) keeps what the source
model does with target *content* in source *style*, while the target term destroys the target in its own
style: the mask has to separate the two by style, the way the real source (whose statistics are the running
ones, so ``R`` leaves it nearly unchanged) differs from the target.

``first`` re-normalizes the first BN layer only (low-level colour and contrast), ``all`` every BN layer (the
batch-statistics view of the whole network). On a real source batch both are close to the identity.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ...errors import DomainlockError
from ...synthesis.inversion import bn_layers

RESTYLE = ("none", "first", "all")


def restyle(h: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
            eps: float = 1e-5) -> torch.Tensor:
    """``R(h)``: per-channel (dim 1) re-normalization of ``h`` from its batch statistics to the running ones."""
    dims = [d for d in range(h.dim()) if d != 1]
    shape = (1, -1) + (1,) * (h.dim() - 2)
    mu = h.mean(dims, keepdim=True)
    sd = h.var(dims, keepdim=True, unbiased=False).add(eps).sqrt()
    return (h - mu) / sd * running_var.add(eps).sqrt().view(shape) + running_mean.view(shape)


class Restyler:
    """Pre-hooks on the BN layers of ``model`` (``which``: first|all) that apply :func:`restyle` while
    :meth:`on` is active; :meth:`remove` detaches them."""

    def __init__(self, model: nn.Module, which: str):
        layers = bn_layers(model)
        if not layers:
            raise DomainlockError("keep_restyle needs a model with BatchNorm layers (their running statistics "
                                  "are the source style); use keep_restyle=none")
        self._active = False
        self._handles = [m.register_forward_pre_hook(self._hook) for m in (layers[:1] if which == "first" else layers)]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]):
        if not self._active:
            return None
        return (restyle(inputs[0], module.running_mean, module.running_var),)

    @contextmanager
    def on(self):
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
