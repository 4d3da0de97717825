"""``domainlock eval``: an artifact's accuracy on one or more domains."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .common import Output, add_common, check_domain_names, split_names, verb


def cmd_eval(args: argparse.Namespace) -> Output:
    from ..artifact import load_artifact
    from ..evaluation import evaluate, format_table

    domains = split_names(args.domains)
    check_domain_names(domains)
    art = load_artifact(args.model)
    res = evaluate(art.model, domains, split=args.split, data_root=args.data_root, device=args.device,
                   classes=art.classes)
    notes = [*art.notices, *(r["note"] for r in res.values() if r.get("note"))]
    return Output({"model": str(args.model), "split": args.split, "results": res}, format_table(res), notes)


def add_parsers(sub, argv: Sequence[str]) -> None:
    p = verb(sub, "eval", "evaluate an artifact on one or more domains",
             "domainlock eval --model runs/src-mnist --domains mnist,syn,mnistm,uci-digits", cmd_eval)
    p.add_argument("--model", required=True, help="artifact directory")
    p.add_argument("--domains", required=True, help="comma-separated domains")
    p.add_argument("--split", default="test", help="train|val|test (default test)")
    add_common(p, device=True)
