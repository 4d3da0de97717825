#!/usr/bin/env python
"""Every method side by side: the table behind docs/comparison.md, and its verdict.

It reads what the three result scripts cached -- ``docs/map_results.json`` (scripts/map_table.py: sa-map,
sf-map, df-map), ``docs/baselines.json`` (scripts/baselines_table.py: NTL, CUTI-domain, magnitude pruning) and
``docs/ntp_results.json`` (scripts/slc_table.py: NTP, and the fine-tuning attack on SA-MAP and the baselines)
-- and runs nothing. Two views, each like for like:

* **direct use** (no attack) on every ordered pair of the four digit domains and every seed a run has:
  source drop, target accuracy, ST-D, the unseen domains, protect time;
* **fine-tuning attack** on the (pair, seed) rows every attacked run shares: SLC-AUC dense and masked, with
  the direct-use numbers of the *same* rows beside them (so a method is not ranked on pairs others skipped);
  runs attacked on more rows get a second summary over all of theirs.

The verdict lines are computed from those means (who is first, whether the seed papers' ordering -- MAP and
NTP above NTL and CUTI-domain -- holds on each view); the prose around them is fixed.

    python scripts/compare_table.py            # writes docs/comparison.md
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from domainlock import __version__
from domainlock.bench import tables
from domainlock.bench.tables import mean, pct
from domainlock.utils.io import atomic_write_text

DOMAINS = ["mnist", "uci-digits", "syn", "mnistm"]
CHANCE = 0.10
#: run -> (results file key, what the method reads), in table order
RUNS: dict[str, str] = {
    "sa-map": "source + target images (no target labels)",
    "sf-map": "target images; pseudo-source synthesized from the model",
    "df-map": "nothing: pseudo-source + synthesized neighbour domains",
    "ntp": "source + target images (target labels for the Fisher term and the simulated attack)",
    "ntp:unscaled": "same, the collapse alone (no simulated attack)",
    "ntp:rescaled": "same, the collapse plus an exact weight rescale an attacker can undo",
    "ntl:target": "source + target images (NTL's KL term on target labels)",
    "ntl:source-only": "source only (augmented neighbourhood)",
    "cuti:target": "source + target images (target labels)",
    "cuti:target-free": "source only (re-styled source)",
    "magnitude:0.5": "source only",
    "magnitude:0.9": "source only",
}
#: the seed papers' methods and the baselines they claim to beat (issue: baselines)
SEEDS_RUNS = ("sa-map", "ntp")
BASELINE_RUNS = ("ntl:target", "cuti:target")
#: differences of means below this count as ties in the verdict (seed-to-seed spread of one row is larger)
TIE = 0.01


def base_row(rec: dict[str, Any], tgt: str) -> dict[str, Any]:
    """The direct-use cells of one record on target ``tgt``: accuracies before/after, ST-D, unseen after."""
    src, acc = rec["source"], rec["accuracy"]
    std = tables.st_d_entry(acc[src]["before"], acc[src]["after"], acc[tgt]["before"], acc[tgt]["after"], CHANCE)
    unseen = [acc[d]["after"] for d in DOMAINS if d not in (src, tgt) and d in acc]
    return {"src": src, "tgt": tgt, "seed": rec["seed"], "s0": acc[src]["before"], "s1": acc[src]["after"],
            "t0": acc[tgt]["before"], "t1": acc[tgt]["after"], "std": std, "unseen_after": mean(unseen)}


def records(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text())["records"].values()) if path.exists() else []


def direct_rows(docs: Path) -> dict[str, list[dict[str, Any]]]:
    """One row per (run, src, tgt, seed) of map_results and baselines; runs that read no target contribute
    their one protection to every target column."""
    out: dict[str, list[dict[str, Any]]] = {r: [] for r in RUNS}
    for rec in records(docs / "map_results.json") + records(docs / "baselines.json"):
        run = rec.get("run", rec["method"])  # the MAP table names its rows by method alone
        if run not in RUNS:
            continue
        tgts = [rec["target"]] if rec.get("target") else [d for d in DOMAINS if d != rec["source"]]
        out[run] += [base_row(rec, t) for t in tgts if t in rec["accuracy"]]
    return out


def slc_rows(docs: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {r: [] for r in RUNS}
    for rec in records(docs / "ntp_results.json"):
        if rec["run"] in RUNS:
            out[rec["run"]].append({**base_row(rec, rec["target"]), "dense": rec["dense"]["slc_auc"],
                                    "masked": rec["masked"]["slc_auc"],
                                    "unprotected": rec["dense"]["unprotected_slc_auc"],
                                    "sparsity": rec["sparsity"]})
    return out


def st_d_mean(rows: list[dict[str, Any]]) -> float:
    return mean(r["std"]["st_d"] for r in rows if not r["std"]["trivial"])


def fmt(x: float, spec: str = "+.3f") -> str:
    return "—" if x != x else format(x, spec)  # NaN != NaN


def ordering(label: str, scores: dict[str, float], better: str) -> str:
    """``label, best first: a 0.9, b 0.8, ...`` (``better`` is 'high' or 'low'), NaN runs left out."""
    have = {k: v for k, v in scores.items() if v == v}
    ranked = sorted(have, key=lambda k: have[k], reverse=better == "high")
    return f"{label}, best first: " + (", ".join(f"`{k}` {have[k]:+.3f}" for k in ranked) if ranked
                                       else "not measured")


def seeds_hold(scores: dict[str, float], better: str) -> str:
    """Does every seed-paper run beat every baseline run on ``scores``? Runs not measured on this view are
    named and left out."""
    seeds = {k: scores[k] for k in SEEDS_RUNS if scores.get(k, float("nan")) == scores.get(k, float("nan"))}
    base = {k: scores[k] for k in BASELINE_RUNS if scores.get(k, float("nan")) == scores.get(k, float("nan"))}
    missing = [k for k in (*SEEDS_RUNS, *BASELINE_RUNS) if k not in seeds and k not in base]
    note = f" (not measured on this view: {', '.join(f'`{k}`' for k in missing)})" if missing else ""
    if not seeds or not base:
        return "not decidable" + note
    sign = 1 if better == "high" else -1
    # a win by less than TIE is within the seed-to-seed noise of these means: not counted as one
    lost = [(s, b) for s in seeds for b in base if sign * (seeds[s] - base[b]) <= TIE]
    if not lost:
        return ("**holds**: " + ", ".join(f"`{s}`" for s in seeds) + " beat " + ", ".join(f"`{b}`" for b in base)
                + f" by more than {TIE}" + note)
    return "**does not hold**: " + "; ".join(
        f"`{s}` {seeds[s]:+.3f} " + ("ties with" if abs(seeds[s] - base[b]) <= TIE else "is worse than")
        + f" `{b}` {base[b]:+.3f}" for s, b in lost) + f" (tie: within {TIE})" + note


def slc_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {"st_d": st_d_mean(rows), **{k: mean(r[k] for r in rows) for k in ("dense", "masked", "unprotected")}}


def slc_summary_row(run: str, rows: list[dict[str, Any]]) -> str:
    m = slc_means(rows)
    return (f"| `{run}` | {len(rows)} | {100 * mean(r['s0'] - r['s1'] for r in rows):.2f} | "
            f"{pct(mean(r['t1'] for r in rows))} | {m['st_d']:.3f} | "
            f"{100 * mean(r['sparsity'] for r in rows):.1f}% | **{fmt(m['dense'])}** | "
            f"{fmt(m['masked'])} | {fmt(m['unprotected'])} |")


def render(direct: dict[str, list[dict]], slc: dict[str, list[dict]], meta: dict[str, Any]) -> str:
    lines = [
        "# Every method side by side",
        "",
        f"Generated by `scripts/compare_table.py` (domainlock {meta['version']}, torch {meta['torch']}, "
        f"{meta['machine']}) from docs/map_results.json, docs/baselines.json and docs/ntp_results.json; "
        f"{meta['when']}. Do not edit by hand; rerun the three result scripts, then this one.",
        "",
        "Offline digit domains (mnist, uci-digits, syn, mnistm), digitnet source models, test splits, true labels, "
        "chance 10%. ST-D is METHODS.md §1's (mean over non-trivial rows); SLC-AUC is METHODS.md §2's "
        "normalized score under `reinit-head+all` fine-tuning (negative = a worse start than random init; "
        "*dense*: pruned weights may regrow, the honest headline; *masked*: they are held at zero). Runs that "
        "read no target repeat their one protection per target column. Protect times were measured on different "
        "machines (each page's header says which, per method) and are not compared here.",
        "",
        "## Direct use: every ordered pair (12) × seeds",
        "",
        "| run | reads | rows | source drop (points) | target after | ST-D | unseen after |",
        "|---|---|---|---|---|---|---|",
    ]
    direct_std = {}
    for run, reads in RUNS.items():
        rows = direct[run]
        if not rows:
            continue
        direct_std[run] = st_d_mean(rows)
        lines.append(f"| `{run}` | {reads} | {len(rows)} | {100 * mean(r['s0'] - r['s1'] for r in rows):.2f} | "
                     f"{pct(mean(r['t1'] for r in rows))} | **{direct_std[run]:.3f}** | "
                     f"{pct(mean(r['unseen_after'] for r in rows))} |")
    slc_pairs = sorted({(r["src"], r["tgt"], r["seed"]) for rows in slc.values() for r in rows})
    measured = [run for run in RUNS if slc[run]]
    # the verdict compares runs on the rows every one of them was attacked on (like for like)
    common = set(slc_pairs)
    for run in measured:
        common &= {(r["src"], r["tgt"], r["seed"]) for r in slc[run]}
    lines += [
        "",
        "## Fine-tuning attack",
        "",
        f"On the {len(common)} (pair, seed) rows every run below was attacked on: "
        + ", ".join(f"{s}→{t} s{sd}" for s, t, sd in sorted(common)) + ". *unprotected* is the source model's "
        "own SLC-AUC on the same rows (the head start fine-tuning normally gives).",
        "",
    ]
    slc_dense, slc_masked, slc_std = {}, {}, {}
    header = ["| run | rows | source drop | target after | ST-D | sparsity | SLC-AUC dense | SLC-AUC masked | "
              "unprotected |", "|---|---|---|---|---|---|---|---|---|"]
    lines += header
    for run in measured:
        rows = [r for r in slc[run] if (r["src"], r["tgt"], r["seed"]) in common]
        m = slc_means(rows)
        slc_dense[run], slc_masked[run], slc_std[run] = m["dense"], m["masked"], m["st_d"]
        lines.append(slc_summary_row(run, rows))
    wider = [run for run in measured if len(slc[run]) > len(common)]
    if wider:
        lines += ["", "The runs attacked on more rows than that, over all of theirs (not comparable with the "
                  "table above; the unprotected column is on the same rows):", ""] + header
        lines += [slc_summary_row(run, slc[run]) for run in wider]
    if slc_pairs:
        runs = [r for r in RUNS if slc[r]]
        lines += ["", "Per row, SLC-AUC dense / masked:", "",
                  "| pair | seed | " + " | ".join(f"`{r}`" for r in runs) + " | unprotected |",
                  "|---|---|" + "---|" * (len(runs) + 1)]
        for src, tgt, seed in slc_pairs:
            cells, unprot = [], float("nan")
            for run in runs:
                hit = [r for r in slc[run] if (r["src"], r["tgt"], r["seed"]) == (src, tgt, seed)]
                cells.append(f"{hit[0]['dense']:+.3f} / {hit[0]['masked']:+.3f}" if hit else "—")
                if hit:
                    unprot = hit[0]["unprotected"]
            lines.append(f"| {src} → {tgt} | {seed} | " + " | ".join(cells) + f" | {fmt(unprot)} |")
    lines += [
        "",
        "## Verdict (computed from the means above)",
        "",
        "- " + ordering("Direct use, mean ST-D over the 12 pairs (higher is better)", direct_std, "high"),
        "- " + ordering("Direct use on the attack rows, mean ST-D", slc_std, "high"),
        "- " + ordering("Fine-tuning, dense SLC-AUC (lower is better)", slc_dense, "low"),
        "- " + ordering("Fine-tuning, masked SLC-AUC (lower is better)", slc_masked, "low"),
        "- Seed papers (" + ", ".join(f"`{r}`" for r in SEEDS_RUNS) + ") above the baselines (" +
        ", ".join(f"`{r}`" for r in BASELINE_RUNS) + "), direct ST-D over the 12 pairs: "
        + seeds_hold(direct_std, "high"),
        "- Seed papers above the baselines, direct ST-D on the attack rows: " + seeds_hold(slc_std, "high"),
        "- Seed papers above the baselines, dense SLC-AUC: " + seeds_hold(slc_dense, "low"),
        "- Seed papers above the baselines, masked SLC-AUC: " + seeds_hold(slc_masked, "low"),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=Path("docs"), help="folder of the results JSONs")
    ap.add_argument("--out", type=Path, default=Path("docs/comparison.md"))
    args = ap.parse_args()
    meta = {"version": __version__, "torch": torch.__version__, "machine": platform.machine(),
            "when": tables.utc_stamp()}
    text = render(direct_rows(args.docs), slc_rows(args.docs), meta)
    atomic_write_text(args.out, text + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
