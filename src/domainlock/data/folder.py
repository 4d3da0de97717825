"""A user's own image folder as a domain: ``<path>/<class>/<image>``.

:func:`list_image_folder` finds the classes and image files without decoding anything and
:func:`read_images` decodes a chosen list of files, so a large folder dataset (DomainNet, VisDA) can be
split on file names first and only the images it keeps are read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DomainlockError
from .types import DomainData

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def list_image_folder(path: str | os.PathLike, classes: Sequence[str] | None = None
                      ) -> tuple[list[str], list[Path], np.ndarray]:
    """``(classes, files, labels)`` of ``<path>/<class>/<image>`` (nothing decoded).

    Class folders are sorted by name (or taken in the order of ``classes``, which must all exist); files with
    an image extension are found recursively, hidden ones skipped, sorted within each class. Fewer than 2
    classes or a class folder without images is a one-line :class:`DomainlockError`.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DomainlockError(f"image folder {str(root)!r} does not exist or is not a folder")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
    else:
        classes = list(classes)
        missing = [c for c in classes if c not in found]
        if missing:
            raise DomainlockError(f"class folder(s) {', '.join(map(repr, missing))} not found in "
                                  f"{str(root)!r}; "
                                  f"found: {', '.join(found) or 'none'}")
    if not classes:
        raise DomainlockError(f"image folder {str(root)!r} has no class sub-folders (<path>/<class>/<image>)")
    if len(classes) < 2:
        raise DomainlockError(f"image folder {str(root)!r} has 1 class ({classes[0]!r}); a domain needs at least 2 "
                              "(one sub-folder of images per class: <path>/<class>/<image>)")
    files: list[Path] = []
    labels: list[int] = []
    for ci, cls in enumerate(classes):
        mine = sorted(p for p in (root / cls).rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
        files += mine
        labels += [ci] * len(mine)
    if not files:
        raise DomainlockError(f"image folder {str(root)!r} holds no images ({', '.join(IMAGE_EXTS)})")
    empty = [c for ci, c in enumerate(classes) if ci not in set(labels)]
    if empty:
        raise DomainlockError(f"class folder(s) {', '.join(map(repr, empty))} of image folder {str(root)!r} hold no "
                              f"images ({', '.join(IMAGE_EXTS)}); add images or remove the folder(s)")
    return list(classes), files, np.asarray(labels, dtype=np.int64)


def read_images(files: Sequence[str | os.PathLike], size: int = 32, progress=None) -> np.ndarray:
    """Decode ``files`` with pillow as RGB, resized to ``size x size`` (bilinear, antialiased):
    uint8 ``[N, size, size, 3]``. A file that cannot be decoded is a :class:`DomainlockError` naming it.
    ``progress``, if given, wraps the file list (a progress bar)."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(progress(files) if progress is not None else files):
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR, reducing_gap=None)
                out[i] = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise DomainlockError(f"cannot read image {str(f)!r}: {e}") from None
    return out


def load_image_folder(path: str | os.PathLike, *, size: int = 32, classes: Sequence[str] | None = None
                      ) -> DomainData:
    """Load ``<path>/<class>/<image>`` (ImageFolder layout) as one :class:`DomainData` with split ``"all"``.

    Class folders are sorted by name (or taken in the order of ``classes``, which must all exist);
    files with an image extension are read with pillow, converted to RGB and resized to
    ``size x size`` (bilinear, antialiased); hidden files and other extensions are ignored. A file that
    cannot be decoded raises :class:`DomainlockError` naming it, and so do fewer than 2 classes or a class
    folder without images.
    """
    root = Path(path).expanduser()
    classes, files, labels = list_image_folder(root, classes)
    x8 = read_images(files, size)
    x = torch.from_numpy(x8).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    y = torch.from_numpy(labels)
    return DomainData(root.name or str(root), "all", x, y, len(classes), list(classes))
