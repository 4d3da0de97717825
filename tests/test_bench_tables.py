"""The table helpers the scripts share (domainlock.bench.tables): formatting, pairs, the common cells."""

from __future__ import annotations

import math

import pytest

from domainlock.bench import tables

DOMAINS = ["mnist", "uci-digits", "syn"]


def test_pct_and_mean_skip_missing_values():
    assert tables.pct(0.9876) == "98.8" and tables.pct(None) == "—" and tables.pct(float("nan")) == "—"
    assert tables.mean([0.5, None, float("nan"), 1.0]) == 0.75
    assert math.isnan(tables.mean([None]))


def test_pairs_parse_order_and_fail_with_one_line():
    assert len(tables.parse_pairs("all", DOMAINS)) == 6
    assert tables.parse_pairs("syn:mnist,mnist:syn", DOMAINS) == [("syn", "mnist"), ("mnist", "syn")]
    for bad in ("mnist:mnist", "mnist", "mnist:svhn"):
        with pytest.raises(SystemExit, match="bad pair"):
            tables.parse_pairs(bad, DOMAINS)
    assert tables.in_domain_order({("syn", "mnist"), ("mnist", "syn"), ("mnist", None)}, DOMAINS) == [
        ("mnist", None), ("mnist", "syn"), ("syn", "mnist")]


def test_names_parse_and_an_unknown_one_exits_naming_the_choices():
    assert tables.parse_names(" ntp, sa-map ,", ["sa-map", "ntp"], "run") == ["ntp", "sa-map"]
    with pytest.raises(SystemExit, match=r"unknown method 'ntx'; valid: sa-map, ntp"):
        tables.parse_names("ntp,ntx", ("sa-map", "ntp"), "method")


def test_typed_value_follows_the_default():
    assert tables.typed_value(False, "Yes") is True
    assert tables.typed_value(1, "3") == 3 and tables.typed_value(0.5, "2") == 2.0


def test_row_and_mean_cells_fill_the_header_columns():
    row = {"src": "mnist", "tgt": "syn", "seed": 0, "s0": 0.99, "s1": 0.98, "t0": 0.8, "t1": 0.1,
           "std": tables.st_d_entry(0.99, 0.98, 0.8, 0.1, 0.1),
           "unseen": {"uci-digits": {"before": 0.8, "after": 0.5}}}
    cells = tables.row_cells(row)
    assert cells.count("|") == tables.ROW_HEADER.count("|")
    assert cells.startswith("| mnist → syn | 0 | 99.0 → 98.0 | 80.0 → 10.0 | ")
    assert cells.endswith("| uci-digits: 80.0 → 50.0 | — |")
    means = tables.mean_cells([row])
    assert means.count("|") == tables.ROW_HEADER.count("|")
    assert means.startswith("| **mean** (1 rows, ST-D over 1 non-trivial) | | 99.0 → 98.0 | 80.0 → 10.0 | **")


def test_non_default_hparams_names_old_defaults_and_mixed_rows():
    defaults = {"alpha": 0.3, "steps": 600, "path": ""}
    recorded = [{"alpha": 1.0, "steps": 600, "path": "a"}, {"alpha": 1.0, "path": "b"}]
    assert tables.non_default_hparams(defaults, recorded, skip=("path",)) == {"alpha": 1.0}
    mixed = recorded + [{"alpha": 0.3, "steps": 200}]
    assert tables.non_default_hparams(defaults, mixed, skip=("path",)) == {
        "alpha": {"values": [1.0], "rows_at_default": 1}, "steps": {"values": [200], "rows_at_default": 2}}
    assert tables.non_default_hparams(defaults, [{}, {"unknown": 1}]) == {}
