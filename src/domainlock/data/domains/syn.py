"""``syn``: synthetic digits rendered from TrueType/OpenType fonts, approximating SynDigits
(Ganin & Lempitsky, 2015), which were made the same way to look like SVHN house-number crops.

Fonts: matplotlib's bundled ttfs and every ``.ttf``/``.otf`` under ``/usr/share/fonts`` (plus folders
in ``$DOMAINLOCK_FONT_DIRS``, ``os.pathsep``-separated), keeping only fonts whose ten digit glyphs
render, differ from each other and have similar heights (symbol/placeholder fonts are dropped);
duplicates (same file content, or the same face name, e.g. DejaVu in matplotlib and in the system)
count once, matplotlib's copy first. The list is recorded in the manifest: the data are deterministic
for a given seed *and* font list.

Each image (drawn at 64x64, then downsampled to 32x32 with antialiasing): a random background (solid,
linear gradient, or smooth colour-noise texture), the label digit in a random font, size, rotation,
shear, aspect and position jitter, in a foreground colour with enough luminance contrast, optionally
with an outline and a drop shadow, often flanked by distractor digits cut by the border (as in
SynDigits/SVHN crops), then Gaussian blur and pixel noise. Classes are balanced: 12,000 images split
stratified 8400/1200/2400.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..common import (
    DIGIT_CLASSES,
    BuildContext,
    BuildResult,
    apply_splits,
    progress_bar,
    resize,
    stratified_split,
    to_uint8_rgb,
)

NAME = "syn"
VERSION = 1
SEEDED = True  # does the build depend on the seed?
DESCRIPTION = "SynDigits-like: digits rendered from TrueType fonts on coloured backgrounds (approximation)"
N_IMAGES = 12000
CANVAS = 64          # render resolution (2x the final 32)
SYSTEM_FONT_DIRS = ("/usr/share/fonts",)
_DENY = ("lastresort", "stixsiz", "stixnonuni", "cmex", "cmsy", "cmmi", "display", "symbol", "emoji",
         "dingbat", "wingding", "webding")


def _candidate_files() -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    try:
        import matplotlib

        mpl = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        out += [("matplotlib", p) for p in sorted(mpl.glob("*.ttf"))]
    except ImportError:
        pass
    extra = os.environ.get("DOMAINLOCK_FONT_DIRS", "").split(os.pathsep)
    dirs = list(SYSTEM_FONT_DIRS) + [d for d in extra if d]
    for d in dirs:
        root = Path(d)
        if root.is_dir():
            files = [p for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf") and p.is_file()]
            out += [("system", p) for p in sorted(files)]
    return out


def _digits_ok(path: Path) -> tuple[bool, str]:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype(str(path), 40)
    except OSError:
        return False, ""
    masks, heights = [], []
    for d in "0123456789":
        im = Image.new("L", (64, 64))
        ImageDraw.Draw(im).text((32, 32), d, font=font, fill=255, anchor="mm")
        a = np.asarray(im) > 127
        masks.append(a.tobytes())
        if a.sum() < 20:
            return False, ""
        x0, y0, x1, y1 = font.getbbox(d)
        heights.append(y1 - y0)
    if len(set(masks)) < 10 or max(heights) > 1.35 * min(heights):
        return False, ""
    fam, style = font.getname()
    return True, f"{fam} {style}".strip()


def discover_fonts() -> list[dict]:
    """Usable digit fonts here: ``[{"file", "name", "sha256", "origin"}]``, deduplicated by content and
    face name (first found wins: matplotlib's, then the system's), sorted by name."""
    seen: set[str] = set()
    names: set[str] = set()
    fonts = []
    for origin, path in _candidate_files():
        if any(k in path.name.lower() for k in _DENY):
            continue
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if sha in seen:
            continue
        ok, name = _digits_ok(path)
        if not ok or name in names:  # same face in two places (e.g. DejaVu in matplotlib and system)
            continue
        seen.add(sha)
        names.add(name)
        fonts.append({"file": str(path), "name": name, "sha256": sha, "origin": origin})
    fonts.sort(key=lambda f: (f["name"], f["sha256"]))
    return fonts


def available() -> tuple[bool, str]:
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False, "syn needs the PyPI package pillow: pip install pillow"
    if not _candidate_files():
        return False, ("syn needs TrueType fonts: pip install matplotlib (bundles DejaVu) or "
                       "apt-get install fonts-dejavu-core")
    return True, "fonts from matplotlib and /usr/share/fonts, rendered with pillow"


# ----------------------------------------------------------------------------------------------- render

def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """HSV-sampled RGB: any hue, saturation skewed low (SVHN-like muted colours), value 0.05..1."""
    import colorsys

    h, sat, v = rng.random(), rng.random() ** 1.5, rng.uniform(0.05, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, sat, v), dtype=np.float32)


def _luminance(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _background(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    from PIL import Image

    kind = rng.random()
    S = CANVAS
    if kind < 0.35:  # solid
        bg = np.broadcast_to(base, (S, S, 3)).copy()
    elif kind < 0.65:  # linear gradient towards a nearby colour
        other = np.clip(base + rng.normal(0, 0.25, 3), 0, 1)
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / (S - 1) - 0.5
        t = np.clip(0.5 + (np.cos(ang) * xx + np.sin(ang) * yy) * rng.uniform(0.8, 1.6), 0, 1)[..., None]
        bg = base * (1 - t) + other * t
    else:  # smooth colour-noise texture (walls, plates, bokeh)
        k = int(rng.integers(2, 9))
        low = np.clip(base + rng.normal(0, rng.uniform(0.03, 0.15), (k, k, 3)), 0, 1)
        im = Image.fromarray((low * 255).astype(np.uint8), "RGB").resize((S, S), Image.BILINEAR)
        bg = np.asarray(im, dtype=np.float32) / 255.0
        if rng.random() < 0.4:  # fine grain / stripes
            grain = rng.normal(0, rng.uniform(0.02, 0.06), (S, S, 1))
            bg = bg + grain
    return np.clip(bg, 0, 1).astype(np.float32)


def _fg_colour(rng: np.random.Generator, bg_lum: float) -> np.ndarray:
    for _ in range(50):
        c = _random_colour(rng)
        if rng.random() < 0.25:  # white/black/grey digits are common on house numbers
            c = np.full(3, rng.choice([rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)]))
        if abs(_luminance(c) - bg_lum) >= 0.3:
            return c.astype(np.float32)
    return np.full(3, 0.0 if bg_lum > 0.5 else 1.0, dtype=np.float32)


class _Renderer:
    def __init__(self, fonts: list[dict]):
        self.fonts = fonts
        self._cache: dict[tuple[int, int], object] = {}

    def font(self, i: int, size: int):
        from PIL import ImageFont

        key = (i, size)
        if key not in self._cache:
            self._cache[key] = ImageFont.truetype(self.fonts[i]["file"], size)
        return self._cache[key]

    def render(self, label: int, rng: np.random.Generator) -> np.ndarray:
        """One ``[64, 64, 3]`` float image of digit ``label``."""
        from PIL import Image, ImageDraw, ImageFilter

        S = CANVAS
        fi = int(rng.integers(len(self.fonts)))
        size = int(rng.integers(34, 57))
        font = self.font(fi, size)
        stroke = int(rng.integers(1, 4)) if rng.random() < 0.2 else 0
        # layout on a wide canvas: label centred at (cx, cy), neighbours on the same baseline
        W, H = 4 * S, 2 * S
        cx, cy = W // 2, H // 2
        lab = str(label)
        x0, y0, x1, y1 = font.getbbox(lab, anchor="ls")
        ox = cx - (x0 + x1) / 2
        base_y = cy - (y0 + y1) / 2
        chars = [(ox, lab)]
        gap = rng.uniform(-0.04, 0.3) * size
        if rng.random() < 0.75:
            n_left = int(rng.integers(0, 3))
            n_right = int(rng.integers(0, 3))
            x = ox
            for _ in range(n_left):
                ch = str(rng.integers(10))
                x -= font.getlength(ch) + gap
                chars.append((x, ch))
            x = ox + font.getlength(lab)
            for _ in range(n_right):
                ch = str(rng.integers(10))
                chars.append((x + gap, ch))
                x += gap + font.getlength(ch)
        fill_m = Image.new("L", (W, H))
        d = ImageDraw.Draw(fill_m)
        for x, ch in chars:
            d.text((x, base_y), ch, font=font, fill=255, anchor="ls")
        stroke_m = None
        if stroke:
            stroke_m = Image.new("L", (W, H))
            d2 = ImageDraw.Draw(stroke_m)
            for x, ch in chars:
                d2.text((x, base_y), ch, font=font, fill=255, anchor="ls", stroke_width=stroke,
                        stroke_fill=255)
        # affine: rotation, shear, horizontal aspect, scale; output centre jittered
        th = np.deg2rad(np.clip(rng.normal(0, 7), -20, 20))
        sh = float(np.clip(rng.normal(0, 0.12), -0.3, 0.3))
        asp = float(rng.uniform(0.8, 1.15))
        A = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ np.array([[asp, sh], [0, 1.0]])
        Ai = np.linalg.inv(A)
        jx, jy = rng.uniform(-0.07, 0.07, 2) * S

        def warp(m: Image.Image, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
            ocx, ocy = S / 2 + jx + dx, S / 2 + jy + dy
            c = cx - (Ai[0, 0] * ocx + Ai[0, 1] * ocy)
            f = cy - (Ai[1, 0] * ocx + Ai[1, 1] * ocy)
            out = m.transform((S, S), Image.AFFINE, (Ai[0, 0], Ai[0, 1], c, Ai[1, 0], Ai[1, 1], f),
                              resample=Image.BILINEAR)
            return np.asarray(out, dtype=np.float32)[..., None] / 255.0

        base = _random_colour(rng)
        bg = _background(rng, base)
        bg_lum = _luminance(bg.reshape(-1, 3).mean(0))
        fg = _fg_colour(rng, bg_lum)
        img = bg
        if rng.random() < 0.2:  # drop shadow
            sdx, sdy = rng.uniform(-3, 3, 2)
            sm = warp(fill_m if stroke_m is None else stroke_m, sdx, sdy) * rng.uniform(0.4, 0.9)
            img = img * (1 - sm)
        if stroke_m is not None:
            edge_c = _fg_colour(rng, _luminance(fg))
            sm = warp(stroke_m)
            img = img * (1 - sm) + edge_c * sm
        fm = warp(fill_m)
        if rng.random() < 0.3:  # slight shading across the glyph
            fg = np.clip(fg[None, None, :] * (1 + rng.uniform(-0.25, 0.25)
                         * (np.linspace(-1, 1, S, dtype=np.float32)[:, None, None])), 0, 1)
        img = img * (1 - fm) + fg * fm
        if rng.random() < 0.15:  # uneven illumination
            yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S - 0.5
            img = img * (1 - rng.uniform(0.1, 0.5) * (xx * rng.normal() + yy * rng.normal()) ** 2)[..., None]
        img = np.clip(img, 0, 1)
        blur = rng.uniform(0.0, 2.0) if rng.random() < 0.7 else 0.0
        if blur > 0.2:
            pil = Image.fromarray((img * 255).astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(blur))
            img = np.asarray(pil, dtype=np.float32) / 255.0
        return img


def build(ctx: BuildContext, n: int | None = None) -> BuildResult:
    n = int(n or N_IMAGES)
    fonts = discover_fonts()
    if not fonts:
        from ...errors import DataUnavailableError

        raise DataUnavailableError("syn found no usable digit font; pip install matplotlib (bundles DejaVu) "
                                   "or apt-get install fonts-dejavu-core")
    renderer = _Renderer(fonts)
    y = np.tile(np.arange(10, dtype=np.int64), -(-n // 10))[:n]
    y = y[np.random.default_rng([ctx.seed, 1]).permutation(n)]
    out = np.empty((n, 3, 32, 32), dtype=np.uint8)
    chunk = 500
    bar = progress_bar(range(0, n, chunk), enabled=ctx.progress, desc="syn: rendering", unit="chunk")
    for start in bar:
        stop = min(n, start + chunk)
        imgs = np.empty((stop - start, CANVAS, CANVAS, 3), dtype=np.float32)
        noise_sd = np.empty(stop - start, dtype=np.float32)
        for j, i in enumerate(range(start, stop)):
            rng = np.random.default_rng([ctx.seed, 2, i])
            imgs[j] = renderer.render(int(y[i]), rng)
            noise_sd[j] = rng.uniform(0.0, 0.04)
        small = resize(imgs.transpose(0, 3, 1, 2), 32)
        nrng = np.random.default_rng([ctx.seed, 3, start])
        small = small + nrng.standard_normal(small.shape).astype(np.float32) * noise_sd[:, None, None, None]
        out[start:stop] = to_uint8_rgb(np.clip(small, 0, 1))
    parts = stratified_split(y)
    source = {"package": "fonts (matplotlib + system)", "version": f"builder {VERSION}",
              "how": "rendered with pillow ImageFont"}
    raw = {f["file"]: f["sha256"] for f in fonts}
    return BuildResult(apply_splits(out, y, parts), list(DIGIT_CLASSES), source, raw,
                       {"fonts": fonts, "n_fonts": len(fonts),
                        "note": "approximation of SynDigits (Ganin & Lempitsky 2015), rendered locally"})
