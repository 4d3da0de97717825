#!/usr/bin/env python
"""SLC-AUC of protected digit models under the fine-tuning attack: the table behind docs/ntp_results.md.

For each run (``ntp``, ``sa-map``, the baselines), ordered pair and seed it protects the source model
``<runs>/digitnet-<source>-s<seed>`` with :func:`domainlock.methods.protect` (or reuses the artifact kept in
``--save-dir``), then attacks it with :func:`domainlock.attacks.slc` -- the fixed protocol of
:class:`~domainlock.attacks.AttackProtocol`, strategy ``reinit-head+all``, target train samples per class
balanced over ``--shots`` -- as a **dense** attacker (every weight trainable, pruned ones may regrow) and a
**masked** one (pruned weights held at zero), against the same protocol from random init (scratch) and from
the unprotected source model. The attack seed is the row's seed; scratch and unprotected curves come from
the harness's point cache, so they are trained once per target and seed whatever the number of runs.

Results are cached in the JSON beside the markdown, one record per ``run|src|tgt|seed``: a rerun skips what
is there (``--force`` redoes it) and the markdown is regenerated from every record (``--render-only``).
``--slc-out`` also writes the dense SLC-AUC of the baseline runs in the form ``scripts/baselines_table.py
--slc`` merges.

    python scripts/slc_table.py --runs-spec ntp,sa-map --seeds 0 1
    python scripts/slc_table.py --runs-spec ntl:target,cuti:target,magnitude:0.9 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from domainlock import __version__
from domainlock.bench import tables
from domainlock.bench.tables import mean, pct
from domainlock.utils.io import atomic_write_json, atomic_write_text

PAIRS = [("mnist", "syn"), ("mnist", "mnistm"), ("syn", "mnist"), ("mnistm", "mnist")]
DOMAINS = ["mnist", "uci-digits", "syn", "mnistm"]
SHOTS = [10, 20, 50, 100, 200, 500, 1000]
#: run name -> (method, hyper-parameter overrides); the variant of a baseline follows the colon
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    # NTP as shipped: no rescale, the simulated fine-tuning attack term on (ntp.simulated_attack_grads)
    "ntp": ("ntp", {}),
    # the non-transferable collapse alone (no simulated attack, no rescale; 5 x 30 W-steps)
    "ntp:unscaled": ("ntp", {"sim_weight": 0.0, "steps_per_iter": 30}),
    # the collapse plus the exact weight rescale (weight_scale/bn_scale), which slows a naive fine-tuner but
    # is undone exactly by domainlock.methods.ntp.normalize_scales (hence off by default)
    "ntp:rescaled": ("ntp", {"weight_scale": 1000.0, "bn_scale": 100.0, "sim_weight": 0.0, "steps_per_iter": 30}),
    "sa-map": ("sa-map", {}),
    "ntl:target": ("ntl", {"variant": "target"}),
    "cuti:target": ("cuti", {"variant": "target"}),
    "ntl:source-only": ("ntl", {"variant": "source-only"}),
    "cuti:target-free": ("cuti", {"variant": "target-free"}),
    "magnitude:0.9": ("magnitude", {"sparsity": 0.9}),
}
#: issue targets (NTP): normalized SLC-AUC, dense and masked; source drop in points
TARGET_DENSE, TARGET_MASKED, TARGET_DROP = -0.10, -0.25, 2.0


def key(run: str, src: str, tgt: str, seed: int) -> str:
    return f"{run}|{src}|{tgt}|{seed}"


def protected_artifact(run: str, src: str, tgt: str, seed: int, args) -> tuple[Path, dict[str, Any]]:
    from domainlock.artifact import read_card
    from domainlock.methods import get_method, protect

    method, overrides = RUNS[run]
    out = args.save_dir / f"{run.replace(':', '-')}-{src}-{tgt}-s{seed}"
    if (out / "card.json").exists() and not args.force:
        return out, read_card(out)
    art = tables.source_model(args.runs, args.arch, src, seed)
    hp = get_method(method).Hparams(**overrides)
    others = [d for d in DOMAINS if d not in (src, tgt)]
    res = protect(str(art), method, source=src, target=tgt, eval_domains=others, data_root=args.data_root,
                  seed=seed, hparams=hp, device=args.device, progress=False, out=out, overwrite=True)
    return out, res.card


def run_one(run: str, src: str, tgt: str, seed: int, args) -> dict[str, Any]:
    from domainlock.attacks.slc import slc

    t0 = time.perf_counter()
    path, card = protected_artifact(run, src, tgt, seed, args)
    prot = card["protection"]
    source_art = args.runs / f"{args.arch}-{src}-s{seed}"
    rec: dict[str, Any] = {
        "run": run, "method": prot["method"], "source": src, "target": tgt, "seed": seed,
        "accuracy": prot["accuracy_test"], "st_d": prot["st_d"], "sparsity": prot["sparsity"],
        "protect_wall_s": prot["wall_time_s"], "protect_device": prot.get("device"), "artifact": str(path),
        "hparams": prot["hparams"],
    }
    src_card = json.loads((source_art / "card.json").read_text())
    rec["source_training"] = {"wall_s": src_card["training"]["wall_s"], "device": src_card["training"]["device"]}
    for attacker, masked in (("dense", False), ("masked", True)):
        if masked and prot["sparsity"] == 0:
            # no weight is exactly zero, so holding the zeros at zero changes nothing: the masked attacker
            # *is* the dense one (same seed, same protocol); reuse its curve instead of training it again
            rec["masked"] = dict(rec["dense"], same_as_dense=True)
            continue
        r = slc(str(path), tgt, args.shots, strategy=args.strategy, masked=masked, seeds=(seed,),
                unprotected=str(source_art), data_root=args.data_root, device=args.device, progress=False)
        rec[attacker] = {"slc_auc": r.score.normalized, "raw": r.score.raw,
                         "unprotected_slc_auc": r.unprotected_score.normalized,
                         "protected": r.protected.accuracy, "scratch": r.scratch.accuracy,
                         "unprotected": r.unprotected.accuracy, "wall_s": r.wall_s}
    rec["shots"] = list(args.shots)
    rec["strategy"] = args.strategy
    rec["source_model"] = str(source_art)
    rec["total_s"] = time.perf_counter() - t0
    return rec


# ------------------------------------------------------------------------------------------------ render
def drop(rec: dict[str, Any]) -> float:
    a = rec["accuracy"][rec["source"]]
    return 100 * (a["before"] - a["after"])


def run_hparams(run: str, records: dict[str, dict]) -> dict[str, Any]:
    return tables.method_non_default_hparams(RUNS[run][0], [v.get("hparams") or {} for v in records.values()
                                                            if v["run"] == run])


def render(records: dict[str, dict], meta: dict[str, Any]) -> str:
    runs = [r for r in RUNS if any(v["run"] == r for v in records.values())]
    lines = [
        "# SLC-AUC: the fine-tuning attack on protected digit models",
        "",
        f"Generated by `scripts/slc_table.py` (domainlock {meta['version']}, torch {meta['torch']}, "
        f"{meta['machine']}, {meta['threads']} torch thread(s), device {meta['device']}); {meta['when']}. "
        "Do not edit by hand.",
        "",
        "Each protected model is attacked by fine-tuning with n labelled target *train* samples per class "
        f"balanced, n ∈ {{{', '.join(map(str, meta['shots']))}}}, strategy `{meta['strategy']}` "
        "(`reinit-head+all`: a fresh head, then every layer; `reinit-head`: linear probing), source models "
        f"`{meta['arch']}-<source>-s<seed>`, under the fixed protocol of `domainlock.attacks.AttackProtocol` "
        "(defaults; measurements behind them: docs/slc_protocol.md); the attacker keeps its last checkpoint, and the "
        "curve is target *test* accuracy. SLC-AUC is the normalized log-n area between that curve and the "
        "same protocol from random init (scratch): negative = the protected model is a worse start than "
        "nothing. *Dense*: every weight trainable (pruned ones may regrow; the honest headline). *Masked*: "
        "pruned (exactly-zero) weights held at zero. *Unprotected*: the source model's own SLC-AUC, same "
        "protocol. Accuracies in %, test splits, true labels; attack seed = row seed.",
        "",
        "`ntp` is NTP as shipped: ADMM pruning with the non-transferable loss and the Fisher regularizer, "
        "plus the project's simulated fine-tuning attack term (`sim_weight`: a copy of the model fine-tuned "
        "by a simulated attacker, whose post-attack target loss the W-step raises; "
        "`domainlock.methods.ntp.simulated_attack_grads`). No reparameterization, so nothing for an attacker "
        "to undo: **its dense column is the honest headline**. `ntp:unscaled` is the collapse alone (no "
        "simulated attack). `ntp:rescaled` is the collapse plus an exact rescale (every surviving encoder "
        "weight that feeds a BatchNorm x`weight_scale`, those BatchNorms' affine x`bn_scale`) that makes "
        "fine-tuning ~1000x slower but is undone exactly by `domainlock.methods.ntp.normalize_scales`, which "
        "is why it is off by default; the gap between it and `ntp:unscaled` is what the rescale alone buys "
        "against a naive fine-tuner.",
        "",
        "Hyper-parameters per run (fields whose recorded value differs from the method's current defaults; "
        "a field missing from a row's record did not exist when it ran): " + "; ".join(
            f"`{run}`: {json.dumps(run_hparams(run, records), sort_keys=True)}" for run in runs) + ".",
        "",
    ]
    for ntp_run in ("ntp", "ntp:unscaled", "ntp:rescaled"):
        ntp = [v for v in records.values() if v["run"] == ntp_run]
        if not ntp:
            continue
        lines += [f"## Targets (issue: NTP), run `{ntp_run}`", ""]
        bad_d = [v for v in ntp if v["dense"]["slc_auc"] > TARGET_DENSE]
        bad_m = [v for v in ntp if v["masked"]["slc_auc"] > TARGET_MASKED]
        bad_s = [v for v in ntp if drop(v) > TARGET_DROP]

        def fails(vs, f):
            return ", ".join(f"{v['source']}→{v['target']} s{v['seed']} {f(v)}" for v in vs)

        lines += [
            f"- dense SLC-AUC ≤ {TARGET_DENSE}: " + ("**pass**" if not bad_d else f"**fail** on {len(bad_d)}/"
            f"{len(ntp)}: " + fails(bad_d, lambda v: f"{v['dense']['slc_auc']:+.3f}")) +
            f" (mean {mean([v['dense']['slc_auc'] for v in ntp]):+.3f})",
            f"- masked SLC-AUC ≤ {TARGET_MASKED}: " + ("**pass**" if not bad_m else f"**fail** on {len(bad_m)}/"
            f"{len(ntp)}: " + fails(bad_m, lambda v: f"{v['masked']['slc_auc']:+.3f}")) +
            f" (mean {mean([v['masked']['slc_auc'] for v in ntp]):+.3f})",
            f"- source drop ≤ {TARGET_DROP} points: " + ("**pass**" if not bad_s else f"**fail** on {len(bad_s)}/"
            f"{len(ntp)}: " + fails(bad_s, lambda v: f"−{drop(v):.2f}")),
            "",
        ]
    lines += ["## Summary (means over the rows of each run)", "",
              "| run | rows | source drop | target direct | sparsity | SLC-AUC dense | SLC-AUC masked | "
              "unprotected SLC-AUC | protect s |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        vs = [v for v in records.values() if v["run"] == run]
        lines.append(
            f"| {run} | {len(vs)} | {mean([drop(v) for v in vs]):.2f} | "
            f"{pct(mean([v['accuracy'][v['target']]['after'] for v in vs]))} | "
            f"{100 * mean([v['sparsity'] for v in vs]):.1f}% | {mean([v['dense']['slc_auc'] for v in vs]):+.3f} | "
            f"{mean([v['masked']['slc_auc'] for v in vs]):+.3f} | "
            f"{mean([v['dense']['unprotected_slc_auc'] for v in vs]):+.3f} | "
            f"{mean([v['protect_wall_s'] for v in vs]):.1f} |")
    lines.append("")
    for run in runs:
        vs = sorted((v for v in records.values() if v["run"] == run),
                    # the pairs first, the others in domain order: the same page whatever the JSON's order
                    key=lambda v: (PAIRS.index((v["source"], v["target"])) if (v["source"], v["target"]) in PAIRS
                                   else len(PAIRS), DOMAINS.index(v["source"]), DOMAINS.index(v["target"]),
                                   v["seed"]))
        lines += [f"## {run}", "",
                  "| pair | seed | source before → after | target before → after | sparsity | SLC-AUC dense | "
                  "SLC-AUC masked | unprotected | protect s |", "|---|---|---|---|---|---|---|---|---|"]
        for v in vs:
            a_s, a_t = v["accuracy"][v["source"]], v["accuracy"][v["target"]]
            lines.append(
                f"| {v['source']} → {v['target']} | {v['seed']} | {pct(a_s['before'])} → {pct(a_s['after'])} | "
                f"{pct(a_t['before'])} → {pct(a_t['after'])} | {100 * v['sparsity']:.1f}% | "
                f"{v['dense']['slc_auc']:+.3f} | {v['masked']['slc_auc']:+.3f} | "
                f"{v['dense']['unprotected_slc_auc']:+.3f} | {v['protect_wall_s']:.1f} |")
        lines.append("")
        lines += ["Curves (target test accuracy % at each n; dense / masked attacker, scratch, unprotected):", "",
                  "| pair | seed | curve | " + " | ".join(f"n={n}" for n in vs[0]["shots"]) + " |",
                  "|---|---|---|" + "---|" * len(vs[0]["shots"])]
        for v in vs:
            for label, vals in (("dense", v["dense"]["protected"]), ("masked", v["masked"]["protected"]),
                                ("scratch", v["dense"]["scratch"]), ("unprotected", v["dense"]["unprotected"])):
                lines.append(f"| {v['source']} → {v['target']} | {v['seed']} | {label} | " +
                             " | ".join(pct(x) for x in vals) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-spec", default="ntp,sa-map", help=f"comma-separated runs: {', '.join(RUNS)}")
    ap.add_argument("--pairs", default=",".join(f"{s}:{t}" for s, t in PAIRS),
                    help="comma-separated source:target pairs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--shots", default=",".join(map(str, SHOTS)))
    ap.add_argument("--arch", default="digitnet",
                    help="source models are <runs>/<arch>-<source>-s<seed> (digitnet-simclr: the SSL ones)")
    ap.add_argument("--strategy", default="reinit-head+all",
                    help="attack strategy (reinit-head = the attacker's linear probing)")
    ap.add_argument("--runs", type=Path, default=Path("runs/sources"))
    ap.add_argument("--save-dir", type=Path, default=Path("runs/slc"), help="protected artifacts kept here")
    ap.add_argument("--out", type=Path, default=Path("docs/ntp_results.md"))
    ap.add_argument("--slc-out", type=Path, default=None,
                    help="write the baseline runs' dense SLC-AUC for scripts/baselines_table.py --slc")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--merge", type=Path, nargs="*", default=[],
                    help="also take the records of these JSONs (parts run as separate processes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.shots = [int(s) for s in args.shots.split(",")]
    runs = tables.parse_names(args.runs_spec, RUNS, "run")
    pairs = tables.parse_pairs(args.pairs, DOMAINS)
    js = args.out.with_suffix(".json")
    records: dict[str, dict] = json.loads(js.read_text())["records"] if js.exists() else {}
    for part in args.merge:
        records.update(json.loads(part.read_text())["records"])
    meta = {"version": __version__, "torch": torch.__version__, "machine": platform.machine(),
            "threads": torch.get_num_threads(), "device": args.device, "shots": args.shots,
            "strategy": args.strategy, "arch": args.arch,
            "when": tables.utc_stamp()}
    if not args.render_only:
        for seed in args.seeds:
            for src, tgt in pairs:
                for run in runs:
                    k = key(run, src, tgt, seed)
                    if k in records and not args.force:
                        continue
                    rec = run_one(run, src, tgt, seed, args)
                    records[k] = rec
                    atomic_write_json(js, {"meta": meta, "records": records})
                    print(f"{k}: source {-drop(rec):+.2f} points, target {pct(rec['accuracy'][tgt]['after'])} "
                          f"dense {rec['dense']['slc_auc']:+.3f} masked {rec['masked']['slc_auc']:+.3f} "
                          f"unprotected {rec['dense']['unprotected_slc_auc']:+.3f} ({rec['total_s']:.0f} s)",
                          flush=True)
    atomic_write_json(js, {"meta": meta, "records": records})
    atomic_write_text(args.out, render(records, meta) + "\n")
    if args.slc_out is not None:
        out = {}
        for v in records.values():
            if ":" in v["run"]:
                method, variant = v["run"].split(":", 1)
                tgt = v["target"]
                out[f"{method}|{variant}|{v['source']}|{tgt}|{v['seed']}"] = {
                    "slc_auc": v["dense"]["slc_auc"], "slc_auc_masked": v["masked"]["slc_auc"]}
        atomic_write_json(args.slc_out, {"records": out})
    print(f"wrote {args.out} and {js}")


if __name__ == "__main__":
    main()
