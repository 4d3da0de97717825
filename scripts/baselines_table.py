#!/usr/bin/env python
"""The baselines the seed papers beat (NTL, CUTI-domain, magnitude pruning) on every ordered pair of the
offline digit domains: the table behind docs/baselines.md.

For each run (method:variant), source domain, target domain and seed it protects the source model
``<runs>/digitnet-<source>-s<seed>`` with :func:`domainlock.methods.protect` (which evaluates before and after
on the test splits with true labels) and records source/target accuracy, ST-D, the accuracy on the two digit
domains the model was *not* protected against, and the protection's wall time, also as a ratio of the source
model's own training time. Runs that never read the target (``ntl:source-only``, ``cuti:target-free``,
``magnitude:<sparsity>``) do not depend on it: they run once per source model (every other domain is then
an unseen one) and their rows repeat that one protection per target column, as df-map's do in
docs/map_results.md.

Results are cached in the JSON beside the markdown, one record per ``method|variant|src|tgt|seed`` (tgt ``-``
for the runs that read no target): a rerun skips what is there (``--force`` redoes it) and the markdown is
always regenerated from every record in the JSON (``--render-only`` does only that).

SLC-AUC (the fine-tuning attack, METHODS.md §2) comes from the attack harness, built separately: pass its
results with ``--slc PATH`` (JSON ``{"records": {key: {"slc_auc": x, ...}}}`` or ``{key: x}``, with the
keys of this table but the row's real target, e.g. ``ntl|source-only|mnist|syn|0``); they are merged into
the records (``slc_auc``) and shown in the SLC-AUC column. ``--save-dir`` keeps every protected artifact
(``<dir>/<method>-<variant>-<src>-<tgt>-s<seed>``) for that harness to attack.

    python scripts/baselines_table.py --seeds 0
    python scripts/baselines_table.py --runs-spec ntl:target,magnitude:0.5 --pairs mnist:syn --seeds 0 1
    python scripts/baselines_table.py --render-only --slc runs/attack/slc.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from domainlock import __version__
from domainlock.bench import tables
from domainlock.bench.tables import mean, pct
from domainlock.methods import get_method, protect
from domainlock.utils.io import atomic_write_json, atomic_write_text

DOMAINS = ["mnist", "uci-digits", "syn", "mnistm"]
ALL_PAIRS = [(s, t) for s in DOMAINS for t in DOMAINS if s != t]
#: method:variant -> (method, hyper-parameter overrides); magnitude's "variant" is its sparsity
RUNS = {
    "ntl:target": ("ntl", {"variant": "target"}),
    "ntl:source-only": ("ntl", {"variant": "source-only"}),
    "cuti:target": ("cuti", {"variant": "target"}),
    "cuti:target-free": ("cuti", {"variant": "target-free"}),
    "magnitude:0.5": ("magnitude", {"sparsity": 0.5}),
    "magnitude:0.9": ("magnitude", {"sparsity": 0.9}),
}
CHANCE = 0.10
#: 1-thread CPU source training of digitnet on mnist (7,000 images, 20 epochs), docs/bench/map_cost.json
CPU_REF_MNIST_S = 160.94
CPU_REF_IMAGES = 7000


def key(run: str, src: str, tgt: str | None, seed: int) -> str:
    method, variant = run.split(":", 1)
    return f"{method}|{variant}|{src}|{tgt or '-'}|{seed}"


def reads_target(run: str) -> bool:
    method, overrides = RUNS[run]
    m = get_method(method)
    return m.reads_target(m.Hparams(**overrides))


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """``method.key=value`` (or ``key=value`` for every method that has the field) overrides, typed from the
    field defaults."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected [method.]key=value")
        k, v = item.split("=", 1)
        methods = sorted({m for m, _ in RUNS.values()})
        if "." in k:
            meth, k = k.split(".", 1)
            methods = [meth]
        k = k.replace("-", "_")
        hit = False
        for meth in methods:
            fields = {f.name: f for f in dataclasses.fields(get_method(meth).Hparams)}
            if k not in fields:
                continue
            out.setdefault(meth, {})[k] = tables.typed_value(fields[k].default, v)
            hit = True
        if not hit:
            raise SystemExit(f"--set {item!r}: no such field in {', '.join(methods)}")
    return out


def cpu_reference_s(n_train: int) -> float:
    return CPU_REF_MNIST_S * n_train / CPU_REF_IMAGES


