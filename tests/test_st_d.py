import math

import pytest

from domainlock.errors import DomainlockError
from domainlock.metrics import STDResult, mean_st_d, st_d


def test_hand_computed_value():
    r = st_d(0.99, 0.98, 0.60, 0.10, num_classes=10)
    retain = 0.98 / 0.99
    drop = (0.60 - 0.10) / (0.60 - 0.10)  # = 1.0
    assert r.retain_s == pytest.approx(retain)
    assert r.drop_t == pytest.approx(1.0)
    assert r.st_d == pytest.approx(2 * retain * drop / (retain + drop))
    assert r.st_d == pytest.approx(0.994923857868, abs=1e-9)
    assert not r.trivial and r.chance == pytest.approx(0.1)


def test_partial_drop_hand_value():
    # drop = (0.8 - 0.5) / (0.8 - 0.2) = 0.5 ; retain = 0.9 / 0.95
    r = st_d(0.95, 0.90, 0.80, 0.50, chance=0.2)
    retain = 0.90 / 0.95
    assert r.drop_t == pytest.approx(0.5)
    assert r.st_d == pytest.approx(2 * retain * 0.5 / (retain + 0.5))


def test_source_improved_retain_capped():
    r = st_d(0.90, 0.95, 0.60, 0.10, num_classes=10)
    assert r.retain_s == 1.0 and r.drop_t == pytest.approx(1.0) and r.st_d == pytest.approx(1.0)


def test_target_increased_gives_zero():
    r = st_d(0.99, 0.99, 0.50, 0.70, num_classes=10)
    assert r.drop_t == 0.0 and r.st_d == 0.0


def test_both_zero_is_zero_not_nan():
    r = st_d(0.9, 0.0, 0.5, 0.6, num_classes=10)
    assert r.retain_s == 0.0 and r.drop_t == 0.0 and r.st_d == 0.0


def test_below_chance_after_clipped_at_one():
    r = st_d(0.9, 0.9, 0.5, 0.0, num_classes=10)
    assert r.drop_t == 1.0 and r.st_d == pytest.approx(1.0)


def test_source_before_zero_no_zero_division():
    r = st_d(0.0, 0.0, 0.5, 0.1, num_classes=10)
    assert r.retain_s == 1.0 and r.drop_t == pytest.approx(1.0)


def test_trivial_pair_at_chance():
    r = st_d(0.99, 0.98, 0.13, 0.10, num_classes=10)  # 3 points above chance
    assert r.trivial and math.isnan(r.st_d) and math.isnan(r.drop_t)
    assert r.retain_s == pytest.approx(0.98 / 0.99)
    assert st_d(0.99, 0.98, 0.10, 0.10, num_classes=10).trivial


def test_trivial_boundary_exactly_five_points_is_not_trivial():
    assert not st_d(0.9, 0.9, 0.15, 0.10, num_classes=10).trivial
    assert st_d(0.9, 0.9, 0.1499, 0.10, num_classes=10).trivial


def test_mean_ignores_trivial():
    a = st_d(0.99, 0.98, 0.60, 0.10, num_classes=10)
    b = st_d(0.9, 0.9, 0.5, 0.7, num_classes=10)  # 0
    t = st_d(0.9, 0.9, 0.11, 0.10, num_classes=10)
    assert mean_st_d([a, b, t]) == pytest.approx(a.st_d / 2)
    assert math.isnan(mean_st_d([t]))
    assert math.isnan(mean_st_d([]))
    assert isinstance(a, STDResult) and a.as_dict()["st_d"] == a.st_d


@pytest.mark.parametrize("args,bad", [
    ((1.2, 0.9, 0.5, 0.1), "acc_s_before=1.2"),
    ((0.9, -0.1, 0.5, 0.1), "acc_s_after=-0.1"),
    ((0.9, 0.9, 50, 0.1), "acc_t_before=50"),
    ((0.9, 0.9, 0.5, float("nan")), "acc_t_after=nan"),
    ((0.9, 0.9, 0.5, "x"), "acc_t_after='x'"),
])
def test_bad_inputs_raise_naming_value(args, bad):
    with pytest.raises(DomainlockError, match=bad.replace("(", r"\(")):
        st_d(*args, num_classes=10)


def test_chance_arguments_validated():
    with pytest.raises(DomainlockError, match="exactly one"):
        st_d(0.9, 0.9, 0.5, 0.1)
    with pytest.raises(DomainlockError, match="exactly one"):
        st_d(0.9, 0.9, 0.5, 0.1, num_classes=10, chance=0.1)
    with pytest.raises(DomainlockError, match="num_classes"):
        st_d(0.9, 0.9, 0.5, 0.1, num_classes=1)
    with pytest.raises(DomainlockError, match="chance"):
        st_d(0.9, 0.9, 0.5, 0.1, chance=0.0)
