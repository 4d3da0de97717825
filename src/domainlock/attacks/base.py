"""The contract every attack implements, and the door through which it reads data (METHODS.md §4).

An attack declares its **threat model** — exactly what the attacker holds — from its parameters
(:meth:`Attack.threat`), and reads data only through :class:`AttackAccess`, which hands out exactly that and
records every read: ``n`` labelled target samples (per-class balanced, from the target *train* split), a
fraction ``p`` of the labelled source train split (stratified), a fraction of the target train split without
labels, unlabelled images of another domain, or nothing. No attack can reach a test split, and an attack
that only *queries* the model (black box) receives a :class:`QueryOnly` wrapper, never the weights. Model
selection inside an attack uses only what the attacker holds (its own held-out share, or the last step).

Draws are seeded, so two attacks with the same seed and holdings see the same samples.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import DomainlockError, check_range
from ..evaluation import EVAL_BATCH
from .sampling import sample_per_class, stratified_fraction


class AttackAccessError(DomainlockError):
    """An attack asked for data its threat model does not give it."""


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker holds. Zero / ``None`` / ``False`` means it does not hold that."""

    target_labelled: int = 0         #: n labelled target train samples, per-class balanced
    source_fraction: float = 0.0     #: fraction p of the labelled source train split, stratified
    target_unlabelled: float = 0.0   #: fraction of the target train split, without labels
    other_unlabelled: bool = False   #: unlabelled images of a domain of the attacker's choosing (``other``)
    white_box: bool = True           #: False: the attacker may only query the model's outputs

    def __post_init__(self) -> None:
        if isinstance(self.target_labelled, bool) or not isinstance(self.target_labelled, int) \
                or self.target_labelled < 0:
            raise DomainlockError(f"n={self.target_labelled!r} must be a non-negative integer")
        for name in ("source_fraction", "target_unlabelled"):
            v = getattr(self, name)
            if v != 0:
                check_range(name.replace("source_fraction", "p"), v, 0.0, 1.0, low_open=True)

    def needs(self) -> list[str]:
        """The domains the user must name for this attacker: ``target``, ``source``, ``other``."""
        out = ["target"]   # the attacked domain: what the attack is scored on
        if self.source_fraction:
            out.append("source")
        if self.other_unlabelled:
            out.append("other")
        return out

    def describe(self) -> str:
        parts = []
        if self.target_labelled:
            parts.append(f"{self.target_labelled} labelled target samples")
        if self.source_fraction:
            parts.append(f"{self.source_fraction:.0%} of the labelled source data")
        if self.target_unlabelled:
            parts.append(f"{self.target_unlabelled:.0%} of the target data without labels")
        if self.other_unlabelled:
            parts.append("unlabelled images of another domain")
        access = "the weights" if self.white_box else "query access to the outputs only"
        return f"{access}; " + (", ".join(parts) if parts else "no data")


class QueryOnly:
    """A black-box view of a model: class probabilities for a batch of images, nothing else (no weights, no
    gradients). ``queries`` counts the images sent. The model answers ``EVAL_BATCH`` images at a time (a
    large query batch is no cheaper per image on CPU, often dearer)."""

    def __init__(self, model: nn.Module, device: torch.device):
        self._model, self._device, self.queries = model.eval(), device, 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.queries += len(x)
        x = x.to(self._device)
        out = [self._model(x[i:i + EVAL_BATCH]) for i in range(0, max(1, len(x)), EVAL_BATCH)]
        return torch.softmax(torch.cat(out), dim=1).detach()


class AttackAccess:
    """The only door through which an attack reads data; see the module docstring. ``loader`` is the function
    that loads a domain split (``domainlock.data.load_domain`` by default), injectable so tests can prove what
    an attack reads; ``reads`` records every read."""

    def __init__(self, threat: ThreatModel, *, target: str, source: str | None = None, other: str | None = None,
                 data_root: Any = None, seed: int = 0, loader: Callable[..., Any] | None = None):
        missing = [d for d in threat.needs() if {"target": target, "source": source, "other": other}[d] is None]
        if missing:
            raise AttackAccessError(f"this attacker holds {threat.describe()}: name the {' and '.join(missing)} "
                                    f"domain ({', '.join('--' + d for d in missing)})")
        if loader is None:
            from ..data import load_domain as loader
        self.threat, self.target_name, self.source_name, self.other_name = threat, target, source, other
        self.data_root, self.seed, self._loader = data_root, int(seed), loader
        self.reads: list[str] = []

    def _load(self, role: str, name: str, split: str):
        if split == "test":
            raise AttackAccessError("an attack never reads a test split")
        self.reads.append(f"{role}:{name}:{split}")
        return self._loader(name, split, self.data_root)

    def target_labelled(self):
        """The attacker's ``n`` labelled target samples (per-class balanced draw from the target train split)."""
        n = self.threat.target_labelled
        if not n:
            raise AttackAccessError(f"this attacker holds {self.threat.describe()}, no labelled target samples")
        data = self._load("target", self.target_name, "train")
        return data.subset(sample_per_class(data, n, self.seed))

    def source_labelled(self):
        """A stratified fraction ``p`` of the labelled source train split (at least one image per class)."""
        p = self.threat.source_fraction
        if not p:
            raise AttackAccessError(f"this attacker holds {self.threat.describe()}, no source data")
        data = self._load("source", self.source_name, "train")
        return data.subset(stratified_fraction(data.y, p, self.seed))

    def target_unlabelled(self) -> torch.Tensor:
        """Images (no labels) of a fraction of the target train split."""
        frac = self.threat.target_unlabelled
        if not frac:
            raise AttackAccessError(f"this attacker holds {self.threat.describe()}, no unlabelled target data")
        data = self._load("target", self.target_name, "train")
        g = torch.Generator().manual_seed(self.seed + 17)
        k = max(1, math.ceil(frac * len(data)))
        return data.x[torch.randperm(len(data), generator=g)[:k]]

    def other_unlabelled(self) -> torch.Tensor:
        """Images (no labels) of the attacker's own domain."""
        if not self.threat.other_unlabelled:
            raise AttackAccessError(f"this attacker holds {self.threat.describe()}, no images of another domain")
        return self._load("other", self.other_name, "train").x


@dataclass
class AttackContext:
    """Where the attack computes, its seed, and whether it shows progress."""

    device: torch.device
    seed: int = 0
    progress: bool = False


@dataclass
class AttackOutcome:
    """What an attack produced: the model to score (a plain module; for an input-disguising attack, the
    translator in front of the untouched model) and diagnostics for the record."""

    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)


class Attack(ABC):
    """One attack. Subclasses set ``name``, ``summary``, ``Params`` and implement :meth:`threat` and :meth:`run`."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    example: ClassVar[str] = ""
    Params: ClassVar[type]

    @abstractmethod
    def threat(self, params: Any) -> ThreatModel:
        """What the attacker holds with these parameters."""

    @abstractmethod
    def run(self, model: nn.Module | QueryOnly, access: AttackAccess, params: Any, ctx: AttackContext
            ) -> AttackOutcome:
        """Attack ``model`` (a private copy, white box; or a :class:`QueryOnly` view, black box)."""