def run_one(run: str, src: str, tgt: str | None, seed: int, args, overrides: dict[str, dict[str, Any]]
            ) -> dict[str, Any]:
    from domainlock.artifact import read_card

    method, base = RUNS[run]
    art = tables.source_model(args.runs, args.arch, src, seed)
    scard = read_card(art)
    others = [d for d in DOMAINS if d not in (src, tgt)]
    hp = get_method(method).Hparams(**{**base, **overrides.get(method, {})})
    out = None
    if args.save_dir is not None:
        out = args.save_dir / f"{method}-{run.split(':', 1)[1]}-{src}-{tgt or 'none'}-s{seed}"
    t0 = time.perf_counter()
    res = protect(str(art), method, source=src, target=tgt, eval_domains=others, data_root=args.data_root,
                  seed=seed, hparams=hp, device=args.device, progress=False, out=out, overwrite=True)
    total = time.perf_counter() - t0
    prot = res.card["protection"]
    info = prot["info"]
    keep = ("steps", "final_losses", "source_val_acc_before", "source_val_acc_after", "loop_s", "step_img_per_s",
            "capped_at_end", "target_train_images", "used_target_labels", "neighbours", "neighbours_s", "style",
            "cuti_share", "restyle_layers", "sparsity_pruned", "finetune_epochs")
    ft = info.get("finetune") or {}
    n_train = scard["metrics"]["n"]["train"]
    return {
        "run": run, "method": method, "variant": run.split(":", 1)[1], "source": src, "target": tgt,
        "seed": seed, "unseen": others, "accuracy": prot["accuracy_test"], "st_d": prot["st_d"],
        "wall_time_s": prot["wall_time_s"], "total_time_s": total, "data_read": prot["data_read"],
        "target_use": prot.get("target_use"), "hparams": prot["hparams"], "sparsity": prot["sparsity"],
        "info": {**{k: info[k] for k in keep if k in info},
                 **({"finetune_wall_s": ft.get("wall_s")} if ft else {})},
        "source_training": {"wall_s": scard["training"]["wall_s"], "device": scard["training"]["device"],
                            "train_images": n_train, "cpu_reference_s": round(cpu_reference_s(n_train), 2)},
        "artifact": str(out) if out is not None else None,
    }


def merge_slc(records: dict[str, dict], path: Path) -> int:
    """Copy SLC-AUC values from the attack harness's JSON into ``records[...]["slc_auc"]`` (by row key).
    Returns how many values were read."""
    data = json.loads(path.read_text())
    recs = data.get("records", data) if isinstance(data, dict) else {}
    vals: dict[str, dict[str, float]] = {"slc_auc": {}, "slc_auc_masked": {}}
    for k, v in recs.items():
        for field, into in vals.items():
            x = v.get(field) if isinstance(v, dict) else (v if field == "slc_auc" else None)
            if isinstance(x, int | float) and not isinstance(x, bool):
                into[k] = float(x)
    for rec in records.values():
        for field, into in vals.items():
            slc = rec.setdefault(field, {})
            for tgt in ([rec["target"]] if rec["target"] else [d for d in DOMAINS if d != rec["source"]]):
                k = f"{rec['method']}|{rec['variant']}|{rec['source']}|{tgt}|{rec['seed']}"
                if k in into:
                    slc[tgt] = into[k]
    return len(vals["slc_auc"])


def rows_for(records: dict[str, dict], run: str, pairs, seeds) -> list[dict[str, Any]]:
    rt = reads_target(run)
    rows = []
    for src, tgt in pairs:
        for seed in seeds:
            rec = records.get(key(run, src, tgt if rt else None, seed))
            if rec is None:
                continue
            acc = rec["accuracy"]
            if tgt not in acc:
                continue
            s0, s1 = acc[src]["before"], acc[src]["after"]
            t0, t1 = acc[tgt]["before"], acc[tgt]["after"]
            std = tables.st_d_entry(s0, s1, t0, t1, CHANCE)
            unseen = [d for d in DOMAINS if d not in (src, tgt)]
            st = rec["source_training"]
            rows.append({"src": src, "tgt": tgt, "seed": seed, "s0": s0, "s1": s1, "t0": t0, "t1": t1, "std": std,
                         "unseen": {d: acc[d] for d in unseen if d in acc}, "wall": rec["wall_time_s"],
                         "ratio_gpu": rec["wall_time_s"] / st["wall_s"] if st["wall_s"] else None,
                         "ratio_cpu": rec["wall_time_s"] / st["cpu_reference_s"],
                         "slc": (rec.get("slc_auc") or {}).get(tgt),
                         "slc_masked": (rec.get("slc_auc_masked") or {}).get(tgt), "rec": rec})
    return rows


