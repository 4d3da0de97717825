"""Where built domains live and how they are built, listed and loaded.

Layout: ``<data_root>/<domain>/data.safetensors`` (per split ``<split>_x`` uint8 ``[N,3,S,S]``, S = 32, or 64
for a standard dataset built with the ``ntlbench`` protocol, and ``<split>_y`` int64 ``[N]``) and
``manifest.json`` (provenance: source package and version, sha256 of every raw file, seed, protocol, counts
per split and class, classes, build time, ...). A sub-domain ``officehome:Art`` lives in
``<data_root>/officehome/Art/``; raw downloads in ``<data_root>/downloads/``. A build is written
with :func:`~domainlock.utils.io.atomic_dir`, so an interrupted build leaves no half domain, and is
serialized per domain by a lock file (``<data_root>/.<domain>.lock``) where ``fcntl`` exists.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import DataUnavailableError, DomainlockError, check_choice
from ..utils.io import atomic_dir, atomic_write_json, sha256_file
from .common import SPLIT_FRACTIONS, SPLIT_SEED, BuildContext, BuildResult, BuiltDomain
from .registry import DomainSpec, format_domain, get_spec, parse_domain
from .standard import PROTOCOLS, downloads_dir
from .types import SPLITS, DomainData
from .watermark import apply_watermark

DATA_FILE = "data.safetensors"
MANIFEST_FILE = "manifest.json"
ENV_DATA = "DOMAINLOCK_DATA"


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: explicit ``root`` > ``$DOMAINLOCK_DATA`` > ``user_cache_dir("domainlock")/data``."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("domainlock")) / "data"


def _folder(root: str | os.PathLike, base: str) -> Path:
    """Where a base domain is stored: ``<root>/<base>``, a sub-domain ``a:b`` in ``<root>/a/b``."""
    return Path(root).joinpath(*base.split(":"))


def domain_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    base, _ = parse_domain(name)
    return _folder(resolve_data_root(root), base)


def read_manifest(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest of a built domain (``{}`` if it is not built)."""
    path = domain_dir(name, root) / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DomainlockError(f"{path} is unreadable ({e}); rebuild with force=True (CLI: --force)") from None


def _current(manifest: dict[str, Any], base: str) -> bool:
    return manifest.get("builder_version") == get_spec(base).version


def is_built(name: str, root: str | os.PathLike | None = None) -> bool:
    """True if the (base) domain is built under the data root by the current builder version."""
    base, _ = parse_domain(name)
    d = _folder(resolve_data_root(root), base)
    if not ((d / DATA_FILE).is_file() and (d / MANIFEST_FILE).is_file()):
        return False
    try:
        return _current(read_manifest(base, root), base)
    except DomainlockError:
        return False


def is_available(name: str, root: str | os.PathLike | None = None) -> tuple[bool, str]:
    """Can the domain be built offline here? ``(True, provider)`` or ``(False, what provides it)``.

    A domain that builds on others (mnistm on mnist) is available when its own inputs are and each
    dependency is either already built under ``root`` or available itself."""
    base, _ = parse_domain(name)
    return _available(get_spec(base), root)


def _available(spec: DomainSpec, root: str | os.PathLike | None) -> tuple[bool, str]:
    ok, why = spec.available()
    if not ok:
        return ok, why
    for dep in spec.depends:
        if is_built(dep, root):
            continue
        dep_ok, dep_why = _available(get_spec(dep), root)
        if not dep_ok:
            return False, f"{spec.name} builds on {dep}, which is unavailable: {dep_why}"
    return ok, why


