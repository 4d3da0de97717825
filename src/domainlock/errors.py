"""Errors a user can cause. The CLI prints them as one line and exits with code 2 (no traceback)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class DomainlockError(Exception):
    """Base class for every error caused by bad input or bad state the user can fix."""


class UnknownChoiceError(DomainlockError, ValueError):
    """A name that is not one of the valid choices (domain, arch, device, method, ...)."""

    def __init__(self, kind: str, value: object, choices: Iterable[str], hint: str = ""):
        self.kind, self.value, self.choices = kind, value, sorted(choices)
        msg = f"unknown {kind} {value!r}; valid choices: {', '.join(self.choices)}"
        super().__init__(msg + (f" ({hint})" if hint else ""))


class ArtifactError(DomainlockError):
    """A model artifact that is missing, truncated, tampered with, or of another architecture."""


class BuilderError(DomainlockError):
    """A user's model builder file (``domainlock import``) that is missing, changed since the import, fails
    to run, or does not return a module."""


class NonFiniteWeightsError(ArtifactError):
    """A model (loaded from an artifact or given in memory) whose weights or buffers hold NaN or inf."""


class DataUnavailableError(DomainlockError):
    """A domain that cannot be built offline on this machine (names what provides it)."""


class OutputExistsError(DomainlockError, FileExistsError):
    """An output path that exists and would be overwritten without --overwrite."""


class TrainingDivergedError(DomainlockError):
    """The loss became NaN/inf: training stops instead of writing garbage."""


def check_choice(kind: str, value: str, choices: Iterable[str], hint: str = "") -> str:
    """Return ``value`` if it is one of ``choices``, else raise :class:`UnknownChoiceError`."""
    choices = list(choices)
    if value not in choices:
        raise UnknownChoiceError(kind, value, choices, hint)
    return value


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> float:
    """Raise a one-line :class:`DomainlockError` unless ``low (<|<=) value (<|<=) high``."""
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        lb, hb = ("(" if low_open else "["), (")" if high_open else "]")
        raise DomainlockError(f"{name}={value!r} is out of range; valid: {lb}{low}, {high}{hb}")
    return value


def check_finite(name: str, value: Any) -> float:
    """``value`` as a float, or a one-line :class:`DomainlockError` naming it when it is not a finite number
    (bools are refused: ``True`` is not a learning rate)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DomainlockError(f"{name}={value!r} must be a finite number")
    return float(value)


def check_integer(name: str, value: Any, low: int, high: float = math.inf) -> int:
    """``value`` if it is an integer in ``[low, high]``, else a one-line :class:`DomainlockError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DomainlockError(f"{name}={value!r} must be an integer")
    check_range(name, value, low, high)
    return value
