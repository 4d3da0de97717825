"""The query generator of the data-free distillation attack (:mod:`.distill`) and the black-box gradient it
learns from.

:class:`QueryGenerator` maps noise ``z ~ N(0, I)`` and a class ``y`` to images in ``[0, 1]`` (DFME's
generator, narrower, conditioned like the library's inversion generator): ``z ⊕ embed(y) → Linear → BN →
2 × (upsample ×2, conv 3×3, BN, LeakyReLU) → conv 3×3 → sigmoid``.

The teacher is a black box, so the gradient of the disagreement ``D(x)`` with respect to a generated image
``x`` (``d`` pixels) is estimated from queries alone, by DFME's forward differences along ``m`` random unit
directions ``u_j`` with step ``μ``:

    ∇̂_x D(x) = (d / m) · Σ_j [D(x + μ u_j) − D(x)] / μ · u_j

(``m + 1`` queries per image). ``d / m`` makes the estimate unbiased for the gradient of a smoothed ``D``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class QueryGenerator(nn.Module):
    """``G(z, y)``: noise ``[B, z_dim]`` and classes ``[B]`` → images ``[B, *shape]`` in ``[0, 1]`` (module
    docstring)."""

    def __init__(self, z_dim: int, shape: tuple[int, int, int], num_classes: int, width: int = 32):
        super().__init__()
        c, h, w = shape
        self.z_dim, self.shape, self.width = int(z_dim), tuple(shape), int(width)
        self.num_classes = int(num_classes)
        self.h0, self.w0 = max(1, h // 4), max(1, w // 4)
        self.embed = nn.Embedding(self.num_classes, self.z_dim)
        self.fc = nn.Linear(2 * self.z_dim, 2 * self.width * self.h0 * self.w0)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * self.width),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * self.width, 2 * self.width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * self.width), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * self.width, self.width, 3, padding=1, bias=False),
            nn.BatchNorm2d(self.width), nn.LeakyReLU(0.2),
            nn.Conv2d(self.width, c, 3, padding=1))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(y)], 1)).view(-1, 2 * self.width, self.h0, self.w0)
        out = torch.sigmoid(self.body(h))
        if out.shape[-2:] != self.shape[-2:]:
            out = F.interpolate(out, size=self.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def sample(self, n: int, g: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G(z, y), y)`` for ``n`` noise vectors and classes (balanced, shuffled) drawn with ``g`` (keeps the
        autograd graph)."""
        y = (torch.arange(n) % self.num_classes)[torch.randperm(n, generator=g)].to(device)
        return self(torch.randn(n, self.z_dim, generator=g).to(device), y), y


@torch.no_grad()
def forward_difference_grad(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, directions: int,
                            step: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇̂_x D, D(x))`` for a batch ``x`` by forward differences (module docstring). ``loss`` maps a batch
    to per-image values ``[B]`` and is called once, on ``x`` and its ``directions`` perturbed copies."""
    b, d = len(x), x[0].numel()
    u = torch.randn(directions, *x.shape, generator=g).to(x.device)
    u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12).view(directions, b, *([1] * (x.dim() - 1)))
    values = loss(torch.cat([x, (x.unsqueeze(0) + step * u).flatten(0, 1)])).view(directions + 1, b)
    base, moved = values[0], values[1:]
    slopes = (moved - base) / step                                    # [m, B]
    grad = (slopes.view(directions, b, *([1] * (x.dim() - 1))) * u).sum(0) * (d / directions)
    return grad, base
