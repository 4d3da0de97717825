#!/usr/bin/env python
"""The measurements behind the fine-tuning attack protocol (``AttackProtocol`` defaults) and the first SLC-AUC
numbers: docs/slc_protocol.md (generated, never typed) and the JSON beside it.

Parts (``--parts``, default all; each record is kept in the JSON and a rerun skips what is there, ``--force``
redoes it; every fine-tune also goes through the SLC point cache, ``--cache-dir``):

* ``convergence``: the scratch curve on each ``--convergence-targets`` domain with the default protocol and with
  twice its length (``steps`` and ``epochs`` doubled). The change of the scratch curve's mean over ln n is
  exactly how much an SLC-AUC would move if scratch were trained twice as long (fair-to-scratch check).
* ``bn``: BatchNorm in train mode (running averages of the attacker's batches) vs re-estimated on its
  un-augmented samples after training, for scratch and the unprotected model at small n.
* ``lr``: the learning rate of inherited weights (``lr_pretrained``) for the unprotected and the protected model.
* ``lr_scratch``: the learning rate of fresh weights (``lr``) for scratch.
* ``headline``: SLC-AUC of ``--protected`` (dense and masked attacker) with the scratch and unprotected curves
  on ``--target``, and the wall time of one full curve (sum of its fine-tunes).

    python benchmarks/slc_protocol.py --protected runs/sa-map-mnist-syn-s0 \\
        --unprotected runs/sources/digitnet-mnist-s0 --target syn
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from domainlock.artifact import load_artifact
from domainlock.attacks import AttackProtocol, finetune_attack
from domainlock.attacks.slc import DEFAULT_SHOTS, PointCache, learning_curve, plot_slc, slc
from domainlock.data import load_domain
from domainlock.metrics import slc_auc_from_diff
from domainlock.utils.io import atomic_write_json, atomic_write_text

PARTS = ("convergence", "bn", "lr", "lr_scratch", "headline")


def _splits(name: str, root: Any) -> tuple[Any, Any]:
    return load_domain(name, "train", root), load_domain(name, "test", root)


def part_convergence(args, cache: PointCache) -> dict[str, Any]:
    base = AttackProtocol()
    double = dataclasses.replace(base, steps=2 * base.steps, epochs=2 * base.epochs)
    model = load_artifact(args.unprotected).model
    out = {}
    for target in args.convergence_targets.split(","):
        train, test = _splits(target, args.data_root)
        curves = {}
        for label, proto in (("1x", base), ("2x", double)):
            c = learning_curve(model, train, test, DEFAULT_SHOTS, protocol=proto, seeds=[0], from_scratch=True,
                               target_name=target, device="cpu", cache=cache)
            curves[label] = {"accuracy": c.accuracy, "steps": [p["steps"] for p in c.points],
                             "wall_s": [p["wall_s"] for p in c.points]}
        diff = [b - a for a, b in zip(curves["1x"]["accuracy"], curves["2x"]["accuracy"], strict=True)]
        out[target] = {**curves, "slc_auc_shift": -slc_auc_from_diff(list(DEFAULT_SHOTS), diff).normalized}
    return out


def part_bn(args, cache: PointCache) -> list[dict[str, Any]]:
    model = load_artifact(args.unprotected).model
    train, test = _splits(args.target, args.data_root)
    rows = []
    for n in (20, 100):
        for start in ("scratch", "unprotected"):
            for bn in ("train", "recalibrate"):
                r = finetune_attack(model, train, n, "all" if start == "scratch" else "reinit-head+all",
                                    protocol=AttackProtocol(bn=bn), seed=0, target_test=test,
                                    from_scratch=start == "scratch", device="cpu")
                rows.append({"n": n, "start": start, "bn": bn, "accuracy": r.accuracy})
    return rows


def part_lr(args, cache: PointCache) -> list[dict[str, Any]]:
    train, test = _splits(args.target, args.data_root)
    rows = []
    for label, path in (("unprotected", args.unprotected), ("protected", args.protected)):
        model = load_artifact(path).model
        for n in (20, 100):
            for lrp in (0.001, 0.003, 0.01, 0.05):
                r = finetune_attack(model, train, n, "reinit-head+all", protocol=AttackProtocol(lr_pretrained=lrp),
                                    seed=0, target_test=test, device="cpu")
                rows.append({"n": n, "start": label, "lr_pretrained": lrp, "accuracy": r.accuracy})
    return rows


def part_lr_scratch(args, cache: PointCache) -> list[dict[str, Any]]:
    model = load_artifact(args.unprotected).model
    train, test = _splits(args.target, args.data_root)
    rows = []
    for n in (20, 100):
        for lr in (0.01, 0.02, 0.05):
            r = finetune_attack(model, train, n, "all", protocol=AttackProtocol(lr=lr), seed=0, target_test=test,
                                from_scratch=True, device="cpu")
            rows.append({"n": n, "lr": lr, "accuracy": r.accuracy})
    return rows


def part_headline(args, cache: PointCache) -> dict[str, Any]:
    prot = load_artifact(args.protected)
    p = prot.card.get("protection") or {}
    out: dict[str, Any] = {"protection": {k: p.get(k) for k in ("method", "setting", "source", "target", "seed",
                                                                   "sparsity", "accuracy_test")}}
    for masked in (False, True):
        res = slc(prot, args.target, DEFAULT_SHOTS, strategy=args.strategy, masked=masked,
                  unprotected=args.unprotected, data_root=args.data_root, device="cpu", cache=cache, progress=True)
        d = res.as_dict()
        # the time each fine-tune took when it ran (a cached point keeps its original time)
        d["fit_wall_s"] = {c: round(sum(p["wall_s"] for p in d["curves"][c]["points"]), 1) for c in d["curves"]}
        out["masked" if masked else "dense"] = d
        if not masked:
            plot_slc(res, Path(args.out).with_name(Path(args.out).stem + "_dense.png"), overwrite=True,
                     title=f"{p.get('method', 'protected')} {p.get('source', '')}->{args.target}: fine-tuning attack "
                           f"({args.strategy}, dense)")
    return out


def render(db: dict[str, Any]) -> str:
    meta = db.get("meta", {})
    lines = ["# Fine-tuning attack protocol and SLC-AUC: measurements", "",
             "Generated by `benchmarks/slc_protocol.py` (never typed). "
             f"Machine: {meta.get('machine', '?')}, torch threads {meta.get('threads', '?')}, "
             f"updated {meta.get('updated', '?')}.", "",
             "Default protocol (`domainlock.attacks.AttackProtocol`):", "", "```",
             json.dumps(AttackProtocol().to_dict(), indent=1), "```", ""]
    conv = db.get("convergence")
    if conv:
        lines += ["## Scratch convergence (fair to scratch)", "",
                  "Scratch (random init, all layers) with the default protocol (1x) and twice its length (2x: "
                  "`steps` and `epochs` doubled), seed 0. *SLC-AUC shift*: how much every SLC-AUC on that target "
                  "would move if scratch were trained twice as long (minus the mean change over ln n).", ""]
        for target, c in conv.items():
            lines += [f"**{target}** (SLC-AUC shift {c['slc_auc_shift']:+.4f})", "",
                      "| n | steps 1x | scratch 1x | steps 2x | scratch 2x | change |", "|---|---|---|---|---|---|"]
            for i, n in enumerate(DEFAULT_SHOTS):
                a, b = c["1x"]["accuracy"][i], c["2x"]["accuracy"][i]
                lines.append(f"| {n} | {c['1x']['steps'][i]} | {100 * a:.2f} | {c['2x']['steps'][i]} | "
                             f"{100 * b:.2f} | {100 * (b - a):+.2f} |")
            lines.append("")
    bn = db.get("bn")
    if bn:
        lines += ["## BatchNorm statistics at small n", "",
                  "Target test accuracy (%) with BatchNorm in train mode during the attack and its running averages "
                  "at evaluation (`bn=train`), vs statistics re-estimated on the attacker's un-augmented samples "
                  "after training (`bn=recalibrate`); batch = min(32, n). Scratch: all layers; unprotected: "
                  "reinit-head+all.", "", "| n | start | train | recalibrate |", "|---|---|---|---|"]
        for n in sorted({r["n"] for r in bn}):
            for start in ("scratch", "unprotected"):
                v = {r["bn"]: r["accuracy"] for r in bn if r["n"] == n and r["start"] == start}
                lines.append(f"| {n} | {start} | {100 * v['train']:.2f} | {100 * v['recalibrate']:.2f} |")
        lines.append("")
    lr = db.get("lr")
    if lr:
        lrs = sorted({r["lr_pretrained"] for r in lr})
        lines += ["## Learning rates", "",
                  "reinit-head+all; the fresh head always trains at `lr` = 0.05, the inherited encoder at "
                  "`lr_pretrained`. Target test accuracy (%).", "",
                  "| n | start | " + " | ".join(f"lr_pretrained {v}" for v in lrs) + " |",
                  "|---|---|" + "---|" * len(lrs)]
        for n in sorted({r["n"] for r in lr}):
            for start in ("unprotected", "protected"):
                v = {r["lr_pretrained"]: r["accuracy"] for r in lr if r["n"] == n and r["start"] == start}
                lines.append(f"| {n} | {start} | " + " | ".join(f"{100 * v[k]:.2f}" for k in lrs) + " |")
        lines.append("")
    lrs = db.get("lr_scratch")
    if lrs:
        grid = sorted({r["lr"] for r in lrs})
        lines += ["Scratch (random init, all layers, every weight fresh: trains at `lr`), target test accuracy (%):",
                  "", "| n | " + " | ".join(f"lr {v}" for v in grid) + " |", "|---|" + "---|" * len(grid)]
        for n in sorted({r["n"] for r in lrs}):
            v = {r["lr"]: r["accuracy"] for r in lrs if r["n"] == n}
            lines.append(f"| {n} | " + " | ".join(f"{100 * v[k]:.2f}" for k in grid) + " |")
        lines.append("")
    head = db.get("headline")
    if head:
        prot = head.get("protection", {})
        acc = (prot.get("accuracy_test") or {}).get(prot.get("target"), {})
        lines += ["## SLC-AUC", "",
                  f"Protected model: {prot.get('method')} ({prot.get('setting')}), {prot.get('source')} -> "
                  f"{prot.get('target')}, seed {prot.get('seed')}, weight sparsity {prot.get('sparsity', 0):.4f}; "
                  f"direct target accuracy {100 * acc.get('before', float('nan')):.2f}% before protection, "
                  f"{100 * acc.get('after', float('nan')):.2f}% after.", ""]
        if Path(db["meta"].get("plot", "")).name:
            lines += [f"![curves]({Path(db['meta']['plot']).name})", ""]
        for attacker in ("dense", "masked"):
            if attacker not in head:
                continue
            d = head[attacker]
            curves = d["curves"]
            lines += [f"**{attacker} attacker**, {d['strategy']}, target {d['target']}, seeds "
                      f"{','.join(map(str, d['seeds']))}: SLC-AUC {d['slc_auc']['normalized']:+.4f} "
                      f"(raw {d['slc_auc']['raw']:+.4f}); unprotected model's SLC-AUC "
                      f"{d['unprotected_slc_auc']['normalized']:+.4f}. Fine-tuning wall time (s): "
                      + ", ".join(f"{k} {v}" for k, v in d["fit_wall_s"].items()), "",
                      "| n | protected | scratch | unprotected | d |", "|---|---|---|---|---|"]
            for i, n in enumerate(d["shots"]):
                lines.append(f"| {n} | {100 * curves['protected']['accuracy'][i]:.2f} | "
                             f"{100 * curves['scratch']['accuracy'][i]:.2f} | "
                             f"{100 * curves['unprotected']['accuracy'][i]:.2f} | "
                             f"{100 * d['slc_auc']['d'][i]:+.2f} |")
            lines.append("")
        lines += [f"Models: protected `{db['meta'].get('protected')}`, unprotected `{db['meta'].get('unprotected')}`.",
                  ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protected", required=True)
    ap.add_argument("--unprotected", required=True)
    ap.add_argument("--target", default="syn")
    ap.add_argument("--strategy", default="reinit-head+all")
    ap.add_argument("--convergence-targets", default="syn,mnist")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--out", default="docs/slc_protocol.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    jpath = out.with_suffix(".json")
    db = json.loads(jpath.read_text()) if jpath.exists() else {}
    cache = PointCache(args.cache_dir)
    funcs = {"convergence": part_convergence, "bn": part_bn, "lr": part_lr, "lr_scratch": part_lr_scratch,
             "headline": part_headline}
    for part in filter(None, args.parts.split(",")):   # --parts "" only regenerates the markdown
        if part in db and not args.force:
            print(f"{part}: kept from {jpath}")
            continue
        t0 = time.perf_counter()
        db[part] = funcs[part](args, cache)
        db["meta"] = {"machine": f"{platform.machine()} {platform.processor() or ''} ".strip(),
                      "threads": torch.get_num_threads(), "protected": args.protected,
                      "unprotected": args.unprotected, "target": args.target,
                      "plot": str(out.with_name(out.stem + "_dense.png")),
                      "updated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}
        atomic_write_json(jpath, db)
        print(f"{part}: {time.perf_counter() - t0:.0f} s")
        atomic_write_text(out, render(db))
    atomic_write_text(out, render(db))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
