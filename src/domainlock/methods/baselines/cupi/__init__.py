"""CUPI-domain -- a compact un-transferable pyramid isolation domain (Wang et al., "Say No to Freeloader:
Protecting Intellectual Property of Your Deep Model", TPAMI 2024; METHODS.md §3), the successor of CUTI-domain.

Like CUTI (:mod:`domainlock.methods.baselines.cuti`), the whole source model is fine-tuned while a share of each
batch is re-styled after every encoder block; CUPI adds: a generator that fuses the content of an isolation
anchor (target image, or neighbourhood image in the target-free variant) with a style generated from an
authorized anchor (source image) at every level, so the fused rows form a labelled, style-rich *pyramid*
isolation domain; class-wise memory banks of the fused rows' features and of the source's per-level styles; a
discrimination loss (source features away from the isolation domain's class features, other features onto
them) and a style loss (the other rows' per-level channel mean/std away from the source's class-wise ones).

* :mod:`.pyramid`: statistics, generator, memory banks and the loss, with their equations.
* :mod:`.loop`: the batch layout and the training loop.  :mod:`.method`: hyper-parameters, the ``reference``
  preset (the authors' released code's values) and the registered :class:`CUPI` method.

Variants as in CUTI and NTL: ``target`` (labelled target images; reads target labels) and ``target-free``
(neighbourhood images made from the source, labelled with their source labels; never reads the target).

Reconstruction, where the paper's text was not available (the authors' released code was read for facts and is
named "the reference"; docs/design/cupi.md lists every departure): the generator is the reference's random,
untrained 1x1 convolution of the authorized anchor's statistics passed through a sigmoid; the banks are per-class
running means / EMAs instead of the reference's per-image slots averaged per class; the loss follows the
reference's signs and caps, with per-image cross-entropies instead of ``KLDivLoss`` means (as NTL here).
"""

from .method import CUPI, CUPI_VARIANTS, REFERENCE, CUPIConfig, validate_cupi

__all__ = ["CUPI", "CUPIConfig", "CUPI_VARIANTS", "REFERENCE", "validate_cupi"]
