"""SHOT (Liang et al., ICML 2020): source hypothesis transfer. The head — the source hypothesis — is frozen; the
encoder learns to produce target features the head classifies confidently and diversely, while self-supervised
pseudo-labels keep each sample with its feature-space cluster.

Loss per batch ``B`` with softmax predictions ``p_i`` (the head's, on the encoder's features):

    L = mean_i H(p_i) − H(p̄) + β · mean_i CE(p_i, ŷ_i)

(information maximization: confident per sample, diverse over the batch; entropies as in
:mod:`.common`). Pseudo-labels ``ŷ`` are recomputed before every epoch from the eval-mode features ``f_i``
(L2-normalized) and predictions of the whole set: prediction-weighted class centroids
``c_k = Σ_i p_ik f_i / Σ_i p_ik``, each sample labelled by its nearest centroid (cosine), then the centroids
recomputed from those hard labels and the labels assigned once more. As in the authors' code, only classes
the model predicts (arg max) for at least one image compete for pseudo-labels.

Defaults: ``beta`` 0.3 (the paper's weight on every benchmark); the head stays in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...errors import check_range
from ..base import Attack, AttackOutcome, ThreatModel
from ..registry import register_attack
from .common import Batch, SFDAParams, adapt, diversity, embed, entropy, split_for


@dataclass
class ShotParams(SFDAParams):
    beta: float = field(default=0.3, metadata={"help": "weight of the pseudo-label cross-entropy (0: IM only)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("beta", self.beta, 0, 100)


def centroid_labels(feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """SHOT's pseudo-labels for normalized ``feats`` [N, D] and predictions ``probs`` [N, C] (module docstring)."""
    present = torch.bincount(probs.argmax(1), minlength=probs.shape[1]) > 0
    weights = probs
    for _ in range(2):   # soft centroids, then once more from the hard labels they give
        cent = F.normalize(weights.T @ feats / (weights.sum(0)[:, None] + 1e-8), dim=1)
        sim = (feats @ cent.T).masked_fill(~present, -float("inf"))
        labels = sim.argmax(1)
        weights = F.one_hot(labels, probs.shape[1]).to(feats.dtype)
    return labels


@register_attack
class Shot(Attack):
    name = "shot"
    summary = "SHOT: freeze the head, adapt the encoder on unlabelled target images (IM + centroid pseudo-labels)"
    example = "domainlock attack shot --model runs/sa-map --target syn --fraction 0.1"
    Params = ShotParams

    def threat(self, params: ShotParams) -> ThreatModel:
        return ThreatModel(target_unlabelled=params.fraction)

    def run(self, model, access, params: ShotParams, ctx):
        x = access.target_unlabelled()
        encoder, head = split_for(model, self.name)
        state: dict[str, torch.Tensor] = {}
        agree: list[float] = []

        def on_epoch(epoch: int) -> None:
            feats, probs = embed(encoder, head, x)
            state["labels"] = centroid_labels(feats, probs)
            agree.append(round(float((state["labels"] == probs.argmax(1)).float().mean()), 4))

        def loss(b: Batch):
            im = entropy(b.probs).mean() - diversity(b.probs)
            ce = F.cross_entropy(b.logits, state["labels"][b.idx]) if params.beta else b.logits.new_zeros(())
            return im + params.beta * ce, {"im": float(im.detach()), "ce": float(ce.detach())}

        info = adapt(model, x, params, ctx, loss, attack=self.name, train_head=False, on_epoch=on_epoch)
        info["pseudo_label_agreement"] = agree   # per epoch: share of pseudo-labels equal to the model's arg max
        return AttackOutcome(model, info)
