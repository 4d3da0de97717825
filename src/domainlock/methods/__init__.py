"""Protection methods behind one contract (see :mod:`domainlock.methods.base`)."""

from .base import (
    METHODS,
    SETTINGS,
    DataAccess,
    DataAccessError,
    Method,
    MethodResult,
    RunContext,
    get_method,
    method_names,
    register_method,
)
from .protect import Protected, protect, weight_sparsity

__all__ = ["METHODS", "SETTINGS", "DataAccess", "DataAccessError", "Method", "MethodResult", "Protected",
           "RunContext", "get_method", "method_names", "protect", "register_method", "weight_sparsity"]
