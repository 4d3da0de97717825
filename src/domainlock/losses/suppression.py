"""SOPHON's suppression losses (METHODS.md §3): minimized on the target predictions of a model, they make the
model useless there. With logits ``z`` of one sample, label ``y``, ``C`` classes and ``p = softmax(z)``:

    ICE(z, y) = -log(1 - p_y)                          inverse cross-entropy: CE against "not the true class"
    KLU(z)    = KL(U || p) = -log C - (1/C) sum_c log p_c    KL divergence between the uniform distribution and p

Both are averaged over the batch. ICE is 0 when ``p_y = 0`` and grows without bound as ``p_y -> 1``; it uses the
labels. KLU is 0 exactly when ``p`` is uniform and needs no labels. KLU's direction, uniform first, is the one of
the public reference code (``kl_div(log p, uniform)``): it grows without bound as any ``p_c -> 0``, so it pulls
every class up, where ``KL(p || U) = log C - H(p)`` is bounded by ``log C``.

Numerics: ``log(1 - p_y) = logsumexp_{c != y} z_c - logsumexp_c z_c`` (no ``1 - p`` cancellation when
``p_y`` is close to 1), and ``log p`` comes from ``log_softmax``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import DomainlockError, UnknownChoiceError


def _check(logits: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise DomainlockError(f"suppression losses need [B, C] logits with C >= 2, got {tuple(logits.shape)}")


def inverse_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """ICE: ``-log(1 - p_y)`` per sample (``reduction``: ``mean``, ``sum`` or ``none``)."""
    _check(logits)
    true = F.one_hot(y.long(), logits.shape[1]).bool()
    others = torch.logsumexp(logits.masked_fill(true, float("-inf")), dim=1)
    per = torch.logsumexp(logits, dim=1) - others        # = -log(1 - p_y)
    return _reduce(per, reduction)


def kl_to_uniform(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KLU: ``KL(U || softmax(logits)) = -log C - mean_c log p_c`` per sample."""
    _check(logits)
    per = -F.log_softmax(logits, dim=1).mean(dim=1) - math.log(logits.shape[1])
    return _reduce(per, reduction)


def _reduce(per: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per.mean()
    if reduction == "sum":
        return per.sum()
    if reduction == "none":
        return per
    raise DomainlockError(f"unknown reduction {reduction!r}; valid choices: mean, none, sum")


SUPPRESSION_LOSSES = ("ice", "klu")


def suppression_loss(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch mean of suppression loss ``name`` (``ice`` or ``klu``; KLU ignores ``y``)."""
    if name == "ice":
        return inverse_cross_entropy(logits, y)
    if name == "klu":
        return kl_to_uniform(logits)
    raise UnknownChoiceError("suppression loss", name, SUPPRESSION_LOSSES)
