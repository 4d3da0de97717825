"""The field's baselines under the same contract: ``ntl`` (non-transferable learning), ``cuti``
(CUTI-domain) and ``magnitude`` (magnitude pruning: what pruning alone does)."""

from .cuti import CUTI, CUTIConfig
from .magnitude import Magnitude, MagnitudeConfig
from .ntl import NTL, NTLConfig

__all__ = ["CUTI", "CUTIConfig", "NTL", "Magnitude", "MagnitudeConfig", "NTLConfig"]
