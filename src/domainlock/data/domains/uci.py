"""``uci-digits``: the real UCI optical-recognition handwritten digits bundled with scikit-learn
(``sklearn.datasets.load_digits``: 1,797 images, 8x8, values 0..16).

Each image is scaled to [0,1], upsampled to 24x24 (bilinear, in torch) and zero-padded to 32x32, so
the digit sits in the middle with a margin like MNIST's; gray is replicated to 3 channels. Split
stratified 70/10/20 %.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ...errors import DataUnavailableError
from ...utils.io import sha256_file
from ..common import (
    DIGIT_CLASSES,
    BuildContext,
    BuildResult,
    apply_splits,
    pad_to,
    resize,
    stratified_split,
    to_uint8_rgb,
)

NAME = "uci-digits"
VERSION = 1
SEEDED = False  # does the build depend on the seed?
DESCRIPTION = "real UCI optical digits (8x8, bundled with scikit-learn), upsampled to 32x32"
HINT = "uci-digits needs the PyPI package scikit-learn: pip install scikit-learn"
INNER = 24  # digit box size before padding to 32


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("sklearn") is None:
        return False, HINT
    return True, "PyPI package scikit-learn (sklearn.datasets.load_digits)"


def build(ctx: BuildContext) -> BuildResult:
    try:
        import sklearn
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataUnavailableError(HINT) from None
    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    raw = {}
    csv = Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        raw["sklearn/datasets/data/digits.csv.gz"] = sha256_file(csv)
    x32 = pad_to(resize(x, INNER))
    parts = stratified_split(y)
    source = {"package": "pypi:scikit-learn", "version": sklearn.__version__,
              "how": "sklearn.datasets.load_digits()"}
    return BuildResult(apply_splits(to_uint8_rgb(x32), y, parts), list(DIGIT_CLASSES), source, raw,
                       {"preprocess": f"8x8 /16, bilinear upsample to {INNER}x{INNER}, zero-pad to 32x32"})
