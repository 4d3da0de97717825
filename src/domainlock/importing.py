"""``domainlock import``: a network the project did not build, from the user's builder file and weights, as a
standard artifact (arch ``imported``, see :mod:`domainlock.models.imported`) that every verb takes.

What runs: the builder file is the user's own Python code and **is executed** (here and whenever the
artifact loads; its sha256 is checked first each time). The weights are never unpickled: ``.safetensors``
is read with safetensors, ``.pt``/``.pth`` with ``torch.load(..., weights_only=True)``, which accepts
tensors in plain containers only, so a file holding a pickled model (``torch.save(model)``) is refused
before any of its objects are created. A checkpoint ``{"state_dict": {...}, ...}`` is accepted (the state
dict under one of :data:`NESTED_KEYS`), and a ``module.`` prefix (``DataParallel``) is removed, each with a
note.

The checks, each a one-line :class:`~domainlock.errors.DomainlockError` before anything is written: the
builder spec, files and flags (``--mean``/``--std`` need one value per channel the network takes: 1 with
``--grayscale``, else 3); the state dict matches the built network exactly (first missing, unexpected and
mis-shaped keys named); ``--encoder``/``--head`` name two distinct submodules; on a seeded random batch of
``image_size`` px project images ``head(flatten(encoder(x)))`` gives ``(batch, num_classes)`` logits, equal
(to 1e-4) to the network's own ``forward`` on the adapted batch, since the artifact uses the former; weights
are finite. ``num_classes`` is read from the logits; ``--num-classes`` checks it, and is passed to a
builder that takes a ``num_classes`` argument (recorded, so a reload builds the same network).

``image_size`` (default 32, the digit domains' size) is the size of the project images the model will
see: it is used for the check and the card's description only, since the adapter resizes any size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .artifact import Artifact, build_card, read_card, save_artifact, state_dict_mismatch
from .errors import DomainlockError, check_integer
from .models import Classifier, check_finite_weights
from .models.base import _jsonable
from .models.imported import ARCH, accepts, assemble, builder_source, call_builder, load_callable, parse_builder
from .utils.io import check_output_path, sha256_file

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
#: keys under which a training checkpoint commonly keeps the model's state dict
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net")
PROBE_BATCH = 2
TOLERANCE = 1e-4
PICKLED_HINT = ("save the state dict instead: torch.save(model.state_dict(), PATH), or "
                "safetensors.torch.save_file(model.state_dict(), PATH)")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:240]}" if text else type(e).__name__


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of a ``.safetensors`` or ``.pt``/``.pth`` state dict file, never unpickling objects;
    returns ``(state_dict, notices)``."""
    p = Path(path)
    if p.suffix.lower() not in WEIGHT_SUFFIXES:
        raise DomainlockError(f"--weights {str(p)!r}: unknown format {p.suffix or '(no suffix)'!r}; valid: "
                              + ", ".join(WEIGHT_SUFFIXES))
    if not p.is_file():
        raise DomainlockError(f"--weights {str(p)!r} does not exist")
    if p.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu"), []
        except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError, MemoryError) as e:
            raise DomainlockError(f"--weights {str(p)!r} is not a readable safetensors file ({_one_line(e)})"
                                  ) from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the restricted loader refuses objects with UnpicklingError
        if type(e).__name__ == "UnpicklingError" or "weights only" in str(e).lower():
            raise DomainlockError(f"--weights {str(p)!r} holds pickled Python objects (e.g. a whole model saved "
                                  f"with torch.save(model)), which domainlock never unpickles; {PICKLED_HINT}"
                                  ) from None
        raise DomainlockError(f"--weights {str(p)!r} is not a readable torch state dict file ({_one_line(e)})"
                              ) from None
    return _tensors_of(obj, p)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def _tensors_of(obj: Any, p: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    if _is_tensor_dict(obj):
        return dict(obj), []
    if isinstance(obj, dict):
        for key in NESTED_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key]), [f"{p.name} is a checkpoint: read the state dict under its key {key!r}"]
        shown = ", ".join(repr(k) for k in list(obj)[:6]) or "(empty)"
        raise DomainlockError(f"--weights {str(p)!r} holds a dict that is not a state dict (keys {shown}; "
                              f"a checkpoint must keep it under one of {', '.join(NESTED_KEYS)}); {PICKLED_HINT}")
    raise DomainlockError(f"--weights {str(p)!r} holds a {type(obj).__name__}, not a state dict; {PICKLED_HINT}")


