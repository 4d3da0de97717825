"""MAP: a learned binary mask over the source model's weights that keeps the authorized domain and breaks
the unauthorized one; ``sa-map`` (source available), ``sf-map`` (source-free: a pseudo-source inverted from
the model) and ``df-map`` (data-free: neighbour domains stand in for the target)."""

from .mask_learning import DFMAP, SAMAP, SFMAP, MAPConfig, PseudoSourceMAPConfig, learn_mask, map_loss

__all__ = ["DFMAP", "MAPConfig", "PseudoSourceMAPConfig", "SAMAP", "SFMAP", "learn_mask", "map_loss"]
