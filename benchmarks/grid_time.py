#!/usr/bin/env python
"""How long the packaged digit grids take on this host, from node costs measured in real benchmark folders
(``domainlock bench --dry-run --estimate-from``): one table per suite, written as a docs page.

    python benchmarks/grid_time.py --measured /work/bench-attacks-s0 --jobs 2 --out docs/bench/grid-time
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from domainlock import __version__
from domainlock.bench.engine import run_bench
from domainlock.utils.io import atomic_write_json, atomic_write_text


def suite_estimate(suite: str, measured: list[str], jobs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="grid-time-") as empty:
        s = run_bench(suite, empty, dry_run=True, estimate_from=measured, progress=False)
    est = s.estimate
    return {"suite": suite, "plan": s.plan, "total_h": round(est.total_s / 3600, 2),
            "wall_h": round(est.wall_s(jobs) / 3600, 2), "critical_path_min": round(est.critical_path_s / 60, 1),
            "classes": est.rows, "unmeasured": est.unmeasured}


def page(rows: list[dict], args: argparse.Namespace) -> str:
    lines = ["# How long the digit grids take", "",
             f"Estimated from node costs measured by `domainlock bench` (CPU seconds of each node at one torch "
             f"thread) in {', '.join(f'`{Path(m).name}`' for m in args.measured)}; domainlock {__version__}, "
             f"host `{platform.node()}` ({os.cpu_count()} cores). A class of nodes never measured borrows the mean "
             "of its family (same attack from another start, same method with other hyper-parameters) and is "
             "marked *like*; classes with no measured family are listed and not counted. Folders are read newest "
             "first: a class costs what the first folder measured of it or of its family.", "",
             f"Command: `python benchmarks/grid_time.py --measured {' '.join(args.measured)} --jobs {args.jobs} "
             f"--out {args.out}`", ""]
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
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measured", nargs="+", required=True, help="benchmark folders with finished nodes")
    ap.add_argument("--suites", nargs="+", default=["digits-offline", "digits-attacks"])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", required=True, help="page path without extension (.md and .json are written)")
    args = ap.parse_args()
    rows = [suite_estimate(s, args.measured, args.jobs) for s in args.suites]
    atomic_write_json(args.out + ".json", {"version": __version__, "host": platform.node(), "jobs": args.jobs,
                                           "suites": rows})
    atomic_write_text(args.out + ".md", page(rows, args))
    print(f"wrote {args.out}.md")


if __name__ == "__main__":
    main()
