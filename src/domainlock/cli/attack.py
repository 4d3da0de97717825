"""``domainlock attack finetune`` and ``domainlock slc`` (the fine-tuning attack with n labelled target samples:
one run, or the learning curves and their area), and ``domainlock attack <name>`` for every other registered
attack."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..errors import DomainlockError
from .common import Output, add_common, add_out, check_domain_names, group, parse_ints, verb

MASKED_IS_DENSE = "the model has no exactly-zero weights, so the masked attacker is the dense one"
SLC_JSON, SLC_PNG = "slc.json", "slc.png"


def attack_protocol(args: argparse.Namespace):
    import torch

    from ..attacks import STRATEGIES, AttackProtocol
    from ..errors import check_choice, check_range
    from ..utils.hparams import dataclass_from_args

    check_choice("strategy", args.strategy, STRATEGIES)
    if args.threads:
        check_range("threads", args.threads, 1, 4096)
        torch.set_num_threads(args.threads)
    return dataclass_from_args(AttackProtocol, args, prefix="atk_")


# ------------------------------------------------------------------------------------------- finetune
def cmd_finetune(args: argparse.Namespace) -> Output:
    from ..artifact import load_artifact, save_artifact
    from ..attacks import check_split, finetune_attack
    from ..data import load_domain
    from ..evaluation import align_classes
    from ..utils.io import check_output_path

    protocol = attack_protocol(args)
    seeds = parse_ints(args.seeds, "--seeds")
    if args.out is not None:
        if len(seeds) != 1:
            raise DomainlockError("--out saves one fine-tuned model: give a single --seeds value")
        check_output_path(args.out, args.overwrite)
    check_domain_names([args.target])
    art = load_artifact(args.model)
    check_split(art.model)
    starts = [("model", art.model, False)]
    if args.unprotected:
        starts.append(("unprotected", load_artifact(args.unprotected).model, False))
    if args.scratch:
        starts.append(("scratch", art.model, True))
    train, test = load_domain(args.target, "train", args.data_root), load_domain(args.target, "test", args.data_root)
    (train, note), (test, _) = (align_classes(d, art.classes, art.num_classes, every_class=True) for d in (train, test))
    rows, kept = [], None
    for label, model, scratch in starts:
        for seed in seeds:
            r = finetune_attack(model, train, args.n, "all" if scratch else args.strategy,
                                args.masked and label == "model", protocol, seed, target_test=test,
                                from_scratch=scratch, device=args.device, progress=not args.quiet)
            rows.append({"start": label, **r.as_dict()})
            if label == "model":
                kept = r
    doc = {"model": str(args.model), "target": args.target, "protocol": protocol.to_dict(), "results": rows}
    attacker = "masked" if args.masked else "dense"
    lines = [f"fine-tuning attack on {args.target}: n={args.n}, {args.strategy}, {attacker} attacker "
             f"({rows[0]['steps']} steps, select {rows[0]['select']})",
             f"{'start':<12} {'seed':>4} {'target test':>11} {'zeros before/after':>19} {'s':>6}"]
    for r in rows:
        lines.append(f"{r['start']:<12} {r['seed']:>4} {100 * r['accuracy']:>10.2f}% "
                     f"{r['zeros_before']:>9.3f}/{r['zeros_after']:<9.3f} {r['wall_s']:>6.1f}")
    notes = [*art.notices, *([note] if note else []),
             *([MASKED_IS_DENSE] if args.masked and rows[0]["zeros_before"] == 0 else [])]
    if args.out is not None and kept is not None:
        card = {"domain": art.card.get("domain"), "seed": kept.seed,
                "attack": {"kind": "finetune", "target": args.target, "source_model": str(args.model),
                           "source_sha256": art.card.get("sha256"), "protocol": protocol.to_dict(),
                           **kept.as_dict()},
                "metrics": {"accuracy": {f"{args.target}/test": kept.accuracy}}}
        if "protection" in art.card:   # a fine-tuned protected model is still that protection's descendant
            card["protection"] = art.card["protection"]
        doc["path"] = str(save_artifact(args.out, kept.model.cpu(), card, overwrite=args.overwrite))
        lines.append(f"wrote {doc['path']}")
    return Output(doc, "\n".join(lines), notes)


# ------------------------------------------------------------------------------------------------ slc
def slc_outputs(args: argparse.Namespace) -> list[Path]:
    """The files ``slc --out DIR`` writes (``DIR/slc.json``, and ``DIR/slc.png`` unless ``--no-plot``), checked
    before any fine-tuning: none may exist without ``--overwrite``, and a plot needs matplotlib."""
    from ..attacks.slc import require_matplotlib
    from ..utils.io import check_output_path

    if args.out is None:
        return []
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DomainlockError(f"--out {str(out)!r} is a file; slc --out names a directory (it writes "
                              f"{SLC_JSON} and {SLC_PNG} there)")
    files = [out / SLC_JSON] + ([] if args.no_plot else [out / SLC_PNG])
    for f in files:
        check_output_path(f, args.overwrite)
    if not args.no_plot:
        try:
            require_matplotlib()
        except DomainlockError as e:
            raise DomainlockError(f"{e}; or pass --no-plot to write {SLC_JSON} only") from None
    return files


def cmd_slc(args: argparse.Namespace) -> Output:
    from ..artifact import load_artifact
    from ..attacks.slc import PointCache, plot_slc, slc
    from ..metrics import check_shots
    from ..utils.io import atomic_write_json

    protocol = attack_protocol(args)
    shots = check_shots(parse_ints(args.shots, "--shots"))
    seeds = parse_ints(args.seeds, "--seeds")
    files = slc_outputs(args)
    check_domain_names([args.target])
    model = load_artifact(args.model)
    unprot = load_artifact(args.unprotected) if args.unprotected else None
    cache = False if args.no_cache else PointCache(args.cache_dir)
    res = slc(model, args.target, shots, strategy=args.strategy, masked=args.masked, protocol=protocol,
              seeds=seeds, unprotected=unprot, data_root=args.data_root, device=args.device, cache=cache,
              progress=not args.quiet)
    doc = {**res.as_dict(), "model": str(args.model), "unprotected_model": args.unprotected}
    lines = [res.table(), res.summary()]
    if res.cache:
        lines.append(f"cache: {res.cache['hits']} of {res.cache['hits'] + res.cache['misses']} fine-tunes reused "
                     f"({res.cache['dir']}); {res.wall_s:.1f} s")
    for f in files:
        if f.name == SLC_JSON:
            atomic_write_json(f, doc)
        else:
            plot_slc(res, f, overwrite=args.overwrite)
        lines.append(f"wrote {f}")
    notes = [*model.notices, *(unprot.notices if unprot else ()), *res.notes]
    if args.masked and res.protected.points and res.protected.points[0]["zeros_before"] == 0:
        notes.append(MASKED_IS_DENSE)
    return Output(doc, "\n".join(lines), notes)


# ------------------------------------------------------------------------------------ registered attacks
def cmd_registered(args: argparse.Namespace) -> Output:
    """Any registered attack other than ``finetune``: run it, score it, optionally save the attacked model."""
    from ..artifact import load_artifact, save_artifact
    from ..attacks import get_attack_class, run_attack
    from ..utils.hparams import dataclass_from_args
    from ..utils.io import check_output_path

    cls = get_attack_class(args.attack_name)
    params = dataclass_from_args(cls.Params, args, prefix="ap_")
    if args.out is not None:
        check_output_path(args.out, args.overwrite)
    check_domain_names([d for d in (args.target, args.source, args.other) if d])
    art = load_artifact(args.model)
    rep = run_attack(art, args.attack_name, target=args.target, source=args.source, other=args.other,
                     params=params, data_root=args.data_root, device=args.device, seed=args.seed,
                     progress=not args.quiet)
    doc = {"model": str(args.model), **rep.as_dict()}
    lines = [f"{rep.attack} on {rep.target}: the attacker holds {rep.threat}; read {', '.join(rep.reads) or 'nothing'}",
             f"target {rep.target} test accuracy after the attack: {100 * rep.target_acc:.2f}%"]
    if rep.source is not None:
        lines.append(f"source {rep.source} test accuracy after the attack: {100 * rep.source_acc:.2f}%")
    lines.append(f"{rep.wall_s:.1f} s")
    if args.out is not None:
        card = {"domain": art.card.get("domain"),
                "attack": {"kind": rep.attack, "source_model": str(args.model), "source_sha256": art.card.get("sha256"),
                           **{k: v for k, v in rep.as_dict().items() if k != "attack"}},
                "metrics": {"accuracy": {f"{rep.target}/test": rep.target_acc}}}
        if "protection" in art.card:
            card["protection"] = art.card["protection"]
        doc["path"] = str(save_artifact(args.out, rep.model.cpu(), card, overwrite=args.overwrite))
        lines.append(f"wrote {doc['path']}")
    return Output(doc, "\n".join(lines), list(art.notices))


def add_registered(asub) -> None:
    """``domainlock attack <name>`` for every registered attack but ``finetune`` (which has its own verb): flags
    from the attack's ``Params`` dataclass."""
    from ..attacks import attack_names, get_attack_class
    from ..utils.hparams import add_dataclass_args

    for name in attack_names():
        if name == "finetune":
            continue
        cls = get_attack_class(name)
        p = verb(asub, name, cls.summary or f"the {name} attack", cls.example or
                 f"domainlock attack {name} --model runs/sa-map --target syn", cmd_registered)
        p.set_defaults(attack_name=name)
        p.add_argument("--model", required=True, help="artifact directory of the model to attack")
        p.add_argument("--target", required=True, help="the attacked (unauthorized) domain: what the attacker "
                       "wants the model for; scored on its test split, which the attacker never reads")
        p.add_argument("--source", default=None, help="the authorized domain (needed by attackers holding source "
                       "data; its test accuracy is reported when given)")
        p.add_argument("--other", default=None, help="a domain of the attacker's choosing (unlabelled images)")
        p.add_argument("--seed", type=int, default=0, help="seed of the attacker's draws and training (default 0)")
        add_out(p, "write the attacked model as an artifact directory")
        add_common(p, device=True)
        add_dataclass_args(p, cls.Params, prefix="ap_")


