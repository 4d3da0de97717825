"""The ``imported`` architecture: a network the project did not build, rebuilt from the user's builder file.

``domainlock import`` (:mod:`domainlock.importing`) writes a standard artifact whose card says ``arch:
imported`` and whose ``arch_kwargs`` hold everything needed to rebuild the module: the builder file (absolute
path), its sha256, the callable's name and keyword arguments, the encoder and head attribute paths and the
input adaptation. ``build_model("imported", **arch_kwargs)`` (what loading an artifact does) re-hashes the
file first and refuses a missing or changed one; then it **executes that file** (the user's own code, which
the user named) and calls the callable. The file is run from the bytes that were hashed, so what runs is
what was checked; modules it imports are not hashed. It is run at most once per process and digest.

The rebuilt model is ``Classifier(encoder=Sequential(adapt, body, flatten), head)``, so the encoder/head
split every method and attack uses (``split_model``) is the user's own: ``body`` and ``head`` are the
submodules ``--encoder``/``--head`` name, and ``flatten`` makes the features ``[B, D]`` (a no-op when they
already are). The output is ``head(flatten(body(adapt(x))))``; the network's own ``forward`` is not used,
which is why ``domainlock import`` checks on a test input that the two agree.

``adapt`` (:class:`InputAdapter`) takes the project's images (RGB in ``[0, 1]`` at the domain's size) to what
the network expects, in this order: resize to ``input_size`` (bilinear, antialiased: the resize the project's
own domains use), grey by ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B`` (a grey image replicated to RGB, as
the digit domains store MNIST, comes back exactly), then per-channel ``(x - mean) / std`` (a
:class:`~domainlock.models.base.Normalize`, so the card records it as the model's ``normalization``). It has
no trainable parameters; its statistics are buffers saved with the weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BuilderError, DomainlockError
from .base import Classifier, Normalize, _get_attr, register_arch

ARCH = "imported"
#: ITU-R BT.601 luma weights (PIL's "L" conversion); they sum to 1, so replicated grey is unchanged
LUMA = (0.299, 0.587, 0.114)

_MODULES: dict[tuple[str, str], types.ModuleType] = {}


class InputAdapter(nn.Module):
    """Project images (``[B, 3, H, W]`` in ``[0, 1]``) -> the user's network input: resize, grey, normalize."""

    def __init__(self, input_size: int | None = None, grayscale: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.input_size = None if input_size is None else int(input_size)
        self.grayscale = bool(grayscale)
        channels = 1 if self.grayscale else 3
        self.norm = Normalize([0.0] * channels if mean is None else mean, [1.0] * channels if std is None else std)
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        if self.grayscale:
            x = (x * self.luma.to(x.dtype)).sum(1, keepdim=True)
        return self.norm(x)

    def describe(self, image_size: int | None = None) -> str:
        """E.g. ``32 px RGB in [0, 1] -> 28 px (bilinear, antialiased) -> grey (ITU-R 601 luma) -> (x - mean) / std
        with mean [0.1307], std [0.3081]`` (``image_size``: the project images' size, if known)."""
        steps = [f"{image_size} px RGB in [0, 1]" if image_size else "RGB in [0, 1] at the domain's size"]
        if self.input_size is not None and self.input_size != image_size:
            steps.append(f"{self.input_size} px (bilinear, antialiased)")
        if self.grayscale:
            steps.append("grey (ITU-R 601 luma)")
        d = self.norm.as_dict()
        if any(m != 0 for m in d["mean"]) or any(s != 1 for s in d["std"]):
            steps.append(f"(x - mean) / std with mean {d['mean']}, std {d['std']}")
        return " -> ".join(steps) if len(steps) > 1 else f"{steps[0]}, as it is"

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, grayscale={self.grayscale}"


# -------------------------------------------------------------------------------------- the builder file
def parse_builder(text: str) -> tuple[Path, str]:
    """``"path/file.py:make_model"`` -> ``(Path, "make_model")`` (one-line error otherwise)."""
    path, sep, name = str(text).rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise DomainlockError(f"--builder {text!r}: expected FILE.py:CALLABLE, e.g. models/mine.py:make_model")
    if not path.endswith(".py"):
        raise DomainlockError(f"--builder {text!r}: {path!r} is not a Python file (.py)")
    return Path(path), name


def builder_source(path: str | Path, want_sha256: str | None = None) -> tuple[bytes, str]:
    """The bytes of the builder file and their sha256; with ``want_sha256``, a one-line
    :class:`~domainlock.errors.BuilderError` naming the file and both digests when they differ."""
    p = Path(path)
    if not p.is_file():
        was = f" (recorded sha256 {want_sha256})" if want_sha256 else ""
        raise BuilderError(f"builder file {str(p)!r} is missing{was}; restore it, or import the model again")
    data = p.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if want_sha256 is not None and got != want_sha256:
        raise BuilderError(f"builder file {str(p)!r} changed since the model was imported: sha256 {got} now, "
                           f"{want_sha256} recorded; restore it, or import the model again (--overwrite)")
    return data, got


@contextlib.contextmanager
def _importable_siblings(folder: Path) -> Iterator[None]:
    """The builder's folder first on ``sys.path`` (as ``python file.py`` would), so its sibling modules import."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        if str(folder) in sys.path:
            sys.path.remove(str(folder))


def load_callable(path: str | Path, name: str, sha256: str | None = None) -> tuple[Callable[..., Any], str]:
    """Execute the builder file (once per process and digest) and return ``(its callable name, sha256)``."""
    p = Path(path).resolve()
    data, digest = builder_source(p, sha256)
    mod = _MODULES.get((str(p), digest))
    if mod is None:
        mod = types.ModuleType(f"domainlock_builder_{digest[:16]}")
        mod.__file__ = str(p)
        sys.modules[mod.__name__] = mod   # dataclasses and typing look modules up here
        try:
            with _importable_siblings(p.parent):
                exec(compile(data, str(p), "exec"), mod.__dict__)   # noqa: S102 - the user's own builder, by request
        except Exception as e:  # noqa: BLE001 - whatever the user's file raises
            sys.modules.pop(mod.__name__, None)
            raise BuilderError(f"builder file {str(p)!r} failed to run: {_one_line(e)}") from None
        _MODULES[str(p), digest] = mod
    fn = getattr(mod, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == mod.__name__)
        raise BuilderError(f"builder file {str(p)!r} defines no callable {name!r}; callables it defines: "
                           f"{', '.join(found) or '(none)'}")
    return fn, digest


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def call_builder(fn: Callable[..., Any], path: str | Path, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``fn(**kwargs)`` (the callable of the builder file ``path``), which must return an ``nn.Module``."""
    where = f"{path}:{getattr(fn, '__name__', 'callable')}"
    try:
        with _importable_siblings(Path(path).resolve().parent):
            net = fn(**dict(kwargs or {}))
    except Exception as e:  # noqa: BLE001
        raise BuilderError(f"{where} raised {_one_line(e)}") from None
    if not isinstance(net, nn.Module):
        raise BuilderError(f"{where} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name and p.kind != p.POSITIONAL_ONLY or p.kind == p.VAR_KEYWORD for p in params)


# --------------------------------------------------------------------------------------- the classifier
def assemble(net: nn.Module, *, encoder: str, head: str, flatten: bool = True, input_size: int | None = None,
             grayscale: bool = False, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             num_classes: int | None = None) -> Classifier:
    """The :class:`Classifier` over ``net``'s ``encoder`` and ``head`` submodules (shared, not copied)."""
    body = _get_attr(net, encoder, "encoder")
    hd = _get_attr(net, head, "head")
    if body is hd:
        raise DomainlockError(f"--encoder {encoder!r} and --head {head!r} name the same module")
    parts: list[tuple[str, nn.Module]] = [("adapt", InputAdapter(input_size, grayscale, mean, std)), ("body", body)]
    if flatten:
        parts.append(("flatten", nn.Flatten(1)))
    return Classifier(nn.Sequential(OrderedDict(parts)), hd, arch=ARCH, num_classes=num_classes)


@register_arch(ARCH, listed=False)
def imported(num_classes: int = 10, *, builder: str | None = None, builder_callable: str | None = None,
             builder_sha256: str | None = None, builder_kwargs: dict[str, Any] | None = None,
             encoder: str | None = None, head: str | None = None, flatten: bool = True,
             input_size: int | None = None, grayscale: bool = False, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None) -> Classifier:
    """Rebuild an imported model from its card's ``arch_kwargs`` (checks the builder's sha256 first)."""
    if not (builder and builder_callable and builder_sha256 and encoder and head):
        raise DomainlockError(f"arch {ARCH!r} is built from an artifact written by `domainlock import` (its card "
                              "names the builder file), not by name")
    fn, _ = load_callable(builder, builder_callable, builder_sha256)
    kwargs = dict(builder_kwargs or {})
    if "num_classes" in kwargs:   # a builder that takes it builds the head asked for (a scratch start's target)
        kwargs["num_classes"] = int(num_classes)
    net = call_builder(fn, builder, kwargs)
    return assemble(net, encoder=encoder, head=head, flatten=flatten, input_size=input_size,
                    grayscale=grayscale, mean=mean, std=std, num_classes=num_classes)
