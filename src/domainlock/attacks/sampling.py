"""How an attacker's samples are drawn: per-class balanced target samples (nested in ``n`` for a fixed seed),
a stratified fraction of a split, and a per-class held-out share for the attacker's own model selection."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import DomainlockError


class SampleCountError(DomainlockError, ValueError):
    """A number of target samples the target split cannot provide (too many overall or for one class)."""


def sample_per_class(data: Any, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` samples of ``data`` (anything with ``.y`` and ``num_classes``), balanced per class.

    Each class gets ``n // C`` samples and ``n % C`` classes (drawn by ``seed``) one more. For a fixed seed
    the sets are nested in ``n``. Raises :class:`SampleCountError` when ``n`` exceeds the split, is smaller
    than the number of classes, or a class has fewer samples than it is asked for.
    """
    y = data.y
    num_classes = int(getattr(data, "num_classes", 0) or int(y.max()) + 1)
    name = f"{getattr(data, 'name', 'target')}/{getattr(data, 'split', 'train')}"
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SampleCountError(f"n={n!r} must be a positive integer number of target samples")
    if n > len(y):
        raise SampleCountError(f"n={n} exceeds the {len(y)} samples of {name}; use at most {len(y)}")
    if n < num_classes:
        raise SampleCountError(f"n={n} is smaller than the {num_classes} classes of {name}; a per-class balanced "
                               f"sample needs n >= {num_classes}")
    g = torch.Generator().manual_seed(int(seed))
    class_order = torch.randperm(num_classes, generator=g)
    counts = torch.bincount(y, minlength=num_classes)
    per = torch.full((num_classes,), n // num_classes, dtype=torch.long)
    per[class_order[: n % num_classes]] += 1
    short = [(int(counts[c]), c, int(per[c])) for c in range(num_classes) if counts[c] < per[c]]
    if short:
        have, c, want = min(short)
        raise SampleCountError(f"class {c} of {name} has {have} samples but n={n} asks for {want} per class; "
                               f"per-class balanced n can be at most {num_classes * int(counts.min())} here")
    idx = []
    for c in range(num_classes):
        members = (y == c).nonzero().flatten()
        idx.append(members[torch.randperm(len(members), generator=g)[: int(per[c])]])
    return torch.cat(idx)


def split_holdout(y: torch.Tensor, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Positions ``(train, holdout)`` into ``y``, holding out ``round(share * k)`` (at least 1, at most k-1)
    of each class's ``k`` samples; ``None`` when some class has fewer than 2 samples."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    train, hold = [], []
    for c in torch.unique(y).tolist():
        pos = (y == c).nonzero().flatten()
        k = len(pos)
        if k < 2:
            return None
        h = min(k - 1, max(1, round(share * k)))
        pos = pos[torch.randperm(k, generator=g)]
        hold.append(pos[:h])
        train.append(pos[h:])
    return torch.cat(train), torch.cat(hold)


def stratified_fraction(y: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Indices of ``round(p * k)`` (at least 1) of each class's ``k`` samples, seeded."""
    g = torch.Generator().manual_seed(int(seed) + 29)
    keep = []
    for c in torch.unique(y).tolist():
        pos = (y == c).nonzero().flatten()
        keep.append(pos[torch.randperm(len(pos), generator=g)[:max(1, round(p * len(pos)))]])
    return torch.cat(keep)
