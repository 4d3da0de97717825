#!/usr/bin/env python
"""What sharing learning-curve points between a folder's attack nodes saves: the CPU seconds of the same attack
nodes (same keys, so the same configurations) in a folder whose nodes each kept their own points (``--before``)
and in one where they share ``DIR/points`` (``--after``), with a check that every cell they feed has the same
figures. Run the same suite restricted the same way into both, the ``--after`` one with source and protection
nodes copied over (the engine adopts finished nodes), so that only the attack nodes are computed:

    python benchmarks/shared_points.py --before runs/bench-offline --after runs/bench-shared \
        --suite digits-offline --out docs/bench/shared-points --after-run "domainlock bench ..."
"""

from __future__ import annotations

import argparse
import json
import platform
from collections import defaultdict
from pathlib import Path

from domainlock import __version__
from domainlock.bench.store import Store
from domainlock.utils.io import atomic_write_json, atomic_write_text


def attack_costs(folder: str) -> dict[str, tuple[str, float]]:
    """Finished attack node key -> (label, CPU seconds)."""
    with Store(folder) as st:
        return {n["key"]: (n["label"], float(n["result"]["cpu_s"])) for n in st.nodes()
                if n["kind"] == "attack" and n["status"] == "done" and (n["result"] or {}).get("cpu_s") is not None}


#: the figures a cell's attack yields (its cost figures differ from run to run by nature)
RESULT_FIGURES = ("curves", "slc_auc", "slc_auc_raw", "unprotected_slc_auc", "recovery", "target_acc_after_attack")


def cell_figures(folder: str, suite: str) -> dict[str, str]:
    with Store(folder) as st:
        return {c["key"]: json.dumps({k: c["figures"].get(k) for k in RESULT_FIGURES}, sort_keys=True)
                for c in st.cells(suite) if c["status"] == "done" and c["attack"] != "direct"}


def compare(before: str, after: str, suite: str) -> dict:
    old, new = attack_costs(before), attack_costs(after)
    keys = sorted(set(old) & set(new))
    by_attack: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for k in keys:
        row = by_attack[new[k][0].split(" ", 1)[0]]
        row[0] += old[k][1]
        row[1] += new[k][1]
        row[2] += 1
    cells_old, cells_new = cell_figures(before, suite), cell_figures(after, suite)
    common = set(cells_old) & set(cells_new)
    return {"nodes": len(keys), "before_s": sum(old[k][1] for k in keys), "after_s": sum(new[k][1] for k in keys),
            "by_attack": {a: {"nodes": n, "before_s": b, "after_s": s} for a, (b, s, n) in by_attack.items()},
            "cells": len(common), "cells_identical": sum(cells_old[k] == cells_new[k] for k in common)}


def page(r: dict, args: argparse.Namespace) -> str:
    lines = ["# Shared learning-curve points: what a grid's attack nodes cost", "",
             f"The same attack nodes (same keys) of suite `{args.suite}` computed with one point cache per node "
             f"(`{Path(args.before).name}`) and with the folder's shared `points/` (`{Path(args.after).name}`); "
             f"CPU seconds of each node's own process at one torch thread; domainlock {__version__}, host "
             f"`{platform.node()}`.", "",
             f"Command: `python benchmarks/shared_points.py --before {args.before} --after {args.after} "
             f"--suite {args.suite} --out {args.out}`" + (f"; the `--after` folder ran `{args.after_run}`."
                                                           if args.after_run else ""), "",
             "| attack | nodes | CPU s, own points | CPU s, shared points | ratio |", "|---|---:|---:|---:|---:|"]
    for a, x in sorted(r["by_attack"].items()):
        lines.append(f"| {a} | {x['nodes']} | {x['before_s']:.0f} | {x['after_s']:.0f} | "
                     f"{x['after_s'] / x['before_s']:.2f}× |")
    lines += [f"| **all** | {r['nodes']} | {r['before_s']:.0f} | {r['after_s']:.0f} | "
              f"**{r['after_s'] / r['before_s']:.2f}×** |", "",
              "Cells fed by these nodes with the same curves, SLC-AUC and recovery in both folders: "
              f"{r['cells_identical']} of {r['cells']}. A masked attack trains its own points only for a model "
              "that holds exactly-zero weights; its scratch curve and the curves of every other start are the dense "
              "attack's.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="benchmark folder whose attack nodes kept their own points")
    ap.add_argument("--after", required=True, help="benchmark folder whose attack nodes shared points/")
    ap.add_argument("--suite", required=True)
    ap.add_argument("--after-run", default="", help="the command that filled --after, for the page")
    ap.add_argument("--out", required=True, help="page path without extension (.md and .json are written)")
    args = ap.parse_args()
    r = compare(args.before, args.after, args.suite)
    if not r["nodes"]:
        raise SystemExit("no attack node finished in both folders")
    atomic_write_json(args.out + ".json", {"version": __version__, "host": platform.node(), **r})
    atomic_write_text(args.out + ".md", page(r, args))
    print(f"wrote {args.out}.md")


if __name__ == "__main__":
    main()
