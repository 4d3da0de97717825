"""The benchmark report as one self-contained HTML page: styles inline, charts as inline SVG
(:mod:`domainlock.bench.svg`), no scripts, fonts or images loaded from anywhere.

The page follows :func:`domainlock.bench.report.render_markdown` section by section, with a coloured
method × attack heatmap and its legend, small multiples of the fine-tuning learning curves (log-x), ST-D bars
with min–max whiskers and per-layer sparsity bars.
"""

from __future__ import annotations

from html import escape

from . import svg
from .aggregate import Entry, run_summary
from .graph import DIRECT
from .report_data import (
    CAPTIONS,
    SECTIONS,
    ReportData,
    ba,
    basis_text,
    cell_label,
    cells_text,
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
from .report_pseudo import CSS as PSEUDO_CSS
from .report_pseudo import pseudo_html

CSS = """
:root { --ink:#1b1f24; --muted:#57606a; --rule:#d0d7de; --band:#f6f8fa; --accent:#0b5cad; }
* { box-sizing: border-box; }
body { margin:0; color:var(--ink); background:#fff; line-height:1.45;
  font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width:1280px; margin:0 auto; padding:28px 32px 64px; }
h1 { font-size:26px; margin:0 0 6px; }
h2 { font-size:20px; margin:40px 0 6px; padding-top:10px; border-top:2px solid var(--rule); }
h3 { font-size:16px; margin:22px 0 8px; }
p.caption { color:var(--muted); margin:0 0 14px; max-width:1000px; }
p.sub { color:var(--muted); margin:0 0 16px; }
.facts { display:grid; grid-template-columns:repeat(auto-fill,minmax(230px,1fr)); gap:8px 24px; margin:14px 0;
  padding:12px 16px; background:var(--band); border:1px solid var(--rule); border-radius:6px; }
.facts div { font-size:14px; } .facts b { display:block; font-size:11px; text-transform:uppercase;
  letter-spacing:.04em; color:var(--muted); font-weight:600; }
nav.toc { margin:14px 0 4px; font-size:14px; } nav.toc a { margin-right:14px; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
.alert { border-left:4px solid #bd0026; background:#fff5f5; padding:8px 14px; margin:12px 0; font-size:14px; }
.alert ul, .note ul { margin:4px 0; padding-left:20px; }
.note { border-left:4px solid var(--rule); background:var(--band); padding:8px 14px; margin:12px 0;
  font-size:13.5px; color:var(--muted); }
.scroll { overflow:auto; max-height:80vh; border:1px solid var(--rule); border-radius:6px; }
.scroll.fit { display:inline-block; max-width:100%; vertical-align:top; } .fit table { width:auto; }
table { border-collapse:separate; border-spacing:0; font-size:13.5px; width:100%; }
th, td { padding:6px 10px; border-bottom:1px solid var(--rule); vertical-align:top; text-align:left; }
thead th { position:sticky; top:0; z-index:1; background:#eef1f4; font-weight:600; white-space:nowrap;
  border-bottom:2px solid #aab4be; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.run { font-weight:600; white-space:nowrap; background:#fff; }
tbody.group tr:last-child td { border-bottom:2px solid #aab4be; }
tr.sum td { font-weight:600; background:var(--band); }
td small, .muted { color:var(--muted); }
table.heat td.h { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; min-width:120px;
  border-bottom:2px solid #fff; border-right:2px solid #fff; }
table.heat { width:auto; } table.heat td.run { min-width:120px; }
table.heat td.h .v { font-size:15px; font-weight:600; } table.heat td.h .r { font-size:12px; margin-left:6px; }
table.heat td.h .a { font-size:12px; margin-right:10px; font-weight:600; }
table.heat th.worst, table.heat td.worst { border-left:3px solid var(--ink); }
.legend { display:flex; align-items:center; gap:10px; margin:12px 0 4px; font-size:13px; color:var(--muted); }
.legend .bar { width:260px; height:14px; border:1px solid #aaa; border-radius:2px; }
.keys { display:flex; flex-wrap:wrap; gap:18px; font-size:13px; color:var(--muted); margin:4px 0 10px; }
.keys span { display:inline-flex; align-items:center; gap:6px; }
.grid { display:grid; gap:10px 14px; grid-template-columns:repeat(auto-fill, 300px); }
.grid .panel { border:1px solid var(--rule); border-radius:6px; padding:4px 0 0; background:#fff; }
.colhead { font-size:13px; font-weight:600; color:var(--muted); padding:0 4px; }
.bars { display:flex; flex-wrap:wrap; gap:14px; }
footer { margin-top:48px; color:var(--muted); font-size:12.5px; }
"""


def _td(text: str, cls: str = "num", **attrs: str) -> str:
    extra = "".join(f' {k}="{escape(v)}"' for k, v in attrs.items())
    return f'<td class="{cls}"{extra}>{escape(text)}</td>'


def _table(head: list[str], body: str, num_from: int = 1, fit: bool = False) -> str:
    ths = "".join(f'<th class="{"num" if i >= num_from else ""}">{escape(h)}</th>' for i, h in enumerate(head))
    return (f'<div class="scroll{" fit" if fit else ""}"><table><thead><tr>{ths}</tr></thead>{body}</table>'
            "</div>")


def _header(d: ReportData, generated: str) -> str:
    facts = [("suite", d.suite + (f", from {d.origin}" if d.origin else "")), ("domainlock", d.version),
             ("generated", generated), ("cells", cells_text(d)),
             ("grid", grid_text(d)),
             ("attacks", ", ".join("direct use" if a == DIRECT else a for a in d.attacks)),
             ("machines (host · device · threads: nodes)", "; ".join(f"{w}: {n}" for w, n in d.machines) or "—"),
             ("compute", d.compute),
             ("folder", d.folder)]
    out = [f"<h1>Benchmark report: {escape(d.suite)}</h1>",
           '<p class="sub">How well each protection keeps the source domain and locks the target domain, '
           "directly and under attack.</p>",
           '<div class="facts">' + "".join(f"<div><b>{escape(k)}</b>{escape(v)}</div>" for k, v in facts) + "</div>"]
    if d.not_done:
        items = "".join(f"<li>{escape(cell_label(c))}: <b>{escape(c['status'])}</b>"
                        + (f" — {escape(c['error'])}" if c["error"] else "") + "</li>" for c in d.not_done)
        out.append(f'<div class="alert"><b>{plural(len(d.not_done), "cell")} not done</b><ul>{items}</ul></div>')
    toc = "".join(f'<a href="#{a}">{i}. {escape(t)}</a>' for i, (a, t, _) in enumerate(d.sections, 1))
    out.append(f'<nav class="toc"><b>Contents</b>&ensp;{toc}</nav>')
    return "\n".join(out)


def _unseen(row) -> str:
    return "<br>".join(f"<small>{escape(dm)}</small> {escape(ba(b, a))}" for dm, (b, a) in row.unseen.items()) or "—"


def _sources(d: ReportData) -> str:
    domains = list(dict.fromkeys(x for row in d.sources.values() for x in row))
    if not domains:
        return '<div class="note">No source model finished.</div>'
    body = "".join(f'<tr><td class="run">{escape(src)}</td>{_td(str(max(s.n for s in row.values())))}'
                   + "".join(_td(pm(row[x]) if x in row else "—") for x in domains) + "</tr>"
                   for src, row in d.sources.items())
    return _table(["source model", "models"] + [f"{x} %" for x in domains], f"<tbody>{body}</tbody>")


def _direct_summary(d: ReportData) -> str:
    body = []
    for run in d.runs:
        prs = d.direct.get(run) or []
        if prs:
            s = run_summary(prs)
            body.append(f'<tr><td class="run">{escape(run)}</td>{_td(str(len(prs)))}{_td(str(s.seeds))}'
                        f"{_td(ba(s.source_before, s.source_after))}{_td(ba(s.target_before, s.target_after))}"
                        f"{_td(st_d_text(s.st_d, s.trivial))}</tr>")
    head = ["run", "pairs", "cells", "source % before → after", "target % before → after", "ST-D"]
    return ("<h3>Per run: the mean over its pairs</h3>" + _table(head, f"<tbody>{''.join(body)}</tbody>", fit=True)
            + "<h3>Per pair</h3>")


def _direct(d: ReportData) -> str:
    body = []
    for run in d.runs:
        prs = d.direct.get(run) or []
        if not prs:
            continue
        rows = []
        for r in prs:
            rows.append([_td(pair_text(r.source, r.target), ""), _td(str(r.seeds)),
                         _td(ba(r.source_before, r.source_after)), _td(ba(r.target_before, r.target_after)),
                         _td(st_d_text(r.st_d, r.trivial)), f'<td class="num">{_unseen(r)}</td>'])
        if len(prs) > 1:
            s = run_summary(prs)
            rows.append([_td(f"mean of {len(prs)} pairs", ""), _td(str(s.seeds)),
                         _td(ba(s.source_before, s.source_after)), _td(ba(s.target_before, s.target_after)),
                         _td(st_d_text(s.st_d, s.trivial)), f'<td class="num">{_unseen(s)}</td>'])
        trs = []
        for i, cells in enumerate(rows):
            lead = f'<td class="run" rowspan="{len(rows)}">{escape(run)}</td>' if i == 0 else ""
            cls = ' class="sum"' if len(prs) > 1 and i == len(rows) - 1 else ""
            trs.append(f"<tr{cls}>{lead}{''.join(cells)}</tr>")
        body.append(f'<tbody class="group">{"".join(trs)}</tbody>')
    head = ["run", "pair", "seeds", "source % before → after", "target % before → after", "ST-D",
            "unseen domains % before → after"]
    return (_direct_summary(d) if d.show_summary else "") + _table(head, "".join(body), num_from=2)


def _heat_cell(d: ReportData, e: Entry, attack: str | None = None, worst: bool = False) -> str:
    bg = svg.heat_color(d.heat(e.acc.mean))
    rec = "" if e.recovery.mean is None else f'<span class="r">rec {e.recovery.mean:.2f}</span>'
    name = f'<span class="a">{escape("direct use" if attack == DIRECT else attack)}</span>' if attack else ""
    title = f"{pm(e.acc)} % over {e.acc.n} cells" + ("" if e.recovery.mean is None else
                                                      f"; recovery {pm(e.recovery, 1, 2)}")
    return (f'<td class="h{" worst" if worst else ""}" style="background:{bg};color:{svg.ink(bg)}" '
            f'title="{escape(title)}">{name}<span class="v">{escape(pct(e.acc.mean))}</span>{rec}</td>')


def _attacks(d: ReportData) -> str:
    body = []
    for run in d.runs:
        m = d.matrix.get(run, {})
        cells = [_heat_cell(d, m[a]) if a in m else '<td class="h">—</td>' for a in d.attacks]
        w = d.worst.get(run)
        cells.append(_heat_cell(d, m[w], w, worst=True) if w else '<td class="h worst">—</td>')
        body.append(f'<tr><td class="run">{escape(run)}</td>{"".join(cells)}</tr>')
    ths = ('<th>run</th>' + "".join(f'<th class="num">{escape("direct use" if a == DIRECT else a)}</th>'
                                     for a in d.attacks) + '<th class="num worst">worst case</th>')
    legend = (f'<div class="legend"><span>{escape(d.scale_labels[0])} % · good for the defender</span>'
              f'<span class="bar" style="background:linear-gradient(to right, {svg.gradient_stops()})"></span>'
              f'<span>{escape(d.scale_labels[1])} % · protection undone</span></div>')
    notes = "".join(f'<div class="note">{escape(n)}</div>' for n in d.notes)
    scope = matrix_scope_text(d)
    scope = f'<div class="note">{escape(scope)}</div>' if scope else ""
    return (f'{scope}<div class="scroll fit"><table class="heat"><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}'
            f"</tbody></table></div>{legend}{notes}{_worst_pairs(d)}")


def _worst_pairs(d: ReportData) -> str:
    pairs = d.attacked_pairs
    if not pairs:
        return ""
    body = []
    for run in d.runs:
        w = d.worst_pairs.get(run, {})
        cells = [_heat_cell(d, w[p][1], w[p][0]) if p in w else '<td class="h">—</td>' for p in pairs]
        body.append(f'<tr><td class="run">{escape(run)}</td>{"".join(cells)}</tr>')
    ths = '<th>run</th>' + "".join(f'<th class="num">{escape(pair_text(*p))}</th>' for p in pairs)
    return (f'<h3>Worst case per pair</h3><div class="scroll fit"><table class="heat"><thead><tr>{ths}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


SERIES = (("protected model", svg.VERMILLION, "", "circle"), ("unprotected source model", svg.BLUE, "6 3", "square"),
          ("scratch (random init)", svg.GREY, "2 3", "triangle"))


def _slc_summary(d: ReportData) -> str:
    atts = d.finetune_attacks
    body = "".join(f'<tr><td class="run">{escape(run)}</td>'
                   + "".join(_td(pm(d.slc[run][a], 1, 3) + f" ({d.slc[run][a].n})" if a in d.slc[run] else "—")
                             for a in atts) + "</tr>" for run in d.runs if run in d.slc)
    return ("<h3>SLC-AUC per run</h3><p class=\"caption\">Mean ± std over every pair and seed attacked (cells).</p>"
            + _table(["run"] + [f"{a} SLC-AUC" for a in atts], f"<tbody>{body}</tbody>", fit=True))


def _slc(d: ReportData) -> str:
    out = [_slc_summary(d)] if d.show_summary and d.slc and d.finetune_attacks else []
    keys_html = "".join(f"<span>{svg.legend_swatch(svg.Series(lb, [], c, ds, mk))}{escape(lb)}</span>"
                        for lb, c, ds, mk in SERIES)
    keys_html += "<span>dotted grey line: chance</span>"
    for att in d.finetune_attacks:
        pairs = [p for p in d.pairs if any((att, run, *p) in d.curves for run in d.runs)]
        cols = len(pairs) if 2 <= len(pairs) <= 4 else 0
        style = f' style="grid-template-columns:repeat({cols}, 300px)"' if cols else ""
        panels = [f'<div class="colhead">{escape(pair_text(*p))}</div>' for p in pairs] if cols else []
        for run in d.runs:
            for p in pairs:
                c = d.curves.get((att, run, *p))
                if c is None:
                    panels.append("<div></div>" if cols else "")
                    continue
                sub = f"SLC-AUC {pm(c.slc_auc, 1, 3)} · unprotected {c.unprotected_slc_auc.mean:.3f}"
                if c.seeds < len(d.seeds):
                    sub += f" · {c.seeds} of {len(d.seeds)} seeds"
                series = [svg.Series(lb, v, col, ds, mk) for (lb, col, ds, mk), v
                          in zip(SERIES, (c.protected, c.unprotected, c.scratch), strict=True)]
                panels.append('<div class="panel">' + svg.line_panel(f"{run} · {pair_text(*p)}", sub, c.shots,
                                                                   series, chance=d.chance.get(p[1])) + "</div>")
        out.append(f'<h3>{escape(att)}</h3><div class="keys">{keys_html}</div>'
                   f'<div class="grid"{style}>{"".join(panels)}</div>')
    return "".join(out) or f"<p>{escape(no_finetune_text(d))}</p>"


def _st_d(d: ReportData) -> str:
    if not d.st_d:
        return "<p>No protected run has direct-use cells.</p>"
    if all(s.mean is None for s, _ in d.st_d.values()):
        return ('<div class="note">No ST-D: every pair is trivial (the unprotected model is already near chance on '
                "its target), so only the attacks above tell the methods apart.</div>")
    bars = []
    for run, (s, trivial) in d.st_d.items():
        text = (f"{st_d_text(s, 0)} (n={s.n}" + (f", {trivial} trivial" if trivial else "") + ")"
                if s.mean is not None else f"no ST-D: {plural(trivial, 'trivial cell')}")
        bars.append(svg.Bar(run, s.mean, text, s.lo, s.hi, svg.BLUE))
    return svg.hbars(bars, x_max=1.0, axis="ST-D (0: useless … 1: source kept, target at chance)",
                     ticks=(0, 0.25, 0.5, 0.75, 1.0), tick_fmt=lambda t: f"{t:g}", width=760, label_w=140)


def _sparsity(d: ReportData) -> str:
    if not d.sparsity:
        return "<p>No method zeroed weights.</p>"
    panels = []
    for run, layers in d.sparsity.items():
        bars = [svg.Bar(k, v, f"{sparsity_pct(v)} %", color=svg.GREEN) for k, v in layers.items()]
        panels.append(svg.hbars(bars, x_max=1.0, axis="zero weights %", ticks=(0, 0.25, 0.5, 0.75, 1.0),
                                tick_fmt=lambda t: f"{100 * t:.0f}", width=390, label_w=96, text_w=66, row_h=20,
                                title=run))
    return f'<div class="bars">{"".join(panels)}</div>'


def _cost(d: ReportData) -> str:
    others = [a for a in d.attacks if a != DIRECT]
    head = ["run", "basis", "direct cells", "protect s", "source train s", "protect ÷ train"]
    for a in others:
        head += [f"{a} s", f"{a} ÷ train"]
    body = []
    for run in d.runs:
        c = d.costs.get(run, {})
        own = c.get(DIRECT)
        tds = [_td(basis_text(c)), _td(str(own.ratio.n) if own else "0"), _td(seconds(own.seconds) if own else "—"),
               _td(seconds(own.train_s) if own else "—"), _td(ratio(own.ratio) if own else "—")]
        for a in others:
            tds += [_td(seconds(c[a].seconds)), _td(ratio(c[a].ratio))] if a in c else [_td("—"), _td("—")]
        body.append(f'<tr><td class="run">{escape(run)}</td>{"".join(tds)}</tr>')
    out = _table(head, f"<tbody>{''.join(body)}</tbody>", fit=True)
    if d.excluded:
        items = "".join(f"<li>{escape(why)}: {escape(which)}</li>" for why, which in excluded_groups(d.excluded))
        return out + (f'<div class="note"><b>Excluded: {plural(len(d.excluded), "cell")}</b> not run where their '
                      f"source model was (not in the table):<ul>{items}</ul></div>")
    return out + '<div class="note">Excluded: none — every cell ran where its source model was.</div>'


def render_html(d: ReportData, generated: str) -> str:
    bodies = dict(zip((k for _, _, k in SECTIONS), (_sources, _direct, _attacks, _slc, _st_d, _sparsity, _cost,
                                                     lambda d: pseudo_html(d.pseudo)), strict=True))
    sections = [f'<section id="{a}"><h2>{i}. {escape(t)}</h2><p class="caption">{escape(CAPTIONS[k])}</p>'
                f"{bodies[k](d)}</section>" for i, (a, t, k) in enumerate(d.sections, 1)]
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Benchmark report: {escape(d.suite)}</title><style>{CSS}{PSEUDO_CSS}</style></head>\n<body><main>\n"
            + _header(d, generated) + "\n" + "\n".join(sections)
            + f"\n<footer>domainlock {escape(d.version)} · {escape(generated)} · accuracies in % with one "
              f"decimal; ± is the sample standard deviation over seeds.</footer>\n</main></body></html>\n")
