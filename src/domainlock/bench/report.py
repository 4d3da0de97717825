"""``domainlock report DIR --out R``: a benchmark folder's results as ``R/report.md`` and a self-contained
``R/report.html`` (styles and charts inline, nothing loaded from anywhere).

Sections, in both files: the header (suite, version, time, cell counts with every failed cell's error, the
machines seen, the nodes still to run), direct use per method (the mean over pairs, then each pair), the method ×
attack matrix with each method's worst case (on the pairs the attacks ran on), the fine-tuning learning curves
with their SLC-AUC (per run over pairs and seeds, then per pair), ST-D per method, per-layer mask sparsity, and
the cost of each method relative to training its source model (same-machine cells only). The numbers come from
:func:`domainlock.bench.report_data.collect`; the HTML from :mod:`domainlock.bench.report_html`.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from ..errors import DomainlockError
from ..utils.io import atomic_write_text
from .aggregate import run_summary
from .graph import DIRECT
from .report_data import (
    CAPTIONS,
    SECTIONS,
    ReportData,
    ba,
    basis_text,
    cell_label,
    cells_text,
    collect,
    excluded_groups,
    grid_text,
    matrix_scope_text,
    no_finetune_text,
    pair_text,
    pct,
    plural,
    pm,
    ratio,
    seconds,
    sparsity_pct,
    st_d_text,
)
from .report_pseudo import pseudo_md


def utc_stamp() -> str:
    """The current time as the report's header records it (``2024-01-31 12:00 UTC``)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def md_table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """A markdown table padded to column width (readable as plain text); columns in ``right`` align right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _unseen(row) -> str:
    return "; ".join(f"{d}: {ba(b, a)}" for d, (b, a) in row.unseen.items()) or "—"


def _header_md(d: ReportData, generated: str) -> list[str]:
    counts = cells_text(d)
    out = [f"# Benchmark report: {d.suite}", "",
           f"- **suite**: {d.suite}" + (f", from {d.origin}" if d.origin else ""),
           f"- **domainlock** {d.version} · generated {generated} · folder `{d.folder}`",
           f"- **cells**: {counts} · {grid_text(d)} · attacks: {', '.join(d.attacks)}",
           "- **machines** (host · device · threads: finished nodes): "
           + ("; ".join(f"{w}: {n}" for w, n in d.machines) or "—"),
           f"- **compute**: {d.compute}"]
    if d.not_done:
        out += ["", "Cells not done:", ""]
        out += [f"- {cell_label(c)}: {c['status']}" + (f" — {c['error']}" if c["error"] else "") for c in d.not_done]
    out += ["", "Contents: " + " · ".join(f"[{t}](#{a})" for a, t, _ in d.sections)]
    return out


def _sources_md(d: ReportData) -> list[str]:
    domains = list(dict.fromkeys(x for row in d.sources.values() for x in row))
    rows = [[src, str(max(s.n for s in row.values()))] + [pm(row[x]) if x in row else "—" for x in domains]
            for src, row in d.sources.items()]
    return [md_table(["source model", "models"] + [f"{x} %" for x in domains], rows,
                     right=set(range(1, len(domains) + 2)))] if rows else ["No source model finished."]


def _direct_summary_md(d: ReportData) -> list[str]:
    rows = []
    for run in d.runs:
        prs = d.direct.get(run) or []
        if prs:
            s = run_summary(prs)
            rows.append([run, str(len(prs)), str(s.seeds), ba(s.source_before, s.source_after),
                         ba(s.target_before, s.target_after), st_d_text(s.st_d, s.trivial)])
    return ["Per run, the mean over its pairs (each pair's row follows):", "",
            md_table(["run", "pairs", "cells", "source before → after", "target before → after", "ST-D"], rows,
                     right={1, 2, 3, 4, 5}), ""]


