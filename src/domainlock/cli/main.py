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


def _note(*notes: str | None) -> None:
    """The library's notices (converted weights, a folder's class mapping) on stderr; stdout stays clean."""
    for n in notes:
        if n:
            print(f"domainlock: note: {n}", file=sys.stderr)


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
    print(f"wrote {args.out} ({len(idx)} images of {args.domain}/{args.split}, one row per class)")
    return 0


# ---------------------------------------------------------------------------------------------- train
RECIPES = ("supervised", "simclr")


def _cmd_train(args: argparse.Namespace) -> int:
    from ..utils.hparams import dataclass_from_args

    if args.recipe == "simclr":
        from ..training.simclr import ProbeConfig, SimCLRConfig, train_simclr_source

        art = train_simclr_source(args.domain, args.arch, dataclass_from_args(SimCLRConfig, args, prefix="ssl_"),
                                  dataclass_from_args(ProbeConfig, args), args.out,
                                  device=args.device, data_root=args.data_root, overwrite=args.overwrite,
                                  progress=not args.quiet)
    else:
        from ..training import TrainConfig, train_source

        art = train_source(args.domain, args.arch, dataclass_from_args(TrainConfig, args), args.out,
                           device=args.device, data_root=args.data_root, overwrite=args.overwrite,
                           progress=not args.quiet)
    acc = art.card.get("metrics", {}).get("accuracy", {})
    print(f"wrote {art.path}  " + "  ".join(f"{k}={v:.4f}" for k, v in acc.items()))
    return 0


# ----------------------------------------------------------------------------------------------- eval
def _cmd_eval(args: argparse.Namespace) -> int:
    from ..artifact import load_artifact
    from ..data import parse_domain
    from ..evaluation import evaluate, format_table

    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    for d in domains:   # fail on a bad name before loading (or building) anything
        if not d.startswith("folder:"):
            parse_domain(d)
    art = load_artifact(args.model)
    res = evaluate(art.model, domains, split=args.split, data_root=args.data_root, device=args.device,
                   classes=art.classes)
    _note(*art.notices, *(r.get("note") for r in res.values()))
    if args.json:
        print(json.dumps({"model": str(args.model), "split": args.split, "results": res}, indent=2))
    else:
        print(format_table(res))
    return 0


# -------------------------------------------------------------------------------------------- protect
def _cmd_protect(args: argparse.Namespace) -> int:
    from ..methods import get_method, protect
    from ..utils.hparams import dataclass_from_args

    method = get_method(args.method)
    hp = dataclass_from_args(method.Hparams, args, prefix="hp_")
    extra = [d.strip() for d in (args.eval_domains or "").split(",") if d.strip()]
    res = protect(args.model, args.method, source=args.source, target=args.target, setting=args.setting,
                  hparams=hp, eval_domains=extra, data_root=args.data_root, device=args.device, seed=args.seed,
                  progress=not args.quiet, out=args.out, overwrite=args.overwrite)
    _note(*res.notices)
    _print_protection(res.card, res.path)
    return 0


def _print_protection(card: dict, path) -> None:
    prot = card["protection"]
    print(f"{prot['method']} ({prot['setting']}) {prot['source']} -> {prot['target']}: "
          f"{prot['wall_time_s']:.1f} s, weight sparsity {prot['sparsity']:.3f}, read {prot['data_read'] or 'no data'}")
    if prot.get("target_use"):
        print(f"target {prot['target']}: used for {prot['target_use']}")
    print(f"{'domain':<28} {'before':>8} {'after':>8}")
    for d, a in prot["accuracy_test"].items():
        print(f"{d:<28} {a['before'] * 100:>7.2f}% {a['after'] * 100:>7.2f}%")
    std = prot.get("st_d")
    if std:
        if std["trivial"]:
            print(f"ST-D: n/a (unprotected target accuracy within 5 points of chance); retain_S {std['retain_s']:.4f}")
        else:
            print(f"ST-D {std['st_d']:.4f}  (retain_S {std['retain_s']:.4f}, drop_T {std['drop_t']:.4f})")
    if path is not None:
        print(f"wrote {path}")