@contextlib.contextmanager
def _lock(root: Path, base: str) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no lock; atomic_dir still prevents half folders
        yield
        return
    with open(root / f".{base.replace(':', '-')}.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _validate(base: str, res: BuildResult) -> None:
    if set(res.splits) != set(SPLITS):
        raise DomainlockError(f"builder of {base} returned splits {sorted(res.splits)}, expected {SPLITS}")
    size = res.image_size
    for s, (x, y) in res.splits.items():
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, size, size):
            raise DomainlockError(f"builder of {base}/{s}: x {x.dtype} {x.shape}, expected uint8 [N,3,{size},{size}]")
        if y.dtype != np.int64 or y.shape != (x.shape[0],):
            raise DomainlockError(f"builder of {base}/{s}: y {y.dtype} {y.shape} does not match x")
        if len(y) and (y.min() < 0 or y.max() >= len(res.classes)):
            raise DomainlockError(f"builder of {base}/{s}: labels outside [0, {len(res.classes)})")


def _write(d: Path, base: str, seed: int, res: BuildResult, seconds: float) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for s in SPLITS:
        x, y = res.splits[s]
        tensors[f"{s}_x"] = torch.from_numpy(np.ascontiguousarray(x))
        tensors[f"{s}_y"] = torch.from_numpy(np.ascontiguousarray(y))
    spec = get_spec(base)
    # one metadata key only: safetensors writes a map's keys in hash order, which would make the
    # bytes (and data_sha256) differ between identical builds
    meta = json.dumps({"domain": base, "builder_version": spec.version, "seed": seed}, sort_keys=True)
    save_file(tensors, str(d / DATA_FILE), metadata={"domainlock": meta})
    nc = len(res.classes)
    manifest: dict[str, Any] = {
        "domain": base,
        "description": spec.description,
        "builder_version": spec.version,
        "domainlock_version": __version__,
        "source": res.source,
        "raw_sha256": res.raw_sha256,
        "seed": seed,
        "split_seed": SPLIT_SEED,
        "split_fractions": res.extra.get("split_fractions", list(SPLIT_FRACTIONS)),
        "protocol": res.extra.get("protocol", "default"),
        "counts": {s: int(len(res.splits[s][1])) for s in SPLITS},
        "class_counts": {s: np.bincount(res.splits[s][1], minlength=nc).tolist() for s in SPLITS},
        "image_size": [3, res.image_size, res.image_size],
        "stored_dtype": "uint8",
        "classes": list(res.classes),
        "num_classes": nc,
        "data_file": DATA_FILE,
        "data_sha256": sha256_file(d / DATA_FILE),
        "data_bytes": (d / DATA_FILE).stat().st_size,
        "build_seconds": round(seconds, 3),
        "built_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
    }
    for k, v in res.extra.items():
        manifest.setdefault(k, v)
    atomic_write_json(d / MANIFEST_FILE, manifest)


