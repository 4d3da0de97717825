"""AaD (Yang et al., NeurIPS 2022): attracting and dispersing. Predictions of feature-space neighbours are
attracted to each other; predictions of the other samples in the batch — most of them from other classes — are
dispersed, with a weight that fades over training.

A memory bank (:class:`~.common.MemoryBank`) holds the normalized feature and prediction ``s_j`` of every image,
initialized by one eval-mode pass and refreshed with each batch's outputs. For sample ``i`` of batch ``B`` with
prediction ``p_i`` and ``C_i`` its ``k`` nearest bank entries (cosine, itself excluded), the loss is

    L = − mean_i Σ_{j∈C_i} p_i·s_j  +  λ_t · mean_i Σ_{j∈B, j≠i} p_i·p_j,    λ_t = λ · (1 + 10·t/T)^(−decay)

(the bank terms ``s_j`` are constants; the batch terms ``p_j`` are not). The second term upper-bounds the
dispersion of all non-neighbours, which is why the batch stands in for them.

Defaults: ``k`` 5, ``lambda`` 1, ``decay`` 5 (the authors' VisDA setting, whose large target sets are closest to
a tenth of a digit train split); the head trains with the encoder, as in the authors' code (``train_head``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...errors import check_integer, check_range
from ..base import Attack, AttackOutcome, ThreatModel
from ..registry import register_attack
from .common import Batch, MemoryBank, SFDAParams, adapt, embed, split_for


@dataclass
class AadParams(SFDAParams):
    k: int = field(default=5, metadata={"help": "nearest neighbours attracted per sample"})
    lam: float = field(default=1.0, metadata={"help": "initial weight lambda of the dispersion term"})
    decay: float = field(default=5.0, metadata={
        "help": "exponent of lambda's decay, lambda_t = lambda (1 + 10 t/T)^-decay (0: constant)"})
    train_head: bool = field(default=True, metadata={"help": "train the head too (the authors' code does)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_integer("k", self.k, 1)
        check_range("lam", self.lam, 0, 100)
        check_range("decay", self.decay, 0, 100)

    def weight(self, progress: float) -> float:
        """``λ_t`` at ``progress = t / T``."""
        return self.lam * (1 + 10 * progress) ** -self.decay


def dispersion(p: torch.Tensor) -> torch.Tensor:
    """``mean_i Σ_{j≠i} p_i·p_j`` over a batch of predictions [B, C]."""
    gram = p @ p.T
    return (gram.sum(1) - gram.diagonal()).mean()


@register_attack
class Aad(Attack):
    name = "aad"
    summary = "AaD: attract predictions of feature neighbours, disperse the rest of the batch; unlabelled target"
    example = "domainlock attack aad --model runs/sa-map --target syn --fraction 0.1"
    Params = AadParams

    def threat(self, params: AadParams) -> ThreatModel:
        return ThreatModel(target_unlabelled=params.fraction)

    def run(self, model, access, params: AadParams, ctx):
        x = access.target_unlabelled()
        bank = MemoryBank(*embed(*split_for(model, self.name), x))

        def loss(b: Batch):
            f = F.normalize(b.feats.flatten(1), dim=1)
            with torch.no_grad():
                bank.update(b.idx, f, b.probs)
                near = bank.neighbours(f.detach(), params.k, b.idx)
            attract = -torch.einsum("bc,bjc->bj", b.probs, bank.probs[near]).sum(1).mean()
            disperse = dispersion(b.probs)
            return attract + params.weight(b.progress) * disperse, {
                "attract": float(attract.detach()), "disperse": float(disperse.detach())}

        info = adapt(model, x, params, ctx, loss, attack=self.name, train_head=params.train_head)
        return AttackOutcome(model, info)
