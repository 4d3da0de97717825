"""``domainlock bench`` (run a suite into a folder, resumably; ``bench export``) and ``domainlock report``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..errors import DomainlockError
from .common import Output, add_common, add_out, verb

ACTIONS = ("run", "export")


def _summary_text(summary, dry_run: bool, jobs: int = 1) -> str:
    rows = [f"{'':<8} {'total':>6} {'to run':>7}"]
    rows += [f"{kind:<8} {c['total']:>6} {c['to_run']:>7}" for kind, c in summary.plan.items()]
    head = (f"suite {summary.suite} -> {summary.folder} (dry run: nothing computed)" if dry_run
            else summary.line())
    est = summary.estimate
    if est is not None:
        rows += ["", f"{'estimated time of the nodes to run':<40} {'nodes':>6} {'mean s':>8} {'total h':>8}"]
        rows += [f"{c:<40} {r['nodes']:>6} {r['mean_s']:>8.1f} {r['total_s'] / 3600:>8.2f}"
                 + (f"  (like {r['like']})" if r.get("like") else "")
                 for c, r in sorted(est.rows.items(), key=lambda kv: -kv[1]["total_s"])]
        rows.append(f"total {est.total_s / 3600:.2f} node-hours at 1 thread; about {est.wall_s(jobs) / 3600:.2f} h "
                    f"wall at --jobs {jobs} (critical path {est.critical_path_s / 60:.0f} min)")
        if est.unmeasured:
            rows.append("not measured (not counted): " + ", ".join(f"{c} x{n}" for c, n in est.unmeasured.items()))
    return "\n".join([head, *rows])


def cmd_bench(args: argparse.Namespace) -> Output:
    action = args.action or "run"
    if action not in ACTIONS:
        raise DomainlockError(f"unknown bench action {action!r}; valid: {', '.join(ACTIONS)} "
                              "(run is the default: domainlock bench --suite S --out DIR)")
    if action == "export":
        return _export(args)
    if args.folder is not None:
        raise DomainlockError(f"unexpected argument {args.folder!r}: the run's folder is given with --out DIR")
    if not args.suite or not args.out:
        raise DomainlockError("bench needs --suite (a packaged suite or a .yaml file) and --out DIR")
    if args.format is not None:
        raise DomainlockError("--format belongs to `domainlock bench export DIR`")
    if args.estimate_from and not args.dry_run:
        raise DomainlockError("--estimate-from goes with --dry-run (it estimates what a run would compute)")
    if args.overwrite:
        raise DomainlockError("--overwrite does not apply to a run: rerunning resumes the folder's finished work "
                              "(--retry-failed reruns what failed)")
    from ..bench.engine import run_bench
    from ..bench.suite import load_suite, with_sources

    sources = {}
    for item in args.source_model or []:
        domain, sep, path = item.partition("=")
        if not sep or not domain.strip() or not path.strip():
            raise DomainlockError(f"--source-model {item!r}: expected DOMAIN=ARTIFACT, e.g. mnist=runs/src-mnist")
        sources[domain.strip()] = path.strip()
    suite = with_sources(load_suite(args.suite), sources)
    summary = run_bench(suite, args.out, jobs=args.jobs, launcher=args.launcher, threads=args.threads,
                        gpus=args.gpus, device=args.device, data_root=args.data_root, only=args.only,
                        retry_failed=args.retry_failed, dry_run=args.dry_run, progress=not args.quiet,
                        estimate_from=args.estimate_from, reuse=args.reuse)
    doc = {"suite": summary.suite, "folder": str(summary.folder), "cells": summary.cells, "done": summary.done,
           "failed": summary.failed, "nodes_run": summary.nodes_run, "nodes_reused": summary.nodes_adopted,
           "wall_s": round(summary.wall_s, 2), "plan": summary.plan, "dry_run": args.dry_run}
    if summary.estimate is not None:
        est = summary.estimate
        doc["estimate"] = {"total_s": round(est.total_s, 1), "critical_path_s": round(est.critical_path_s, 1),
                           "wall_s_at_jobs": round(est.wall_s(args.jobs), 1), "jobs": args.jobs,
                           "classes": est.rows, "unmeasured": est.unmeasured}
    notes = [] if args.dry_run or not summary.failed else [
        f"{summary.failed} cell(s) failed; their errors are in the report; rerun with --retry-failed"]
    return Output(doc, _summary_text(summary, args.dry_run, args.jobs), notes)


def _export(args: argparse.Namespace) -> Output:
    import json

    from ..bench.store import export
    from ..utils.io import atomic_write_text, check_output_path

    if args.folder is None:
        raise DomainlockError("bench export needs the benchmark folder: domainlock bench export DIR --format csv")
    fmt = args.format or "csv"
    if args.out is not None:
        check_output_path(args.out, args.overwrite)
    if fmt == "db":
        from ..bench.store import export_db

        if args.out is None:
            raise DomainlockError("--format db writes a database file: give --out FILE (e.g. docs/x/results.db)")
        path = export_db(args.folder, args.out)
        return Output({"path": str(path), "format": fmt}, f"wrote {path}")
    text = export(args.folder, fmt)
    if args.out is not None:
        atomic_write_text(args.out, text)
        return Output({"path": str(args.out), "format": fmt}, f"wrote {args.out}")
    doc = [json.loads(line) for line in text.splitlines()] if fmt == "jsonl" else {"csv": text}
    return Output(doc, text.rstrip("\n"))


def cmd_report(args: argparse.Namespace) -> Output:
    from ..bench.report import write_report

    md, html = write_report(args.folder, args.out, overwrite=args.overwrite)
    return Output({"markdown": str(md), "html": str(html)}, f"wrote {md}\nwrote {html}")


def add_parsers(sub, argv: Sequence[str]) -> None:
    from ..bench.launchers import LAUNCHERS
    from ..bench.store import EXPORT_FORMATS

    p = verb(sub, "bench", "run a benchmark suite (methods x pairs x seeds x attacks) into a folder; rerun to "
             "resume", "domainlock bench --suite digits-quick --out runs/bench-quick --jobs 2\n"
             "  domainlock bench --suite digits-offline --out runs/bench --launcher ray   (RAY_ADDRESS: a cluster)\n"
             "  domainlock bench export runs/bench-quick --format csv --out cells.csv", cmd_bench)
    p.add_argument("action", nargs="?", default=None, help="run (default) or export")
    p.add_argument("folder", nargs="?", default=None, help="export: the benchmark folder")
    p.add_argument("--suite", default=None, help="a packaged suite (digits-quick, digits-offline, digits-attacks, "
                   "cifar-stl, cifar-stl-resnet18) or a .yaml file")
    p.add_argument("--source-model", action="append", metavar="DOMAIN=ARTIFACT",
                   help="use this trained model as the suite's source model for DOMAIN instead of training one "
                        "(repeatable), e.g. mnist=runs/src-mnist")
    p.add_argument("--jobs", type=int, default=1, help="nodes run at once (default 1: in this process)")
    p.add_argument("--launcher", default="local", choices=LAUNCHERS,
                   help="local: this machine (a process pool when --jobs > 1); ray: Ray tasks")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per node (default: all cores, shared between --jobs)")
    p.add_argument("--gpus", type=float, default=0, help="GPUs per Ray task (default 0)")
    p.add_argument("--only", default=None, help="a part of the grid, quoted in a shell: "
                   "'method=NAME,pair=SRC->TGT,seed=N,attack=NAME' (a key may repeat)")
    p.add_argument("--reuse", action="append", metavar="DIR", help="another benchmark folder whose finished "
                   "nodes this run takes (linked, not recomputed) where the key is the same: same configuration, "
                   "inputs, data and version (repeatable)")
    p.add_argument("--retry-failed", action="store_true", help="run failed nodes (and what they blocked) again")
    p.add_argument("--dry-run", action="store_true", help="count what would run; compute nothing")
    p.add_argument("--estimate-from", action="append", metavar="DIR", help="with --dry-run: estimate the time of "
                   "what would run from the node costs measured in this benchmark folder (repeatable, newest first: a "
                   "class costs what the first folder measured of it or its family)")
    p.add_argument("--format", default=None, choices=EXPORT_FORMATS,
                   help="export: csv (default), jsonl, or db (a compact copy of the database to commit beside a "
                   "report; domainlock report reads the folder it is in)")
    add_out(p, "run: the benchmark folder (created; rerun to resume); export: the file to write")
    add_common(p, device=True)

    p = verb(sub, "report", "write report.md and a self-contained report.html from a benchmark folder",
             "domainlock report runs/bench-quick --out runs/bench-quick/report", cmd_report)
    p.add_argument("folder", help="the benchmark folder (domainlock bench --out)")
    add_out(p, "the folder to write report.md and report.html into", required=True)
