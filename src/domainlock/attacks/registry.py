"""Which attacks exist, without importing them: built-ins by module path (imported on first use), third-party
ones through the ``domainlock.attacks`` entry-point group or :func:`register_attack`."""

from __future__ import annotations

import importlib
from importlib import metadata

from ..errors import DomainlockError, UnknownChoiceError
from .base import Attack

ENTRY_POINT_GROUP = "domainlock.attacks"

#: built-in attack name -> module that defines and registers it
BUILTIN_ATTACKS: dict[str, str] = {
    "finetune": "domainlock.attacks.finetune",
    "finetune-search": "domainlock.attacks.finetune_search",
    "mask-reset": "domainlock.attacks.mask_reset",
    "source-ft": "domainlock.attacks.source_ft",
    "shot": "domainlock.attacks.sfda.shot",
    "nrc": "domainlock.attacks.sfda.nrc",
    "aad": "domainlock.attacks.sfda.aad",
    "disguise": "domainlock.attacks.disguise",
}

_REGISTERED: dict[str, type[Attack]] = {}


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _REGISTERED[cls.name] = cls
    return cls


def unregister_attack(name: str) -> None:
    """Forget an attack registered at run time (built-ins come back on their next use)."""
    _REGISTERED.pop(name, None)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def attack_names() -> list[str]:
    """Every attack :func:`get_attack` accepts, sorted."""
    return sorted(set(BUILTIN_ATTACKS) | set(_REGISTERED) | set(_entry_points()))


def get_attack_class(name: str) -> type[Attack]:
    if name not in _REGISTERED:
        if name in BUILTIN_ATTACKS:
            importlib.import_module(BUILTIN_ATTACKS[name])
        elif (ep := _entry_points().get(name)) is not None:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Attack)):
                raise DomainlockError(f"entry point {ep.value!r} for attack {name!r} is not an Attack subclass")
            _REGISTERED.setdefault(name, cls)
    if name not in _REGISTERED:
        raise UnknownChoiceError("attack", name, attack_names())
    return _REGISTERED[name]


def get_attack(name: str) -> Attack:
    """A fresh instance of the attack registered as ``name``; an unknown name is a one-line error."""
    return get_attack_class(name)()
