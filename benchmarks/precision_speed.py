#!/usr/bin/env python
"""What a bf16 forward (``TrainConfig.precision``, ``AttackProtocol.precision``) buys and costs on this host:
training the source model and one fine-tuning learning curve, each in float32 and in bf16, written as
``docs/bench/precision.md``.

Every unit runs in its own process at ``--threads`` torch threads and records its CPU seconds
(``time.process_time`` of the whole unit) and what it produced:

* ``train``: digitnet on ``--source`` with the default recipe; its test accuracy on every ``--domains`` domain;
* ``curve``: the SLC learning curve (7 sample counts) of ``--model`` (the unprotected start) and of scratch on
  ``--target``; target test accuracy per sample count.

A third pair of training units puts the whole training step under autocast (augmentation and optimizer
included), the reason only the forward is autocast (:mod:`domainlock.utils.precision`). Units are cached as
JSON under ``--work`` (a rerun skips what is there).

    python benchmarks/precision_speed.py --threads 1 --work /tmp/precision --model runs/src-mnist \\
        --out docs/bench/precision
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

SHOTS = (10, 20, 50, 100, 200, 500, 1000)
UNITS = [("train", "fp32"), ("train", "bf16"), ("train", "whole-step"), ("unprotected", "fp32"),
         ("unprotected", "bf16"), ("scratch", "fp32"), ("scratch", "bf16")]


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.precision == "whole-step":   # the whole process under autocast: what the forward-only design avoids
        torch.autocast("cpu", dtype=torch.bfloat16).__enter__()
    precision = "bf16" if args.precision == "bf16" else "fp32"
    from domainlock.data import load_domain
    from domainlock.evaluation import accuracy

    c0 = time.process_time()
    if args.worker == "train":
        from domainlock.training import TrainConfig, train_source

        art = train_source(args.source, "digitnet", TrainConfig(seed=0, precision=precision), device="cpu",
                           progress=False)
        acc = {d: accuracy(art.model, load_domain(d, "test"), device="cpu") for d in args.domains}
    else:
        from domainlock.artifact import load_artifact
        from domainlock.attacks.finetune import AttackProtocol
        from domainlock.attacks.slc import learning_curve

        curve = learning_curve(load_artifact(args.model).model, load_domain(args.target, "train"),
                               load_domain(args.target, "test"), SHOTS, from_scratch=args.worker == "scratch",
                               protocol=AttackProtocol(precision=precision), device="cpu", cache=None)
        acc = dict(zip(map(str, SHOTS), curve.accuracy, strict=True))
    out = {"accuracy": acc, "cpu_s": round(time.process_time() - c0, 1), "host": platform.node()}
    print("RESULT " + json.dumps(out), flush=True)


def run_unit(work: Path, kind: str, precision: str, args: argparse.Namespace) -> dict:
    path = work / f"{kind}-{precision}.json"
    if path.exists():
        return json.loads(path.read_text())
    cmd = [sys.executable, __file__, "--worker", kind, "--precision", precision, "--threads", str(args.threads),
           "--work", str(work), "--source", args.source, "--target", args.target, "--model", args.model,
           "--domains", *args.domains]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{kind} {precision}: {res.stderr.strip().splitlines()[-1]}")
    out = json.loads([x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    print(f"  {kind:<12} {precision:<10} {out['cpu_s']:8.1f} CPU s", flush=True)
    return out


def page(r: dict, args: argparse.Namespace) -> str:
    hosts = sorted({u["host"] for u in r.values()})
    lines = ["# A bf16 forward: speed and what it changes", "",
             f"Each unit its own process at {args.threads} torch thread(s) on {', '.join(hosts)}; CPU seconds of the "
             "whole unit (data loading and evaluation included). Accuracies are test-split accuracies in %.", "",
             "Command: `python benchmarks/precision_speed.py " + " ".join(sys.argv[1:]) + "`", "",
             "## Training the source model (digitnet, default recipe, on " + args.source + ")", "",
             "| precision | CPU s | ÷ fp32 | " + " | ".join(f"{d} %" for d in args.domains) + " |",
             "|---|---:|---:|" + "---:|" * len(args.domains)]
    base = r["train-fp32"]["cpu_s"]
    for p in ("fp32", "bf16", "whole-step"):
        u = r[f"train-{p}"]
        lines.append(f"| {p} | {u['cpu_s']:.1f} | {u['cpu_s'] / base:.2f}× | "
                     + " | ".join(f"{100 * u['accuracy'][d]:.1f}" for d in args.domains) + " |")
    lines += ["", "`whole-step`: the whole process under autocast, augmentation and optimizer included.", "",
              f"## One learning curve on {args.target} (fine-tuning attack, `reinit-head+all`, attack seed 0)", "",
              "| start | precision | CPU s | ÷ fp32 | " + " | ".join(f"n={n}" for n in SHOTS) + " |",
              "|---|---|---:|---:|" + "---:|" * len(SHOTS)]
    for start in ("unprotected", "scratch"):
        ref = r[f"{start}-fp32"]["cpu_s"]
        for p in ("fp32", "bf16"):
            u = r[f"{start}-{p}"]
            lines.append(f"| {start} | {p} | {u['cpu_s']:.1f} | {u['cpu_s'] / ref:.2f}× | "
                         + " | ".join(f"{100 * u['accuracy'][str(n)]:.1f}" for n in SHOTS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--source", default="mnist")
    ap.add_argument("--target", default="syn")
    ap.add_argument("--domains", nargs="+", default=["mnist", "syn", "mnistm", "uci-digits"])
    ap.add_argument("--model", required=True, help="the unprotected source model artifact (its curve)")
    ap.add_argument("--work", required=True, help="folder of the per-unit JSON cache")
    ap.add_argument("--out", help="page path without extension (.md and .json are written)")
    ap.add_argument("--worker", choices=["train", "unprotected", "scratch"], help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    r = {f"{k}-{p}": run_unit(Path(args.work), k, p, args) for k, p in UNITS}
    if args.out:
        from domainlock.utils.io import atomic_write_json, atomic_write_text

        atomic_write_json(Path(args.out).with_suffix(".json"), r)
        atomic_write_text(Path(args.out).with_suffix(".md"), page(r, args))


if __name__ == "__main__":
    main()