def load_weights(net: nn.Module, sd: dict[str, torch.Tensor], weights: Path, where: str) -> list[str]:
    """Load ``sd`` into ``net`` exactly (a ``module.`` prefix is removed when that makes it match)."""
    want = net.state_dict()
    notices = []
    if set(sd) != set(want) and sd and all(k.startswith("module.") for k in sd):
        stripped = {k.removeprefix("module."): v for k, v in sd.items()}
        if set(stripped) == set(want):
            sd = stripped
            notices.append(f"{weights.name}: removed the 'module.' prefix of every key (a DataParallel save)")
    problem = state_dict_mismatch({k: tuple(v.shape) for k, v in sd.items()},
                                  {k: tuple(v.shape) for k, v in want.items()})
    if problem:
        raise DomainlockError(f"--weights {str(weights)!r} does not match the network {where} builds: keys "
                              f"{problem}")
    for k, v in sd.items():
        if want[k].is_floating_point() != v.is_floating_point():
            raise DomainlockError(f"--weights {str(weights)!r}: tensor {k!r} is {v.dtype} but the network has "
                                  f"{want[k].dtype}")
    net.load_state_dict(sd, strict=True)
    return notices


def _check_flags(input_size: int | None, grayscale: bool, mean: Sequence[float] | None,
                 std: Sequence[float] | None, num_classes: int | None, image_size: int) -> None:
    if input_size is not None:
        check_integer("--input-size", input_size, 1, 4096)
    check_integer("--image-size", image_size, 1, 4096)
    if num_classes is not None:
        check_integer("--num-classes", num_classes, 2)
    channels = 1 if grayscale else 3
    for flag, values in (("--mean", mean), ("--std", std)):
        if values is None:
            continue
        if len(values) != channels:
            raise DomainlockError(
                f"{flag} has {len(values)} value{'s' if len(values) != 1 else ''} but the network takes "
                f"{channels} channel{'s' if channels > 1 else ''} ({'--grayscale' if grayscale else 'RGB'}); "
                f"give {channels}, e.g. {flag} " + ",".join(["0.5"] * channels))
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise DomainlockError(f"{flag} {list(values)}: every value must be a finite number")
    if std is not None and any(v <= 0 for v in std):
        raise DomainlockError(f"--std {list(std)}: every value must be > 0")


def _check_out(out: str | os.PathLike, overwrite: bool, inputs: Sequence[Path]) -> Path:
    check_output_path(out, overwrite)
    o = Path(out).resolve()
    for f in inputs:
        if o == f or o in f.parents:
            raise DomainlockError(f"--out {str(out)!r} holds the input {str(f)!r}, which replacing it would delete; "
                                  "choose another folder")
    return Path(out)


