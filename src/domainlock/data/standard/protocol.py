"""Protocols: how a standard dataset's release becomes the stored train/val/test splits.

- ``default``: 32x32 images, like the offline domains. A release with an official train/test split keeps
  its test set as ``test`` and splits its training set 90/10 into ``train``/``val`` (stratified, the fixed
  split seed), so test numbers stay comparable with published ones. A release without one (the folder
  datasets) is split 70/10/20 per class like ``folder:`` domains.
- ``ntlbench``: NTLBench's protocol, for comparability with it: 64x64 images; every labelled image of the
  release pooled (official train and test) and split 8:1:1 per class, each split then capped at
  8000/1000/1000 images by a class-proportional sample; fixed split seed.

Images are resized with torch's bilinear, antialiased interpolation, in chunks so a large release never
needs its whole float copy in memory. A digit release drawn in a box smaller than its frame (MNIST 28 px
digits in a 32 px frame) is zero-padded instead under ``default``: the ``inner`` size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import check_choice
from ..common import IMAGE_SIZE, SPLIT_FRACTIONS, SPLIT_SEED, pad_to, resize, stratified_split
from ..types import SPLITS

PROTOCOLS = ("default", "ntlbench")
NTLBENCH_SIZE = 64
NTLBENCH_FRACTIONS = (0.8, 0.1, 0.1)
NTLBENCH_CAPS = (8000, 1000, 1000)
VAL_OF_TRAIN = 0.1
CHUNK = 2048


def check_protocol(protocol: str) -> str:
    return check_choice("protocol", protocol, PROTOCOLS)


def image_size(protocol: str) -> int:
    return NTLBENCH_SIZE if check_protocol(protocol) == "ntlbench" else IMAGE_SIZE


def describe(protocol: str, parts: Mapping[str, Any]) -> dict[str, Any]:
    """What the manifest records about how the splits were made."""
    if protocol == "ntlbench":
        return {"protocol": "ntlbench", "image_size_px": NTLBENCH_SIZE, "split_seed": SPLIT_SEED,
                "split_fractions": list(NTLBENCH_FRACTIONS), "split_caps": list(NTLBENCH_CAPS),
                "split_rule": f"all labelled images ({' + '.join(parts)}) pooled, 8:1:1 per class, capped at "
                              "8000/1000/1000"}
    if "test" in parts:
        return {"protocol": "default", "image_size_px": IMAGE_SIZE, "split_seed": SPLIT_SEED,
                "split_fractions": None,
                "split_rule": "official test set = test; official train split 90/10 per class into train/val"}
    return {"protocol": "default", "image_size_px": IMAGE_SIZE, "split_seed": SPLIT_SEED,
            "split_fractions": list(SPLIT_FRACTIONS), "split_rule": "70/10/20 per class"}


def plan(parts: Mapping[str, np.ndarray], protocol: str) -> dict[str, np.ndarray]:
    """Row indices of each split into the concatenation of ``parts`` (labels per part, in the given order;
    ``train`` and ``test`` for an official split, else ``all``)."""
    check_protocol(protocol)
    offsets = np.cumsum([0] + [len(y) for y in parts.values()])
    at = dict(zip(parts, offsets[:-1].tolist(), strict=True))
    y_all = np.concatenate([np.asarray(y, dtype=np.int64) for y in parts.values()])
    if protocol == "ntlbench":
        return capped_split(y_all, NTLBENCH_FRACTIONS, NTLBENCH_CAPS)
    if "test" in parts and "train" in parts:
        tv = stratified_split(parts["train"], (1 - VAL_OF_TRAIN, VAL_OF_TRAIN), names=("train", "val"))
        return {"train": tv["train"] + at["train"], "val": tv["val"] + at["train"],
                "test": np.arange(len(parts["test"]), dtype=np.int64) + at["test"]}
    return stratified_split(y_all)


def capped_split(y: np.ndarray, fractions=NTLBENCH_FRACTIONS, caps=NTLBENCH_CAPS, seed: int = SPLIT_SEED
                 ) -> dict[str, np.ndarray]:
    """Split ``y`` per class by ``fractions``, then cut each split down to its cap, keeping class proportions."""
    parts = stratified_split(y, fractions, seed)
    rng = np.random.default_rng(seed + 1)
    out = {}
    for s, cap in zip(SPLITS, caps, strict=True):
        idx = parts[s]
        if len(idx) > cap:
            sub = stratified_split(y[idx], (1 - cap / len(idx), cap / len(idx)), seed + 1, names=("drop", "keep"))
            idx = idx[sub["keep"]]
        out[s] = idx[rng.permutation(len(idx))]
    return out


def gather(xs: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of the concatenation of ``xs`` without building the concatenation."""
    offsets = np.cumsum([0] + [len(x) for x in xs])
    out = np.empty((len(idx),) + xs[0].shape[1:], dtype=xs[0].dtype)
    for k, x in enumerate(xs):
        sel = (idx >= offsets[k]) & (idx < offsets[k + 1])
        out[sel] = x[idx[sel] - offsets[k]]
    return out


def store(x: np.ndarray, size: int, inner: int | None = None) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` -> uint8 RGB ``[N, 3, size, size]``: resized to ``inner`` and zero-padded to
    ``size`` when ``inner`` is given, else resized to ``size`` (nothing done at that size already)."""
    x = np.asarray(x)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    x = x.transpose(0, 3, 1, 2)
    target = inner or size
    if x.shape[2:] != (target, target):
        x = np.concatenate([_resize_u8(x[i:i + CHUNK], target) for i in range(0, len(x), CHUNK)]) if len(x) \
            else np.zeros((0, 3, target, target), np.uint8)
    if inner and inner != size:
        x = pad_to(x, size)
    return np.ascontiguousarray(x, dtype=np.uint8)


def _resize_u8(x: np.ndarray, size: int) -> np.ndarray:
    return np.clip(np.rint(resize(x.astype(np.float32) / 255.0, size) * 255.0), 0, 255).astype(np.uint8)


def finish(parts: Mapping[str, tuple[np.ndarray, np.ndarray]], protocol: str, inner: int | None = None
           ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any], int]:
    """``(splits, manifest notes, image size)`` from a release's parts (``{part: (x [N,H,W,C], y)}``)."""
    size = image_size(protocol)
    idx = plan({k: y for k, (_, y) in parts.items()}, protocol)
    xs = [x for x, _ in parts.values()]
    ys = np.concatenate([np.asarray(y, dtype=np.int64) for _, y in parts.values()])
    splits = {s: (store(gather(xs, i), size, inner if protocol == "default" else None), ys[i]) for s, i in idx.items()}
    return splits, describe(protocol, parts), size
