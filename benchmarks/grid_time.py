#!/usr/bin/env python
"""How long the packaged digit grids take on this host, from node costs measured in real benchmark folders
(``domainlock bench --dry-run --estimate-from``): one table per suite, written as a docs page, and the suites
together (``--together``): the nodes they share (source models, protections, fine-tuning curves) counted once,
as ``domainlock bench --reuse`` runs them.

    python benchmarks/grid_time.py --measured /work/bench-attacks-s0 --jobs 2 --out docs/bench/grid-time
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from domainlock import __version__
from domainlock.bench.engine import plan, run_bench
from domainlock.bench.estimate import estimate, measured_costs
from domainlock.bench.graph import Graph
from domainlock.utils.io import atomic_write_json, atomic_write_text


def suite_estimate(suite: str, measured: list[str], jobs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="grid-time-") as empty:
        s = run_bench(suite, empty, dry_run=True, estimate_from=measured, progress=False)
    est = s.estimate
    return {"suite": suite, "plan": s.plan, "total_h": round(est.total_s / 3600, 2),
            "wall_h": round(est.wall_s(jobs) / 3600, 2), "critical_path_min": round(est.critical_path_s / 60, 1),
            "classes": est.rows, "unmeasured": est.unmeasured}


def together_estimate(suites: list[str], measured: list[str], jobs: int) -> dict:
    """The union of the suites' graphs: a node two suites share (same key) is counted once."""
    nodes, cells, each = {}, [], {}
    for suite in suites:
        g = plan(suite)
        nodes.update(g.nodes)
        cells += g.cells
        each[suite] = len(g.nodes)
    est = estimate(Graph(nodes, cells), list(nodes), measured_costs(measured))
    return {"suites": suites, "nodes": len(nodes), "nodes_per_suite": each, "total_h": round(est.total_s / 3600, 2),
            "wall_h": round(est.wall_s(jobs) / 3600, 2), "unmeasured": est.unmeasured}


def page(rows: list[dict], args: argparse.Namespace, both: dict | None = None) -> str:
    lines = ["# How long the digit grids take", "",
             f"Estimated from node costs measured by `domainlock bench` (CPU seconds of each node at one torch "
             f"thread) in {', '.join(f'`{Path(m).name}`' for m in args.measured)}; domainlock {__version__}, "
             f"host `{platform.node()}` ({os.cpu_count()} cores). A class of nodes never measured borrows the mean "
             "of its family (same attack from another start, same method with other hyper-parameters) and is "
             "marked *like*; classes with no measured family are listed and not counted. Folders are read newest "
             "first: a class costs what the first folder measured of it or of its family.", "",
             f"Command: `python benchmarks/grid_time.py --measured {' '.join(args.measured)} --jobs {args.jobs} "
             f"{'--together ' if args.together else ''}--out {args.out}`", ""]
    for r in rows:
        lines += [f"## {r['suite']}", "",
                  f"{r['plan']['cells']['total']} cells, {r['plan']['source']['total']} source models, "
                  f"{r['plan']['protect']['total']} protections, {r['plan']['attack']['total']} attack runs: "
                  f"**{r['total_h']} node-hours** at one thread, about **{r['wall_h']} h wall at --jobs "
                  f"{args.jobs}** (critical path {r['critical_path_min']} min).", "",
                  "| node class | nodes | mean s | total h | measured |", "|---|---:|---:|---:|---|"]
        for c, x in sorted(r["classes"].items(), key=lambda kv: -kv[1]["total_s"]):
            how = f"like `{x['like']}`" if x.get("like") else f"{x['measured']} node(s)"
            if len(args.measured) > 1:
                how += f" in `{Path(args.measured[x['tier']]).name}`"
            lines.append(f"| {c} | {x['nodes']} | {x['mean_s']:.0f} | {x['total_s'] / 3600:.2f} | {how} |")
        if r["unmeasured"]:
            lines += ["", "Not measured, not counted: " + ", ".join(f"{c} ×{n}" for c, n in r["unmeasured"].items())]
        lines.append("")
    if both:
        shared = sum(both["nodes_per_suite"].values()) - both["nodes"]
        lines += ["## " + " and ".join(both["suites"]) + " together", "",
                  f"{both['nodes']} distinct nodes ({shared} shared between the suites, computed once: in one folder, "
                  f"or with `--reuse` of the other's): **{both['total_h']} node-hours**, about **{both['wall_h']} h "
                  f"wall at --jobs {args.jobs}**."]
        if both["unmeasured"]:
            lines += ["", "Not measured, not counted: " + ", ".join(f"{c} ×{n}" for c, n in both["unmeasured"].items())]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measured", nargs="+", required=True, help="benchmark folders with finished nodes")
    ap.add_argument("--suites", nargs="+", default=["digits-offline", "digits-attacks"])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--together", action="store_true", help="also estimate the suites together (shared nodes once)")
    ap.add_argument("--out", required=True, help="page path without extension (.md and .json are written)")
    args = ap.parse_args()
    rows = [suite_estimate(s, args.measured, args.jobs) for s in args.suites]
    both = together_estimate(args.suites, args.measured, args.jobs) if args.together else None
    atomic_write_json(args.out + ".json", {"version": __version__, "host": platform.node(), "jobs": args.jobs,
                                           "suites": rows, "together": both})
    atomic_write_text(args.out + ".md", page(rows, args, both))
    print(f"wrote {args.out}.md")


if __name__ == "__main__":
    main()
