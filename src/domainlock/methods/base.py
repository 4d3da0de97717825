"""The protection contract every method implements (MAP, NTP, NTL, CUTI, magnitude pruning, ...).

A method is a small :class:`Method` (DomainBed's ``Algorithm`` idea): it declares which data settings it
supports and a dataclass of hyper-parameters, and turns a source model into a protected ``nn.Module``.
It reads data **only** through :class:`DataAccess`, which hands out exactly what the setting allows and
records every read; the record goes into the artifact card. So a source-free method cannot read the real
source data even by mistake, and the card says truthfully what each protection was allowed to see.

Settings:

- ``source-available``: labelled source train/val and target train data.
- ``source-free``: target train data only (a method synthesizes its pseudo-source from the model).
- ``data-free``: no real data at all.

Within a setting a method can further say, per hyper-parameters, that it does not read the target
(:meth:`Method.reads_target`, e.g. NTL's ``source-only`` variant): :func:`~domainlock.methods.protect` then
builds the :class:`DataAccess` with ``target_refusal`` set, so every target read raises, while the
``--target`` domain is still used by ``protect()`` itself to *evaluate* the result (the card says
"evaluation only").
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import DomainlockError, UnknownChoiceError

SETTINGS = ("source-available", "source-free", "data-free")


class DataAccessError(DomainlockError):
    """A method asked for data its setting does not allow."""


class DataAccess:
    """The only door through which a method reads data.

    ``loader`` is the function that loads a domain split (``domainlock.data.load_domain`` by default); it
    is injectable so tests can prove that a source-free method never calls it for the source.
    ``target_refusal``: when given, every target read raises with this reason, whatever the setting (the
    method's hyper-parameters promise not to read the target; the target is for evaluation only).
    """

    def __init__(self, setting: str, source: str | None, target: str | None, data_root=None,
                 loader: Callable[..., Any] | None = None, target_refusal: str | None = None):
        if setting not in SETTINGS:
            raise UnknownChoiceError("setting", setting, SETTINGS)
        self.setting, self.source_name, self.target_name, self.data_root = setting, source, target, data_root
        self.target_refusal = target_refusal
        if loader is None:
            from ..data import load_domain as loader
        self._loader = loader
        self.reads: list[str] = []

    @property
    def source_allowed(self) -> bool:
        return self.setting == "source-available"

    @property
    def target_allowed(self) -> bool:
        return (self.setting in ("source-available", "source-free") and self.target_name is not None
                and self.target_refusal is None)

    def source(self, split: str = "train"):
        """Real source data: only in the source-available setting."""
        if not self.source_allowed:
            raise DataAccessError(f"setting {self.setting!r} forbids reading real source data "
                                  f"({self.source_name}:{split})")
        if split == "test":
            raise DataAccessError("methods may not read the source test split; use train or val")
        self.reads.append(f"source:{self.source_name}:{split}")
        return self._loader(self.source_name, split, self.data_root)

    def target(self, split: str = "train"):
        """Real target data (labels included; a method that must not use them says so in its card)."""
        if not self.target_allowed:
            if self.target_refusal is not None:
                why = self.target_refusal
            elif self.target_name is None:
                why = "no target domain was given"
            else:
                why = f"setting {self.setting!r} forbids reading real target data"
            raise DataAccessError(f"{why} ({self.target_name}:{split})")
        if split == "test":
            raise DataAccessError("methods may not read the target test split; use train or val")
        self.reads.append(f"target:{self.target_name}:{split}")
        return self._loader(self.target_name, split, self.data_root)


@dataclass
class RunContext:
    """What a method gets besides model and data: where to compute, its seed, whether to show progress."""

    device: torch.device
    seed: int = 0
    progress: bool = True
    log: dict[str, Any] = field(default_factory=dict)  # method-specific diagnostics, copied into the card

    def generator(self, offset: int = 0) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed + offset)
        return g


class Sampler:
    """Endless shuffled index batches of ``min(bs, n)`` indices, seeded by ``g``: reshuffled after each full
    pass (the short tail of a pass is skipped). The methods' step-based loops (MAP, NTP, NTL, CUTI) use it."""

    def __init__(self, n: int, bs: int, g: torch.Generator):
        if n < 1:
            raise DomainlockError("cannot sample batches from an empty set")
        self.n, self.bs, self.g = n, min(bs, n), g
        self.order, self.pos = torch.randperm(n, generator=g), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.bs > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.g), 0
        idx = self.order[self.pos:self.pos + self.bs]
        self.pos += self.bs
        return idx


