"""Folder datasets a user downloads by hand (their terms ask for that): VisDA-2017, Office-Home, PACS, DomainNet.

Each sub-domain is a domain of its own, named ``<dataset>:<domain>`` (``officehome:Art``, ``pacs:sketch``,
``domainnet:real``, ``visda:train``), and ``wm:officehome:Art`` watermarks it like any other. It is built
from ``--root DIR`` (the folder the release was unpacked into) or ``--archive FILE`` (the release's
.zip/.tar, read without unpacking the other domains), where ``<domain>/<class>/<image>`` is found at
the top or up to two folders down (``OfficeHomeDataset_10072016/Art``, ``PACS/kfold/art_painting``).
Office-Home's "Real World" folder is ``officehome:Real_World``.

Files are listed and split first (sorted class folders, so every sub-domain of a dataset numbers its
classes alike; the count is checked against the dataset's), and only the images a split keeps are
decoded (resized to 32 or, under ``ntlbench``, 64 px). No digest is pinned for these hand-made
downloads: the manifest records the sha256 of ``--archive`` or of the folder's file listing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DataUnavailableError, DomainlockError
from ..common import BuildContext, BuildResult, progress_bar
from ..folder import IMAGE_EXTS, list_image_folder, read_images
from .base import Standard
from .fetch import RawFile, check, downloads_dir, iter_bundle, safe_parts
from .protocol import describe, image_size, plan

SEARCH_DEPTH = 2


@dataclass(frozen=True)
class FolderSet:
    name: str
    title: str
    domains: dict[str, tuple[str, ...]]   # sub-domain -> folder names it may have in the release
    n_classes: int
    homepage: str
    licence: str


FOLDER_SETS = (
    FolderSet("visda", "VisDA-2017 classification (train: synthetic renderings, validation: real photos)",
              {"train": ("train",), "validation": ("validation",)}, 12, "http://ai.bu.edu/visda-2017/",
              "non-commercial research and educational use only, no redistribution (VisDA terms)"),
    FolderSet("officehome", "Office-Home", {"Art": ("Art",), "Clipart": ("Clipart",), "Product": ("Product",),
                                            "Real_World": ("Real World", "Real_World", "RealWorld")}, 65,
              "https://www.hemanthdv.org/officeHomeDataset.html",
              "non-commercial research and educational use (see the Office-Home page)"),
    FolderSet("pacs", "PACS", {d: (d,) for d in ("art_painting", "cartoon", "photo", "sketch")}, 7,
              "https://domaingeneralization.github.io/#data", "research use; no licence stated (see the PACS page)"),
    FolderSet("domainnet", "DomainNet", {d: (d,) for d in ("clipart", "infograph", "painting", "quickdraw", "real",
                                                           "sketch")}, 345, "https://ai.bu.edu/M3SDA/",
              "non-commercial research and educational use (DomainNet fair-use notice)"),
)


def _hint(fs: FolderSet, sub: str) -> str:
    folder = fs.domains[sub][0]
    return (f"{fs.name}:{sub} is built from a copy you download yourself ({fs.homepage}; {fs.licence}): run "
            f"`domainlock data build {fs.name}:{sub} --root DIR` with DIR holding {folder}/<class>/<image>, or "
            f"--archive FILE (the release's .zip/.tar)")


def locate(root: Path, folders: tuple[str, ...]) -> Path:
    """The folder named one of ``folders`` at ``root`` or up to :data:`SEARCH_DEPTH` levels below it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DomainlockError(f"--root {str(root)!r} does not exist or is not a folder")
    level = [root]
    for _ in range(SEARCH_DEPTH + 1):
        for d in level:
            for name in folders:
                if (d / name).is_dir():
                    return d / name
        level = sorted(c for d in level for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    raise DomainlockError(f"no folder named {' or '.join(map(repr, folders))} in {str(root)!r} (searched "
                          f"{SEARCH_DEPTH} levels down); expected <root>/{folders[0]}/<class>/<image>")


@contextlib.contextmanager
def _extracted(archive: Path, folders: tuple[str, ...], tmp: Path) -> Iterator[Path]:
    """Unpack only ``<prefix>/<folder>/<class>/.../<image>`` members of ``archive`` into ``tmp/<folder>``."""
    prefix: tuple[str, ...] | None = None
    n = 0
    try:
        for name, fh in iter_bundle(archive):
            parts = safe_parts(name)
            if not parts or not parts[-1].lower().endswith(IMAGE_EXTS) or parts[-1].startswith("."):
                continue
            at = next((i for i, p in enumerate(parts) if p in folders and len(parts) - i >= 3), None)
            if at is None or (prefix is not None and parts[:at] != prefix):
                continue
            prefix = parts[:at]
            dest = tmp.joinpath(folders[0], *parts[at + 1:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(fh.read())
            n += 1
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise DomainlockError(f"{archive.name} is not a readable .zip/.tar archive ({e})") from None
    if not n:
        raise DomainlockError(f"{archive.name} holds no images under a folder named "
                              f"{' or '.join(map(repr, folders))} (<folder>/<class>/<image>)")
    yield tmp / folders[0]


def _listing_sha256(folder: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(folder).as_posix()}\t{f.stat().st_size}\n".encode())
    return h.hexdigest()


def build_folder(fs: FolderSet, sub: str, ctx: BuildContext) -> BuildResult:
    name = f"{fs.name}:{sub}"
    if len(ctx.archives) > 1:
        raise DomainlockError(f"{name}: pass one --archive (the release's .zip/.tar) or --root DIR")
    with contextlib.ExitStack() as stack:
        if ctx.archives:
            archive = Path(ctx.archives[0]).expanduser()
            if not archive.is_file():
                raise DomainlockError(f"--archive {str(archive)!r} is not a file")
            digest, _ = check(RawFile(archive.name), archive)
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix=".extract-", dir=_mkdir(downloads_dir(ctx.root, fs.name)))))
            folder = stack.enter_context(_extracted(archive, fs.domains[sub], tmp))
            origin = {"how": "--archive", "archive": str(archive), "archive_sha256": digest}
        elif ctx.source_root is not None:
            folder = locate(Path(ctx.source_root), fs.domains[sub])
            origin = {"how": "--root", "folder": str(folder)}
        else:
            raise DataUnavailableError(_hint(fs, sub))
        classes, files, labels = list_image_folder(folder)
        if len(classes) != fs.n_classes:
            raise DomainlockError(f"{name}: found {len(classes)} class folders in {str(folder)!r}, {fs.title} has "
                                  f"{fs.n_classes}; point --root at the unpacked release")
        origin["listing_sha256"] = _listing_sha256(folder, files)
        size = image_size(ctx.protocol)
        splits = {}
        for s, idx in plan({"all": labels}, ctx.protocol).items():
            chosen = [files[i] for i in idx]
            bar = functools.partial(progress_bar, enabled=ctx.progress, desc=f"{name} {s}", unit="img")
            x = read_images(chosen, size, progress=bar)
            splits[s] = (np.ascontiguousarray(x.transpose(0, 3, 1, 2)), labels[idx])
    source = {"dataset": fs.name, "domain": sub, "homepage": fs.homepage, **origin}
    extra = {**describe(ctx.protocol, {"all": labels}), "verification": "unverified",
             "verification_note": "no digest is published for this hand-downloaded release",
             "licence": fs.licence, "release_counts": {"all": int(len(labels))},
             "preprocess": f"RGB, resized to {size}x{size} (bilinear, antialiased)"}
    return BuildResult(splits, classes, source, {}, extra, size)


def _mkdir(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


def _standard(fs: FolderSet, sub: str) -> Standard:
    return Standard(f"{fs.name}:{sub}", f"{fs.title}: the {sub} domain ({fs.n_classes} classes; a folder you "
                                        f"download)", "folder", (), fs.licence, fs.homepage,
                    functools.partial(build_folder, fs, sub), hint=_hint(fs, sub))


DATASETS = tuple(_standard(fs, sub) for fs in FOLDER_SETS for sub in fs.domains)
