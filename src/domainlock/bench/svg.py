"""Small inline SVG charts for the benchmark report: no plotting library, no scripts, no external fonts.

* :func:`line_panel` — accuracy (0–100 %) against the number of target samples on a log-x axis whose ticks are
  the shot values (labels that would collide are thinned, tick marks stay);
* :func:`hbars` — horizontal bars with an optional whisker (min–max) and a value label per bar;
* :func:`heat_color` — the report's sequential colour scale (pale yellow → dark red, ColorBrewer YlOrRd, which
  stays ordered in lightness for colour-blind readers) and :func:`ink` — black or white text on a colour.

Series colours are from the Okabe–Ito palette (distinguishable under the common colour-vision deficiencies);
every series also differs by dash pattern and marker so the charts read in grey print too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

#: Okabe–Ito colours
VERMILLION, BLUE, GREY, GREEN, ORANGE = "#D55E00", "#0072B2", "#6b6b6b", "#009E73", "#E69F00"
_YLORRD = ("#ffffb2", "#fed976", "#feb24c", "#fd8d3c", "#f03b20", "#bd0026")
FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif\""


def _hex(c: str) -> tuple[int, int, int]:
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def heat_color(t: float | None) -> str:
    """The colour of ``t`` in [0, 1] (clipped; ``None``: light grey) on the report's sequential scale."""
    if t is None or math.isnan(t):
        return "#eeeeee"
    t = min(1.0, max(0.0, t)) * (len(_YLORRD) - 1)
    i = min(int(t), len(_YLORRD) - 2)
    a, b, f = _hex(_YLORRD[i]), _hex(_YLORRD[i + 1]), t - i
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b, strict=True))


def ink(color: str) -> str:
    """Black or white, whichever contrasts more with ``color`` (WCAG relative luminance)."""
    def lin(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in _hex(color))
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#000000" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "#ffffff"


def gradient_stops() -> str:
    """The colour scale as a CSS ``linear-gradient`` argument list (for the legend bar)."""
    return ", ".join(f"{c} {100 * i / (len(_YLORRD) - 1):.0f}%" for i, c in enumerate(_YLORRD))


@dataclass(frozen=True)
class Series:
    """One line of a :func:`line_panel`: values in [0, 1] (``None`` leaves a gap)."""

    label: str
    values: Sequence[float | None]
    color: str
    dash: str = ""
    marker: str = "circle"


def _marker(kind: str, x: float, y: float, color: str) -> str:
    if kind == "square":
        return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{color}"/>'
    if kind == "triangle":
        return (f'<path d="M{x:.1f},{y - 4:.1f} L{x + 3.6:.1f},{y + 2.6:.1f} L{x - 3.6:.1f},{y + 2.6:.1f} Z" '
                f'fill="{color}"/>')
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>'


def legend_swatch(s: Series, width: int = 34) -> str:
    """A tiny inline SVG of a series' line and marker, for an HTML legend."""
    dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
    return (f'<svg width="{width}" height="12" aria-hidden="true"><line x1="2" y1="6" x2="{width - 2}" y2="6" '
            f'stroke="{s.color}" stroke-width="2"{dash}/>{_marker(s.marker, width / 2, 6, s.color)}</svg>')


def line_panel(title: str, subtitle: str, shots: Sequence[int], series: Sequence[Series], *,
               chance: float | None = None, width: int = 300, height: int = 210) -> str:
    """Accuracy vs ``shots`` (log-x; every shot value is a tick) for each series; y from 0 to 100 %."""
    left, right, top, bottom = 40, 18, 42, 34
    w, h = width - left - right, height - top - bottom
    lo, hi = math.log(shots[0]), math.log(shots[-1])

    def x(n: float) -> float:
        return left + (w / 2 if hi == lo else (math.log(n) - lo) / (hi - lo) * w)

    def y(v: float) -> float:
        return top + (1 - v) * h

    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{escape(title)}" {FONT}>',
           f'<text x="{left}" y="15" font-size="12.5" font-weight="600" fill="#111">{escape(title)}</text>',
           f'<text x="{left}" y="30" font-size="11" fill="#444">{escape(subtitle)}</text>']
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 5}" y="{y(v) + 3.5:.1f}" font-size="10" text-anchor="end" '
                   f'fill="#555">{100 * v:.0f}</text>')
    if chance is not None:
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y(chance):.1f}" y2="{y(chance):.1f}" stroke="#999" '
                   f'stroke-dasharray="1 3"/><text x="{left + w - 2}" y="{y(chance) - 3:.1f}" font-size="9" '
                   f'text-anchor="end" fill="#777">chance</text>')
    last = -1e9
    for n in shots:
        out.append(f'<line x1="{x(n):.1f}" x2="{x(n):.1f}" y1="{top + h}" y2="{top + h + 4}" stroke="#555"/>')
        if x(n) - last >= 8 + 6 * len(str(n)) or n == shots[-1] and x(n) - last >= 3 * len(str(n)) + 6:
            out.append(f'<text x="{x(n):.1f}" y="{top + h + 15}" font-size="10" text-anchor="middle" '
                       f'fill="#333">{n}</text>')
            last = x(n)
    out.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" stroke="#555"/>')
    out.append(f'<text x="{left + w / 2}" y="{height - 3}" font-size="10" text-anchor="middle" fill="#555">'
               f'target samples n (log scale)</text>')
    out.append(f'<text x="11" y="{top + h / 2}" font-size="10" text-anchor="middle" fill="#555" '
               f'transform="rotate(-90 11 {top + h / 2})">target acc. %</text>')
    for s in series:
        pts = [(x(n), y(v)) for n, v in zip(shots, s.values, strict=True) if v is not None]
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        if len(pts) > 1:
            path = " ".join(f"{'M' if i == 0 else 'L'}{px:.1f},{py:.1f}" for i, (px, py) in enumerate(pts))
            out.append(f'<path d="{path}" fill="none" stroke="{s.color}" stroke-width="2"{dash}>'
                       f'<title>{escape(s.label)}</title></path>')
        out += [_marker(s.marker, px, py, s.color) for px, py in pts]
    out.append("</svg>")
    return "\n".join(out)


