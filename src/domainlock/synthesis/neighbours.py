"""Diverse neighbour domains for DF-MAP (METHODS.md §1): style perturbations of the pseudo-source that
stand in for unknown unauthorized domains.

The neighbours must keep the *content* (a source model still classifies most of them right, so they are
"classified like it") while their *style* moves far from the source: colour and texture changes like
SVHN/SynDigits and MNIST-M, resolution and stroke changes like USPS/UCI digits, filters and statistics
changes no real domain has but which widen the cover. METHODS notes that a crude set (tint, inversion,
textures, random convolutions, blur, noise) lowered UCI digits by only 3-5 points, hence the many families
below, their strong default strengths and the optional composition of two families per image.

Families (:func:`neighbour_families`; every one maps ``[B, C, H, W]`` in [0, 1] to the same shape in [0, 1]):

``invert``     ``1 - x``.
``colour``     random colour matrix (channel mixing, permutations, negative gains), gamma and contrast.
``render``     SynDigits/SVHN-like: the digit's shape recoloured with a random flat or gradient foreground
               on a random flat or gradient background, slight blur and noise ("rendered digit" look).
``background`` the shape pasted in a random colour onto a synthetic texture (plasma or gratings).
``texture``    MNIST-M rule ``|texture − shape|`` per channel with a random smooth (plasma) colour texture.
``blur_noise`` strong Gaussian blur and/or Gaussian / salt-and-pepper noise.
``randconv``   RandConv: a random k×k convolution (k ∈ {1, 3, 5, 7}), rescaled to [0, 1] per image, partly
               blended with the input.
``adain``      image-level AdaIN: per-channel mean/std of each image replaced by random ones.
``lowres``     USPS/UCI-like: grey, down-sampled to 8-16 px (area), optionally quantized to 17 grey levels
               (UCI's 0-16), up-sampled back (nearest or bilinear).
``stroke``     thicker or thinner strokes: morphological dilation/erosion of the foreground (max-pool in
               the foreground's polarity); thickening 1-2 iterations, thinning 1.
``elastic``    elastic deformation (smooth random displacement field) plus a random affine transform.
``fourier``    amplitude-spectrum mixing with a random texture's spectrum (phase kept, FACT-style).
``edges``      Sobel edge map of the shape, recoloured (sketch / outline style).

The *shape* of an image is its luminance contrast against the border (``|luma − border luma|``, rescaled to
[0, 1]): the stroke for light-on-dark and dark-on-light digits alike, an approximation for pseudo-source
images whose backgrounds are not flat.

Model-level feature-statistics perturbation (AdaIN/DSU-style on intermediate activations) is
:func:`perturb_feature_stats` / :func:`feature_stat_hooks`: the caller (e.g. the mask learner) decides at
which layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import affine as _affine
from ..data.augment import gaussian_blur as _gaussian_blur
from ..errors import DomainlockError, UnknownChoiceError, check_range

# ----------------------------------------------------------------------------------------- helpers


def _dev(g: torch.Generator | None) -> torch.device:
    return g.device if g is not None else torch.device("cpu")


def _rand(shape: Sequence[int], g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=g, device=_dev(g)).to(like.device, like.dtype)


def _randn(shape: Sequence[int], g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=g, device=_dev(g)).to(like.device, like.dtype)


def _uniform(shape: Sequence[int], lo: float, hi: float, g, like) -> torch.Tensor:
    return lo + (hi - lo) * _rand(shape, g, like)


def _randint(n: int, high: int, g, like) -> torch.Tensor:
    return (_rand((n,), g, like) * high).floor().long().clamp_(0, high - 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def _minmax(x: torch.Tensor, dims=(1, 2, 3)) -> torch.Tensor:
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def _border_mean(t: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Mean of a ``width``-pixel frame of each image: ``[B, C, 1, 1]``."""
    h, w = t.shape[-2:]
    m = torch.ones(h, w, device=t.device, dtype=t.dtype)
    m[width:h - width, width:w - width] = 0
    return (t * m).sum((-2, -1), keepdim=True) / m.sum()


