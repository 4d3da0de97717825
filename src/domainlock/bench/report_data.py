"""Everything a benchmark report shows, read once from a benchmark folder (:func:`collect`), and the number
formats and captions the markdown and HTML renderings share.

:func:`collect` reads the folder's ``results.db`` through :class:`~domainlock.bench.store.Store`, keeps the cells
of one suite, orders the runs (``unprotected`` first, then the suite's order as the protect nodes record it)
and the attacks (``direct`` first), and computes every table with :mod:`domainlock.bench.aggregate`. The
heatmap's colour scale runs from chance on the targets (from the source nodes) to the unprotected model's
target accuracy; when that is not above chance, its top is the highest value in the table instead.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import DomainlockError, check_choice
from . import aggregate as agg
from .graph import DIRECT
from .report_pseudo import CAPTION, pseudo_rows
from .store import DB_FILE, Store
from .suite import UNPROTECTED

#: (anchor, title, caption key); the anchors are the titles' GitHub slugs, so the markdown needs no HTML
SECTIONS = (("source-models", "Source models", "sources"), ("direct-use", "Direct use", "direct"),
            ("methods-and-attacks", "Methods and attacks", "heatmap"),
            ("fine-tuning-curves", "Fine-tuning curves", "slc"), ("st-d-per-method", "ST-D per method", "st_d"),
            ("per-layer-mask-sparsity", "Per-layer mask sparsity", "sparsity"), ("cost", "Cost", "cost"),
            ("pseudo-sources", "Pseudo-sources", "pseudo"))
CAPTIONS = {
    "sources": "Before protection: test accuracy (%) of the suite's source models on every domain it reads, mean "
               "± sample std over seeds (one model per source domain and seed). The diagonal is the authorized "
               "domain; the rest is how far an unprotected model transfers.",
    "direct": "Test accuracy (%) on the source and target domains before → after protection, mean ± sample std "
              "over seeds (± only with more than one seed). ST-D balances source retention against the target "
              "drop: 1 is ideal, 0 useless; 'trivial' pairs (the unprotected model is already near chance on "
              "the target) have no ST-D. The mean row averages the pairs.",
    "heatmap": "Target accuracy (%) left after each attack, mean over pairs and seeds, with the recovery (rec: "
               "the share of the protection the attack undid, 0 none … 1 all). Worst case: the strongest attack "
               "per method (most target accuracy left, then highest recovery). A protection is only as strong as "
               "the strongest attack; the second table names it for each pair (mean over seeds).",
    "slc": "Target accuracy after fine-tuning on n labelled target samples (mean over seeds) from the protected "
           "model, the unprotected source model and random initialization (scratch). SLC-AUC is the mean gap "
           "protected − scratch over ln n: < 0: the protected model is a worse start than random init; 0: as "
           "good as nothing; > 0: it still gives the attacker a head start.",
    "st_d": "Mean ST-D per method over all non-trivial pairs × seeds; the whisker spans min–max. Higher is "
            "better (1: the source is kept and the target falls to chance).",
    "sparsity": "Fraction of zero weights per layer after protection (mean over the method's cells), for the "
                "methods that zero weights.",
    "pseudo": CAPTION,
    "cost": "Time of each method's own work ÷ the training time of the source model it started from (mean of "
            "the per-cell ratios; seconds are means too), in CPU seconds where both were recorded (a node's own "
            "process, all threads; the basis column says which), else wall seconds. Only cells that ran on the "
            "same host, device and thread count as their source model are counted; the others are listed as "
            "excluded. The unprotected row's own work is the source training itself.",
}


def pct(v: float | None) -> str:
    """An accuracy in [0, 1] as a percentage with one decimal; ``—`` when missing."""
    return "—" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def pm(s: agg.Stat, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` of a :class:`~domainlock.bench.aggregate.Stat` (scaled; ``±`` only with a std)."""
    if s.mean is None:
        return "—"
    out = f"{scale * s.mean:.{digits}f}"
    return out + (f" ± {scale * s.std:.{digits}f}" if s.std is not None else "")


