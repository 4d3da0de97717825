"""``fashion``: Fashion-MNIST (Zalando; 10 clothing classes, a different task from digits) from
Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``), which puts the
idx files under ``/usr/share/datasets/fashion-mnist``. ``$DOMAINLOCK_FASHION_DIR`` may point to
another folder holding the four idx files (gzipped or not).

To match the other offline domains, it is subsampled class-balanced to MNIST-sized splits: train
7000 and val 1000 from the official training set, test 2000 from the official test set
(fixed split seed). 28x28 is zero-padded to 32x32 and replicated to 3 channels.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ...errors import DataUnavailableError, DomainlockError
from ..common import SPLIT_SEED, BuildContext, BuildResult, pad_to, stratified_take, to_uint8_rgb

NAME = "fashion"
VERSION = 1
SEEDED = False  # does the build depend on the seed?
DESCRIPTION = "Fashion-MNIST clothing (a different task), from Debian's dataset-fashion-mnist"
HINT = "fashion needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist"
DEB_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
PER_CLASS = {"train": 700, "val": 100, "test": 200}


def _dirs() -> list[Path]:
    env = os.environ.get("DOMAINLOCK_FASHION_DIR")
    return [Path(env)] if env else [DEB_DIR]


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _locate() -> dict[str, Path] | None:
    for d in _dirs():
        found = {k: _find(d, v) for k, v in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def available() -> tuple[bool, str]:
    if _locate() is None:
        return False, HINT
    return True, "Debian package dataset-fashion-mnist"


def _read_idx(path: Path) -> tuple[np.ndarray, str]:
    blob = path.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    data = gzip.decompress(blob) if path.suffix == ".gz" else blob
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DomainlockError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DomainlockError(f"{path}: truncated idx file ({arr.size} values for shape {dims})")
    return arr.reshape(dims), sha


def _deb_version() -> str:
    if shutil.which("dpkg-query") is None:
        return "unknown"
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "dataset-fashion-mnist"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def build(ctx: BuildContext) -> BuildResult:
    files = _locate()
    if files is None:
        raise DataUnavailableError(HINT)
    arrays, raw = {}, {}
    for key, path in files.items():
        arrays[key], raw[str(path)] = _read_idx(path)
    rng = np.random.default_rng(SPLIT_SEED)
    y_tr = arrays["train_y"].astype(np.int64)
    pick = stratified_take(y_tr, PER_CLASS["train"] + PER_CLASS["val"], rng)
    # first PER_CLASS["val"] of each class (in shuffled order) go to val, the rest to train
    seen: dict[int, int] = {}
    is_val = np.zeros(len(pick), dtype=bool)
    for i, c in enumerate(y_tr[pick]):
        seen[int(c)] = seen.get(int(c), 0) + 1
        is_val[i] = seen[int(c)] <= PER_CLASS["val"]
    test_idx = stratified_take(arrays["test_y"], PER_CLASS["test"], rng)
    sel = {"train": ("train", pick[~is_val]), "val": ("train", pick[is_val]), "test": ("test", test_idx)}
    splits = {}
    for split, (src, idx) in sel.items():
        x = arrays[f"{src}_x"][idx].astype(np.float32) / 255.0
        splits[split] = (to_uint8_rgb(pad_to(x)), arrays[f"{src}_y"][idx].astype(np.int64))
    source = {"package": "deb:dataset-fashion-mnist", "version": _deb_version(),
              "how": f"idx files in {files['train_x'].parent}"}
    return BuildResult(splits, list(CLASSES), source, raw,
                       {"preprocess": "28x28 zero-padded to 32x32, gray replicated to RGB",
                        "subsample": "class-balanced: train 700/val 100 per class from the official train "
                                     "set, test 200 per class from the official test set"})
