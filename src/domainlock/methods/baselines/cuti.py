"""CUTI-domain -- a compact un-transferable isolation domain (Wang et al., CVPR 2023; METHODS.md §3), a
baseline the seed papers beat.

Objective: the loop of :mod:`domainlock.methods.baselines.nontransfer` without the MMD factor
(``alpha = 0.1``, ``beta = 1`` by default, as the reference code) on a batch [x_s ; x_o] of source images
and "other" images (real target, or neighbourhood data), plus the isolation domain: while training, a share
``cuti_share`` of the other rows of every batch is **re-styled after each encoder block** by
:class:`CUTIRestyle` (AdaIN): with per-instance, per-channel statistics mu(h), sigma(h) over the spatial
positions of a block's output h,

    restyle(h_c; mu_d, sigma_d) = sigma_d * (h_c - mu(h_c)) / sigma(h_c) + mu_d

keeps the content row's normalized pattern and gives it the donor statistics (mu_d, sigma_d). The re-styled
rows form the CUTI domain; their predictions are pushed away from their labels like the rest of the other
half, so the model learns to fail on anything whose style is not the authorized one.

* ``style="source"``: the donor of other row j is source row j of the same batch (its instance statistics
  at that block): target content in the authorized style (the target-specified paper setting).
* ``style="random"``: mu_d ~ N(0, 1), sigma_d = |1 + N(0, 1)| per instance and channel (the reference
  code's target-free draw, with the std kept positive), in feature units.
* ``style="auto"`` (default): source for ``variant=target``, random for ``variant=target-free``.

Variants: ``target`` (target-specified: the other half is real labelled target data) and ``target-free``
(neighbourhood data generated from the source, as NTL's source-only variant; never reads the target:
``protect()`` refuses target reads and uses ``--target`` for evaluation only).

The re-styling module is an ``nn.Module`` attached with forward hooks only for the duration of training
(:func:`restyling`) and removed afterwards, so the exported model is the same plain classifier class with
no extra module, parameter or hook. Hook points (``restyle_layers="auto"``): every ``MaxPool2d`` of the
encoder (digitnet, VGG: the end of each conv block) or, when there is none, every ``nn.Sequential`` child
of the encoder (ResNet stages); outputs with fewer than 2 spatial positions are left alone (no spatial
statistics). Explicit fnmatch patterns of module names may be given instead.

Reconstruction choices beyond the shared loop's (:mod:`domainlock.methods.baselines.nontransfer`): the reference
code re-styles the *whole* other half on every second iteration and, in the target-specified case,
multiplies the target features by sigmoid(random 1x1 conv of the source std) and adds sigmoid(... of the
source mean) without normalizing them first; here a fixed share of the other rows is re-styled at every
step with exact AdaIN, which is what METHODS.md describes.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import DomainlockError, check_choice, check_finite, check_range
from ...models import split_model
from ..base import DataAccess, MethodResult, RunContext
from ..registry import register_method
from .nontransfer import LoopSpec, NonTransferConfig, NonTransferMethod, finetune_non_transferable
from .ntl import other_data, source_data, validate_common

CUTI_VARIANTS = ("target", "target-free")
STYLES = ("auto", "source", "random")

# --------------------------------------------------------------------------------- the re-styling module


def instance_stats(h: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-instance, per-channel mean and std over the spatial positions of ``h`` (``[B, C, *spatial]``):
    ``mu = mean(h)``, ``sigma = sqrt(var(h) + eps)`` (biased variance), both shaped ``[B, C, 1, ...]``."""
    if h.dim() < 3:
        raise DomainlockError(f"instance statistics need [B, C, spatial...] features, got {tuple(h.shape)}")
    dims = tuple(range(2, h.dim()))
    mu = h.mean(dims, keepdim=True)
    sd = (h.var(dims, keepdim=True, unbiased=False) + eps).sqrt()
    return mu, sd


def restyle(content: torch.Tensor, donor_mean: torch.Tensor, donor_std: torch.Tensor, eps: float = 1e-5
            ) -> torch.Tensor:
    """AdaIN: ``donor_std * (content - mu(content)) / sigma(content) + donor_mean`` per instance and channel.

    ``donor_mean``/``donor_std`` broadcast against ``[B, C, 1, ...]``. With ``eps = 0`` the output has exactly
    the donor's per-channel mean and std (up to rounding) and the content's normalized pattern."""
    mu, sd = instance_stats(content, eps)
    return (content - mu) / sd * donor_std + donor_mean


