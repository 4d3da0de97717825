"""Source-free domain adaptation attacks (METHODS.md §4.5): the attacker holds the weights and unlabelled target
images, and adapts the model to the target without labels — :mod:`.shot`, :mod:`.nrc`, :mod:`.aad`, sharing
the loop, features and memory banks of :mod:`.common`. Each registers itself on import."""

from .aad import Aad, AadParams
from .common import MemoryBank, SFDAParams, adapt, diversity, embed, entropy
from .nrc import Nrc, NrcParams, nrc_affinity
from .shot import Shot, ShotParams, centroid_labels

__all__ = ["Aad", "AadParams", "MemoryBank", "Nrc", "NrcParams", "SFDAParams", "Shot", "ShotParams", "adapt",
           "centroid_labels", "diversity", "embed", "entropy", "nrc_affinity"]
