"""Readers of the standard datasets' file formats, none of which unpickles anything.

Every reader returns images as uint8 ``[N, H, W, C]`` (C = 1 or 3, rows top to bottom) and labels as the
release stores them (the dataset modules map them to 0..K-1):

- **IDX** (MNIST): big-endian header ``0, 0, dtype code, ndim``, then ``ndim`` uint32 sizes, then the data
  in C order; gzip-compressed in the release.
- **LIBSVM** (USPS, bz2): one sample a line, ``label index:value ...`` with 1-based feature indices; a
  feature left out is 0 (the format's rule). USPS: 256 features = a 16x16 image row by row, values in
  [-1, 1] (mapped to ``round((v + 1) / 2 * 255)``), labels 1..10.
- **MATLAB v5 .mat** (SVHN, SynDigits) through ``scipy.io.loadmat``: ``X`` uint8 ``[32, 32, 3, N]`` (H, W,
  C, N) and ``y`` ``[N, 1]`` with 10 for the digit 0. v7.3 files (HDF5) are refused.
- **CIFAR-10 binary**: records of 1 label byte + 3072 bytes (1024 red, 1024 green, 1024 blue, each 32x32
  row by row).
- **STL-10 binary**: ``*_X.bin`` holds per image 3 channels of 96x96 stored column by column (so a
  channel read in C order is transposed), ``*_y.bin`` one byte per image, labels 1..10.
- **.npz** (the accepted form of array releases): ``x_train``/``y_train``/``x_test``/``y_test``, or ``x``/``y``;
  read with ``allow_pickle=False``, so an object array is refused.
"""

from __future__ import annotations

import bz2
import gzip
import io
from pathlib import Path

import numpy as np

from ...errors import DataUnavailableError, DomainlockError

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CIFAR_RECORD = 1 + 3 * 32 * 32
STL_SIDE = 96


