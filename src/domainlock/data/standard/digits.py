"""The standard digit datasets: ``mnist-full``, ``usps``, ``svhn``, ``syndigits``, ``mnistm-full``.

Labels end up as the digit (0..9) for all five. Under the ``default`` protocol MNIST's 28 px images are
zero-padded to 32 (the offline ``mnist`` domain's framing) and USPS's 16 px digits, which fill their box,
are resized to 28 and padded alike; SVHN and SynDigits are 32 px already; MNIST-M's 28 px colour images
are resized to 32 (zero-padding would frame the photo in black). Under ``ntlbench`` every image is resized
to 64. Where the digests come from: docs/data.md.

MNIST-M has no release in an image or array format that can be downloaded without a browser: its
original ``mnist_m.tar.gz`` (PNG folders with label lists) is on the authors' Google Drive, and the copies
that are direct downloads are pickles (``mnist_m_*.pt``), which are refused. So ``mnistm-full`` is built
from ``--archive``: that tarball, or ``.npz`` files converted from the ``.pt`` copies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataUnavailableError, DomainlockError
from ..common import DIGIT_CLASSES, BuildContext, BuildResult
from .base import Standard, assemble, fetch_files
from .fetch import Obtained, RawFile, check, iter_bundle, refuse_pickle, safe_parts
from .parsers import (
    decode_png,
    digits_10_to_0,
    read_digit_mat,
    read_idx_gz,
    read_libsvm_bz2,
    read_npz,
    usps_images,
)

TFDS = "TensorFlow Datasets url_checksums/{}.txt"
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_FILES = tuple(RawFile(n, MNIST_URL + n, sha256=s, size=b, pin_source=TFDS.format("mnist")) for n, s, b in (
    ("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
    ("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
    ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
    ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
))
USPS_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"
USPS_FILES = tuple(RawFile(n, USPS_URL + n, md5=m, pin_source="md5 of torchvision.datasets.USPS") for n, m in (
    ("usps.bz2", "ec16c51db3855ca6c91edd34d0e9b197"),
    ("usps.t.bz2", "8ea070ee2aca1ac39742fdd1ef5ed118"),
))
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES = tuple(RawFile(n, SVHN_URL + n, sha256=s, size=b, pin_source=TFDS.format("svhn_cropped")) for n, s, b in (
    ("train_32x32.mat", "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8", 182040794),
    ("test_32x32.mat", "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b", 64275384),
))
SYN_COMMIT = "91ff02225a73db330883843bc41ee3aca59a19d9"
SYN_URL = f"https://media.githubusercontent.com/media/domainadaptation/datasets/{SYN_COMMIT}/synth/"
SYN_PIN = "Git LFS pointer of synth/{} in github.com/domainadaptation/datasets@" + SYN_COMMIT[:7]
SYN_FILES = tuple(RawFile(n, SYN_URL + n, sha256=s, size=b, pin_source=SYN_PIN.format(n)) for n, s, b in (
    ("synth_train_32x32.mat", "e0e0924ecd0c0b5a55ed6485aaa7d39937af982397717b89a3d91777aca9433c", 895578032),
    ("synth_test_32x32.mat", "6285fe9a1c6f27b379a47263907a37899b59ce86948fd343a5b904435cde5bcc", 17851156),
))
MNISTM_FILES = (RawFile("mnist_m.tar.gz"),)
MNISTM_LABELS = {"train": "mnist_m_train_labels.txt", "test": "mnist_m_test_labels.txt"}
MNISTM_DIRS = {"mnist_m_train": "train", "mnist_m_test": "test"}
MNISTM_LABEL_FILES = {v: k for k, v in MNISTM_LABELS.items()}
NPZ_CONVERT = ("convert each once, in a Python you trust: x, y = torch.load('mnist_m_train.pt', weights_only=True); "
               "numpy.savez('mnist_m_train.npz', x=x.numpy(), y=y.numpy()) (and the test file alike), then pass "
               "--archive mnist_m_train.npz --archive mnist_m_test.npz")


def _digits(y: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.int64)
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DomainlockError(f"{what}: labels outside 0..9 ({int(y.min())}..{int(y.max())})")
    return y


def build_mnist(ctx: BuildContext) -> BuildResult:
    parts = {}
    with fetch_files(MNIST_FULL, ctx) as got:
        for split, prefix in (("train", "train"), ("test", "t10k")):
            x = read_idx_gz(got[f"{prefix}-images-idx3-ubyte.gz"].path)
            y = read_idx_gz(got[f"{prefix}-labels-idx1-ubyte.gz"].path)
            if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8 or y.shape != (len(x),):
                raise DomainlockError(f"MNIST {split}: images {x.dtype} {x.shape} and labels {y.shape} are not "
                                      "uint8 [N, 28, 28] and [N]")
            parts[split] = (x[..., None], _digits(y, f"{prefix}-labels-idx1-ubyte.gz"))
    return assemble(MNIST_FULL, ctx, parts, got, DIGIT_CLASSES, inner=28,
                    notes={"preprocess": "default: 28x28 zero-padded to 32x32; ntlbench: resized to 64x64"})


def build_usps(ctx: BuildContext) -> BuildResult:
    parts = {}
    with fetch_files(USPS, ctx) as got:
        for split, name in (("train", "usps.bz2"), ("test", "usps.t.bz2")):
            x, labels = read_libsvm_bz2(got[name].path, 256)
            if labels.min() < 1 or labels.max() > 10:
                raise DomainlockError(f"{name}: USPS labels must be 1..10, found "
                                      f"{int(labels.min())}..{int(labels.max())}")
            parts[split] = (usps_images(x), labels - 1)
    return assemble(USPS, ctx, parts, got, DIGIT_CLASSES, inner=28,
                    notes={"preprocess": "[-1,1] -> round((v+1)/2*255); default: 16x16 resized to 28x28 and "
                                         "zero-padded to 32x32; ntlbench: resized to 64x64; labels 1..10 -> 0..9"})


def _mat_parts(got: dict[str, Obtained], train: str, test: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": read_digit_mat(got[train].path), "test": read_digit_mat(got[test].path)}


def build_svhn(ctx: BuildContext) -> BuildResult:
    with fetch_files(SVHN, ctx) as got:
        parts = _mat_parts(got, "train_32x32.mat", "test_32x32.mat")
    return assemble(SVHN, ctx, parts, got, DIGIT_CLASSES,
                    notes={"preprocess": "X [32,32,3,N] -> images; label 10 -> 0; ntlbench: resized to 64x64"})


def _npz_archives(ds: Standard, ctx: BuildContext) -> tuple[dict, dict[str, Obtained]]:
    """The parts of ``.npz`` archives (unverified: converted files have no published digest)."""
    parts: dict[str, list] = {}
    got = {}
    for a in (Path(p).expanduser() for p in ctx.archives):
        if not a.is_file():
            raise DomainlockError(f"--archive {str(a)!r} is not a file")
        refuse_pickle(a, ds.convert)
        if a.suffix.lower() != ".npz":
            raise DomainlockError(f"--archive {a.name}: pass either .npz files or the release's files, not both")
        found = read_npz(a)
        if "all" in found:
            split = "test" if "test" in a.stem.lower() else "train" if "train" in a.stem.lower() else None
            if split is None:
                raise DomainlockError(f"{a.name} holds x, y: name it *train*.npz or *test*.npz, or store x_train, "
                                      "y_train, x_test, y_test")
            found = {split: found["all"]}
        for split, pair in found.items():
            parts.setdefault(split, []).append(pair)
        digest, _ = check(RawFile(a.name), a)
        got[a.name] = Obtained(RawFile(a.name), a, digest, "unverified", str(a))
    if set(parts) != {"train", "test"}:
        raise DomainlockError(f"the .npz archives hold {', '.join(sorted(parts))} images; {ds.name} needs train "
                              "and test")
    joined = {}
    for split in ("train", "test"):
        xs = [x for x, _ in parts[split]]
        if len({x.shape[1:] for x in xs}) > 1:
            raise DomainlockError(f"{ds.name} {split}: the .npz images differ in shape")
        joined[split] = (np.concatenate(xs), digits_10_to_0(np.concatenate([y for _, y in parts[split]]), split))
    return joined, got


def _wants_npz(ctx: BuildContext) -> bool:
    return any(str(a).lower().endswith(".npz") for a in ctx.archives)


def build_syndigits(ctx: BuildContext) -> BuildResult:
    if _wants_npz(ctx):
        parts, got = _npz_archives(SYNDIGITS, ctx)
    else:
        with fetch_files(SYNDIGITS, ctx) as got:
            parts = _mat_parts(got, "synth_train_32x32.mat", "synth_test_32x32.mat")
    return assemble(SYNDIGITS, ctx, parts, got, DIGIT_CLASSES,
                    notes={"preprocess": "X [32,32,3,N] -> images; label 10 -> 0; ntlbench: resized to 64x64"})


def _read_mnistm_tar(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    labels: dict[str, list[tuple[str, int]]] = {}
    images: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
    for name, fh in iter_bundle(path):
        parts = safe_parts(name) or ("",)
        if parts[-1].lower().endswith((".pt", ".pth", ".pkl", ".pickle")):
            refuse_pickle(path, NPZ_CONVERT, member=name)
        split = MNISTM_LABEL_FILES.get(parts[-1])
        if split is not None:
            rows = [ln.split() for ln in fh.read().decode("ascii", "replace").splitlines() if ln.strip()]
            try:
                labels[split] = [(r[0], int(r[1])) for r in rows]
            except (IndexError, ValueError):
                raise DomainlockError(f"{name}: expected lines '<file>.png <digit>'") from None
        elif len(parts) >= 2 and parts[-2] in MNISTM_DIRS and parts[-1].lower().endswith(".png"):
            images[MNISTM_DIRS[parts[-2]]][parts[-1]] = decode_png(fh.read(), name)
    out = {}
    for split in ("train", "test"):
        if split not in labels:
            raise DomainlockError(f"{path.name} holds no {MNISTM_LABELS[split]}; expected Ganin's mnist_m.tar.gz "
                                  "(mnist_m/mnist_m_train/*.png, mnist_m/mnist_m_train_labels.txt, ... test)")
        missing = [f for f, _ in labels[split] if f not in images[split]]
        if missing:
            raise DomainlockError(f"{path.name}: {len(missing)} images named in {MNISTM_LABELS[split]} are missing "
                                  f"(first: {missing[0]})")
        x = np.stack([images[split][f] for f, _ in labels[split]])
        out[split] = (x, _digits(np.array([d for _, d in labels[split]]), MNISTM_LABELS[split]))
    return out


def build_mnistm(ctx: BuildContext) -> BuildResult:
    if not ctx.archives:
        raise DataUnavailableError(MNISTM_FULL.hint)
    if _wants_npz(ctx):
        parts, got = _npz_archives(MNISTM_FULL, ctx)
    else:
        with fetch_files(MNISTM_FULL, ctx) as got:
            parts = _read_mnistm_tar(next(iter(got.values())).path)
    return assemble(MNISTM_FULL, ctx, parts, got, DIGIT_CLASSES,
                    notes={"preprocess": "default: 28x28 RGB resized to 32x32; ntlbench: resized to 64x64"})


MNIST_FULL = Standard(
    "mnist-full", "MNIST, the full official release (60k train + 10k test, IDX files)", "download", MNIST_FILES,
    "CC BY-SA 3.0 (Yann LeCun and Corinna Cortes)", "http://yann.lecun.com/exdb/mnist/", build_mnist,
    hint="mnist-full: fetch the four *-ubyte.gz files of MNIST and pass them with --archive")
USPS = Standard(
    "usps", "USPS handwritten digits (7,291 train + 2,007 test, 16x16, LIBSVM bz2 files)", "download", USPS_FILES,
    "no licence stated (LIBSVM data page; cite Hull 1994)",
    "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps", build_usps)
SVHN = Standard(
    "svhn", "SVHN cropped digits (73,257 train + 26,032 test, 32x32 .mat files; 'extra' not used)", "download",
    SVHN_FILES, "non-commercial use only (SVHN page)", "http://ufldl.stanford.edu/housenumbers/", build_svhn)
SYNDIGITS = Standard(
    "syndigits", "SynDigits, Ganin & Lempitsky's synthetic digits (train + test, 32x32 .mat files)",
    "download", SYN_FILES, "CC BY 4.0 (per the mirror's README)",
    "https://github.com/domainadaptation/datasets/tree/master/synth", build_syndigits,
    convert="convert it once, in a Python you trust, to .npz files of uint8 images and digit labels "
            "(numpy.savez('syn_train.npz', x=..., y=...), likewise syn_test.npz) and pass those with --archive")
MNISTM_FULL = Standard(
    "mnistm-full", "MNIST-M, Ganin & Lempitsky's original (59,001 train + 9,001 test, 28x28 RGB PNGs)", "file",
    MNISTM_FILES, "no licence stated (MNIST digits, CC BY-SA 3.0, blended with BSDS500 photos)",
    "http://yaroslav.ganin.net/", build_mnistm,
    hint="mnistm-full has no direct download in a format domainlock reads: fetch mnist_m.tar.gz (Ganin's release, "
         "linked from yaroslav.ganin.net) and run `domainlock data build mnistm-full --archive mnist_m.tar.gz`, or "
         "convert the pickled mnist_m_train.pt / mnist_m_test.pt to .npz (see docs/data.md) and pass those",
    convert=NPZ_CONVERT)

DATASETS = (MNIST_FULL, USPS, SVHN, SYNDIGITS, MNISTM_FULL)
