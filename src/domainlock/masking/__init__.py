"""Learnable binary weight masks over a frozen model (straight-through estimator), for MAP-style
mask pruning: :class:`MaskConfig`, :class:`MaskedModel` / :func:`apply_masks`, sparsity reports."""

from .config import INIT_MODES, LAYER_KINDS, SCOPES, MaskConfig
from .masked import LayerSparsity, MaskedModel, SparsityReport, apply_masks

__all__ = [
    "INIT_MODES",
    "LAYER_KINDS",
    "SCOPES",
    "LayerSparsity",
    "MaskConfig",
    "MaskedModel",
    "SparsityReport",
    "apply_masks",
]
