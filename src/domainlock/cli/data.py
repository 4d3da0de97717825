"""``domainlock data list|build|show``: the offline domains."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..errors import DomainlockError
from .common import Output, add_common, add_out, group, verb

WM_HINT = "wm:<domain>  the ownership watermark over any domain, e.g. wm:mnist or " \
          "wm:mnist@strength=0.3,stride=4,channel=1"


def cmd_list(args: argparse.Namespace) -> Output:
    from ..data import domain_info, domain_names

    rows = [domain_info(n, args.data_root) for n in domain_names()]
    lines = [f"{'domain':<11} {'built':<6} {'available':<10} {'train/val/test':<16} {'MB':>5}  provenance"]
    for r in rows:
        counts = r.get("counts") or {}
        cs = "/".join(str(counts.get(s, "-")) for s in ("train", "val", "test")) if counts else "-"
        mb = f"{r['size_bytes'] / 2**20:.0f}" if r.get("built") else "-"
        note = r["provider"] if r.get("available") else f"unavailable: {r.get('availability', '')}"
        lines.append(f"{r['name']:<11} {'yes' if r.get('built') else 'no':<6} "
                     f"{'yes' if r.get('available') else 'no':<10} {cs:<16} {mb:>5}  {note}")
    lines.append(WM_HINT)
    return Output(rows, "\n".join(lines))


def cmd_build(args: argparse.Namespace) -> Output:
    from ..data import build_domain, domain_names, parse_domain

    names = domain_names() if args.all else args.domains
    if not names:
        raise DomainlockError("name at least one domain or pass --all; valid: " + ", ".join(domain_names()))
    built = {}
    for name in names:
        base, _ = parse_domain(name)
        built[base] = str(build_domain(base, args.data_root, seed=args.seed, force=args.force,
                                       progress=not args.quiet))
    return Output({"built": built}, "\n".join(f"{base}: {path}" for base, path in built.items()))


def cmd_show(args: argparse.Namespace) -> Output:
    from ..data import load_domain, save_grid
    from ..errors import check_integer
    from ..utils.io import check_output_path

    check_output_path(args.out, args.overwrite)
    check_integer("--n", args.n, 1)
    data = load_domain(args.domain, args.split, args.data_root)
    n = min(args.n, len(data))
    # one row per class where possible, so a reader sees every class
    order = data.y[:].argsort(stable=True)
    per = max(1, n // data.num_classes)
    idx = []
    for c in range(data.num_classes):
        idx.extend(order[data.y[order] == c][:per].tolist())
    save_grid(data.x[idx], args.out, nrow=per)
    doc = {"path": str(args.out), "domain": args.domain, "split": args.split, "images": len(idx), "per_class": per}
    return Output(doc, f"wrote {args.out} ({len(idx)} images of {args.domain}/{args.split}, one row per class)")


def add_parsers(sub, argv: Sequence[str]) -> None:
    dsub = group(sub, "data", "build, list and look at the offline domains", "domainlock data list", "data_verb")
    p = verb(dsub, "list", "show every domain with availability, size and provenance", "domainlock data list",
             cmd_list)
    add_common(p)
    p = verb(dsub, "build", "build domains into the data root (idempotent, atomic)",
             "domainlock data build mnist syn", cmd_build)
    p.add_argument("domains", nargs="*", help="domains to build")
    p.add_argument("--all", action="store_true", help="build every domain available here")
    p.add_argument("--seed", type=int, default=0, help="build seed (default 0)")
    p.add_argument("--force", action="store_true", help="rebuild even if already built")
    add_common(p)
    p = verb(dsub, "show", "write a PNG grid of samples, one row per class",
             "domainlock data show syn --out syn.png", cmd_show)
    p.add_argument("domain")
    add_out(p, "PNG path", required=True)
    p.add_argument("--split", default="train", help="train|val|test (default train)")
    p.add_argument("--n", type=int, default=100, help="number of images (default 100)")
    add_common(p)
