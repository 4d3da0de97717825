"""The field's baselines under the same contract: ``ntl`` (non-transferable learning), ``cuti``
(CUTI-domain), ``cupi`` (CUPI-domain), ``hntl`` (H-NTL), ``sophon`` (non-fine-tunable learning) and
``magnitude`` (magnitude pruning: what pruning alone does)."""

from .cupi import CUPI, CUPIConfig
from .cuti import CUTI, CUTIConfig
from .hntl import HNTL, HNTLConfig
from .magnitude import Magnitude, MagnitudeConfig
from .ntl import NTL, NTLConfig
from .sophon import Sophon, SophonConfig

__all__ = ["CUPI", "CUPIConfig", "CUTI", "CUTIConfig", "HNTL", "HNTLConfig", "NTL", "Magnitude", "MagnitudeConfig",
           "NTLConfig", "Sophon", "SophonConfig"]
