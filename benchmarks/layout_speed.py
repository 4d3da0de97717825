#!/usr/bin/env python
"""What channels-last weights buy on this host: digitnet's training and inference steps, and the query-heavy
attacks (distillation, input disguise, SHOT) run both ways on one model, in one process, at one torch thread;
and the inference cost per image by batch size.

    python benchmarks/layout_speed.py --model runs/mnist-source --target syn --source mnist \
        --steps 100 --out docs/bench/layout
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from domainlock import __version__
from domainlock.attacks import get_attack, run_attack
from domainlock.models import build_model
from domainlock.utils.io import atomic_write_json, atomic_write_text
from domainlock.utils.layout import set_channels_last, to_channels_last


def step_cost(train: bool, fast: bool, reps: int) -> float:
    """CPU s of one digitnet step on a batch of 128 (forward + backward when ``train``, no_grad otherwise)."""
    torch.manual_seed(0)
    model = build_model("digitnet", num_classes=10).train(train)
    if fast:
        to_channels_last(model)
    x = torch.rand(128, 3, 32, 32)

    def once() -> None:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)

    for _ in range(3):
        once()
    t0 = time.process_time()
    for _ in range(reps):
        once()
    return (time.process_time() - t0) / reps


def per_image_ms(batch: int, images: int = 2048) -> float:
    """CPU ms per image of channels-last digitnet inference in batches of ``batch``."""
    torch.manual_seed(0)
    model = to_channels_last(build_model("digitnet", num_classes=10).eval())
    x = torch.rand(batch, 3, 32, 32)
    with torch.no_grad():
        model(x)
        t0 = time.process_time()
        for _ in range(max(2, images // batch)):
            model(x)
    return (time.process_time() - t0) / max(2, images // batch) / batch * 1e3


def attack_cost(args: argparse.Namespace, attack: str, params: dict, fast: bool) -> dict:
    previous = set_channels_last(fast)
    try:
        att = get_attack(attack)
        t0 = time.process_time()
        rep = run_attack(args.model, attack, target=args.target, source=args.source if attack == "disguise" else None,
                         params=att.Params(**params), device="cpu", seed=0)
        return {"cpu_s": round(time.process_time() - t0, 2), "target_acc": round(rep.target_acc, 4)}
    finally:
        set_channels_last(previous)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a digitnet artifact (the attacked model)")
    ap.add_argument("--target", default="syn")
    ap.add_argument("--source", default="mnist")
    ap.add_argument("--steps", type=int, default=100, help="steps of the distillation and disguise attacks")
    ap.add_argument("--out", required=True, help="page path without extension (.md and .json are written)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = [{"what": f"digitnet {'training' if train else 'inference'} step, batch 128",
              "contiguous": round(step_cost(train, False, 20), 4),
              "channels_last": round(step_cost(train, True, 20), 4)} for train in (True, False)]
    runs = {"distill": {"steps": args.steps}, "disguise": {"steps": args.steps}, "shot": {}}
    attacks = []
    for name, params in runs.items():
        slow, fast = attack_cost(args, name, params, False), attack_cost(args, name, params, True)
        attacks.append({"what": f"attack {name} " + " ".join(f"--{k} {v}" for k, v in params.items()),
                        "contiguous": slow["cpu_s"], "channels_last": fast["cpu_s"],
                        "target_acc": [slow["target_acc"], fast["target_acc"]]})
    rows = steps + attacks
    command = (f"python benchmarks/layout_speed.py --model {args.model} --target {args.target} --source {args.source} "
               f"--steps {args.steps} --out {args.out}")
    lines = ["# Channels-last weights on CPU", "",
             f"CPU seconds at one torch thread, domainlock {__version__}, torch {torch.__version__}, host "
             f"`{platform.node()}` ({os.cpu_count()} cores); both layouts in one process "
             "(`domainlock.utils.layout.set_channels_last`). The attacked model is a digitnet trained on "
             f"{args.source}; attacks target {args.target}, seed 0. A layout changes the order of floating-point sums "
             "only, but those differences compound along a training run, so the two layouts' attacks end a few "
             "points apart, as two hosts would.", "", f"Command: `{command}`", "",
             "| what | contiguous s | channels-last s | speed-up | target acc (contiguous / channels-last) |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        acc = " / ".join(f"{a:.4f}" for a in r["target_acc"]) if "target_acc" in r else ""
        lines.append(f"| {r['what']} | {r['contiguous']} | {r['channels_last']} | "
                     f"{r['contiguous'] / r['channels_last']:.2f}x | {acc} |")
    batches = {b: round(per_image_ms(b), 4) for b in (32, 64, 128, 256, 512, 1024)}
    lines += ["", "Inference cost per image by batch size (channels-last digitnet, one thread): the evaluation "
              "batch (`domainlock.evaluation.EVAL_BATCH`) and a black-box model's answer chunk follow it.", "",
              "| batch | ms per image |", "|---:|---:|", *(f"| {b} | {ms} |" for b, ms in batches.items())]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic_write_json(out.with_suffix(".json"), {"command": command, "version": __version__, "threads": 1,
                                                 "host": platform.node(), "rows": rows,
                                                 "inference_ms_per_image": batches})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
