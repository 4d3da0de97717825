"""NRC (Yang et al., NeurIPS 2021): neighbourhood reciprocity clustering. Each target sample's prediction is
pulled towards those of its feature-space neighbours, trusting neighbours that have it as a neighbour too.

A memory bank (:class:`~.common.MemoryBank`) holds the normalized feature ``f_j`` and prediction ``s_j`` of
every image, initialized by one eval-mode pass and refreshed with each batch's outputs. For sample ``i`` with
prediction ``p_i``: ``N_k(i)`` are its ``k`` nearest bank entries (cosine, itself excluded); ``E_m(i)`` the ``m``
nearest of each of those (itself excluded), its expanded neighbourhood. Loss per batch:

    L = − mean_i [ Σ_{j∈N_k(i)} w_ij p_i·s_j + r_e Σ_{j∈E_m(i)} p_i·s_j ] − H(p̄)

with ``w_ij = 1`` when ``i ∈ N_k(j)`` (reciprocal neighbours) and ``r`` otherwise; ``H(p̄)`` is the diversity of
:mod:`.common` (without it every sample could agree on one class). The bank terms ``s_j`` are constants.

Defaults: ``k`` = ``m`` = 5 (the authors' VisDA setting, whose large target sets are closest to a tenth of a
digit train split); ``r`` = ``r_e`` = 0.1 (the paper's); the head trains with the encoder, as in the authors'
code (``train_head``; set False for SHOT's frozen hypothesis).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...errors import check_integer, check_range
from ..base import Attack, AttackOutcome, ThreatModel
from ..registry import register_attack
from .common import Batch, MemoryBank, SFDAParams, adapt, diversity, embed, split_for


@dataclass
class NrcParams(SFDAParams):
    k: int = field(default=5, metadata={"help": "nearest neighbours per sample"})
    m: int = field(default=5, metadata={"help": "neighbours of each neighbour (the expanded neighbourhood)"})
    r: float = field(default=0.1, metadata={"help": "weight of a neighbour that is not reciprocal (reciprocal: 1)"})
    r_expanded: float = field(default=0.1, metadata={"help": "weight of an expanded neighbour"})
    train_head: bool = field(default=True, metadata={"help": "train the head too (the authors' code does)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_integer("k", self.k, 1)
        check_integer("m", self.m, 0)
        check_range("r", self.r, 0, 1)
        check_range("r_expanded", self.r_expanded, 0, 1)


def nrc_affinity(bank: MemoryBank, feats: torch.Tensor, idx: torch.Tensor, k: int, m: int, r: float,
                 r_expanded: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(neighbours, weights)`` of a batch: bank indices [B, J] of the ``k`` neighbours followed by the ``k·m``
    expanded ones, and their weights [B, J] (``1``/``r``, then ``r_expanded``; ``0`` where an expanded
    neighbour is the sample itself)."""
    near = bank.neighbours(feats, k, idx)                                 # [B, k]
    k = near.shape[1]
    flat = near.reshape(-1)
    nn_of_near = bank.neighbours(bank.feats[flat], max(k, m), flat)     # [B*k, max(k, m)]
    nn_of_near = nn_of_near.view(len(idx), k, -1)
    reciprocal = (nn_of_near[:, :, :k] == idx[:, None, None]).any(-1)
    w_near = torch.where(reciprocal, torch.ones_like(near, dtype=feats.dtype), torch.full_like(
        near, r, dtype=feats.dtype))
    expanded = nn_of_near[:, :, :m].reshape(len(idx), -1)                # [B, k*m]
    w_exp = torch.full_like(expanded, r_expanded, dtype=feats.dtype).masked_fill(expanded == idx[:, None], 0.0)
    return torch.cat([near, expanded], 1), torch.cat([w_near, w_exp], 1)


@register_attack
class Nrc(Attack):
    name = "nrc"
    summary = "NRC: pull predictions towards those of (reciprocal, expanded) feature neighbours; unlabelled target"
    example = "domainlock attack nrc --model runs/sa-map --target syn --fraction 0.1"
    Params = NrcParams

    def threat(self, params: NrcParams) -> ThreatModel:
        return ThreatModel(target_unlabelled=params.fraction)

    def run(self, model, access, params: NrcParams, ctx):
        x = access.target_unlabelled()
        bank = MemoryBank(*embed(*split_for(model, self.name), x))
        reciprocal: list[float] = []

        def loss(b: Batch):
            f = F.normalize(b.feats.flatten(1), dim=1)
            with torch.no_grad():
                bank.update(b.idx, f, b.probs)
                near, w = nrc_affinity(bank, f.detach(), b.idx, params.k, params.m, params.r, params.r_expanded)
                reciprocal.append(float((w[:, :min(params.k, near.shape[1])] == 1).float().mean()))
            consistency = -(torch.einsum("bc,bjc->bj", b.probs, bank.probs[near]) * w).sum(1).mean()
            div = diversity(b.probs)
            return consistency - div, {"consistency": float(consistency.detach()), "diversity": float(div.detach())}

        info = adapt(model, x, params, ctx, loss, attack=self.name, train_head=params.train_head)
        info["reciprocal_share"] = round(sum(reciprocal) / max(1, len(reciprocal)), 4)
        return AttackOutcome(model, info)
