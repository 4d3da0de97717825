"""Data a method or an attack makes instead of reading it.

- :mod:`~domainlock.synthesis.inversion`: a pseudo-source set inverted from a trained model alone
  (BatchNorm-statistics matching);
- :mod:`~domainlock.synthesis.pseudo_source`: the pseudo-source, its fidelity measure and on-disk format;
- :mod:`~domainlock.synthesis.neighbours`: neighbour domains, families of image transformations around a
  set of images that stand in for unseen unauthorized domains.
"""

from .inversion import SynthesisConfig, synthesize_pseudo_source
from .neighbours import NeighbourConfig, make_neighbours, neighbour_families
from .pseudo_source import PseudoSource, fidelity, load_pseudo_source, save_pseudo_source

__all__ = ["NeighbourConfig", "PseudoSource", "SynthesisConfig", "fidelity", "load_pseudo_source",
           "make_neighbours", "neighbour_families", "save_pseudo_source", "synthesize_pseudo_source"]
