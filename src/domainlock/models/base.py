"""The :class:`Classifier` contract (encoder + head), the architecture registry, and the adapters
that let a user's own ``nn.Module`` be used everywhere (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import DomainlockError, UnknownChoiceError

#: name -> builder ``f(num_classes=..., **kwargs) -> Classifier``
ARCHS: dict[str, Callable[..., Classifier]] = {}
#: registered archs that only an artifact's card can build (their arguments name a user's file): not offered
#: as a choice to ``train``, a suite's source training or an attacker's student (``arch_names()`` omits them)
UNLISTED: set[str] = set()

IDENTITY_MEAN = (0.0, 0.0, 0.0)
IDENTITY_STD = (1.0, 1.0, 1.0)


def register_arch(name: str, *, listed: bool = True
                  ) -> Callable[[Callable[..., Classifier]], Callable[..., Classifier]]:
    """Decorator: register a builder ``f(num_classes=10, **kwargs) -> Classifier`` under ``name``.

    ``listed=False``: the builder needs arguments only an artifact's card holds (``imported``); the arch
    loads from artifacts but is not offered as a choice (see :data:`UNLISTED`)."""

    def deco(fn: Callable[..., Classifier]) -> Callable[..., Classifier]:
        if name in ARCHS and ARCHS[name] is not fn:
            raise DomainlockError(f"arch {name!r} is already registered")
        ARCHS[name] = fn
        if not listed:
            UNLISTED.add(name)
        return fn

    return deco


def arch_names() -> list[str]:
    """The architectures a user can choose by name (those only an artifact can build are left out)."""
    return sorted(a for a in ARCHS if a not in UNLISTED)


def build_model(arch: str, num_classes: int = 10, **kwargs: Any) -> Classifier:
    """Build a registered architecture; ``kwargs`` (e.g. ``mean``/``std``, ``width``) go to its builder.

    The returned model records ``arch`` and ``arch_kwargs`` so :func:`domainlock.artifact.load_artifact`
    can rebuild it.
    """
    if arch not in ARCHS:
        raise UnknownChoiceError("arch", arch, arch_names())
    if int(num_classes) < 2:
        raise DomainlockError(f"num_classes={num_classes!r} is out of range; valid: an integer >= 2")
    model = ARCHS[arch](num_classes=int(num_classes), **kwargs)
    model.arch = arch
    model.arch_kwargs = _jsonable(kwargs)
    model.num_classes = int(num_classes)
    return model


def _jsonable(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in kwargs.items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel with the statistics kept as buffers (saved in the state dict).

    Every :class:`Classifier` starts with one, so every model takes images in ``[0, 1]``.
    """

    def __init__(self, mean: Sequence[float] = IDENTITY_MEAN, std: Sequence[float] = IDENTITY_STD):
        super().__init__()
        mean_l, std_l = [float(v) for v in mean], [float(v) for v in std]
        if len(mean_l) != len(std_l):
            raise DomainlockError(f"normalization mean has {len(mean_l)} values, std {len(std_l)}")
        if any(v <= 0 for v in std_l):
            raise DomainlockError(f"normalization std must be > 0, got {std_l}")
        mean_t = torch.tensor(mean_l, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std_l, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": [round(float(v), 6) for v in self.mean.flatten()],
                "std": [round(float(v), 6) for v in self.std.flatten()]}

    def extra_repr(self) -> str:
        d = self.as_dict()
        return f"mean={d['mean']}, std={d['std']}"


