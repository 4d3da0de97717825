"""Pseudo-source synthesis by model inversion (SF-MAP / DF-MAP, METHODS.md section 1): images made from
the source model alone, never from real data.

Approach (DeepInversion-style, directly optimized image batches). For each batch of ``batch_size`` images
with balanced intended classes ``y``, the pixels (parameterized as ``sigmoid(logits)`` so they stay in
[0, 1]) are optimized with Adam for ``steps`` steps on

    L = w_ce · CE(f(x̃), y)                              class-conditional: f must predict y
      + w_bn · Σ_l m_l (‖μ_l(x̃) − μ̂_l‖₂ + ‖σ²_l(x̃) − σ̂²_l‖₂)   BN-statistics matching at every BN layer
      + w_tv · TV(x) + w_l2 · ‖x − ½‖²                       image priors
      − w_div · H(mean_b softmax(f(x̃)))                      diversity: all classes appear

where x̃ is ``x`` randomly jittered (rolled by up to ``jitter`` pixels; optional horizontal flip, off by
default because digits are not flip-invariant) at every step, μ_l/σ²_l are the per-channel batch mean and
(biased) variance of the **input** of BN layer l (read by forward hooks while the model runs in eval mode,
i.e. with the source's running statistics), μ̂_l/σ̂²_l its ``running_mean``/``running_var``, and m_l =
``first_bn_weight`` for the first BN layer, 1 otherwise. A model without BN layers falls back to the image
priors alone (a ``UserWarning`` and ``info["used_bn_matching"] = False``). ``mode="generator"`` trains a
small conditional generator G(z, y) with the same loss instead, then samples it.

Why the defaults are what they are, one line each (the measurements and the commands that regenerate them:
``docs/design/synthesis.md``; the time is linear in ``n * steps``):

* ``mode = batch``: directly optimized batches distil to a far better student than the generator, which
  collapses modes within classes.
* ``param_res = 16``, ``batch_size = 128``, a low BN-statistics loss (~4x the cost of the best-fidelity
  setting): SF-MAP needs the pseudo-source to anchor the *real* source's features, which tracks how well the
  BN statistics are matched rather than distillation fidelity; pass a cheaper config where only fidelity matters.
* ``steps = 200``, ``lr = 0.3``, ``schedule = cosine``: 100 linear steps at lr 1 match its BN-statistics loss
  on the mnist model but not on the mnistm one, where SF-MAP then keeps 7.6 points less of the real source.
* ``gray = False``: colour pseudo-images also match the BN statistics of a model trained on grey digits, but
  look like SYN (on mnist -> syn, SF-MAP at alpha 0.3 keeps 75.6% of the real MNIST with them, 97.7% with grey
  ones); a source domain in greyscale is the owner's knowledge, so it is a flag.
* ``precision = auto`` (bf16 autocast where the device runs it natively; BN statistics, losses and pixels
  stay float32): ~1.6x faster per step at one CPU thread at the same BN-statistics loss.

The pseudo-source itself, its fidelity measure and its on-disk format: :mod:`domainlock.synthesis.pseudo_source`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DomainlockError, check_choice, check_range
from ..utils.precision import PRECISIONS, forward_autocast, resolve_bf16
from .pseudo_source import PSEUDO_FORMAT, PseudoSource, _num_classes

MODES = ("batch", "generator")
SCHEDULES = ("linear", "cosine")

__all__ = ["MODES", "PRECISIONS", "SCHEDULES", "BNStatsHook", "SynthesisConfig", "attach_bn_hooks", "bn_layers",
           "bn_matching_loss", "prediction_entropy", "synthesize_pseudo_source", "total_variation"]


@dataclass
class SynthesisConfig:
    """Hyper-parameters of the pseudo-source synthesis (each field is a CLI flag of ``domainlock synthesize``).

    Defaults (why: the module docstring): direct optimization of 2048 images in batches
    of 128, 200 Adam steps each at lr 0.3 (cosine decay) on 16 px pixel logits, bf16 where native; CE 1, BN
    matching 1 (first BN layer x10), TV 1e-3, L2 0, batch-entropy diversity 1, jitter 2 px, no flips.
    """

    n: int = field(default=2048, metadata={"help": "number of pseudo-source images"})
    mode: str = field(default="batch", metadata={"help": "batch: optimize image batches directly; generator: "
                                                 "train a conditional generator G(z, y) and sample it",
                                                 "choices": list(MODES)})
    batch_size: int = field(default=128, metadata={"help": "images optimized together (BN statistics are "
                                                   "matched per batch)"})
    steps: int = field(default=200, metadata={"help": "optimization steps per batch (mode batch) or "
                                             "generator training steps (mode generator)"})
    lr: float = field(default=0.3, metadata={"help": "Adam learning rate of the pixel logits (mode batch)"})
    schedule: str = field(default="cosine", metadata={"help": "decay of the pixel learning rate to 0 over the "
                                                      "steps (mode batch)", "choices": list(SCHEDULES)})
    param_res: int = field(default=16, metadata={"help": "resolution at which pixels are parameterized "
                                                 "(bilinearly upsampled to the image size; smaller = smoother)"})
    gray: bool = field(default=False, metadata={"help": "grey images: one value per pixel, repeated over the "
                                                "colour channels (for a source domain in greyscale)"})
    w_ce: float = field(default=1.0, metadata={"help": "weight of the class-conditional cross-entropy"})
    w_bn: float = field(default=1.0, metadata={"help": "weight of BN-statistics matching (0: off)"})
    first_bn_weight: float = field(default=10.0, metadata={"help": "extra multiplier of the first BN layer"})
    w_tv: float = field(default=1e-3, metadata={"help": "weight of the total-variation image prior"})
    w_l2: float = field(default=0.0, metadata={"help": "weight of the L2 image prior (pull toward grey)"})
    w_div: float = field(default=1.0, metadata={"help": "weight of the batch-mean prediction entropy "
                                                "(diversity: all classes appear)"})
    jitter: int = field(default=2, metadata={"help": "random roll of up to this many pixels each step"})
    flip: bool = field(default=False, metadata={"help": "random horizontal flips each step (off: digits "
                                                "are not flip-invariant)"})
    z_dim: int = field(default=64, metadata={"help": "latent size of the generator (mode generator)"})
    gen_width: int = field(default=64, metadata={"help": "channel width of the generator (mode generator)"})
    gen_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the generator (mode generator)"})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory format (faster on CPU)"})
    precision: str = field(default="auto", metadata={
        "help": "precision of the model's forward/backward: bf16 (autocast; losses and BN statistics stay "
                "float32), fp32, or auto (bf16 where the device runs it natively: CUDA with bf16 support, "
                "or a CPU with AVX512-BF16/AMX; else fp32)", "choices": list(PRECISIONS)})

    def __post_init__(self) -> None:
        check_range("n", self.n, 1, 1 << 24)
        check_choice("mode", self.mode, MODES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        check_range("batch_size", self.batch_size, 2, 1 << 16)
        check_range("steps", self.steps, 1, 1 << 20)
        check_range("lr", self.lr, 0, math.inf, low_open=True)
        check_range("param_res", self.param_res, 1, 4096)
        for name in ("w_ce", "w_bn", "first_bn_weight", "w_tv", "w_l2", "w_div"):
            check_range(name, getattr(self, name), 0, math.inf)
        check_range("jitter", self.jitter, 0, 64)
        check_range("z_dim", self.z_dim, 1, 4096)
        check_range("gen_lr", self.gen_lr, 0, math.inf, low_open=True)
        check_range("gen_width", self.gen_width, 1, 4096)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------ BN hooks


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that carry running statistics (in module order)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and m.running_mean is not None and m.running_var is not None]


class _Moments(torch.autograd.Function):
    """Per-channel mean and mean square of ``h`` (all dims but 1), accumulated in float32; the backward is
    one fused ``h * a_c + b_c`` in ``h``'s dtype and memory format (autograd's ``var`` backward makes several
    full-size temporaries, most of a synthesis step's time at one CPU thread)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        dims = [d for d in range(h.dim()) if d != 1]
        m = h.numel() // max(1, h.shape[1])
        acc = torch.promote_types(h.dtype, torch.float32)
        mean = torch.sum(h, dims, dtype=acc) / m
        sq = torch.linalg.vector_norm(h, 2, dims, dtype=acc).pow(2) / m
        ctx.save_for_backward(h)
        ctx.m = m
        return mean, sq

    @staticmethod
    def backward(ctx, g_mean: torch.Tensor, g_sq: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (h,) = ctx.saved_tensors
        shape = [1] * h.dim()
        shape[1] = h.shape[1]
        a = (g_sq * (2.0 / ctx.m)).to(h.dtype).view(shape)
        b = (g_mean / ctx.m).to(h.dtype).view(shape)
        return torch.addcmul(b, h, a)


class BNStatsHook:
    """Forward hook on a BN layer: keeps the per-channel batch mean and (biased) variance of the layer's
    **input** from the last forward pass (``mean``, ``var``: float32 ``[C]``; dims averaged: all but dim 1;
    ``var = E[h²] − E[h]²``) and gives the DeepInversion matching loss
    ``‖mean − running_mean‖₂ + ‖var − running_var‖₂``."""

    def __init__(self, module: nn.modules.batchnorm._BatchNorm):
        self.module = module
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        mean, sq = _Moments.apply(inputs[0])
        self.mean = mean
        self.var = (sq - mean * mean).clamp_min(0)

    def loss(self) -> torch.Tensor:
        if self.mean is None or self.var is None:
            raise DomainlockError("BNStatsHook.loss() called before a forward pass")
        rm, rv = self.module.running_mean.float(), self.module.running_var.float()
        return torch.linalg.vector_norm(self.mean - rm) + torch.linalg.vector_norm(self.var - rv)

    def remove(self) -> None:
        self.handle.remove()


def attach_bn_hooks(model: nn.Module) -> list[BNStatsHook]:
    """One :class:`BNStatsHook` per BN layer of ``model`` (remove them with ``h.remove()``)."""
    return [BNStatsHook(m) for m in bn_layers(model)]


def bn_matching_loss(hooks: list[BNStatsHook], first_weight: float = 1.0) -> torch.Tensor:
    """Σ_l m_l · hook_l.loss() with m = ``first_weight`` for the first layer, 1 for the others."""
    total = hooks[0].loss() * first_weight
    for h in hooks[1:]:
        total = total + h.loss()
    return total


# ------------------------------------------------------------------------------------------- priors


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of horizontally and vertically neighbouring pixels (per image, averaged)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean()
    dw = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()
    return dh + dw


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the batch-mean softmax (maximal when the batch covers all classes equally)."""
    p = F.softmax(logits, 1).mean(0)
    return -(p * torch.log(p.clamp_min(1e-8))).sum()


def _jitter(x: torch.Tensor, g: torch.Generator, jitter: int, flip: bool) -> torch.Tensor:
    r = torch.randint(-jitter, jitter + 1, (2,), generator=g) if jitter > 0 else torch.zeros(2, dtype=torch.long)
    f = bool(torch.rand((), generator=g) < 0.5)
    if jitter > 0:
        x = torch.roll(x, shifts=(int(r[0]), int(r[1])), dims=(2, 3))
    if flip and f:
        x = torch.flip(x, dims=(3,))
    return x


# ---------------------------------------------------------------------------------------- synthesis

def _image_shape(model: nn.Module) -> tuple[int, int, int]:
    shape = getattr(model, "input_shape", None)
    if shape:
        return tuple(int(s) for s in shape)  # type: ignore[return-value]
    return (3, 32, 32)


class _Generator(nn.Module):
    """Small conditional generator ``G(z, y)``: z ⊕ embed(y) → 128×(s/4)² → 2× (upsample, conv, BN, ReLU)
    → conv → sigmoid."""

    def __init__(self, z_dim: int, num_classes: int, shape: tuple[int, int, int], width: int = 64,
                 gray: bool = False):
        super().__init__()
        c, h, w = shape
        self.h0, self.w0 = max(1, h // 4), max(1, w // 4)
        self.shape = shape
        self.embed = nn.Embedding(num_classes, z_dim)
        self.fc = nn.Linear(2 * z_dim, 2 * width * self.h0 * self.w0)
        self.width = width
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 1 if gray else c, 3, padding=1))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(y)], 1)).view(-1, 2 * self.width, self.h0, self.w0)
        out = torch.sigmoid(self.body(h)).expand(-1, self.shape[0], -1, -1)
        if out.shape[-2:] != self.shape[-2:]:
            out = F.interpolate(out, size=self.shape[-2:], mode="bilinear", align_corners=False)
        return out


def _balanced_labels(n: int, num_classes: int, g: torch.Generator) -> torch.Tensor:
    y = torch.arange(n) % num_classes
    return y[torch.randperm(n, generator=g)]


def synthesize_pseudo_source(model: nn.Module, n: int | None = None, *, device: str | torch.device = "cpu",
                             seed: int = 0, progress: bool = True, cfg: SynthesisConfig | None = None
                             ) -> PseudoSource:
    """Synthesize ``n`` pseudo-source images from ``model`` alone (no data is read).

    ``n`` defaults to ``cfg.n``. Intended classes are balanced (``n // C`` or one more each). The model is
    not modified (a frozen eval-mode copy is inverted). Deterministic given ``seed`` (same device, same
    thread count). Returns a :class:`PseudoSource` whose ``info`` holds ``used_bn_matching``,
    ``n_bn_layers``, ``time_s``, ``class_counts``, ``final_losses``, ``teacher_acc`` (the model's accuracy
    on its own intended labels), ``teacher_confidence`` and the config.
    """
    cfg = cfg or SynthesisConfig()
    n = int(cfg.n if n is None else n)
    check_range("n", n, 1, 1 << 24)
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if isinstance(device, str) and device == "auto":
        from ..utils.runtime import resolve_device

        dev = resolve_device("auto")
    teacher = copy.deepcopy(model).to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if cfg.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    num_classes = _num_classes(teacher)
    shape = _image_shape(teacher)
    hooks = attach_bn_hooks(teacher) if cfg.w_bn > 0 else []
    has_bn = bool(bn_layers(teacher))
    used_bn = bool(hooks)
    if not has_bn:
        warnings.warn("model has no BatchNorm layers with running statistics: pseudo-source synthesis falls "
                      "back to image priors (total variation, L2) besides the class and diversity terms; "
                      "expect a lower fidelity", UserWarning, stacklevel=2)
    g = torch.Generator()
    g.manual_seed(int(seed))
    y_all = _balanced_labels(n, num_classes, g)
    bf16 = resolve_bf16(cfg.precision, dev)
    t0 = time.perf_counter()
    bar = None
    try:
        if cfg.mode == "batch":
            nb = -(-n // cfg.batch_size)
            total = nb * cfg.steps
        else:
            total = cfg.steps
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="synthesize pseudo-source", unit="step", dynamic_ncols=True,
                       leave=False)
        if cfg.mode == "batch":
            x_all, losses, losses0 = _synthesize_batches(teacher, hooks, y_all, shape, cfg, g, dev, bar, bf16)
        else:
            x_all, losses, losses0 = _synthesize_generator(teacher, hooks, y_all, shape, num_classes, cfg, g, dev,
                                                           bar, bf16)
    finally:
        if bar is not None:
            bar.close()
        for h in hooks:
            h.remove()
    elapsed = time.perf_counter() - t0
    x_all = (x_all.clamp(0, 1) * 255).round() / 255  # exactly what save_pseudo_source stores
    with torch.no_grad():
        probs = torch.cat([F.softmax(teacher(x_all[i:i + 512].to(dev)), 1).cpu()
                           for i in range(0, n, 512)])
    pred = probs.argmax(1)
    info: dict[str, Any] = {
        "format": PSEUDO_FORMAT, "n": n, "num_classes": num_classes, "image_shape": list(shape),
        "seed": int(seed), "mode": cfg.mode, "config": cfg.to_dict(),
        "used_bn_matching": used_bn, "n_bn_layers": len(hooks),
        "fallback": None if used_bn else ("image-priors (model has no BN layers)" if not has_bn
                                          else "image-priors (w_bn = 0)"),
        "time_s": round(elapsed, 2), "img_per_s": round(n / max(elapsed, 1e-9), 1),
        "device": str(dev), "torch_threads": torch.get_num_threads(), "bf16": bf16,
        "class_counts": torch.bincount(y_all, minlength=num_classes).tolist(),
        "predicted_counts": torch.bincount(pred, minlength=num_classes).tolist(),
        "initial_losses": {k: round(v, 5) for k, v in losses0.items()},
        "final_losses": {k: round(v, 5) for k, v in losses.items()},
        "teacher_acc": round(float((pred == y_all).float().mean()), 5),
        "teacher_confidence": round(float(probs.max(1).values.mean()), 5),
        "arch": getattr(model, "arch", type(model).__name__),
    }
    return PseudoSource(x=x_all, y=y_all, info=info)


def _loss_terms(teacher: nn.Module, hooks: list[BNStatsHook], x: torch.Tensor, xj: torch.Tensor,
                y: torch.Tensor, cfg: SynthesisConfig, bf16: bool = False
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if cfg.channels_last:
        xj = xj.contiguous(memory_format=torch.channels_last)
    with forward_autocast(bf16, xj.device):
        logits = teacher(xj)
    logits = logits.float()
    terms: dict[str, torch.Tensor] = {"ce": F.cross_entropy(logits, y)}
    if hooks:
        terms["bn"] = bn_matching_loss(hooks, cfg.first_bn_weight)
    terms["tv"] = total_variation(x)
    terms["l2"] = (x - 0.5).pow(2).mean()
    terms["div"] = prediction_entropy(logits)
    total = cfg.w_ce * terms["ce"] + cfg.w_tv * terms["tv"] + cfg.w_l2 * terms["l2"] - cfg.w_div * terms["div"]
    if hooks:
        total = total + cfg.w_bn * terms["bn"]
    terms["total"] = total
    return total, terms


def _lr_factor(step: int, steps: int, schedule: str) -> float:
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / steps))
    return 1.0 - step / steps


def _synthesize_batches(teacher, hooks, y_all, shape, cfg, g, dev, bar, bf16=False):
    n = len(y_all)
    c, h, w = shape
    r = min(cfg.param_res, h)
    out = torch.empty(n, c, h, w)
    sums: dict[str, float] = {}
    first: dict[str, float] = {}
    count = 0
    for start in range(0, n, cfg.batch_size):
        y = y_all[start:start + cfg.batch_size].to(dev)
        b = len(y)
        # logits of N(0, 1) noise: sigmoid gives a grey-ish random start in (0, 1)
        z = torch.randn(b, 1 if cfg.gray else c, r, r, generator=g).to(dev).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=cfg.lr, betas=(0.5, 0.99))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg.steps, cfg.schedule))
        ys = y if b > 1 else y.repeat(2)
        for step in range(cfg.steps):
            x = torch.sigmoid(z).expand(-1, c, -1, -1)
            if r != h:
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            if b == 1:  # BN batch statistics need two samples
                x = x.repeat(2, 1, 1, 1)
            xj = _jitter(x, g, cfg.jitter, cfg.flip)
            loss, terms = _loss_terms(teacher, hooks, x, xj, ys, cfg, bf16)
            if not torch.isfinite(loss):
                raise DomainlockError(f"synthesis loss became {float(loss)}; lower --lr (now {cfg.lr})")
            if step == 0:
                for k, v in terms.items():
                    first[k] = first.get(k, 0.0) + float(v.detach()) * b
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
        with torch.no_grad():
            x = torch.sigmoid(z).expand(-1, c, -1, -1)
            if r != h:
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            out[start:start + b] = x.cpu()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * b
        count += b
        if bar is not None:
            bar.set_postfix(ce=f"{float(terms['ce']):.3f}",
                            bn=f"{float(terms.get('bn', torch.zeros(()))):.3f}")
    return out, {k: v / max(1, count) for k, v in sums.items()}, {k: v / max(1, count) for k, v in first.items()}


def _synthesize_generator(teacher, hooks, y_all, shape, num_classes, cfg, g, dev, bar, bf16=False):
    n = len(y_all)
    cpu_state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))  # generator init is seeded
    gen = _Generator(cfg.z_dim, num_classes, shape, width=cfg.gen_width, gray=cfg.gray).to(dev)
    torch.random.set_rng_state(cpu_state)
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.gen_lr, betas=(0.5, 0.999))
    bs = cfg.batch_size
    terms: dict[str, torch.Tensor] = {}
    first: dict[str, float] = {}
    gen.train()
    for step in range(cfg.steps):
        y = (torch.arange(bs) % num_classes)[torch.randperm(bs, generator=g)].to(dev)
        zb = torch.randn(bs, cfg.z_dim, generator=g).to(dev)
        x = gen(zb, y)
        xj = _jitter(x, g, cfg.jitter, cfg.flip)
        loss, terms = _loss_terms(teacher, hooks, x, xj, y, cfg, bf16)
        if not torch.isfinite(loss):
            raise DomainlockError(f"generator loss became {float(loss)}; lower --lr (now {cfg.lr})")
        if step == 0:
            first = {k: float(v.detach()) for k, v in terms.items()}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(ce=f"{float(terms['ce']):.3f}",
                                bn=f"{float(terms.get('bn', torch.zeros(()))):.3f}")
    gen.eval()
    out = []
    with torch.no_grad():
        for start in range(0, n, 512):
            y = y_all[start:start + 512].to(dev)
            zb = torch.randn(len(y), cfg.z_dim, generator=g).to(dev)
            out.append(gen(zb, y).cpu())
    return torch.cat(out), {k: float(v.detach()) for k, v in terms.items()}, first
