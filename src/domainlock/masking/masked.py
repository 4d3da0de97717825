"""Learnable binary masks over a frozen model, trained with a straight-through estimator (MAP, METHODS.md
section 1).

Mechanism: :class:`MaskedModel` deep-copies the user's model, freezes every parameter of the copy, and
registers a ``torch.nn.utils.parametrize`` parametrization on each masked tensor (``weight``, optionally
``bias``). Every access to ``module.weight`` -- in the module's own forward, but also when other code
calls a sub-module directly (``masked.model.encoder(x)`` for features) or reads ``.weight`` -- returns
``W * 1[s >= tau]`` through :class:`_MaskedWeight`, an autograd function whose backward passes
``dL/dm = dL/dW_eff * W`` unchanged to the score ``s`` (the straight-through estimator). The frozen
``W`` gets no gradient.

Normalization layers with running statistics stay in eval mode: :meth:`MaskedModel.train` puts the rest
of the model in the requested mode (dropout follows it) but keeps every BatchNorm/InstanceNorm in
eval, and :meth:`MaskedModel.forward` re-asserts it, so mask learning always uses the source running
statistics and never updates them.

Tied weights: one ``nn.Parameter`` object used by several modules gets one score tensor, and every
module that holds it is parametrized with the same score, so the tie is kept in the masked model and
in :meth:`MaskedModel.fold`.

Scores are modified in place by optimizers (which bump ``tensor._version``); if you change scores
yourself, do it in place under ``torch.no_grad()`` (not through ``.data``) or through
:meth:`MaskedModel.set_masks_from` / :meth:`MaskedModel.reset_scores`, so the cached global
``max_sparsity`` threshold is refreshed.

Serialization: a parametrized module cannot be pickled whole (``torch.save(masked)``); save
``masked.state_dict()`` (rebuild with the same source model and config), ``masked.masks()``, or the
dense ``masked.fold()``.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize

from domainlock.errors import DomainlockError

from .config import MaskConfig


class _MaskedWeight(torch.autograd.Function):
    """``W * 1[s >= thr]`` forward; backward: ``dL/ds = dL/dm = grad * W`` (STE), ``dL/dW = grad * m``."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, score: torch.Tensor, threshold: Any) -> torch.Tensor:
        mask = score >= threshold
        ctx.save_for_backward(weight, mask)
        ctx.score_dtype = score.dtype
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        weight, mask = ctx.saved_tensors
        grad_w = grad * mask if ctx.needs_input_grad[0] else None
        grad_s = (grad * weight).to(ctx.score_dtype) if ctx.needs_input_grad[1] else None
        return grad_w, grad_s, None


def _cap_threshold(flat: torch.Tensor, threshold: float, max_sparsity: float) -> Any:
    """Threshold ``min(tau, q)`` with ``q`` the ``floor(p*n)+1``-th smallest score: at most ``p*n`` pruned."""
    n = flat.numel()
    k = math.floor(max_sparsity * n) + 1
    if k > n:
        return threshold
    q = flat.kthvalue(k).values
    return torch.clamp(q, max=threshold)


class _GlobalBudget:
    """Shared ``max_sparsity`` threshold over all scores, cached until any score changes in place."""

    def __init__(self, scores: list[nn.Parameter], threshold: float, max_sparsity: float):
        self.scores, self.threshold, self.max_sparsity = scores, threshold, max_sparsity
        self._key: tuple | None = None
        self._value: Any = threshold

    def value(self) -> Any:
        key = tuple((s._version, s.data_ptr()) for s in self.scores)
        if key != self._key:
            with torch.no_grad():
                flat = torch.cat([s.detach().reshape(-1) for s in self.scores])
                self._value = _cap_threshold(flat, self.threshold, self.max_sparsity)
            self._key = key
        return self._value


class _ScoreMask(nn.Module):
    """The parametrization registered on a masked tensor: ``W -> W * 1[s >= tau]`` with STE."""

    def __init__(self, score: nn.Parameter, threshold: float, max_sparsity: float,
                 budget: _GlobalBudget | None):
        super().__init__()
        self.score = score
        self.threshold = threshold
        self.max_sparsity = max_sparsity
        self._budget = budget

    def current_threshold(self) -> Any:
        if self._budget is not None:
            return self._budget.value()
        if self.max_sparsity < 1.0:  # per-layer budget, cached until the score changes in place
            key = (self.score._version, self.score.data_ptr())
            if key != getattr(self, "_cap_key", None):
                with torch.no_grad():
                    self._cap_value = _cap_threshold(self.score.detach().reshape(-1), self.threshold,
                                                     self.max_sparsity)
                self._cap_key = key
            return self._cap_value
        return self.threshold

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _MaskedWeight.apply(weight, self.score, self.current_threshold())

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, shape={tuple(self.score.shape)}"


