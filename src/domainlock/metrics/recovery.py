"""Recovery: the share of a protection an attack undid (METHODS.md §4).

    recovery = clip((acc_T after attack - acc_T protected) / (acc_T unprotected - acc_T protected), 0, 1)

where the denominator is positive; ``None`` otherwise (the protection took nothing away to recover). 1 means
the attack undid the protection entirely; the worst case over a suite of attacks is a protection's headline.
"""

from __future__ import annotations


def recovery(after: float, protected: float, unprotected: float) -> float | None:
    """The formula in the module docstring."""
    gap = unprotected - protected
    if gap <= 0:
        return None
    return min(1.0, max(0.0, (after - protected) / gap))
