"""The field's baselines under the same contract: ``ntl`` (non-transferable learning), ``cuti``
(CUTI-domain), ``hntl`` (H-NTL) and ``magnitude`` (magnitude pruning: what pruning alone does)."""

from .cuti import CUTI, CUTIConfig
from .hntl import HNTL, HNTLConfig
from .magnitude import Magnitude, MagnitudeConfig
from .ntl import NTL, NTLConfig

__all__ = ["CUTI", "CUTIConfig", "HNTL", "HNTLConfig", "NTL", "Magnitude", "MagnitudeConfig", "NTLConfig"]