def _method_from_argv(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return None


def _option_from_argv(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``flag VALUE`` or ``flag=VALUE``), for flags that decide which
    other flags exist."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------------------------- verify
def _cmd_verify(args: argparse.Namespace) -> int:
    from ..artifact import load_artifact
    from ..ownership import verify

    art = load_artifact(args.model)
    _note(*art.notices)
    r = verify(art.model, args.owner_data, watermark=args.watermark, split=args.split, data_root=args.data_root,
               device=args.device, alpha=args.alpha, min_gap=args.min_gap)
    if args.json:
        print(json.dumps(r.as_dict(), indent=2))
    else:
        print(f"clean accuracy {r.clean_accuracy * 100:.2f}%  watermarked {r.watermarked_accuracy * 100:.2f}%  "
              f"gap {r.gap * 100:.2f} points  p = {r.p_value:.3g}{' (below float range)' if r.p_value == 0 else ''}  "
              f"(n = {r.n})")
        print(r.verdict)
    return 0


# ----------------------------------------------------------------------------------------- synthesize
def _cmd_synthesize(args: argparse.Namespace) -> int:
    from ..artifact import load_artifact
    from ..data import load_domain
    from ..synthesis.inversion import SynthesisConfig, fidelity, save_pseudo_source, synthesize_pseudo_source
    from ..utils.hparams import dataclass_from_args
    from ..utils.io import check_output_path
    from ..utils.runtime import resolve_device

    check_output_path(args.out, args.overwrite)
    art = load_artifact(args.model)
    _note(*art.notices)
    cfg = dataclass_from_args(SynthesisConfig, args, prefix="syn_")
    if hasattr(cfg, "n"):
        cfg.n = args.n
    dev = resolve_device(args.device)
    pseudo = synthesize_pseudo_source(art.model, args.n, device=dev, seed=args.seed, progress=not args.quiet,
                                      cfg=cfg)
    if not pseudo.info.get("used_bn_matching", True):
        print("note: the model has no BatchNorm layer; synthesized with image priors only (lower fidelity)")
    if args.fidelity_domain != "none":
        domain = args.fidelity_domain or art.card.get("domain")
        if not domain:
            raise DomainlockError("the artifact card names no source domain; pass --fidelity-domain or 'none'")
        fid = fidelity(art.model, pseudo, load_domain(domain, "test", args.data_root), device=dev, seed=args.seed,
                       epochs=args.fidelity_epochs)
        pseudo.info["fidelity"] = {"domain": domain, **fid}
    path = save_pseudo_source(pseudo, args.out, overwrite=args.overwrite)
    fid = pseudo.info.get("fidelity")
    if fid:
        print(f"fidelity on real {fid['domain']} test: teacher {fid['teacher_acc'] * 100:.2f}%, student "
              f"distilled from {args.n} synthetic images only {fid['student_acc'] * 100:.2f}%")
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------------------------- attack
def _parse_ints(text: str, what: str) -> list[int]:
    parts = [t.strip() for t in str(text).split(",")]
    try:
        vals = [int(t) for t in parts]
    except ValueError:
        raise DomainlockError(f"{what} must be comma-separated integers, e.g. 10,20,50; got {text!r}") from None
    return vals


def _attack_protocol(args: argparse.Namespace):
    import torch

    from ..attacks import STRATEGIES, AttackProtocol
    from ..errors import check_choice, check_range
    from ..utils.hparams import dataclass_from_args

    check_choice("strategy", args.strategy, STRATEGIES)
    if args.threads:
        check_range("threads", args.threads, 1, 4096)
        torch.set_num_threads(args.threads)
    return dataclass_from_args(AttackProtocol, args, prefix="atk_")


def _cmd_attack_finetune(args: argparse.Namespace) -> int:
    from ..artifact import load_artifact, save_artifact
    from ..attacks import check_split, finetune_attack
    from ..data import load_domain, parse_domain
    from ..evaluation import align_classes
    from ..utils.io import check_output_path

    protocol = _attack_protocol(args)
    seeds = _parse_ints(args.seeds, "--seeds")
    if args.out is not None:
        if len(seeds) != 1:
            raise DomainlockError("--out saves one fine-tuned model: give a single --seeds value")
        check_output_path(args.out, args.overwrite)
    if not args.target.startswith("folder:"):
        parse_domain(args.target)
    art = load_artifact(args.model)
    check_split(art.model)
    starts = [("model", art.model, False)]
    if args.unprotected:
        starts.append(("unprotected", load_artifact(args.unprotected).model, False))
    if args.scratch:
        starts.append(("scratch", art.model, True))
    train, test = load_domain(args.target, "train", args.data_root), load_domain(args.target, "test", args.data_root)
    (train, note), (test, _) = (align_classes(d, art.classes, art.num_classes, every_class=True) for d in (train, test))
    _note(*art.notices, note)
    rows, kept = [], None
    for label, model, scratch in starts:
        for seed in seeds:
            r = finetune_attack(model, train, args.n, "all" if scratch else args.strategy,
                                args.masked and label == "model", protocol, seed, target_test=test,
                                from_scratch=scratch, device=args.device, progress=not args.quiet)
            rows.append({"start": label, **r.as_dict()})
            if label == "model":
                kept = r
    if args.json:
        print(json.dumps({"model": str(args.model), "target": args.target, "protocol": protocol.to_dict(),
                          "results": rows}, indent=2))
    else:
        attacker = "masked" if args.masked else "dense"
        print(f"fine-tuning attack on {args.target}: n={args.n}, {args.strategy}, {attacker} attacker "
              f"({rows[0]['steps']} steps, select {rows[0]['select']})")
        print(f"{'start':<12} {'seed':>4} {'target test':>11} {'zeros before/after':>19} {'s':>6}")
        for r in rows:
            print(f"{r['start']:<12} {r['seed']:>4} {100 * r['accuracy']:>10.2f}% "
                  f"{r['zeros_before']:>9.3f}/{r['zeros_after']:<9.3f} {r['wall_s']:>6.1f}")
        if args.masked and rows[0]["zeros_before"] == 0:
            print("note: the model has no exactly-zero weights, so the masked attacker is the dense one")
    if args.out is not None and kept is not None:
        card = {"domain": art.card.get("domain"), "seed": kept.seed,
                "attack": {"kind": "finetune", "target": args.target, "source_model": str(args.model),
                           "source_sha256": art.card.get("sha256"), "protocol": protocol.to_dict(),
                           **kept.as_dict()},
                "metrics": {"accuracy": {f"{args.target}/test": kept.accuracy}}}
        if "protection" in art.card:   # a fine-tuned protected model is still that protection's descendant
            card["protection"] = art.card["protection"]
        path = save_artifact(args.out, kept.model.cpu(), card, overwrite=args.overwrite)
        if not args.json:
            print(f"wrote {path}")
    return 0


def _cmd_slc(args: argparse.Namespace) -> int:
    from ..artifact import load_artifact
    from ..attacks.slc import PointCache, plot_slc, require_matplotlib, slc
    from ..data import parse_domain
    from ..metrics import check_shots
    from ..utils.io import atomic_write_json, check_output_path

    protocol = _attack_protocol(args)
    shots = check_shots(_parse_ints(args.shots, "--shots"))
    seeds = _parse_ints(args.seeds, "--seeds")
    for out in (args.json, args.plot):
        if out is not None:
            check_output_path(out, args.overwrite)
    if not args.target.startswith("folder:"):
        parse_domain(args.target)
    if args.plot is not None:
        require_matplotlib()   # before hours of fine-tuning, not after
    model = load_artifact(args.model)
    unprot = load_artifact(args.unprotected) if args.unprotected else None
    cache = False if args.no_cache else PointCache(args.cache_dir)
    res = slc(model, args.target, shots, strategy=args.strategy, masked=args.masked, protocol=protocol,
              seeds=seeds, unprotected=unprot, data_root=args.data_root, device=args.device, cache=cache,
              progress=not args.quiet)
    _note(*model.notices, *(unprot.notices if unprot else ()), *res.notes)
    print(res.table())
    print(res.summary())
    if args.masked and res.protected.points and res.protected.points[0]["zeros_before"] == 0:
        print("note: the model has no exactly-zero weights, so the masked attacker is the dense one")
    if res.cache:
        print(f"cache: {res.cache['hits']} of {res.cache['hits'] + res.cache['misses']} fine-tunes reused "
              f"({res.cache['dir']}); {res.wall_s:.1f} s")
    if args.json is not None:
        out = res.as_dict()
        out.update({"model": str(args.model), "unprotected_model": args.unprotected})
        atomic_write_json(args.json, out)
        print(f"wrote {args.json}")
    if args.plot is not None:
        plot_slc(res, args.plot, overwrite=args.overwrite)
        print(f"wrote {args.plot}")
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _add_attack_args(p: argparse.ArgumentParser, strategies: Sequence[str]) -> None:
    p.add_argument("--strategy", default="reinit-head+all", help="what the attacker trains: " +
                   ", ".join(strategies) + " (default reinit-head+all: a fresh head, then every layer)")
    p.add_argument("--masked", action="store_true", help="masked attacker: exactly-zero (pruned) weights are held "
                   "at zero (default: dense, every weight may change)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (sample draw, init, order; default 0)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default 0: torch's choice; on a "
                   "busy machine 1 can be many times faster for small models)")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
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
              "domainlock train --domain mnist --arch digitnet --out runs/src-mnist\n"
              "  domainlock train --recipe simclr --domain mnist --out runs/ssl-mnist\n"
              "  (self-supervised encoder + linear head; its flags: domainlock train --recipe simclr --help)",
              _cmd_train)
    p.add_argument("--domain", required=True, help="training domain, e.g. mnist")
    p.add_argument("--arch", default="digitnet", help="model architecture (default digitnet)")
    p.add_argument("--out", required=True, help="artifact directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--recipe", default="supervised", choices=RECIPES,
                   help="supervised (default): the labelled recipe; simclr: SimCLR pre-training of the encoder "
                        "without labels, then a linear head fitted on the labels with the encoder frozen")
    _add_common(p, device=True)
    if _option_from_argv(argv or [], "--recipe") == "simclr":
        from ..training.simclr import ProbeConfig, SimCLRConfig

        add_dataclass_args(p, SimCLRConfig, prefix="ssl_")
        add_dataclass_args(p, ProbeConfig)  # its fields are named probe_*
    else:
        add_dataclass_args(p, TrainConfig)

    p = _verb(sub, "eval", "evaluate an artifact on one or more domains",
              "domainlock eval --model runs/src-mnist --domains mnist,syn,mnistm,uci-digits", _cmd_eval)
    p.add_argument("--model", required=True, help="artifact directory")
    p.add_argument("--domains", required=True, help="comma-separated domains")
    p.add_argument("--split", default="test", help="train|val|test (default test)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_common(p, device=True)

    from ..methods import SETTINGS, method_names

    p = _verb(sub, "protect", "protect a source model against an unauthorized domain and write an artifact",
              "domainlock protect --method sa-map --model runs/src-mnist --source mnist --target syn "
              "--out runs/sa-map-mnist-syn\n  (method hyper-parameters: domainlock protect --method sa-map --help)",
              _cmd_protect)
    p.add_argument("--method", required=True, help="one of: " + ", ".join(method_names()))
    p.add_argument("--model", required=True, help="source model artifact directory")
    p.add_argument("--source", required=True, help="the authorized domain the model was trained on")
    p.add_argument("--target", default=None, help="the unauthorized domain (wm:<source> for ownership "
                   "verification); methods or variants that read no target (data-free, ntl --variant "
                   "source-only, cuti --variant target-free, magnitude) use it for evaluation only")
    p.add_argument("--setting", default=None, help="data setting: " + ", ".join(SETTINGS) +
                   " (default: the method's own)")
    p.add_argument("--eval-domains", default="", help="extra domains to report, comma-separated")
    p.add_argument("--out", default=None, help="protected artifact directory to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_common(p, device=True)
    method = _method_from_argv(argv or [])
    if method is not None:
        from ..methods import get_method_class, method_names

        if method in method_names():
            add_dataclass_args(p, get_method_class(method).Hparams, prefix="hp_", skip=("seed",))

    p = _verb(sub, "verify", "test whether a suspect model carries the owner's watermark protection",
              "domainlock verify --model suspect/ --owner-data mnist", _cmd_verify)
    p.add_argument("--model", required=True, help="suspect model artifact directory")
    p.add_argument("--owner-data", default="mnist", help="the owner's clean domain (default mnist)")
    p.add_argument("--watermark", default=None, help="watermark domain protected against (default wm:<owner-data>)")
    p.add_argument("--split", default="test")
    p.add_argument("--alpha", type=float, default=1e-3, help="significance level (default 1e-3)")
    p.add_argument("--min-gap", type=float, default=0.25, help="smallest accuracy gap that counts (default 0.25)")
    p.add_argument("--json", action="store_true")
    _add_common(p, device=True)

    p = _verb(sub, "synthesize", "synthesize a pseudo-source set from a model alone (model inversion)",
              "domainlock synthesize --model runs/src-mnist --n 5000 --out runs/pseudo-mnist", _cmd_synthesize)
    p.add_argument("--model", required=True, help="source model artifact directory")
    p.add_argument("--n", type=int, default=5000, help="number of images (default 5000)")
    p.add_argument("--out", required=True, help="output directory (images, labels, PNG grid, info)")
    p.add_argument("--fidelity-domain", default=None, help="real domain whose test split measures fidelity "
                   "(default: the model's source domain; 'none' to skip)")
    p.add_argument("--fidelity-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    _add_common(p, device=True)
    try:
        from ..synthesis.inversion import SynthesisConfig

        add_dataclass_args(p, SynthesisConfig, prefix="syn_", skip=("n", "seed"))
    except ImportError:  # pragma: no cover - during development only
        pass

    from ..attacks import STRATEGIES, AttackProtocol

    attack = sub.add_parser("attack", help="attack a (protected) model: fine-tuning with n target labels",
                            description="Attack a (protected) model.\n\nexample:\n  domainlock attack finetune "
                                        "--model runs/sa-map-mnist-syn --target syn --n 100",
                            formatter_class=_Formatter)
    asub = attack.add_subparsers(dest="attack_verb", metavar="ACTION")
    p = _verb(asub, "finetune", "fine-tune a model on n labelled target samples (per-class balanced, from the "
              "target train split) and report its target test accuracy",
              "domainlock attack finetune --model runs/sa-map-mnist-syn --target syn --n 100 "
              "--strategy reinit-head+all --scratch --unprotected runs/src-mnist", _cmd_attack_finetune)
    p.add_argument("--model", required=True, help="artifact directory of the model to attack")
    p.add_argument("--target", required=True, help="target domain (the attacker's samples: its train split; "
                   "accuracy: its test split)")
    p.add_argument("--n", type=int, required=True, help="labelled target samples, per-class balanced")
    _add_attack_args(p, STRATEGIES)
    p.add_argument("--scratch", action="store_true", help="also run the same protocol from random initialization")
    p.add_argument("--unprotected", default=None, help="also attack this (source) artifact with the same protocol")
    p.add_argument("--out", default=None, help="write the fine-tuned model as an artifact (one seed)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_common(p, device=True)
    add_dataclass_args(p, AttackProtocol, prefix="atk_")

    p = _verb(sub, "slc", "SLC-AUC: learning curves of the fine-tuning attack (protected, scratch, unprotected) "
              "and their area",
              "domainlock slc --model runs/sa-map-mnist-syn --target syn --shots 10,20,50,100,200,500,1000 "
              "--unprotected runs/src-mnist --json slc.json --plot slc.png", _cmd_slc)
    p.add_argument("--model", required=True, help="artifact directory of the protected model")
    p.add_argument("--target", required=True, help="target domain")
    p.add_argument("--shots", default="10,20,50,100,200,500,1000",
                   help="strictly increasing sample counts (default 10,20,50,100,200,500,1000)")
    _add_attack_args(p, STRATEGIES)
    p.add_argument("--unprotected", default=None, help="the unprotected source artifact: its curve and SLC-AUC too")
    p.add_argument("--json", default=None, help="write curves and scores to this JSON file")
    p.add_argument("--plot", default=None, help="write a PNG of the curves (needs matplotlib)")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json/--plot files")
    p.add_argument("--cache-dir", default=None, help="where fine-tune results are cached (default: "
                   "$DOMAINLOCK_CACHE/slc, else a user cache dir)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    _add_common(p, device=True)
    add_dataclass_args(p, AttackProtocol, prefix="atk_")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
    except DomainlockError as e:
        print(f"domainlock: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # `domainlock` or `domainlock data` alone: show what is possible
        parser.print_help() if args.verb is None else parser.parse_args([args.verb, "--help"])
        return 2
    try:
        if getattr(args, "device", None) is not None:   # a bad --device fails before any work
            from ..utils.runtime import resolve_device

            resolve_device(args.device)
        return handler(args)
    except DomainlockError as e:
        print(f"domainlock: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("domainlock: interrupted; no partial output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
