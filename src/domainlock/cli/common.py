"""What every verb module shares: the result a verb hands back (:class:`Output`), the common flags, the
``--json``/``--out``/``--overwrite`` flags with their help, and small argument parsers."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import DomainlockError


@dataclass
class Output:
    """What a verb produced: ``doc`` is printed as the one JSON document under ``--json``, ``text`` is the
    human-readable report otherwise; ``notes`` go to stderr either way (``domainlock: note: ...``)."""

    doc: Any
    text: str
    notes: list[str] = field(default_factory=list)


Handler = Callable[[argparse.Namespace], Output]

JSON_HELP = ("print exactly one JSON document to stdout and nothing else (notes, progress bars and warnings "
             "go to stderr)")
CONVENTION = ("output: a human-readable report on stdout; with --json exactly one JSON document instead and\n"
              "nothing else on stdout. Notes, progress and warnings go to stderr; an error is one line there\n"
              "(exit code 2).")
OUT_CONVENTION = ("files: written only at --out, atomically (nothing half-written after an error or Ctrl-C), and\n"
                  "never over existing ones without --overwrite (checked before any work).")


class Formatter(argparse.RawDescriptionHelpFormatter):
    pass


class Parser(argparse.ArgumentParser):
    """argparse with the project's error rule: a usage mistake is one line naming the bad value and where to
    look (``--help``), exit code 2, instead of the whole usage block."""

    def error(self, message: str):
        import sys

        where = self.prog.removeprefix("domainlock").strip()
        print(f"domainlock: error: {where + ': ' if where else ''}{message} (see {self.prog} --help)",
              file=sys.stderr)
        raise SystemExit(2)


def verb(sub, name: str, summary: str, example: str, handler: Handler, **kw) -> argparse.ArgumentParser:
    """A sub-command whose ``--help`` shows ``summary``, an example and the output convention."""
    p = sub.add_parser(name, help=summary, description=f"{summary}\n\nexample:\n  {example}",
                       formatter_class=Formatter, epilog=CONVENTION, **kw)
    p.set_defaults(handler=handler)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    return p


def group(sub, name: str, summary: str, example: str, dest: str) -> argparse._SubParsersAction:
    """A verb with actions (``domainlock data list``): its parser and the sub-parsers of its actions."""
    p = sub.add_parser(name, help=summary, description=f"{summary}\n\nexample:\n  {example}",
                       formatter_class=Formatter)
    return p.add_subparsers(dest=dest, metavar="ACTION")


def add_out(p: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    """``--out`` (the one way a verb writes files) and ``--overwrite``; adds the file rule to the help."""
    p.add_argument("--out", required=required, default=None, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace what already exists at --out")
    p.epilog = f"{p.epilog}\n{OUT_CONVENTION}" if p.epilog else OUT_CONVENTION


def add_common(p: argparse.ArgumentParser, device: bool = False) -> None:
    p.add_argument("--data-root", default=None,
                   help="where built domains live (default: $DOMAINLOCK_DATA, else a user cache dir)")
    if device:
        p.add_argument("--device", default="auto", help="auto|cpu|cuda|mps (default: auto)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def parse_ints(text: str, what: str) -> list[int]:
    """``"10,20,50"`` -> ``[10, 20, 50]``; a one-line error naming the flag otherwise."""
    try:
        return [int(t.strip()) for t in str(text).split(",")]
    except ValueError:
        raise DomainlockError(f"{what} must be comma-separated integers, e.g. 10,20,50; got {text!r}") from None


def split_names(text: str | None) -> list[str]:
    """``"mnist, syn,"`` -> ``["mnist", "syn"]``."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def check_domain_names(names: Sequence[str]) -> None:
    """Fail on an unknown domain name before loading (or building) anything; ``folder:`` paths pass."""
    from ..data import parse_domain

    for name in names:
        if not name.startswith("folder:"):
            parse_domain(name)


def option_from_argv(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``flag VALUE`` or ``flag=VALUE``), for flags that decide which other
    flags exist (``protect --method``, ``train --recipe``)."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None

