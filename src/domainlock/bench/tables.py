"""What the result-table scripts (``scripts/baselines_table.py``, ``map_table.py``, ``slc_table.py``) share:
number formatting, pair parsing, the source-model path, the progress line of a cached run, and the
columns every protection table starts with (pair, seed, source, target, ST-D, the two unseen domains).

Each script keeps its own records, extra columns and prose; these helpers only keep the common parts of
the generated markdown identical across tables.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..metrics import st_d

#: the columns :func:`row_cells` and :func:`mean_cells` fill, as a markdown header (callers add their own)
ROW_HEADER = ("| pair | seed | source before → after | target before → after | ST-D (retain / drop) | "
              "unseen domain A | unseen domain B |")


def add_protect_args(ap: argparse.ArgumentParser, out: str) -> None:
    """The options of a table that protects each source model per pair and seed: the rows, the source models,
    the markdown (its JSON cache lies beside it), the data and how to compute."""
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--pairs", default="all", help="comma-separated source:target pairs, or 'all' (the 12)")
    ap.add_argument("--arch", default="digitnet")
    ap.add_argument("--runs", type=Path, default=Path("runs/sources"))
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable timings on a "
                    "shared machine)")


def add_cache_args(ap: argparse.ArgumentParser) -> None:
    """``--force`` and ``--render-only`` of a table whose records are cached in its JSON."""
    ap.add_argument("--force", action="store_true", help="redo records already in the JSON")
    ap.add_argument("--render-only", action="store_true", help="only regenerate the markdown from the JSON")


def pct(v: float | None) -> str:
    """An accuracy in [0, 1] as a percentage with one decimal; ``—`` for a missing or NaN value."""
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def mean(vals: Iterable[float | None]) -> float:
    """The mean of the values that are neither ``None`` nor NaN (NaN when none is left)."""
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def utc_stamp() -> str:
    """The current time as the tables record it (``2024-01-31 12:00 UTC``)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def parse_names(spec: str, valid: Iterable[str], what: str) -> list[str]:
    """``a,b,...`` as a list of names from ``valid``; an unknown one exits naming it and the valid choices."""
    valid = list(valid)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        if n not in valid:
            raise SystemExit(f"unknown {what} {n!r}; valid: {', '.join(valid)}")
    return names


def parse_pairs(spec: str, domains: Sequence[str]) -> list[tuple[str, str]]:
    """``source:target,...`` as pairs of ``domains``, or every ordered pair for ``all``; a bad pair exits."""
    if spec == "all":
        return [(s, t) for s in domains for t in domains if s != t]
    pairs = []
    for p in spec.split(","):
        s, _, t = p.partition(":")
        if s not in domains or t not in domains or s == t:
            raise SystemExit(f"bad pair {p!r}; domains: {', '.join(domains)}")
        pairs.append((s, t))
    return pairs


def in_domain_order(pairs: Iterable[tuple[str, str | None]], domains: Sequence[str]
                    ) -> list[tuple[str, str | None]]:
    """``(source, target)`` pairs sorted by the order of ``domains``; a ``None`` target (a run that reads no
    target) comes first."""
    return sorted(pairs, key=lambda p: (domains.index(p[0]), -1 if p[1] is None else domains.index(p[1])))


def typed_value(default: Any, text: str) -> Any:
    """``text`` as the type of ``default`` (a ``--set key=value`` override of a config field)."""
    typ = type(default)
    return text.lower() in ("1", "true", "yes") if typ is bool else typ(text)


def non_default_hparams(defaults: dict[str, Any], recorded: Sequence[dict[str, Any]],
                        skip: Iterable[str] = ()) -> dict[str, Any]:
    """The hyper-parameters whose recorded value differs from ``defaults`` (a method's *current* defaults)
    in any of the ``recorded`` dicts: one value, or ``{"values": [...], "rows_at_default": k}`` when the
    rows disagree, so rows computed under older defaults say so instead of passing for the current ones.
    A field a record lacks counts as default; ``skip`` names per-run fields such as paths."""
    skip = set(skip)
    seen: dict[str, set[str]] = {}
    for hp in recorded:
        for k, v in hp.items():
            if k in defaults and k not in skip and v != defaults[k]:
                seen.setdefault(k, set()).add(json.dumps(v))
    out: dict[str, Any] = {}
    for k, vals in sorted(seen.items()):
        vs = sorted(json.loads(v) for v in vals)
        at_default = sum(1 for hp in recorded if hp.get(k, defaults[k]) == defaults[k])
        out[k] = vs[0] if len(vs) == 1 and not at_default else {"values": vs, "rows_at_default": at_default}
    return out