# --------------------------------------------------------------------------------------------- parsers
def add_attack_args(p: argparse.ArgumentParser) -> None:
    from ..attacks import STRATEGIES

    p.add_argument("--strategy", default="reinit-head+all", help="what the attacker trains: " +
                   ", ".join(STRATEGIES) + " (default reinit-head+all: a fresh head, then every layer)")
    p.add_argument("--masked", action="store_true", help="masked attacker: exactly-zero (pruned) weights are held "
                   "at zero (default: dense, every weight may change)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (sample draw, init, order; default 0)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default 0: torch's choice; on a "
                   "busy machine 1 can be many times faster for small models)")


def add_parsers(sub, argv: Sequence[str]) -> None:
    from ..attacks import AttackProtocol
    from ..utils.hparams import add_dataclass_args

    asub = group(sub, "attack", "attack a (protected) model: fine-tuning with n target labels, and every registered "
                 "attack",
                 "domainlock attack finetune --model runs/sa-map-mnist-syn --target syn --n 100", "attack_verb")
    p = verb(asub, "finetune", "fine-tune a model on n labelled target samples (per-class balanced, from the "
             "target train split) and report its target test accuracy",
             "domainlock attack finetune --model runs/sa-map-mnist-syn --target syn --n 100 "
             "--strategy reinit-head+all --scratch --unprotected runs/src-mnist", cmd_finetune)
    p.add_argument("--model", required=True, help="artifact directory of the model to attack")
    p.add_argument("--target", required=True, help="target domain (the attacker's samples: its train split; "
                   "accuracy: its test split)")
    p.add_argument("--n", type=int, required=True, help="labelled target samples, per-class balanced")
    add_attack_args(p)
    p.add_argument("--scratch", action="store_true", help="also run the same protocol from random initialization")
    p.add_argument("--unprotected", default=None, help="also attack this (source) artifact with the same protocol")
    add_out(p, "write the fine-tuned model as an artifact directory (one seed)")
    add_common(p, device=True)
    add_dataclass_args(p, AttackProtocol, prefix="atk_")
    add_registered(asub)

    p = verb(sub, "slc", "SLC-AUC: learning curves of the fine-tuning attack (protected, scratch, unprotected) "
             "and their area",
             "domainlock slc --model runs/sa-map-mnist-syn --target syn --shots 10,20,50,100,200,500,1000 "
             "--unprotected runs/src-mnist --out runs/slc-sa-map-mnist-syn", cmd_slc)
    p.add_argument("--model", required=True, help="artifact directory of the protected model")
    p.add_argument("--target", required=True, help="target domain")
    p.add_argument("--shots", default="10,20,50,100,200,500,1000",
                   help="strictly increasing sample counts (default 10,20,50,100,200,500,1000)")
    add_attack_args(p)
    p.add_argument("--unprotected", default=None, help="the unprotected source artifact: its curve and SLC-AUC too")
    add_out(p, f"directory to write {SLC_JSON} (the --json document) and {SLC_PNG} (the curves; needs "
               "matplotlib, checked before any fine-tuning) into; created if missing")
    p.add_argument("--no-plot", action="store_true", help=f"with --out: write {SLC_JSON} only (no matplotlib)")
    p.add_argument("--cache-dir", default=None, help="where fine-tune results are cached (default: "
                   "$DOMAINLOCK_CACHE/slc, else a user cache dir)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    add_common(p, device=True)
    add_dataclass_args(p, AttackProtocol, prefix="atk_")