def ba(before: agg.Stat, after: agg.Stat) -> str:
    """``before → after`` as percentages."""
    return f"{pm(before)} → {pm(after)}"


def sparsity_pct(v: float | None) -> str:
    """A fraction of zero weights as a percentage with one decimal (``<0.1`` for tiny non-zero ones)."""
    if v is None:
        return "—"
    return "<0.1" if 0 < v < 0.0005 else f"{100 * v:.1f}"


def seconds(s: agg.Stat) -> str:
    if s.mean is None:
        return "—"
    return f"{s.mean:.1f}" if s.mean >= 10 else f"{s.mean:.2f}"


def basis_text(costs: dict[str, agg.Cost]) -> str:
    """Which seconds a run's cost row compares (``CPU``, ``wall`` or ``mixed``; ``—`` without cells)."""
    bases = {c.basis for c in costs.values()}
    return "—" if not bases else bases.pop() if len(bases) == 1 else "mixed"


def ratio(s: agg.Stat) -> str:
    return "—" if s.mean is None else f"{s.mean:.2f}×"


def st_d_text(s: agg.Stat, trivial: int) -> str:
    """ST-D (three decimals, ``± std``) with the count of trivial cells left out."""
    if s.mean is None:
        return "trivial" if trivial else "—"
    out = f"{s.mean:.3f}" + (f" ± {s.std:.3f}" if s.std is not None else "")
    return out + (f" ({trivial} trivial)" if trivial else "")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def grid_text(d: ReportData) -> str:
    return (f"{plural(len(d.runs), 'run')} × {plural(len(d.pairs), 'pair')} × {plural(len(d.seeds), 'seed')} "
            f"({', '.join(map(str, d.seeds))})")


def pair_text(source: str, target: str) -> str:
    return f"{source} → {target}"


def cell_label(c: dict[str, Any]) -> str:
    return f"{c['run']} · {pair_text(c['source'], c['target'])} · seed {c['seed']} · {c['attack']}"


def where_text(w: dict[str, Any]) -> str:
    if not w:   # a source model the user brought: where it trained is not recorded
        return "an unknown machine (brought as an artifact)"
    t = w.get("threads")
    t = int(t) if isinstance(t, float) and t.is_integer() else t
    threads = plural(t, "thread") if t is not None else "? threads"
    return f"{w.get('host') or '?'} · {w.get('device') or '?'} · {threads}"