def table(run: str, rows: list[dict[str, Any]], shared: bool) -> list[str]:
    lines = [f"### {run}" + (" (reads no target: one protection per source model, repeated per column)"
                             if shared else ""), "",
             tables.ROW_HEADER + " protect s | × source train (GPU) | × CPU ref | SLC-AUC dense / masked |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        slc = slc_cell(r["slc"], r["slc_masked"])
        lines.append(tables.row_cells(r) + f" {r['wall']:.1f} | {r['ratio_gpu']:.2f} | {r['ratio_cpu']:.2f} | {slc} |")
    if rows:
        lines.append(summary_row(rows))
    return lines


def stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    nt = [r for r in rows if not r["std"]["trivial"]]
    return {"n": len(rows), "n_nontrivial": len(nt), "source_before": mean([r["s0"] for r in rows]),
            "source_after": mean([r["s1"] for r in rows]),
            "source_drop": mean([r["s0"] - r["s1"] for r in rows]),
            "target_before": mean([r["t0"] for r in rows]), "target_after": mean([r["t1"] for r in rows]),
            "st_d": mean([r["std"]["st_d"] for r in nt]),
            "unseen_before": mean([a["before"] for r in rows for a in r["unseen"].values()]),
            "unseen_after": mean([a["after"] for r in rows for a in r["unseen"].values()]),
            "wall_s": mean([r["wall"] for r in rows]), "ratio_gpu": mean([r["ratio_gpu"] for r in rows]),
            "ratio_cpu": mean([r["ratio_cpu"] for r in rows]), "slc_auc": mean([r["slc"] for r in rows]),
            "slc_auc_masked": mean([r["slc_masked"] for r in rows])}


def slc_cell(dense: float | None, masked: float | None) -> str:
    """``dense / masked`` SLC-AUC (— where not measured)."""
    def one(x):
        return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}"
    return "—" if one(dense) == "—" and one(masked) == "—" else f"{one(dense)} / {one(masked)}"