class Classifier(nn.Module):
    """``f = head ∘ encoder``: ``encoder`` maps ``[B, 3, H, W]`` images in ``[0, 1]`` to a flat feature
    vector ``[B, D]`` (its first module is a :class:`Normalize`), ``head`` maps features to logits."""

    def __init__(self, encoder: nn.Module, head: nn.Module, *, arch: str = "custom",
                 arch_kwargs: dict[str, Any] | None = None, num_classes: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    @property
    def normalization(self) -> dict[str, list[float]] | None:
        """The ``Normalize`` statistics at the front of the encoder (``None`` if there is none)."""
        for m in self.encoder.modules():
            if isinstance(m, Normalize):
                return m.as_dict()
        return None


def encoder_with_norm(mean: Sequence[float], std: Sequence[float], *body: nn.Module) -> nn.Sequential:
    return nn.Sequential(Normalize(mean, std), *body)


def wrap_model(module: nn.Module, encoder: str = "features", head: str = "classifier", flatten: bool = True,
               *, mean: Sequence[float] = IDENTITY_MEAN, std: Sequence[float] = IDENTITY_STD,
               num_classes: int | None = None, arch: str | None = None) -> Classifier:
    """Build a :class:`Classifier` from two named submodules of a user's ``module``.

    ``encoder``/``head`` are attribute paths (dots allowed, e.g. ``"backbone.body"``).
    The encoder becomes ``Sequential(Normalize(mean, std), module.<encoder>[, Flatten()])``; the default
    mean/std are the identity, i.e. the module is fed ``[0, 1]`` images exactly as given. The submodules are
    shared, not copied. Note: ``forward`` becomes ``head(flatten(encoder(x)))``, so a module whose own
    ``forward`` does extra work between the two (pooling, dropout) needs that work inside one of them.
    """
    enc = _get_attr(module, encoder, "encoder")
    hd = _get_attr(module, head, "head")
    body: list[nn.Module] = [enc]
    if flatten:
        body.append(nn.Flatten(1))
    name = arch or f"custom:{type(module).__name__}"
    return Classifier(encoder_with_norm(mean, std, *body), hd, arch=name, arch_kwargs={},
                      num_classes=num_classes)


def _get_attr(module: nn.Module, path: str, role: str) -> nn.Module:
    obj: Any = module
    for part in path.split("."):
        if not hasattr(obj, part):
            names = [n for n, _ in module.named_children()]
            raise DomainlockError(
                f"{type(module).__name__} has no submodule {path!r} to use as the {role}; "
                f"its children are: {', '.join(names) or '(none)'}")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        raise DomainlockError(f"{type(module).__name__}.{path} is a {type(obj).__name__}, not an nn.Module")
    return obj


SPLIT_HELP = (
    "name the split in one of three ways: (1) wrap it: domainlock.models.wrap_model(model, "
    "encoder='<attr>', head='<attr>'); (2) give the module attributes `encoder` and `head` with "
    "forward(x) == head(encoder(x)); (3) declare a class attribute "
    "`domainlock_split = ('<encoder attr>', '<head attr>')`")


def split_model(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Return ``(encoder, head)`` of a :class:`Classifier` or of any module that names its split.

    Accepted: a :class:`Classifier`; a module with attributes ``encoder`` and ``head``; a module declaring
    ``domainlock_split = ("attr_enc", "attr_head")``. Anything else raises a :class:`DomainlockError`
    that says how to name the split.
    """
    if isinstance(model, Classifier):
        return model.encoder, model.head
    declared = getattr(model, "domainlock_split", None)
    if declared is not None:
        if (not isinstance(declared, (tuple, list)) or len(declared) != 2
                or not all(isinstance(s, str) for s in declared)):
            raise DomainlockError(
                f"{type(model).__name__}.domainlock_split must be a pair of attribute names "
                f"('<encoder attr>', '<head attr>'), got {declared!r}")
        return _get_attr(model, declared[0], "encoder"), _get_attr(model, declared[1], "head")
    enc, hd = getattr(model, "encoder", None), getattr(model, "head", None)
    if isinstance(enc, nn.Module) and isinstance(hd, nn.Module):
        return enc, hd
    raise DomainlockError(f"cannot split {type(model).__name__} into encoder and head; {SPLIT_HELP}")


def as_classifier(model: nn.Module) -> Classifier:
    """``model`` itself if it is a :class:`Classifier`, else a Classifier sharing its split submodules.

    Only valid when ``model(x) == head(encoder(x))`` (true for the three accepted ways of naming it).
    """
    if isinstance(model, Classifier):
        return model
    enc, hd = split_model(model)
    return Classifier(enc, hd, arch=f"custom:{type(model).__name__}")


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def reinitialize(module: nn.Module, seed: int) -> nn.Module:
    """Re-draw every layer's parameters with their own ``reset_parameters`` after seeding torch's global RNG
    with ``seed`` (which stays seeded: wrap the call in ``torch.random.fork_rng`` to keep the caller's
    stream); BatchNorm running statistics are reset too. In place; returns ``module``."""
    torch.manual_seed(int(seed))
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module
