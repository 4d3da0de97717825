"""Helpers shared by the domain builders: stratified splits, resizing, uint8 conversion."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .types import SPLITS

IMAGE_SIZE = 32
#: Seed of the train/val/test partition: fixed, so every build (whatever its ``seed``) splits alike.
SPLIT_SEED = 20240601
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
DIGIT_CLASSES = [str(d) for d in range(10)]


@dataclass
class BuiltDomain:
    """A built domain a builder depends on: its manifest and a reader of its stored splits."""

    manifest: dict[str, Any]
    read_split: Callable[[str], tuple[np.ndarray, np.ndarray]]   # split -> (x uint8 [N,3,32,32], y int64 [N])


@dataclass
class BuildContext:
    """What a builder gets: the data root, the seed, progress on/off, and ``dependency(name)``, which builds
    a domain named in the spec's ``depends`` if needed and returns it (so builders never import storage).

    The standard datasets also read ``protocol`` (``default`` or ``ntlbench``), ``archives`` (files the user
    fetched by hand, ``--archive``), ``trust_archive`` (build from an archive whose digest does not match),
    ``source_root`` (the folder a folder dataset was downloaded into, ``--root``) and ``opener`` (the urllib
    opener downloads go through; ``None``: urllib's default)."""

    root: Path
    seed: int
    progress: bool = True
    dependency: Callable[[str], BuiltDomain] | None = None
    protocol: str = "default"
    archives: tuple[Path, ...] = ()
    trust_archive: bool = False
    source_root: Path | None = None
    opener: Any = None


@dataclass
class BuildResult:
    """What a builder returns. ``splits[split] = (x uint8 [N,3,S,S], y int64 [N])`` with ``S = image_size``."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: list[str]
    source: dict[str, Any]                                # package, version, how it was obtained
    raw_sha256: dict[str, str] = field(default_factory=dict)  # raw file -> sha256
    extra: dict[str, Any] = field(default_factory=dict)     # fonts (syn), photos (mnistm), notes
    image_size: int = IMAGE_SIZE                           # side of the stored images (64 under ntlbench)


def _quotas(class_sizes: np.ndarray, frac: float) -> np.ndarray:
    """Per-class sizes summing to ``round(frac * total)``, proportional (largest remainder)."""
    exact = class_sizes * frac
    q = np.floor(exact).astype(np.int64)
    short = int(round(frac * class_sizes.sum())) - int(q.sum())
    order = np.lexsort((np.arange(len(exact)), -(exact - q)))  # largest remainder first, then class id
    q[order[:max(0, short)]] += 1
    return np.minimum(q, class_sizes)


def stratified_split(y: np.ndarray, fractions: Sequence[float] = SPLIT_FRACTIONS,
                     seed: int = SPLIT_SEED, names: Sequence[str] = SPLITS) -> dict[str, np.ndarray]:
    """Partition indices of ``y`` per class by ``fractions`` (the first split takes the remainder).

    Split totals are ``round(fraction * N)`` exactly, spread over classes in proportion to their sizes.
    Deterministic for a given ``seed``; each split's order is shuffled so it is not sorted by class.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    labels = np.unique(y)
    sizes = np.array([(y == c).sum() for c in labels], dtype=np.int64)
    quotas = [_quotas(sizes, f) for f in fractions[1:]]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for ci, c in enumerate(labels):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        ks = [int(q[ci]) for q in quotas]
        start = len(idx) - sum(ks)
        parts[names[0]].append(idx[:start])
        for n, k in zip(names[1:], ks, strict=True):
            parts[n].append(idx[start:start + k])
            start += k
    out = {}
    for n in names:
        cat = np.concatenate(parts[n]) if parts[n] else np.zeros(0, dtype=np.int64)
        out[n] = cat[rng.permutation(len(cat))].astype(np.int64)
    return out


def stratified_take(y: np.ndarray, per_class: int | dict[int, int], rng: np.random.Generator) -> np.ndarray:
    """Indices of a class-balanced random sample of ``y`` (``per_class`` of each class), shuffled."""
    y = np.asarray(y)
    picks = []
    for c in np.unique(y):
        k = per_class[int(c)] if isinstance(per_class, dict) else per_class
        idx = np.flatnonzero(y == c)
        picks.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    cat = np.concatenate(picks)
    return cat[rng.permutation(len(cat))].astype(np.int64)


def pad_to(x: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Zero-pad ``[..., H, W]`` symmetrically to ``size x size`` (MNIST's usual 28 -> 32 padding)."""
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} to {size}")
    top, left = (size - h) // 2, (size - w) // 2
    pad = [(0, 0)] * (x.ndim - 2) + [(top, size - h - top), (left, size - w - left)]
    return np.pad(x, pad)


def resize(x: np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """Resize float ``[N,C,H,W]`` (or ``[N,H,W]``) to ``size x size``: bilinear, antialiased, in torch."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    squeeze = t.ndim == 3
    if squeeze:
        t = t[:, None]
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    t = t.clamp_(0.0, 1.0)
    return (t[:, 0] if squeeze else t).numpy()


def to_uint8_rgb(x: np.ndarray) -> np.ndarray:
    """Float ``[N,H,W]`` or ``[N,C,H,W]`` in [0,1] -> uint8 ``[N,3,H,W]`` (gray replicated to 3 channels)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def apply_splits(x: np.ndarray, y: np.ndarray, parts: dict[str, np.ndarray]
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (x[idx], y[idx])}`` with labels as int64."""
    return {s: (np.ascontiguousarray(x[idx]), np.asarray(y[idx], dtype=np.int64)) for s, idx in parts.items()}


def progress_bar(iterable, *, enabled: bool, desc: str, total: int | None = None, unit: str = "it"):
    """A tqdm bar on stderr (or the bare iterable when ``enabled`` is False)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)


AvailableFn = Callable[[], tuple[bool, str]]
