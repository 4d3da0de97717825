"""Batch-level image augmentation in pure torch (CPU or GPU), seeded by a ``torch.Generator``.

Every op takes a batch ``x`` of shape ``[B, C, H, W]`` with values in ``[0, 1]`` and returns a batch of the
same shape, dtype and device, still in ``[0, 1]``. Each op is applied to each image independently with
probability ``p`` and with per-image random parameters; all random numbers come from the given generator
(drawn on the generator's device and moved to ``x``'s), and an op always draws the same amount, so a
seeded generator gives bit-identical batches.

A preset is a list of ``(op name, kwargs)`` steps (see :data:`AUGMENTS`); :func:`get_augment` turns a preset
name into a callable ``aug(x, generator) -> x``. The ``default`` preset is what makes a digit model trained on
grey MNIST transfer to colour digit domains (SYN, MNIST-M) and to UCI digits: without colour augmentation a
plain MNIST model predicts one class for most colour images, leaving nothing for a protection method to
protect.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DomainlockError, UnknownChoiceError

Range = float | Sequence[float]

# --------------------------------------------------------------------------------------------- helpers


def _gen_device(g: torch.Generator | None) -> torch.device:
    return g.device if g is not None else torch.device("cpu")


def _rand(shape: Sequence[int], g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    r = torch.rand(tuple(shape), generator=g, device=_gen_device(g), dtype=torch.float32)
    return r.to(device=like.device, dtype=like.dtype)


def _randn(shape: Sequence[int], g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    r = torch.randn(tuple(shape), generator=g, device=_gen_device(g), dtype=torch.float32)
    return r.to(device=like.device, dtype=like.dtype)


def _uniform(n: int, rng: Range, g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    lo, hi = _range(rng)
    return lo + (hi - lo) * _rand((n,), g, like)


def _range(rng: Range) -> tuple[float, float]:
    if isinstance(rng, (int, float)):
        return float(rng), float(rng)
    lo, hi = rng
    return float(lo), float(hi)


def _mask(n: int, p: float, g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return (_rand((n,), g, like) < p).view(n, 1, 1, 1)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, a, b)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Luminance ``[B, 1, H, W]`` (ITU-R 601 weights for RGB; the channel mean otherwise)."""
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


# ------------------------------------------------------------------------------------------------- ops


def translate(x: torch.Tensor, g: torch.Generator | None = None, pad: int = 4, p: float = 1.0,
              mode: str = "replicate") -> torch.Tensor:
    """Random crop after padding by ``pad`` pixels (``mode``: replicate, reflect or constant=0): a random
    integer shift of up to ``pad`` pixels in each direction."""
    b, c, h, w = x.shape
    mask = _mask(b, p, g, x)
    offs = (_rand((2, b), g, x) * (2 * pad + 1)).floor().long().clamp_(0, 2 * pad)
    if pad <= 0:
        return x
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    rows = offs[0].view(b, 1) + torch.arange(h, device=x.device).view(1, h)  # [B, H]
    cols = offs[1].view(b, 1) + torch.arange(w, device=x.device).view(1, w)  # [B, W]
    # two gathers (rows, then columns): the same pixels as one 4-index lookup, at half its cost on CPU
    out = xp.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * pad))
    out = out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))
    return _where(mask, out, x)


def affine(x: torch.Tensor, g: torch.Generator | None = None, degrees: float = 15.0,
           scale: Range = (0.85, 1.15), shear: float = 0.0, translate: float = 0.0, p: float = 1.0,
           padding_mode: str = "border") -> torch.Tensor:
    """Random rotation (±``degrees``), isotropic scale, shear (±``shear`` degrees) and translation (a fraction
    of the image size), bilinear, borders replicated."""
    b = x.shape[0]
    mask = _mask(b, p, g, x)
    r = _rand((5, b), g, x)
    ang = (2 * r[0] - 1) * math.radians(degrees)
    lo, hi = _range(scale)
    s = lo + (hi - lo) * r[1]
    sh = (2 * r[2] - 1) * math.radians(shear)
    tx, ty = (2 * r[3] - 1) * translate * 2, (2 * r[4] - 1) * translate * 2  # grid coords span 2
    cos, sin = torch.cos(ang), torch.sin(ang)
    # inverse map output -> input: rotate by -ang, scale by 1/s, shear in x
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = (cos + torch.tan(sh) * sin) / s
    theta[:, 0, 1] = (sin - torch.tan(sh) * cos) / s
    theta[:, 1, 0] = -sin / s
    theta[:, 1, 1] = cos / s
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return _where(mask, out.clamp(0, 1), x)


