"""PNG sample grids for eyeballing a domain."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import DomainlockError
from ..utils.io import atomic_write_bytes

PAD = 2
LABEL_H = 10


def grid_size(n: int, h: int, w: int, nrow: int = 10, upscale: int = 2,
              labels: bool = False) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG :func:`save_grid` writes for ``n`` images of ``h x w``."""
    cols = max(1, min(nrow, n))
    rows = max(1, -(-n // cols))
    cell_h = h * upscale + (LABEL_H if labels else 0)
    return cols * (w * upscale + PAD) + PAD, rows * (cell_h + PAD) + PAD


def save_grid(x: torch.Tensor, path: str | os.PathLike, nrow: int = 10,
              y: torch.Tensor | Sequence | None = None, upscale: int = 2,
              classes: Sequence[str] | None = None) -> None:
    """Write images ``x`` (``[N,C,H,W]``, float in [0,1] or uint8; C = 1 or 3) as a PNG grid.

    ``nrow`` images per row, each enlarged ``upscale`` times (nearest), separated by a 2-pixel grey
    border; with ``y``, each cell gets its label (``classes[y]`` if given) printed above it. The
    file is written atomically. Size: see :func:`grid_size`.
    """
    from PIL import Image, ImageDraw

    x = torch.as_tensor(x).detach().cpu()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise DomainlockError(f"save_grid needs [N,C,H,W] images with C=1 or 3 and N>0, got {tuple(x.shape)}")
    if nrow < 1 or upscale < 1:
        raise DomainlockError(f"save_grid: nrow={nrow} and upscale={upscale} must be >= 1")
    if x.dtype == torch.uint8:
        arr = x.numpy()
    else:
        arr = (x.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if arr.shape[1] == 1:
        arr = np.repeat(arr, 3, axis=1)
    arr = arr.transpose(0, 2, 3, 1)  # NHWC
    if upscale > 1:
        arr = arr.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w, _ = arr.shape
    labels = None if y is None else [int(v) for v in torch.as_tensor(y).reshape(-1).tolist()]
    if labels is not None and len(labels) != n:
        raise DomainlockError(f"save_grid: {len(labels)} labels for {n} images")
    lh = LABEL_H if labels is not None else 0
    W, H = grid_size(n, h // upscale, w // upscale, nrow, upscale, labels is not None)
    cols = max(1, min(nrow, n))
    canvas = np.full((H, W, 3), 128, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        top = PAD + r * (h + lh + PAD) + lh
        left = PAD + c * (w + PAD)
        canvas[top:top + h, left:left + w] = arr[i]
    img = Image.fromarray(canvas, "RGB")
    if labels is not None:
        draw = ImageDraw.Draw(img)
        for i, lab in enumerate(labels):
            r, c = divmod(i, cols)
            text = classes[lab] if classes is not None and 0 <= lab < len(classes) else str(lab)
            draw.text((PAD + c * (w + PAD) + 1, PAD + r * (h + lh + PAD) - 1), text[: max(1, w // 6)],
                      fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
