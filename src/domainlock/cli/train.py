"""``domainlock train``: a source (owner) model, supervised or SimCLR + linear probe."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .common import Output, add_common, add_out, option_from_argv, verb

RECIPES = ("supervised", "simclr")


def cmd_train(args: argparse.Namespace) -> Output:
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
    return Output({"path": str(art.path), "card": art.card},
                  f"wrote {art.path}  " + "  ".join(f"{k}={v:.4f}" for k, v in acc.items()))


def add_parsers(sub, argv: Sequence[str]) -> None:
    from ..utils.hparams import add_dataclass_args

    p = verb(sub, "train", "train a source (owner) model and write an artifact",
             "domainlock train --domain mnist --arch digitnet --out runs/src-mnist\n"
             "  domainlock train --recipe simclr --domain mnist --out runs/ssl-mnist\n"
             "  (self-supervised encoder + linear head; its flags: domainlock train --recipe simclr --help)",
             cmd_train)
    p.add_argument("--domain", required=True, help="training domain, e.g. mnist")
    p.add_argument("--arch", default="digitnet", help="model architecture (default digitnet)")
    add_out(p, "artifact directory to create", required=True)
    p.add_argument("--recipe", default="supervised", choices=RECIPES,
                   help="supervised (default): the labelled recipe; simclr: SimCLR pre-training of the encoder "
                        "without labels, then a linear head fitted on the labels with the encoder frozen")
    add_common(p, device=True)
    if option_from_argv(argv, "--recipe") == "simclr":
        from ..training.simclr import ProbeConfig, SimCLRConfig

        add_dataclass_args(p, SimCLRConfig, prefix="ssl_")
        add_dataclass_args(p, ProbeConfig)  # its fields are named probe_*
    else:
        from ..training import TrainConfig

        add_dataclass_args(p, TrainConfig)
