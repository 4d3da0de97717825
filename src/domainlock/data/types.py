"""The in-memory form of a domain split: :class:`DomainData`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..errors import DomainlockError

SPLITS = ("train", "val", "test")


@dataclass
class DomainData:
    """One split of one domain, fully in memory.

    ``x`` is float32 ``[N, 3, 32, 32]`` in ``[0, 1]`` (``[N, 3, 64, 64]`` for a standard dataset built with the
    ``ntlbench`` protocol; grayscale sources are replicated to 3 channels),
    ``y`` is int64 ``[N]`` with values in ``[0, num_classes)``. ``split`` is one of :data:`SPLITS`,
    or ``"all"`` for a user's image folder (:func:`load_image_folder`).
    """

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"DomainData {self.name}/{self.split}: x {tuple(self.x.shape)} and "
                             f"y {tuple(self.y.shape)} do not match ([N,C,H,W] and [N])")
        if not self.classes:
            self.classes = [str(i) for i in range(self.num_classes)]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return (f"DomainData(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"x={tuple(self.x.shape)}, num_classes={self.num_classes})")

    def loader(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
               drop_last: bool = False) -> DataLoader:
        """A ``DataLoader`` over ``(x, y)`` (``TensorDataset``, ``num_workers=0``).

        Pass a seeded ``generator`` with ``shuffle=True`` for a reproducible order."""
        return DataLoader(TensorDataset(self.x, self.y), batch_size=batch_size, shuffle=shuffle,
                          generator=generator, drop_last=drop_last, num_workers=0)

    def subset(self, idx) -> DomainData:
        """A new :class:`DomainData` holding the rows ``idx`` (indices, slice or boolean mask)."""
        if isinstance(idx, slice):
            sel = idx
        else:
            sel = torch.as_tensor(idx)
            if sel.dtype != torch.bool:
                sel = sel.long()
        return DomainData(self.name, self.split, self.x[sel], self.y[sel], self.num_classes,
                          list(self.classes))

    def class_counts(self) -> list[int]:
        """Number of samples per class, in class order."""
        return torch.bincount(self.y, minlength=self.num_classes).tolist()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


def require_classes(data, per_class: bool = False):
    """Return ``data`` (a :class:`DomainData` or anything with ``.x``, ``.y``, ``num_classes``) if a classifier
    can be judged on it, else a one-line :class:`DomainlockError` saying what is needed: at least 2 classes,
    and at least as many samples as classes (``per_class``: at least one sample of every class)."""
    name, split = str(getattr(data, "name", "the domain")), str(getattr(data, "split", "?"))
    name = name if name.isprintable() else repr(name)   # one line, whatever the folder is called
    y = data.y
    nc = int(getattr(data, "num_classes", 0) or (int(y.max()) + 1 if len(y) else 0))
    classes = list(getattr(data, "classes", None) or [])
    if nc < 2:
        named = f" ({', '.join(map(repr, classes[:nc]))})" if nc and classes else ""
        raise DomainlockError(f"{name} has {_plural(nc, 'class')}{named}; a domain needs at least 2")
    n = int(y.shape[0])
    counts = torch.bincount(y.cpu().clamp(min=0), minlength=nc)[:nc].tolist() if n else [0] * nc
    empty = [classes[c] if c < len(classes) else str(c) for c, k in enumerate(counts) if k == 0]
    if n < nc or (per_class and empty):
        what = "image" if str(name).startswith("folder:") else "sample"
        lacking = f" (none of {', '.join(map(repr, empty[:5]))}{', ...' if len(empty) > 5 else ''})" if empty else ""
        raise DomainlockError(f"{name} split {split} has {_plural(n, what)} for {nc} classes{lacking}; "
                              f"need at least one per class")
    return data
