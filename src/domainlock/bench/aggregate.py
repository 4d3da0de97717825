"""The numbers of a benchmark report, computed from the cell rows of :meth:`Store.cells`.

Plain functions on lists of cell dicts (only ``status == "done"`` cells are passed in):

* :func:`mean_std` — mean, sample standard deviation (ddof = 1, only with more than one value), min and max of
  the values that are neither ``None`` nor NaN;
* :func:`direct_rows` — per run and pair, source/target accuracy before → after, ST-D and unseen domains over
  seeds, with :func:`run_summary` the mean over pairs;
* :func:`attack_matrix` and :func:`worst_case` — target accuracy after each attack (``direct``: no attack) and
  its recovery, and the attack that leaves the most target accuracy (ties: the higher recovery), on the cells
  :func:`attacked_cells` keeps, so that every column averages the same pairs and seeds;
* :func:`seed_mean_curves` — the fine-tuning learning curves averaged over seeds; :func:`slc_by_run` —
  SLC-AUC per run and attack over pairs and seeds;
* :func:`st_d_by_run`, :func:`layer_sparsity` — ST-D spread and per-layer mask sparsity per run;
* :func:`same_machine`, :func:`cost_table` — cost ratios (a cell's own time ÷ its source model's training
  time) from cells that ran on the source model's host, device and thread count only; the others are
  returned as excluded, never mixed in.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .graph import DIRECT
from .suite import UNPROTECTED

WHERE = ("host", "device", "threads")


@dataclass(frozen=True)
class Stat:
    """Summary of some values: ``std`` is the sample standard deviation, ``None`` unless ``n > 1``."""

    mean: float | None
    std: float | None
    n: int
    lo: float | None = None
    hi: float | None = None


def _ok(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def mean_std(values: Iterable[float | None]) -> Stat:
    """:class:`Stat` of the values that are neither ``None`` nor NaN (``mean`` is ``None`` when none is)."""
    vals = [float(v) for v in values if _ok(v)]
    if not vals:
        return Stat(None, None, 0)
    m = sum(vals) / len(vals)
    std = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return Stat(m, std, len(vals), min(vals), max(vals))


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``encoder.5`` before ``encoder.14``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def ordered(names: Iterable[str], preferred: Iterable[str] = ()) -> list[str]:
    """The distinct ``names``: first those in ``preferred`` order, then the rest sorted."""
    names = set(names)
    first = [n for n in dict.fromkeys(preferred) if n in names]
    return first + sorted(names - set(first))


def pairs_of(cells: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted({(c["source"], c["target"]) for c in cells})


def _group(cells: Iterable[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        out[tuple(c[k] for k in keys)].append(c)
    return out


# ------------------------------------------------------------------------------------------- direct use
@dataclass
class PairRow:
    """Direct use of one run on one pair over its seeds (accuracies in [0, 1])."""

    source: str
    target: str
    seeds: int
    source_before: Stat
    source_after: Stat
    target_before: Stat
    target_after: Stat
    st_d: Stat
    trivial: int
    unseen: dict[str, tuple[Stat, Stat]] = field(default_factory=dict)


def _pair_row(src: str, tgt: str, cells: list[dict[str, Any]]) -> PairRow:
    domains = sorted({d for c in cells for d in c["figures"].get("unseen", {})})
    unseen = {d: (mean_std(c["figures"].get("unseen", {}).get(d, {}).get("before") for c in cells),
                  mean_std(c["figures"].get("unseen", {}).get(d, {}).get("after") for c in cells))
              for d in domains}
    return PairRow(src, tgt, len({c["seed"] for c in cells}),
                   *(mean_std(c[k] for c in cells) for k in ("source_acc_before", "source_acc_after",
                                                             "target_acc_before", "target_acc_after", "st_d")),
                   trivial=sum(bool(c["figures"].get("trivial")) for c in cells), unseen=unseen)


def direct_rows(cells: list[dict[str, Any]], runs: list[str]) -> dict[str, list[PairRow]]:
    """Per run (in ``runs`` order), one :class:`PairRow` per pair from its direct-use cells."""
    groups = _group((c for c in cells if c["attack"] == DIRECT), "run", "source", "target")
    return {run: [_pair_row(s, t, groups[run, s, t]) for s, t in pairs_of(cells) if (run, s, t) in groups]
            for run in runs}


def run_summary(rows: list[PairRow]) -> PairRow:
    """The mean over pairs of the per-pair means (no ``std``; ``seeds`` is the total cell count)."""
    def over(get) -> Stat:
        s = mean_std(get(r).mean for r in rows)
        return Stat(s.mean, None, s.n, s.lo, s.hi)

    domains = sorted({d for r in rows for d in r.unseen})
    unseen = {d: (over(lambda r, d=d: r.unseen[d][0] if d in r.unseen else Stat(None, None, 0)),
                  over(lambda r, d=d: r.unseen[d][1] if d in r.unseen else Stat(None, None, 0))) for d in domains}
    return PairRow("", "", sum(r.seeds for r in rows), over(lambda r: r.source_before), over(lambda r: r.source_after),
                   over(lambda r: r.target_before), over(lambda r: r.target_after), over(lambda r: r.st_d),
                   sum(r.trivial for r in rows), unseen)


# ------------------------------------------------------------------------------------------- attacks
@dataclass(frozen=True)
class Entry:
    """Target accuracy after one attack (mean over pairs and seeds) and its recovery."""

    acc: Stat
    recovery: Stat


def after_attack(cell: dict[str, Any]) -> float | None:
    """A cell's target accuracy after its attack (``direct``: after protection, no attack)."""
    if cell["attack"] == DIRECT:
        return cell["target_acc_after"]
    return cell["figures"].get("target_acc_after_attack")


