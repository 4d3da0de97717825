"""The training loop NTL and CUTI-domain share (METHODS.md §3): fine-tune the *whole* source model on

    L = KL_S - min( beta, alpha * KL_T [* MMD(g(x_s), g(x_o))] )

where ``KL_S`` is the cross-entropy of the source batch to its labels, ``KL_T`` the cross-entropy of the
"other" batch x_o (real target images, or neighbourhood data made from the source) to *its* labels, and the
optional MMD factor (NTL) the multi-kernel MMD (:func:`domainlock.losses.mmd`) between the encoder features of
the two batches. KL(onehot(y) || p) = -log p_y = CE(p, y), so the KL terms of the papers are cross-entropies
here (batch means). The cap ``beta`` stops the push once the product is large enough; past it the gradient of
the second term is zero and only the source term acts.

Reconstruction choices (the project's, documented; not the papers' text):

* **Fine-tuning from the source weights** for ``steps`` Adam steps instead of training from scratch (the
  reference code trains an ImageNet VGG for 30 epochs): a protection here starts from the owner's trained
  model, like MAP, and must run in tens of seconds on a CPU.
* **BatchNorm frozen** (``bn="frozen"``, default): BN layers stay in eval mode with the source running
  statistics (their affine parameters still train). A joint source+target batch in train mode would
  overwrite the running statistics with a source/target mixture and cost source accuracy at test time;
  ``bn="train"`` keeps the plain behaviour for comparison.
* **Equal batches**: every step draws ``batch_size`` source images and ``batch_size`` other images.
* Source images are used as they are (no augmentation: the digit models' colour augmentation would make
  the source look like the colour targets).
* Optional hooks (CUTI's re-styling) are active only inside the loop and removed before returning, so the
  returned model is the plain classifier it was given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DomainlockError
from ...evaluation import accuracy_on
from ...losses.mmd import mmd
from ...models import split_model
from ...utils.layout import to_contiguous
from ..base import Method, RunContext, Sampler, StepLog

BN_MODES = ("frozen", "train")

#: ``other(step) -> (images, labels)``: the batch whose predictions the loss pushes away from its labels.
OtherBatch = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class NonTransferConfig:
    """The hyper-parameters NTL and CUTI-domain share: the loop's weights and length, and, for the variant that
    reads no target (NTL ``source-only``, CUTI ``target-free``), the neighbourhood data that stands in for it."""

    alpha: float = field(default=0.1, metadata={"help": "weight alpha of the target term (> 0)"})
    beta: float = field(default=1.0, metadata={"help": "cap beta of the target term (> 0)"})
    steps: int = field(default=100, metadata={"help": "fine-tuning steps from the source weights (0 = return "
                                                       "the source model)"})
    batch_size: int = field(default=64, metadata={"help": "source images per step (and as many target or "
                                                           "neighbourhood images)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    bn: str = field(default="frozen", metadata={
        "help": "BatchNorm during fine-tuning: frozen (eval mode, source running statistics kept) or train",
        "choices": BN_MODES})
    target_size: int = field(default=0, metadata={
        "help": "target variant: use at most this many target training images (0 = all); must be 0 for the "
                "variant that reads no target"})
    neighbour_pool: int = field(default=2048, metadata={
        "help": "no-target variant: neighbourhood images generated once and sampled from (0 = fresh every step)"})
    neighbour_strength: float = field(default=1.0, metadata={
        "help": "no-target variant: neighbour strength in (0, 1]"})
    neighbour_families: str = field(default="all", metadata={
        "help": "no-target variant: comma-separated neighbour families, or all"})
    val_size: int = field(default=512, metadata={
        "help": "held-out source images (source val split) measured before and after, for the card"})


@dataclass
class LoopSpec:
    """What the loop needs from a method's hyper-parameters."""

    alpha: float
    beta: float
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    bn: str = "frozen"
    use_mmd: bool = False
    mmd_kernels: int = 5
    mmd_mul: float = 2.0
    mmd_bandwidth: float = 0.0
    mmd_heuristic: str = "mean"
    log_every: int = 20
    channels_last: bool = True