def excluded_groups(cells: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The cost table's excluded cells, one ``(why, which)`` per pair of machines: ``why`` says where they and
    their source model ran, ``which`` names the cells (up to four) or their runs, pairs and seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in cells:
        why = f"ran on {where_text(c)}, source model on {where_text(c['figures'].get('source_where') or {})}"
        groups.setdefault(why, []).append(c)
    out = []
    for why, cs in groups.items():
        if len(cs) <= 4:
            which = "; ".join(cell_label(c) for c in cs)
        else:
            runs, pairs, seeds, attacks = (", ".join(dict.fromkeys(col)) for col in zip(
                *((c["run"], pair_text(c["source"], c["target"]), str(c["seed"]), c["attack"]) for c in cs),
                strict=True))
            which = f"runs {runs} · {pairs} · seeds {seeds} · {attacks}"
        out.append((f"{plural(len(cs), 'cell')} {why}", which))
    return out


@dataclass
class ReportData:
    """The report's content; see :func:`collect`."""

    suite: str
    origin: str
    version: str
    folder: str
    cells: list[dict[str, Any]]
    not_done: list[dict[str, Any]]
    machines: list[tuple[str, int]]
    compute: str   # what the finished nodes cost: CPU hours (and wall node-hours)
    sources: dict[str, dict[str, agg.Stat]]   # source domain -> evaluated domain -> test accuracy over seeds
    runs: list[str]
    methods: dict[str, str]
    attacks: list[str]
    pairs: list[tuple[str, str]]
    seeds: list[int]
    direct: dict[str, list[agg.PairRow]]
    matrix: dict[str, dict[str, agg.Entry]]
    worst: dict[str, str | None]
    scale: tuple[float, float]
    scale_labels: tuple[str, str]
    curves: dict[tuple[str, str, str, str], agg.Curve]
    chance: dict[str, float]
    st_d: dict[str, tuple[agg.Stat, int]]
    sparsity: dict[str, dict[str, float]]
    costs: dict[str, dict[str, agg.Cost]]
    excluded: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    matrix_pairs: list[tuple[str, str]] | None = None   # the attacked pairs the matrix is over (None: all)
    pending: int = 0   # nodes not run yet (pending or running): the grid is incomplete
    slc: dict[str, dict[str, agg.Stat]] = field(default_factory=dict)   # run -> attack -> SLC-AUC over cells
    pseudo: list[dict[str, Any]] = field(default_factory=list)   # pseudo-source quality per protect node
    worst_pairs: dict[str, dict[tuple[str, str], tuple[str, agg.Entry]]] = field(default_factory=dict)

    @property
    def attacked_pairs(self) -> list[tuple[str, str]]:
        """The columns of the per-pair worst-case table: the pairs some attack ran on, none when there is only one
        (the matrix above already is that table)."""
        pairs = [p for p in self.pairs if any(p in w for w in self.worst_pairs.values())]
        return pairs if len(pairs) > 1 else []

    @property
    def sections(self) -> tuple[tuple[str, str, str], ...]:
        """The sections this report has: the pseudo-sources only when a run synthesized one."""
        return tuple(s for s in SECTIONS if s[2] != "pseudo" or self.pseudo)

    def heat(self, v: float | None) -> float | None:
        """``v`` on the heatmap scale: 0 at its bottom (chance), 1 at its top."""
        lo, hi = self.scale
        return None if v is None else (v - lo) / (hi - lo) if hi > lo else 0.0

    @property
    def finetune_attacks(self) -> list[str]:
        return [a for a in self.attacks if any(k[0] == a for k in self.curves)]

    @property
    def show_summary(self) -> bool:
        """Whether the per-run summaries (direct use and SLC-AUC over pairs) add to the per-pair rows."""
        return len(self.runs) > 1 and len(self.pairs) > 1


def cells_text(d: ReportData) -> str:
    """The header's cell counts, with the nodes still to run when the grid is incomplete."""
    out = f"{len(d.cells)} done, {len(d.not_done)} not done"
    return out + (f"; {plural(d.pending, 'node')} still to run: the grid is incomplete" if d.pending else "")


def matrix_scope_text(d: ReportData) -> str:
    """Which cells the method × attack matrix is over, when not every pair (empty otherwise)."""
    if not d.matrix_pairs:
        return ""
    pairs = ", ".join(pair_text(*p) for p in d.matrix_pairs)
    return (f"Over the {plural(len(d.matrix_pairs), 'pair')} the attacks ran on ({pairs}), every column "
            f"on the same pairs and seeds; direct use on every pair is in the Direct use section.")


def no_finetune_text(d: ReportData) -> str:
    return "No fine-tuning cell is done yet." if d.pending else "No fine-tuning attack in this suite."


def _choose_suite(store: Store, rows: list[dict[str, Any]], suite: str | None) -> str:
    names = sorted({r["suite"] for r in rows})
    if suite is not None:
        return check_choice("suite", suite, names)
    meta = store.meta().get("suite") or {}
    if meta.get("name") in names:
        return meta["name"]
    if len(names) > 1:
        raise DomainlockError(f"the folder holds several suites ({', '.join(names)}); pass suite=")
    return names[0]


def source_table(nodes: list[dict[str, Any]]) -> dict[str, dict[str, agg.Stat]]:
    """Source domain -> every domain its models were evaluated on -> accuracy (mean ± std over the models)."""
    acc: dict[str, dict[str, list[float]]] = {}
    for n in nodes:
        if n["kind"] == "source" and n["status"] == "done" and n["result"]:
            row = acc.setdefault(n["config"]["domain"], {})
            for d, a in n["result"]["accuracy_test"].items():
                row.setdefault(d, []).append(a)
    return {src: {d: agg.mean_std(v) for d, v in row.items()} for src, row in acc.items()}


def _training_not_in_node(n: dict[str, Any]) -> tuple[float, float]:
    """(CPU s, wall s) of a source model's training that its node's own figures leave out: the node adopted a
    model trained before a kill (its wall time is shorter than the training loop's)."""
    r = n["result"] or {}
    train_wall = r.get("train_wall_s") if n["kind"] == "source" else None
    if train_wall is None or (n.get("wall_s") or 0.0) >= train_wall:
        return 0.0, 0.0
    return float(r.get("train_cpu_s") or train_wall), float(train_wall)


def compute_text(nodes: list[dict[str, Any]]) -> str:
    """The finished nodes' cost: the sum of their CPU seconds (``cpu_s``, where recorded) and of their wall
    seconds, in hours, with the training of a source model its node adopted after a kill."""
    done = [n for n in nodes if n["status"] == "done"]
    cpu = [(n["result"] or {}).get("cpu_s") for n in done]
    extra = [_training_not_in_node(n) for n in done]
    known = sum(c is not None for c in cpu)
    cpu_h = (sum(c for c in cpu if c is not None) + sum(c for c, _ in extra)) / 3600
    wall_h = (sum(n.get("wall_s") or 0.0 for n in done) + sum(w for _, w in extra)) / 3600
    return f"{len(done)} nodes: {cpu_h:.2f} CPU hours ({known} with CPU seconds recorded), {wall_h:.2f} wall node-hours"


def _machines(nodes: list[dict[str, Any]]) -> list[tuple[str, int]]:
    seen = Counter(where_text(n) for n in nodes if n["status"] == "done")
    return sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))


