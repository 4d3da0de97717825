#!/usr/bin/env python
"""What NTP's protection costs against training the source model, and what the protected models resist,
for NTP's hyper-parameters before and after ``sim_every = 3`` (and with 5) (the issue's cost target: NTP <= 1x a source
training at unchanged quality), written as ``docs/bench/ntp-speed.md``.

1. **cost**: CPU seconds of this process (``time.process_time``) at ``--threads`` torch threads for training
   digitnet on ``--train-domain`` with the default recipe (``TrainConfig()``) and for ``protect(..., "ntp")``
   (data loading and the before/after evaluation included) on every pair; the ratio protect / training.
2. **where the time goes**: one mnist->syn protection per configuration under :mod:`cProfile` with a CPU-time
   clock, ``steps_per_iter`` cut to ``--profile-steps`` (the per-W-step parts scale linearly; the fixed
   parts do not); cumulative CPU seconds of NTP's phases.
3. **quality**: per pair and configuration, the protected model's source and target test accuracy, and the
   target test accuracy after the fine-tuning attack, the fine-tuning attack with the learning-rate search
   the fine-tuning attack with Adam at 0.003 (one point of that search's grid) and mask-reset, each with
   ``n = 100`` labelled target samples (otherwise the attacks' default protocol).

Every measurement is cached as JSON under ``--work`` (protected models too), so the page can be rebuilt
and the work split over several processes; the page lists the host and threads of each row.

    python benchmarks/ntp_speed.py --threads 1 --work /tmp/ntp-speed \\
        --source-model mnist=runs/src-mnist --source-model mnistm=runs/src-mnistm --source-model syn=runs/src-syn \\
        --out docs/bench/ntp-speed
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import time
from pathlib import Path
from typing import Any

import torch

from domainlock import __version__
from domainlock.artifact import load_artifact
from domainlock.attacks import run_attack
from domainlock.attacks.registry import get_attack
from domainlock.methods import protect
from domainlock.methods.ntp import NTPConfig
from domainlock.training import TrainConfig, train_source
from domainlock.utils.io import atomic_write_json, atomic_write_text

PAIRS = ("mnist:syn", "mnist:mnistm", "syn:mnist", "mnistm:mnist")
CONFIGS = {"before": {"sim_every": 1}, "after": {}, "every5": {"sim_every": 5}}   # after = NTPConfig() as shipped
ATTACKS = ("finetune", "finetune-search", "finetune-adam", "mask-reset")
VARIANTS = {"finetune-adam": ("finetune", {"optimizer": "adam", "lr": 0.003, "lr_pretrained": 0.00018})}
PHASES = {"NTP itself (ntp_prune)": "ntp_prune", "· simulated attacks": "simulated_attack_grads",
          "· W-step losses, forward only": "loss_terms", "· target head h_T (fit, refits)": "train_target_head",
          "· source val accuracy": "val_acc", "· BN recalibration": "recalibrate_bn",
          "protect()'s before/after evaluation": "_accuracies"}


def _stamp() -> dict[str, Any]:
    return {"host": platform.node(), "threads": torch.get_num_threads(), "domainlock": __version__,
            "torch": torch.__version__}


def _cached(path: Path, fn) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    out = {**fn(), **_stamp()}
    atomic_write_json(path, out)
    return out


def train_cost(domain: str, seed: int, data_root: Any) -> dict[str, Any]:
    t0 = time.process_time()
    art = train_source(domain, "digitnet", TrainConfig(seed=seed), device="cpu", data_root=data_root,
                       progress=False)
    return {"domain": domain, "cpu_s": round(time.process_time() - t0, 2),
            "loop_cpu_s": art.card["training"].get("train_loop_cpu_s"),
            "test_acc": art.card.get("metrics", {}).get("accuracy", {}).get("test")}


def protect_run(cfg: str, pair: str, models: dict[str, str], seed: int, data_root: Any, work: Path) -> dict:
    src, tgt = pair.split(":")
    hp = NTPConfig(**CONFIGS[cfg])
    t0 = time.process_time()
    res = protect(models[src], "ntp", source=src, target=tgt, hparams=hp, data_root=data_root, device="cpu",
                  seed=seed, progress=False, out=work / f"{cfg}-{src}-{tgt}", overwrite=True)
    cpu = time.process_time() - t0
    acc = res.card["protection"]["accuracy_test"]
    return {"config": cfg, "pair": pair, "hparams": CONFIGS[cfg], "cpu_s": round(cpu, 2),
            "source_before": acc[src]["before"], "source_after": acc[src]["after"],
            "target_before": acc[tgt]["before"], "target_after": acc[tgt]["after"],
            "sparsity": res.card["protection"]["sparsity"]}


def attack_run(cfg: str, pair: str, attack: str, seed: int, data_root: Any, work: Path) -> dict:
    src, tgt = pair.split(":")
    name, extra = VARIANTS.get(attack, (attack, {}))
    params = get_attack(name).Params(n=100, **extra)
    t0 = time.process_time()
    rep = run_attack(load_artifact(work / f"{cfg}-{src}-{tgt}"), name, target=tgt, source=src, params=params,
                     data_root=data_root, device="cpu", seed=seed)
    return {"config": cfg, "pair": pair, "attack": attack, "target_acc": rep.target_acc,
            "cpu_s": round(time.process_time() - t0, 2),
            **{k: rep.info[k] for k in ("pick", "grid") if k in rep.info}}


def profile_run(cfg: str, models: dict[str, str], steps: int, seed: int, data_root: Any) -> dict:
    hp = NTPConfig(**{**CONFIGS[cfg], "steps_per_iter": steps})
    prof = cProfile.Profile(time.process_time)
    t0 = time.process_time()
    prof.enable()
    protect(models["mnist"], "ntp", source="mnist", target="syn", hparams=hp, data_root=data_root, device="cpu",
            seed=seed, progress=False)
    prof.disable()
    total = time.process_time() - t0
    stats = pstats.Stats(prof).stats
    phases = {}
    for label, fn in PHASES.items():
        cum = [v[3] for k, v in stats.items() if k[2] == fn]
        phases[label] = round(max(cum), 2) if cum else 0.0
    return {"config": cfg, "steps_per_iter": steps, "total_cpu_s": round(total, 2), "phases": phases}


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def page(args: argparse.Namespace, train: dict, prots: list[dict], atts: list[dict], profs: list[dict]) -> str:
    hosts = sorted({r["host"] for r in [train, *prots, *atts, *profs]})
    threads = sorted({r["threads"] for r in [train, *prots, *atts, *profs]})
    cmd = (f"python benchmarks/ntp_speed.py --threads {args.threads} --work {args.work} "
           + " ".join(f"--source-model {m}" for m in args.source_model) + f" --out {args.out}")
    cfg_text = ", ".join(f"`{k}` = NTPConfig({', '.join(f'{a}={b}' for a, b in v.items()) or 'defaults'})"
                         for k, v in CONFIGS.items() if k in args.configs)
    lines = ["# What NTP's protection costs", "",
             f"domainlock {__version__}, torch {torch.__version__}, host(s) `{'`, `'.join(hosts)}`, "
             f"{'/'.join(map(str, threads))} torch thread(s); CPU seconds of the measuring process "
             f"(`time.process_time`). Configurations: {cfg_text}.", "", f"Command: `{cmd}`", "",
             "## Cost against a source training", "",
             f"Training digitnet on {train['domain']} (default recipe, whole call): **{train['cpu_s']:.1f} CPU s** "
             f"(training loop {train['loop_cpu_s']} s). Protect = the whole `protect()` call (loading, NTP, "
             "the before/after evaluation).", "",
             "| configuration | pair | protect CPU s | ÷ source training |", "|---|---|---:|---:|"]
    for r in prots:
        lines.append(f"| {r['config']} | {r['pair'].replace(':', '→')} | {r['cpu_s']:.1f} | "
                     f"{r['cpu_s'] / train['cpu_s']:.2f}x |")
    if profs:
        lines += ["", "## Where the time goes (mnist→syn)", "",
                  f"cProfile with a CPU clock, `steps_per_iter = {profs[0]['steps_per_iter']}` instead of 60 "
                  "(the per-W-step phases scale by 60 / that at full length). Cumulative CPU s; phases nest "
                  "(rows marked · are inside `ntp_prune`; the W-steps' backward passes and optimizer steps are "
                  "counted in `ntp_prune` only).", "",
                  "| phase | " + " | ".join(p["config"] for p in profs) + " |",
                  "|---|" + "---:|" * len(profs)]
        for label in PHASES:
            lines.append(f"| {label} | " + " | ".join(f"{p['phases'][label]:.1f}" for p in profs) + " |")
        lines.append("| **whole protect()** | " + " | ".join(f"{p['total_cpu_s']:.1f}" for p in profs) + " |")
    lines += ["", "## Quality (test accuracy %, n = 100 for the attacks)", "",
              "| pair | configuration | source before → after | target before → after (direct) | "
              + " | ".join(ATTACKS) + " |", "|---|---|---|---|" + "---:|" * len(ATTACKS)]
    by = {(a["config"], a["pair"], a["attack"]): _cell(a) for a in atts}
    for pair in args.pairs:
        for r in [p for p in prots if p["pair"] == pair]:
            lines.append(f"| {pair.replace(':', '→')} | {r['config']} | {_pct(r['source_before'])} → "
                         f"{_pct(r['source_after'])} | {_pct(r['target_before'])} → {_pct(r['target_after'])} | "
                         + " | ".join(by.get((r["config"], pair, a), "–") for a in ATTACKS) + " |")
    lines += ["", "finetune-search: the attacker's pick (optimizer, learning rate of fresh weights) on a 20-sample "
              "held-out share of its 100, in brackets; that pick is noisy, so compare the grid's points too "
              "(finetune-adam: `finetune --optimizer adam --lr 0.003 --lr-pretrained 0.00018`, the grid point the "
              "search picked on the every5 model of mnist→syn)."]
    return "\n".join(lines) + "\n"


def _cell(a: dict) -> str:
    pick = a.get("pick")
    return _pct(a["target_acc"]) + (f" ({pick['optimizer']} {pick['lr']:g})" if pick else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=lambda s: s.split(","), default=list(PAIRS))
    ap.add_argument("--configs", type=lambda s: s.split(","), default=["before", "after", "every5"],
                    help=f"of {', '.join(CONFIGS)}")
    ap.add_argument("--attacks", type=lambda s: s.split(","), default=list(ATTACKS))
    ap.add_argument("--source-model", action="append", default=[], metavar="DOMAIN=PATH",
                    help="a trained source artifact per source domain (required for every pair's source)")
    ap.add_argument("--train-domain", default="mnist", help="the source training the costs are divided by")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile-steps", type=int, default=6, help="steps_per_iter of the profiled runs (0 = none)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--work", type=Path, required=True, help="cache of measurements and protected models")
    ap.add_argument("--only", choices=["train", "protect", "attack", "profile", "page"], default=None,
                    help="do only this part (the page is built from what the cache holds)")
    ap.add_argument("--out", default="docs/bench/ntp-speed", help="page and JSON path, without extension")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = dict(m.split("=", 1) for m in args.source_model)
    args.work.mkdir(parents=True, exist_ok=True)
    part = args.only

    def do(name: str) -> bool:
        return part in (None, name)

    train = _cached(args.work / f"train-{args.train_domain}.json",
                    lambda: train_cost(args.train_domain, args.seed, args.data_root)) if do("train") else None
    prots, atts, profs = [], [], []
    for cfg in args.configs:
        if do("profile") and args.profile_steps > 0:
            profs.append(_cached(args.work / f"profile-{cfg}.json",
                                 lambda cfg=cfg: profile_run(cfg, models, args.profile_steps, args.seed,
                                                             args.data_root)))
    for pair in args.pairs:
        for cfg in args.configs:
            if do("protect"):
                prots.append(_cached(args.work / f"protect-{cfg}-{pair.replace(':', '-')}.json",
                                     lambda cfg=cfg, pair=pair: protect_run(cfg, pair, models, args.seed,
                                                                            args.data_root, args.work)))
            for attack in args.attacks if do("attack") else []:
                atts.append(_cached(args.work / f"attack-{cfg}-{pair.replace(':', '-')}-{attack}.json",
                                    lambda cfg=cfg, pair=pair, attack=attack: attack_run(
                                        cfg, pair, attack, args.seed, args.data_root, args.work)))
    if part is not None and part != "page":
        return
    load = lambda pat: [json.loads(p.read_text()) for p in sorted(args.work.glob(pat))]  # noqa: E731
    train = train or json.loads((args.work / f"train-{args.train_domain}.json").read_text())
    order = {(c, p): i for i, (p, c) in enumerate((p, c) for p in args.pairs for c in args.configs)}
    prots = sorted([r for r in load("protect-*.json") if (r["config"], r["pair"]) in order],
                   key=lambda r: order[(r["config"], r["pair"])])
    atts = [r for r in load("attack-*.json") if (r["config"], r["pair"]) in order]
    profs = sorted([r for r in load("profile-*.json") if r["config"] in args.configs],
                   key=lambda r: args.configs.index(r["config"]))
    atomic_write_text(Path(args.out + ".md"), page(args, train, prots, atts, profs))
    atomic_write_json(Path(args.out + ".json"), {"train": train, "protect": prots, "attack": atts,
                                                 "profile": profs, **_stamp()})


if __name__ == "__main__":
    main()
