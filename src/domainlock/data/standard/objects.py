"""The standard object pair ``cifar10`` and ``stl10`` on their 9 shared classes.

CIFAR-10 has "frog" and STL-10 has "monkey" where the other has nothing; both are dropped. The shared
class order is CIFAR-10's without frog, and STL-10's "car" is CIFAR-10's "automobile":

    0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 horse, 7 ship, 8 truck

CIFAR-10 comes from its *binary* release (``cifar-10-binary.tar.gz``; the "python version" is pickles and
is refused), STL-10 from ``stl10_binary.tar.gz`` (its 100,000 unlabelled images are skipped). Both archives
are read as a stream, never unpacked to disk. Images: CIFAR-10 32 px as is; STL-10 96 px resized to 32
(``default``) or 64 (``ntlbench``; CIFAR-10 resized alike). This is the pair NTLBench reports with VGG-13 at
64 px; NTLBench itself keeps 10 classes by putting STL-10's monkey on CIFAR-10's frog label.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import numpy as np

from ...errors import DomainlockError
from ..common import BuildContext, BuildResult
from .base import Standard, assemble, fetch_files, remap
from .fetch import RawFile, iter_bundle, refuse_pickle, safe_parts
from .parsers import read_cifar_batch, read_stl_images

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "horse", "ship", "truck"]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
CIFAR_TO_9 = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 7: 6, 8: 7, 9: 8}            # 6 frog dropped
STL_TO_9 = {1: 0, 2: 2, 3: 1, 4: 3, 5: 4, 6: 5, 7: 6, 9: 7, 10: 8}            # labels 1..10; 8 monkey dropped
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
STL_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")

CIFAR_FILE = RawFile("cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                     sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", size=170052171,
                     pin_source="TensorFlow Datasets url_checksums/cifar10.txt (the CIFAR page publishes md5 "
                                "c32a1d4ab5d03f1284b67883e8d87530)")
STL_FILE = RawFile("stl10_binary.tar.gz", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                   sha256="f31fd99273a1acb8609c8db427cebb1de3f71de77758cdc0e22956e1289b9866", size=2640397119,
                   pin_source="TensorFlow Datasets url_checksums/stl10.txt")


def _members(path: Path, wanted: set[str], optional: set[str], convert: str, pickle_dir: str | None = None
             ) -> dict[str, bytes]:
    """The members of a release archive whose base names are ``wanted`` (all must be there) or ``optional``,
    read in one streaming pass; a member under ``pickle_dir`` (the pickled release) is refused."""
    out: dict[str, bytes] = {}
    try:
        for name, fh in iter_bundle(path):
            parts = safe_parts(name) or ("",)
            if pickle_dir and pickle_dir in parts:
                refuse_pickle(path, convert, member=name)
            if parts[-1] in wanted or parts[-1] in optional:
                out[parts[-1]] = fh.read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise DomainlockError(f"{path.name} is not a readable .tar.gz archive ({e})") from None
    missing = sorted(wanted - set(out))
    if missing:
        raise DomainlockError(f"{path.name} lacks {', '.join(missing)}; is it the right release?")
    return out


def _check_names(text: bytes | None, expected: list[str], what: str) -> None:
    if text is None:
        return
    names = [ln.strip() for ln in text.decode("ascii", "replace").splitlines() if ln.strip()]
    if names[:len(expected)] != expected:
        raise DomainlockError(f"{what} lists classes {names[:10]}, expected {expected}")


def build_cifar(ctx: BuildContext) -> BuildResult:
    with fetch_files(CIFAR10, ctx) as got:
        blobs = _members(got[CIFAR_FILE.name].path, set(CIFAR_TRAIN) | {CIFAR_TEST}, {"batches.meta.txt"},
                         CIFAR10.convert, pickle_dir="cifar-10-batches-py")
    _check_names(blobs.get("batches.meta.txt"), CIFAR_CLASSES, "batches.meta.txt")
    train = [read_cifar_batch(blobs[n], n) for n in CIFAR_TRAIN]
    parts = {"train": remap(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), CIFAR_TO_9),
             "test": remap(*read_cifar_batch(blobs[CIFAR_TEST], CIFAR_TEST), CIFAR_TO_9)}
    return assemble(CIFAR10, ctx, parts, got, CLASSES,
                    notes={"class_map": "CIFAR-10 label -> shared: " + _describe(CIFAR_TO_9, CIFAR_CLASSES, 0),
                           "preprocess": "records -> 32x32 RGB; ntlbench: resized to 64x64"})


def build_stl(ctx: BuildContext) -> BuildResult:
    with fetch_files(STL10, ctx) as got:
        blobs = _members(got[STL_FILE.name].path, set(STL_FILES), {"class_names.txt"}, STL10.convert)
    _check_names(blobs.get("class_names.txt"), STL_CLASSES, "class_names.txt")
    parts = {}
    for split in ("train", "test"):
        x = read_stl_images(blobs[f"{split}_X.bin"], f"{split}_X.bin")
        y = np.frombuffer(blobs[f"{split}_y.bin"], dtype=np.uint8).astype(np.int64)
        if len(y) != len(x) or (len(y) and (y.min() < 1 or y.max() > 10)):
            raise DomainlockError(f"{split}_y.bin: {len(y)} labels in 1..10 expected for {len(x)} images, found "
                                  f"{len(y)} in {int(y.min(initial=0))}..{int(y.max(initial=0))}")
        parts[split] = remap(x, y, STL_TO_9)
    return assemble(STL10, ctx, parts, got, CLASSES,
                    notes={"class_map": "STL-10 label -> shared: " + _describe(STL_TO_9, STL_CLASSES, 1),
                           "preprocess": "column-major 3x96x96 -> RGB; resized to 32x32 (default) or 64x64 "
                                         "(ntlbench)"})


def _describe(table: dict[int, int], names: list[str], first: int) -> str:
    kept = ", ".join(f"{k} {names[k - first]} -> {v}" for k, v in sorted(table.items()))
    dropped = [f"{k} {n}" for k, n in enumerate(names, first) if k not in table]
    return f"{kept}; dropped: {', '.join(dropped)}"


CIFAR10 = Standard(
    "cifar10", "CIFAR-10 on the 9 classes it shares with STL-10 (binary release; frog dropped)", "download",
    (CIFAR_FILE,), "no licence stated (CIFAR page; cite Krizhevsky 2009)", "https://www.cs.toronto.edu/~kriz/cifar.html",
    build_cifar,
    convert="use the binary release instead: cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html")
STL10 = Standard(
    "stl10", "STL-10 on the 9 classes it shares with CIFAR-10 (binary release; monkey dropped; labelled images only)",
    "download", (STL_FILE,), "no licence stated (STL-10 page; images from ImageNet; cite Coates et al. 2011)",
    "https://cs.stanford.edu/~acoates/stl10/", build_stl,
    convert="use the binary release instead: stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/")

DATASETS = (CIFAR10, STL10)
