"""What the source-free adaptation attacks share: their parameters, feature extraction, memory banks, and the
adaptation loop (METHODS.md §4.5).

The attacker holds the model's weights and a fraction of the target train split *without labels*. Each attack
adapts a copy of the model by minimizing its own unsupervised loss over that set; the loop is the same for all:

* **Optimizer.** SGD (Nesterov, momentum 0.9, weight decay 1e-3) with the schedule the three papers' code
  shares, ``lr_t = lr · (1 + 10·t/T)^(-0.75)`` for step ``t`` of ``T``.
* **Length.** ``max(epochs, ceil(steps / steps_per_epoch))`` epochs of batches of ``min(batch_size, n)``.
* **Modes.** The encoder trains in train mode (its BatchNorm statistics follow the target, as in the papers'
  code); a frozen head stays in eval mode and keeps its weights.
* **Selection.** The last step: the attacker has no labels to select a checkpoint with.

Features are the encoder output, L2-normalized wherever a distance or a centroid is taken (cosine geometry).
The entropy of a prediction is ``H(p) = -Σ_c p_c log p_c``; the *diversity* of a batch is ``H(p̄)`` with
``p̄`` the batch-mean prediction (high when the batch spreads over the classes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DomainlockError, check_integer, check_range
from ...models.base import split_model
from ..base import AttackContext

EPS = 1e-5          #: inside the logarithms of the entropies (the papers' value)
SCHEDULE_GAMMA, SCHEDULE_POWER = 10.0, 0.75


@dataclass
class SFDAParams:
    """The attacker's holdings and the adaptation loop shared by every source-free attack."""

    fraction: float = field(default=0.1, metadata={
        "help": "fraction of the target train split the attacker holds, without labels (NTLBench: 10%)"})
    epochs: int = field(default=5, metadata={"help": "minimum passes over the attacker's images (NTLBench: 5)"})
    steps: int = field(default=200, metadata={
        "help": "minimum optimizer steps (10% of a 7,000-image digit split is 11 batches an epoch)"})
    batch_size: int = field(default=64, metadata={"help": "mini-batch size (min(batch_size, n) at small n)"})
    lr: float = field(default=0.01, metadata={
        "help": "peak learning rate (SHOT's digit setting; NTLBench's 1e-3 is for ImageNet-pretrained backbones)"})
    weight_decay: float = field(default=1e-3, metadata={"help": "weight decay (the papers' value)"})

    def __post_init__(self) -> None:
        check_range("fraction", self.fraction, 0.0, 1.0, low_open=True)
        check_integer("epochs", self.epochs, 1)
        check_integer("steps", self.steps, 0)
        check_integer("batch_size", self.batch_size, 2)
        check_range("lr", self.lr, 0, math.inf, low_open=True)
        check_range("weight_decay", self.weight_decay, 0, math.inf)

    def length(self, n: int) -> tuple[int, int, int]:
        """``(batch, steps_per_epoch, epochs)`` for ``n`` images."""
        bs = min(self.batch_size, n)
        spe = max(1, n // bs)
        return bs, spe, max(self.epochs, math.ceil(self.steps / spe))


# ------------------------------------------------------------------------------------------------ pieces
def entropy(p: torch.Tensor) -> torch.Tensor:
    """``H(p)`` along the last dimension."""
    return -(p * torch.log(p + EPS)).sum(-1)


def diversity(p: torch.Tensor) -> torch.Tensor:
    """``H(p̄)``: the entropy of the batch-mean prediction of ``p`` ([B, C])."""
    return entropy(p.mean(0))


def split_for(model: nn.Module, attack: str) -> tuple[nn.Module, nn.Module]:
    """``(encoder, head)``; a model without a named split is a one-line error saying how to name one."""
    try:
        return split_model(model)
    except DomainlockError as e:
        raise DomainlockError(f"the {attack} attack needs an encoder/head split: {e}") from None


def _device(module: nn.Module) -> torch.device:
    return next(iter(module.parameters())).device


@torch.no_grad()
def embed(encoder: nn.Module, head: nn.Module, x: torch.Tensor, batch_size: int = 256
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, probabilities)`` of the images ``x`` in eval mode: L2-normalized encoder outputs [N, D]
    and softmax predictions [N, C]. The modules' train/eval modes are restored."""
    modes = [m.training for m in (encoder, head)]
    encoder.eval()
    head.eval()
    dev = _device(encoder)
    feats, probs = [], []
    try:
        for i in range(0, len(x), batch_size):
            f = encoder(x[i:i + batch_size].to(dev))
            probs.append(torch.softmax(head(f), dim=1))
            feats.append(F.normalize(f.flatten(1), dim=1))
    finally:
        encoder.train(modes[0])
        head.train(modes[1])
    return torch.cat(feats), torch.cat(probs)


class MemoryBank:
    """Normalized features [N, D] and predictions [N, C] of every image the attacker holds, refreshed with
    each batch's (detached) outputs; neighbours are by cosine similarity."""

    def __init__(self, feats: torch.Tensor, probs: torch.Tensor):
        self.feats, self.probs = feats.clone(), probs.clone()

    def update(self, idx: torch.Tensor, feats: torch.Tensor, probs: torch.Tensor) -> None:
        self.feats[idx] = feats.detach()
        self.probs[idx] = probs.detach()

    def neighbours(self, feats: torch.Tensor, k: int, exclude: torch.Tensor) -> torch.Tensor:
        """Indices [B, k] of the ``k`` bank entries most similar to ``feats`` [B, D] (row ``b`` never returns
        ``exclude[b]``, the sample itself)."""
        sim = feats @ self.feats.T
        sim[torch.arange(len(feats), device=sim.device), exclude] = -math.inf
        return sim.topk(min(k, len(self.feats) - 1), dim=1).indices


@dataclass
class Batch:
    """One step of the adaptation loop, handed to the attack's loss."""

    idx: torch.Tensor       #: positions of the batch's images in the attacker's set
    feats: torch.Tensor     #: encoder outputs (with gradient)
    logits: torch.Tensor
    probs: torch.Tensor
    progress: float         #: t / T, the share of the training done before this step


LossFn = Callable[[Batch], tuple[torch.Tensor, dict[str, float]]]


# ------------------------------------------------------------------------------------------------ the loop
def adapt(model: nn.Module, x: torch.Tensor, params: SFDAParams, ctx: AttackContext, loss_fn: LossFn, *,
          attack: str, train_head: bool, on_epoch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Adapt ``model`` in place on the unlabelled images ``x`` by minimizing ``loss_fn`` (see the module
    docstring); ``on_epoch(epoch)`` runs before each epoch (e.g. to recompute pseudo-labels). Returns the
    diagnostics: images, epochs, steps, the per-epoch mean loss and its parts."""
    encoder, head = split_for(model, attack)
    n = len(x)
    if n < 2:
        raise DomainlockError(f"the {attack} attack needs at least 2 target images, got {n}")
    bs, spe, epochs = params.length(n)
    for p in model.parameters():
        p.requires_grad_(True)
    if not train_head:
        for p in head.parameters():
            p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=params.lr, momentum=0.9, nesterov=True, weight_decay=params.weight_decay)
    total = epochs * spe
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: (1 + SCHEDULE_GAMMA * t / total) ** -SCHEDULE_POWER)
    g = torch.Generator().manual_seed(int(ctx.seed) + 1_000_003)
    dev = _device(model)
    history: list[dict[str, float]] = []
    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=attack, unit="step", dynamic_ncols=True, leave=False)
    step = 0
    try:
        for epoch in range(1, epochs + 1):
            if on_epoch is not None:
                on_epoch(epoch)
            model.train()
            if not train_head:
                head.eval()
            sums: dict[str, float] = {}
            order = torch.randperm(n, generator=g)
            for i in range(0, spe * bs, bs):
                idx = order[i:i + bs].to(dev)
                feats = encoder(x[idx.cpu()].to(dev))
                logits = head(feats)
                loss, parts = loss_fn(Batch(idx, feats, logits, torch.softmax(logits, 1), step / total))
                if not torch.isfinite(loss).item():
                    raise DomainlockError(f"the {attack} loss became {float(loss)} at epoch {epoch}; lower --lr "
                                          f"(now {params.lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                for k, v in {"loss": float(loss.detach()), **parts}.items():
                    sums[k] = sums.get(k, 0.0) + v / spe
                if bar is not None:
                    bar.update(1)
            history.append({k: round(v, 5) for k, v in sums.items()})
    finally:
        if bar is not None:
            bar.close()
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    return {"images": n, "epochs": epochs, "steps": step, "batch_size": bs, "select": "last",
            "history": history}
