"""The in-memory form of a domain split: :class:`DomainData`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, TensorDataset

SPLITS = ("train", "val", "test")


@dataclass
class DomainData:
    """One split of one domain, fully in memory.

    ``x`` is float32 ``[N, 3, 32, 32]`` in ``[0, 1]`` (grayscale sources are replicated to 3 channels),
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
