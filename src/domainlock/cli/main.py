"""Entry point of the ``domainlock`` command: assembles the verbs' sub-parsers (one module per verb group)
and runs one verb under the output, error and warning rules of :mod:`domainlock.cli`."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Sequence

from .._version import __version__
from ..errors import DomainlockError
from . import attack, bench, data, evaluate, importing, ownership, protect, synthesize, train
from .common import Formatter, Output, Parser

VERB_MODULES = (data, train, importing, evaluate, protect, ownership, synthesize, attack, bench)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser. ``argv`` decides the flags that depend on other flags (``protect --method NAME``
    adds that method's hyper-parameters, ``train --recipe simclr`` the SimCLR recipe's)."""
    parser = Parser(
        prog="domainlock", formatter_class=Formatter,
        description="Make a trained image classifier non-transferable: accurate on the owner's domain, "
                    "useless on unauthorized ones.\n\nexample:\n  domainlock train --domain mnist "
                    "--arch digitnet --out runs/src-mnist",
        epilog="Every verb prints a report on stdout, or with --json exactly one JSON document and nothing "
               "else;\nfiles are written only at --out, never over existing ones without --overwrite. "
               "Errors: one line\non stderr, exit code 2. Help and an example: domainlock VERB --help.")
    parser.add_argument("--version", action="version", version=f"domainlock {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in VERB_MODULES:
        module.add_parsers(sub, list(argv or []))
    return parser


def emit(out: Output, as_json: bool) -> None:
    from ..utils.io import dumps_json

    for note in out.notes:
        print(f"domainlock: note: {note}", file=sys.stderr)
    print(dumps_json(out.doc) if as_json else out.text, flush=True)


def _run(argv: list[str]) -> int:
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
        with contextlib.redirect_stdout(sys.stderr):   # whatever the library prints is progress, not the result
            out = handler(args)
    except DomainlockError as e:
        print(f"domainlock: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("domainlock: interrupted; no partial output was written", file=sys.stderr)
        return 130
    emit(out, args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Python warnings (torch's UserWarnings, ...) are held back: after a failure the user sees only the one-line
    # error; after a success each distinct one is printed once, as one line on stderr
    with warnings.catch_warnings(record=True) as caught:
        rc = _run(argv)
    if rc == 0:
        for msg in dict.fromkeys(" ".join(str(w.message).split()) for w in caught):
            print(f"domainlock: warning: {msg}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
