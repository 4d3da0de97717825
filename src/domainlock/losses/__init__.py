"""Training losses and regularizers shared by protection methods (each module's docstring carries the
equation it implements): the Fisher-space discriminative ratio (NTP), multi-kernel MMD (NTL, CUTI),
the suppression losses ICE and KLU (SOPHON)."""

from .fisher import FisherTerms, fisher_ratio, fisher_terms
from .mmd import MultiKernelMMD, mmd
from .suppression import SUPPRESSION_LOSSES, inverse_cross_entropy, kl_to_uniform, suppression_loss

__all__ = ["SUPPRESSION_LOSSES", "FisherTerms", "MultiKernelMMD", "fisher_ratio", "fisher_terms",
           "inverse_cross_entropy", "kl_to_uniform", "mmd", "suppression_loss"]
