"""MAP: a learned binary mask over the source model's weights that keeps the authorized domain and breaks
the unauthorized one; ``sa-map`` (source available), ``sf-map`` (source-free: a pseudo-source inverted from
the model) and ``df-map`` (data-free: neighbour domains stand in for the target).

- :mod:`~domainlock.methods.map.loss`: the objective and its target-damage terms;
- :mod:`~domainlock.methods.map.mask_learning`: the mask-learning loop, its optimizer and mask selection;
- :mod:`~domainlock.methods.map.config`: :class:`MAPConfig` and why its defaults are what they are;
- :mod:`~domainlock.methods.map.method`: the registered methods and what each setting reads.
"""

from .config import TARGET_LOSSES, MAPConfig, PseudoSourceMAPConfig, validate_config
from .loss import MAPLoss, map_loss, max_damage, source_kl, target_damage
from .mask_learning import LayerAdam, learn_mask
from .method import DFMAP, SAMAP, SFMAP

__all__ = ["DFMAP", "MAPConfig", "MAPLoss", "LayerAdam", "PseudoSourceMAPConfig", "SAMAP", "SFMAP", "TARGET_LOSSES",
           "learn_mask", "map_loss", "max_damage", "source_kl", "target_damage", "validate_config"]