def _random_colours(n: int, lum: torch.Tensor, sat: Range, g: torch.Generator | None,
                    like: torch.Tensor) -> torch.Tensor:
    """``[n, 3]`` colours near luminance ``lum`` with a random hue and saturation in ``sat``."""
    hue = _rand((n, 3), g, like) - 0.5
    hue = hue - hue.mean(1, keepdim=True)
    hue = hue / hue.abs().amax(1, keepdim=True).clamp_min(1e-6)
    s = _uniform(n, sat, g, like).view(n, 1)
    return (lum.view(n, 1) + 0.5 * s * hue).clamp(0, 1)


def colorize(x: torch.Tensor, g: torch.Generator | None = None, p: float = 1.0, min_contrast: float = 0.3,
             saturation: Range = (0.0, 1.0)) -> torch.Tensor:
    """Duotone: map the luminance of each image onto a random background colour (luma 0) and a random
    foreground colour (luma 1) whose brightness differs by at least ``min_contrast``; dark-on-light or
    light-on-dark with equal odds. Turns a grey digit into a coloured digit on a coloured background."""
    b = x.shape[0]
    mask = _mask(b, p, g, x)
    u, v = _rand((b,), g, x), min_contrast + (1 - min_contrast) * _rand((b,), g, x)
    lo = u * (1 - v)
    hi = lo + v
    swap = _rand((b,), g, x) < 0.5
    bg_l, fg_l = torch.where(swap, hi, lo), torch.where(swap, lo, hi)
    bg = _random_colours(b, bg_l, saturation, g, x)
    fg = _random_colours(b, fg_l, saturation, g, x)
    if x.shape[1] != 3:
        return x
    lum = _luma(x)
    out = bg.view(b, 3, 1, 1) + lum * (fg - bg).view(b, 3, 1, 1)
    return _where(mask, out.clamp(0, 1), x)


def tint(x: torch.Tensor, g: torch.Generator | None = None, strength: Range = (0.0, 0.5),
         p: float = 1.0) -> torch.Tensor:
    """Blend each image with a random solid colour: ``(1 - s) * x + s * colour``."""
    b, c = x.shape[:2]
    mask = _mask(b, p, g, x)
    s = _uniform(b, strength, g, x).view(b, 1, 1, 1)
    colour = _rand((b, c), g, x).view(b, c, 1, 1)
    return _where(mask, ((1 - s) * x + s * colour).clamp(0, 1), x)


def channel_shuffle(x: torch.Tensor, g: torch.Generator | None = None, p: float = 1.0) -> torch.Tensor:
    """Randomly permute the colour channels of each image."""
    b, c = x.shape[:2]
    mask = _mask(b, p, g, x)
    perm = _rand((b, c), g, x).argsort(1)  # [B, C]
    out = torch.gather(x, 1, perm.view(b, c, 1, 1).expand_as(x))
    return _where(mask, out, x)


def channel_gain(x: torch.Tensor, g: torch.Generator | None = None, gain: Range = (0.6, 1.4),
                 p: float = 1.0) -> torch.Tensor:
    """Multiply each channel by its own random gain in ``gain`` (clipped to [0, 1])."""
    b, c = x.shape[:2]
    mask = _mask(b, p, g, x)
    lo, hi = _range(gain)
    k = (lo + (hi - lo) * _rand((b, c), g, x)).view(b, c, 1, 1)
    return _where(mask, (x * k).clamp(0, 1), x)