class CUTIRestyle(nn.Module):
    """Re-styles chosen rows of a feature batch (the CUTI domain); identity in eval mode or with no rows set.

    Before each forward pass the training loop calls :meth:`set_rows` with the batch layout: the first
    ``n_source`` rows are source images (the donors for ``style="source"``), and ``rows`` indexes the rows to
    re-style (each gets the statistics of source row ``donors[k]``; for ``style="random"`` random ones).
    Used as a forward hook on encoder blocks (:func:`restyling`); it has no parameters.
    """

    def __init__(self, style: str = "source", eps: float = 1e-5, generator: torch.Generator | None = None):
        super().__init__()
        check_choice("style", style, ("source", "random"))
        self.style, self.eps, self.generator = style, eps, generator
        self.rows: torch.Tensor | None = None
        self.donors: torch.Tensor | None = None
        self.calls = 0

    def set_rows(self, rows: torch.Tensor | None, donors: torch.Tensor | None = None) -> None:
        self.rows = None if rows is None or len(rows) == 0 else rows.long()
        self.donors = None if donors is None else donors.long()
        if self.rows is not None and self.style == "source":
            if self.donors is None or len(self.donors) != len(self.rows):
                raise DomainlockError("style 'source' needs one donor row per re-styled row")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rows is None or h.dim() < 3 or h[0, 0].numel() < 2:
            return h
        self.calls += 1
        rows = self.rows.to(h.device)
        content = h[rows]
        if self.style == "source":
            mu_d, sd_d = instance_stats(h[self.donors.to(h.device)], self.eps)
        else:
            shape = (len(rows), h.shape[1]) + (1,) * (h.dim() - 2)
            dev = self.generator.device if self.generator is not None else torch.device("cpu")
            mu_d = torch.randn(shape, generator=self.generator, device=dev).to(h.device, h.dtype)
            sd_d = (1 + torch.randn(shape, generator=self.generator, device=dev)).abs().clamp_min(0.05)
            sd_d = sd_d.to(h.device, h.dtype)
        out = h.clone()
        out[rows] = restyle(content, mu_d, sd_d, self.eps)
        return out

    def extra_repr(self) -> str:
        return f"style={self.style!r}, eps={self.eps}"


def restyle_points(model: nn.Module, layers: str = "auto", flag: str = "restyle_layers"
                   ) -> list[tuple[str, nn.Module]]:
    """The encoder modules after which the re-styling runs (qualified names in ``model``); ``flag`` is the
    caller's hyper-parameter that ``layers`` came from, named in the errors."""
    encoder, _ = split_model(model)
    enc_prefix = next((n for n, m in model.named_modules() if m is encoder), "")
    named = [(f"{enc_prefix}.{n}" if enc_prefix else n, m) for n, m in encoder.named_modules() if n]
    if layers.strip() in ("", "auto"):
        pts = [(n, m) for n, m in named if isinstance(m, nn.MaxPool2d)]
        if not pts:
            pts = [(f"{enc_prefix}.{n}" if enc_prefix else n, m) for n, m in encoder.named_children()
                   if isinstance(m, nn.Sequential)]
        if not pts:
            raise DomainlockError(f"no block boundary found in the encoder of {type(model).__name__} (no "
                                  f"MaxPool2d and no Sequential stage); name them with --{flag.replace('_', '-')}")
        return pts
    pats = [p.strip() for p in layers.split(",") if p.strip()]
    pts = [(n, m) for n, m in named if any(fnmatch.fnmatchcase(n, p) for p in pats)]
    if not pts:
        raise DomainlockError(f"{flag}={layers!r} matches no encoder module; encoder modules are: "
                              + ", ".join(n for n, _ in named[:40]) + (" ..." if len(named) > 40 else ""))
    return pts


