"""TransNTL (Hong et al., CVPR 2024; METHODS.md §4.4): recover a protected model's target ability from a
fraction ``p`` of labelled *source* data, by making its predictions agree under corruptions that stand in for
other domains.

Three corruptions ``c_g`` of each source image play the unseen domains: additive Gaussian noise, multiplicative
noise ``x·(1 + ε)`` and a Gaussian blur. The attacker fine-tunes every layer on

    L(θ) = CE(f_θ(x), y) + λ · Σ_g q_g · KL( sg[softmax f_θ(x)] ‖ softmax f_θ(c_g(x)) )

(``sg``: no gradient), where the group weights follow group DRO: at every step ``q_g ← q_g·exp(η·KL_g)``,
renormalized, so the corruption the model handles worst weighs most. The optimizer is adaptive SAM
(:mod:`.sam`) over Adam: it seeks weights around which the loss is flat, which generalize further.
The clean batch and its three corrupted views go through the model as one batch (BatchNorm sees the mix).

Why the defaults (the paper's as METHODS.md §4.4 gives them, unless said otherwise):

* ``p = 0.1``: the paper's and NTLBench's fraction of source data.
* ``noise_std = 0.2``, ``blur_kernel = 5``: the paper's corruptions; the blur's sigma is drawn per image from
  (0.1, 2.0), torchvision's GaussianBlur default.
* ``mult_std = 0.2``: ε ~ N(0, 0.2²) per pixel, the additive noise's scale (§4.4 fixes only the form).
* ``kl_weight = 0.1``, ``dro_step = 0.01``, ``rho = 0.5`` (adaptive), Adam ``lr = 1e-4``, ``weight_decay =
  1e-4``: the paper's; batch 32: NTLBench's.
* ``epochs = 20``, ``steps = 300``: 20 passes over 10 % of a digits source (~700 images, 21 batches)
  are ~420 SAM steps of 4 views × 2 passes each, a few minutes on 2 CPU cores; ``steps`` keeps a small ``p``
  from getting a few dozen.
* ``select = last``: the loss's CE term pins clean source accuracy, so the best epoch by it on a held-out
  share picks noise, not recovery; ``holdout`` (20 % per class) is there for those who want it. Never
  target labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import gaussian_blur, gaussian_noise
from ..errors import DomainlockError, check_choice, check_integer, check_range
from ..utils.layout import to_channels_last, to_contiguous
from .base import Attack, AttackContext, AttackOutcome, ThreatModel
from .finetune import SELECTIONS
from .registry import register_attack
from .sam import SAM
from .sampling import split_holdout

CORRUPTIONS = ("noise", "multiplicative", "blur")
BLUR_SIGMA = (0.1, 2.0)


@dataclass
class TransNTLParams:
    """TransNTL: a fraction ``p`` of the labelled source train split, the corruptions, the loss, the optimizer."""

    p: float = field(default=0.1, metadata={"help": "fraction of the labelled source train split the attacker "
                                                    "holds (stratified, in (0, 1])"})
    epochs: int = field(default=20, metadata={"help": "minimum passes over the attacker's source samples"})
    steps: int = field(default=300, metadata={"help": "minimum SAM steps"})
    batch_size: int = field(default=32, metadata={"help": "mini-batch size (min(batch_size, n) at small n)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate (the paper: 1e-4)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "Adam weight decay (the paper: 1e-4)"})
    rho: float = field(default=0.5, metadata={"help": "SAM neighbourhood radius (the paper: 0.5, adaptive)"})
    adaptive: bool = field(default=True, metadata={"help": "adaptive SAM (neighbourhood scaled by |w|)"})
    kl_weight: float = field(default=0.1, metadata={"help": "weight of the DRO-weighted KL term (the paper: 0.1)"})
    dro_step: float = field(default=0.01, metadata={"help": "exponentiated-gradient step of the group weights"})
    noise_std: float = field(default=0.2, metadata={"help": "standard deviation of the additive Gaussian noise"})
    mult_std: float = field(default=0.2, metadata={"help": "standard deviation of ε in the multiplicative noise "
                                                           "x·(1 + ε)"})
    blur_kernel: int = field(default=5, metadata={"help": "Gaussian blur kernel size (odd, 3 to 15)"})
    select: str = field(default="last", metadata={
        "help": "checkpoint the attacker keeps: the last step, or the best epoch by clean accuracy on its "
                "held-out share of the source samples", "choices": list(SELECTIONS)})
    holdout: float = field(default=0.2, metadata={"help": "share of the source samples held out (select=holdout)"})

    def __post_init__(self) -> None:
        check_range("p", self.p, 0.0, 1.0, low_open=True)
        check_integer("epochs", self.epochs, 1)
        check_integer("steps", self.steps, 0)
        check_integer("batch_size", self.batch_size, 2)
        check_range("lr", self.lr, 0, math.inf, low_open=True)
        for name in ("weight_decay", "rho", "kl_weight", "dro_step", "noise_std", "mult_std"):
            check_range(name, getattr(self, name), 0, math.inf)
        check_integer("blur_kernel", self.blur_kernel, 3, 15)
        if self.blur_kernel % 2 == 0:
            raise DomainlockError(f"blur_kernel={self.blur_kernel!r} must be odd; valid: 3, 5, ..., 15")
        check_choice("select", self.select, SELECTIONS)
        check_range("holdout", self.holdout, 0, 1, low_open=True, high_open=True)

    def length(self, n: int) -> tuple[int, int, int]:
        """``(batch, steps_per_epoch, epochs)`` for ``n`` training samples."""
        bs = min(self.batch_size, n)
        spe = max(1, n // bs)
        return bs, spe, max(self.epochs, math.ceil(self.steps / spe))


# ------------------------------------------------------------------------------------------------ pieces
def multiplicative_noise(x: torch.Tensor, g: torch.Generator | None, std: float) -> torch.Tensor:
    """``x·(1 + ε)`` with ε ~ N(0, std²) per pixel, clipped to [0, 1]."""
    eps = torch.randn(x.shape, generator=g, device=g.device if g is not None else "cpu").to(x)
    return (x * (1 + std * eps)).clamp(0, 1)


def corrupt(x: torch.Tensor, g: torch.Generator | None, params: TransNTLParams) -> list[torch.Tensor]:
    """The three corrupted views of the batch ``x``, in :data:`CORRUPTIONS` order."""
    return [gaussian_noise(x, g, std=params.noise_std, p=1.0),
            multiplicative_noise(x, g, params.mult_std),
            gaussian_blur(x, g, sigma=BLUR_SIGMA, p=1.0, kernel_size=params.blur_kernel)]


def dro_update(q: torch.Tensor, losses: torch.Tensor, step: float) -> torch.Tensor:
    """Group DRO's exponentiated-gradient step: ``q_g·exp(step·loss_g)``, renormalized to sum to one."""
    w = q * torch.exp(step * losses.detach())
    return w / w.sum()