class StepLog:
    """A step loop's progress bar (when ``progress``) and its loss history: every ``every`` steps and at the last
    one, :meth:`step` calls ``losses()`` (floats by name), keeps them as ``last`` and appends them, rounded, to
    ``history``. :meth:`close` (or leaving it as a context manager) closes the bar."""

    def __init__(self, steps: int, every: int, desc: str, progress: bool,
                 postfix: Callable[[dict[str, float]], dict[str, str]] | None = None):
        self.steps, self.every, self.postfix = steps, every, postfix
        self.history: list[dict[str, float]] = []
        self.last: dict[str, float] = {}
        self.bar = None
        if progress and steps > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True, leave=False)

    def step(self, step: int, losses: Callable[[], dict[str, float]]) -> None:
        """After optimizer step ``step`` (0-based)."""
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            self.last = losses()
            self.history.append({"step": step + 1, **{k: round(v, 5) for k, v in self.last.items()}})
            if self.bar is not None and self.postfix is not None:
                self.bar.set_postfix(self.postfix(self.last))
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> StepLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class MethodResult:
    model: nn.Module                       # plain, dense module (masks folded in)
    info: dict[str, Any] = field(default_factory=dict)  # diagnostics for the card
    extras: dict[str, Any] = field(default_factory=dict)  # in-memory by-products for the caller, not in the card


class Method(ABC):
    """One protection method. Subclasses set ``name``, ``settings``, ``Hparams`` and implement ``run``."""

    name: ClassVar[str]
    settings: ClassVar[tuple[str, ...]]
    Hparams: ClassVar[type]
    needs_target: ClassVar[bool] = True   # does it need a target domain in the settings that allow one?
    summary: ClassVar[str] = ""
    #: named hyper-parameter sets (e.g. a paper's reference values beside the CPU-sized defaults)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def make_hparams(cls, preset: str | None = None, **overrides: Any) -> Any:
        """The hyper-parameters: the dataclass defaults, then the named ``preset``'s values, then ``overrides``."""
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in cls.presets:
                raise UnknownChoiceError(f"preset of method {cls.name!r}", preset, cls.presets,
                                         "" if cls.presets else "this method has no presets")
            values.update(cls.presets[preset])
        values.update(overrides)
        return cls.Hparams(**values)

    def validate(self, hp: Any, setting: str) -> None:
        """Check hyper-parameter ranges; raise a one-line DomainlockError naming the bad value."""
        return None

    def reads_target(self, hp: Any) -> bool:
        """Whether the method, with these hyper-parameters, reads target data (in the settings that allow
        it). ``False`` (e.g. a source-only variant) makes ``protect()`` refuse every target read and use the
        target for evaluation only; ``--target`` is then not required."""
        return True

    def target_refusal(self, hp: Any) -> str:
        """The reason given when a method that does not read the target tries to (see :meth:`reads_target`)."""
        return f"method {self.name!r} with these hyper-parameters does not read target data"

    @abstractmethod
    def run(self, model: nn.Module, access: DataAccess, hp: Any, ctx: RunContext) -> MethodResult:
        """Return the protected model. ``model`` is a private copy: it may be changed in place."""


def hparams_dict(hp: Any) -> dict[str, Any]:
    return dataclasses.asdict(hp) if dataclasses.is_dataclass(hp) else dict(hp or {})