def _direct_md(d: ReportData) -> list[str]:
    rows = []
    for run in d.runs:
        prs = d.direct.get(run) or []
        for i, r in enumerate(prs):
            rows.append([run if i == 0 else "", pair_text(r.source, r.target), str(r.seeds),
                         ba(r.source_before, r.source_after), ba(r.target_before, r.target_after),
                         st_d_text(r.st_d, r.trivial), _unseen(r)])
        if len(prs) > 1:
            s = run_summary(prs)
            rows.append(["", f"**mean of {len(prs)} pairs**", str(s.seeds), ba(s.source_before, s.source_after),
                         ba(s.target_before, s.target_after), st_d_text(s.st_d, s.trivial), _unseen(s)])
    summary = _direct_summary_md(d) if d.show_summary else []
    return summary + [md_table(["run", "pair", "seeds", "source before → after", "target before → after", "ST-D",
                                "unseen domains before → after"], rows, right={2, 3, 4, 5})]


def _entry(e) -> str:
    rec = "" if e.recovery.mean is None else f" (rec {e.recovery.mean:.2f})"
    return f"{pct(e.acc.mean)}{rec}"


def _attacks_md(d: ReportData) -> list[str]:
    rows = []
    for run in d.runs:
        m = d.matrix.get(run, {})
        w = d.worst.get(run)
        rows.append([run] + [_entry(m[a]) if a in m else "—" for a in d.attacks]
                    + [f"**{w}**: {_entry(m[w])}" if w else "—"])
    head = ["run"] + [("direct use" if a == DIRECT else a) for a in d.attacks] + ["worst case"]
    scope = matrix_scope_text(d)
    out = ([scope, ""] if scope else []) + [md_table(head, rows, right=set(range(1, len(d.attacks) + 1)))]
    scale = f"Scale (HTML colours): {d.scale_labels[0]} (good for the defender) → {d.scale_labels[1]} (bad)."
    return out + ["", scale] + [f"{n}" for n in d.notes] + _worst_pairs_md(d)


def _worst_pairs_md(d: ReportData) -> list[str]:
    pairs = d.attacked_pairs
    if not pairs:
        return []
    rows = []
    for run in d.runs:
        w = d.worst_pairs.get(run, {})
        rows.append([run] + [f"{w[p][0]}: {_entry(w[p][1])}" if p in w else "—" for p in pairs])
    return ["", "Worst case per pair:", "", md_table(["run"] + [pair_text(*p) for p in pairs], rows,
                                                     right=set(range(1, len(pairs) + 1)))]


def _by_shot(shots: list[int], curve_shots: list[int], values: list[float | None]) -> list[str]:
    got = dict(zip(curve_shots, values, strict=True))
    return [pct(got.get(n)) for n in shots]


def _slc_summary_md(d: ReportData) -> list[str]:
    atts = d.finetune_attacks
    rows = [[run] + [pm(d.slc[run][a], 1, 3) + f" ({d.slc[run][a].n})" if a in d.slc[run] else "—" for a in atts]
            for run in d.runs if run in d.slc]
    return ["### SLC-AUC per run", "", "Mean ± std over every pair and seed attacked (cells).", "",
            md_table(["run"] + [f"{a} SLC-AUC" for a in atts], rows, right=set(range(1, len(atts) + 1)))]


def _slc_md(d: ReportData) -> list[str]:
    out: list[str] = _slc_summary_md(d) if d.show_summary and d.slc else []
    for att in d.finetune_attacks:
        keys = [k for k in d.curves if k[0] == att]
        shots = sorted({n for k in keys for n in d.curves[k].shots})
        rows = []
        for s, t in d.pairs:
            mine = [(att, run, s, t) for run in d.runs if (att, run, s, t) in d.curves]
            if not mine:
                continue
            c0 = d.curves[mine[0]]
            rows.append(["scratch (random init)", pair_text(s, t), str(c0.seeds), "", ""]
                        + _by_shot(shots, c0.shots, c0.scratch))
            for k in mine:
                c = d.curves[k]
                rows.append([k[1], pair_text(s, t), str(c.seeds), pm(c.slc_auc, 1, 3),
                             pm(c.unprotected_slc_auc, 1, 3)] + _by_shot(shots, c.shots, c.protected))
        head = ["run", "pair", "seeds", "SLC-AUC", "unprotected SLC-AUC"] + [f"n={n}" for n in shots]
        out += ([""] if out else []) + [f"### {att}", "", "Target accuracy (%) after fine-tuning on n samples.", "",
                                        md_table(head, rows, right=set(range(2, len(head))))]
    return out or [no_finetune_text(d)]


