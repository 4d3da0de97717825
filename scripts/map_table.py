#!/usr/bin/env python
"""MAP on every ordered pair of the offline digit domains: the results table behind docs/map_results.md.

For each method (sa-map, sf-map, df-map), source domain, target domain and seed it protects the source model
``<runs>/digitnet-<source>-s<seed>`` with :func:`domainlock.methods.protect` (which evaluates before and
after on the test splits with true labels) and records source/target accuracy, ST-D, the accuracy on the
two digit domains the model was *not* protected against, sparsity, the worst held-out source accuracy seen
during mask learning and the wall time. ``df-map`` sees no target, so it runs once per source model and
every other domain is an unseen one; its rows repeat that one protection per target column.

Results are cached in the JSON beside the markdown (one record per method/source/target/seed): a rerun
skips what is there (``--force`` redoes it) and the markdown is always regenerated from every record in the
JSON, so methods can be run separately. The markdown is generated, never typed.

    python scripts/map_table.py --methods sa-map --seeds 0 1
    python scripts/map_table.py --methods sf-map,df-map --seeds 0 --pairs mnist:syn,syn:mnist
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from domainlock import __version__
from domainlock.bench import tables
from domainlock.bench.tables import mean, pct
from domainlock.methods import get_method, protect
from domainlock.methods.map import MAPConfig
from domainlock.utils.io import atomic_write_json, atomic_write_text

DOMAINS = ["mnist", "uci-digits", "syn", "mnistm"]
ALL_PAIRS = [(s, t) for s in DOMAINS for t in DOMAINS if s != t]
METHODS = ("sa-map", "sf-map", "df-map")
CHANCE = 0.10
# the measured targets
SA_TARGET_MARGIN = 0.03      # target accuracy <= chance + 3 points on non-trivial pairs
SA_SOURCE_DROP = 0.01        # source drop <= 1 point
SA_MEAN_STD = 0.95
SF_STD_GAP = 0.03
DF_UNSEEN_FACTOR = 0.5       # unseen-domain accuracy <= half its unprotected value
DF_SOURCE_DROP = 0.02


def parse_set(items: list[str]) -> dict[str, Any]:
    """``key=value`` overrides of MAPConfig fields, typed from the field defaults."""
    out: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(MAPConfig)}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        k = k.replace("-", "_")
        if k not in fields:
            raise SystemExit(f"--set {k}: not a MAPConfig field; valid: {', '.join(fields)}")
        out[k] = tables.typed_value(fields[k].default, v)
    return out


def key(method: str, src: str, tgt: str | None, seed: int) -> str:
    return f"{method}|{src}|{tgt or '-'}|{seed}"


def ensure_pseudo_source(art: Path, src: str, seed: int, n: int, cache: Path, device: str) -> tuple[Path, float]:
    """Synthesize the pseudo-source of one source model once (from the model alone, seed ``seed``) and keep
    it under ``cache``; sf-map and df-map runs of that model then load it instead of re-synthesizing.
    Returns the folder and the synthesis time (0 when it was already there)."""
    from domainlock.artifact import load_artifact
    from domainlock.synthesis import SynthesisConfig, save_pseudo_source, synthesize_pseudo_source

    # the folder is named by the synthesis config too, so a change of its defaults never reuses a stale set
    cfg = json.dumps(dataclasses.asdict(SynthesisConfig(n=n)), sort_keys=True)
    path = cache / f"{art.name}-n{n}-{hashlib.sha256(cfg.encode()).hexdigest()[:8]}"
    if (path / "pseudo.safetensors").exists():
        return path, 0.0
    t0 = time.perf_counter()
    ps = synthesize_pseudo_source(load_artifact(art).model.eval(), n, device=device, seed=seed, progress=False)
    secs = time.perf_counter() - t0
    save_pseudo_source(ps, path)
    print(f"pseudo-source of {art.name}: {n} images in {secs:.0f} s -> {path}", flush=True)
    return path, secs


def run_one(method: str, src: str, tgt: str | None, seed: int, args, overrides: dict[str, Any]) -> dict[str, Any]:
    art = tables.source_model(args.runs, args.arch, src, seed)
    others = [d for d in DOMAINS if d not in (src, tgt)]
    overrides = dict(overrides)
    synth_s = None
    if method != "sa-map" and args.pseudo_cache is not None and not overrides.get("pseudo_source"):
        n = overrides.get("pseudo_source_size", get_method(method).Hparams().pseudo_source_size)
        path, secs = ensure_pseudo_source(art, src, seed, n, args.pseudo_cache, args.device)
        overrides["pseudo_source"] = str(path)
        synth_s = secs or json.loads((path / "info.json").read_text()).get("time_s")
    hp = get_method(method).Hparams(**overrides)
    t0 = time.perf_counter()
    res = protect(str(art), method, source=src, target=tgt, eval_domains=others, data_root=args.data_root,
                  seed=seed, hparams=hp, device=args.device, progress=False)
    total = time.perf_counter() - t0
    prot = res.card["protection"]
    info = prot["info"]
    keep = ("sparsity", "worst_source_acc", "source_val_acc_before", "source_val_acc_after", "selected_step",
            "steps_run", "early_stopped", "steps", "garbage_class", "final_losses", "mask_loop_s", "step_img_per_s",
            "pseudo_source_size", "pseudo_source_s", "neighbours", "neighbours_s", "layer_sparsity",
            "pseudo_source_synthesis", "pseudo_source_agreement", "pseudo_source_from")
    return {
        "method": method, "source": src, "target": tgt, "seed": seed, "unseen": others,
        "accuracy": prot["accuracy_test"], "st_d": prot["st_d"], "wall_time_s": prot["wall_time_s"],
        "total_time_s": total, "data_read": prot["data_read"], "hparams": prot["hparams"],
        "info": {k: info[k] for k in keep if k in info}, "pseudo_source_synthesis_s": synth_s,
    }


def rows_for(records: dict[str, dict], method: str, pairs, seeds) -> list[dict[str, Any]]:
    """One row per (pair, seed); df-map rows reuse the one protection of their source model."""
    rows = []
    for src, tgt in pairs:
        for seed in seeds:
            rec = records.get(key(method, src, None if method == "df-map" else tgt, seed))
            if rec is None:
                continue
            acc = rec["accuracy"]
            s0, s1 = acc[src]["before"], acc[src]["after"]
            t0, t1 = acc[tgt]["before"], acc[tgt]["after"]
            std = rec["st_d"]
            if std is None:   # df-map: ST-D against this column's domain, computed here the same way
                std = tables.st_d_entry(s0, s1, t0, t1, CHANCE)
            unseen = [d for d in DOMAINS if d not in (src, tgt)]
            rows.append({"src": src, "tgt": tgt, "seed": seed, "s0": s0, "s1": s1, "t0": t0, "t1": t1,
                         "std": std, "unseen": {d: acc[d] for d in unseen if d in acc},
                         "sparsity": rec["info"].get("sparsity"), "worst": rec["info"].get("worst_source_acc"),
                         "wall": rec["wall_time_s"], "rec": rec})
    return rows


def table(method: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"### {method}", "",
             tables.ROW_HEADER + " sparsity | worst held-out source | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(tables.row_cells(r) + f" {pct(r['sparsity'])}% | {pct(r['worst'])} | {r['wall']:.1f} |")
    if rows:
        lines.append(tables.mean_cells(rows) + f" {pct(mean([r['sparsity'] for r in rows]))}% | "
                     f"{pct(mean([r['worst'] for r in rows]))} | {mean([r['wall'] for r in rows]):.1f} |")
    return lines


def checks(by_method: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = ["## Targets (from the issue)", ""]
    sa = by_method.get("sa-map", [])
    sa_std = float("nan")
    if sa:
        nt = [r for r in sa if not r["std"]["trivial"]]
        worst_t = max(nt, key=lambda r: r["t1"]) if nt else None
        worst_s = max(sa, key=lambda r: r["s0"] - r["s1"])
        sa_std = mean([r["std"]["st_d"] for r in nt])
        bad_t = [r for r in nt if r["t1"] > CHANCE + SA_TARGET_MARGIN + 1e-12]
        bad_s = [r for r in sa if r["s0"] - r["s1"] > SA_SOURCE_DROP + 1e-12]
        out.append(f"- SA-MAP target accuracy ≤ {pct(CHANCE + SA_TARGET_MARGIN)}% on every non-trivial pair: "
                   + ("**pass**" if not bad_t else f"**fail** on {len(bad_t)}/{len(nt)}: "
                      + ", ".join(f"{r['src']}→{r['tgt']} s{r['seed']} {pct(r['t1'])}%" for r in bad_t))
                   + (f" (highest: {worst_t['src']}→{worst_t['tgt']} s{worst_t['seed']} at {pct(worst_t['t1'])}%)"
                      if worst_t else ""))
        out.append(f"- SA-MAP source drop ≤ {100 * SA_SOURCE_DROP:.0f} point: "
                   + ("**pass**" if not bad_s else f"**fail** on {len(bad_s)}/{len(sa)}: "
                      + ", ".join(f"{r['src']}→{r['tgt']} s{r['seed']} −{100 * (r['s0'] - r['s1']):.2f}"
                                  for r in bad_s))
                   + f" (largest drop: {worst_s['src']}→{worst_s['tgt']} s{worst_s['seed']} "
                     f"−{100 * (worst_s['s0'] - worst_s['s1']):.2f} points)")
        out.append(f"- SA-MAP mean ST-D ≥ {SA_MEAN_STD}: {sa_std:.3f} → "
                   + ("**pass**" if sa_std >= SA_MEAN_STD else "**fail**"))
    sf = by_method.get("sf-map", [])
    if sf:
        sf_std = mean([r["std"]["st_d"] for r in sf if not r["std"]["trivial"]])
        # compare on the rows both methods have
        common = {(r["src"], r["tgt"], r["seed"]) for r in sf} & {(r["src"], r["tgt"], r["seed"]) for r in sa}
        sa_c = mean([r["std"]["st_d"] for r in sa if (r["src"], r["tgt"], r["seed"]) in common
                     and not r["std"]["trivial"]])
        sf_c = mean([r["std"]["st_d"] for r in sf if (r["src"], r["tgt"], r["seed"]) in common
                     and not r["std"]["trivial"]])
        gap = sa_c - sf_c
        out.append(f"- SF-MAP mean ST-D within {SF_STD_GAP} of SA-MAP: SF {sf_std:.3f} over {len(sf)} rows; "
                   f"on the {len(common)} rows both have SA {sa_c:.3f} vs SF {sf_c:.3f} (gap {gap:+.3f}) → "
                   + ("**pass**" if common and gap <= SF_STD_GAP else "**fail**" if common else "n/a"))
    df = by_method.get("df-map", [])
    if df:
        seen_runs: dict[tuple[str, int], dict] = {}
        for r in df:
            seen_runs[(r["src"], r["seed"])] = r["rec"]
        bad_u, bad_s, n_u = [], [], 0
        for (src, seed), rec in sorted(seen_runs.items()):
            acc = rec["accuracy"]
            if acc[src]["before"] - acc[src]["after"] > DF_SOURCE_DROP + 1e-12:
                bad_s.append(f"{src} s{seed} −{100 * (acc[src]['before'] - acc[src]['after']):.2f}")
            for d in DOMAINS:
                if d == src or d not in acc:
                    continue
                n_u += 1
                if acc[d]["after"] > DF_UNSEEN_FACTOR * acc[d]["before"] + 1e-12:
                    bad_u.append(f"{src}→{d} s{seed} {pct(acc[d]['before'])}→{pct(acc[d]['after'])}")
        out.append("- DF-MAP each unseen domain ≤ half its unprotected accuracy: "
                   + ("**pass**" if not bad_u else f"**fail** on {len(bad_u)}/{n_u}: " + ", ".join(bad_u)))
        out.append(f"- DF-MAP source drop ≤ {100 * DF_SOURCE_DROP:.0f} points: "
                   + ("**pass**" if not bad_s else "**fail**: " + ", ".join(bad_s)))
    return out + [""]


def runs_on(meta: dict[str, Any], methods) -> dict[str, dict[str, Any]]:
    """Where and when each method's rows were computed: ``meta["per_method"]``, else the table-wide meta of
    tables written before methods were run on different machines."""
    per = meta.get("per_method", {})
    return {m: per.get(m, {k: meta.get(k) for k in ("device", "threads", "generated")}) for m in methods}


def render(records: dict[str, dict], methods, pairs, seeds, meta: dict[str, Any]) -> str:
    by_method = {m: rows_for(records, m, pairs, seeds) for m in METHODS if m in methods}
    changed = {m: tables.method_non_default_hparams(m, [r["rec"].get("hparams") or {} for r in rows])
               for m, rows in by_method.items()}
    lines = [
        "# MAP on the offline digit domains",
        "",
        f"Generated by `scripts/map_table.py` (domainlock {__version__}, torch {torch.__version__}, "
        f"{platform.machine()}); " + "; ".join(
            f"{m} rows: device {r.get('device')}, {r.get('threads')} torch thread(s), {r.get('generated')}"
            for m, r in runs_on(meta, by_method).items()) + ". Do not edit by hand.",
        "",
        "Test-split accuracy in %, before → after protection, with true labels (the protection itself never "
        "reads target labels: the default target term is label-free). Source models: "
        "`runs/sources/digitnet-<domain>-s<seed>` (default recipe, with augmentation). Chance is 10%. "
        "ST-D is the project's reconstructed definition (METHODS.md §1); trivial pairs (unprotected target "
        "within 5 points of chance) are marked and left out of ST-D means. *Unseen domains* are the two "
        "digit domains the model was not protected against (for df-map every other domain is unseen: it "
        "runs once per source model, so its rows repeat that one protection). *Worst held-out source* is "
        "the lowest source accuracy on a held-out batch seen during mask learning (sa: real source val "
        "split; sf/df: agreement with the source model on held-out pseudo-source images). Wall time is "
        "the method's own time inside `protect()` (evaluation excluded).",
        "",
        "Hyper-parameters (fields whose recorded value differs from the method's current defaults: "
        "`MAPConfig` for sa-map, `PseudoSourceMAPConfig` for sf-map and df-map): " + "; ".join(
            f"{m}: {json.dumps(hp, sort_keys=True)}" for m, hp in changed.items()) + ".",
        "",
    ]
    lines += checks(by_method)
    lines += ["## Results", ""]
    for m, rows in by_method.items():
        lines += table(m, rows) + [""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="sa-map", help="comma-separated: sa-map,sf-map,df-map")
    tables.add_protect_args(ap, out="docs/map_results.md")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="MAPConfig override for every method run now (repeatable)")
    ap.add_argument("--pseudo-cache", type=Path, default=Path("runs/pseudo"),
                    help="sf/df: synthesize each source model's pseudo-source once and keep it here (its "
                    "synthesis time is reported separately); 'none' synthesizes inside every run")
    tables.add_cache_args(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if str(args.pseudo_cache).lower() == "none":
        args.pseudo_cache = None

    methods = tables.parse_names(args.methods, METHODS, "method")
    pairs = tables.parse_pairs(args.pairs, DOMAINS)
    overrides = parse_set(args.set)
    json_path = args.out.with_suffix(".json")
    store: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {}
    records: dict[str, dict] = store.get("records", {})
    meta = store.get("meta", {"overrides": {}})
    meta.setdefault("overrides", {})

    # methods computed before per-method provenance existed keep the table-wide one they were run under
    meta["per_method"] = runs_on(meta, sorted({r["method"] for r in records.values()}))
    if not args.render_only:
        for m in methods:
            meta["overrides"][m] = overrides
            todo = tables.in_domain_order({(s, None if m == "df-map" else t) for s, t in pairs}, DOMAINS)
            for src, tgt in todo:
                for seed in args.seeds:
                    k = key(m, src, tgt, seed)
                    if k in records and not args.force:
                        continue
                    rec = run_one(m, src, tgt, seed, args, overrides)
                    records[k] = rec
                    print(tables.progress_line(m, src, tgt, seed, rec), flush=True)
                    meta.update({"threads": args.threads, "device": args.device, "generated": tables.utc_stamp()})
                    meta["per_method"][m] = {k: meta[k] for k in ("device", "threads", "generated")}
                    atomic_write_json(json_path, {"meta": meta, "records": records})
    all_methods = [m for m in METHODS if any(r["method"] == m for r in records.values())]
    all_seeds = sorted({r["seed"] for r in records.values()})
    text = render(records, all_methods, ALL_PAIRS, all_seeds, meta)
    atomic_write_text(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
