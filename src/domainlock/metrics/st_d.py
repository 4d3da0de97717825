"""ST-D: one number that balances source retention against target degradation (METHODS.md section 1).

**Reconstructed definition.** The MAP paper (CVPR 2024) introduces ST-D to balance source and target
degradation, but its exact formula was not available to this project. domainlock defines it as
follows -- this is the project's own definition, not the paper's. With accuracies in [0, 1], measured
before and after protection, and ``chance = 1 / num_classes``::

    retain_S = min(1, acc_S_after / acc_S_before)
    drop_T   = clip((acc_T_before - acc_T_after) / (acc_T_before - chance), 0, 1)
    ST-D     = 2 * retain_S * drop_T / (retain_S + drop_T)      (0 when both are 0)

ST-D is the harmonic mean of the two: 1 is perfect (source intact, target at or below chance), 0 when
either the source is destroyed or the target did not drop at all.

Conventions (documented choices):

* ``acc_S_before == 0``: there is nothing to lose, so ``retain_S = 1`` (no division by zero).
* **Trivial pairs.** When the unprotected model is already within 5 points of chance on the target
  (``acc_T_before - chance < trivial_margin``, compared after rounding to 12 decimals so that a value
  exactly 5 points above chance is *not* trivial), ``drop_T`` is undefined: the result has
  ``trivial=True`` and ``drop_t = st_d = nan`` (``retain_s`` is still reported). Leave such pairs out
  of ST-D means (:func:`mean_st_d` does) and judge them by the fine-tuning attack (SLC-AUC) instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from domainlock.errors import DomainlockError, check_range

#: Default margin (accuracy points / 100) above chance under which a target pair is trivial.
TRIVIAL_MARGIN = 0.05


@dataclass(frozen=True)
class STDResult:
    """ST-D of one source/target pair with its two components (``nan`` where undefined)."""

    st_d: float
    retain_s: float
    drop_t: float
    trivial: bool
    chance: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _accuracy(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DomainlockError(f"{name}={value!r} is not a number; accuracies are fractions in [0, 1]"
                              ) from None
    if math.isnan(v):
        raise DomainlockError(f"{name}=nan is not an accuracy; accuracies are fractions in [0, 1]")
    check_range(name, v, 0.0, 1.0)
    return v


def _chance(num_classes: int | None, chance: float | None) -> float:
    if (num_classes is None) == (chance is None):
        raise DomainlockError("give exactly one of num_classes or chance to compute ST-D")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise DomainlockError(f"num_classes={num_classes!r} must be an integer >= 2")
        return 1.0 / num_classes
    c = _accuracy("chance", chance)
    check_range("chance", c, 0.0, 1.0, low_open=True, high_open=True)
    return c


def st_d(acc_s_before: float, acc_s_after: float, acc_t_before: float, acc_t_after: float, *,
         num_classes: int | None = None, chance: float | None = None,
         trivial_margin: float = TRIVIAL_MARGIN) -> STDResult:
    """ST-D of a protection (reconstructed definition; see the module docstring).

    Give the chance level as ``num_classes`` (chance = 1/C) or directly as ``chance``. All accuracies
    must be fractions in [0, 1]; a bad value raises :class:`DomainlockError` naming it.
    """
    s0 = _accuracy("acc_s_before", acc_s_before)
    s1 = _accuracy("acc_s_after", acc_s_after)
    t0 = _accuracy("acc_t_before", acc_t_before)
    t1 = _accuracy("acc_t_after", acc_t_after)
    c = _chance(num_classes, chance)
    check_range("trivial_margin", float(trivial_margin), 0.0, 1.0)

    retain = 1.0 if s0 == 0 else min(1.0, s1 / s0)
    if round(t0 - c, 12) < trivial_margin:
        return STDResult(float("nan"), retain, float("nan"), True, c)
    drop = min(1.0, max(0.0, (t0 - t1) / (t0 - c)))
    score = 0.0 if retain + drop == 0 else 2.0 * retain * drop / (retain + drop)
    return STDResult(score, retain, drop, False, c)


def mean_st_d(results: Iterable[STDResult]) -> float:
    """Mean ST-D over the non-trivial results; ``nan`` when every result is trivial (or none given)."""
    values = [r.st_d for r in results if not r.trivial]
    return sum(values) / len(values) if values else float("nan")