def _probe(model: Classifier, net: nn.Module, image_size: int, num_classes: int | None, enc: str, hd: str
           ) -> tuple[int, list[str]]:
    """Run the checks on a random batch; return ``(num_classes, notices)``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(PROBE_BATCH, 3, image_size, image_size, generator=gen)
    model.eval()
    net.eval()
    shape = f"a [{PROBE_BATCH}, 3, {image_size}, {image_size}] batch"
    with torch.no_grad():
        try:
            feats = model.encoder(x)
        except Exception as e:  # noqa: BLE001 - the user's network on our input
            raise DomainlockError(f"the encoder ({enc!r} after the input adaptation) fails on {shape} of project "
                                  f"images: {_one_line(e)}; does the network expect another size (--input-size) "
                                  "or channel count (--grayscale)?") from None
        try:
            logits = model.head(feats)
        except Exception as e:  # noqa: BLE001
            raise DomainlockError(f"the head ({hd!r}) fails on the encoder's features of shape "
                                  f"{list(getattr(feats, 'shape', []))}: {_one_line(e)}; --encoder and --head must "
                                  "compose: logits = head(flatten(encoder(x)))") from None
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != PROBE_BATCH:
            got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise DomainlockError(f"the head ({hd!r}) returns {got} on a batch of {PROBE_BATCH}; it must return "
                                  f"({PROBE_BATCH}, num_classes) logits")
        k = int(logits.shape[1])
        if k < 2 or (num_classes is not None and k != num_classes):
            raise DomainlockError(f"the head ({hd!r}) gives {k} outputs, not the --num-classes {num_classes}"
                                  if num_classes is not None else
                                  f"the head ({hd!r}) gives {k} output; a classifier needs at least 2")
        notices = []
        try:
            ref = net(model.encoder.adapt(x))
        except Exception as e:  # noqa: BLE001
            ref = None
            notices.append(f"could not compare with the network's own forward ({_one_line(e)}); the artifact "
                           f"uses head(flatten(encoder(x)))")
        if isinstance(ref, torch.Tensor) and tuple(ref.shape) == tuple(logits.shape):
            diff = float((ref - logits).abs().max())
            if not diff <= TOLERANCE * max(1.0, float(ref.abs().max())):
                raise DomainlockError(
                    f"head(flatten(encoder(x))) differs from the network's own forward by up to {diff:.3g} on "
                    f"a test batch; the artifact uses the former, so what forward does between {enc!r} and "
                    f"{hd!r} (pooling, an activation, ...) must be inside one of them (the builder may return "
                    "a wrapper module that splits it so)")
        elif ref is not None:
            got = list(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
            notices.append(f"the network's own forward returns {got}, not logits of shape {list(logits.shape)}; "
                           "the artifact uses head(flatten(encoder(x)))")
    return k, notices


def _outside(net: nn.Module, model: Classifier) -> list[str]:
    """State-dict entries of ``net`` that are in neither the encoder nor the head (dropped by the import)."""
    kept = {id(t) for t in model.state_dict(keep_vars=True).values()}
    return [k for k, t in net.state_dict(keep_vars=True).items() if id(t) not in kept]


def import_model(builder: str, weights: str | os.PathLike, *, encoder: str, head: str,
                 input_size: int | None = None, grayscale: bool = False, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, num_classes: int | None = None, flatten: bool = True,
                 image_size: int = 32, domain: str | None = None, out: str | os.PathLike | None = None,
                 overwrite: bool = False) -> Artifact:
    """Build the network with ``builder`` (``"file.py:callable"``; **runs that file**), load ``weights`` into it
    and return it as an :class:`~domainlock.artifact.Artifact` of arch ``imported``, saved at ``out`` if given.
    See the module docstring for the checks."""
    path, name = parse_builder(builder)
    _check_flags(input_size, grayscale, mean, std, num_classes, image_size)
    builder_source(path)   # exists: a one-line error before anything is read
    wpath = Path(weights)
    if out is not None:
        _check_out(out, overwrite, [path.resolve(), wpath.resolve()])
    sd, notices = read_state_dict(wpath)   # before any user code runs
    fn, digest = load_callable(path, name)
    where = f"{path}:{name}"
    call_kwargs = {"num_classes": int(num_classes)} if num_classes is not None and accepts(fn, "num_classes") else {}
    net = call_builder(fn, path, call_kwargs).cpu()
    notices += load_weights(net, sd, wpath, where)
    mean_l = None if mean is None else [float(v) for v in mean]
    std_l = None if std is None else [float(v) for v in std]
    kwargs: dict[str, Any] = {
        "builder": str(path.resolve()), "builder_callable": name, "builder_sha256": digest,
        "builder_kwargs": call_kwargs, "encoder": encoder, "head": head, "flatten": bool(flatten),
        "input_size": None if input_size is None else int(input_size), "grayscale": bool(grayscale),
        "mean": mean_l, "std": std_l}
    shape_kw = {k: kwargs[k] for k in ("encoder", "head", "flatten", "input_size", "grayscale", "mean", "std")}
    model = assemble(net, **shape_kw)
    k, probe_notes = _probe(model, net, image_size, num_classes, encoder, head)
    notices += probe_notes
    model.arch, model.arch_kwargs, model.num_classes = ARCH, _jsonable(kwargs), k
    dropped = _outside(net, model)
    if dropped:
        notices.append(f"{len(dropped)} tensor{'s' if len(dropped) > 1 else ''} of the network lie outside "
                       f"--encoder and --head (first {dropped[0]!r}) and are not part of the imported model")
    check_finite_weights(model, f"the weights file {wpath.name} holds them")
    for p in model.parameters():
        p.requires_grad_(True)
    card = {"domain": domain, "import": {
        "builder": str(path.resolve()), "builder_callable": name, "builder_sha256": digest,
        "weights": str(wpath.resolve()), "weights_sha256": sha256_file(wpath),
        "encoder": encoder, "head": head, "image_size": int(image_size),
        "input": model.encoder.adapt.describe(int(image_size)),
        "note": "loading this artifact executes the builder file (after checking its sha256)"}}
    if out is None:
        return Artifact(model=model, card=build_card(model, card), path=None, notices=notices)
    saved = save_artifact(out, model, card, overwrite=overwrite)
    return Artifact(model=model, card=read_card(saved), path=saved, notices=notices)
