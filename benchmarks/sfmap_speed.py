#!/usr/bin/env python
"""What pseudo-source synthesis + SF-MAP (and DF-MAP) cost against training the source model, before and
after a code change, as ratios measured in one run on one machine; and the protection's quality on the
attack pairs before and after.

Every measurement is a child process (``python -m domainlock ...`` with ``PYTHONPATH`` set to the code
under test, ``OMP_NUM_THREADS=--threads``); its cost is the child's CPU seconds (``RUSAGE_CHILDREN``), so
other jobs on the machine inflate the wall time but hardly the CPU time. One run:

1. trains the cost pair's source model with the current code (``domainlock train``, default recipe);
2. protects that same model with ``sf-map`` (and ``df-map`` unless ``--no-df``) with the ``--before-src``
   code and with the current code;
3. protects the ``--model`` source model of every ``--quality-pairs`` pair with both codes (seed 0) and
   reports source/target test accuracy and ST-D. These rows are kept under ``--work`` and reused by a
   later run (marked "cached" with the run that made them); the cost rows of step 2 never are.

    python benchmarks/sfmap_speed.py --before-src /path/to/old/checkout/src \\
        --model mnist=runs/src-mnist --model mnistm=runs/src-mnistm --model syn=runs/src-syn \\
        --work runs/sfmap-speed --out docs/bench/sfmap-speed.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PAIRS = "mnist:syn,mnist:mnistm,syn:mnist,mnistm:mnist"


def child(args: list[str], src: Path, threads: int) -> tuple[dict, float]:
    """Run ``python -m domainlock ARGS --json`` with the code at ``src``; (its JSON, its CPU seconds)."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "domainlock", *args, "--json", "-q"], env=env,
                          capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed: domainlock {' '.join(args)}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(proc.stdout), cpu


def version(src: Path) -> str:
    out = subprocess.run([sys.executable, "-c", "import domainlock; print(domainlock.__version__)"],
                         env=dict(os.environ, PYTHONPATH=str(src)), capture_output=True, text=True)
    rev = subprocess.run(["git", "-C", str(src), "log", "-1", "--format=%h", "--", "."], capture_output=True,
                         text=True)
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True,
                           text=True).stdout.strip()
    return f"{out.stdout.strip()} ({rev.stdout.strip() or '?'}{' + local changes' if dirty else ''})"


