"""Test-time input disguising (JailNTL, Xiang et al., CVPR 2025; METHODS.md §4.6): leave the protected model's
weights alone and learn a translator ``T`` that makes unauthorized (target) images look authorized to it.

The attacker holds unlabelled target images ``x_t``, a small fraction of the authorized (source) images ``x_s``
(their labels are never used) and, by default, only query access to the model's probabilities ``f``. CycleGAN-
style, it trains ``T`` (target → source), a reverse translator ``R`` (source → target) and discriminators
``D_S``, ``D_T`` (least squares), and minimizes over ``T, R`` with ``P = f(T(x_t))``, rows ``p_i``:

    L = λ_adv (GAN(T, D_S) + GAN(R, D_T)) + λ_cyc (|R(T(x_t)) − x_t|₁ + |T(R(x_s)) − x_s|₁)
        + λ_idt λ_cyc (|T(x_s) − x_s|₁ + |R(x_t) − x_t|₁) + α mean_i H(p_i) − β H(mean_i p_i)

The last two terms are *model-guided*: translated images should be classified confidently, and the batch
should spread over the classes (entropies as in :mod:`.sfda.common`). The attacked model is ``f ∘ T``.

**Black box** (default): the model-guided term ``m(P)`` is differentiated analytically in ``P``, ``v = ∂m/∂P``,
and the vector-Jacobian product ``J_i^T v_i`` of each translated image is estimated by antithetic random-
direction differences (Gaussian smoothing / NES), then passed to ``T`` by the chain rule
(``translated.backward(ĝ)``):

    ĝ_i = 1/(2qσ) Σ_{k≤q} v_i · (f(x_i + σ u_k) − f(x_i − σ u_k)) · u_k / a

with ``u_k`` standard normal, constant on ``b×b`` pixel blocks, and ``a`` the pixel's block area (so ``E ĝ`` is
the block-mean gradient). Cost: ``B (2q + 1)`` queried images per step of batch ``B``, reported as ``queries``.
``white_box=True`` backpropagates through the (frozen) model instead.

Why the defaults:

* ``p = 0.01``: JailNTL's share of authorized images; ``fraction = 0.1``: NTLBench's unlabelled target share.
* ``adversarial = 1``, ``cycle = 10``, ``identity = 0.5``, Adam betas (0.5, 0.999): CycleGAN's values;
  ``lr = 1e-3``, not its 2e-4: these translators are tiny, start as the identity and get 2000 ``steps``.
* ``confidence = balance = 1``: the information-maximization weights of SHOT, which these two terms are.
* ``directions = 8``, ``block = 4``: the estimate's variance grows with the searched dimension; 4x4 blocks cut
  a 32x32 RGB image's 3,072 to 192, and the changes that fool a domain barrier (colour, brightness, texture
  statistics) are coarse. ``sigma = 0.01``: a step far below the images' [0, 1] range, far above float noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DomainlockError, check_integer, check_range
from ..utils.layout import to_channels_last
from .base import Attack, AttackOutcome, QueryOnly, ThreatModel
from .disguise_nets import Discriminator, Translator, lsgan
from .registry import register_attack
from .sfda.common import diversity, entropy


@dataclass
class DisguiseParams:
    """The attacker's holdings, the translator's objective and the black-box gradient estimator."""

    fraction: float = field(default=0.1, metadata={
        "help": "fraction of the target train split the attacker holds, without labels (in (0, 1])"})
    p: float = field(default=0.01, metadata={
        "help": "fraction of the source train split whose images (never labels) the attacker holds (JailNTL: 1%)"})
    white_box: bool = field(default=False, metadata={
        "help": "backpropagate through the model's weights instead of estimating gradients from queries"})
    steps: int = field(default=2000, metadata={"help": "optimizer steps of the translators"})
    batch_size: int = field(default=32, metadata={"help": "images per step from each domain"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of translators and discriminators"})
    adversarial: float = field(default=1.0, metadata={
        "help": "weight of the adversarial (discriminator) terms (CycleGAN: 1)"})
    cycle: float = field(default=10.0, metadata={"help": "weight of the L1 cycle consistency (CycleGAN: 10)"})
    identity: float = field(default=0.5, metadata={
        "help": "weight of the identity term, relative to --cycle (CycleGAN: 0.5)"})
    confidence: float = field(default=1.0, metadata={
        "help": "weight of the model's mean prediction entropy on translated images (lower: more confident)"})
    balance: float = field(default=1.0, metadata={
        "help": "weight of the entropy of the batch-mean prediction (higher: classes balanced)"})
    directions: int = field(default=8, metadata={
        "help": "black box: random direction pairs per image and step of the gradient estimate"})
    sigma: float = field(default=0.01, metadata={"help": "black box: finite-difference step (pixel units)"})
    block: int = field(default=4, metadata={
        "help": "black box: the random directions are constant on block x block pixels (1: per pixel)"})
    width: int = field(default=16, metadata={"help": "channels of the translators and discriminators"})

    def __post_init__(self) -> None:
        check_range("fraction", self.fraction, 0.0, 1.0, low_open=True)
        check_range("p", self.p, 0.0, 1.0, low_open=True)
        if not isinstance(self.white_box, bool):
            raise DomainlockError(f"white_box={self.white_box!r} must be True or False")
        check_integer("steps", self.steps, 1)
        check_integer("batch_size", self.batch_size, 2)
        check_range("lr", self.lr, 0.0, 1.0, low_open=True)
        for name in ("adversarial", "cycle", "identity", "confidence", "balance"):
            check_range(name, getattr(self, name), 0.0, 1000.0)
        check_integer("directions", self.directions, 1)
        check_range("sigma", self.sigma, 0.0, 1.0, low_open=True)
        check_integer("block", self.block, 1)
        check_integer("width", self.width, 1)


def guided_loss(probs: torch.Tensor, confidence: float, balance: float) -> torch.Tensor:
    """The model-guided term ``α mean_i H(p_i) − β H(mean_i p_i)`` of predictions ``probs`` [B, C]."""
    return confidence * entropy(probs).mean() - balance * diversity(probs)


def block_directions(n: int, shape: tuple[int, ...], block: int, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, a)``: ``n`` standard normal directions [n, *shape] constant on ``block x block`` pixel blocks of
    images ``shape`` (C, H, W), and each pixel's block area [H, W] (edge blocks may be cropped)."""
    c, h, w = shape
    z = torch.randn(n, c, math.ceil(h / block), math.ceil(w / block), generator=generator)
    u = z.repeat_interleave(block, -2).repeat_interleave(block, -1)[..., :h, :w]
    rows, cols = torch.arange(h) // block, torch.arange(w) // block
    area = torch.bincount(rows)[rows][:, None] * torch.bincount(cols)[cols][None, :]
    return u, area.to(u.dtype)


