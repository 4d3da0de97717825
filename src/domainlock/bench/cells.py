"""The figures of one table cell, assembled from the results of the nodes it reads (cheap, in the engine).

Direct use (``attack = direct``): source and target test accuracy before and after protection, ST-D with its
retain/drop components (:func:`domainlock.metrics.st_d`), the unseen domains' accuracies, weight sparsity per
layer, and the protection's cost beside the source model's training cost with where each ran. The
``unprotected`` row reads the source model's own evaluation, so before equals after. Attack rows: the attack
kind's figures (:meth:`domainlock.bench.attacks.AttackKind.cell`) plus where the attack ran.
"""

from __future__ import annotations

import math
from typing import Any

from .attacks import attack_kind
from .graph import DIRECT, Cell
from .suite import UNPROTECTED, Suite


def _where(node: dict[str, Any]) -> dict[str, Any]:
    where = {k: node.get(k) for k in ("wall_s", "peak_rss_mb", "device", "threads", "host")}
    return {**where, "cpu_s": (node.get("result") or {}).get("cpu_s")}


def _trained_where(source: dict[str, Any]) -> dict[str, Any]:
    """Where a source model trained: its node, or unknown (empty) for a model the user brought."""
    return {} if source["result"].get("external") else _where(source)


def _direct(cell: Cell, nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from ..metrics import st_d

    src = nodes[cell.inputs["source"]]
    base = src["result"]
    if cell.run == UNPROTECTED:
        acc = {d: {"before": a, "after": a} for d, a in base["accuracy_test"].items()}
        where, sparsity, layers, cost = _where(src), base["sparsity"], {}, base["train_wall_s"]
    else:
        prot = nodes[cell.inputs["protected"]]
        acc = prot["result"]["accuracy_test"]
        where, sparsity = _where(prot), prot["result"]["sparsity"]
        layers, cost = prot["result"]["sparsity_layers"], prot["result"]["protect_wall_s"]
    s, t = acc[cell.source], acc[cell.target]
    figures: dict[str, Any] = {
        "source_acc_before": s["before"], "source_acc_after": s["after"],
        "target_acc_before": t["before"], "target_acc_after": t["after"],
        "unseen": {d: a for d, a in acc.items() if d not in (cell.source, cell.target)},
        "sparsity": sparsity, "sparsity_layers": layers, **where,
        "cost_s": cost, "source_train_s": base["train_wall_s"], "source_train_cpu_s": base.get("train_cpu_s"),
        "source_where": _trained_where(src),
    }
    if cell.run != UNPROTECTED:
        r = st_d(s["before"], s["after"], t["before"], t["after"], chance=base["chance"][cell.target])
        figures.update({"st_d": None if math.isnan(r.st_d) else r.st_d, "retain_s": r.retain_s,
                        "drop_t": None if math.isnan(r.drop_t) else r.drop_t, "trivial": r.trivial})
    return figures


def cell_figures(suite: Suite, cell: Cell, nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every figure of ``cell``; ``nodes`` maps each node key it reads to its finished database row."""
    if cell.attack == DIRECT:
        return _direct(cell, nodes)
    att = next(a for a in suite.attacks if a.name == cell.attack)
    kind = attack_kind(att.kind)
    src = nodes[cell.inputs["source"]]["result"]
    unprotected_t = src["accuracy_test"][cell.target]
    protected_t = (unprotected_t if cell.run == UNPROTECTED
                   else nodes[cell.inputs["protected"]]["result"]["accuracy_test"][cell.target]["after"])
    scratch = nodes[cell.inputs["scratch_attack"]]["result"] if "scratch_attack" in cell.inputs else None
    run = nodes[cell.inputs["protected_attack"]]
    figures = kind.cell(run["result"], nodes[cell.inputs["unprotected_attack"]]["result"], scratch,
                        {"protected": protected_t, "unprotected": unprotected_t}, att.params)
    return {"attack_kind": att.kind, "target_acc_before": protected_t, **figures, **_where(run),
            "cost_s": run["wall_s"], "source_train_s": src["train_wall_s"],
            "source_train_cpu_s": src.get("train_cpu_s"),
            "source_where": _trained_where(nodes[cell.inputs["source"]])}