def protect_row(method: str, model: str, source: str, target: str, src: Path, threads: int,
                flags: tuple[str, ...] = ()) -> dict:
    doc, cpu = child(["protect", "--method", method, "--model", model, "--source", source, "--target", target,
                      "--seed", "0", "--device", "cpu", *flags], src, threads)
    prot = doc["card"]["protection"]
    info = prot.get("info", {})
    acc = prot["accuracy_test"]
    return {"method": method, "pair": f"{source}:{target}", "cpu_s": round(cpu, 1),
            "wall_time_s": round(prot["wall_time_s"], 1),
            "pseudo_source_s": info.get("pseudo_source_s"), "mask_total_s": info.get("mask_total_s"),
            "source": [acc[source]["before"], acc[source]["after"]],
            "target": [acc[target]["before"], acc[target]["after"]],
            "st_d": prot.get("st_d"), "selected_step": info.get("selected_step"),
            "synthesis_bn_loss": (info.get("pseudo_source_synthesis", {}).get("final_losses") or {}).get("bn")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before-src", type=Path, required=True, help="src/ folder of the code to compare against")
    ap.add_argument("--model", action="append", default=[], help="DOMAIN=ARTIFACT source model (repeatable)")
    ap.add_argument("--cost-pair", default="mnist:syn")
    ap.add_argument("--quality-pairs", default=PAIRS)
    ap.add_argument("--no-df", action="store_true", help="skip the df-map cost rows")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=FLAGS: one more sf-map cost row with the current code and these protect flags, "
                         "e.g. 'n1024=--pseudo-source-size 1024' (repeatable)")
    ap.add_argument("--only", choices=("all", "quality"), default="all",
                    help="quality: only fill the cached quality rows (no cost rows, no page)")
    ap.add_argument("--codes", default="before,after", help="quality rows of these codes")
    ap.add_argument("--page-only", action="store_true",
                    help="rewrite the page from --work (the last full run's cost rows and every cached quality "
                         "row of --quality-pairs, whatever code made it); measures nothing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, required=True, help="trained model and cached quality rows")
    ap.add_argument("--out", type=Path, default=Path("docs/bench/sfmap-speed.md"))
    args = ap.parse_args()
    models = dict(m.split("=", 1) for m in args.model)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.page_only:
        saved = json.loads((args.work / "sfmap-speed.json").read_text())
        quality = []
        for pair in [p for p in args.quality_pairs.split(",") if p]:
            qs, qt = pair.split(":")
            for f in sorted(args.work.glob(f"quality-sf-map-{qs}-{qt}-*.json"), key=lambda f: f.stat().st_mtime):
                row = json.loads(f.read_text())
                ver = f.stem.split(f"-{row['code']}-", 1)[1].replace("_", " ")
                quality.append(dict(row, cached=True, code=f"{row['code']}: {ver}"))
        s, t = args.cost_pair.split(":")
        write_page(args, saved["run"], saved["train_cpu_s"], saved["cost"], quality, s, t)
        return
    codes = {"before": args.before_src.resolve(), "after": SRC}
    vers = {k: version(v) for k, v in codes.items()}
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    run = {"argv": " ".join(["python", "benchmarks/sfmap_speed.py", *sys.argv[1:]]), "versions": vers,
           "threads": args.threads, "host": socket.gethostname(), "utc": stamp,
           "machine": platform.machine(), "cpus": os.cpu_count()}
    print(json.dumps(run), flush=True)

    s, t = args.cost_pair.split(":")
    train_cpu, cost = 0.0, []
    if args.only == "all":
        train_cpu, cost = cost_rows(args, codes, s, t)
    quality = quality_rows(args, codes, vers, models, stamp)
    if args.only == "all":
        (args.work / "sfmap-speed.json").write_text(json.dumps({"run": run, "train_cpu_s": train_cpu, "cost": cost,
                                                               "quality": quality}, indent=1) + "\n")
        write_page(args, run, train_cpu, cost, quality, s, t)


def cost_rows(args, codes, s, t):
    model_dir = args.work / f"src-{s}"
    _, train_cpu = child(["train", "--domain", s, "--out", str(model_dir), "--overwrite", "--seed", "0",
                          "--device", "cpu"], SRC, args.threads)
    print(f"train {s}: {train_cpu:.1f} CPU s", flush=True)
    cost = []
    for method in ("sf-map",) + (() if args.no_df else ("df-map",)):
        for code in ("before", "after"):
            row = protect_row(method, str(model_dir), s, t, codes[code], args.threads)
            row["code"] = code
            row["over_train"] = round(row["cpu_s"] / train_cpu, 3)
            cost.append(row)
            print(json.dumps(row), flush=True)
        if method == "sf-map":
            for spec in args.variant:
                name, flags = spec.split("=", 1)
                row = protect_row(method, str(model_dir), s, t, SRC, args.threads, tuple(flags.split()))
                row["code"] = f"after, {name} (`{flags}`)"
                row["over_train"] = round(row["cpu_s"] / train_cpu, 3)
                cost.append(row)
                print(json.dumps(row), flush=True)
    return train_cpu, cost


def quality_rows(args, codes, vers, models, stamp):
    quality = []
    for pair in [p for p in args.quality_pairs.split(",") if p]:
        qs, qt = pair.split(":")
        if qs not in models:
            print(f"no --model for {qs}: skip {pair}", flush=True)
            continue
        for code in args.codes.split(","):
            key = args.work / f"quality-sf-map-{qs}-{qt}-{code}-{vers[code].replace(' ', '_')}.json"
            if key.exists():
                row = json.loads(key.read_text())
                row["cached"] = True
            else:
                row = protect_row("sf-map", models[qs], qs, qt, codes[code], args.threads)
                row.update(code=code, run=stamp)
                key.write_text(json.dumps(row, indent=1) + "\n")
            quality.append(row)
            print(json.dumps(row), flush=True)
    return quality


def _pct(v: list[float]) -> str:
    return f"{100 * v[0]:.1f} → {100 * v[1]:.1f}"


def _std(d: dict | None) -> str:
    if not d:
        return "–"
    return "trivial" if d.get("trivial") else f"{d['st_d']:.3f}"


def write_page(args, run, train_cpu, cost, quality, s, t) -> None:
    cmd = " ".join(["python", "benchmarks/sfmap_speed.py", *sys.argv[1:]])
    made = f"Generated by `{cmd}`."
    if args.page_only:
        full = f" (`{run['argv']}`)" if "argv" in run else ""
        made = (f"Generated by `{cmd}` from the cost rows of the full run of {run['utc']}{full} and the cached "
                "quality rows; `code` = the commit whose src/ made a row.")
    lines = [
        "# Pseudo-source synthesis + SF-MAP / DF-MAP: cost against source training, before and after",
        "",
        f"{made} Do not edit by hand.",
        "",
        f"Code: before = {run['versions']['before']}, after = {run['versions']['after']}; torch CPU, "
        f"{run['threads']} torch thread(s) per child process, host `{run['host']}` ({run['machine']}, "
        f"{run['cpus']} CPUs, shared with other jobs), {run['utc']}.",
        "Cost = CPU seconds of the child process (protection including its data loading and evaluation), "
        f"divided by the CPU seconds of training the {s} source model (default recipe) in the same run: "
        f"**{train_cpu:.1f} s**.",
        "",
        f"## Cost ({s} → {t}, seed 0, the model trained in this run)",
        "",
        "| method | code | CPU s | ÷ source training | synthesis s | mask learning s | source | target | ST-D |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in cost:
        lines.append(f"| {r['method']} | {r['code']} | {r['cpu_s']:.1f} | **{r['over_train']:.2f}×** | "
                     f"{r['pseudo_source_s']} | {r['mask_total_s']} | {_pct(r['source'])} | "
                     f"{_pct(r['target'])} | {_std(r['st_d'])} |")
    lines += ["", "(synthesis / mask learning: the wall seconds the protection records for each part.)", "",
              "## Quality on the attack pairs (sf-map, seed 0)", "",
              "Test accuracy in %, before → after protection, true labels; ST-D as in METHODS.md §1.", "",
              "| pair | code | source | target | ST-D | BN loss of the pseudo-source | CPU s | row made |",
              "|---|---|---|---|---|---|---|---|"]
    for r in quality:
        made = f"cached ({r.get('run', '?')})" if r.get("cached") else "this run"
        lines.append(f"| {r['pair'].replace(':', ' → ')} | {r['code']} | {_pct(r['source'])} | {_pct(r['target'])} "
                     f"| {_std(r['st_d'])} | {r['synthesis_bn_loss']} | {r['cpu_s']:.1f} | {made} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