def build_domain(name: str, root: str | os.PathLike | None = None, *, seed: int = 0, force: bool = False,
                 progress: bool = True, protocol: str | None = None, archives: Sequence[str | os.PathLike] = (),
                 trust_archive: bool = False, source_root: str | os.PathLike | None = None,
                 opener: Any = None) -> Path:
    """Build a base domain into ``<data_root>/<name>`` and return that folder.

    Idempotent: an existing build by the current builder version is returned as is (for a domain
    whose data depend on the seed (syn, mnistm), a different ``seed`` than the stored one is an error
    unless ``force``; likewise a standard dataset built with another ``protocol`` than one named: ``None``
    takes whatever is built, else ``default``). ``force`` rebuilds.
    Atomic: an exception or Ctrl-C mid-build leaves the previous state (usually: nothing). ``wm:<d>`` builds
    ``d``. The standard datasets also take ``protocol`` (``default`` | ``ntlbench``), ``archives`` (files
    fetched by hand instead of downloading), ``trust_archive`` (accept an archive whose digest does not
    match; recorded as unverified), ``source_root`` (a folder dataset's unpacked release) and ``opener``
    (the urllib opener downloads use).
    """
    base, _ = parse_domain(name)
    spec = get_spec(base)
    root_p = resolve_data_root(root)
    d = _folder(root_p, base)
    if protocol is not None:
        check_choice("protocol", protocol, PROTOCOLS)
    if not spec.standard and (protocol not in (None, "default") or archives or source_root is not None
                              or trust_archive):
        raise DomainlockError(f"{base} is an offline domain: --protocol, --archive, --trust-archive and --root "
                              f"apply to the standard datasets (see `domainlock data list`)")
    if source_root is not None and spec.kind != "folder":
        raise DomainlockError(f"--root applies to the folder datasets (visda, officehome, pacs, domainnet); for {base} "
                              f"pass its files with --archive")

    def existing() -> Path | None:
        if force or not is_built(base, root_p):
            return None
        manifest = read_manifest(base, root_p)
        built_seed = manifest.get("seed")
        if spec.seeded and built_seed != seed:
            raise DomainlockError(f"{base} is already built at {d} with seed {built_seed}; pass force=True "
                                  f"(CLI: --force) to rebuild it with seed {seed}")
        built_protocol = manifest.get("protocol", "default")
        if protocol is not None and built_protocol != protocol:
            raise DomainlockError(f"{base} is already built at {d} with protocol {built_protocol}; pass force=True "
                                  f"(CLI: --force) to rebuild it with protocol {protocol}")
        return d

    if (found := existing()) is not None:
        return found
    ok, why = _available(spec, root_p)
    if not ok:
        raise DataUnavailableError(why)
    with _lock(root_p, base):
        if (found := existing()) is not None:  # another process built it meanwhile
            return found
        t0 = time.perf_counter()
        ctx = BuildContext(root_p, seed, progress, lambda dep: _dependency(dep, root_p, seed, progress),
                           protocol=protocol or "default", archives=tuple(Path(a) for a in archives),
                           trust_archive=trust_archive,
                           source_root=None if source_root is None else Path(source_root), opener=opener)
        res = spec.build(ctx)
        _validate(base, res)
        with atomic_dir(d, overwrite=True) as tmp:
            _write(tmp, base, seed, res, time.perf_counter() - t0)
    return d


def _dependency(name: str, root: Path, seed: int, progress: bool) -> BuiltDomain:
    """A domain another one builds on, built with ``seed`` if it is not built yet (any seed if it is)."""
    if not is_built(name, root):
        build_domain(name, root, seed=seed, progress=progress)
    return BuiltDomain(read_manifest(name, root), lambda split: read_split_arrays(name, split, root))