@dataclass(frozen=True)
class LayerSparsity:
    """Mask statistics of one masked tensor (``zeros`` = pruned entries of the mask)."""

    name: str
    numel: int
    zeros: int
    fraction: float


@dataclass(frozen=True)
class SparsityReport:
    """Per-tensor and global mask sparsity.

    ``fraction`` = pruned / masked weights; ``model_fraction`` = pruned / all parameters of the model
    (masked or not). Counts entries of the mask: a source weight that was already 0 but is kept counts
    as kept.
    """

    layers: tuple[LayerSparsity, ...]
    numel: int
    zeros: int
    fraction: float
    model_numel: int

    @property
    def model_fraction(self) -> float:
        return self.zeros / self.model_numel if self.model_numel else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [asdict(layer) for layer in self.layers]
        d["model_fraction"] = self.model_fraction
        return d

    def __str__(self) -> str:
        width = max([len(layer.name) for layer in self.layers] + [5])
        lines = [f"{'layer':<{width}} {'numel':>10} {'pruned':>10} {'fraction':>8}"]
        lines += [f"{layer.name:<{width}} {layer.numel:>10} {layer.zeros:>10} {layer.fraction:>8.4f}"
                  for layer in self.layers]
        lines.append(f"{'total':<{width}} {self.numel:>10} {self.zeros:>10} {self.fraction:>8.4f}")
        lines.append(f"pruned share of all {self.model_numel} model parameters: {self.model_fraction:.4f}")
        return "\n".join(lines)


@dataclass
class _Entry:
    """One masked tensor (unique ``nn.Parameter``) and every (module, tensor name) that holds it."""

    name: str
    score: nn.Parameter
    parametrization: _ScoreMask
    holders: list[tuple[str, str]]


_DISPLAY = {"conv": "Conv", "linear": "Linear", "bn": "BatchNorm", "norm": "Norm"}


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, _ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _BatchNorm):
        return "bn"
    if isinstance(module, _NormBase | nn.GroupNorm | nn.LayerNorm):
        return "norm"
    return None


def _base_tensor(module: nn.Module, tname: str) -> object | None:
    """What is stored behind ``module.<tname>``: the ``nn.Parameter``, or, for a tensor the user already
    parametrized, its ``ParametrizationList`` (the identity used to detect tied weights)."""
    if parametrize.is_parametrized(module, tname):
        return module.parametrizations[tname]  # type: ignore[index,union-attr]
    return module._parameters.get(tname)


def _value(module: nn.Module, tname: str) -> torch.Tensor:
    """The (unmasked) tensor ``module.<tname>`` as the module computes with it."""
    with torch.no_grad():
        return getattr(module, tname).detach()


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    """True if ``name`` or one of its ancestors (``a``, ``a.b`` for ``a.b.c``) matches a pattern."""
    parts = name.split(".")
    candidates = [".".join(parts[: i + 1]) for i in range(len(parts))] if name else [""]
    return any(fnmatch.fnmatchcase(c, p) for c in candidates for p in patterns)


