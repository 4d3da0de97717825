"""``domainlock protect``: run a protection method on a source model; its hyper-parameters are flags
generated from the method's ``Hparams`` dataclass (``domainlock protect --method NAME --help``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .common import Output, add_common, add_out, option_from_argv, split_names, verb


def cmd_protect(args: argparse.Namespace) -> Output:
    from ..methods import get_method_class, protect
    from ..utils.hparams import values_from_args

    cls = get_method_class(args.method)
    hp = cls.make_hparams(args.preset, **values_from_args(cls.Hparams, args, prefix="hp_"))
    res = protect(args.model, args.method, source=args.source, target=args.target, setting=args.setting,
                  hparams=hp, eval_domains=split_names(args.eval_domains), data_root=args.data_root,
                  device=args.device, seed=args.seed, progress=not args.quiet, out=args.out, overwrite=args.overwrite)
    path = None if res.path is None else str(res.path)
    return Output({"path": path, "card": res.card}, protection_report(res.card, path), list(res.notices))


def protection_report(card: dict[str, Any], path: str | None) -> str:
    prot = card["protection"]
    lines = [f"{prot['method']} ({prot['setting']}) {prot['source']} -> {prot['target']}: "
             f"{prot['wall_time_s']:.1f} s, weight sparsity {prot['sparsity']:.3f}, "
             f"read {prot['data_read'] or 'no data'}"]
    if prot.get("target_use"):
        lines.append(f"target {prot['target']}: used for {prot['target_use']}")
    lines.append(f"{'domain':<28} {'before':>8} {'after':>8}")
    for d, a in prot["accuracy_test"].items():
        lines.append(f"{d:<28} {a['before'] * 100:>7.2f}% {a['after'] * 100:>7.2f}%")
    std = prot.get("st_d")
    if std:
        if std["trivial"]:
            lines.append("ST-D: n/a (unprotected target accuracy within 5 points of chance); "
                         f"retain_S {std['retain_s']:.4f}")
        else:
            lines.append(f"ST-D {std['st_d']:.4f}  (retain_S {std['retain_s']:.4f}, drop_T {std['drop_t']:.4f})")
    if path is not None:
        lines.append(f"wrote {path}")
    return "\n".join(lines)


def add_parsers(sub, argv: Sequence[str]) -> None:
    from ..methods import SETTINGS, get_method_class, method_names
    from ..utils.hparams import add_dataclass_args

    p = verb(sub, "protect", "protect a source model against an unauthorized domain and write an artifact",
             "domainlock protect --method sa-map --model runs/src-mnist --source mnist --target syn "
             "--out runs/sa-map-mnist-syn\n  (method hyper-parameters: domainlock protect --method sa-map --help)",
             cmd_protect)
    p.add_argument("--method", required=True, help="one of: " + ", ".join(method_names()))
    p.add_argument("--model", required=True, help="source model artifact directory")
    p.add_argument("--source", required=True, help="the authorized domain the model was trained on")
    p.add_argument("--target", default=None, help="the unauthorized domain (wm:<source> for ownership "
                   "verification); methods or variants that read no target (data-free, ntl|hntl --variant "
                   "source-only, cuti|cupi --variant target-free, magnitude) use it for evaluation only")
    p.add_argument("--setting", default=None, help="data setting: " + ", ".join(SETTINGS) +
                   " (default: the method's own)")
    p.add_argument("--eval-domains", default="", help="extra domains to report, comma-separated")
    add_out(p, "protected artifact directory to create (default: none, report only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default=None, help="a named set of the method's hyper-parameters (e.g. the "
                   "paper's reference values); flags given beside it override it")
    add_common(p, device=True)
    method = option_from_argv(argv, "--method")
    if method in method_names():
        add_dataclass_args(p, get_method_class(method).Hparams, prefix="hp_", skip=("seed",))
