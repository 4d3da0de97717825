"""Which attacks exist, without importing them (:class:`~domainlock.utils.registry.LazyRegistry`): built-ins by
module path, third-party attacks through the ``domainlock.attacks`` entry-point group or :func:`register_attack`."""

from __future__ import annotations

from ..utils.registry import LazyRegistry
from .base import Attack

ENTRY_POINT_GROUP = "domainlock.attacks"

#: built-in attack name -> module that defines and registers it
BUILTIN_ATTACKS: dict[str, str] = {
    "finetune": "domainlock.attacks.finetune",
    "finetune-search": "domainlock.attacks.finetune_search",
    "mask-reset": "domainlock.attacks.mask_reset",
    "source-ft": "domainlock.attacks.source_ft",
    "transntl": "domainlock.attacks.transntl",
    "shot": "domainlock.attacks.sfda.shot",
    "nrc": "domainlock.attacks.sfda.nrc",
    "aad": "domainlock.attacks.sfda.aad",
    "distill": "domainlock.attacks.distill",
    "disguise": "domainlock.attacks.disguise",
}

REGISTRY: LazyRegistry[type[Attack]] = LazyRegistry("attack", Attack, BUILTIN_ATTACKS, ENTRY_POINT_GROUP)
register_attack = REGISTRY.register
unregister_attack = REGISTRY.unregister
attack_names = REGISTRY.names
get_attack_class = REGISTRY.get


def get_attack(name: str) -> Attack:
    """A fresh instance of the attack registered as ``name``; an unknown name is a one-line error."""
    return get_attack_class(name)()
