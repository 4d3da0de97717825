"""The report's "Pseudo-sources" section: how good the pseudo-source of each SF-MAP / DF-MAP protection was.

:func:`pseudo_rows` reads the ``pseudo_source_quality`` block the protect nodes keep
(:func:`domainlock.synthesis.quality.pseudo_source_quality`): one row per protect node (run × source model ×
seed, and pair for runs that read the target) with the BN-statistics distance
``Σ_l ‖μ_l − μ̂_l‖₂ + ‖σ²_l − σ̂²_l‖₂``, the agreement with the intended classes, the mean max-softmax
confidence, the class-coverage entropy ``H(p) / ln C`` and smallest class share, and the distillation fidelity
when the node measured it. :func:`family_table` averages DF-MAP's neighbour families over a run's nodes:
agreement mean[f(n(x)) = f(x)] and feature shift mean ‖z(n(x)) − z(x)‖ / ‖z(x)‖. The HTML shows each node's
sample grid (a PNG inlined as a data URI; from the result, else from the node folder, else a one-line note).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

CAPTION = ("Quality of each pseudo-source (SF-MAP, DF-MAP), measured from the source model and the pseudo-source "
           "alone. BN distance: Σ over BN layers of ‖μ − μ̂‖ + ‖σ² − σ̂²‖ between the set's feature statistics and "
           "the model's running ones (0: identical). Agreement: share of images the model predicts as their "
           "intended class. Confidence: mean max-softmax. Coverage: entropy of the predicted-class shares ÷ ln C "
           "(1: balanced) and the smallest share. Fidelity (when measured): accuracy on the real source test "
           "split of a fresh model distilled on the pseudo-source alone, beside the source model's.")
FAMILY_CAPTION = ("DF-MAP's neighbour families on a fixed sample of the pseudo-source (mean over the run's "
                  "protections): agreement = share of images whose prediction the family leaves unchanged (low: "
                  "the family moves the source model's accuracy far); shift = mean ‖z(n(x)) − z(x)‖ / ‖z(x)‖ of "
                  "the encoder features.")
HEAD = ["run", "source model", "pair", "images", "BN distance", "agreement %", "confidence %", "coverage entropy",
        "min class %", "fidelity % student / teacher", "cost s"]


def _num(v: Any, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def pseudo_rows(nodes: list[dict[str, Any]], folder: str | Path) -> list[dict[str, Any]]:
    """One entry per finished protect node with a quality block: ``run``, ``method``, ``source``, ``seed``,
    ``pair``, ``quality`` and ``grid`` (PNG bytes, or ``None`` when neither the result nor the folder has it)."""
    out = []
    for n in nodes:
        q = (n.get("result") or {}).get("pseudo_source_quality") if n["status"] == "done" else None
        if n["kind"] != "protect" or not q:
            continue
        cfg = n["config"] or {}
        grid = base64.b64decode(q["grid_png"]) if q.get("grid_png") else None
        path = Path(folder) / "nodes" / "protect" / n["key"] / str(q.get("grid") or "")
        if grid is None and q.get("grid") and path.is_file():
            grid = path.read_bytes()
        out.append({"run": n["label"].split()[0], "method": cfg.get("method", "?"), "source": cfg.get("source", "?"),
                    "seed": cfg.get("seed"), "pair": _pair(n["label"]),
                    "quality": q, "grid": grid})
    return out


def _pair(label: str) -> str:
    parts = label.split()
    return parts[1].replace("->", " → ") if len(parts) > 2 else ""


def family_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float | None, float | None]]]:
    """Run -> family -> (mean agreement, mean feature shift) over the run's rows that measured neighbours."""
    from ..synthesis.neighbours import neighbour_families

    known = neighbour_families()
    out: dict[str, dict[str, tuple[float | None, float | None]]] = {}
    for run in dict.fromkeys(r["run"] for r in rows):
        fams: dict[str, list[tuple[Any, Any]]] = {}
        for r in rows:
            if r["run"] == run:
                for f, v in (r["quality"].get("neighbours") or {}).items():
                    fams.setdefault(f, []).append((v.get("agreement"), v.get("feature_shift")))
        order = [f for f in known if f in fams] + sorted(f for f in fams if f not in known)
        if order:
            out[run] = {f: tuple(_mean([v[i] for v in fams[f]]) for i in (0, 1)) for f in order}
    return out


