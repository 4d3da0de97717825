"""``domainlock verify``: does a suspect model carry the owner's watermark protection?"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .common import Output, add_common, verb


def cmd_verify(args: argparse.Namespace) -> Output:
    from ..artifact import load_artifact
    from ..ownership import verify

    art = load_artifact(args.model)
    r = verify(art.model, args.owner_data, watermark=args.watermark, split=args.split, data_root=args.data_root,
               device=args.device, alpha=args.alpha, min_gap=args.min_gap)
    text = (f"clean accuracy {r.clean_accuracy * 100:.2f}%  watermarked {r.watermarked_accuracy * 100:.2f}%  "
            f"gap {r.gap * 100:.2f} points  p = {r.p_value:.3g}{' (below float range)' if r.p_value == 0 else ''}  "
            f"(n = {r.n})\n{r.verdict}")
    return Output(r.as_dict(), text, list(art.notices))


def add_parsers(sub, argv: Sequence[str]) -> None:
    p = verb(sub, "verify", "test whether a suspect model carries the owner's watermark protection",
             "domainlock verify --model suspect/ --owner-data mnist", cmd_verify)
    p.add_argument("--model", required=True, help="suspect model artifact directory")
    p.add_argument("--owner-data", default="mnist", help="the owner's clean domain (default mnist)")
    p.add_argument("--watermark", default=None, help="watermark domain protected against (default wm:<owner-data>)")
    p.add_argument("--split", default="test")
    p.add_argument("--alpha", type=float, default=1e-3, help="significance level (default 1e-3)")
    p.add_argument("--min-gap", type=float, default=0.25, help="smallest accuracy gap that counts (default 0.25)")
    add_common(p, device=True)