@torch.no_grad()
def estimate_vjp(query, x: torch.Tensor, v: torch.Tensor, directions: int, sigma: float, block: int = 1,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Estimate ``J_i^T v_i`` for each image ``x_i`` of ``x`` [B, C, H, W], where ``J_i`` is the Jacobian of
    ``query`` (images → [B, K] outputs) at ``x_i`` and ``v`` [B, K], from ``2 · directions`` queries per image
    (antithetic differences; the module docstring's estimator). Returns a tensor shaped like ``x``."""
    b = len(x)
    u, area = block_directions(directions * b, tuple(x.shape[1:]), block, generator)
    u, area = u.to(x.device).view(directions, b, *x.shape[1:]), area.to(x.device)
    probe = torch.cat([x + sigma * u, x - sigma * u]).flatten(0, 1)
    out = query(probe).view(2, directions, b, -1)
    slope = ((out[0] - out[1]) * v).sum(-1) / (2 * sigma)                # [q, B]: directional derivatives
    return (slope[..., None, None, None] * u).mean(0) / area


class Disguised(nn.Module):
    """``protected(translator(x))``: the untouched model behind the learned translator. A black-box model (a
    :class:`QueryOnly` view) answers log-probabilities, which keep its arg max."""

    def __init__(self, translator: Translator, protected: nn.Module | QueryOnly):
        super().__init__()
        self.translator = translator
        self.protected = protected

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.translator(x)
        if isinstance(self.protected, nn.Module):
            return self.protected(y)
        return torch.log(self.protected(y).clamp_min(1e-30))


def _batch(pool: torch.Tensor, size: int, g: torch.Generator, dev: torch.device) -> torch.Tensor:
    return pool[torch.randint(len(pool), (size,), generator=g)].to(dev)


def _as_set(x: torch.Tensor) -> torch.Tensor:
    """The images in an order of their own (the door's stratified draw orders them by the labels, unused here)."""
    return x[torch.argsort(x.flatten(1).double().sum(1), stable=True)]


def train_disguise(protected: nn.Module | QueryOnly, x_t: torch.Tensor, x_s: torch.Tensor, params: DisguiseParams,
                   device: torch.device, seed: int = 0, progress: bool = False) -> tuple[Translator, dict[str, Any]]:
    """Train the target → source translator on images ``x_t`` and ``x_s`` (module docstring); returns it (in eval
    mode) and the diagnostics: steps, per-tenth mean losses, and the final translation's statistics."""
    white = isinstance(protected, nn.Module)
    if white:
        protected.eval()
        for w in protected.parameters():
            w.requires_grad_(False)

    def probs_of(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(protected(x), 1) if white else protected(x)

    torch.manual_seed(seed)
    ch = x_t.shape[1]
    fwd, back, d_s, d_t = (to_channels_last(net.to(device)) for net in (
        Translator(ch, params.width), Translator(ch, params.width),
        Discriminator(ch, params.width), Discriminator(ch, params.width)))
    opt_g = torch.optim.Adam([*fwd.parameters(), *back.parameters()], lr=params.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([*d_s.parameters(), *d_t.parameters()], lr=params.lr, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(int(seed) + 1_000_033)
    bs, lam_idt = params.batch_size, params.identity * params.cycle
    every = max(1, params.steps // 10)
    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    queries = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=params.steps, desc="disguise", unit="step", dynamic_ncols=True, leave=False)
    for step in range(1, params.steps + 1):
        xt, xs = _batch(x_t, bs, g, device), _batch(x_s, bs, g, device)
        fake_s, fake_t = fwd(xt), back(xs)
        gan = lsgan(d_s(fake_s), True) + lsgan(d_t(fake_t), True)
        cyc = F.l1_loss(back(fake_s), xt) + F.l1_loss(fwd(fake_t), xs)
        idt = F.l1_loss(fwd(xs), xs) + F.l1_loss(back(xt), xt) if lam_idt else torch.zeros((), device=device)
        loss = params.adversarial * gan + params.cycle * cyc + lam_idt * idt
        opt_g.zero_grad(set_to_none=True)
        if white:
            guided = guided_loss(probs_of(fake_s), params.confidence, params.balance)
            (loss + guided).backward()
            queries += bs
        else:
            probs = probs_of(fake_s.detach()).requires_grad_(True)
            guided = guided_loss(probs, params.confidence, params.balance)
            (v,) = torch.autograd.grad(guided, probs)
            grad = estimate_vjp(protected, fake_s.detach(), v, params.directions, params.sigma, params.block, g)
            torch.autograd.backward([loss, fake_s], [None, grad])
        if not torch.isfinite(loss + guided).item():
            raise DomainlockError(f"the disguise loss became {float(loss + guided)} at step {step}; lower --lr "
                                  f"(now {params.lr})")
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)
        disc = (lsgan(d_s(xs), True) + lsgan(d_s(fake_s.detach()), False)
                + lsgan(d_t(xt), True) + lsgan(d_t(fake_t.detach()), False)) / 2
        disc.backward()
        opt_d.step()
        parts = {"gan": gan, "cycle": cyc, "identity": idt, "guided": guided, "discriminator": disc}
        for k, t in parts.items():
            sums[k] = sums.get(k, 0.0) + float(t.detach())
        if step % every == 0 or step == params.steps:
            n = step - (len(history) * every)
            history.append({k: round(s / n, 5) for k, s in sums.items()})
            sums = {}
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    fwd.eval()
    with torch.no_grad():
        change, probs = [], []
        for i in range(0, len(x_t), 256):
            xb = x_t[i:i + 256].to(device)
            yb = fwd(xb)
            change.append((yb - xb).abs().flatten(1).mean(1))
            probs.append(probs_of(yb))
        p = torch.cat(probs)
    queries = protected.queries if isinstance(protected, QueryOnly) else queries + len(x_t)
    return fwd, {"steps": params.steps, "queries": int(queries), "history": history,
                 "change": round(float(torch.cat(change).mean()), 5),
                 "entropy": round(float(entropy(p).mean()), 5), "diversity": round(float(diversity(p)), 5)}


@register_attack
class Disguise(Attack):
    name = "disguise"
    summary = ("JailNTL: keep the weights, learn a translator that disguises target images as authorized ones "
               "(black box: query-estimated gradients)")
    example = "domainlock attack disguise --model runs/ntl --target syn --source mnist --p 0.01"
    Params = DisguiseParams

    def threat(self, params: DisguiseParams) -> ThreatModel:
        return ThreatModel(target_unlabelled=params.fraction, source_fraction=params.p, white_box=params.white_box)

    def run(self, model, access, params, ctx):
        x_t = access.target_unlabelled()
        x_s = _as_set(access.source_labelled().x)      # images only: the labels are never read
        for name, x in (("target", x_t), ("source", x_s)):
            if len(x) < 2:
                raise DomainlockError(f"the disguise attack needs at least 2 {name} images, got {len(x)}")
        translator, info = train_disguise(model, x_t, x_s, params, ctx.device, ctx.seed, ctx.progress)
        return AttackOutcome(Disguised(translator, model), {
            "white_box": params.white_box, "target_images": len(x_t), "source_images": len(x_s), **info})