def per_seed_wall(rows: list[dict[str, Any]]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    return ", ".join(f"s{sd}: {mean([r['wall'] for r in rows if r['seed'] == sd]):.1f}" for sd in seeds)


def summary_row(rows: list[dict[str, Any]]) -> str:
    s = stats(rows)
    return (tables.mean_cells(rows) + f" {s['wall_s']:.1f} | {s['ratio_gpu']:.2f} | {s['ratio_cpu']:.2f} | "
            + slc_cell(s["slc_auc"], s["slc_auc_masked"]) + " |")


def non_default(records: dict[str, dict], run: str) -> str:
    """The hyper-parameters of ``run``'s records that differ from the method's defaults (besides the run's
    own variant/sparsity), as JSON; several sets are joined with ' | '."""
    method, base = RUNS[run]
    default = dataclasses.asdict(get_method(method).Hparams(**base))
    seen = []
    for rec in records.values():
        if rec.get("run") != run:
            continue
        diff = {k: v for k, v in rec["hparams"].items() if default.get(k) != v}
        text = json.dumps(diff, sort_keys=True)
        if text not in seen:
            seen.append(text)
    return " | ".join(seen) or "{}"


def render(records: dict[str, dict], runs: list[str], pairs, seeds, meta: dict[str, Any]) -> str:
    by_run = {r: rows_for(records, r, pairs, seeds) for r in runs}
    lines = [
        "# Baselines on the offline digit domains: NTL, CUTI-domain, magnitude pruning",
        "",
        f"Generated by `scripts/baselines_table.py` (domainlock {__version__}, torch {torch.__version__}, "
        f"{platform.machine()}, {meta.get('threads')} torch thread(s), device {meta.get('device')}); "
        f"{meta.get('generated')}. Do not edit by hand.",
        "",
        "Test-split accuracy in %, before → after protection, with true labels. Source models: "
        "`runs/sources/digitnet-<domain>-s<seed>`. Chance is 10%. ST-D is the project's reconstructed "
        "definition (METHODS.md §1); trivial pairs (unprotected target within 5 points of chance) are marked "
        "and left out of ST-D means. *Unseen domains* are the two digit domains the model was not protected "
        "against. Runs that read no target (ntl:source-only, cuti:target-free, magnitude) ran once per "
        "source model with the target used for evaluation only; their rows repeat that protection per "
        "target column. NTL and CUTI fine-tune the source model (100 Adam steps of 64 source + 64 "
        "target/neighbourhood images by default, BN statistics frozen); magnitude prunes globally and "
        "fine-tunes one masked source epoch.",
        "",
        "*protect s* is the method's own wall time inside `protect()` (evaluation excluded) on this "
        "machine's CPU. *× source train (GPU)* divides it by the source model's recorded training time "
        "(`card[\"training\"][\"wall_s\"]`), which was measured on a GPU, so it overstates the cost; "
        f"*× CPU ref* divides it by a CPU reference: the measured 1-thread digitnet source training on mnist "
        f"({CPU_REF_MNIST_S:.0f} s for {CPU_REF_IMAGES} images, docs/bench/map_cost.json) scaled by the "
        "source's training images (uci-digits: 1,258; syn: 8,400). The machine is shared (other jobs ran beside "
        "these; up to ~3x slower at times), so compare the per-seed means in the summary. *SLC-AUC* "
        "(fine-tuning attack, METHODS.md §2; normalized, negative = worse start than random init) is merged "
        "from the attack harness with `--slc` (scripts/slc_table.py: `reinit-head+all`, the dense attacker "
        "may regrow pruned weights, the masked one holds them at zero; a model without zero weights has one "
        "curve for both); the rows it was run on are listed in docs/ntp_results.md; — = not measured.",
        "",
        "Non-default hyper-parameters per run (from the records): " + "; ".join(
            f"{r}: {non_default(records, r)}" for r in runs) + ".",
        "",
        "## Summary (means over the rows below)",
        "",
        "| run | rows | source drop (points) | target before → after | ST-D | unseen before → after | "
        "protect s (per seed) | × source train (GPU) | × CPU ref | SLC-AUC dense / masked |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, rows in by_run.items():
        if not rows:
            continue
        s = stats(rows)
        lines.append(f"| {run} | {s['n']} | {100 * s['source_drop']:.2f} | {pct(s['target_before'])} → "
                     f"{pct(s['target_after'])} | {s['st_d']:.3f} | {pct(s['unseen_before'])} → "
                     f"{pct(s['unseen_after'])} | {s['wall_s']:.1f} ({per_seed_wall(rows)}) | {s['ratio_gpu']:.2f} | "
                     f"{s['ratio_cpu']:.2f} | " + slc_cell(s["slc_auc"], s["slc_auc_masked"])
                     + " |")
    lines += ["", "## Results", ""]
    for run, rows in by_run.items():
        if rows:
            lines += table(run, rows, not reads_target(run)) + [""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-spec", default=",".join(RUNS), help="comma-separated method:variant runs; valid: "
                    + ", ".join(RUNS))
    tables.add_protect_args(ap, out="docs/baselines.md")
    ap.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                    help="hyper-parameter override for the runs done now (repeatable)")
    ap.add_argument("--save-dir", type=Path, default=None,
                    help="keep every protected artifact here (for the fine-tuning attack harness)")
    ap.add_argument("--slc", type=Path, default=None, help="merge SLC-AUC values from this JSON")
    tables.add_cache_args(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    runs = tables.parse_names(args.runs_spec, RUNS, "run")
    pairs = tables.parse_pairs(args.pairs, DOMAINS)
    overrides = parse_set(args.set)
    json_path = args.out.with_suffix(".json")
    store: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {}
    records: dict[str, dict] = store.get("records", {})
    meta = store.get("meta", {})

    if not args.render_only:
        for run in runs:
            rt = reads_target(run)
            todo = tables.in_domain_order({(s, t if rt else None) for s, t in pairs}, DOMAINS)
            for src, tgt in todo:
                for seed in args.seeds:
                    k = key(run, src, tgt, seed)
                    if k in records and not args.force:
                        continue
                    rec = run_one(run, src, tgt, seed, args, overrides)
                    records[k] = rec
                    print(tables.progress_line(run, src, tgt, seed, rec), flush=True)
                    meta.update({"threads": args.threads, "device": args.device, "generated": tables.utc_stamp()})
                    atomic_write_json(json_path, {"meta": meta, "records": records})
    if args.slc is not None:
        n = merge_slc(records, args.slc)
        print(f"merged {n} SLC-AUC values from {args.slc}")
        atomic_write_json(json_path, {"meta": meta, "records": records})
    all_runs = [r for r in RUNS if any(rec.get("run") == r for rec in records.values())]
    all_seeds = sorted({rec["seed"] for rec in records.values()})
    summary = {r: {k: None if isinstance(v, float) and math.isnan(v) else v
                   for k, v in stats(rows_for(records, r, ALL_PAIRS, all_seeds)).items()} for r in all_runs}
    text = render(records, all_runs, ALL_PAIRS, all_seeds, meta)
    atomic_write_text(args.out, text + "\n")
    if records:
        atomic_write_json(json_path, {"meta": meta, "records": records, "summary": summary})
    print(text)


if __name__ == "__main__":
    main()