def attack_matrix(cells: list[dict[str, Any]], runs: list[str], attacks: list[str]
                  ) -> dict[str, dict[str, Entry]]:
    """``run -> attack -> Entry`` over every pair and seed; ``direct`` has no recovery."""
    groups = _group(cells, "run", "attack")
    return {run: {a: Entry(mean_std(after_attack(c) for c in groups[run, a]),
                           mean_std(c["recovery"] for c in groups[run, a] if a != DIRECT))
                  for a in attacks if (run, a) in groups} for run in runs}


def attacked_cells(cells: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, str]] | None]:
    """The cells of the (pair, seed)s that some attack ran on, and their pairs, when those are a proper part of
    the grid (a suite that attacks some of its pairs only); else all ``cells`` and ``None``. A mean over direct
    use on every pair beside means over the attacked pairs alone would compare different cells."""
    def key(c: dict[str, Any]) -> tuple[str, str, int]:
        return c["source"], c["target"], c["seed"]

    attacked = {key(c) for c in cells if c["attack"] != DIRECT}
    if not attacked or attacked == {key(c) for c in cells}:
        return cells, None
    kept = [c for c in cells if key(c) in attacked]
    return kept, pairs_of(kept)


def worst_case(entries: dict[str, Entry]) -> str | None:
    """The attack (``direct`` included) after which the most target accuracy is left; a tie goes to the higher
    recovery, then to the first attack. ``None`` when no attack has a value."""
    best, key = None, None
    for name, e in entries.items():
        if e.acc.mean is None:
            continue
        k = (e.acc.mean, -1.0 if e.recovery.mean is None else e.recovery.mean)
        if key is None or k > key:
            best, key = name, k
    return best


def worst_by_pair(cells: list[dict[str, Any]], runs: list[str], attacks: list[str]
                  ) -> dict[str, dict[tuple[str, str], tuple[str, Entry]]]:
    """``run -> (source, target) -> (its worst attack, that entry over seeds)``, for pairs some attack ran on: a
    mean over pairs can hide the one pair a protection falls on."""
    out: dict[str, dict[tuple[str, str], tuple[str, Entry]]] = {}
    for pair, group in _group(cells, "source", "target").items():
        if all(c["attack"] == DIRECT for c in group):
            continue
        for run, entries in attack_matrix(group, runs, attacks).items():
            w = worst_case(entries)
            if w is not None:
                out.setdefault(run, {})[pair] = (w, entries[w])
    return out


# ------------------------------------------------------------------------------------------- curves
@dataclass
class Curve:
    """Seed-mean learning curves of one (attack, run, pair)."""

    shots: list[int]
    protected: list[float]
    scratch: list[float]
    unprotected: list[float]
    slc_auc: Stat
    unprotected_slc_auc: Stat
    seeds: int
    skipped: int = 0


def _pointwise(curves: list[list[float]]) -> list[float]:
    return [mean_std(v).mean for v in zip(*curves, strict=True)]


def seed_mean_curves(cells: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], Curve]:
    """``(attack, run, source, target) -> Curve`` for every fine-tuning cell; seeds whose shots differ from the
    first seed's are left out (counted in ``skipped``)."""
    out = {}
    ft = (c for c in cells if c["figures"].get("attack_kind") == "finetune" and c["figures"].get("curves"))
    for key, group in _group(ft, "attack", "run", "source", "target").items():
        group = sorted(group, key=lambda c: c["seed"])
        shots = group[0]["figures"]["curves"]["shots"]
        same = [c for c in group if c["figures"]["curves"]["shots"] == shots]
        cv = [c["figures"]["curves"] for c in same]
        out[key] = Curve(list(shots), _pointwise([c["protected"] for c in cv]),
                         _pointwise([c["scratch"] for c in cv]), _pointwise([c["unprotected"] for c in cv]),
                         mean_std(c["slc_auc"] for c in same), mean_std(c["unprotected_slc_auc"] for c in same),
                         len(same), len(group) - len(same))
    return out


