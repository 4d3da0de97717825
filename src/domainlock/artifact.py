"""Model artifacts: a directory holding ``model.safetensors`` (the state dict) and ``card.json``.

The card records how to rebuild and judge the model: format version, ``arch`` and ``arch_kwargs``,
``num_classes``, ``normalization``, ``domain``, ``seed``, ``hparams``, ``metrics`` (e.g. accuracy per split),
the domainlock and torch versions, the ``sha256`` and ``size_bytes`` of ``model.safetensors``, and the UTC
creation time, plus free-form sections (``provenance``, ``protection``, ...) that later steps add with
:func:`update_card` or by passing them to :func:`save_artifact`.

Weights are only ever read with ``safetensors`` (never unpickled), and are checked against the card's
sha256 before use: a tampered, truncated or swapped file is an :class:`~domainlock.errors.ArtifactError`.
Refused too: NaN/inf weights, int/bool tensors for float ones; other float widths are converted (``Artifact.notices``).
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._version import __version__
from .errors import ArtifactError, BuilderError, DomainlockError
from .models import ARCHS, UNLISTED, Classifier, arch_names, build_model, check_finite_weights
from .models.checks import ARTIFACT_CAUSE
from .utils.io import atomic_dir, atomic_write_json, sha256_file

FORMAT = "domainlock-artifact"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"

#: card keys that :func:`save_artifact` computes; a caller's values for them are replaced
RESERVED_KEYS = ("format", "format_version", "arch", "arch_kwargs", "num_classes", "normalization",
                 "domainlock_version", "torch_version", "sha256", "size_bytes", "num_params", "created_utc")


@dataclass
class Artifact:
    """A loaded artifact: the model (in eval mode, on the requested device), its card and its folder.

    ``notices``: what loading changed and a user should know (e.g. float16 weights converted to float32),
    one line each; the CLI prints them as ``domainlock: note: ...``."""

    model: nn.Module
    card: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def arch(self) -> str:
        return str(self.card.get("arch", getattr(self.model, "arch", "custom")))

    @property
    def num_classes(self) -> int | None:
        return self.card.get("num_classes")

    @property
    def classes(self) -> list[str] | None:
        """The names of the model's outputs in output order (card ``classes``), or ``None`` if unrecorded."""
        classes = self.card.get("classes")
        return list(classes) if classes else None

    @property
    def metrics(self) -> dict[str, Any]:
        return self.card.setdefault("metrics", {})


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_dict_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as independent, contiguous CPU tensors (what safetensors can store)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _num_classes(model: nn.Module, card: dict[str, Any]) -> int | None:
    n = getattr(model, "num_classes", None) or card.get("num_classes")
    if n is None:
        lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
        n = lin[-1].out_features if lin else None
    return int(n) if n is not None else None


