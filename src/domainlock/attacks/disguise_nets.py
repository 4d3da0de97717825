"""The networks of the input-disguising attack (:mod:`.disguise`): a small residual image-to-image translator and
a patch discriminator, both sized so that 32x32 digits train on a CPU.

* :class:`Translator`: ``T(x) = clamp(x + f(x), 0, 1)`` with ``f`` a stack of 3x3 convolutions whose last layer
  starts at zero, so an untrained translator is the identity (the attack starts from "change nothing").
* :class:`Discriminator`: a PatchGAN (two stride-2 4x4 convolutions and a 3x3 read-out) scoring each patch
  real or translated, trained with the least-squares GAN loss (:func:`lsgan`), as in CycleGAN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Translator(nn.Module):
    """``x ↦ clamp(x + f(x), 0, 1)``; ``f``: ``depth`` 3x3 conv + ReLU layers of ``width`` channels, then a 3x3
    conv back to the image's channels (zero-initialized: the identity at start)."""

    def __init__(self, channels: int = 3, width: int = 16, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(channels if i == 0 else width, width, 3, padding=1), nn.ReLU(inplace=True)]
        out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.residual = nn.Sequential(*layers, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.residual(x)).clamp(0.0, 1.0)


class Discriminator(nn.Module):
    """A patch discriminator: a score map (one logit per receptive field of ~22 px) for a batch of images."""

    def __init__(self, channels: int = 3, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def lsgan(score: torch.Tensor, real: bool) -> torch.Tensor:
    """The least-squares GAN loss: mean ``(score − 1)²`` for ``real``, mean ``score²`` otherwise."""
    return F.mse_loss(score, torch.full_like(score, 1.0 if real else 0.0))