def method_non_default_hparams(method: str, recorded: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:func:`non_default_hparams` against the current defaults of ``method``'s hyper-parameter class
    (the pseudo-source path is per run, not a setting)."""
    import dataclasses

    from ..methods import get_method

    return non_default_hparams(dataclasses.asdict(get_method(method).Hparams()), recorded, skip=("pseudo_source",))


def source_model(runs: Path, arch: str, src: str, seed: int) -> Path:
    """The trained source model ``<runs>/<arch>-<src>-s<seed>``; exits when it is missing."""
    art = runs / f"{arch}-{src}-s{seed}"
    if not (art / "card.json").exists():
        raise SystemExit(f"missing source model {art}; train it first (scripts/before_protection.py)")
    return art


def progress_line(name: str, src: str, tgt: str | None, seed: int, rec: dict[str, Any]) -> str:
    """One finished protection: source, target and unseen-domain accuracy before → after, and its time."""
    acc = rec["accuracy"]
    msg = f"{name} {src}→{tgt or '(none)'} s{seed}: source {pct(acc[src]['before'])}→{pct(acc[src]['after'])}"
    if tgt:
        msg += f" target {pct(acc[tgt]['before'])}→{pct(acc[tgt]['after'])}"
    return msg + " " + " ".join(f"{d} {pct(acc[d]['before'])}→{pct(acc[d]['after'])}"
                                for d in rec["unseen"]) + f" ({rec['wall_time_s']:.1f} s)"


def st_d_entry(s0: float, s1: float, t0: float, t1: float, chance: float) -> dict[str, Any]:
    """ST-D of one row as the tables store it (NaN as ``None``)."""
    r = st_d(s0, s1, t0, t1, chance=chance)
    return {"st_d": None if math.isnan(r.st_d) else r.st_d, "retain_s": r.retain_s,
            "drop_t": None if math.isnan(r.drop_t) else r.drop_t, "trivial": r.trivial}


def row_cells(r: dict[str, Any]) -> str:
    """The :data:`ROW_HEADER` cells of a row (``src``, ``tgt``, ``seed``, accuracies ``s0 s1 t0 t1``, ``std``
    from :func:`st_d_entry`, ``unseen``: domain -> before/after), ending in ``|``."""
    std = r["std"]
    st = "trivial" if std["trivial"] else f"{std['st_d']:.3f} ({std['retain_s']:.3f} / {std['drop_t']:.3f})"
    un = [f"{d}: {pct(a['before'])} → {pct(a['after'])}" for d, a in r["unseen"].items()]
    un += ["—"] * (2 - len(un))
    pair = f"{r['src']} → {r['tgt']}" + (" (trivial)" if std["trivial"] else "")
    return (f"| {pair} | {r['seed']} | {pct(r['s0'])} → {pct(r['s1'])} | {pct(r['t0'])} → {pct(r['t1'])}"
            f" | {st} | {un[0]} | {un[1]} |")


def mean_cells(rows: list[dict[str, Any]]) -> str:
    """The :data:`ROW_HEADER` cells of the mean row of ``rows`` (ST-D over the non-trivial ones), ending in
    ``|``."""
    nt = [r for r in rows if not r["std"]["trivial"]]
    unseen = [a for r in rows for a in r["unseen"].values()]
    return (f"| **mean** ({len(rows)} rows, ST-D over {len(nt)} non-trivial) | | "
            f"{pct(mean(r['s0'] for r in rows))} → {pct(mean(r['s1'] for r in rows))} | "
            f"{pct(mean(r['t0'] for r in rows))} → {pct(mean(r['t1'] for r in rows))} | "
            f"**{mean(r['std']['st_d'] for r in nt):.3f}** | "
            f"mean unseen: {pct(mean(a['before'] for a in unseen))} → {pct(mean(a['after'] for a in unseen))} | |")