def narrower_columns_text(cells: list[dict[str, Any]], attacks: list[str]) -> str:
    """Which attack columns of the matrix average over fewer (pair, seed)s than the others (empty when none
    does): their means are not comparable across columns, the per-pair table is."""
    ran = {a: {(c["source"], c["target"], c["seed"]) for c in cells if c["attack"] == a} for a in attacks}
    widest = max((len(r) for r in ran.values()), default=0)
    narrow = [a for a in attacks if a != DIRECT and ran[a] and len(ran[a]) < widest]
    if not narrow:
        return ""
    several_seeds = len({c["seed"] for c in cells}) > 1
    parts = [f"{a} ({_coverage_text(ran[a], several_seeds)})" for a in narrow]
    what = "pairs or seeds" if several_seeds else "pairs"
    return (f"Columns over fewer {what} than the others, so their means are over those only (the worst case per "
            "pair below takes each attack over the seeds it ran on): " + "; ".join(parts) + ".")


def _coverage_text(ran: set[tuple[str, str, int]], several_seeds: bool) -> str:
    """``a → b, c → d`` and, when the grid has several seeds, which of them (``; seed 0``, or per pair)."""
    seeds: dict[tuple[str, str], list[int]] = {}
    for src, tgt, seed in sorted(ran):
        seeds.setdefault((src, tgt), []).append(seed)
    if not several_seeds:
        return ", ".join(pair_text(*p) for p in seeds)

    def seeds_text(ss: list[int]) -> str:
        return f"seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))}"

    if len({tuple(ss) for ss in seeds.values()}) == 1:
        return ", ".join(pair_text(*p) for p in seeds) + "; " + seeds_text(next(iter(seeds.values())))
    return ", ".join(f"{pair_text(*p)} {seeds_text(ss)}" for p, ss in seeds.items())


