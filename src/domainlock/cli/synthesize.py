"""``domainlock synthesize``: a pseudo-source set inverted from a model alone, with its fidelity."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..errors import DomainlockError
from .common import Output, add_common, add_out, verb


def cmd_synthesize(args: argparse.Namespace) -> Output:
    from ..artifact import load_artifact
    from ..data import load_domain
    from ..synthesis import SynthesisConfig, fidelity, save_pseudo_source, synthesize_pseudo_source
    from ..utils.hparams import dataclass_from_args
    from ..utils.io import check_output_path
    from ..utils.runtime import resolve_device

    check_output_path(args.out, args.overwrite)
    art = load_artifact(args.model)
    cfg = dataclass_from_args(SynthesisConfig, args, prefix="syn_")
    if hasattr(cfg, "n"):
        cfg.n = args.n
    domain = None
    if args.fidelity_domain != "none":   # known before synthesis, not after
        domain = args.fidelity_domain or art.card.get("domain")
        if not domain:
            raise DomainlockError("the artifact card names no source domain; pass --fidelity-domain or 'none'")
    dev = resolve_device(args.device)
    # a model without BatchNorm is synthesized from image priors only: the library says so in a warning
    pseudo = synthesize_pseudo_source(art.model, args.n, device=dev, seed=args.seed, progress=not args.quiet,
                                      cfg=cfg)
    lines = []
    if domain is not None:
        fid = fidelity(art.model, pseudo, load_domain(domain, "test", args.data_root), device=dev, seed=args.seed,
                       epochs=args.fidelity_epochs)
        pseudo.info["fidelity"] = {"domain": domain, **fid}
        lines.append(f"fidelity on real {domain} test: teacher {fid['teacher_acc'] * 100:.2f}%, student "
                     f"distilled from {args.n} synthetic images only {fid['student_acc'] * 100:.2f}%")
    path = save_pseudo_source(pseudo, args.out, overwrite=args.overwrite)
    lines.append(f"wrote {path}")
    return Output({"path": str(path), "info": pseudo.info}, "\n".join(lines), list(art.notices))


def add_parsers(sub, argv: Sequence[str]) -> None:
    from ..synthesis import SynthesisConfig
    from ..utils.hparams import add_dataclass_args

    p = verb(sub, "synthesize", "synthesize a pseudo-source set from a model alone (model inversion)",
             "domainlock synthesize --model runs/src-mnist --n 5000 --out runs/pseudo-mnist", cmd_synthesize)
    p.add_argument("--model", required=True, help="source model artifact directory")
    p.add_argument("--n", type=int, default=5000, help="number of images (default 5000)")
    add_out(p, "output directory (images, labels, PNG grid, info)", required=True)
    p.add_argument("--fidelity-domain", default=None, help="real domain whose test split measures fidelity "
                   "(default: the model's source domain; 'none' to skip)")
    p.add_argument("--fidelity-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    add_common(p, device=True)
    add_dataclass_args(p, SynthesisConfig, prefix="syn_", skip=("n", "seed"))