def _st_d_md(d: ReportData) -> list[str]:
    rows = [[run, st_d_text(s, 0), "—" if s.lo is None else f"{s.lo:.3f} – {s.hi:.3f}", str(s.n), str(trivial)]
            for run, (s, trivial) in d.st_d.items()]
    return [md_table(["run", "ST-D mean ± std", "min – max", "cells", "trivial (left out)"], rows,
                     right={1, 2, 3, 4})]


def _sparsity_md(d: ReportData) -> list[str]:
    if not d.sparsity:
        return ["No method zeroed weights."]
    layers = list(dict.fromkeys(k for v in d.sparsity.values() for k in v))
    rows = [[run] + [sparsity_pct(v.get(k)) for k in layers] for run, v in d.sparsity.items()]
    return [md_table(["run"] + [f"{k} %" for k in layers], rows, right=set(range(1, len(layers) + 1)))]


def _cost_md(d: ReportData) -> list[str]:
    others = [a for a in d.attacks if a != DIRECT]
    rows = []
    for run in d.runs:
        c = d.costs.get(run, {})
        own = c.get(DIRECT)
        row = [run, basis_text(c), str(own.ratio.n) if own else "0", seconds(own.seconds) if own else "—",
               seconds(own.train_s) if own else "—", ratio(own.ratio) if own else "—"]
        for a in others:
            row += [seconds(c[a].seconds), ratio(c[a].ratio)] if a in c else ["—", "—"]
        rows.append(row)
    head = ["run", "basis", "direct cells", "protect s", "source train s", "protect ÷ train"]
    for a in others:
        head += [f"{a} s", f"{a} ÷ train"]
    out = [md_table(head, rows, right=set(range(2, len(head))))]
    if d.excluded:
        out += ["", f"Excluded ({plural(len(d.excluded), 'cell')} not run where their source model was):", ""]
        out += [f"- {why}: {which}" for why, which in excluded_groups(d.excluded)]
    else:
        out += ["", "Excluded: none (every cell ran where its source model was)."]
    return out


def _pseudo_md(d: ReportData) -> list[str]:
    return pseudo_md(d.pseudo, md_table)


def render_markdown(d: ReportData, generated: str) -> str:
    parts = _header_md(d, generated)
    bodies = dict(zip((k for _, _, k in SECTIONS), (_sources_md, _direct_md, _attacks_md, _slc_md, _st_d_md,
                                                     _sparsity_md, _cost_md, _pseudo_md), strict=True))
    for _, title, key in d.sections:
        parts += ["", f"## {title}", "", CAPTIONS[key], "", *bodies[key](d)]
    return "\n".join(parts).rstrip() + "\n"


def write_report(folder: str | Path, out: str | Path, *, overwrite: bool = False, suite: str | None = None
                 ) -> tuple[Path, Path]:
    """Write ``out/report.md`` and ``out/report.html`` from the benchmark ``folder``; return their paths.

    Refuses a folder without results and existing report files unless ``overwrite``."""
    from .report_html import render_html

    out = Path(out)
    md_path, html_path = out / "report.md", out / "report.html"
    if out.exists() and not out.is_dir():
        raise DomainlockError(f"{out} exists and is not a folder")
    existing = [p.name for p in (md_path, html_path) if p.exists()]
    if existing and not overwrite:
        raise DomainlockError(f"{out} already holds {', '.join(existing)}; pass overwrite=True to replace it")
    data = collect(folder, suite)
    generated = utc_stamp()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(md_path, render_markdown(data, generated))
    atomic_write_text(html_path, render_html(data, generated))
    return md_path, html_path
