"""Model artifacts: a directory holding ``model.safetensors`` (the state dict) and ``card.json``.

The card records how to rebuild and judge the model: format version, ``arch`` and ``arch_kwargs``,
``num_classes``, ``normalization``, ``domain``, ``seed``, ``hparams``, ``metrics`` (e.g. accuracy per split),
the domainlock and torch versions, the ``sha256`` and ``size_bytes`` of ``model.safetensors``, and the UTC
creation time, plus free-form sections (``provenance``, ``protection``, ...) that later steps add with
:func:`update_card` or by passing them to :func:`save_artifact`.

Weights are only ever read with ``safetensors`` (never unpickled), and are checked against the card's
sha256 before use: a tampered, truncated or swapped file is an :class:`~domainlock.errors.ArtifactError`.
"""

from __future__ import annotations

import copy
import datetime as _dt
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
from .errors import ArtifactError, DomainlockError
from .models import ARCHS, Classifier, arch_names, build_model
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
    """A loaded artifact: the model (in eval mode, on the requested device), its card and its folder."""

    model: nn.Module
    card: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def arch(self) -> str:
        return str(self.card.get("arch", getattr(self.model, "arch", "custom")))

    @property
    def num_classes(self) -> int | None:
        return self.card.get("num_classes")

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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{cpath} is not valid JSON ({e}); the artifact is corrupt") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise ArtifactError(f"{cpath} is not a domainlock artifact card (missing \"format\": \"{FORMAT}\")")
    version = card.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"{cpath} has format_version {version!r}; this domainlock "
                            f"({__version__}) reads versions <= {FORMAT_VERSION}: upgrade domainlock")
    return card


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
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{wpath} is not a readable safetensors file (truncated or corrupt: {e})"
                            ) from None
    return tensors, meta


def _signature(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _identify(sig: dict[str, tuple[int, ...]], meta: dict[str, str], num_classes: int | None) -> str | None:
    """Which registered arch (with the recorded or default kwargs) has exactly this key/shape signature."""
    candidates: list[tuple[str, dict[str, Any]]] = []
    if meta.get("arch") in ARCHS:
        try:
            kw = json.loads(meta.get("arch_kwargs", "{}"))
        except json.JSONDecodeError:
            kw = {}
        candidates.append((meta["arch"], kw if isinstance(kw, dict) else {}))
    candidates += [(a, {}) for a in arch_names()]
    for arch, kw in candidates:
        try:
            with torch.device("meta"):
                m = build_model(arch, num_classes=num_classes or 10, **kw)
        except Exception:  # noqa: BLE001 - a candidate that cannot be built is simply not it
            continue
        if _signature(m.state_dict()) == sig:
            return arch
    if meta.get("arch"):
        return str(meta["arch"])
    return None


def _mismatch(sd_sig: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]]) -> str:
    missing = sorted(set(want) - set(sd_sig))
    extra = sorted(set(sd_sig) - set(want))
    shape = sorted(k for k in set(want) & set(sd_sig) if want[k] != sd_sig[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} unexpected keys (e.g. {extra[0]})")
    if shape:
        k = shape[0]
        parts.append(f"{len(shape)} shape mismatches (e.g. {k}: {sd_sig[k]} vs {want[k]})")
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
        try:
            model = build_model(arch, num_classes=num_classes or 10, **(card.get("arch_kwargs") or {}))
        except (DomainlockError, TypeError, ValueError) as e:
            raise ArtifactError(f"artifact {str(path)!r}: cannot build {arch} with the card's arch_kwargs "
                                f"{card.get('arch_kwargs')}: {e}") from None
        target = arch
    else:
        target = getattr(model, "arch", None) or type(model).__name__
    want = _signature(model.state_dict())
    have = _signature(tensors)
    if want != have:
        holder = _identify(have, meta, num_classes)
        what = f"a {holder} state dict" if holder else "weights of an unknown architecture"
        raise ArtifactError(f"artifact {str(path)!r} holds {what}, not {target} (as its card or the given "
                            f"model says): {_mismatch(have, want)}")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:  # pragma: no cover - the signature check above catches this first
        raise ArtifactError(f"artifact {str(path)!r}: {e}") from None
    model.to(device).eval()
    return Artifact(model=model, card=card, path=path)


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