def invert(x: torch.Tensor, g: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """``1 - x`` with probability ``p`` per image."""
    mask = _mask(x.shape[0], p, g, x)
    return _where(mask, 1 - x, x)


def brightness_contrast(x: torch.Tensor, g: torch.Generator | None = None, brightness: float = 0.2,
                        contrast: Range = (0.6, 1.4), p: float = 1.0) -> torch.Tensor:
    """``(x - mean) * c + mean + b`` with ``c`` in ``contrast`` and ``b`` in ``±brightness`` (per image)."""
    b = x.shape[0]
    mask = _mask(b, p, g, x)
    c = _uniform(b, contrast, g, x).view(b, 1, 1, 1)
    shift = ((2 * _rand((b,), g, x) - 1) * brightness).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return _where(mask, ((x - mean) * c + mean + shift).clamp(0, 1), x)


def gaussian_blur(x: torch.Tensor, g: torch.Generator | None = None, sigma: Range = (0.1, 1.2),
                  p: float = 0.5, kernel_size: int = 5) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (reflect padding)."""
    b, c, h, w = x.shape
    mask = _mask(b, p, g, x)
    sig = _uniform(b, sigma, g, x).clamp_min(1e-3)
    k = int(kernel_size) | 1
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kern = torch.exp(-(r.view(1, k) ** 2) / (2 * sig.view(b, 1) ** 2))
    kern = kern / kern.sum(1, keepdim=True)  # [B, k]
    kern = kern.repeat_interleave(c, 0)  # [B*C, k]
    y = F.pad(x.reshape(1, b * c, h, w), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    y = F.conv2d(y, kern.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(y, kern.view(b * c, 1, k, 1), groups=b * c)
    return _where(mask, y.view(b, c, h, w).clamp(0, 1), x)


def gaussian_noise(x: torch.Tensor, g: torch.Generator | None = None, std: Range = (0.0, 0.08),
                   p: float = 0.5) -> torch.Tensor:
    """Add i.i.d. Gaussian noise with a per-image standard deviation in ``std``."""
    b = x.shape[0]
    mask = _mask(b, p, g, x)
    s = _uniform(b, std, g, x).view(b, 1, 1, 1)
    noise = _randn(x.shape, g, x)
    return _where(mask, (x + s * noise).clamp(0, 1), x)


def grayscale(x: torch.Tensor, g: torch.Generator | None = None, p: float = 0.1) -> torch.Tensor:
    """Replace every channel by the luminance, with probability ``p`` per image."""
    mask = _mask(x.shape[0], p, g, x)
    return _where(mask, _luma(x).expand_as(x), x)


def texture_blend(x: torch.Tensor, g: torch.Generator | None = None, p: float = 0.3,
                  cells: Sequence[int] = (2, 4, 8)) -> torch.Tensor:
    """Blend each image into a random smooth colour texture with the MNIST-M rule ``|texture - luma(x)|``.

    The texture is a sum of bilinearly upsampled random colour grids (``cells`` per side); no photos are
    used (MNIST-M-like target domains stay unseen)."""
    b, c, h, w = x.shape
    mask = _mask(b, p, g, x)
    tex = torch.zeros_like(x)
    total = 0.0
    for i, n in enumerate(cells):
        wgt = 0.5 ** i
        grid = _rand((b, c, n, n), g, x)
        tex = tex + wgt * F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
        total += wgt
    tex = tex / total
    lo = tex.amin(dim=(2, 3), keepdim=True)
    hi = tex.amax(dim=(2, 3), keepdim=True)
    tex = (tex - lo) / (hi - lo).clamp_min(1e-6)  # use the full range
    out = (tex - _luma(x)).abs()
    return _where(mask, out.clamp(0, 1), x)


def distractors(x: torch.Tensor, g: torch.Generator | None = None, p: float = 0.3,
                shift: Range = (0.55, 0.8)) -> torch.Tensor:
    """Paste parts of other images of the batch beside each image, shifted left or right by a fraction
    ``shift`` of the width, composited with ``max`` (for light-on-dark digit images: apply before colour
    ops). Imitates the neighbouring digits of house-number/SynDigits crops."""
    b, c, h, w = x.shape
    mask = _mask(b, p, g, x)
    r = _rand((4, b), g, x)
    if b < 2:
        return x
    out = x
    for k, (side, amount) in enumerate(((r[0], r[1]), (r[2], r[3]))):
        lo, hi = _range(shift)
        px = ((lo + (hi - lo) * amount) * w).round().long()  # [B]
        sign = torch.where(side < 0.5, -1, 1)
        other = x.roll(k + 1, dims=0)
        # shift each image of ``other`` by its own offset: gather columns, zero outside the frame
        cols = torch.arange(w, device=x.device).view(1, w) - (sign * px).view(b, 1)
        valid = ((cols >= 0) & (cols < w)).view(b, 1, 1, w)
        idx = cols.clamp(0, w - 1).view(b, 1, 1, w).expand(b, c, h, w)
        moved = torch.gather(other, 3, idx) * valid
        use = (k == 0) | (side > 0.75)  # a second neighbour on some images
        out = torch.where(use.view(b, 1, 1, 1), torch.maximum(out, moved), out)
    return _where(mask, out, x)


OPS: dict[str, Callable[..., torch.Tensor]] = {
    "distractors": distractors,
    "translate": translate, "affine": affine, "colorize": colorize, "tint": tint,
    "channel_shuffle": channel_shuffle, "channel_gain": channel_gain, "invert": invert,
    "brightness_contrast": brightness_contrast, "gaussian_blur": gaussian_blur,
    "gaussian_noise": gaussian_noise, "grayscale": grayscale, "texture_blend": texture_blend,
}

# --------------------------------------------------------------------------------------------- presets

Step = tuple[str, dict[str, Any]]

#: preset name -> steps, applied in order. ``default`` is the training recipe of ``train_source``.
AUGMENTS: dict[str, list[Step]] = {
    "none": [],
    "crop": [("translate", {"pad": 2})],
    "geometric": [("translate", {"pad": 2}), ("affine", {"degrees": 10, "scale": (0.85, 1.1), "p": 0.5})],
    "default": [
        ("affine", {"degrees": 12, "scale": (0.85, 1.3), "shear": 8, "p": 0.5}),
        ("distractors", {"p": 0.3}),
        ("translate", {"pad": 2}),
        ("colorize", {"p": 0.5, "min_contrast": 0.3}),
        ("texture_blend", {"p": 0.2}),
        ("channel_gain", {"gain": (0.7, 1.3), "p": 0.3}),
        ("invert", {"p": 0.2}),
        ("brightness_contrast", {"brightness": 0.15, "contrast": (0.7, 1.3), "p": 0.3}),
        ("gaussian_blur", {"sigma": (0.2, 1.2), "p": 0.3}),
        ("gaussian_noise", {"std": (0.0, 0.06), "p": 0.3}),
    ],
    "strong": [
        ("affine", {"degrees": 15, "scale": (0.8, 1.3), "shear": 10, "p": 0.7}),
        ("distractors", {"p": 0.4}),
        ("translate", {"pad": 3}),
        ("colorize", {"p": 0.7, "min_contrast": 0.25}),
        ("texture_blend", {"p": 0.3}),
        ("channel_shuffle", {"p": 0.3}),
        ("channel_gain", {"gain": (0.6, 1.4), "p": 0.5}),
        ("invert", {"p": 0.3}),
        ("brightness_contrast", {"brightness": 0.2, "contrast": (0.6, 1.4), "p": 0.5}),
        ("gaussian_blur", {"sigma": (0.2, 1.5), "p": 0.4}),
        ("gaussian_noise", {"std": (0.0, 0.1), "p": 0.4}),
        ("grayscale", {"p": 0.1}),
    ],
}


class Augment:
    """A sequence of ops; ``aug(x, generator)`` returns the augmented batch (``x`` is not modified)."""

    def __init__(self, steps: Sequence[Step], name: str = "custom"):
        for op, kwargs in steps:
            if op not in OPS:
                raise UnknownChoiceError("augmentation op", op, OPS)
            if not isinstance(kwargs, dict):
                raise DomainlockError(f"augmentation step {op!r} needs a dict of keyword arguments")
        self.steps = [(op, dict(kwargs)) for op, kwargs in steps]
        self.name = name

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise DomainlockError(f"augmentation expects a [B, C, H, W] batch, got shape {tuple(x.shape)}")
        for op, kwargs in self.steps:
            x = OPS[op](x, generator, **kwargs)
        return x

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __repr__(self) -> str:
        return f"Augment({self.name!r}, {[op for op, _ in self.steps]})"

    def describe(self) -> list[dict[str, Any]]:
        """JSON-able description (recorded in an artifact card)."""
        return [{"op": op, **{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}}
                for op, kw in self.steps]


def get_augment(name: str) -> Augment:
    """The :class:`Augment` for a preset name in :data:`AUGMENTS`."""
    if name not in AUGMENTS:
        raise UnknownChoiceError("augment", name, AUGMENTS)
    return Augment(AUGMENTS[name], name=name)


def augment_batch(x: torch.Tensor, preset: str = "default", generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    return get_augment(preset)(x, generator)
