"""Dataclass hyper-parameters that become CLI flags (open_lth style): one source of truth for
defaults, help text, the JSON card and the hash that names output folders."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                       skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of dataclass ``cls``; help comes from ``field.metadata['help']``.

    ``prefix`` goes on the destination only (``args.<prefix><field>``), so a method's ``--lr`` cannot
    collide with another namespace; ``skip`` names fields the command sets through its own flags.
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} hyper-parameters")
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        helptext = (f.metadata.get("help", "") + f" (default: {default})").replace("%", "%%")   # argparse formats help
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "default": None, "help": helptext}
        if typ is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            base = typing.get_args(typ)[0] if typing.get_origin(typ) is typing.Union else typ
            kwargs["type"] = base
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
                kwargs["metavar"] = "{" + ",".join(map(str, f.metadata["choices"])) + "}"
        group.add_argument(flag, **kwargs)


def values_from_args(cls: type, args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The fields of dataclass ``cls`` that the user gave as flags (the others are absent)."""
    values = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, prefix + f.name, None)
        if v is not None:
            values[f.name] = v
    return values


def dataclass_from_args(cls: type[T], args: argparse.Namespace, prefix: str = "", **overrides: Any) -> T:
    """Build ``cls`` from parsed args: flags the user did not give keep the dataclass default."""
    return cls(**{**values_from_args(cls, args, prefix), **overrides})


def dataclass_from_dict(cls: type[T], values: Any, where: str = "") -> T:
    """Build ``cls`` from a mapping (a suite file's overrides): an unknown key or a value of the wrong type is a
    one-line :class:`~domainlock.errors.DomainlockError` naming ``where.key`` and the valid keys."""
    from ..errors import DomainlockError

    prefix = f"{where}." if where else ""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise DomainlockError(f"{where or cls.__name__}: expected a mapping of {cls.__name__} fields, "
                              f"got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise DomainlockError(f"{prefix}{key}: unknown key; valid keys: {', '.join(sorted(fields))}")
        typ = hints[key]
        base = typing.get_args(typ)[0] if typing.get_origin(typ) is typing.Union else typ
        ok = (isinstance(value, bool) if base is bool else
              isinstance(value, int | float) and not isinstance(value, bool) if base is float else
              isinstance(value, int) and not isinstance(value, bool) if base is int else
              isinstance(value, str) if base is str else True)
        if not ok:
            raise DomainlockError(f"{prefix}{key}={value!r}: expected {getattr(base, '__name__', base)}")
        out[key] = float(value) if base is float else value
    try:
        return cls(**out)
    except DomainlockError as e:
        raise DomainlockError(f"{where or cls.__name__}: {e}") from None