def consistency(logits: torch.Tensor, n_views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clean logits [B, C], KL [G])`` from the logits of the stacked batch ``[clean; view_1; ...; view_G]``:
    ``KL_g`` = batch-mean KL from the detached clean prediction to view ``g``'s."""
    parts = logits.chunk(n_views + 1)
    target = torch.softmax(parts[0], 1).detach()
    kl = torch.stack([F.kl_div(torch.log_softmax(v, 1), target, reduction="batchmean") for v in parts[1:]])
    return parts[0], kl


class _FrozenBNStats:
    """Within the block, BatchNorm layers normalize by the batch but leave their running statistics alone
    (SAM's second pass must not count the batch twice)."""

    def __init__(self, model: nn.Module):
        self.bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                    and m.track_running_stats and m.momentum is not None]

    def __enter__(self) -> None:
        self.saved = [m.momentum for m in self.bns]
        for m in self.bns:
            m.momentum = 0.0

    def __exit__(self, *exc: Any) -> None:
        for m, mom in zip(self.bns, self.saved, strict=True):
            m.momentum = mom


# ------------------------------------------------------------------------------------------------ the loop
def transntl(model: nn.Module, data: Any, params: TransNTLParams, ctx: AttackContext) -> dict[str, Any]:
    """Train ``model`` in place on the labelled source samples ``data`` with the TransNTL objective (module
    docstring); returns the diagnostics (length, selection, final group weights, per-epoch history)."""
    from ..evaluation import accuracy

    split = split_holdout(data.y, params.holdout, ctx.seed) if params.select == "holdout" else None
    train, hold = (data, None) if split is None else (data.subset(split[0]), data.subset(split[1]))
    n = len(train)
    if n < 2:
        raise DomainlockError(f"the transntl attack needs at least 2 source images to train on, got {n}")
    bs, spe, epochs = params.length(n)
    dev = next(iter(model.parameters())).device
    to_channels_last(model)   # faster convolutions on CPU (utils.layout); undone at the end
    for p in model.parameters():
        p.requires_grad_(True)
    weights = list(model.parameters())
    sam = SAM(weights, torch.optim.Adam(weights, lr=params.lr, weight_decay=params.weight_decay),
              params.rho, params.adaptive)
    frozen = _FrozenBNStats(model)
    g_data = torch.Generator().manual_seed(int(ctx.seed) + 1_000_003)
    g_aug = torch.Generator().manual_seed(int(ctx.seed) + 2_000_003)
    q = torch.full((len(CORRUPTIONS),), 1.0 / len(CORRUPTIONS), device=dev)
    history: list[dict[str, Any]] = []
    best = (-1.0, 0, None)
    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * spe, desc="transntl", unit="step", dynamic_ncols=True, leave=False)
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            sums = torch.zeros(2 + len(CORRUPTIONS), device=dev)
            order = torch.randperm(n, generator=g_data)
            for i in range(0, spe * bs, bs):
                idx = order[i:i + bs]
                x, y = train.x[idx].to(dev), train.y[idx].to(dev)
                stacked = torch.cat([x, *corrupt(x, g_aug, params)]).contiguous(memory_format=torch.channels_last)
                sam.zero_grad()
                clean, kl = consistency(model(stacked), len(CORRUPTIONS))
                q = dro_update(q, kl, params.dro_step)
                ce = F.cross_entropy(clean, y)
                loss = ce + params.kl_weight * (q * kl).sum()
                if not torch.isfinite(loss).item():
                    raise DomainlockError(f"the transntl loss became {float(loss)} at epoch {epoch}; lower --lr "
                                          f"(now {params.lr}) or --rho (now {params.rho})")
                loss.backward()
                sam.ascend()
                with frozen:
                    clean2, kl2 = consistency(model(stacked), len(CORRUPTIONS))
                    (F.cross_entropy(clean2, y) + params.kl_weight * (q * kl2).sum()).backward()
                sam.descend()
                sums += torch.cat([loss.detach().view(1), ce.detach().view(1), kl.detach()]) / spe
                if bar is not None:
                    bar.update(1)
            s = sums.tolist()
            rec = {"epoch": epoch, "loss": round(s[0], 5), "ce": round(s[1], 5),
                   **{f"kl_{c}": round(v, 5) for c, v in zip(CORRUPTIONS, s[2:], strict=True)},
                   "q": [round(v, 4) for v in q.tolist()]}
            if hold is not None:
                rec["holdout_acc"] = acc = round(accuracy(model, hold, device=dev), 5)
                if acc >= best[0]:
                    best = (acc, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
            history.append(rec)
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    if best[2] is not None:
        model.load_state_dict(best[2])
    to_contiguous(model)
    return {"train_samples": n, "holdout_samples": 0 if hold is None else len(hold), "epochs": epochs,
            "steps": epochs * spe, "batch_size": bs, "select": "last" if hold is None else "holdout",
            "selected_epoch": best[1] if hold is not None else epochs,
            "holdout_accuracy": best[0] if hold is not None else None,
            "q": history[-1]["q"], "history": history}


@register_attack
class TransNTL(Attack):
    name = "transntl"
    summary = ("fine-tune on a fraction p of labelled source data to agree under noise and blur, group-DRO "
               "weighted, with adaptive SAM (Hong et al., CVPR 2024)")
    example = "domainlock attack transntl --model runs/sa-map --source mnist --target syn --p 0.1"
    Params = TransNTLParams

    def threat(self, params: TransNTLParams) -> ThreatModel:
        return ThreatModel(source_fraction=params.p)

    def run(self, model, access, params, ctx):
        data = access.source_labelled()
        info = transntl(model, data, params, ctx)  # run_attack hands over a private copy
        return AttackOutcome(model, {"p": params.p, "source_samples": len(data), **info})