def _scale(chance: float | None, unprotected: float | None, values: list[float]) -> tuple[tuple, tuple, str]:
    lo = chance if chance is not None else min(values, default=0.0)
    hi, note = unprotected, ""
    if hi is None or hi <= lo + 0.01:
        hi = max([v for v in values if v is not None] + [lo])
        note = ("The unprotected model is not above chance on the targets here, so the colour scale's top is "
                "the highest value in the table.")
    if hi <= lo:
        hi = lo + 1e-9
    lo_label = f"chance {pct(lo)}" if chance is not None else f"lowest {pct(lo)}"
    hi_label = f"unprotected {pct(hi)}" if not note else f"highest {pct(hi)}"
    return (lo, hi), (lo_label, hi_label), note


def collect(folder: str | Path, suite: str | None = None) -> ReportData:
    """Read ``folder``'s results and compute every table of the report (one-line error without results)."""
    folder = Path(folder)
    with Store(folder, read_only=True) as store:
        rows = store.cells()
        if not rows:
            raise DomainlockError(f"{folder} holds no benchmark results yet (no cells in {DB_FILE})")
        name = _choose_suite(store, rows, suite)
        meta = store.meta().get("suite") or {}
        nodes = store.nodes()
    rows = [r for r in rows if r["suite"] == name]
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        raise DomainlockError(f"{folder}: no cell of suite {name!r} is done yet ({len(rows)} not done)")
    runs = agg.ordered({r["run"] for r in rows}, [UNPROTECTED] + [n["label"].split()[0] for n in nodes
                                                                   if n["kind"] == "protect"])
    attacks = agg.ordered({r["attack"] for r in rows}, [DIRECT] + [n["label"].split()[0] for n in nodes
                                                                   if n["kind"] == "attack"])
    chance: dict[str, float] = {}
    for n in nodes:
        if n["kind"] == "source" and n["result"]:
            chance.update(n["result"].get("chance") or {})
    matrix_cells, matrix_pairs = agg.attacked_cells(done)
    matrix = agg.attack_matrix(matrix_cells, runs, attacks)
    targets = [r["target"] for r in done]
    ch = agg.mean_std(chance.get(t) for t in targets).mean if all(t in chance for t in targets) else None
    unprot = matrix.get(UNPROTECTED, {}).get(DIRECT)
    values = [e.acc.mean for m in matrix.values() for e in m.values() if e.acc.mean is not None]
    scale, labels, note = _scale(ch, unprot.acc.mean if unprot else None, values)
    costs, excluded = agg.cost_table(done, runs, attacks)
    notes = [n for n in (note, narrower_columns_text(matrix_cells, attacks)) if n]
    return ReportData(
        suite=name, origin=meta.get("origin", "") if meta.get("name") == name else "", version=__version__,
        folder=str(folder), cells=done, not_done=[r for r in rows if r["status"] != "done"],
        machines=_machines(nodes), compute=compute_text(nodes), sources=source_table(nodes), runs=runs,
        methods={r["run"]: r["method"] for r in rows}, attacks=attacks,
        pairs=agg.pairs_of(done), seeds=sorted({r["seed"] for r in done}), direct=agg.direct_rows(done, runs),
        matrix=matrix, worst={run: agg.worst_case(m) for run, m in matrix.items()}, scale=scale,
        scale_labels=labels, curves=agg.seed_mean_curves(done), chance=chance, st_d=agg.st_d_by_run(done, runs),
        sparsity=agg.layer_sparsity(done, runs), costs=costs, excluded=excluded, notes=notes,
        matrix_pairs=matrix_pairs, pending=sum(n["status"] in ("pending", "running") for n in nodes),
        slc=agg.slc_by_run(done, runs, attacks), pseudo=pseudo_rows(nodes, folder),
        worst_pairs=agg.worst_by_pair(done, runs, attacks))
