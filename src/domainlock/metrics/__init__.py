"""Evaluation metrics: ST-D (source/target degradation balance, reconstructed definition), SLC-AUC (the
fine-tuning head start over training from scratch, on a log-spaced grid of target sample counts) and recovery
(the share of a protection an attack undid)."""

from .recovery import recovery
from .slc_auc import SLCAUC, check_shots, slc_auc, slc_auc_from_diff
from .st_d import TRIVIAL_MARGIN, STDResult, mean_st_d, st_d

__all__ = ["SLCAUC", "TRIVIAL_MARGIN", "STDResult", "check_shots", "mean_st_d", "recovery", "slc_auc",
           "slc_auc_from_diff", "st_d"]
