"""Which protection methods exist, without importing them (:class:`~domainlock.utils.registry.LazyRegistry`):
built-ins by module path, third-party methods through the ``domainlock.methods`` entry-point group or
:func:`register_method`. The method modules import the contract (:mod:`domainlock.methods.base`), never this
registry's entries, so there is no import cycle."""

from __future__ import annotations

from ..utils.registry import LazyRegistry
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
    "cupi": "domainlock.methods.baselines.cupi",
    "sophon": "domainlock.methods.baselines.sophon",
    "hntl": "domainlock.methods.baselines.hntl",
    "magnitude": "domainlock.methods.baselines.magnitude",
}

REGISTRY: LazyRegistry[type[Method]] = LazyRegistry("method", Method, BUILTIN_METHODS, ENTRY_POINT_GROUP)
register_method = REGISTRY.register
unregister_method = REGISTRY.unregister
method_names = REGISTRY.names
get_method_class = REGISTRY.get


def get_method(name: str) -> Method:
    """A fresh instance of the method registered as ``name``; an unknown name is a one-line error."""
    return get_method_class(name)()
