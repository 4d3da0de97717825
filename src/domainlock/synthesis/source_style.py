"""Target images moved into the source's style by model inversion: pseudo-source images whose content is real.

Model inversion from noise (:mod:`.inversion`) makes images the source model is sure of, but nothing ties
their content to real digits. A source-free owner also holds unlabelled target images; this module starts the
same inversion from them instead. Each image ``x_t`` keeps its content (the class the source model gives it,
``y = argmax f(x_t)``) while its pixels (``sigmoid(z)``, ``z`` started at ``logit(x_t)``, full resolution)
are optimized with Adam to match the BatchNorm statistics the source left in the model:

    L = w_ce · CE(f(x), y) + w_bn · Σ_l m_l (‖μ_l(x) − μ̂_l‖₂ + ‖σ²_l(x) − σ̂²_l‖₂) + w_tv · TV(x)

(the terms and ``m_l`` as in :mod:`.inversion`). The result is the target's digits in the source's
colours and textures. SF-MAP adds them to its pseudo-source (``pseudo_source_restyled``): the mask then has to
tell source from target by style, because the content of both sets is the same.

``start = "recoloured"`` starts from :func:`recoloured` images instead: the target's luminance mapped onto a
random background and foreground colour, so a colour source's style need not be grown out of black or grey
backgrounds. SF-MAP can also add recoloured copies that are not inverted (``pseudo_source_recoloured``,
saturation at least ``MIN_SATURATION``): flat colour backgrounds, which the inversion covers with texture.

Why the defaults (the measurements: docs/design/map.md, "SF-MAP with the target in the source's style"):

* ``steps = 200``, ``lr = 0.05``: on mnistm -> mnist, 400 steps at lr 0.1 keep 3.6 points more of the real
  source after SF-MAP (86.9% against 83.3%) at twice the cost; the other pairs were measured at the default.
* no jitter, no diversity term: the content is given by the real image; only the style has to move.
* ``gray`` (from ``synthesis_gray``): colour images match a grey-trained model's statistics as well as grey
  ones do, so an owner whose source is greyscale says so: on mnist -> mnistm SF-MAP then keeps 97.9% of the
  real MNIST instead of 81.2%.
* ``MIN_SATURATION = 0.3``: a recoloured grey image must not look like the grey target it came from.
* ``precision = fp32``, ``start = target``: what the bench tables were measured with; 100 bf16 steps from
  recoloured copies cost a third and keep about as much (docs/design/map.md, "a cheaper restyle").
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import colorize
from ..errors import DomainlockError, check_choice, check_range
from ..evaluation import predict
from ..utils.precision import PRECISIONS, forward_autocast, resolve_bf16
from .inversion import attach_bn_hooks, bn_layers, bn_matching_loss, total_variation

LOGIT_CLAMP = 0.02   #: pixels are clamped to [0.02, 0.98] before the logit, so the start is finite
STARTS = ("target", "recoloured")
MIN_SATURATION = 0.3
MIN_CONTRAST = 0.3   #: the luminance gap between the two colours (colorize's own floor)


def recoloured(x: torch.Tensor, generator: torch.Generator, min_saturation: float = 0.0) -> torch.Tensor:
    """Each image's luminance mapped onto a random background colour (luminance 0) and foreground colour
    (luminance 1), saturation in [``min_saturation``, 1]: a duotone of the same content (3-channel images)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise DomainlockError(f"recolouring needs [n, 3, H, W] images, got shape {tuple(x.shape)}")
    return colorize(x, generator, p=1.0, min_contrast=MIN_CONTRAST, saturation=(min_saturation, 1.0))


