"""Data a method or an attack makes instead of reading it.

- :mod:`~domainlock.synthesis.inversion`: a pseudo-source set inverted from a trained model alone
  (BatchNorm-statistics matching);
- :mod:`~domainlock.synthesis.source_style`: real (target) images moved into the source's style by the same
  inversion, their content kept;
- :mod:`~domainlock.synthesis.pseudo_source`: the pseudo-source, its fidelity measure and on-disk format;
- :mod:`~domainlock.synthesis.neighbours`: neighbour domains, families of image transformations around a
  set of images that stand in for unseen unauthorized domains.
"""

from .inversion import SynthesisConfig, synthesize_pseudo_source
from .neighbours import NeighbourConfig, make_neighbours, neighbour_families
from .pseudo_source import PseudoSource, fidelity, load_pseudo_source, save_pseudo_source
from .source_style import SourceStyleConfig, source_styled

__all__ = ["NeighbourConfig", "PseudoSource", "SourceStyleConfig", "SynthesisConfig", "fidelity",
           "load_pseudo_source", "make_neighbours", "neighbour_families", "save_pseudo_source", "source_styled",
           "synthesize_pseudo_source"]