@dataclass
class NTLossValue:
    total: torch.Tensor
    source_ce: torch.Tensor
    other_ce: torch.Tensor
    mmd: torch.Tensor | None
    term: torch.Tensor      # min(beta, alpha * other_ce [* mmd])

    def floats(self) -> dict[str, float]:
        out = {k: float(getattr(self, k).detach()) for k in ("total", "source_ce", "other_ce", "term")}
        if self.mmd is not None:
            out["mmd"] = float(self.mmd.detach())
        return out


def nt_loss(logits_s: torch.Tensor, y_s: torch.Tensor, logits_o: torch.Tensor, y_o: torch.Tensor, *,
            alpha: float, beta: float, mmd_value: torch.Tensor | None = None) -> NTLossValue:
    """``CE(logits_s, y_s) - min(beta, alpha * CE(logits_o, y_o) [* mmd_value])``."""
    ks = F.cross_entropy(logits_s, y_s)
    kt = F.cross_entropy(logits_o, y_o)
    raw = alpha * kt if mmd_value is None else alpha * kt * mmd_value
    term = torch.clamp(raw, max=beta)
    return NTLossValue(ks - term, ks, kt, mmd_value, term)


def set_bn_eval(model: nn.Module) -> None:
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.eval()


def draw_batches(sampler: Sampler, x_s: torch.Tensor, y_s: torch.Tensor, other: OtherBatch, step: int,
                 dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step's source batch (from ``sampler``) and other batch (``other(step)``), on ``dev``."""
    idx = sampler.next()
    xo, yo = other(step)
    return x_s[idx].to(dev), y_s[idx].to(dev), xo.to(dev), yo.to(dev)


def finetune_non_transferable(model: nn.Module, x_s: torch.Tensor, y_s: torch.Tensor, other: OtherBatch,
                              spec: LoopSpec, ctx: RunContext, *, val: tuple[torch.Tensor, torch.Tensor] | None,
                              before_step: Callable[[int, int, int], None] | None = None,
                              desc: str = "nt") -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune ``model`` in place on the loss of the module docstring and return it with diagnostics.

    ``other(step)`` returns the other batch (images in [0, 1], labels). ``before_step(step, n_source,
    n_other)`` runs before each forward pass (CUTI uses it to choose the rows its hooks re-style).
    ``val``: held-out source images and labels, measured before and after.
    """
    dev = ctx.device
    t0 = time.perf_counter()
    model.to(dev)
    fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    encoder, head = split_model(model)
    g = ctx.generator(41)
    sampler = Sampler(len(x_s), spec.batch_size, g)
    acc0 = accuracy_on(model, *val, dev) if val is not None else float("nan")
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    log = StepLog(spec.steps, spec.log_every, desc, ctx.progress,
                  lambda last: {"ks": f"{last['source_ce']:.3f}", "kt": f"{last['other_ce']:.2f}",
                                "term": f"{last['term']:.3f}"})
    t_loop = time.perf_counter()
    n_imgs = 0
    try:
        model.train()
        if spec.bn == "frozen":
            set_bn_eval(model)
        for step in range(spec.steps):
            xs, ys, xo, yo = draw_batches(sampler, x_s, y_s, other, step, dev)
            ns = len(xs)
            if before_step is not None:
                before_step(step, ns, len(xo))
            feats = encoder(torch.cat([xs, xo]).contiguous(memory_format=fmt))
            logits = head(feats)
            d = None
            if spec.use_mmd:
                d = mmd(feats[:ns], feats[ns:], kernels=spec.mmd_kernels, mul=spec.mmd_mul,
                        bandwidth=spec.mmd_bandwidth, heuristic=spec.mmd_heuristic)
            loss = nt_loss(logits[:ns], ys, logits[ns:], yo, alpha=spec.alpha, beta=spec.beta, mmd_value=d)
            if not torch.isfinite(loss.total):
                raise DomainlockError(f"{desc} loss became {float(loss.total)} at step {step + 1}; lower --lr "
                                      f"(now {spec.lr})")
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
            opt.step()
            n_imgs += ns + len(xo)
            log.step(step, loss.floats)
    finally:
        log.close()
        model.eval()
    last, history = log.last, log.history
    loop_s = time.perf_counter() - t_loop
    to_contiguous(model)
    acc1 = accuracy_on(model, *val, dev) if val is not None else float("nan")
    info = {
        "steps": spec.steps, "final_losses": last, "history": history,
        "source_val_acc_before": acc0, "source_val_acc_after": acc1,
        "loop_s": round(loop_s, 3), "step_img_per_s": round(n_imgs / max(loop_s, 1e-9), 1) if spec.steps else None,
        "train_total_s": round(time.perf_counter() - t0, 3),
        "capped_at_end": bool(last) and math.isclose(last.get("term", 0.0), spec.beta, rel_tol=1e-6),
    }
    return model, info


class NonTransferMethod(Method):
    """The target contract NTL and CUTI share: only their ``target`` variant reads target data; the other
    variant trains on neighbourhood data made from the source."""

    def reads_target(self, hp: Any) -> bool:
        return hp.variant == "target"

    def target_refusal(self, hp: Any) -> str:
        return f"{self.name} variant {hp.variant!r} reads no target data (it uses neighbourhood data from the source)"


def subsample(x: torch.Tensor, y: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``n`` random rows of ``(x, y)`` (``n = 0``: all)."""
    if n <= 0 or n >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=g)[:n]
    return x[idx], y[idx]


