"""What describes a standard dataset (:class:`Standard`) and the steps every builder shares: getting the raw
files (:func:`fetch_files`) and turning the parsed release into a :class:`~domainlock.data.common.BuildResult`
with its provenance (:func:`assemble`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..common import BuildContext, BuildResult
from .fetch import Obtained, RawFile, obtain
from .protocol import finish

KINDS = ("download", "file", "folder")   # fetched by domainlock / a file the user supplies / a folder the user has


@dataclass(frozen=True)
class Standard:
    """A standard dataset: name, what it is, how its raw files are obtained, its licence note and builder.

    ``hint`` tells how to get the files without the built-in download (one line), ``convert`` what to do with
    a pickled release of it (one line)."""

    name: str
    description: str
    kind: str
    files: tuple[RawFile, ...]
    licence: str
    homepage: str
    build: Callable[[BuildContext], BuildResult]
    hint: str = ""
    convert: str = ("convert it once, in a Python you trust, to an .npz of uint8 images and integer labels "
                    "(np.savez(F, x_train=..., y_train=..., x_test=..., y_test=...)) and pass that with --archive")
    version: int = 1


@contextlib.contextmanager
def fetch_files(ds: Standard, ctx: BuildContext, files: Sequence[RawFile] | None = None
                ) -> Iterator[dict[str, Obtained]]:
    """The raw files of ``ds`` (from ``--archive`` or the downloads folder, downloading what is missing)."""
    with obtain(ds.name, tuple(files if files is not None else ds.files), root=ctx.root, archives=ctx.archives,
                trust_archive=ctx.trust_archive, opener=ctx.opener, progress=ctx.progress, hint=ds.hint,
                convert=ds.convert) as got:
        yield got


def assemble(ds: Standard, ctx: BuildContext, parts: Mapping[str, tuple[np.ndarray, np.ndarray]],
             got: Mapping[str, Obtained], classes: Sequence[str], *, inner: int | None = None,
             notes: Mapping[str, Any] | None = None) -> BuildResult:
    """Split ``parts`` (``{part: (x uint8 [N,H,W,C], y 0..K-1)}``) by ``ctx.protocol`` and record where the files
    came from: each file's sha256, its pinned digest and whether it matched (``verification``)."""
    for part, (_, y) in parts.items():
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise ValueError(f"{ds.name}/{part}: labels outside 0..{len(classes) - 1}")
    splits, how, size = finish(parts, ctx.protocol, inner)
    records = [o.record() for o in got.values()]
    verified = all(o.status == "verified" for o in got.values())
    source = {"dataset": ds.name, "homepage": ds.homepage, "how": "--archive" if ctx.archives else "download",
              "files": records}
    extra: dict[str, Any] = {**how, "verification": "verified" if verified else "unverified",
                             "licence": ds.licence, "release_counts": {k: int(len(y)) for k, (_, y) in parts.items()}}
    extra.update(notes or {})
    return BuildResult(splits, list(classes), source, {o.file.name: o.sha256 for o in got.values()}, extra, size)


def remap(x: np.ndarray, y: np.ndarray, table: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Keep the rows whose label is in ``table`` and relabel them by it (a class map that drops classes)."""
    keep = np.isin(y, list(table))
    lut = np.full(int(max(max(table), y.max(initial=0))) + 1, -1, dtype=np.int64)
    for k, v in table.items():
        lut[k] = v
    return x[keep], lut[y[keep]]
