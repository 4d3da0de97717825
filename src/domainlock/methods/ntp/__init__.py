"""NTP: non-transferable pruning of the encoder by ADMM, against the fine-tuning attacker (``ntp``).

- :mod:`~domainlock.methods.ntp.admm`: the objective and the ADMM loop (:func:`ntp_prune`);
- :mod:`~domainlock.methods.ntp.config`: :class:`NTPConfig` and why its defaults are what they are;
- :mod:`~domainlock.methods.ntp.simulated_attack`: the simulated fine-tuning attack term and the target head;
- :mod:`~domainlock.methods.ntp.rescale`: the optional exact rescale and its inverse;
- :mod:`~domainlock.methods.ntp.method`: the registered :class:`NTP` method.
"""

from .admm import ntp_prune, project_topk, quantile_threshold, scheduled_sparsity, soft_threshold
from .common import frozen_bn_stats, recalibrate_bn
from .config import NTPConfig, validate_config
from .method import NTP
from .rescale import ScalePlan, normalize_scales, reparameterize, rescale, scale_plan
from .simulated_attack import simulated_attack_grads, train_target_head

__all__ = ["NTP", "NTPConfig", "ScalePlan", "frozen_bn_stats", "normalize_scales", "ntp_prune", "project_topk",
           "quantile_threshold", "recalibrate_bn", "reparameterize", "rescale", "scale_plan", "scheduled_sparsity",
           "simulated_attack_grads", "soft_threshold", "train_target_head", "validate_config"]
