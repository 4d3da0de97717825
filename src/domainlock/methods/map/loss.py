"""The MAP objective (METHODS.md section 1) and its target-damage terms.

With p_src the frozen source model and p_m the masked one:

    L = KL( p_src(x_s) || p_m(x_s) ) [+ source_ce * CE(argmax p_src(x_s), p_m(x_s))]
        - alpha * mean_i min( D_T(x_t,i), beta )  [+ mask L1 pull]

The source term keeps the authorized behaviour by distillation (no source labels needed). ``D_T`` is the
per-image *target damage* (``target_loss``; larger = more target information destroyed):

* ``garbage`` -- ``D_T = log C + log p_m(g | x_t)`` (= log C - CE(g, p_m)): every target prediction toward
  one fixed class ``g`` (``garbage_class``; -1 = the class the source model predicts least often on the
  target training images, chosen without labels). A constant predictor scores that class's share of the
  target, about chance, *whether or not the source model's guesses were right*.
* ``uniform`` -- ``D_T = log C - KL(u || p_m(x_t))``: every target prediction toward uniform (entropy
  maximization in its strongest form). Label-free, but near-uniform outputs keep an argmax correlated
  with the class.
* ``feature-collapse`` -- ``D_T = 1 - ||z_i - mean_j z_j||^2 / mean_k ||z_s,k - mean_j z_s,j||^2`` on
  encoder features z (target spread relative to the source batch's, so shrinking every feature does not
  pay): collapses target features onto their mean. Label-free.
* ``pseudo-kl`` -- the paper's ``D_T = KL(y_t || p_m(x_t))`` with ``y_t`` the source model's one-hot
  prediction (``soft_pseudo``: its soft prediction; ``use_target_labels``: the true labels). METHODS.md's
  pitfall: it can *raise* true target accuracy where the pseudo-labels are mostly wrong, because it only
  pushes the target away from the source model's guesses.

Reconstructed choices (the project's own, not the paper's): the cap ``beta`` applies per target image (it
stops pushing an image that is already destroyed; the garbage and uniform damages are at most log C, so it
binds for them only when ``beta < log C``); the extra hard-label cross-entropy ``source_ce`` on the source
(the KL has zero gradient at step 0, when the masked model still equals the source, so without it nothing
shields the weights the source needs until the source is already damaged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import DomainlockError, check_choice
from .config import TARGET_LOSSES


def max_damage(target_loss: str, beta: float, num_classes: int) -> float:
    """The largest value the capped per-image damage ``min(D_T, beta)`` can take (the early-stop scale):
    ``ln C`` for garbage (a certain prediction of the garbage class) and uniform (exactly uniform), 1 for
    feature-collapse (every target feature on the batch mean), unbounded for pseudo-kl, so ``beta``."""
    top = {"garbage": math.log(num_classes), "uniform": math.log(num_classes), "feature-collapse": 1.0}
    return min(top.get(target_loss, math.inf), beta)


@dataclass
class MAPLoss:
    """One evaluation of the MAP objective (all tensors are scalars)."""

    total: torch.Tensor
    source_kl: torch.Tensor
    damage: torch.Tensor          # mean D_T before the cap
    capped: torch.Tensor          # mean of min(D_T, beta)

    def floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "source_kl", "damage", "capped")}


def source_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0
              ) -> torch.Tensor:
    """``KL(p_src || p_m)`` averaged over the batch (softmax at ``temperature``)."""
    t = temperature
    log_p_src = F.log_softmax(teacher_logits.detach() / t, dim=1)
    log_p_m = F.log_softmax(student_logits / t, dim=1)
    return (log_p_src.exp() * (log_p_src - log_p_m)).sum(1).mean()


def target_damage(kind: str, logits_t: torch.Tensor, *, pseudo: torch.Tensor | None = None,
                  garbage_class: int = 0, feats_t: torch.Tensor | None = None,
                  feats_s: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image target damage ``D_T`` (``[B]``; larger = target information more destroyed).

    See the module docstring for the four kinds. ``pseudo``: ``[B]`` class indices or ``[B, C]``
    probabilities (``pseudo-kl``). ``feats_t``/``feats_s``: encoder features of the target/source batch
    (``feature-collapse``; ``feats_s`` only sets the scale).
    """
    check_choice("target_loss", kind, TARGET_LOSSES)
    logp = F.log_softmax(logits_t, dim=1)
    c = logits_t.shape[1]
    if kind == "pseudo-kl":
        if pseudo is None:
            raise DomainlockError("pseudo-kl needs pseudo-labels")
        q = F.one_hot(pseudo, c).to(logp.dtype) if pseudo.dim() == 1 else pseudo.to(logp.dtype)
        return (torch.xlogy(q, q) - q * logp).sum(1)                 # KL(q || p_m), 0 log 0 = 0
    if kind == "uniform":
        return math.log(c) - (-math.log(c) - logp.mean(1))          # log C - KL(u || p_m)
    if kind == "garbage":
        if not 0 <= garbage_class < c:
            raise DomainlockError(f"garbage_class={garbage_class} is out of range; valid: [0, {c - 1}]")
        return math.log(c) + logp[:, garbage_class]                  # log C - CE(g, p_m)
    # feature-collapse
    if feats_t is None:
        raise DomainlockError("feature-collapse needs target features")
    zt = feats_t.flatten(1)
    dist = (zt - zt.mean(0, keepdim=True)).pow(2).sum(1)
    ref = zt.detach() if feats_s is None else feats_s.flatten(1).detach()
    scale = (ref - ref.mean(0, keepdim=True)).pow(2).sum(1).mean().clamp_min(1e-8)
    return 1.0 - dist / scale                                        # 1 - spread relative to the source


def map_loss(teacher_logits_s: torch.Tensor, logits_s: torch.Tensor, logits_t: torch.Tensor, *,
             target_loss: str = "garbage", alpha: float = 1.0, beta: float = 2.0, temperature: float = 1.0,
             pseudo: torch.Tensor | None = None, garbage_class: int = 0, feats_t: torch.Tensor | None = None,
             feats_s: torch.Tensor | None = None, penalty: torch.Tensor | None = None,
             source_ce: float = 0.0) -> MAPLoss:
    """The MAP objective of the module docstring (``penalty``: the mask L1 pull, if any)."""
    ks = source_kl(teacher_logits_s, logits_s, temperature)
    if source_ce > 0:
        ks = ks + source_ce * F.cross_entropy(logits_s, teacher_logits_s.detach().argmax(1))
    dt = target_damage(target_loss, logits_t, pseudo=pseudo, garbage_class=garbage_class, feats_t=feats_t,
                       feats_s=feats_s)
    capped = torch.clamp(dt, max=beta).mean()
    total = ks - alpha * capped
    if penalty is not None:
        total = total + penalty
    return MAPLoss(total, ks, dt.mean(), capped)
