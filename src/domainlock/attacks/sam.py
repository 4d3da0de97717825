"""Sharpness-aware minimization (SAM, Foret et al., ICLR 2021) and its adaptive form (ASAM, Kwon et al., ICML
2021) around any base optimizer.

One step takes two forward-backward passes. With the gradient ``g`` at the weights ``w`` the first moves the
weights to the worst point of a neighbourhood,

    e = ρ · T² g / ||T g||,   T = |w| (adaptive, element-wise) or 1 (plain SAM),

and the second restores ``w`` and lets the base optimizer step with the gradient taken at ``w + e``. The
norm is over every parameter at once. Adaptive SAM scales the neighbourhood by each weight's magnitude, so
its ``ρ`` is not comparable to plain SAM's (ASAM's papers use ρ around 0.5, SAM's around 0.05).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from ..errors import check_range

NORM_EPS = 1e-12  #: keeps the ascent finite when the gradient is zero


class SAM:
    """Sharpness-aware steps over ``base`` (an optimizer built on the same ``params``); see the module
    docstring. Use :meth:`step` with a closure that zeroes nothing, computes the loss and calls ``backward``;
    or :meth:`ascend` / :meth:`descend` around your own second pass."""

    def __init__(self, params: Iterable[torch.nn.Parameter], base: torch.optim.Optimizer, rho: float = 0.5,
                 adaptive: bool = True):
        check_range("rho", rho, 0.0, math.inf)
        self.params = [p for p in params if p.requires_grad]
        self.base, self.rho, self.adaptive = base, float(rho), bool(adaptive)
        self._shift: list[torch.Tensor | None] = []

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def ascend(self) -> None:
        """Move every parameter to ``w + e`` (the gradients at ``w`` must be in ``.grad``) and clear them."""
        scaled = [(p.abs() * p.grad if self.adaptive else p.grad) if p.grad is not None else None
                  for p in self.params]
        norms = [s.norm(2) for s in scaled if s is not None]
        scale = self.rho / (float(torch.stack(norms).norm(2)) + NORM_EPS) if norms else 0.0
        self._shift = []
        for p, s in zip(self.params, scaled, strict=True):
            e = None if s is None else (s * p.abs() if self.adaptive else s) * scale
            if e is not None:
                p.add_(e)
            self._shift.append(e)
        self.zero_grad()

    @torch.no_grad()
    def descend(self) -> None:
        """Return every parameter to ``w`` and take the base optimizer's step with the gradients in ``.grad``
        (those at ``w + e``)."""
        for p, e in zip(self.params, self._shift, strict=True):
            if e is not None:
                p.sub_(e)
        self._shift = []
        self.base.step()

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One SAM step; ``closure`` computes the loss and its gradients. Returns the loss at ``w``."""
        self.zero_grad()
        loss = closure()
        self.ascend()
        with torch.enable_grad():
            closure()
        self.descend()
        return loss.detach()