def slc_by_run(cells: list[dict[str, Any]], runs: list[str], attacks: list[str]) -> dict[str, dict[str, Stat]]:
    """``run -> attack -> Stat`` of the SLC-AUC of its fine-tuning cells over every pair and seed."""
    groups = _group((c for c in cells if c["figures"].get("attack_kind") == "finetune"), "run", "attack")
    out = {run: {a: mean_std(c["slc_auc"] for c in groups[run, a]) for a in attacks if (run, a) in groups}
           for run in runs}
    return {run: v for run, v in out.items() if v}


# ------------------------------------------------------------------------------------------- ST-D, sparsity
def st_d_by_run(cells: list[dict[str, Any]], runs: list[str]) -> dict[str, tuple[Stat, int]]:
    """``run -> (Stat of ST-D over its non-trivial direct cells, number of trivial cells)``; the unprotected
    row has no ST-D and is left out."""
    groups = _group((c for c in cells if c["attack"] == DIRECT and c["run"] != UNPROTECTED), "run")
    return {run: (mean_std(c["st_d"] for c in groups[(run,)]),
                  sum(bool(c["figures"].get("trivial")) for c in groups[(run,)]))
            for run in runs if (run,) in groups}


def layer_sparsity(cells: list[dict[str, Any]], runs: list[str]) -> dict[str, dict[str, float]]:
    """``run -> layer -> mean fraction of zero weights`` over its direct cells, for the runs whose mean
    sparsity is above 0 (layers in natural order)."""
    groups = _group((c for c in cells if c["attack"] == DIRECT), "run")
    out = {}
    for run in runs:
        group = groups.get((run,), [])
        if not group or not (mean_std(c["sparsity"] for c in group).mean or 0) > 0:
            continue
        layers = sorted({k for c in group for k in c["figures"].get("sparsity_layers", {})}, key=natural_key)
        if layers:
            out[run] = {k: mean_std(c["figures"]["sparsity_layers"].get(k) for c in group).mean for k in layers}
    return out


# ------------------------------------------------------------------------------------------- cost
def _norm(v: Any) -> Any:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


def same_machine(cell: dict[str, Any]) -> bool:
    """Whether the cell's own work ran with the host, device and thread count of its source model (all
    known)."""
    src = cell["figures"].get("source_where") or {}
    mine = [_norm(cell.get(k) if cell.get(k) is not None else cell["figures"].get(k)) for k in WHERE]
    theirs = [_norm(src.get(k)) for k in WHERE]
    return None not in mine and mine == theirs


@dataclass(frozen=True)
class Cost:
    """One run's (or one run-and-attack's) cost: seconds of its own work, of the source model's training, and
    the mean per-cell ratio of the two, over ``n`` same-machine cells. ``basis``: ``CPU`` when every cell had
    both CPU times (a node's ``cpu_s``, the training loop's CPU seconds), ``wall`` when none did, else ``mixed``."""

    seconds: Stat
    train_s: Stat
    ratio: Stat
    basis: str = "wall"


def cost_basis(cell: dict[str, Any]) -> tuple[Any, Any, str]:
    """``(own seconds, source training seconds, basis)`` of one cell: CPU seconds when both are recorded (other
    load on the host cannot inflate them), else wall seconds."""
    f = cell["figures"]
    cpu, train_cpu = f.get("cpu_s"), f.get("source_train_cpu_s")
    if _ok(cpu) and _ok(train_cpu) and train_cpu > 0:
        return cpu, train_cpu, "CPU"
    return f.get("cost_s"), f.get("source_train_s"), "wall"


def _cost(cells: list[dict[str, Any]]) -> Cost:
    picked = [cost_basis(c) for c in cells]
    bases = {b for _, _, b in picked}
    return Cost(mean_std(s for s, _, _ in picked), mean_std(t for _, t, _ in picked),
                mean_std(s / t if _ok(s) and _ok(t) and t > 0 else None for s, t, _ in picked),
                bases.pop() if len(bases) == 1 else "mixed")


def cost_table(cells: list[dict[str, Any]], runs: list[str], attacks: list[str]
               ) -> tuple[dict[str, dict[str, Cost]], list[dict[str, Any]]]:
    """``(run -> attack -> Cost, excluded cells)``: ``direct`` is the protection itself (the ``unprotected``
    row's is the source training, ratio 1). Only :func:`same_machine` cells count; the others are excluded."""
    kept = [c for c in cells if same_machine(c)]
    excluded = [c for c in cells if not same_machine(c)]
    groups = _group(kept, "run", "attack")
    return ({run: {a: _cost(groups[run, a]) for a in attacks if (run, a) in groups} for run in runs}, excluded)
