"""scripts/compare_table.py: the side-by-side table reads the three result JSONs and computes its verdict."""

import importlib.util
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ct():
    spec = importlib.util.spec_from_file_location("compare_table",
                                                  Path(__file__).resolve().parents[1] / "scripts/compare_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def acc(src_after: float, tgt_after: float, src="mnist", tgt="syn"):
    out = {d: {"before": 0.8, "after": 0.8} for d in ("mnist", "uci-digits", "syn", "mnistm")}
    out[src] = {"before": 1.0, "after": src_after}
    out[tgt] = {"before": 0.9, "after": tgt_after}
    return out


def test_seeds_hold_and_ordering(ct):
    assert ct.seeds_hold({"sa-map": 0.9, "ntp": 0.8, "ntl:target": 0.7, "cuti:target": 0.75},
                         "high").startswith("**holds**")
    # lower is better for SLC-AUC: ntp at +0.1 does not beat cuti at -0.2
    text = ct.seeds_hold({"sa-map": -0.5, "ntp": 0.1, "ntl:target": 0.0, "cuti:target": -0.2}, "low")
    assert text.startswith("**does not hold**") and "`ntp` +0.100" in text and "`cuti:target`" in text
    assert "`ntl:target` +0.000" in text  # 0.1 is not below 0.0 either
    assert "`sa-map`" not in text  # sa-map beats both
    # a margin within TIE is a tie, not a win
    text = ct.seeds_hold({"sa-map": 0.201, "ntp": -0.05, "ntl:target": 0.209, "cuti:target": 0.202}, "low")
    assert text.startswith("**does not hold**") and "`sa-map` +0.201 ties with `cuti:target` +0.202" in text
    assert "`sa-map` +0.201 ties with `ntl:target` +0.209" in text  # 0.008 apart: within the margin too
    assert "`ntp`" not in text  # -0.05 beats both by far more than the margin
    assert ct.seeds_hold({"sa-map": 0.95, "ntp": 0.9, "ntl:target": 0.7, "cuti:target": 0.85},
                         "high").startswith("**holds**")
    assert ct.seeds_hold({"sa-map": 0.9}, "high").startswith("not decidable")
    assert ct.ordering("x", {"a": 0.1, "b": -0.3, "c": float("nan")}, "low") == "x, best first: `b` -0.300, `a` +0.100"


def test_render_from_result_jsons(ct, tmp_path):
    # ST-D by hand (chance 0.1): retain 0.98, drop (0.9-0.1)/(0.9-0.1) = 1 -> 2*0.98/1.98
    (tmp_path / "map_results.json").write_text(json.dumps({"meta": {"device": "cuda"}, "records": {
        "sa-map|mnist|syn|0": {"method": "sa-map", "source": "mnist", "target": "syn", "seed": 0,
                               "accuracy": acc(0.98, 0.1), "wall_time_s": 2.0}}}))
    (tmp_path / "baselines.json").write_text(json.dumps({"meta": {"device": "cpu"}, "records": {
        "magnitude|0.9|mnist|-|0": {"run": "magnitude:0.9", "method": "magnitude", "source": "mnist",
                                    "target": None, "seed": 0, "accuracy": acc(1.0, 0.9), "wall_time_s": 1.0}}}))
    slc_rec = {"run": "ntp:unscaled", "source": "mnist", "target": "syn", "seed": 0, "accuracy": acc(0.98, 0.1),
               "dense": {"slc_auc": -0.2, "unprotected_slc_auc": 0.4}, "masked": {"slc_auc": -0.3},
               "protect_wall_s": 5.0, "sparsity": 0.9}
    (tmp_path / "ntp_results.json").write_text(json.dumps({"records": {"k": slc_rec}}))
    direct, slc = ct.direct_rows(tmp_path), ct.slc_rows(tmp_path)
    assert len(direct["sa-map"]) == 1 and len(direct["magnitude:0.9"]) == 3  # no target read: every column
    assert direct["sa-map"][0]["std"]["st_d"] == pytest.approx(2 * 0.98 / 1.98)
    text = ct.render(direct, slc, {"version": "v", "torch": "t", "machine": "m", "when": "now"})
    assert f"**{2 * 0.98 / 1.98:.3f}**" in text
    assert "| mnist → syn | 0 | -0.200 / -0.300 | +0.400 |" in text
    assert "dense SLC-AUC: not decidable" in text