@dataclass
class SourceStyleConfig:
    """Hyper-parameters of :func:`source_styled` (why the defaults: the module docstring)."""

    steps: int = field(default=200, metadata={"help": "Adam steps per batch"})
    lr: float = field(default=0.05, metadata={"help": "Adam learning rate of the pixel logits"})
    batch_size: int = field(default=128, metadata={"help": "images optimized together (BN statistics are "
                                                   "matched per batch)"})
    gray: bool = field(default=False, metadata={"help": "grey images (a source domain in greyscale)"})
    precision: str = field(default="fp32", metadata={
        "help": "precision of the model's forward (utils.precision; BN statistics and losses stay float32)",
        "choices": list(PRECISIONS)})
    start: str = field(default="target", metadata={
        "help": "where the inversion starts: the target images, or recoloured copies of them (colour sources)",
        "choices": list(STARTS)})
    w_ce: float = field(default=1.0, metadata={"help": "weight of the cross-entropy to the kept class"})
    w_bn: float = field(default=1.0, metadata={"help": "weight of BN-statistics matching"})
    first_bn_weight: float = field(default=10.0, metadata={"help": "extra multiplier of the first BN layer"})
    w_tv: float = field(default=1e-3, metadata={"help": "weight of the total-variation prior"})

    def __post_init__(self) -> None:
        check_range("steps", self.steps, 0, 1 << 20)
        check_range("lr", self.lr, 0, math.inf, low_open=True)
        check_range("batch_size", self.batch_size, 2, 1 << 16)
        check_choice("start", self.start, STARTS)
        check_choice("precision", self.precision, PRECISIONS)
        if self.gray and self.start == "recoloured":
            raise DomainlockError("start='recoloured' needs a colour source; grey images (gray=True) start from "
                                  "the target, start='target'")
        for name in ("w_ce", "w_bn", "first_bn_weight", "w_tv"):
            check_range(name, getattr(self, name), 0, math.inf)


def source_styled(model: nn.Module, x: torch.Tensor, *, device: str | torch.device = "cpu",
                  cfg: SourceStyleConfig | None = None, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(images, classes, info)``: the images ``x`` [n, C, H, W] in [0, 1] moved into the style of the data
    ``model`` was trained on, and the classes the model gave the originals (kept by the inversion). The model is
    not modified; deterministic (``seed`` draws the colours of ``start="recoloured"``). ``info``: BN-statistics
    loss before and after, the share of images still predicted as their class, time. One-line error for a model
    without BatchNorm statistics."""
    cfg = cfg or SourceStyleConfig()
    dev = torch.device(device)
    model = copy.deepcopy(model).to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if not bn_layers(model):
        raise DomainlockError("pseudo_source_restyled needs a model with BatchNorm running statistics (they "
                              "are the source's style); use pseudo_source_restyled=0")
    y = predict(model, x, device=dev)
    if cfg.start == "recoloured":
        x = recoloured(x, torch.Generator().manual_seed(int(seed)))
    bf16 = resolve_bf16(cfg.precision, dev)
    hooks = attach_bn_hooks(model)
    out = torch.empty_like(x)
    before = after = 0.0
    t0 = time.perf_counter()
    try:
        for s in range(0, len(x), cfg.batch_size):
            xb, yb = x[s:s + cfg.batch_size].to(dev), y[s:s + cfg.batch_size].to(dev)
            if cfg.gray:
                xb = xb.mean(1, keepdim=True)
            z = torch.logit(xb.clamp(LOGIT_CLAMP, 1 - LOGIT_CLAMP)).requires_grad_(True)
            opt = torch.optim.Adam([z], lr=cfg.lr, betas=(0.5, 0.99))
            for step in range(cfg.steps + 1):
                img = torch.sigmoid(z).expand(-1, x.shape[1], -1, -1)
                with forward_autocast(bf16, dev):
                    logits = model(img.contiguous(memory_format=torch.channels_last))
                logits = logits.float()
                bn = bn_matching_loss(hooks, cfg.first_bn_weight)
                if step == 0:
                    before += float(bn.detach()) * len(yb)
                if step == cfg.steps:
                    after += float(bn.detach()) * len(yb)
                    break
                loss = cfg.w_bn * bn + cfg.w_ce * F.cross_entropy(logits, yb) + cfg.w_tv * total_variation(img)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            out[s:s + len(yb)] = torch.sigmoid(z).detach().expand(-1, x.shape[1], -1, -1).cpu()
    finally:
        for h in hooks:
            h.remove()
    out = (out.clamp(0, 1) * 255).round() / 255   # what a saved pseudo-source stores
    kept = float((predict(model, out, device=dev) == y).float().mean())
    n = max(1, len(x))
    info = {"n": int(len(x)), "config": asdict(cfg), "bn_loss_before": round(before / n, 5),
            "bn_loss_after": round(after / n, 5), "class_kept": round(kept, 5),
            "time_s": round(time.perf_counter() - t0, 3)}
    return out, y, info