def build_card(model: nn.Module, card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the caller's card sections with the fields computed from ``model`` (no hash yet)."""
    out = copy.deepcopy(dict(card or {}))
    if isinstance(model, Classifier):
        arch, kwargs, norm = model.arch, dict(model.arch_kwargs), model.normalization
    else:
        arch = out.get("arch") or f"custom:{type(model).__name__}"
        kwargs, norm = dict(out.get("arch_kwargs") or {}), out.get("normalization")
    out.update({
        "format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch, "arch_kwargs": kwargs,
        "num_classes": _num_classes(model, out), "normalization": norm,
        "domainlock_version": __version__, "torch_version": torch.__version__,
        "num_params": sum(p.numel() for p in model.parameters()), "created_utc": utc_now(),
    })
    out.setdefault("domain", None)
    out.setdefault("seed", None)
    out.setdefault("hparams", {})
    out.setdefault("metrics", {})
    return out


def save_artifact(out_dir: str | os.PathLike, model: nn.Module, card: dict[str, Any] | None = None,
                  overwrite: bool = False) -> Path:
    """Write ``model`` and its card to ``out_dir`` atomically; return the path.

    ``card`` holds the caller's sections (``domain``, ``seed``, ``hparams``, ``metrics``, free-form ones);
    the keys in :data:`RESERVED_KEYS` are computed here. An existing ``out_dir`` is refused with
    :class:`~domainlock.errors.OutputExistsError` unless ``overwrite``. An interruption leaves no half folder.
    """
    full = build_card(model, card)
    tensors = state_dict_tensors(model)
    meta = {"format": FORMAT, "arch": str(full["arch"]), "arch_kwargs": json.dumps(full["arch_kwargs"]),
            "num_classes": str(full["num_classes"])}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        wpath = tmp / WEIGHTS_FILE
        save_file(tensors, str(wpath), metadata=meta)
        full["sha256"] = sha256_file(wpath)
        full["size_bytes"] = wpath.stat().st_size
        atomic_write_json(tmp / CARD_FILE, full)
    return Path(out_dir)


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The card of the artifact at ``path`` (no weights are read or verified)."""
    path = _check_dir(Path(path))
    cpath = path / CARD_FILE
    if not cpath.is_file():
        raise ArtifactError(f"artifact {str(path)!r} has no {CARD_FILE} (expected {cpath})")
    try:
        card = json.loads(cpath.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise ArtifactError(f"{cpath} is not valid JSON ({_one_line(e)}); the artifact is corrupt") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise ArtifactError(f"{cpath} is not a domainlock artifact card (missing \"format\": \"{FORMAT}\")")
    version = card.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"{cpath} has format_version {version!r}; this domainlock "
                            f"({__version__}) reads versions <= {FORMAT_VERSION}: upgrade domainlock")
    _check_card_fields(card, cpath)
    return card


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


#: card keys loading relies on -> (accepted types, what the error says they must be); ``None`` is accepted too
_CARD_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "arch": ((str,), "an architecture name"),
    "arch_kwargs": ((dict,), "an object of builder arguments"),
    "num_classes": ((int,), "a positive integer"),
    "classes": ((list,), "a list of distinct class names, one per model output"),
    "normalization": ((dict,), "an object with mean and std"),
    "sha256": ((str,), "the hex sha256 of the weights"),
    "size_bytes": ((int,), "a byte count"),
    "metrics": ((dict,), "an object"),
    "hparams": ((dict,), "an object"),
}


def _check_card_fields(card: dict[str, Any], cpath: Path) -> None:
    """A one-line :class:`ArtifactError` when a field loading relies on has the wrong type or value."""
    for key, (types, what) in _CARD_FIELDS.items():
        v = card.get(key)
        if v is None:
            continue
        ok = isinstance(v, types) and not isinstance(v, bool)
        if ok and key in ("num_classes", "size_bytes"):
            ok = v >= (1 if key == "num_classes" else 0)
        if ok and key == "classes":
            n = card.get("num_classes")
            ok = (all(isinstance(c, str) and c for c in v) and len(set(v)) == len(v)
                  and (not isinstance(n, int) or len(v) == n))
        if not ok:
            shown = json.dumps(v)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise ArtifactError(f"{cpath} field {key!r} is {shown}; it must be {what}"
                                + (f" ({card.get('num_classes')} here)" if key == "classes" else "")
                                + "; the artifact is corrupt")


def _check_dir(path: Path) -> Path:
    if not path.exists():
        raise ArtifactError(f"artifact {str(path)!r} does not exist")
    if not path.is_dir():
        raise ArtifactError(f"artifact {str(path)!r} is not a directory (an artifact is a folder with "
                            f"{WEIGHTS_FILE} and {CARD_FILE})")
    return path


def verify_weights(path: str | os.PathLike, card: dict[str, Any] | None = None) -> Path:
    """Check that ``model.safetensors`` exists and matches the card's size and sha256; return its path."""
    path = Path(path)
    card = read_card(path) if card is None else card
    wpath = path / WEIGHTS_FILE
    if not wpath.is_file():
        raise ArtifactError(f"artifact {str(path)!r} has no {WEIGHTS_FILE} (expected {wpath})")
    size, want_size = wpath.stat().st_size, card.get("size_bytes")
    if isinstance(want_size, int) and size < want_size:
        raise ArtifactError(f"{wpath} is truncated: {size} of {want_size} bytes")
    want = card.get("sha256")
    if not want:
        raise ArtifactError(f"{path / CARD_FILE} records no sha256 for {WEIGHTS_FILE}; refusing unverified "
                            "weights")
    got = sha256_file(wpath)
    if got != want:
        raise ArtifactError(f"{wpath}: hash mismatch (sha256 {got[:16]}…, card says {str(want)[:16]}…); "
                            "the weights were modified or corrupted after the artifact was written")
    return wpath


def _read_tensors(wpath: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        tensors = load_file(str(wpath), device="cpu")
        with safe_open(str(wpath), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError, MemoryError) as e:
        raise ArtifactError(f"{wpath} is not a readable safetensors file (truncated or corrupt: {_one_line(e)})"
                            ) from None
    return tensors, meta


def _signature(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


@functools.lru_cache(maxsize=64)
def _arch_signature(arch: str, num_classes: int, kwargs_json: str) -> dict[str, tuple[int, ...]] | None:
    """The key/shape signature of a registered arch built with these arguments (``None`` if it cannot be)."""
    try:
        with torch.device("meta"):
            return _signature(build_model(arch, num_classes=num_classes, **json.loads(kwargs_json)).state_dict())
    except Exception:  # noqa: BLE001 - a candidate that cannot be built is simply not it
        return None


def _identify(sig: dict[str, tuple[int, ...]], meta: dict[str, str], num_classes: int | None) -> str | None:
    """Which registered arch (with the recorded or default kwargs) has exactly this key/shape signature."""
    candidates: list[tuple[str, dict[str, Any]]] = []
    if meta.get("arch") in arch_names():   # an unlisted arch (``imported``) would run a user's file: not a guess
        try:
            kw = json.loads(meta.get("arch_kwargs", "{}"))
        except (ValueError, RecursionError):
            kw = {}
        candidates.append((meta["arch"], kw if isinstance(kw, dict) else {}))
    candidates += [(a, {}) for a in arch_names()]
    for arch, kw in candidates:
        if _arch_signature(arch, num_classes or 10, json.dumps(kw, sort_keys=True, default=str)) == sig:
            return arch
    if meta.get("arch"):
        return str(meta["arch"])
    return None


def state_dict_mismatch(have: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]]) -> str:
    """How the key -> shape signature ``have`` (a file's) differs from ``want`` (a model's), in ``want``'s order;
    empty when they agree."""
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    shape = [k for k in want if k in have and tuple(have[k]) != tuple(want[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first {missing[0]!r})")
    if extra:
        parts.append(f"{len(extra)} unexpected (first {extra[0]!r})")
    if shape:
        k = shape[0]
        parts.append(f"{len(shape)} of another shape (first {k!r}: {tuple(have[k])} in the file, "
                     f"{tuple(want[k])} in the model)")
    return "; ".join(parts)


def load_artifact(path: str | os.PathLike, *, expect_arch: str | None = None, model: nn.Module | None = None,
                  device: str | torch.device = "cpu") -> Artifact:
    """Load and verify an artifact; return :class:`Artifact` with the model in eval mode on ``device``.

    ``expect_arch``: refuse an artifact of another architecture. ``model``: load the weights into this module
    instead of building the card's ``arch`` from the registry (needed for a user's own module). Every
    problem (missing folder/file, bad card, hash mismatch, truncated or corrupt weights, unknown arch,
    weights of another architecture) is an :class:`~domainlock.errors.ArtifactError` naming the cause.
    """
    path = _check_dir(Path(path))
    card = read_card(path)
    arch = str(card.get("arch"))
    if expect_arch is not None and arch != expect_arch:
        raise ArtifactError(f"artifact {str(path)!r} holds a {arch} model, not the expected {expect_arch}")
    wpath = verify_weights(path, card)
    tensors, meta = _read_tensors(wpath)
    num_classes = card.get("num_classes")
    if model is None:
        if arch not in ARCHS:
            raise ArtifactError(
                f"artifact {str(path)!r} names arch {arch!r}, which is not registered; valid archs: "
                f"{', '.join(arch_names())} (for your own module pass model=YourModule() to load_artifact)")
        kwargs = card.get("arch_kwargs") or {}
        # on the meta device first: a card asking for absurd sizes costs nothing before the shapes are compared
        # (not for an unlisted arch: ``imported`` runs the user's builder, which need not work on meta tensors)
        for dev in ("cpu",) if arch in UNLISTED else ("meta", "cpu"):
            try:
                with torch.device(dev):
                    model = build_model(arch, num_classes=num_classes or 10, **kwargs)
            except BuilderError as e:   # the builder file is missing, changed, or fails: already one clear line
                raise ArtifactError(f"artifact {str(path)!r}: {e}") from None
            except Exception as e:  # noqa: BLE001 - whatever the builder raises on these card values
                raise ArtifactError(f"artifact {str(path)!r}: cannot build {arch} with the card's num_classes "
                                    f"{num_classes} and arch_kwargs {kwargs}: {_one_line(e)}") from None
            if dev == "meta" or arch in UNLISTED:
                _check_signature(path, tensors, meta, num_classes, model, arch)
        target = arch
    else:
        target = getattr(model, "arch", None) or type(model).__name__
        _check_signature(path, tensors, meta, num_classes, model, target)
    assert model is not None
    notices = _check_dtypes(path, tensors, model.state_dict(), target)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:  # pragma: no cover - the signature check above catches this first
        raise ArtifactError(f"artifact {str(path)!r}: {_one_line(e)}") from None
    check_finite_weights(model, ARTIFACT_CAUSE)
    model.to(device).eval()
    return Artifact(model=model, card=card, path=path, notices=notices)


def _check_signature(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], num_classes: Any,
                     model: nn.Module, target: str) -> None:
    want = _signature(model.state_dict())
    have = _signature(tensors)
    if want != have:
        holder = _identify(have, meta, num_classes)
        what = f"a {holder} state dict" if holder else "weights of an unknown architecture"
        raise ArtifactError(f"artifact {str(path)!r} holds {what}, not {target} (as its card or the given "
                            f"model says): keys {state_dict_mismatch(have, want)}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "integer"


def _check_dtypes(path: Path, tensors: dict[str, torch.Tensor], want: dict[str, torch.Tensor], target: str
                  ) -> list[str]:
    """Notices for float tensors stored in another float width (converted on load); a one-line
    :class:`ArtifactError` for any other dtype difference (an integer where the model has a float, ...)."""
    converted: dict[tuple[torch.dtype, torch.dtype], list[str]] = {}
    for k in sorted(tensors):
        have, need = tensors[k].dtype, want[k].dtype
        if have == need:
            continue
        if _kind(have) != _kind(need) or _kind(have) in ("bool", "complex"):
            raise ArtifactError(
                f"artifact {str(path)!r}: tensor {k!r} is stored as {_dtype_name(have)} but {target} expects "
                f"{_dtype_name(need)}; the artifact is corrupt or was written by other software: re-save the "
                f"model with {_dtype_name(need)} weights (save_artifact)")
        converted.setdefault((have, need), []).append(k)
    return [f"{WEIGHTS_FILE} stores {len(keys)} tensor{'s' if len(keys) > 1 else ''} as {_dtype_name(have)} "
            f"(e.g. {keys[0]!r}) where {target} uses {_dtype_name(need)}: converted to {_dtype_name(need)} on load"
            for (have, need), keys in converted.items()]


def model_of(obj: Any) -> nn.Module:
    """The module behind ``obj``: a module as it is, an :class:`Artifact`'s model, or an artifact path loaded."""
    if isinstance(obj, str | os.PathLike):
        obj = load_artifact(obj)
    if isinstance(obj, Artifact):
        return obj.model
    if isinstance(obj, nn.Module):
        return obj
    raise DomainlockError(f"expected a model, an artifact or an artifact path, got {type(obj).__name__}")


def _deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


def update_card(path: str | os.PathLike, updates: dict[str, Any], *, merge: bool = True) -> dict[str, Any]:
    """Add or change free-form card sections (e.g. ``{"metrics": {...}, "protection": {...}}``) in place,
    atomically; nested dicts are merged unless ``merge=False``. Returns the new card.

    The weights are verified first, and the keys in :data:`RESERVED_KEYS` cannot be changed this way.
    """
    path = Path(path)
    card = read_card(path)
    verify_weights(path, card)
    bad = sorted(set(updates) & set(RESERVED_KEYS))
    if bad:
        raise ArtifactError(f"update_card cannot change {', '.join(bad)} (computed from the weights); "
                            "save a new artifact instead")
    if merge:
        _deep_merge(card, updates)
    else:
        card.update(copy.deepcopy(updates))
    card["updated_utc"] = utc_now()
    atomic_write_json(path / CARD_FILE, card)
    return card
