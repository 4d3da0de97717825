"""Ownership verification: the exact paired test on hand-computed values, and the decision rule."""

from __future__ import annotations

import math

import pytest
import torch

from domainlock.errors import DomainlockError
from domainlock.ownership import binomial_sf, paired_watermark_test


def test_binomial_tail_hand_values():
    assert binomial_sf(8, 10) == pytest.approx((45 + 10 + 1) / 1024)
    assert binomial_sf(0, 10) == 1.0 and binomial_sf(11, 10) == 0.0
    assert binomial_sf(10, 10) == pytest.approx(2.0 ** -10)
    assert binomial_sf(1, 1) == pytest.approx(0.5)
    # symmetric: P[X >= 6] of Bin(10, .5) = 1 - P[X <= 5] = (1 - 252/1024) / 2 + ... computed directly
    assert binomial_sf(6, 10) == pytest.approx(sum(math.comb(10, i) for i in range(6, 11)) / 1024)
    # huge n stays finite and tiny
    assert 0.0 <= binomial_sf(1500, 2000) < 1e-100


def _vectors(n: int, clean_right: int, wm_right_of_clean_right: int, wm_right_of_clean_wrong: int):
    rc = torch.zeros(n, dtype=torch.bool)
    rc[:clean_right] = True
    rw = torch.zeros(n, dtype=torch.bool)
    rw[:wm_right_of_clean_right] = True
    rw[clean_right:clean_right + wm_right_of_clean_wrong] = True
    return rc, rw


def test_collapsing_suspect_is_flagged():
    rc, rw = _vectors(1000, 990, 100, 5)    # 99% clean, 10.5% watermarked
    r = paired_watermark_test(rc, rw)
    assert r.discordant_right_clean == 890 and r.discordant_right_wm == 5
    assert r.clean_accuracy == pytest.approx(0.99) and r.watermarked_accuracy == pytest.approx(0.105)
    assert r.gap == pytest.approx(0.885)
    assert r.p_value < 1e-100 and r.flagged and r.verdict.startswith("FLAGGED")


def test_unrelated_model_is_not_flagged():
    rc, rw = _vectors(1000, 980, 975, 3)    # the watermark costs an unrelated model 0.2 points
    r = paired_watermark_test(rc, rw)
    assert not r.flagged and r.gap == pytest.approx(0.002)


def test_large_but_insignificant_gap_is_not_flagged():
    rc, rw = _vectors(4, 3, 0, 0)           # 75% -> 0% on 4 images: gap .75 but p = 1/8
    r = paired_watermark_test(rc, rw)
    assert r.p_value == pytest.approx(1 / 8) and not r.flagged


def test_significant_but_small_gap_is_not_flagged():
    rc, rw = _vectors(100000, 99000, 94000, 0)   # 5 points: significant, below min_gap
    r = paired_watermark_test(rc, rw)
    assert r.p_value < 1e-100 and not r.flagged


def test_bad_thresholds():
    rc, rw = _vectors(10, 5, 5, 0)
    with pytest.raises(DomainlockError, match="alpha=0"):
        paired_watermark_test(rc, rw, alpha=0)
    with pytest.raises(DomainlockError, match="min_gap=1.5"):
        paired_watermark_test(rc, rw, min_gap=1.5)
