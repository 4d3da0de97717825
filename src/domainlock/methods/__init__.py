"""Protection methods behind one contract (see :mod:`domainlock.methods.base`).

Families: :mod:`~domainlock.methods.map` (SA-/SF-/DF-MAP), :mod:`~domainlock.methods.ntp` (non-transferable
pruning) and :mod:`~domainlock.methods.baselines` (NTL, CUTI-domain, CUPI-domain, SOPHON, magnitude pruning). Each
family is imported when one of its methods is first asked for (:mod:`~domainlock.methods.registry`).
"""

from .base import SETTINGS, DataAccess, DataAccessError, Method, MethodResult, RunContext, Sampler
from .protect import Protected, protect, weight_sparsity
from .registry import get_method, get_method_class, method_names, register_method, unregister_method

__all__ = ["SETTINGS", "DataAccess", "DataAccessError", "Method", "MethodResult", "Protected", "RunContext",
           "Sampler", "get_method", "get_method_class", "method_names", "protect", "register_method",
           "unregister_method", "weight_sparsity"]
