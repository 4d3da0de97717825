"""Which protection methods exist, without importing them.

Built-in methods are listed by module path and imported on first use; third-party packages add methods
through the ``domainlock.methods`` entry-point group (``name = "package.module:Class"``) or by calling
:func:`register_method` on import. This module imports none of its entries, so the method modules can import
the contract (:mod:`domainlock.methods.base`) without an import cycle.
"""

from __future__ import annotations

import importlib
from importlib import metadata

from ..errors import DomainlockError, UnknownChoiceError
from .base import Method

ENTRY_POINT_GROUP = "domainlock.methods"

#: built-in method name -> module that defines and registers it
BUILTIN_METHODS: dict[str, str] = {
    "sa-map": "domainlock.methods.map",
    "sf-map": "domainlock.methods.map",
    "df-map": "domainlock.methods.map",
    "ntp": "domainlock.methods.ntp",
    "ntl": "domainlock.methods.baselines.ntl",
    "cuti": "domainlock.methods.baselines.cuti",
    "magnitude": "domainlock.methods.baselines.magnitude",
}

_REGISTERED: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _REGISTERED[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Forget a method registered at run time (built-ins come back on their next use)."""
    _REGISTERED.pop(name, None)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def method_names() -> list[str]:
    """Every method that :func:`get_method` accepts, sorted."""
    return sorted(set(BUILTIN_METHODS) | set(_REGISTERED) | set(_entry_points()))


def get_method_class(name: str) -> type[Method]:
    """The :class:`Method` subclass registered as ``name`` (its module is imported on first use)."""
    if name not in _REGISTERED:
        if name in BUILTIN_METHODS:
            importlib.import_module(BUILTIN_METHODS[name])
        elif (ep := _entry_points().get(name)) is not None:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Method)):
                raise DomainlockError(f"entry point {ep.value!r} for method {name!r} is not a Method subclass")
            _REGISTERED.setdefault(name, cls)
    if name not in _REGISTERED:
        raise UnknownChoiceError("method", name, method_names())
    return _REGISTERED[name]


def get_method(name: str) -> Method:
    """A fresh instance of the method registered as ``name``; an unknown name is a one-line error."""
    return get_method_class(name)()
