"""NTP: non-transferable pruning of the encoder by ADMM, against the fine-tuning attacker (``ntp``)."""

from .pruning import NTP, NTPConfig, normalize_scales, ntp_prune

__all__ = ["NTP", "NTPConfig", "normalize_scales", "ntp_prune"]
