"""Ownership verification by watermark (METHODS.md §1).

The owner protects the model with ``target = wm:<source>``: it keeps clean accuracy and collapses on
watermarked inputs. :func:`verify` measures a suspect model on the owner's clean test images and on the
same images watermarked. The evidence is paired (each image is seen clean and watermarked), so the test is
an exact one-sided McNemar/sign test on the discordant pairs:

    b = #(right clean, wrong watermarked),  c = #(wrong clean, right watermarked)
    p = P[X ≥ b],  X ~ Binomial(b + c, 1/2)

A suspect is flagged when the accuracy gap is at least ``min_gap`` *and* ``p < alpha``: the gap guards
against tiny but "significant" effects on large test sets, the p-value against luck on small ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .errors import check_range


@dataclass
class VerifyResult:
    clean_accuracy: float
    watermarked_accuracy: float
    gap: float
    p_value: float
    n: int
    discordant_right_clean: int   # b
    discordant_right_wm: int      # c
    flagged: bool
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def binomial_sf(k: int, n: int, p: float = 0.5) -> float:
    """P[X ≥ k] for X ~ Binomial(n, p), summed in log space (exact for the sizes used here)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def paired_watermark_test(right_clean: torch.Tensor, right_wm: torch.Tensor, *, alpha: float = 1e-3,
                          min_gap: float = 0.25) -> VerifyResult:
    """The decision rule on per-image correctness vectors (bool tensors of equal length)."""
    check_range("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
    check_range("min_gap", min_gap, 0.0, 1.0)
    right_clean, right_wm = right_clean.bool().flatten(), right_wm.bool().flatten()
    n = right_clean.numel()
    b = int((right_clean & ~right_wm).sum())
    c = int((~right_clean & right_wm).sum())
    acc_c, acc_w = right_clean.double().mean().item(), right_wm.double().mean().item()
    p = binomial_sf(b, b + c)
    gap = acc_c - acc_w
    flagged = gap >= min_gap and p < alpha
    p_text = f"{p:.2e}" if p > 0 else "< 1e-300"
    verdict = ("FLAGGED: the suspect collapses on the owner's watermark "
               f"(gap {gap:.3f} ≥ {min_gap}, p = {p_text}, needs < {alpha}); "
               "evidence it derives from the protected model"
               if flagged else
               f"not flagged: gap {gap:.3f} (needs ≥ {min_gap}) with p = {p_text} (needs < {alpha})")
    return VerifyResult(acc_c, acc_w, gap, p, n, b, c, flagged, verdict)


def verify(model: nn.Module, owner_data: str = "mnist", *, watermark: str | None = None, split: str = "test",
           data_root=None, device: str = "auto", alpha: float = 1e-3, min_gap: float = 0.25) -> VerifyResult:
    """Test whether ``model`` behaves like the owner's watermark-protected model.

    ``owner_data`` is the owner's clean domain; ``watermark`` the ``wm:`` domain the model was protected
    against (default ``wm:<owner_data>`` with the default pattern).
    """
    from .data import load_domain, parse_domain
    from .evaluation import predict

    base, spec = parse_domain(owner_data)
    if spec is not None:
        from .errors import DomainlockError
        raise DomainlockError(f"--owner-data must be the clean domain, not {owner_data!r}; "
                              f"give the watermark with --watermark")
    wm_name = watermark or f"wm:{base}"
    clean = load_domain(base, split, data_root)
    marked = load_domain(wm_name, split, data_root)
    right_clean = predict(model, clean.x, device=device) == clean.y
    right_wm = predict(model, marked.x, device=device) == marked.y
    return paired_watermark_test(right_clean, right_wm, alpha=alpha, min_gap=min_gap)
