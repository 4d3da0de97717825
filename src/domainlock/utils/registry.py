"""A registry of named classes that does not import its entries: built-ins are listed by module path and
imported on first use, third-party ones come from an entry-point group (``name = "package.module:Class"``)
or register themselves on import. Entry modules can therefore import the contract they implement without an
import cycle. Methods and attacks each keep one (:mod:`domainlock.methods.registry`,
:mod:`domainlock.attacks.registry`)."""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Generic, TypeVar

from ..errors import DomainlockError, UnknownChoiceError

T = TypeVar("T", bound=type)


class LazyRegistry(Generic[T]):
    """``kind`` names what is registered (for errors); ``base`` is the class every entry must subclass."""

    def __init__(self, kind: str, base: type, builtins: dict[str, str], entry_point_group: str):
        self.kind, self.base, self.builtins, self.group = kind, base, builtins, entry_point_group
        self._registered: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator: make ``cls`` available under ``cls.name``."""
        self._registered[cls.name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Forget an entry registered at run time (built-ins come back on their next use)."""
        self._registered.pop(name, None)

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        return {ep.name: ep for ep in metadata.entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every name :meth:`get` accepts, sorted."""
        return sorted(set(self.builtins) | set(self._registered) | set(self._entry_points()))

    def get(self, name: str) -> T:
        """The class registered as ``name`` (its module imported on first use); unknown: a one-line error."""
        if name not in self._registered:
            if name in self.builtins:
                importlib.import_module(self.builtins[name])
            elif (ep := self._entry_points().get(name)) is not None:
                cls = ep.load()
                if not (isinstance(cls, type) and issubclass(cls, self.base)):
                    raise DomainlockError(f"entry point {ep.value!r} for {self.kind} {name!r} is not a "
                                          f"{self.base.__name__} subclass")
                self._registered.setdefault(name, cls)
        if name not in self._registered:
            raise UnknownChoiceError(self.kind, name, self.names())
        return self._registered[name]