def read_split_arrays(name: str, split: str, root: str | os.PathLike | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The stored ``(x uint8 [N,3,32,32], y int64 [N])`` of a built domain's split, as numpy."""
    x, y = _read_split(name, split, root)
    return x.numpy(), y.numpy()


def _read_split(name: str, split: str, root: str | os.PathLike | None) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    check_choice("split", split, SPLITS)
    path = domain_dir(name, root) / DATA_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            x, y = f.get_tensor(f"{split}_x"), f.get_tensor(f"{split}_y")
    except (SafetensorError, OSError, KeyError, RuntimeError) as e:
        raise DomainlockError(f"{path} is damaged or incomplete ({e}); rebuild with force=True "
                              f"(CLI: --force)") from None
    if x.dtype != torch.uint8 or x.ndim != 4 or y.dtype != torch.int64 or y.shape[0] != x.shape[0]:
        raise DomainlockError(f"{path}: unexpected {split} tensors {x.dtype}{tuple(x.shape)} / "
                              f"{y.dtype}{tuple(y.shape)}; rebuild with force=True (CLI: --force)")
    return x, y


def load_domain(name: str, split: str = "train", root: str | os.PathLike | None = None, *,
                build: bool = True) -> DomainData:
    """Load one split as float ``[0,1]`` :class:`DomainData`, building the domain on first use.

    ``wm:<domain>[@key=value,...]`` loads ``<domain>`` and applies the watermark (labels unchanged).
    With ``build=False`` a domain that is not built is an error instead.
    """
    check_choice("split", split, SPLITS)
    if isinstance(name, str) and name.startswith(FOLDER_PREFIX):
        return load_folder_split(name[len(FOLDER_PREFIX):], split)
    base, wm = parse_domain(name)
    if not is_built(base, root):
        if not build:
            raise DomainlockError(f"domain {base!r} is not built under {resolve_data_root(root)}; "
                                  f"run `domainlock data build {base}`")
        build_domain(base, root)
    x8, y = _read_split(base, split, root)
    manifest = read_manifest(base, root)
    classes = list(manifest.get("classes") or [])
    x = x8.float().div_(255.0)
    if wm is not None:
        x = apply_watermark(x, wm)
    return DomainData(format_domain(base, wm), split, x, y, int(manifest.get("num_classes", len(classes))),
                      classes)


FOLDER_PREFIX = "folder:"


def load_folder_split(path: str, split: str) -> DomainData:
    """``folder:<path>``: a user's ``<path>/<class>/<image>`` folder as a domain, split 70/10/20 per class
    with the same fixed seed as the built-in domains, so train/val/test never overlap. Every split must get
    an image of every class (10 images per class always do), else a one-line error says so."""
    from .common import stratified_split
    from .folder import load_image_folder
    from .types import require_classes

    if not str(path).strip():
        raise DomainlockError(f"{FOLDER_PREFIX} needs the path of an image folder: {FOLDER_PREFIX}<path> with "
                              "<path>/<class>/<image>")
    data = load_image_folder(path)
    idx = stratified_split(data.y.numpy())[split]
    out = data.subset(torch.from_numpy(idx))
    out.split, out.name = split, f"{FOLDER_PREFIX}{path}"
    try:
        return require_classes(out, per_class=True)
    except DomainlockError as e:
        fewest = min(data.class_counts())
        raise DomainlockError(f"{e}: add images (the {split} split takes "
                              f"{round(100 * dict(zip(SPLITS, SPLIT_FRACTIONS, strict=True))[split])}% of each "
                              f"class; "
                              f"the smallest class has {fewest}, 10 per class always suffice)") from None


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) if d.is_dir() else 0


def domain_info(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Everything ``data list`` shows about a domain (works whether or not it is built)."""
    base, wm = parse_domain(name)
    spec = get_spec(base)
    d = _folder(resolve_data_root(root), base)
    ok, why = _available(spec, root)
    built = is_built(base, root)
    manifest = read_manifest(base, root) if built else {}
    info: dict[str, Any] = {
        "name": format_domain(base, wm),
        "base": base,
        "watermark": None if wm is None else {"channel": wm.channel, "strength": wm.strength,
                                              "stride": wm.stride, "offset": wm.offset},
        "description": spec.description,
        "provider": spec.provider,
        "depends": list(spec.depends),
        "built": built,
        "stale": (not built) and (d / MANIFEST_FILE).is_file(),
        "available": ok,
        "availability": why,
        "path": str(d),
        "counts": manifest.get("counts"),
        "class_counts": manifest.get("class_counts"),
        "num_classes": manifest.get("num_classes"),
        "classes": manifest.get("classes"),
        "size_bytes": _dir_bytes(d) if built else 0,
        "data_bytes": manifest.get("data_bytes"),
        "manifest": manifest or None,
        "kind": spec.kind,
        "state": _state(spec, built, ok, root),
        "licence": spec.licence or None,
        "protocol": manifest.get("protocol"),
        "verification": manifest.get("verification"),
    }
    return info


def _state(spec: DomainSpec, built: bool, available: bool, root: str | os.PathLike | None) -> str:
    """``built``; an offline domain ``buildable``/``unavailable``; a standard dataset ``downloaded`` (its files are
    in the downloads folder), ``needs download``, ``needs a file`` (``--archive``) or ``needs a folder``."""
    if built:
        return "built"
    if not spec.standard:
        return "buildable" if available else "unavailable"
    if spec.kind == "download":
        here = downloads_dir(resolve_data_root(root), spec.name)
        return "downloaded" if all((here / f.name).is_file() for f in spec.files) else "needs download"
    return "needs a file" if spec.kind == "file" else "needs a folder"