def _select(model: nn.Module, cfg: MaskConfig) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, tensor name) of every tensor to mask, in registration order."""
    names = [n for n, _ in model.named_modules()]
    for kind, patterns in (("include", cfg.include_patterns), ("exclude", cfg.exclude_patterns)):
        for p in patterns:
            if not any(_matches(n, (p,)) for n in names):
                shown = ", ".join(n for n in names if n)[:300]
                raise DomainlockError(f"{kind} pattern {p!r} matches no module of the model; module names: "
                                      f"{shown}")
    kinds = cfg.layer_kinds
    candidates = []
    for mname, module in model.named_modules():
        kind = _kind(module)
        if kind is None or kind not in kinds:
            continue
        w = _base_tensor(module, "weight")
        if w is None:
            continue  # e.g. a norm layer with affine=False
        if isinstance(w, nn.parameter.UninitializedParameter | nn.parameter.UninitializedBuffer):
            raise DomainlockError(f"layer {mname!r} is a lazy module that is not initialized yet; run one "
                                  "forward pass through the model before masking it")
        candidates.append((mname, module, kind))
    dense = [c for c in candidates if c[2] in ("conv", "linear")]
    dropped = set()
    if cfg.exclude_first and dense:
        dropped.add(dense[0][0])
    if cfg.exclude_last and dense:
        dropped.add(dense[-1][0])
    chosen = [c for c in candidates if c[0] not in dropped
              and (not cfg.include_patterns or _matches(c[0], cfg.include_patterns))
              and not _matches(c[0], cfg.exclude_patterns)]
    if not candidates:
        raise DomainlockError(
            f"model has no {'/'.join(_DISPLAY[k] for k in kinds)} layer to mask; MaskedModel masks the "
            f"weights of nn.Conv*/nn.Linear modules (and norm layers with include_bn or layers=...), and "
            f"this {type(model).__name__} has none")
    if not chosen:
        raise DomainlockError(
            f"all {len(candidates)} maskable layers were excluded (include={cfg.include!r}, "
            f"exclude={cfg.exclude!r}, exclude_first={cfg.exclude_first}, exclude_last={cfg.exclude_last})")
    targets = []
    for mname, module, _ in chosen:
        targets.append((mname, module, "weight"))
        if cfg.include_bias and _base_tensor(module, "bias") is not None:
            targets.append((mname, module, "bias"))
    return targets


class MaskedModel(nn.Module):
    """A frozen deep copy of ``model`` whose selected weights are multiplied by learnable binary masks.

    * ``forward`` computes the copy with ``W * 1[s >= tau]``; gradients reach only the scores
      (:meth:`score_parameters`), straight through the binarization.
    * The user's ``model`` is never modified; all parameters of the copy get ``requires_grad=False``.
    * :meth:`train` keeps BatchNorm/InstanceNorm layers in eval mode (source running statistics, never
      updated); other modules (dropout, ...) follow the mode. A new ``MaskedModel`` is in train mode.
    * At construction every score is above ``tau`` (``cfg.init_score``), so the masked model computes
      exactly the source model until the scores move.
    * The inner model is ``self.model``: call its sub-modules (``masked.model.encoder(x)``) to get
      masked features.

    Raises :class:`~domainlock.errors.DomainlockError` when the model has nothing to mask.
    """

    def __init__(self, model: nn.Module, cfg: MaskConfig | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise DomainlockError(f"MaskedModel needs a torch.nn.Module, got {type(model).__name__}")
        self.cfg = cfg if cfg is not None else MaskConfig()
        try:
            inner = copy.deepcopy(model)
        except Exception as e:  # user models can fail to copy in many ways
            raise DomainlockError(f"cannot deep-copy the {type(model).__name__} to mask it: {e}") from e
        targets = _select(inner, self.cfg)
        self._source_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        self._model_numel = sum(p.numel() for p in model.parameters())
        self._param_order = {n: list(m._parameters) for n, m in inner.named_modules()}
        for p in inner.parameters():
            p.requires_grad_(False)
        for module in inner.modules():
            if parametrize.is_parametrized(module):
                # The copy shares the user's parametrized class; registering our parametrizations would
                # add properties to that shared class and change the user's model. Give it its own.
                cls = module.__class__
                body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
                module.__class__ = type(cls.__name__, cls.__bases__, body)

        # Every (module, tensor name) in the copy that holds each stored tensor, to keep ties.
        holders: dict[int, list[tuple[str, nn.Module, str]]] = {}
        for mname, module in inner.named_modules():
            for tname in list(module._parameters) + (list(module.parametrizations)
                                                     if parametrize.is_parametrized(module) else []):
                t = _base_tensor(module, tname)
                if t is not None:
                    holders.setdefault(id(t), []).append((mname, module, tname))

        cfg_ = self.cfg
        plans: list[tuple[str, torch.Tensor, list[tuple[str, nn.Module, str]]]] = []
        seen: set[int] = set()
        for mname, module, tname in targets:
            base = _base_tensor(module, tname)
            if id(base) in seen:
                continue
            seen.add(id(base))
            plans.append((f"{mname}.{tname}" if mname else tname, _value(module, tname), holders[id(base)]))

        scores = []
        for _, base, _ in plans:
            dtype = torch.promote_types(base.dtype, torch.float32)
            scores.append(nn.Parameter(torch.empty(base.shape, dtype=dtype, device=base.device)))
        budget = None
        if cfg_.max_sparsity < 1.0 and cfg_.scope == "global":
            budget = _GlobalBudget(scores, cfg_.threshold, cfg_.max_sparsity)
        self._entries: list[_Entry] = []
        for (name, base, hold), score in zip(plans, scores, strict=True):
            self._init_score(score, base)
            par = _ScoreMask(score, cfg_.threshold, cfg_.max_sparsity if budget is None else 1.0, budget)
            for _, module, tname in hold:
                parametrize.register_parametrization(module, tname, par)
            self._entries.append(_Entry(name, score, par, [(m, t) for m, _, t in hold]))
        self.model = inner
        self._norms = [m for m in inner.modules() if isinstance(m, _NormBase)]
        self.train(True)

    # ------------------------------------------------------------------ modes and forward
    def train(self, mode: bool = True) -> MaskedModel:
        """Set ``mode`` on every module except norm layers with running statistics, which stay in eval."""
        super().train(mode)
        for m in self._norms:
            m.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        for m in self._norms:  # re-assert in case someone called self.model.train() directly
            if m.training:
                m.eval()
        return self.model(*args, **kwargs)

    # ------------------------------------------------------------------ scores
    def _init_score(self, score: torch.Tensor, base: torch.Tensor) -> None:
        cfg = self.cfg
        with torch.no_grad():
            if cfg.init_mode == "magnitude":
                a = base.detach().abs().to(score.dtype)
                mean = a.mean()
                if float(mean) > 0:
                    score.copy_(cfg.threshold + (cfg.init_score - cfg.threshold) * a / mean)
                    return
            score.fill_(cfg.init_score)

    def score_parameters(self) -> list[nn.Parameter]:
        """The learnable scores (one per masked tensor; tied weights share one): give these to the
        optimizer."""
        return [e.score for e in self._entries]

    def named_scores(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(masked tensor name, score)`` pairs, names as in the source model (``"encoder.0.weight"``)."""
        for e in self._entries:
            yield e.name, e.score

    @property
    def masked_names(self) -> list[str]:
        """Names (in the source model) of the masked tensors."""
        return [e.name for e in self._entries]

    def reset_scores(self) -> None:
        """Put every score back to its initial value (mask all ones, as at construction)."""
        for e in self._entries:
            with torch.no_grad():
                e.score.fill_(self.cfg.init_score)  # mask all ones: the module now computes unmasked W
            if self.cfg.init_mode == "magnitude":
                mname, tname = e.holders[0]
                self._init_score(e.score, _value(self.model.get_submodule(mname), tname))

    def set_masks_from(self, masks: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Set the scores so that ``masks()`` equals ``masks`` (bool or 0/1 tensors keyed like
        :meth:`masks`): kept entries get ``init_score``, pruned ones ``tau - (init_score - tau)``.

        ``strict``: every masked tensor must be given (otherwise missing ones are left as they are).
        Unknown names or wrong shapes raise :class:`DomainlockError`. With ``max_sparsity`` < 1 the
        budget still applies on top of the given masks.
        """
        by_name = {e.name: e for e in self._entries}
        unknown = sorted(set(masks) - set(by_name))
        if unknown:
            raise DomainlockError(f"unknown masked tensor(s) {', '.join(unknown)}; masked tensors: "
                                  f"{', '.join(by_name)}")
        missing = sorted(set(by_name) - set(masks))
        if strict and missing:
            raise DomainlockError(f"masks missing for {', '.join(missing)} (pass strict=False to leave "
                                  "them unchanged)")
        cfg = self.cfg
        low = cfg.threshold - (cfg.init_score - cfg.threshold)
        checked = []
        for name, m in masks.items():  # validate everything before changing anything
            score = by_name[name].score
            m = torch.as_tensor(m, device=score.device)
            if tuple(m.shape) != tuple(score.shape):
                raise DomainlockError(f"mask for {name} has shape {tuple(m.shape)}, expected "
                                      f"{tuple(score.shape)}")
            checked.append((score, m.bool()))
        with torch.no_grad():
            for score, m in checked:
                score.copy_(torch.where(m, torch.full_like(score, cfg.init_score),
                                        torch.full_like(score, low)))

    # ------------------------------------------------------------------ reports
    def masks(self) -> dict[str, torch.Tensor]:
        """Current binary masks, ``name -> bool tensor`` (``True`` = kept), names as in the source model."""
        with torch.no_grad():
            return {e.name: e.score.detach() >= e.parametrization.current_threshold()
                    for e in self._entries}

    def sparsity(self) -> SparsityReport:
        """Pruned counts per masked tensor and overall (see :class:`SparsityReport`)."""
        layers = []
        for name, m in self.masks().items():
            n, z = m.numel(), int((~m).sum())
            layers.append(LayerSparsity(name, n, z, z / n if n else 0.0))
        numel = sum(layer.numel for layer in layers)
        zeros = sum(layer.zeros for layer in layers)
        return SparsityReport(tuple(layers), numel, zeros, zeros / numel if numel else 0.0,
                              self._model_numel)

    def score_penalty(self) -> torch.Tensor:
        """The L1 pull ``cfg.l1 * density`` of the mask, differentiable w.r.t. the scores (STE).

        ``scope="global"``: density over all masked weights; ``"per-layer"``: mean of per-tensor
        densities. Returns a zero tensor when ``cfg.l1 == 0``. Add it to the mask-learning loss.
        """
        first = self._entries[0].score
        if self.cfg.l1 == 0:
            return first.new_zeros(())
        kept, dens = [], []
        for e in self._entries:
            ones = torch.ones_like(e.score)
            m = _MaskedWeight.apply(ones, e.score, e.parametrization.current_threshold())
            kept.append(m.sum())
            dens.append(m.mean())
        if self.cfg.scope == "global":
            density = torch.stack(kept).sum() / sum(e.score.numel() for e in self._entries)
        else:
            density = torch.stack(dens).mean()
        return self.cfg.l1 * density

    # ------------------------------------------------------------------ folding
    def fold(self) -> nn.Module:
        """A plain dense copy of the source model with ``W <- W * m`` folded in.

        Same class as the user's model (and same classes for every sub-module), no parametrization or
        score left, tied weights stay tied, ``requires_grad`` as in the user's model; returned in eval
        mode (call ``.train()`` to fine-tune). In eval mode its outputs equal the masked model's.
        If a masked tensor already carried a user parametrization, it is flattened into a plain weight.
        """
        # Not parametrize.remove_parametrizations: it deletes the property from the module's class,
        # which the deep copy shares with self.model. Flatten each masked module by hand instead.
        with torch.no_grad():
            folded = copy.deepcopy(self.model)
            names = list(dict.fromkeys(mname for e in self._entries for mname, _ in e.holders))
            values = {}
            for mname in names:
                module = folded.get_submodule(mname)
                for tname in module.parametrizations:
                    values[(mname, tname)] = getattr(module, tname).detach()
            for mname in names:
                module = folded.get_submodule(mname)
                for tname, plist in module.parametrizations.items():
                    value = values[(mname, tname)]
                    if plist.is_tensor and len(plist) == 1 and isinstance(plist.original, nn.Parameter):
                        param = plist.original  # keep the object: ties between modules survive
                        param.copy_(value)
                    else:  # a user parametrization under ours: flattened into a plain weight
                        param = nn.Parameter(value.clone())
                    module._parameters[tname] = param
                del module._modules["parametrizations"]
                module.__class__ = module.__class__.__bases__[0]
                order = self._param_order.get(mname, [])
                for k in [k for k in order if k in module._parameters] + [
                        k for k in list(module._parameters) if k not in order]:
                    module._parameters[k] = module._parameters.pop(k)
        for name, p in folded.named_parameters():
            p.requires_grad_(self._source_requires_grad.get(name, True))
        return folded.eval()

    def extra_repr(self) -> str:
        return (f"masked_tensors={len(self._entries)}, threshold={self.cfg.threshold}, "
                f"scope={self.cfg.scope!r}, max_sparsity={self.cfg.max_sparsity}")


def apply_masks(model: nn.Module, cfg: MaskConfig | None = None, **overrides: Any) -> MaskedModel:
    """``MaskedModel(model, cfg)``, with ``MaskConfig`` fields optionally overridden by keyword."""
    if overrides:
        base = asdict(cfg) if cfg is not None else {}
        cfg = MaskConfig(**{**base, **overrides})
    return MaskedModel(model, cfg)