@contextlib.contextmanager
def restyling(modules: Sequence[nn.Module], restyler: CUTIRestyle) -> Iterator[CUTIRestyle]:
    """Attach ``restyler`` after each of ``modules`` (forward hooks; active only while the hooked module is in
    training mode, so evaluations inside the training loop see plain features); detach on exit, whatever
    happens."""
    def hook(module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        return restyler(out) if module.training else out

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield restyler
    finally:
        for h in handles:
            h.remove()
        restyler.set_rows(None)


# ------------------------------------------------------------------------------------------ the method


@dataclass
class CUTIConfig(NonTransferConfig):
    """Hyper-parameters of CUTI-domain (flat: every field is a CLI flag)."""

    variant: str = field(default="target", metadata={
        "help": "target: real labelled target data (target-specified CUTI-domain); target-free: neighbourhood "
                "data generated from the source (never reads the target; --target is then used for evaluation "
                "only)", "choices": CUTI_VARIANTS})
    style: str = field(default="auto", metadata={
        "help": "donor statistics of the re-styled rows: source (the paired source image's), random, or auto "
                "(source for variant target, random for target-free)", "choices": STYLES})
    cuti_share: float = field(default=0.5, metadata={
        "help": "share of the target/neighbourhood rows of each batch re-styled after every encoder block "
                "(the CUTI domain), in [0, 1]"})
    restyle_layers: str = field(default="auto", metadata={
        "help": "encoder modules after which features are re-styled: auto (every MaxPool2d, else every "
                "Sequential stage) or comma-separated fnmatch patterns of module names"})

    def resolved_style(self) -> str:
        if self.style != "auto":
            return self.style
        return "source" if self.variant == "target" else "random"


def validate_cuti(hp: CUTIConfig) -> None:
    if not isinstance(hp, CUTIConfig):
        raise DomainlockError(f"CUTI hyper-parameters must be a CUTIConfig, got {type(hp).__name__}")
    validate_common(hp, CUTI_VARIANTS, "target-free")
    check_choice("style", hp.style, STYLES)
    check_range("cuti_share", check_finite("cuti_share", hp.cuti_share), 0.0, 1.0)
    if not isinstance(hp.restyle_layers, str):
        raise DomainlockError(f"restyle_layers={hp.restyle_layers!r} must be 'auto' or comma-separated patterns")


@register_method
class CUTI(NonTransferMethod):
    """CUTI-domain: the shared loop without the MMD factor, with a re-styled isolation domain during training."""

    name = "cuti"
    settings = ("source-available",)
    Hparams = CUTIConfig
    summary = "compact un-transferable isolation domain (baseline): NTL's KL objective plus feature re-styling"

    def validate(self, hp: Any, setting: str) -> None:
        validate_cuti(hp)

    def run(self, model: nn.Module, access: DataAccess, hp: CUTIConfig, ctx: RunContext) -> MethodResult:
        points = restyle_points(model, hp.restyle_layers)   # fail before reading data
        src, val = source_data(access, hp, ctx)
        other, oinfo = other_data(access, hp, ctx, src, self.reads_target(hp))
        style = hp.resolved_style()
        g = ctx.generator(61)
        restyler = CUTIRestyle(style, generator=g)
        restyler.train()

        def before_step(step: int, ns: int, no: int) -> None:
            k = int(round(hp.cuti_share * no))
            if k == 0:
                restyler.set_rows(None)
                return
            pick = torch.randperm(no, generator=g)[:k]
            donors = pick % ns if style == "source" else None   # other row j takes source row j's style
            restyler.set_rows(ns + pick, donors)

        spec = LoopSpec(alpha=hp.alpha, beta=hp.beta, steps=hp.steps, batch_size=hp.batch_size, lr=hp.lr,
                        weight_decay=hp.weight_decay, bn=hp.bn, use_mmd=False)
        with restyling([m for _, m in points], restyler):
            model, info = finetune_non_transferable(model, src.x, src.y, other, spec, ctx, val=val,
                                                    before_step=before_step, desc=f"cuti/{hp.variant}")
        info.update(oinfo)
        info.update({"variant": hp.variant, "style": style, "cuti_share": hp.cuti_share,
                     "restyle_layers": [n for n, _ in points], "restyle_calls": restyler.calls})
        return MethodResult(model, info)


__all__ = ["CUTI", "CUTIConfig", "CUTIRestyle", "CUTI_VARIANTS", "STYLES", "instance_stats", "restyle",
           "restyle_points", "restyling", "validate_cuti"]
