"""How long a suite's grid will take, from the node costs measured in earlier benchmark folders.

Every node of the graph falls in a *class*: ``source``, ``protect <run>`` or ``<attack> <start>`` with start
``scratch``, ``unprotected`` or the protecting run's name (``finetune sa-map``). A class costs the mean
seconds of the finished nodes of that class in the measured folders:

* a node's ``cpu_s`` (CPU seconds of its own process; other load on the host cannot inflate it) when it ran
  with one thread, else its wall seconds;
* a trained source model: its training loop's seconds, CPU ones at one thread (the node itself may only have
  re-evaluated a model trained before a kill); a model the user brought costs nothing and measures nothing.

The estimate sums the classes over the nodes still to run. A class never measured borrows the mean of its
*family* (the same attack from any start; the same method under other hyper-parameters), and its row says
so (``like``); a class with no measured family is listed as unmeasured, not guessed. Folders are read in the
order given, newest first: a class takes its cost from the first folder that measured it or its family, so
older measurements fill in only what newer code has not measured.
With one thread per node and ``jobs`` nodes at once the wall time is about ``max(total / jobs, critical
path)``, the critical path being the longest source -> protect -> attack chain (a lower bound: the last nodes
may leave a core idle).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DomainlockError
from .graph import Graph
from .store import Store


def _class(kind: str, label: str, config: dict[str, Any], dep_kind: str | None, dep_label: str | None) -> str:
    if kind == "source":
        return "source"
    if kind == "protect":
        return f"protect {label.split(' ', 1)[0]}"
    start = ("scratch" if config.get("from_scratch") else "unprotected" if dep_kind == "source"
             else str(dep_label).split(" ", 1)[0])
    return f"{label.split(' ', 1)[0]} {start}"


def _family(kind: str, config: dict[str, Any], cls: str) -> str:
    return f"protect method={config.get('method')}" if kind == "protect" else cls.split(" ", 1)[0] + " *"


def _cost(row: dict[str, Any]) -> float | None:
    result = row.get("result") or {}
    if row["kind"] == "source":
        if result.get("external"):
            return None
        cpu = result.get("train_cpu_s")
        return float(cpu) if cpu is not None and row.get("threads") == 1 else result.get("train_wall_s")
    if result.get("cpu_s") is not None and row.get("threads") == 1:
        return float(result["cpu_s"])
    return row.get("wall_s")


def measured_costs(folders: Iterable[str | Path]) -> list[dict[str, list[float]]]:
    """Per folder, in order: class (and family) -> the measured seconds of its finished nodes."""
    return [_folder_costs(folder) for folder in folders]


def _folder_costs(folder: str | Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)   # class (and family) -> seconds
    if not (Path(folder) / "results.db").is_file():
        raise DomainlockError(f"--estimate-from {folder}: not a benchmark folder (no results.db)")
    with Store(folder, read_only=True) as store:
        rows = {r["key"]: r for r in store.nodes()}
    for row in rows.values():
        if row["status"] != "done":
            continue
        dep = rows.get(row["deps"][0]) if row["deps"] else None
        cost = _cost(row)
        if cost is not None:
            cls = _class(row["kind"], row["label"], row["config"] or {}, dep and dep["kind"], dep and dep["label"])
            out[cls].append(cost)
            out[_family(row["kind"], row["config"] or {}, cls)].append(cost)
    return dict(out)


@dataclass
class Estimate:
    """Seconds per class (mean measured, nodes to run) and the totals; see the module docstring."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    unmeasured: dict[str, int] = field(default_factory=dict)   # class -> nodes to run without a measurement
    total_s: float = 0.0
    critical_path_s: float = 0.0

    def wall_s(self, jobs: int) -> float:
        return max(self.total_s / max(jobs, 1), self.critical_path_s)


def estimate(graph: Graph, todo: Iterable[str], costs: list[dict[str, list[float]]]) -> Estimate:
    """The estimate for the nodes ``todo`` of ``graph`` from ``costs`` (:func:`measured_costs`, newest first)."""
    est = Estimate()
    classes: dict[str, str] = {}
    mean: dict[str, float] = {}
    for key, node in graph.nodes.items():
        dep = graph.nodes[node.deps[0]] if node.deps else None
        c = classes[key] = _class(node.kind, node.label, node.config, dep and dep.kind, dep and dep.label)
        family = _family(node.kind, node.config, c)
        for tier, measured in enumerate(costs):
            if c in mean:
                break
            for source in (c, family):
                if measured.get(source):
                    mean[c] = sum(measured[source]) / len(measured[source])
                    est.rows[c] = {"nodes": 0, "mean_s": round(mean[c], 1), "tier": tier,
                                   "measured": len(measured[source]) if source == c else 0,
                                   **({"like": family} if source != c else {})}
                    break
    for key in todo:
        c = classes[key]
        if c not in mean:
            est.unmeasured[c] = est.unmeasured.get(c, 0) + 1
            continue
        row = est.rows[c]
        row["nodes"] += 1
        est.total_s += mean[c]
    chain: dict[str, float] = {}
    for key in graph.nodes:   # nodes come in dependency order (sources, protections, attacks)
        node = graph.nodes[key]
        chain[key] = mean.get(classes[key], 0.0) + max((chain.get(d, 0.0) for d in node.deps), default=0.0)
    est.critical_path_s = max(chain.values(), default=0.0)
    est.rows = {c: r for c, r in est.rows.items() if r["nodes"]}
    for row in est.rows.values():
        row["total_s"] = round(row["nodes"] * row["mean_s"], 1)
    return est
