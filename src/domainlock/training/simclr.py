"""Self-supervised source models: SimCLR pre-training of an encoder without labels, then a linear head.

The recipe (:func:`train_simclr_source`):

1. **Pre-train** the encoder of a registered architecture on the source *images only* (labels are never
   read): each image gives two views ``v1 = t1(x)``, ``v2 = t2(x)`` under independent random augmentations
   (``SimCLRConfig.augment``, default the ``strong`` preset; see :data:`SSL_AUGMENTS`); the encoder ``f`` and
   a projection MLP ``g`` (:class:`ProjectionHead`, used only here, never exported) map them to
   ``z = g(f(v))``, and the NT-Xent loss (:func:`nt_xent`) pulls the two views of an image together while
   pushing the other ``2N - 2`` views of the batch away.
2. **Linear probe** (:func:`linear_probe`): with the encoder frozen, fit the head (one ``Linear``) by
   L2-regularised multinomial logistic regression on the features of the source train images, clean plus
   ``probe_views`` copies under the ``default`` augmentation; the source labels are used here and only here.
   The L2 strength is chosen on the clean source val split.

The result is a plain :class:`~domainlock.models.Classifier` of the registered architecture (encoder +
linear head), saved with :func:`~domainlock.artifact.save_artifact`, so protection methods and attacks load
it like any supervised source model. Its card says ``training.recipe = "simclr"`` and
``training.encoder_saw_labels = false``.

Why the defaults are what they are (``strong`` views, a probe on 4 augmented views as well as the clean
images, 30 epochs): a probe fitted on augmented views transfers far better at no source cost, ``strong``
views beat the heavier SimCLR crop on MNIST-M, and longer pre-training buys direct transfer of the source
head. The measurements and the commands that regenerate them: ``docs/design/simclr.md``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..artifact import Artifact
from ..data.augment import AUGMENTS, Augment, Step
from ..errors import DomainlockError, TrainingDivergedError, check_choice, check_range
from ..evaluation import batched_outputs
from ..models import Classifier
from ..utils.layout import to_contiguous
from ..utils.runtime import resolve_device, seed_everything
from .loop import (
    OPTIMIZERS,
    SCHEDULES,
    _batches,
    _finish_source,
    _split_metrics,
    _start_source,
    check_loop_fields,
    class_names,
    make_optimizer,
    make_scheduler,
)

#: Extra view augmentations for SimCLR (label-free ops of :mod:`domainlock.data.augment`); a run may also use
#: any preset of :data:`~domainlock.data.augment.AUGMENTS`. SimCLR's three ingredients are a strong random
#: crop, strong colour distortion and blur. The default views are the ``strong`` preset: affine zoom/rotation/
#: shear and shifts (the crop; no flips, which change digits), random duotone colours, inverted polarity,
#: shuffled channels, texture backgrounds, grey (the colour distortion that lets an encoder pre-trained on grey
#: MNIST describe colour digits), blur and noise. ``simclr-crop`` is SimCLR's heavier crop (zoom up to 1.6x,
#: i.e. a crop of ~40 % of the area, and larger shifts) with similar colour settings: measured no better on
#: digits, worse on MNIST-M (docs/design/simclr.md); plausibly because a digit fills the frame, so a tight crop
#: cuts the strokes that tell digits apart.
SSL_AUGMENTS: dict[str, list[Step]] = {
    "simclr-crop": [
        ("affine", {"degrees": 15, "scale": (0.9, 1.6), "shear": 8, "translate": 0.1, "p": 0.9}),
        ("distractors", {"p": 0.3}),
        ("translate", {"pad": 3}),
        ("colorize", {"p": 0.8, "min_contrast": 0.25}),
        ("texture_blend", {"p": 0.3}),
        ("channel_shuffle", {"p": 0.3}),
        ("invert", {"p": 0.3}),
        ("brightness_contrast", {"brightness": 0.2, "contrast": (0.6, 1.4), "p": 0.5}),
        ("grayscale", {"p": 0.2}),
        ("gaussian_blur", {"sigma": (0.1, 1.5), "p": 0.5}),
        ("gaussian_noise", {"std": (0.0, 0.08), "p": 0.3}),
    ],
}

#: every augmentation a SimCLR run (or the source probe) may use: the presets of ``AUGMENTS`` and the above
VIEW_AUGMENTS: tuple[str, ...] = tuple(AUGMENTS) + tuple(a for a in SSL_AUGMENTS if a not in AUGMENTS)


def get_view_augment(name: str) -> Augment:
    """The :class:`~domainlock.data.augment.Augment` for a name in :data:`VIEW_AUGMENTS`."""
    check_choice("augment", name, VIEW_AUGMENTS)
    return Augment(AUGMENTS[name] if name in AUGMENTS else SSL_AUGMENTS[name], name=name)


@dataclass
class SimCLRConfig:
    """Hyper-parameters of SimCLR pre-training (labels are never used). The defaults are the recipe: 30 epochs
    of AdamW (lr 2e-3, cosine after a 1-epoch warm-up, weight decay 1e-4), batch 256 (510 negatives per
    anchor), tau 0.5, a 256-256-128 projection MLP, ``strong`` views. For digitnet on the 7,000 MNIST train
    images: ~8 CPU-minutes on one thread, 98 % MNIST test with the linear head, linear probes >= 93 % on
    UCI digits, SYN and MNIST-M (measurements: docs/design/simclr.md)."""

    epochs: int = field(default=30, metadata={"help": "pre-training epochs"})
    batch_size: int = field(default=256, metadata={"help": "images per batch (2x views; 2N-2 negatives each)"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate"})
    optimizer: str = field(default="adamw", metadata={"help": "optimizer (sgd: Nesterov momentum)",
                                                      "choices": list(OPTIMIZERS)})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum / Adam beta1"})
    weight_decay: float = field(default=1e-4, metadata={"help": "weight decay (decoupled for adamw)"})
    schedule: str = field(default="cosine", metadata={"help": "learning-rate schedule (per step)",
                                                      "choices": list(SCHEDULES)})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear warm-up epochs (cosine/constant)"})
    temperature: float = field(default=0.5, metadata={"help": "NT-Xent temperature tau"})
    proj_dim: int = field(default=128, metadata={"help": "output size of the projection MLP"})
    proj_hidden: int = field(default=256, metadata={"help": "hidden size of the projection MLP"})
    augment: str = field(default="strong", metadata={"help": "view augmentation", "choices": list(VIEW_AUGMENTS)})
    seed: int = field(default=0, metadata={"help": "random seed (init, data order, augmentation)"})
    grad_clip: float = field(default=0.0, metadata={"help": "clip the gradient norm to this (0: off)"})
    limit_train: int = field(default=0, metadata={"help": "use only the first N training images (0: all)"})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory format (CPU speed)"})

    def __post_init__(self) -> None:
        check_loop_fields(self)
        check_range("temperature", self.temperature, 0, math.inf, low_open=True)
        check_range("proj_dim", self.proj_dim, 1, 1 << 16)
        check_range("proj_hidden", self.proj_hidden, 1, 1 << 16)
        check_choice("augment", self.augment, VIEW_AUGMENTS)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ProbeConfig:
    """The linear probe: L2-regularised logistic regression on frozen features, solved by full-batch L-BFGS.

    The training features are those of the clean train images plus ``probe_views`` augmented copies of them
    (``probe_augment``); each strength in ``probe_l2`` is fitted and the one with the best accuracy on the
    clean val split is kept (ties: the stronger one)."""

    probe_l2: str = field(default="1e-5,1e-4,1e-3", metadata={
        "help": "comma-separated L2 strengths lambda on the probe weights, chosen on val"})
    probe_max_iter: int = field(default=300, metadata={"help": "L-BFGS iterations per L2 strength"})
    probe_views: int = field(default=4, metadata={
        "help": "augmented copies of the train images added to the clean ones (0: clean features only)"})
    probe_augment: str = field(default="default", metadata={
        "help": "augmentation of those copies", "choices": list(VIEW_AUGMENTS)})

    def __post_init__(self) -> None:
        self.l2_values()  # validates
        check_range("probe_max_iter", self.probe_max_iter, 1, 1_000_000)
        check_range("probe_views", self.probe_views, 0, 1000)
        check_choice("probe_augment", self.probe_augment, VIEW_AUGMENTS)

    def l2_values(self) -> list[float]:
        try:
            vals = [float(v) for v in str(self.probe_l2).split(",") if v.strip()]
        except ValueError:
            raise DomainlockError(f"probe_l2={self.probe_l2!r} is not a comma-separated list of numbers"
                                  ) from None
        if not vals:
            raise DomainlockError(f"probe_l2={self.probe_l2!r} names no L2 strength")
        for v in vals:
            check_range("probe_l2", v, 0, math.inf)
        return vals

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------ loss
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy), the SimCLR loss, for ``N`` positive pairs.

    ``z1[k]`` and ``z2[k]`` (``[N, D]``) are the projections of two views of image ``k``. With the ``2N``
    vectors ``u = [z1; z2]`` L2-normalised and ``s_ij = u_i . u_j / tau`` (cosine similarity over the
    temperature ``tau``), the loss of anchor ``i`` whose positive is ``p(i)`` (its other view) is

        l_i = -log( exp(s_{i,p(i)}) / sum_{j != i} exp(s_ij) )

    (the denominator runs over the positive and the ``2N - 2`` negatives), and the loss is the mean over all
    ``2N`` anchors, ``L = (1 / 2N) sum_i l_i``, so it is symmetric in the two views.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise DomainlockError(f"nt_xent needs two [N, D] tensors of the same shape, got {tuple(z1.shape)} "
                              f"and {tuple(z2.shape)}")
    n = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = u @ u.t() / temperature
    # an anchor is not its own negative: drop the diagonal from the softmax
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=sim.device), float("-inf"))
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    return F.cross_entropy(sim, pos)


class ProjectionHead(nn.Module):
    """SimCLR's projection MLP ``g``: ``Linear -> BN -> ReLU -> Linear`` (used only during pre-training)."""

    def __init__(self, in_dim: int, hidden: int = 256, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def _feature_dim(encoder: nn.Module) -> int:
    was = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            dev = next(encoder.parameters()).device
            return int(encoder(torch.zeros(2, 3, 32, 32, device=dev)).flatten(1).shape[1])
    finally:
        encoder.train(was)


# -------------------------------------------------------------------------------------------- pretrain
def pretrain_simclr(encoder: nn.Module, train: Any, cfg: SimCLRConfig | None = None, *,
                    device: str | torch.device = "auto", progress: bool = True, desc: str = "simclr"
                    ) -> dict[str, Any]:
    """Pre-train ``encoder`` in place with SimCLR on the images ``train.x`` (``train.y`` is never read).

    Returns a summary: ``history`` (per epoch: mean NT-Xent loss and ``pos_top1``, the fraction of anchors
    whose most similar other view is their positive), ``wall_s``, ``img_per_s`` (images, each seen as two
    views), ``device``, ``train_images``. A NaN/inf loss raises :class:`TrainingDivergedError`.
    """
    cfg = cfg or SimCLRConfig()
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    g_data = seed_everything(cfg.seed)
    g_aug = torch.Generator()
    g_aug.manual_seed(cfg.seed + 1_000_003)
    aug = get_view_augment(cfg.augment)
    x_all = train.x[:cfg.limit_train] if cfg.limit_train else train.x
    n = len(x_all)
    if n < 2:
        raise DomainlockError(f"SimCLR pre-training needs at least 2 images, got {n}")
    bs = min(cfg.batch_size, n)
    steps = max(1, n // bs)
    encoder.to(dev)
    proj = ProjectionHead(_feature_dim(encoder), cfg.proj_hidden, cfg.proj_dim).to(dev)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if cfg.channels_last:
        encoder.to(memory_format=fmt)
    params = [p for p in list(encoder.parameters()) + list(proj.parameters()) if p.requires_grad]
    opt = make_optimizer(params, cfg)  # type: ignore[arg-type]  (duck-typed on the shared fields)
    sched = make_scheduler(opt, cfg, steps)  # type: ignore[arg-type]
    history: list[dict[str, Any]] = []
    seen = 0
    t0, c0 = time.perf_counter(), time.process_time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs * steps, desc=desc, unit="step", dynamic_ncols=True, leave=False)
    try:
        encoder.train()
        proj.train()
        for epoch in range(1, cfg.epochs + 1):
            tot_loss = torch.zeros((), device=dev)
            hits = torch.zeros((), device=dev)
            count = 0
            for step, idx in enumerate(_batches(n, bs, g_data), start=1):
                xb = x_all[idx].to(dev, non_blocking=True)
                views = torch.cat([aug(xb, g_aug), aug(xb, g_aug)]).contiguous(memory_format=fmt)
                z = proj(encoder(views).flatten(1))  # one pass over both views: BN sees the whole 2N batch
                z1, z2 = z.chunk(2)
                loss = nt_xent(z1, z2, cfg.temperature)
                if not torch.isfinite(loss).item():
                    raise TrainingDivergedError(
                        f"SimCLR loss became {float(loss.detach())} at epoch {epoch} step {step}; lower --lr "
                        f"(now {cfg.lr}) or set --grad-clip; nothing was written")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                with torch.no_grad():
                    hits += _positive_top1(z1.detach(), z2.detach()) * len(idx)
                tot_loss += loss.detach() * len(idx)
                count += len(idx)
                seen += len(idx)
                if bar is not None:
                    bar.update(1)
            rec = {"epoch": epoch, "loss": round(float(tot_loss) / max(1, count), 5),
                   "pos_top1": round(float(hits) / max(1, count), 5)}
            history.append(rec)
            if bar is not None:
                bar.set_postfix({k: v for k, v in rec.items() if k != "epoch"})
    finally:
        if bar is not None:
            bar.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    to_contiguous(encoder)
    encoder.eval()
    return {"history": history, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "img_per_s": round(seen / max(wall, 1e-9), 1), "device": str(dev), "train_images": n}


def _positive_top1(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Fraction of the ``2N`` anchors whose nearest other view (cosine) is their positive."""
    n = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (u @ u.t()).fill_diagonal_(-2.0)
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    return (sim.argmax(1) == pos).float().mean()


# ----------------------------------------------------------------------------------------- linear probe
def extract_features(encoder: nn.Module, x: torch.Tensor, batch_size: int = 512,
                     device: str | torch.device | None = None) -> torch.Tensor:
    """Encoder features ``[N, D]`` (eval mode, on CPU) of images ``x``; the encoder's mode is restored."""
    out = batched_outputs(encoder, x, lambda f: f.flatten(1), batch_size, device)
    return torch.cat(out) if out else torch.empty(0, 0)


def _fit_logreg(f: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int) -> nn.Linear:
    """Multinomial logistic regression ``min_{W,b} mean_i CE(W f_i + b, y_i) + (l2 / 2) ||W||^2``
    (bias not penalised), full-batch L-BFGS from zero weights (deterministic; convex, so the start is moot)."""
    lin = nn.Linear(f.shape[1], num_classes)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(f), y) + 0.5 * l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return lin


def linear_probe(encoder: nn.Module, train: Any, val: Any = None, cfg: ProbeConfig | None = None, *,
                 device: str | torch.device | None = None, num_classes: int | None = None, seed: int = 0
                 ) -> tuple[nn.Linear, dict[str, Any]]:
    """Fit a linear classifier on the frozen ``encoder``'s features of ``train`` (the clean images plus
    ``cfg.probe_views`` augmented copies, drawn with ``seed``).

    Every L2 strength of ``cfg`` is fitted; the one with the best accuracy on ``val`` (on ``train`` when
    ``val`` is ``None``) is kept, ties going to the stronger regularisation. Returns ``(head, info)`` where
    ``head`` is an ``nn.Linear(D, num_classes)`` on CPU and ``info`` records the choice, the accuracy per
    strength and the wall time. The encoder is not changed.
    """
    cfg = cfg or ProbeConfig()
    t0 = time.perf_counter()
    c = int(num_classes or getattr(train, "num_classes", 0) or int(train.y.max()) + 1)
    f_tr = extract_features(encoder, train.x, device=device)
    y_tr = train.y.cpu().long()
    if cfg.probe_views:
        aug = get_view_augment(cfg.probe_augment)
        g = torch.Generator().manual_seed(seed + 2_000_003)
        copies = [extract_features(encoder, torch.cat([aug(train.x[i:i + 512], g)
                                                       for i in range(0, len(train.x), 512)]), device=device)
                  for _ in range(cfg.probe_views)]
        f_tr = torch.cat([f_tr, *copies])
        y_tr = y_tr.repeat(cfg.probe_views + 1)
    sel = val if val is not None else train
    f_sel = extract_features(encoder, sel.x, device=device) if val is not None else f_tr
    y_sel = sel.y.cpu().long()
    tried: dict[str, dict[str, float]] = {}
    best: tuple[float, float, nn.Linear] | None = None
    for lam in sorted(cfg.l2_values(), reverse=True):
        lin = _fit_logreg(f_tr, y_tr, c, lam, cfg.probe_max_iter)
        with torch.no_grad():
            acc_tr = float((lin(f_tr).argmax(1) == y_tr).float().mean())
            acc_sel = float((lin(f_sel).argmax(1) == y_sel).float().mean())
        tried[f"{lam:g}"] = {"train": round(acc_tr, 5), "select": round(acc_sel, 5)}
        if best is None or acc_sel > best[0]:
            best = (acc_sel, lam, lin)
    assert best is not None
    info = {"l2": best[1], "selected_on": "val" if val is not None else "train", "tried": tried,
            "feature_dim": int(f_tr.shape[1]), "train_features": int(len(y_tr)),
            "wall_s": round(time.perf_counter() - t0, 2)}
    return best[2], info


def _linear_of(head: nn.Module, arch: str) -> nn.Linear:
    """The head's one ``Linear`` (a head of only parameter-free layers around it, e.g. Dropout, is fine)."""
    lins = [m for m in head.modules() if isinstance(m, nn.Linear)]
    others = [m for m in head.modules() if not isinstance(m, (nn.Linear, nn.Sequential))
              and any(True for _ in m.parameters(recurse=False))]
    if len(lins) != 1 or others:
        raise DomainlockError(f"arch {arch!r} has a head that is not a single Linear layer; a SimCLR source "
                              "model needs a linear head (e.g. digitnet, resnet18)")
    return lins[0]


def set_linear_head(model: Classifier, lin: nn.Linear) -> None:
    """Copy a probe's weights into ``model``'s head (its one ``Linear``)."""
    target = _linear_of(model.head, getattr(model, "arch", "custom"))
    if target.weight.shape != lin.weight.shape:
        raise DomainlockError(f"probe head {tuple(lin.weight.shape)} does not fit the model's head "
                              f"{tuple(target.weight.shape)}")
    with torch.no_grad():
        target.weight.copy_(lin.weight.to(target.weight))
        if target.bias is not None:
            target.bias.copy_(lin.bias.to(target.bias))


# -------------------------------------------------------------------------------------- source models
def train_simclr_source(domain: str, arch: str = "digitnet", cfg: SimCLRConfig | None = None,
                        probe: ProbeConfig | None = None, out: str | os.PathLike | None = None, *,
                        device: str = "auto", data_root=None, overwrite: bool = False, progress: bool = True,
                        arch_kwargs: Mapping[str, Any] | None = None, splits: Mapping[str, Any] | None = None,
                        card: Mapping[str, Any] | None = None) -> Artifact:
    """SimCLR-pre-train ``arch``'s encoder on ``domain``'s train images (no labels), fit a linear head on
    its train labels (encoder frozen; L2 chosen on val), evaluate train/val/test, return the :class:`Artifact`.

    Same contract as :func:`~domainlock.training.train_source`: ``out`` is checked before any work and
    written atomically (refused if it exists unless ``overwrite``); ``splits`` replaces ``load_domain``;
    ``card`` adds sections. A NaN/inf loss raises :class:`TrainingDivergedError` and writes nothing.
    """
    cfg = cfg or SimCLRConfig()
    probe = probe or ProbeConfig()
    dev, data, model = _start_source("train_simclr_source", domain, arch, cfg.seed, out, device=device,
                                     data_root=data_root, overwrite=overwrite, arch_kwargs=arch_kwargs,
                                     splits=splits)
    _linear_of(model.head, arch)  # an MLP head fails now, not after pre-training
    train = data["train"]
    t0 = time.perf_counter()
    summary = pretrain_simclr(model.encoder, train, cfg, device=dev, progress=progress,
                              desc=f"simclr {arch} on {domain}")
    head, probe_info = linear_probe(model.encoder, train, data.get("val"), probe, device=dev,
                                    num_classes=model.num_classes, seed=cfg.seed)
    set_linear_head(model, head)
    model.to(dev).eval()
    acc, sizes = _split_metrics(model, data, dev)
    total = time.perf_counter() - t0
    info = {
        "domain": domain, "seed": cfg.seed, "classes": class_names(train, model),
        "hparams": {"recipe": "simclr", "simclr": cfg.to_dict(), "linear_probe": probe.to_dict()},
        "metrics": {"accuracy": acc, "n": sizes,
                    "ssl_history": summary["history"], "linear_probe": probe_info},
        "training": {"recipe": "simclr", "encoder_saw_labels": False,
                     "labels_used_by": "linear probe only (source train split; L2 chosen on val)",
                     "simclr": cfg.to_dict(), "linear_probe": probe.to_dict(),
                     "wall_s": round(total, 2), "pretrain_s": summary["wall_s"], "pretrain_cpu_s": summary["cpu_s"],
                     "probe_s": probe_info["wall_s"],
                     "img_per_s": summary["img_per_s"], "device": summary["device"],
                     "torch_threads": torch.get_num_threads(), "train_images": summary["train_images"],
                     "accuracy": acc, "augment": get_view_augment(cfg.augment).describe()},
    }
    return _finish_source(model, info, card, out, overwrite, dev)


def probe_domains(model: Classifier, domains: Sequence[str], cfg: ProbeConfig | None = None, *,
                  data_root=None, device: str | torch.device | None = None) -> dict[str, dict[str, float]]:
    """Per domain, the test accuracy of a linear probe on the frozen encoder fitted to that domain's own
    train labels (L2 chosen on its val): how well the encoder's features serve that domain (the
    "linear probing" attack on a target). The default ``cfg`` is the standard linear evaluation: clean
    features only (``probe_views=0``)."""
    from .. import data as _data

    cfg = cfg or ProbeConfig(probe_views=0)

    out: dict[str, dict[str, float]] = {}
    for d in domains:
        tr, va, te = (_data.load_domain(d, s, data_root) for s in ("train", "val", "test"))
        lin, info = linear_probe(model.encoder, tr, va, cfg, device=device, num_classes=tr.num_classes)
        f_te = extract_features(model.encoder, te.x, device=device)
        with torch.no_grad():
            acc = float((lin(f_te).argmax(1) == te.y.cpu()).float().mean())
        out[d] = {"accuracy": round(acc, 5), "l2": info["l2"], "wall_s": info["wall_s"]}
    return out
