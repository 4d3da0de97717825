#!/usr/bin/env python
"""What the model-stealing attack (``domainlock attack distill``) costs against training the source model, and
how strong it stays when it is made cheaper: the measurements behind ``DistillParams``' length and generator
width, written as ``docs/bench/distill.md``.

Each unit runs in its own process at ``--threads`` torch threads (as a ``domainlock bench`` node does) and
records its CPU seconds (``time.process_time``, data loading and the final evaluation included) and the
student's accuracy on the target test split (the attack's score):

* ``train``: training digitnet on ``--source`` with the default recipe (the ratio's denominator);
* one unit per ``--config NAME:key=value,...`` (``DistillParams`` overrides; ``NAME:`` alone is the default
  attack) × ``--model LABEL=ARTIFACT`` × ``--seeds``.

Every unit is cached as JSON under ``--work`` (a rerun skips what is there), so the work can be split over
several processes (``--only NAME``) and the page rebuilt (``--render``). The page lists each unit's host.

    python benchmarks/distill_cost.py --threads 1 --work /tmp/distill-cost --target syn --other uci-digits \\
        --model unprotected=runs/src-mnist --model ntp=runs/ntp-mnist-syn \\
        --config default: --config w16:generator_width=16 --config other:queries=other \\
        --out docs/bench/distill
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def parse_config(text: str) -> tuple[str, dict]:
    """``NAME:key=value,...`` → (name, overrides); values are read as JSON where they parse, else as text."""
    name, _, rest = text.partition(":")
    over = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            over[key] = json.loads(value)
        except json.JSONDecodeError:
            over[key] = value
    return name, over


def worker(args: argparse.Namespace) -> None:
    """One measured unit in this process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    c0 = time.process_time()
    if args.worker == "train":
        from domainlock.training import TrainConfig, train_source

        art = train_source(args.source, "digitnet", TrainConfig(seed=0), device="cpu", progress=False)
        out = {"accuracy": art.card["metrics"]["accuracy"]["test"]}
    else:
        from domainlock.attacks import run_attack
        from domainlock.attacks.distill import DistillParams

        over = json.loads(args.overrides)
        rep = run_attack(args.model, "distill", target=args.target, other=args.other, device="cpu",
                         params=DistillParams(**over), seed=args.seed)
        out = {"accuracy": rep.target_acc, "queries": rep.info.get("queries"), "steps": rep.info.get("student_steps")}
    out.update(cpu_s=round(time.process_time() - c0, 1), host=platform.node(), threads=torch.get_num_threads())
    print("RESULT " + json.dumps(out), flush=True)


def run_unit(path: Path, argv: list[str], threads: int) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{path.stem}: {res.stderr.strip().splitlines()[-1]}")
    out = json.loads([x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    print(f"  {path.stem:<40} {out['cpu_s']:8.1f} CPU s  accuracy {out['accuracy']:.4f}", flush=True)
    return out


def page(rows: list[dict], train: dict, args: argparse.Namespace) -> str:
    import statistics

    hosts = sorted({h for r in rows for h in r["hosts"]} | {train["host"]})
    ref = {(r["model"], r["queries"]): statistics.mean(r["accuracy"]) for r in rows if r["config"] in args.reference}
    lines = [
        "# What model stealing costs, and how strong it stays", "",
        f"The distillation attack (`domainlock attack distill`, target `{args.target}`, other-domain images "
        f"`{args.other}`) against training the source model (digitnet on `{args.source}`, default recipe: "
        f"**{train['cpu_s']:.1f} CPU s**), every unit its own process at {args.threads} torch thread(s) on "
        f"{', '.join(hosts)}. CPU seconds include data loading and the final evaluation. Accuracy is the "
        "student's on the target test split, mean over attack seeds (± sample std with more than one); Δ is "
        f"that mean minus the mean of the reference row ({', '.join(f'`{c}`' for c in args.reference)}) with the same "
        "model and query source, in points.", "",
        "Command: `python benchmarks/distill_cost.py " + " ".join(sys.argv[1:]).replace(" --render", "") + "`", "",
        "| config | overrides | model | seeds | CPU s | ÷ source training | student accuracy % | Δ |",
        "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        accs = [100 * a for a in r["accuracy"]]
        spread = f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
        cpu = statistics.mean(r["cpu_s"])
        key = (r["model"], r["queries"])
        delta = f"{statistics.mean(accs) - 100 * ref[key]:+.1f}" if key in ref else "—"
        lines.append(f"| {r['config']} | {r['overrides'] or '(defaults)'} | {r['model']} | {len(accs)} | {cpu:.0f} "
                     f"| {cpu / train['cpu_s']:.2f}× | {statistics.mean(accs):.1f}{spread} | {delta} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--source", default="mnist")
    ap.add_argument("--target", default="syn")
    ap.add_argument("--other", default="uci-digits")
    ap.add_argument("--model", action="append", default=[], help="LABEL=ARTIFACT (repeat)")
    ap.add_argument("--config", action="append", default=[], help="NAME:key=value,... (repeat)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--reference", nargs="+", default=["default"],
                    help="the configs the Δ column compares with (one per query source)")
    ap.add_argument("--only", help="run only this config (the others are read from --work if there)")
    ap.add_argument("--work", required=True, help="folder of the per-unit JSON cache")
    ap.add_argument("--out", help="page path without extension (.md and .json are written)")
    ap.add_argument("--render", action="store_true", help="only rewrite the page from the cache")
    ap.add_argument("--worker", choices=["train", "distill"], help=argparse.SUPPRESS)
    ap.add_argument("--overrides", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.model = args.model[0].split("=", 1)[1] if args.model else None
        return worker(args)
    work = Path(args.work)
    base = ["--work", str(work), "--threads", str(args.threads), "--source", args.source, "--target", args.target,
            "--other", args.other]
    load = (lambda p, a: json.loads(p.read_text())) if args.render else (lambda p, a: run_unit(p, a, args.threads))
    train = load(work / f"train-{args.source}.json", [*base, "--worker", "train"])
    rows = []
    for name, over in map(parse_config, args.config):
        for label, artifact in (m.split("=", 1) for m in args.model):
            row = {"config": name, "overrides": ", ".join(f"{k}={v}" for k, v in over.items()), "model": label,
                   "queries": over.get("queries", "generator"), "accuracy": [], "cpu_s": [], "hosts": []}
            for seed in args.seeds:
                path = work / f"{name}-{label}-s{seed}.json"
                if (args.only and name != args.only) or (args.render and not path.exists()):
                    if not path.exists():
                        continue
                    out = json.loads(path.read_text())
                else:
                    out = load(path, [*base, "--worker", "distill", "--model", f"{label}={artifact}",
                                      "--overrides", json.dumps(over), "--seed", str(seed)])
                row["accuracy"].append(out["accuracy"])
                row["cpu_s"].append(out["cpu_s"])
                row["hosts"] = sorted(set(row["hosts"]) | {out["host"]})
            if row["accuracy"]:
                rows.append(row)
    if args.out:
        from domainlock.utils.io import atomic_write_json, atomic_write_text

        atomic_write_json(Path(args.out).with_suffix(".json"), {"train": train, "rows": rows})
        atomic_write_text(Path(args.out).with_suffix(".md"), page(rows, train, args))


if __name__ == "__main__":
    main()