@dataclass(frozen=True)
class Bar:
    """One bar of :func:`hbars`: ``lo``/``hi`` draw a whisker; ``text`` is printed right of the bar."""

    label: str
    value: float | None
    text: str
    lo: float | None = None
    hi: float | None = None
    color: str = BLUE


def hbars(bars: Sequence[Bar], *, x_max: float, axis: str, ticks: Sequence[float], tick_fmt=str,
          width: int = 640, label_w: int = 130, text_w: int = 150, row_h: int = 24, title: str = "") -> str:
    """Horizontal bars from 0 to ``x_max`` with gridlines at ``ticks`` and the ``axis`` caption below; ``label_w``
    and ``text_w`` are the widths left of the axis (labels) and right of it (values)."""
    top = 26 if title else 8
    w = width - label_w - text_w
    height = top + row_h * len(bars) + 36

    def x(v: float) -> float:
        return label_w + max(0.0, min(v, x_max)) / x_max * w

    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{escape(title or axis)}" {FONT}>']
    if title:
        out.append(f'<text x="4" y="16" font-size="12.5" font-weight="600" fill="#111">{escape(title)}</text>')
    bottom = top + row_h * len(bars)
    for t in ticks:
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{bottom}" stroke="#e3e3e3"/>'
                   f'<text x="{x(t):.1f}" y="{bottom + 14}" font-size="10" text-anchor="middle" '
                   f'fill="#555">{escape(tick_fmt(t))}</text>')
    out.append(f'<text x="{label_w + w / 2}" y="{bottom + 30}" font-size="10" text-anchor="middle" '
               f'fill="#555">{escape(axis)}</text>')
    for i, b in enumerate(bars):
        cy = top + row_h * i + row_h / 2
        out.append(f'<text x="{label_w - 8}" y="{cy + 4:.1f}" font-size="11.5" text-anchor="end" '
                   f'fill="#222">{escape(b.label)}</text>')
        end = label_w
        if b.value is not None:
            end = x(b.value)
            out.append(f'<rect x="{label_w}" y="{cy - row_h * 0.3:.1f}" width="{max(end - label_w, 0.8):.1f}" '
                       f'height="{row_h * 0.6:.1f}" fill="{b.color}" rx="1.5"><title>{escape(b.label)}: '
                       f'{escape(b.text)}</title></rect>')
        if b.lo is not None and b.hi is not None and b.hi > b.lo:
            out.append(f'<path d="M{x(b.lo):.1f},{cy:.1f} H{x(b.hi):.1f} M{x(b.lo):.1f},{cy - 5:.1f} V{cy + 5:.1f} '
                       f'M{x(b.hi):.1f},{cy - 5:.1f} V{cy + 5:.1f}" stroke="#222" stroke-width="1.3" fill="none"/>')
            end = max(end, x(b.hi))
        out.append(f'<text x="{end + 6:.1f}" y="{cy + 4:.1f}" font-size="11" fill="#333" stroke="#fff" '
                   f'stroke-width="3" paint-order="stroke">{escape(b.text)}</text>')
    out.append(f'<line x1="{label_w}" x2="{label_w}" y1="{top}" y2="{bottom}" stroke="#555"/></svg>')
    return "\n".join(out)
