"""Ownership watermark (NTL-style) and the ``wm:<domain>[@key=value,...]`` domain syntax.

The pattern follows NTL (Wang et al., ICLR 2022): a constant is added to **one colour channel** on a
regular pixel grid (every ``stride``-th row and column, starting at ``offset``), and the result is
clamped to ``[0, 1]``. Labels are unchanged. A model protected with the watermarked source as its
unauthorized domain keeps clean accuracy and collapses on watermarked inputs, which ``verify`` uses as
evidence of ownership (METHODS.md §1).

Default :class:`WatermarkSpec`: channel 0 (red), strength +0.5, stride 4, offset 1, i.e. an 8x8 grid of
red dots on a 32x32 image (64 of 1024 pixel positions, one channel). It is clearly visible on MNIST-like
images (red dots on the black background) and leaves the digit readable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import DomainlockError

WM_PREFIX = "wm:"


@dataclass(frozen=True)
class WatermarkSpec:
    """NTL-style grid watermark: ``x[channel, i, j] += strength`` for ``i, j ≡ offset (mod stride)``."""

    channel: int = 0
    strength: float = 0.5
    stride: int = 4
    offset: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.channel, bool) or not isinstance(self.channel, int) or not 0 <= self.channel <= 2:
            raise DomainlockError(f"watermark channel={self.channel!r} is invalid; valid: 0, 1 or 2")
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise DomainlockError(f"watermark stride={self.stride!r} is invalid; valid: an integer >= 1")
        if (isinstance(self.offset, bool) or not isinstance(self.offset, int)
                or not 0 <= self.offset < self.stride):
            raise DomainlockError(f"watermark offset={self.offset!r} is invalid; "
                                  f"valid: an integer in [0, stride={self.stride})")
        s = self.strength
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (-1.0 <= s <= 1.0) or s == 0:
            raise DomainlockError(f"watermark strength={s!r} is invalid; valid: a non-zero number in [-1, 1]")
        object.__setattr__(self, "strength", float(s))

    def mask(self, height: int, width: int) -> torch.Tensor:
        """Boolean ``[height, width]`` grid of the watermarked pixel positions."""
        m = torch.zeros(height, width, dtype=torch.bool)
        m[self.offset::self.stride, self.offset::self.stride] = True
        return m


WATERMARK_KEYS = tuple(f.name for f in dataclasses.fields(WatermarkSpec))


def apply_watermark(x: torch.Tensor, spec: WatermarkSpec = WatermarkSpec()) -> torch.Tensor:
    """Return a watermarked copy of float images ``x`` (``[N,C,H,W]`` or ``[C,H,W]``, values in ``[0,1]``).

    Only channel ``spec.channel`` at the grid positions changes: ``clamp(x + strength, 0, 1)``.
    """
    if not torch.is_floating_point(x):
        raise DomainlockError(f"apply_watermark needs float images in [0, 1], got dtype {x.dtype}")
    if x.ndim not in (3, 4):
        raise DomainlockError(f"apply_watermark needs [N,C,H,W] or [C,H,W] images, "
                              f"got shape {tuple(x.shape)}")
    c_dim = x.ndim - 3
    if spec.channel >= x.shape[c_dim]:
        raise DomainlockError(f"watermark channel={spec.channel} but the images have "
                              f"{x.shape[c_dim]} channel(s)")
    out = x.clone()
    rows = slice(spec.offset, None, spec.stride)
    ch = out[..., spec.channel, rows, rows]  # view
    ch.add_(spec.strength).clamp_(0.0, 1.0)
    return out


def _parse_value(key: str, raw: str) -> int | float:
    try:
        return float(raw) if key == "strength" else int(raw)
    except ValueError:
        kind = "a number" if key == "strength" else "an integer"
        raise DomainlockError(f"watermark {key}={raw!r} is not {kind}; "
                              f"valid keys: {', '.join(WATERMARK_KEYS)}") from None


def parse_watermark(text: str) -> WatermarkSpec:
    """Parse ``"strength=0.3,stride=4,channel=1"`` (any subset of the keys; others keep defaults)."""
    kwargs: dict[str, int | float] = {}
    for part in text.split(","):
        part = part.strip()
        if "=" not in part:
            raise DomainlockError(f"bad watermark option {part!r}: expected key=value; "
                                  f"valid keys: {', '.join(WATERMARK_KEYS)}")
        key, raw = (s.strip() for s in part.split("=", 1))
        if key not in WATERMARK_KEYS:
            raise DomainlockError(f"unknown watermark key {key!r}; valid keys: {', '.join(WATERMARK_KEYS)}")
        if key in kwargs:
            raise DomainlockError(f"watermark key {key!r} given twice; valid keys: {', '.join(WATERMARK_KEYS)}")
        kwargs[key] = _parse_value(key, raw)
    return WatermarkSpec(**kwargs)  # type: ignore[arg-type]