def _mean(vals: list[Any]) -> float | None:
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _cells(r: dict[str, Any]) -> list[str]:
    q = r["quality"]
    cov = q.get("class_coverage") or {}
    fid = q.get("fidelity")
    fid_text = f"{_pct(fid.get('student_acc'))} / {_pct(fid.get('teacher_acc'))}" if fid else "—"
    return [r["run"], f"{r['source']} s{r['seed']}", r["pair"], str(q.get("n", "—")), _num(q.get("bn_distance")),
            _pct(q.get("agreement")), _pct(q.get("confidence")), _num(cov.get("entropy")), _pct(cov.get("min_share")),
            fid_text, _num(q.get("time_s"), 2)]


def pseudo_md(rows: list[dict[str, Any]], md_table: Callable[..., str]) -> list[str]:
    """The section's markdown; ``md_table`` is :func:`domainlock.bench.report.md_table`."""
    out = [md_table(HEAD, [_cells(r) for r in rows], right=set(range(3, len(HEAD))))]
    for run, fams in family_table(rows).items():
        out += ["", f"### {run}: neighbour families", "", FAMILY_CAPTION, "",
                md_table(["family", "agreement %", "feature shift"],
                         [[f, _pct(a), _num(s)] for f, (a, s) in fams.items()], right={1, 2})]
    missing = sum(r["grid"] is None for r in rows)
    if missing:
        out += ["", f"Sample grids: {missing} of {len(rows)} not stored (the PNG is neither in the result nor in "
                "the node folder), so the HTML omits them."]
    return out


def pseudo_html(rows: list[dict[str, Any]]) -> str:
    def td(text: str, i: int) -> str:
        return f'<td class="{"num" if i >= 3 else "run" if i == 0 else "nw"}">{escape(text)}</td>'

    ths = "".join(f'<th class="{"num" if i >= 3 else ""}">{escape(h)}</th>' for i, h in enumerate(HEAD))
    body = "".join("<tr>" + "".join(td(c, i) for i, c in enumerate(_cells(r))) + "</tr>" for r in rows)
    out = [f'<div class="scroll fit"><table><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table></div>']
    for run, fams in family_table(rows).items():
        trs = "".join(f'<tr><td class="run">{escape(f)}</td><td class="num">{escape(_pct(a))}</td>'
                      f'<td class="num">{escape(_num(s))}</td></tr>' for f, (a, s) in fams.items())
        out.append(f'<h3>{escape(run)}: neighbour families</h3><p class="caption">{escape(FAMILY_CAPTION)}</p>'
                   '<div class="scroll fit"><table><thead><tr><th>family</th><th class="num">agreement %</th>'
                   f'<th class="num">feature shift</th></tr></thead><tbody>{trs}</tbody></table></div>')
    figs = []
    for r in rows:
        label = escape(f"{r['run']} · {r['source']} s{r['seed']}" + (f" · {r['pair']}" if r["pair"] else ""))
        if r["grid"] is None:
            figs.append(f'<div class="note">{label}: sample grid not stored (no PNG in the result or the node '
                        "folder).</div>")
            continue
        uri = "data:image/png;base64," + base64.b64encode(r["grid"]).decode("ascii")
        figs.append(f'<figure class="sample"><img alt="{label}" src="{uri}"><figcaption>{label}</figcaption>'
                    "</figure>")
    out.append('<h3>Sample grids</h3><p class="caption">A few pseudo-source images per class the source model '
               f'predicts (one class per column).</p><div class="samples">{"".join(figs)}</div>')
    return "".join(out)


CSS = """
td.nw { white-space:nowrap; }
.samples { display:flex; flex-wrap:wrap; gap:14px 22px; }
figure.sample { margin:0; } figure.sample img { image-rendering:pixelated; width:auto; height:auto; zoom:2;
  border:1px solid var(--rule); display:block; }
figure.sample figcaption { font-size:12.5px; color:var(--muted); margin-top:4px; }
"""
