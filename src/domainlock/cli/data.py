"""``domainlock data list|build|show``: the offline domains and the standard datasets."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..errors import DomainlockError
from .common import Output, add_common, add_out, group, verb

WM_HINT = "wm:<domain>  the ownership watermark over any domain, e.g. wm:mnist or " \
          "wm:mnist@strength=0.3,stride=4,channel=1"
STANDARD_HINT = ("standard datasets: `domainlock data build NAME` downloads once (or --archive FILE, --root DIR for "
                 "folder datasets; --protocol ntlbench); sources and digests: docs/data.md")


def cmd_list(args: argparse.Namespace) -> Output:
    from ..data import domain_info, domain_names
    from ..data.registry import standard_names

    rows = [domain_info(n, args.data_root) for n in domain_names()]
    lines = [f"{'domain':<11} {'built':<6} {'available':<10} {'train/val/test':<16} {'MB':>5}  provenance"]
    for r in rows:
        counts = r.get("counts") or {}
        mb = f"{r['size_bytes'] / 2**20:.0f}" if r.get("built") else "-"
        note = r["provider"] if r.get("available") else f"unavailable: {r.get('availability', '')}"
        lines.append(f"{r['name']:<11} {'yes' if r.get('built') else 'no':<6} "
                     f"{'yes' if r.get('available') else 'no':<10} {_counts(counts):<16} {mb:>5}  {note}")
    std = [domain_info(n, args.data_root) for n in standard_names()]
    lines += ["", f"{'standard dataset':<24} {'state':<15} {'train/val/test':<17} {'protocol':<9} licence"]
    for r in std:
        lines.append(f"{r['name']:<24} {r['state']:<15} {_counts(r.get('counts') or {}):<17} "
                     f"{r.get('protocol') or '-':<9} {r.get('licence') or ''}")
    lines += [WM_HINT, STANDARD_HINT]
    return Output(rows + std, "\n".join(lines))


def _counts(counts: dict) -> str:
    return "/".join(str(counts.get(s, "-")) for s in ("train", "val", "test")) if counts else "-"


def cmd_build(args: argparse.Namespace) -> Output:
    from ..data import build_domain, domain_names, is_built, parse_domain, read_manifest

    names = domain_names() if args.all else args.domains
    if not names:
        raise DomainlockError("name at least one domain or pass --all; valid: " + ", ".join(domain_names()))
    bases = [parse_domain(n)[0] for n in names]
    if args.archive and len({b.split(":")[0] for b in bases}) > 1:
        raise DomainlockError(f"--archive applies to one dataset at a time; got {', '.join(bases)}")
    built, notes = {}, []
    for base in bases:
        if (args.archive or args.root) and not args.force and is_built(base, args.data_root):
            notes.append(f"{base} is already built; pass --force to rebuild it from --archive/--root")
        built[base] = str(build_domain(base, args.data_root, seed=args.seed, force=args.force, progress=not args.quiet,
                                       protocol=args.protocol, archives=args.archive or (),
                                       trust_archive=args.trust_archive, source_root=args.root))
        manifest = read_manifest(base, args.data_root)
        if manifest.get("verification") == "unverified":
            files = [f["name"] for f in (manifest.get("source") or {}).get("files", [])
                     if f.get("verification") != "verified"]
            notes.append(f"{base} was built from unverified files ({', '.join(files) or 'a folder you downloaded'}; "
                         f"see its manifest.json)")
    return Output({"built": built}, "\n".join(f"{base}: {path}" for base, path in built.items()), notes)


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
    dsub = group(sub, "data", "build, list and look at the offline domains and the standard datasets",
                 "domainlock data list", "data_verb")
    p = verb(dsub, "list", "show every domain and standard dataset with its state, size, provenance and licence",
             "domainlock data list", cmd_list)
    add_common(p)
    p = verb(dsub, "build", "build domains into the data root (idempotent, atomic; standard datasets are "
             "downloaded once, resumably, and checked against pinned digests)",
             "domainlock data build mnist syn\n  domainlock data build svhn --archive train_32x32.mat --archive "
             "test_32x32.mat\n  domainlock data build officehome:Art --root ~/OfficeHomeDataset_10072016", cmd_build)
    p.add_argument("domains", nargs="*", help="domains to build")
    p.add_argument("--all", action="store_true", help="build every offline domain available here")
    p.add_argument("--seed", type=int, default=0, help="build seed (default 0)")
    p.add_argument("--force", action="store_true", help="rebuild even if already built")
    p.add_argument("--protocol", default=None, choices=("default", "ntlbench"),
                   help="standard datasets: default (32 px; official test split kept) or ntlbench (64 px, 8:1:1 "
                        "split capped at 8000/1000/1000, fixed seed); unset: default, or whatever is built")
    p.add_argument("--archive", action="append", metavar="FILE",
                   help="standard datasets: build from a file fetched by hand instead of downloading (a release "
                        "file, or a .tar/.zip holding them; repeat for several)")
    p.add_argument("--trust-archive", action="store_true",
                   help="build from an --archive whose digest does not match the pinned one (recorded as unverified)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="folder datasets (visda, officehome, pacs, domainnet): the folder the release was unpacked "
                        "into (<domain>/<class>/<image> in it)")
    add_common(p)
    p = verb(dsub, "show", "write a PNG grid of samples, one row per class",
             "domainlock data show syn --out syn.png", cmd_show)
    p.add_argument("domain")
    add_out(p, "PNG path", required=True)
    p.add_argument("--split", default="train", help="train|val|test (default train)")
    p.add_argument("--n", type=int, default=100, help="number of images (default 100)")
    add_common(p)