def neighbour_pool(x_s: torch.Tensor, y_s: torch.Tensor, pool: int, g: torch.Generator, cfg: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``pool`` neighbour-domain copies of random source images (cycling through a smaller source), made once,
    with the labels of the images they were made from; ``g`` draws the images and the perturbations."""
    from ...synthesis.neighbours import make_neighbours

    xs, ys = subsample(x_s, y_s, pool, g)
    if len(xs) < pool:   # small source: cycle through it
        reps = -(-pool // len(xs))
        xs, ys = xs.repeat(reps, 1, 1, 1)[:pool], ys.repeat(reps)[:pool]
    xn = torch.cat([make_neighbours(xs[i:i + 256], generator=g, cfg=cfg).float().clamp(0, 1)
                    for i in range(0, len(xs), 256)])
    return xn, ys


def neighbour_source(x_s: torch.Tensor, y_s: torch.Tensor, batch_size: int, ctx: RunContext, *, pool: int,
                     strength: float, families: str) -> tuple[OtherBatch, dict[str, Any]]:
    """Neighbourhood data made from the source (NTL's source-only variant, CUTI's target-free variant):
    neighbour-domain copies (:func:`domainlock.synthesis.neighbours.make_neighbours`) of source images, labelled
    with the labels of the images they were made from. ``pool`` > 0 makes that many copies once and samples
    batches from them; 0 makes fresh copies of a fresh source batch at every step."""
    from ...synthesis.neighbours import NeighbourConfig, make_neighbours

    cfg = NeighbourConfig(families=families, strength=strength)
    g = ctx.generator(53)
    t0 = time.perf_counter()
    if pool > 0:
        xn, ys = neighbour_pool(x_s, y_s, pool, g, cfg)
        sampler = Sampler(len(xn), batch_size, g)

        def other(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = sampler.next()
            return xn[idx], ys[idx]

        info = {"neighbours": int(len(xn)), "neighbours_s": round(time.perf_counter() - t0, 3)}
    else:
        sampler = Sampler(len(x_s), batch_size, g)

        def other(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = sampler.next()
            return make_neighbours(x_s[idx], generator=g, cfg=cfg).float().clamp(0, 1), y_s[idx]

        info = {"neighbours": "fresh per step"}
    info["neighbour_families"] = cfg.family_list()
    info["neighbour_strength"] = strength
    return other, info


def target_source(x_t: torch.Tensor, y_t: torch.Tensor, batch_size: int, ctx: RunContext) -> OtherBatch:
    """Batches of real target images with their labels."""
    sampler = Sampler(len(x_t), batch_size, ctx.generator(47))

    def other(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = sampler.next()
        return x_t[idx], y_t[idx]

    return other


__all__ = ["BN_MODES", "LoopSpec", "NTLossValue", "NonTransferMethod", "Sampler", "finetune_non_transferable",
           "neighbour_pool", "neighbour_source", "nt_loss", "subsample", "target_source"]
