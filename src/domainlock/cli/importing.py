"""``domainlock import``: the user's own network (a builder file + a state dict) as a standard artifact."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..errors import DomainlockError
from .common import Output, add_out, check_domain_names, verb

EXAMPLE = ("domainlock import --builder models/lenet.py:make_model --weights lenet.safetensors --encoder features "
           "--head classifier \\\n      --input-size 28 --grayscale --mean 0.1307 --std 0.3081 --out runs/lenet")


def parse_floats(values: Sequence[str] | None, flag: str) -> list[float] | None:
    """``["0.5,0.4", "0.3"]`` (commas and/or spaces) -> ``[0.5, 0.4, 0.3]``; a one-line error otherwise."""
    if values is None:
        return None
    parts = [t.strip() for v in values for t in str(v).split(",") if t.strip()]
    try:
        return [float(t) for t in parts]
    except ValueError:
        raise DomainlockError(f"{flag} must be numbers, one per channel (e.g. {flag} 0.485,0.456,0.406); got "
                              f"{' '.join(values)!r}") from None


def cmd_import(args: argparse.Namespace) -> Output:
    from ..importing import import_model

    if args.domain:
        check_domain_names([args.domain])
    art = import_model(args.builder, args.weights, encoder=args.encoder, head=args.head, input_size=args.input_size,
                       grayscale=args.grayscale, mean=parse_floats(args.mean, "--mean"),
                       std=parse_floats(args.std, "--std"), num_classes=args.num_classes,
                       flatten=not args.no_flatten, image_size=args.image_size, domain=args.domain,
                       out=args.out, overwrite=args.overwrite)
    imp = art.card["import"]
    lines = [f"imported {imp['builder']}:{imp['builder_callable']} (sha256 {imp['builder_sha256'][:16]}…) "
             f"with {args.weights}",
             f"encoder {imp['encoder']!r}, head {imp['head']!r}: {art.num_classes} classes, "
             f"{art.card['num_params']} parameters",
             f"input: {imp['input']}",
             f"wrote {art.path} (loading it runs the builder file after checking its sha256)"]
    return Output({"path": str(art.path), "card": art.card}, "\n".join(lines), list(art.notices))


def add_parsers(sub, argv: Sequence[str]) -> None:
    p = verb(sub, "import", "write a standard artifact from your own network: a builder file and its weights",
             EXAMPLE, cmd_import)
    p.add_argument("--builder", required=True, metavar="FILE.py:CALLABLE",
                   help="a Python file and the callable in it that returns your nn.Module (called with no "
                        "arguments, or num_classes=N when --num-classes is given and it takes it). The file IS "
                        "EXECUTED, now and whenever the artifact loads; the card records its sha256 and loading "
                        "refuses a changed file")
    p.add_argument("--weights", required=True, help="the network's state dict: .safetensors, or .pt/.pth read with "
                   "torch.load(weights_only=True) (never unpickled: a pickled whole model is refused)")
    p.add_argument("--encoder", required=True, metavar="ATTR",
                   help="attribute path of the feature extractor (dots allowed, e.g. backbone.body)")
    p.add_argument("--head", required=True, metavar="ATTR", help="attribute path of the classifier on the features; "
                   "the model's output is head(flatten(encoder(x)))")
    p.add_argument("--input-size", type=int, default=None, metavar="PX",
                   help="resize the project's images to PX x PX first (bilinear, antialiased; default: as they come)")
    p.add_argument("--grayscale", action="store_true", help="convert to one grey channel (ITU-R 601 luma)")
    p.add_argument("--mean", nargs="+", default=None, metavar="M",
                   help="per-channel mean your network was trained with (1 value with --grayscale, else 3; "
                        "commas or spaces); inputs are (x - mean) / std after resize and grey")
    p.add_argument("--std", nargs="+", default=None, metavar="S", help="per-channel std, as --mean")
    p.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="check that the head gives N outputs (default: read from the head)")
    p.add_argument("--image-size", type=int, default=32, metavar="PX",
                   help="the size of the project images the model will see, for the shape check and the card's "
                        "description (default 32, the digit domains')")
    p.add_argument("--no-flatten", action="store_true",
                   help="feed the encoder's output to the head as it is (default: flattened to [B, D])")
    p.add_argument("--domain", default=None, help="the domain the network was trained on (recorded in the card)")
    add_out(p, "artifact directory to create", required=True)
