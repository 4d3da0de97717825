"""Entry point of the ``domainlock`` command.

Every verb lives in its own function; user errors (:class:`~domainlock.errors.DomainlockError`) become one
line on stderr and exit code 2, Ctrl-C exits 130 with nothing half-written (outputs are atomic).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import DomainlockError

Handler = Callable[[argparse.Namespace], int]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _add_common(p: argparse.ArgumentParser, device: bool = False) -> None:
    p.add_argument("--data-root", default=None,
                   help="where built domains live (default: $DOMAINLOCK_DATA, else a user cache dir)")
    if device:
        p.add_argument("--device", default="auto", help="auto|cpu|cuda|mps (default: auto)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _verb(sub, name: str, summary: str, example: str, handler: Handler, **kw) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=f"{summary}\n\nexample:\n  {example}",
                       formatter_class=_Formatter, **kw)
    p.set_defaults(handler=handler)
    return p


# ----------------------------------------------------------------------------------------------- data
def _cmd_data_list(args: argparse.Namespace) -> int:
    from ..data import domain_info, domain_names

    rows = [domain_info(n, args.data_root) for n in domain_names()]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'domain':<11} {'built':<6} {'available':<10} {'train/val/test':<16} {'MB':>5}  provenance")
    for r in rows:
        counts = r.get("counts") or {}
        cs = "/".join(str(counts.get(s, "-")) for s in ("train", "val", "test")) if counts else "-"
        mb = f"{r['size_bytes'] / 2**20:.0f}" if r.get("built") else "-"
        note = r["provider"] if r.get("available") else f"unavailable: {r.get('availability', '')}"
        print(f"{r['name']:<11} {'yes' if r.get('built') else 'no':<6} "
              f"{'yes' if r.get('available') else 'no':<10} {cs:<16} {mb:>5}  {note}")
    print("wm:<domain>  the ownership watermark over any domain, e.g. wm:mnist or "
          "wm:mnist@strength=0.3,stride=4,channel=1")
    return 0


def _cmd_data_build(args: argparse.Namespace) -> int:
    from ..data import build_domain, domain_names, parse_domain

    names = domain_names() if args.all else args.domains
    if not names:
        raise DomainlockError("name at least one domain or pass --all; valid: " + ", ".join(domain_names()))
    for name in names:
        base, _ = parse_domain(name)
        path = build_domain(base, args.data_root, seed=args.seed, force=args.force, progress=not args.quiet)
        print(f"{base}: {path}")
    return 0


def _cmd_data_show(args: argparse.Namespace) -> int:
    from ..data import load_domain, save_grid
    from ..utils.io import check_output_path

    check_output_path(args.out, args.overwrite)
    data = load_domain(args.domain, args.split, args.data_root)
    n = min(args.n, len(data))
    # one row per class where possible, so a reader sees every class
    order = data.y[:].argsort(stable=True)
    per = max(1, n // data.num_classes)
    idx = []
    for c in range(data.num_classes):
        idx.extend(order[data.y[order] == c][:per].tolist())
    save_grid(data.x[idx], args.out, nrow=per)
    print(f"wrote {args.out} ({len(idx)} images of {args.domain}/{args.split}, one row per class)")
    return 0


# ---------------------------------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> int:
    from ..training import TrainConfig, train_source
    from ..utils.hparams import dataclass_from_args

    cfg = dataclass_from_args(TrainConfig, args)
    art = train_source(args.domain, args.arch, cfg, args.out, device=args.device, data_root=args.data_root,
                       overwrite=args.overwrite, progress=not args.quiet)
    acc = art.card.get("metrics", {}).get("accuracy", {})
    print(f"wrote {art.path}  " + "  ".join(f"{k}={v:.4f}" for k, v in acc.items()))
    return 0


# ----------------------------------------------------------------------------------------------- eval
def _cmd_eval(args: argparse.Namespace) -> int:
    from ..artifact import load_artifact
    from ..evaluation import evaluate, format_table

    art = load_artifact(args.model)
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    res = evaluate(art.model, domains, split=args.split, data_root=args.data_root, device=args.device)
    if args.json:
        print(json.dumps({"model": str(args.model), "split": args.split, "results": res}, indent=2))
    else:
        print(format_table(res))
    return 0


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="domainlock", formatter_class=_Formatter,
        description="Make a trained image classifier non-transferable: accurate on the owner's domain, "
                    "useless on unauthorized ones.\n\nexample:\n  domainlock train --domain mnist "
                    "--arch digitnet --out runs/src-mnist")
    parser.add_argument("--version", action="version", version=f"domainlock {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    data = sub.add_parser("data", help="build, list and look at the offline domains",
                          description="Build, list and look at the offline domains.\n\nexample:\n"
                                      "  domainlock data list", formatter_class=_Formatter)
    dsub = data.add_subparsers(dest="data_verb", metavar="ACTION")
    p = _verb(dsub, "list", "show every domain with availability, size and provenance",
              "domainlock data list", _cmd_data_list)
    _add_common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = _verb(dsub, "build", "build domains into the data root (idempotent, atomic)",
              "domainlock data build mnist syn", _cmd_data_build)
    p.add_argument("domains", nargs="*", help="domains to build")
    p.add_argument("--all", action="store_true", help="build every domain available here")
    p.add_argument("--seed", type=int, default=0, help="build seed (default 0)")
    p.add_argument("--force", action="store_true", help="rebuild even if already built")
    _add_common(p)
    p = _verb(dsub, "show", "write a PNG grid of samples, one row per class",
              "domainlock data show syn --out syn.png", _cmd_data_show)
    p.add_argument("domain")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--split", default="train", help="train|val|test (default train)")
    p.add_argument("--n", type=int, default=100, help="number of images (default 100)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_common(p)

    from ..training import TrainConfig
    from ..utils.hparams import add_dataclass_args

    p = _verb(sub, "train", "train a source (owner) model and write an artifact",
              "domainlock train --domain mnist --arch digitnet --out runs/src-mnist", _cmd_train)
    p.add_argument("--domain", required=True, help="training domain, e.g. mnist")
    p.add_argument("--arch", default="digitnet", help="model architecture (default digitnet)")
    p.add_argument("--out", required=True, help="artifact directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_common(p, device=True)
    add_dataclass_args(p, TrainConfig)

    p = _verb(sub, "eval", "evaluate an artifact on one or more domains",
              "domainlock eval --model runs/src-mnist --domains mnist,syn,mnistm,uci-digits", _cmd_eval)
    p.add_argument("--model", required=True, help="artifact directory")
    p.add_argument("--domains", required=True, help="comma-separated domains")
    p.add_argument("--split", default="test", help="train|val|test (default test)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_common(p, device=True)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # `domainlock` or `domainlock data` alone: show what is possible
        parser.print_help() if args.verb is None else parser.parse_args([args.verb, "--help"])
        return 2
    try:
        return handler(args)
    except DomainlockError as e:
        print(f"domainlock: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("domainlock: interrupted; no partial output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