def _smooth(t: torch.Tensor) -> torch.Tensor:
    """Fixed 3x3 binomial blur (no randomness), replicate padding."""
    k = torch.tensor([1.0, 2.0, 1.0], device=t.device, dtype=t.dtype)
    k = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3).expand(t.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), k, groups=t.shape[1])


def shape_map(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` in [0, 1]: the (lightly smoothed) luminance contrast against the image's border,
    rescaled per image (the stroke of a digit, whatever its polarity or colour; smoothing keeps pixel noise
    of synthesized pseudo-source images out of it)."""
    lum = _smooth(_luma(x))
    s = (lum - _border_mean(lum)).abs()
    return s / s.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def _colours(n: int, g, like) -> torch.Tensor:
    """``[n, 3]`` random colours, saturated or grey with equal odds."""
    c = _rand((n, 3), g, like)
    grey = _rand((n, 1), g, like)
    use_grey = _rand((n, 1), g, like) < 0.3
    return torch.where(use_grey, grey.expand(n, 3), c)


def _contrasting(n: int, g, like, min_diff: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``[n, 3]`` colour sets whose luminances differ by at least ``min_diff``."""
    a, b = _colours(n, g, like), _colours(n, g, like)
    w = torch.tensor([0.299, 0.587, 0.114], device=like.device, dtype=like.dtype)
    la, lb = (a * w).sum(1, keepdim=True), (b * w).sum(1, keepdim=True)
    diff = lb - la
    sign = torch.where(diff >= 0, 1.0, -1.0).to(like.dtype)
    push = (min_diff - diff.abs()).clamp_min(0) * sign
    return (a - push / 2).clamp(0, 1), (b + push / 2).clamp(0, 1)


def _plasma(b: int, c: int, h: int, w: int, g, like) -> torch.Tensor:
    """Smooth random colour textures ``[b, c, h, w]`` in [0, 1]: octaves of upsampled noise with a random
    spectral slope per image (from cloudy to grainy)."""
    slope = _uniform((b, 1, 1, 1), 0.35, 0.9, g, like)
    tex = torch.zeros(b, c, h, w, device=like.device, dtype=like.dtype)
    for i, cells in enumerate((2, 4, 8, 16)):
        if cells > max(h, w):
            break
        grid = _rand((b, c, cells, cells), g, like)
        tex = tex + slope ** i * F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return _minmax(tex, dims=(2, 3)).clamp(0, 1)


def _gratings(b: int, c: int, h: int, w: int, g, like) -> torch.Tensor:
    """Sums of 1-3 random oriented sinusoidal gratings per channel (stripes, checks, moiré)."""
    yy = torch.linspace(-1, 1, h, device=like.device, dtype=like.dtype).view(1, 1, h, 1)
    xx = torch.linspace(-1, 1, w, device=like.device, dtype=like.dtype).view(1, 1, 1, w)
    out = torch.zeros(b, c, h, w, device=like.device, dtype=like.dtype)
    for k in range(3):
        theta = _uniform((b, c, 1, 1), 0, math.pi, g, like)
        freq = _uniform((b, c, 1, 1), 1.0, 9.0, g, like)
        phase = _uniform((b, c, 1, 1), 0, 2 * math.pi, g, like)
        on = (_rand((b, 1, 1, 1), g, like) < (1.0 if k == 0 else 0.5)).to(like.dtype)
        out = out + on * torch.sin(math.pi * freq * (xx * torch.cos(theta) + yy * torch.sin(theta)) + phase)
    return _minmax(out, dims=(2, 3))


def _texture(b: int, c: int, h: int, w: int, g, like) -> torch.Tensor:
    pl, gr = _plasma(b, c, h, w, g, like), _gratings(b, c, h, w, g, like)
    pick = _rand((b, 1, 1, 1), g, like)
    mix = 0.5 * (pl + gr)
    return torch.where(pick < 0.5, pl, torch.where(pick < 0.8, gr, mix))


def _gradient(b: int, h: int, w: int, c0: torch.Tensor, c1: torch.Tensor, g, like) -> torch.Tensor:
    """Linear colour gradients from ``c0`` to ``c1`` (``[b, 3]``) along a random direction."""
    yy = torch.linspace(-1, 1, h, device=like.device, dtype=like.dtype).view(1, 1, h, 1)
    xx = torch.linspace(-1, 1, w, device=like.device, dtype=like.dtype).view(1, 1, 1, w)
    theta = _uniform((b, 1, 1, 1), 0, 2 * math.pi, g, like)
    t = ((xx * torch.cos(theta) + yy * torch.sin(theta)) / math.sqrt(2) + 1) / 2
    return c0.view(b, 3, 1, 1) + t * (c1 - c0).view(b, 3, 1, 1)


def _as_rgb(x: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 3 else x.mean(1, keepdim=True).expand(-1, 3, -1, -1)


def _back(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Return ``out`` with ``x``'s channel count (grey inputs get the luminance back)."""
    if x.shape[1] == out.shape[1]:
        return out.clamp(0, 1)
    return _luma(out).expand(-1, x.shape[1], -1, -1).clamp(0, 1).contiguous()


# ------------------------------------------------------------------------------------------ families
# Each family: f(x, g, s) with s = strength in (0, 1]; returns the same shape in [0, 1].


def fam_invert(x: torch.Tensor, g, s: float) -> torch.Tensor:
    return 1 - x


def fam_colour(x: torch.Tensor, g, s: float) -> torch.Tensor:
    b = x.shape[0]
    xr = _as_rgb(x)
    # random colour matrix: a random permutation with random signed gains plus random cross-talk
    perm = _rand((b, 3), g, x).argsort(1)
    eye = F.one_hot(perm, 3).to(x.dtype)  # [b, 3, 3]
    gains = _uniform((b, 3, 1), 0.6, 1.4, g, x)
    neg = (_rand((b, 3, 1), g, x) < 0.3 * s).to(x.dtype)
    mat = eye * gains * (1 - 2 * neg) + s * 0.5 * _randn((b, 3, 3), g, x)
    out = torch.einsum("bij,bjhw->bihw", mat, xr)
    out = _minmax(out, dims=(2, 3))
    gamma = torch.exp(_uniform((b, 1, 1, 1), -1.0, 1.0, g, x) * s)
    out = out.clamp_min(1e-6) ** gamma
    c = _uniform((b, 1, 1, 1), 1 - 0.5 * s, 1.0, g, x)
    mid = _uniform((b, 1, 1, 1), 0.3, 0.7, g, x)
    out = (out - 0.5) * c + mid
    return _back(out, x)


def fam_render(x: torch.Tensor, g, s: float) -> torch.Tensor:
    b, _, h, w = x.shape
    sh = shape_map(x)
    sh = _gaussian_blur(sh, g, sigma=(0.3, 0.3 + 0.7 * s), p=1.0, kernel_size=5)
    sh = ((sh - 0.25) / 0.5).clamp(0, 1)  # crisp, font-like edges
    fg, bg = _contrasting(b, g, x, min_diff=0.5 - 0.1 * s)
    fg2, bg2 = _colours(b, g, x), _colours(b, g, x)
    grad = _rand((2, b, 1, 1, 1), g, x) < 0.5 * s
    fgi = torch.where(grad[0], _gradient(b, h, w, fg, 0.5 * (fg + fg2), g, x), fg.view(b, 3, 1, 1))
    bgi = torch.where(grad[1], _gradient(b, h, w, bg, 0.5 * (bg + bg2), g, x), bg.view(b, 3, 1, 1))
    out = bgi + sh * (fgi - bgi)
    out = _gaussian_blur(out, g, sigma=(0.2, 0.2 + 0.8 * s), p=0.7, kernel_size=5)
    noise = _uniform((b, 1, 1, 1), 0.0, 0.06 * s, g, x) * _randn(out.shape, g, x)
    return _back(out + noise, x)


def fam_background(x: torch.Tensor, g, s: float) -> torch.Tensor:
    b, _, h, w = x.shape
    sh = shape_map(x)
    tex = _texture(b, 3, h, w, g, x)
    lo = _uniform((b, 1, 1, 1), 0.0, 0.4, g, x)
    tex = lo + tex * _uniform((b, 1, 1, 1), 0.2, 0.3 + 0.5 * s, g, x)
    fg = _colours(b, g, x).view(b, 3, 1, 1)
    # the digit must stand out of the texture: push its colour away from the texture's mean luminance
    w3 = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    tl = (tex * w3).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    fg = torch.where(tl > 0.45, fg * 0.35, 0.55 + 0.45 * fg)
    out = tex * (1 - sh) + fg * sh
    return _back(out, x)


def fam_texture(x: torch.Tensor, g, s: float) -> torch.Tensor:
    b, _, h, w = x.shape
    sh = shape_map(x)
    tex = _plasma(b, 3, h, w, g, x)
    amt = _uniform((b, 1, 1, 1), 0.5 + 0.5 * s, 1.0, g, x)
    out = (tex - amt * sh).abs()  # MNIST-M: |patch - digit|
    return _back(out, x)


def fam_blur_noise(x: torch.Tensor, g, s: float) -> torch.Tensor:
    b = x.shape[0]
    kind = _rand((b, 1, 1, 1), g, x)
    blurred = _gaussian_blur(x, g, sigma=(0.8, 0.8 + 1.7 * s), p=1.0, kernel_size=9)
    std = _uniform((b, 1, 1, 1), 0.05, 0.05 + 0.2 * s, g, x)
    gauss = x + std * _randn(x.shape, g, x)
    sp_r = _rand(x.shape[:1] + (1,) + x.shape[2:], g, x)
    sp_amt = _uniform((b, 1, 1, 1), 0.02, 0.02 + 0.13 * s, g, x)
    sp = torch.where(sp_r < sp_amt / 2, torch.zeros_like(x), torch.where(sp_r > 1 - sp_amt / 2,
                                                                         torch.ones_like(x), x))
    both = _gaussian_blur(x, g, sigma=(0.6, 0.6 + 1.0 * s), p=1.0, kernel_size=7)
    both = both + std * 0.7 * _randn(x.shape, g, x)
    out = torch.where(kind < 0.3, blurred, torch.where(kind < 0.55, gauss, torch.where(kind < 0.75, sp, both)))
    return out.clamp(0, 1)


def fam_randconv(x: torch.Tensor, g, s: float) -> torch.Tensor:
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    ks = (1, 3, 5, 7)
    pick = _randint(b, len(ks), g, x)
    alpha = _uniform((b, 1, 1, 1), 0.5 + 0.5 * s, 1.0, g, x)
    for i, k in enumerate(ks):
        wgt = _randn((b, c, c, k, k), g, x) / math.sqrt(c * k * k)
        sel = (pick == i).nonzero().flatten()
        if len(sel) == 0:
            continue
        xs = x[sel]
        nb = len(sel)
        y = F.conv2d(F.pad(xs, (k // 2,) * 4, mode="reflect").reshape(1, nb * c, h + k - 1, w + k - 1),
                     wgt[sel].reshape(nb * c, c, k, k), groups=nb)
        out[sel] = _minmax(y.view(nb, c, h, w), dims=(2, 3))
    return (alpha * out + (1 - alpha) * x).clamp(0, 1)


def fam_adain(x: torch.Tensor, g, s: float) -> torch.Tensor:
    b, c = x.shape[:2]
    mu = x.mean((2, 3), keepdim=True)
    sd = x.std((2, 3), keepdim=True).clamp_min(1e-3)
    new_mu = _uniform((b, c, 1, 1), 0.5 - 0.35 * s, 0.5 + 0.35 * s, g, x)
    new_sd = _uniform((b, c, 1, 1), 0.06, 0.1 + 0.3 * s, g, x)
    flip = torch.where(_rand((b, c, 1, 1), g, x) < 0.3 * s, -1.0, 1.0).to(x.dtype)
    return ((x - mu) / sd * new_sd * flip + new_mu).clamp(0, 1)


def fam_lowres(x: torch.Tensor, g, s: float) -> torch.Tensor:
    b, c, h, w = x.shape
    grey = _rand((b, 1, 1, 1), g, x) < 0.7
    xg = torch.where(grey, _luma(x).expand_as(x), x)
    sizes = (8, 10, 12, 16) if s >= 0.5 else (12, 16)
    pick = _randint(b, len(sizes), g, x)
    quant = _rand((b, 1, 1, 1), g, x) < 0.5
    nearest = _rand((b,), g, x) < 0.5
    out = torch.empty_like(x)
    for i, r in enumerate(sizes):
        sel = (pick == i).nonzero().flatten()
        if len(sel) == 0:
            continue
        small = F.adaptive_avg_pool2d(xg[sel], (r, r))
        small = torch.where(quant[sel], (small * 16).round() / 16, small)
        up_n = F.interpolate(small, size=(h, w), mode="nearest")
        up_b = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        out[sel] = torch.where(nearest[sel].view(-1, 1, 1, 1), up_n, up_b)
    return out.clamp(0, 1)


def _dilate(t: torch.Tensor, k: int) -> torch.Tensor:
    return F.max_pool2d(t, k, stride=1, padding=k // 2)


def fam_stroke(x: torch.Tensor, g, s: float) -> torch.Tensor:
    b = x.shape[0]
    lum = _luma(x)
    bright = (lum.mean((1, 2, 3)) > _border_mean(lum).flatten()).view(b, 1, 1, 1)  # light-on-dark digits
    thicken = _rand((b, 1, 1, 1), g, x) < 0.6
    twice = (_rand((b, 1, 1, 1), g, x) < 0.5 * s) & thicken
    k = 3

    def grow(t: torch.Tensor) -> torch.Tensor:  # grow the foreground (its polarity per image)
        return torch.where(bright, _dilate(t, k), -_dilate(-t, k))

    def shrink(t: torch.Tensor) -> torch.Tensor:
        return torch.where(bright, -_dilate(-t, k), _dilate(t, k))

    grown, shrunk = grow(x), shrink(x)
    # thinning must not erase thin strokes: fall back to thickening where less than 40 % of the shape survives
    def contrast(t: torch.Tensor) -> torch.Tensor:
        lum_t = _luma(t)
        return (lum_t - _border_mean(lum_t)).abs().sum((1, 2, 3))

    kept = contrast(shrunk) / contrast(x).clamp_min(1e-6)
    thicken = thicken | (kept < 0.4).view(b, 1, 1, 1)
    once = torch.where(thicken, grown, shrunk)
    two = grow(once)  # only thickening goes twice: eroding twice erases thin strokes
    out = torch.where(twice, two, once)
    # a bolder look for thick strokes: a touch of blur so the square max-pool corners disappear
    return _gaussian_blur(out, g, sigma=(0.3, 0.8), p=0.5, kernel_size=5)


def fam_elastic(x: torch.Tensor, g, s: float) -> torch.Tensor:
    b, c, h, w = x.shape
    cells = 4
    disp = _randn((b, 2, cells, cells), g, x) * (0.03 + 0.05 * s)
    disp = F.interpolate(disp, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).unsqueeze(0).expand(b, 2, 3)
    base = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    out = F.grid_sample(x, base + disp, mode="bilinear", padding_mode="border", align_corners=False)
    return _affine(out, g, degrees=8 + 12 * s, scale=(1 - 0.25 * s, 1 + 0.15 * s), shear=5 + 10 * s,
                   translate=0.04 * s, p=1.0)


def fam_fourier(x: torch.Tensor, g, s: float) -> torch.Tensor:
    b, c, h, w = x.shape
    xr = _as_rgb(x)
    tex = _texture(b, 3, h, w, g, x)
    fx, ft = torch.fft.fft2(xr), torch.fft.fft2(tex)
    amp, pha = fx.abs(), torch.angle(fx)
    lam = _uniform((b, 1, 1, 1), 0.3 + 0.3 * s, 0.6 + 0.4 * s, g, x)
    amp_t = ft.abs()
    # keep the DC/very low frequencies of the target texture too: a different mean colour
    mixed = (1 - lam) * amp + lam * amp_t * (amp.mean((2, 3), keepdim=True) / amp_t.mean((2, 3), keepdim=True)
                                              .clamp_min(1e-6))
    out = torch.fft.ifft2(torch.polar(mixed, pha)).real
    out = _minmax(out, dims=(2, 3))
    return _back(out, x)


def fam_edges(x: torch.Tensor, g, s: float) -> torch.Tensor:
    b, _, h, w = x.shape
    sh = shape_map(x)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=x.device, dtype=x.dtype).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(sh, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(sh, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    e = _minmax((gx ** 2 + gy ** 2).sqrt())
    e = (e * _uniform((b, 1, 1, 1), 1.0, 2.5, g, x)).clamp(0, 1)
    fg, bg = _contrasting(b, g, x, min_diff=0.5)
    out = bg.view(b, 3, 1, 1) + e * (fg - bg).view(b, 3, 1, 1)
    return _back(out, x)


FAMILIES: dict[str, Callable[[torch.Tensor, Any, float], torch.Tensor]] = {
    "invert": fam_invert, "colour": fam_colour, "render": fam_render, "background": fam_background,
    "texture": fam_texture, "blur_noise": fam_blur_noise, "randconv": fam_randconv, "adain": fam_adain,
    "lowres": fam_lowres, "stroke": fam_stroke, "elastic": fam_elastic, "fourier": fam_fourier,
    "edges": fam_edges,
}


def neighbour_families() -> list[str]:
    """Names of the neighbour families, in a fixed order (family indices refer to it)."""
    return list(FAMILIES)


# ------------------------------------------------------------------------------------------ config


@dataclass
class NeighbourConfig:
    """Which neighbour families to draw from and how strong (each field is a CLI flag)."""

    families: str = field(default="all", metadata={"help": "comma-separated families, or 'all' (see "
                                                    "neighbour_families())"})
    strength: float = field(default=1.0, metadata={"help": "strength of every family in (0, 1]"})
    compose_p: float = field(default=0.3, metadata={"help": "probability that an image gets a second, "
                                                    "different family on top of its first"})

    def __post_init__(self) -> None:
        check_range("strength", self.strength, 0, 1, low_open=True)
        check_range("compose_p", self.compose_p, 0, 1)
        self.family_list()  # validate names now

    def family_list(self) -> list[str]:
        if self.families.strip() in ("", "all"):
            return neighbour_families()
        names = [f.strip() for f in self.families.split(",") if f.strip()]
        for f in names:
            if f not in FAMILIES:
                raise UnknownChoiceError("neighbour family", f, FAMILIES)
        if not names:
            raise DomainlockError("no neighbour family selected")
        return list(dict.fromkeys(names))


def apply_family(name: str, x: torch.Tensor, generator: torch.Generator | None = None,
                 strength: float = 1.0) -> torch.Tensor:
    """Apply one family to every image of ``x`` (``[B, C, H, W]`` in [0, 1])."""
    if name not in FAMILIES:
        raise UnknownChoiceError("neighbour family", name, FAMILIES)
    _check_batch(x)
    return FAMILIES[name](x, generator, float(strength)).clamp(0, 1).to(x.dtype)


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise DomainlockError(f"neighbours need a [B, C, H, W] batch with C = 1 or 3, got {tuple(x.shape)}")


def make_neighbours(x: torch.Tensor, *, generator: torch.Generator | None, cfg: NeighbourConfig | None = None,
                    return_families: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Perturbed copies of ``x`` (same shape, in [0, 1]): each image gets a random family from
    ``cfg.family_list()`` (and, with probability ``cfg.compose_p``, a second different one on top).

    Deterministic given the generator's state. With ``return_families`` also returns the index (into
    :func:`neighbour_families`) of each image's first family, ``[B]`` int64.
    """
    cfg = cfg or NeighbourConfig()
    _check_batch(x)
    names = cfg.family_list()
    all_names = neighbour_families()
    b = x.shape[0]
    x = x.detach()
    first = _randint(b, len(names), generator, x).cpu()
    second = _randint(b, max(1, len(names) - 1), generator, x).cpu()
    second = torch.where(second >= first, second + 1, second) if len(names) > 1 else first
    compose = (_rand((b,), generator, x).cpu() < cfg.compose_p) & (second != first)
    out = x.clone()
    for pick, active in ((first, torch.ones(b, dtype=torch.bool)), (second, compose)):
        for i, name in enumerate(names):
            sel = ((pick == i) & active).nonzero().flatten()
            if len(sel) == 0:
                continue
            sel_d = sel.to(x.device)
            out[sel_d] = apply_family(name, out[sel_d], generator, cfg.strength)
    if return_families:
        idx = torch.tensor([all_names.index(n) for n in names], dtype=torch.long)[first]
        return out, idx
    return out


def save_neighbour_grid(x: torch.Tensor, path, *, generator: torch.Generator | None = None,
                        cfg: NeighbourConfig | None = None, per_family: int = 10) -> list[str]:
    """PNG grid: the first row is ``x[:per_family]``, then one row per family applied to the same images;
    each cell is labelled with its family's name. Returns the row names."""
    from ..data.grid import save_grid

    cfg = cfg or NeighbourConfig()
    _check_batch(x)
    xs = x[:per_family].detach().cpu().float()
    k = len(xs)
    rows, labels = [xs], [0] * k
    names = ["source", *cfg.family_list()]
    for j, name in enumerate(names[1:], start=1):
        rows.append(apply_family(name, xs, generator, cfg.strength))
        labels += [j] * k
    save_grid(torch.cat(rows), path, nrow=k, y=torch.tensor(labels), classes=names, upscale=2)
    return names


# ------------------------------------------------------------------- model-level feature statistics


def perturb_feature_stats(h: torch.Tensor, generator: torch.Generator | None = None,
                          strength: float = 1.0, p: float = 1.0) -> torch.Tensor:
    """DSU/AdaIN-style perturbation of intermediate activations ``h`` (``[B, C, ...]``, at least 3-D):
    each instance's per-channel mean and std are replaced by ``μ + ε₁·strength·Σ_μ`` and
    ``σ + ε₂·strength·Σ_σ`` (ε ~ N(0, 1); Σ = the spread of μ, σ across the batch), on a share ``p`` of the
    images. Differentiable; meant for forward hooks (see :func:`feature_stat_hooks`)."""
    if h.dim() < 3:
        return h
    b, c = h.shape[:2]
    dims = tuple(range(2, h.dim()))
    view = (b, c) + (1,) * len(dims)
    mu = h.mean(dims, keepdim=True)
    sd = (h.var(dims, keepdim=True, unbiased=False) + 1e-6).sqrt()
    s_mu = (mu.var(0, keepdim=True, unbiased=False) + 1e-6).sqrt() if b > 1 else mu.abs() * 0.1 + 1e-3
    s_sd = (sd.var(0, keepdim=True, unbiased=False) + 1e-6).sqrt() if b > 1 else sd * 0.1
    new_mu = mu + _randn(view, generator, h) * strength * s_mu
    new_sd = (sd + _randn(view, generator, h) * strength * s_sd).clamp_min(1e-3)
    out = (h - mu) / sd * new_sd + new_mu
    mask = (_rand((b,), generator, h) < p).view((b,) + (1,) * (h.dim() - 1))
    return torch.where(mask, out, h)


def feature_stat_hooks(modules: Sequence[nn.Module], generator: torch.Generator | None = None,
                       strength: float = 1.0, p: float = 1.0) -> list[torch.utils.hooks.RemovableHandle]:
    """Register forward hooks that pass each module's output through :func:`perturb_feature_stats`.
    Returns the handles; call ``.remove()`` on each to switch the perturbation off."""
    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return perturb_feature_stats(output, generator, strength, p)

    return [m.register_forward_hook(hook) for m in modules]
