"""Tiny hand-made domains and models shared by the method and training tests.

A plain module, not fixtures: the tests call these directly (and build loaders from them). pytest puts
``tests/`` on ``sys.path``, so test modules import it as ``from toys import ...``.
"""

from __future__ import annotations

import torch

from domainlock.data import DomainData
from domainlock.models import Classifier, build_model

C = 4  # classes of every toy domain
TINY_ARCH = {"width": 4, "feat_dim": 16}  # digitnet small enough for a test to train in seconds


def toy(name: str, split: str, n: int = 48) -> DomainData:
    """Noise whose class shows in the brightness of channel 0 (domain ``src``) or channel 1 (any other)."""
    g = torch.Generator().manual_seed(sum(map(ord, name + split)))
    y = torch.arange(n) % C
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    x[:, 0 if name == "src" else 1] += (y.float() / C).view(-1, 1, 1)
    return DomainData(name, split, x.clamp(0, 1), y, C)


class Loader:
    """A ``load_domain`` stand-in serving :func:`toy` data that records every call. A call for a domain or a
    ``(domain, split)`` pair in ``forbid`` fails the test."""

    def __init__(self, forbid: tuple = ()):
        self.calls: list[tuple[str, str]] = []
        self.forbid = forbid

    def __call__(self, name, split, root=None):
        self.calls.append((name, split))
        if name in self.forbid or (name, split) in self.forbid:
            raise AssertionError(f"loader called for {name}:{split}")
        return toy(name, split)


def tiny_model(seed: int = 0) -> Classifier:
    """A freshly initialized tiny digitnet for :data:`C` classes, in eval mode."""
    torch.manual_seed(seed)
    return build_model("digitnet", num_classes=C, **TINY_ARCH).eval()


def square_split(n: int, split: str, seed: int) -> DomainData:
    """Class k = a bright square in one of 4 positions; learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.1 * torch.rand(n, 3, 32, 32, generator=g)
    for i, k in enumerate(y.tolist()):
        r, c = divmod(k, 2)
        x[i, :, 4 + 14 * r: 14 + 14 * r, 4 + 14 * c: 14 + 14 * c] += 0.8
    return DomainData("toy", split, x.clamp(0, 1), y, 4)