def read_idx(blob: bytes, what: str) -> np.ndarray:
    """An IDX array from its bytes (``what`` names the file in errors)."""
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in IDX_DTYPES:
        raise DomainlockError(f"{what} is not an IDX file (bad magic {blob[:4].hex()})")
    ndim = blob[3]
    head = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(blob[4:head], dtype=">u4")) if ndim else ()
    dtype = np.dtype(IDX_DTYPES[blob[2]])
    n = int(np.prod(dims)) if dims else 0
    if len(blob) != head + n * dtype.itemsize:
        raise DomainlockError(f"{what}: IDX header says {dims} but the file holds {len(blob) - head} data bytes")
    return np.frombuffer(blob, dtype=dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_gz(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            blob = fh.read()
    except (OSError, EOFError) as e:
        raise DomainlockError(f"{path.name} is not a readable gzip file ({e})") from None
    return read_idx(blob, path.name)


def read_libsvm_bz2(path: Path, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32 [N, n_features], labels int64 [N])`` of a bz2-compressed LIBSVM file."""
    rows: list[np.ndarray] = []
    labels: list[int] = []
    try:
        with bz2.open(path, "rt", encoding="ascii") as fh:
            for no, line in enumerate(fh, 1):
                tokens = line.split("#", 1)[0].split()
                if not tokens:
                    continue
                row = np.zeros(n_features, dtype=np.float32)
                try:
                    labels.append(int(float(tokens[0])))
                    for tok in tokens[1:]:
                        i, v = tok.split(":")
                        k = int(i)
                        if not 1 <= k <= n_features:
                            raise ValueError(f"feature index {k} outside 1..{n_features}")
                        row[k - 1] = float(v)
                except ValueError as e:
                    raise DomainlockError(f"{path.name} line {no} is not LIBSVM 'label index:value ...' ({e})"
                                          ) from None
                rows.append(row)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DomainlockError(f"{path.name} is not a readable bz2 text file ({e})") from None
    if not rows:
        raise DomainlockError(f"{path.name} holds no samples")
    return np.stack(rows), np.asarray(labels, dtype=np.int64)


def usps_images(x: np.ndarray) -> np.ndarray:
    """USPS features in [-1, 1] (256 a row) -> uint8 ``[N, 16, 16, 1]``."""
    if x.shape[1] != 256:
        raise DomainlockError(f"USPS rows have {x.shape[1]} features, expected 256 (16x16)")
    if np.abs(x).max() > 1.0 + 1e-6:
        raise DomainlockError(f"USPS values must lie in [-1, 1], found {float(np.abs(x).max()):.3g}")
    return np.clip(np.rint((x + 1.0) / 2.0 * 255.0), 0, 255).astype(np.uint8).reshape(-1, 16, 16, 1)


def digits_10_to_0(y: np.ndarray, what: str) -> np.ndarray:
    """SVHN-style labels (1..9 and 10 for the digit 0) -> 0..9; labels already in 0..9 pass."""
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() > 10 or (0 in y and 10 in y)):
        raise DomainlockError(f"{what}: digit labels must be 1..10 (10 = digit 0) or 0..9, found "
                              f"{sorted(set(y.tolist()))[:12]}")
    return np.where(y == 10, 0, y)


def read_digit_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x uint8 [N, 32, 32, 3], y int64 in 0..9)`` of an SVHN-layout ``.mat`` (``X`` [H, W, C, N], ``y``)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataUnavailableError(f"reading {path.name} (.mat) needs scipy: pip install scipy "
                                   "(or pip install 'domainlock[data]')") from None
    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except NotImplementedError:
        raise DomainlockError(f"{path.name} is a MATLAB v7.3 (HDF5) file; expected the v5 .mat of the release"
                              ) from None
    except (ValueError, OSError, TypeError) as e:
        raise DomainlockError(f"{path.name} is not a readable MATLAB v5 .mat file ({e})") from None
    if "X" not in mat or "y" not in mat:
        raise DomainlockError(f"{path.name} lacks the variables X and y (has: {', '.join(sorted(mat)) or 'none'})")
    x, y = mat["X"], digits_10_to_0(mat["y"], path.name)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise DomainlockError(f"{path.name}: X is {x.dtype} {x.shape}, expected uint8 [32, 32, 3, N]")
    if x.shape[:3] == (32, 32, 3):
        x = np.moveaxis(x, 3, 0)
    elif x.shape[1:] != (32, 32, 3):
        raise DomainlockError(f"{path.name}: X has shape {x.shape}, expected [32, 32, 3, N]")
    if len(x) != len(y):
        raise DomainlockError(f"{path.name}: {len(x)} images but {len(y)} labels")
    return x, y   # a view: the splits copy only the rows they take


def read_cifar_batch(blob: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x uint8 [N, 32, 32, 3], y int64 in 0..9)`` of one CIFAR-10 binary batch."""
    if not blob or len(blob) % CIFAR_RECORD:
        raise DomainlockError(f"{what}: {len(blob)} bytes is not a whole number of {CIFAR_RECORD}-byte records")
    rec = np.frombuffer(blob, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    y = rec[:, 0].astype(np.int64)
    if y.max() > 9:
        raise DomainlockError(f"{what}: label byte {int(y.max())} outside 0..9")
    x = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y


def read_stl_images(blob: bytes, what: str) -> np.ndarray:
    """uint8 ``[N, 96, 96, 3]`` of an STL-10 ``*_X.bin`` (column-major channels)."""
    per = 3 * STL_SIDE * STL_SIDE
    if not blob or len(blob) % per:
        raise DomainlockError(f"{what}: {len(blob)} bytes is not a whole number of 3x96x96 images")
    x = np.frombuffer(blob, dtype=np.uint8).reshape(-1, 3, STL_SIDE, STL_SIDE)   # [n, c, column, row]
    return np.ascontiguousarray(x.transpose(0, 3, 2, 1))                      # [n, row, column, c]


def read_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (x, y), "test": (x, y)}`` (or ``{"all": ...}`` for ``x``/``y``) of an .npz, images as uint8
    ``[N, H, W, C]`` (``[N, C, H, W]`` with C = 1 or 3 is transposed; ``[N, H, W]`` gets C = 1)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise DomainlockError(f"{path.name} holds pickled objects, which domainlock never loads ({e}); save plain "
                              "uint8/integer arrays") from None
    except (OSError, EOFError) as e:
        raise DomainlockError(f"{path.name} is not a readable .npz file ({e})") from None
    keys = set(arrays)
    if {"x_train", "y_train", "x_test", "y_test"} <= keys:
        pairs = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
    elif {"x", "y"} <= keys:
        pairs = {"all": ("x", "y")}
    else:
        raise DomainlockError(f"{path.name} has arrays {', '.join(sorted(keys)) or 'none'}; expected x_train, "
                              "y_train, x_test, y_test (or x, y)")
    out = {}
    for split, (kx, ky) in pairs.items():
        x, y = _npz_images(arrays[kx], f"{path.name}:{kx}"), np.asarray(arrays[ky])
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != len(x):
            raise DomainlockError(f"{path.name}:{ky} must be integer labels [N] matching {kx} ({len(x)} images), "
                                  f"got {y.dtype} {y.shape}")
        out[split] = (x, y.astype(np.int64))
    return out


def _npz_images(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DomainlockError(f"{what} must be uint8 images (0..255), got {x.dtype}")
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        return x
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    raise DomainlockError(f"{what} has shape {x.shape}; expected [N, H, W, C] or [N, C, H, W] with C = 1 or 3")


def decode_png(blob: bytes, what: str) -> np.ndarray:
    """uint8 ``[H, W, 3]`` of an image file's bytes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DomainlockError(f"cannot read image {what}: {e}") from None
