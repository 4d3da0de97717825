"""Evaluation metrics: ST-D (source/target degradation balance, reconstructed definition)."""

from .st_d import TRIVIAL_MARGIN, STDResult, mean_st_d, st_d

__all__ = ["TRIVIAL_MARGIN", "STDResult", "mean_st_d", "st_d"]
