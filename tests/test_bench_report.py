"""The benchmark report: its aggregation helpers on hand-computed values, both files written from a hand-made
results database (``bench_toys``), refusals, and the HTML page loading in headless Chromium."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import pytest

from bench_toys import synthetic_bench
from domainlock.bench import aggregate as agg
from domainlock.bench import svg
from domainlock.bench.graph import Cell
from domainlock.bench.report import md_table, write_report
from domainlock.bench.report_data import _scale, collect, pm
from domainlock.bench.store import DB_FILE, Store
from domainlock.errors import DomainlockError, UnknownChoiceError

WHERE = {"host": "box", "device": "cpu", "threads": 1}


def _cell(run="m", attack="direct", seed=0, source="a", target="b", **cols):
    figures = cols.pop("figures", {})
    return {"key": f"{run}-{attack}-{seed}", "run": run, "method": run, "source": source, "target": target,
            "seed": seed, "attack": attack, "status": "done", "recovery": None, "st_d": None, "sparsity": 0.0,
            "target_acc_after": None, **WHERE, **cols, "figures": figures}


# ------------------------------------------------------------------------------------------- aggregation
def test_mean_std_two_seeds():
    s = agg.mean_std([0.8, 0.9])
    assert s.mean == pytest.approx(0.85)
    assert s.std == pytest.approx(math.sqrt(0.005))   # ((0.05² + 0.05²) / (2 - 1)) ** 0.5 = 0.0707
    assert s.std == pytest.approx(0.0707, abs=1e-4)
    assert (s.n, s.lo, s.hi) == (2, 0.8, 0.9)
    assert pm(s) == "85.0 ± 7.1"


def test_mean_std_one_value_has_no_std_and_missing_values_are_skipped():
    assert agg.mean_std([0.5, None, float("nan")]) == agg.Stat(0.5, None, 1, 0.5, 0.5)
    assert agg.mean_std([None]).mean is None
    assert pm(agg.mean_std([0.5])) == "50.0"
    assert pm(agg.mean_std([])) == "—"


def test_worst_case_is_the_attack_leaving_most_target_accuracy():
    def e(acc, rec):
        return agg.Entry(agg.mean_std([acc]), agg.mean_std([rec]))

    entries = {"direct": e(0.10, None), "finetune": e(0.50, 0.6), "head": e(0.30, 0.9)}
    assert agg.worst_case(entries) == "finetune"
    # a tie in accuracy goes to the higher recovery
    assert agg.worst_case({"a": e(0.40, 0.4), "b": e(0.40, 0.5)}) == "b"
    # direct use counts: an attack that leaves less than no attack at all is not the worst case
    assert agg.worst_case({"direct": e(0.60, None), "finetune": e(0.20, 0.0)}) == "direct"
    assert agg.worst_case({"a": agg.Entry(agg.mean_std([]), agg.mean_std([]))}) is None


def test_worst_case_per_pair_names_the_pair_a_mean_hides():
    """m holds on a → b (every attack leaves ≤ 20 %) and falls on c → d (ft: 90 %); over both pairs ft's mean
    of 55 % would hide the 90 %. Seeds are averaged within a pair."""
    cells = [_cell(target_acc_after=0.1), _cell(attack="ft", recovery=0.1, figures={"target_acc_after_attack": 0.2}),
             _cell(attack="sfda", recovery=0.0, figures={"target_acc_after_attack": 0.1}),
             _cell(source="c", target="d", target_acc_after=0.1),
             _cell(attack="ft", source="c", target="d", recovery=1.0, figures={"target_acc_after_attack": 0.9}),
             _cell(attack="ft", source="c", target="d", seed=1, recovery=0.8, figures={"target_acc_after_attack": 0.8}),
             _cell(attack="sfda", source="c", target="d", recovery=0.2, figures={"target_acc_after_attack": 0.3}),
             _cell(run="u", source="e", target="f", target_acc_after=0.9)]   # a pair no attack ran on
    w = agg.worst_by_pair(cells, ["m", "u"], ["direct", "ft", "sfda"])
    assert set(w) == {"m"} and set(w["m"]) == {("a", "b"), ("c", "d")}
    assert w["m"]["a", "b"][0] == "ft" and w["m"]["a", "b"][1].acc.mean == pytest.approx(0.2)
    name, e = w["m"]["c", "d"]
    assert name == "ft" and e.acc.mean == pytest.approx(0.85) and e.recovery.mean == pytest.approx(0.9)


def test_columns_over_fewer_pairs_are_named():
    from domainlock.bench.report_data import narrower_columns_text

    cells = [_cell(), _cell(source="c", target="d"), _cell(attack="ft"), _cell(attack="ft", source="c", target="d"),
             _cell(attack="steal", source="c", target="d")]
    text = narrower_columns_text(cells, ["direct", "ft", "steal"])
    assert text.startswith("Columns over fewer pairs") and text.endswith("steal (c → d).") and "ft" not in text
    assert narrower_columns_text(cells[:4], ["direct", "ft"]) == ""


def test_columns_over_fewer_seeds_are_named():
    from domainlock.bench.report_data import narrower_columns_text

    pairs = [("a", "b"), ("c", "d")]
    cells = [_cell(attack=a, source=s, target=t, seed=seed) for a in ("direct", "ft") for s, t in pairs
             for seed in (0, 1)]
    steal = [_cell(attack="steal", source=s, target=t, seed=0) for s, t in pairs]
    text = narrower_columns_text(cells + steal, ["direct", "ft", "steal"])
    assert text.startswith("Columns over fewer pairs or seeds") and text.endswith("steal (a → b, c → d; seed 0).")
    uneven = steal + [_cell(attack="steal", source="a", target="b", seed=1)]
    assert narrower_columns_text(cells + uneven, ["direct", "ft", "steal"]).endswith(
        "steal (a → b seeds 0, 1, c → d seed 0).")
    assert narrower_columns_text(cells, ["direct", "ft"]) == ""


def test_attack_matrix_means_over_pairs_and_seeds():
    cells = [_cell(target_acc_after=0.1), _cell(seed=1, target_acc_after=0.2),
             _cell(attack="ft", recovery=0.5, figures={"target_acc_after_attack": 0.4}),
             _cell(attack="ft", seed=1, source="c", recovery=1.0, figures={"target_acc_after_attack": 0.6})]
    m = agg.attack_matrix(cells, ["m"], ["direct", "ft"])["m"]
    assert m["direct"].acc.mean == pytest.approx(0.15) and m["direct"].recovery.mean is None
    assert m["ft"].acc.mean == pytest.approx(0.5) and m["ft"].recovery.mean == pytest.approx(0.75)


def test_cost_table_excludes_cells_run_elsewhere():
    src = {**WHERE, "wall_s": 3.0}
    cells = [_cell(seed=0, figures={"cost_s": 20.0, "source_train_s": 10.0, "source_where": src}),
             _cell(seed=1, threads=1.0, figures={"cost_s": 30.0, "source_train_s": 10.0, "source_where": src}),
             _cell(seed=2, host="elsewhere", figures={"cost_s": 100.0, "source_train_s": 10.0, "source_where": src}),
             _cell(seed=3, threads=4, figures={"cost_s": 5.0, "source_train_s": 10.0, "source_where": src}),
             _cell(seed=4, attack="ft", figures={"cost_s": 4.0, "source_train_s": 8.0, "source_where": src})]
    assert [agg.same_machine(c) for c in cells] == [True, True, False, False, True]
    assert not agg.same_machine(_cell(host=None, figures={"source_where": {**src, "host": None}}))
    costs, excluded = agg.cost_table(cells, ["m"], ["direct", "ft"])
    assert sorted(c["seed"] for c in excluded) == [2, 3]
    own = costs["m"]["direct"]
    assert own.ratio.mean == pytest.approx((20 / 10 + 30 / 10) / 2)      # 2.5, never (…+100/10+5/10)/4
    assert own.seconds.mean == pytest.approx(25.0) and own.train_s.mean == pytest.approx(10.0)
    assert costs["m"]["ft"].ratio.mean == pytest.approx(0.5)


def test_direct_rows_and_run_summary():
    cells = [_cell(source=s, target=t, seed=seed, source_acc_before=0.9, source_acc_after=a, target_acc_before=0.8,
                   target_acc_after=b, st_d=sd, figures={"unseen": {"u": {"before": 0.5, "after": 0.2}},
                                                        "trivial": sd is None})
             for s, t, seed, a, b, sd in [("a", "b", 0, 0.8, 0.1, 0.7), ("a", "b", 1, 0.9, 0.2, 0.8),
                                          ("b", "a", 0, 0.6, 0.3, None), ("b", "a", 1, 0.6, 0.3, None)]]
    rows = agg.direct_rows(cells, ["m"])["m"]
    assert [(r.source, r.target, r.seeds) for r in rows] == [("a", "b", 2), ("b", "a", 2)]
    ab, ba = rows
    assert ab.source_after.mean == pytest.approx(0.85) and ab.source_after.std == pytest.approx(0.0707, abs=1e-4)
    assert ab.st_d.mean == pytest.approx(0.75) and ab.trivial == 0
    assert ba.st_d.mean is None and ba.trivial == 2
    assert ab.unseen["u"][1].mean == pytest.approx(0.2)
    s = agg.run_summary(rows)
    assert s.source_after.mean == pytest.approx((0.85 + 0.6) / 2) and s.source_after.std is None
    assert s.target_after.mean == pytest.approx((0.15 + 0.3) / 2)
    assert s.st_d.mean == pytest.approx(0.75) and s.trivial == 2 and s.seeds == 4


def test_seed_mean_curves_average_pointwise_and_skip_other_grids():
    def ft(seed, shots, prot, slc):
        return _cell(attack="ft", seed=seed, slc_auc=slc, unprotected_slc_auc=0.3,
                     figures={"attack_kind": "finetune",
                              "curves": {"shots": shots, "protected": prot, "scratch": [0.1] * len(shots),
                                         "unprotected": [0.9] * len(shots)}})

    curves = agg.seed_mean_curves([ft(0, [10, 100], [0.2, 0.4], -0.1), ft(1, [10, 100], [0.4, 0.6], 0.1),
                                   ft(2, [10, 50], [0.9, 0.9], 0.5)])
    c = curves["ft", "m", "a", "b"]
    assert c.shots == [10, 100] and c.protected == pytest.approx([0.3, 0.5])
    assert (c.seeds, c.skipped) == (2, 1) and c.slc_auc.mean == pytest.approx(0.0)


def test_layer_sparsity_in_natural_order_for_runs_that_zero_weights():
    cells = [_cell(run="p", sparsity=0.5, figures={"sparsity_layers": {"l.14": 0.8, "l.5": 0.2, "head": 0.0}}),
             _cell(run="p", seed=1, sparsity=0.5, figures={"sparsity_layers": {"l.14": 0.6, "l.5": 0.4, "head": 0.0}}),
             _cell(run="q", sparsity=0.0, figures={"sparsity_layers": {"l.5": 0.0}})]
    out = agg.layer_sparsity(cells, ["p", "q"])
    assert list(out) == ["p"]
    assert list(out["p"]) == ["head", "l.5", "l.14"]
    assert out["p"]["l.14"] == pytest.approx(0.7) and out["p"]["l.5"] == pytest.approx(0.3)


def test_st_d_by_run_counts_trivial_cells_and_skips_unprotected():
    cells = [_cell(run="unprotected"), _cell(st_d=0.5), _cell(seed=1, st_d=0.9),
             _cell(seed=2, figures={"trivial": True})]
    out = agg.st_d_by_run(cells, ["unprotected", "m"])
    s, trivial = out["m"]
    assert list(out) == ["m"] and trivial == 1
    assert (s.mean, s.lo, s.hi, s.n) == (pytest.approx(0.7), 0.5, 0.9, 2)


def test_heat_scale_from_chance_to_unprotected_with_a_fallback():
    assert _scale(0.1, 0.8, [0.2, 0.9])[0] == (0.1, 0.8)
    (lo, hi), labels, note = _scale(0.1, 0.1003, [0.1, 0.57, 0.78])   # unprotected at chance: top = table max
    assert (lo, hi) == (0.1, 0.78) and labels == ("chance 10.0", "highest 78.0") and note


def test_svg_helpers():
    assert svg.heat_color(0.0) == "#ffffb2" and svg.heat_color(1.0) == "#bd0026" and svg.heat_color(7) == "#bd0026"
    assert svg.heat_color(0.04) == "#fff7a6"      # 0.04 * 5 = 0.2 of the way from #ffffb2 to #fed976
    assert svg.ink("#bd0026") == "#ffffff" and svg.ink("#ffffb2") == "#000000"
    panel = svg.line_panel("t", "s", [10, 100, 1000], [svg.Series("p", [0.1, 0.5, 0.9], svg.BLUE)])
    lines = re.findall(r'<line x1="([\d.]+)" x2="([\d.]+)" y1="\d+" y2="\d+" stroke="#555"/>', panel)
    ticks = [float(a) for a, b in lines if a == b]
    assert len(ticks) == 3 and ticks[1] - ticks[0] == pytest.approx(ticks[2] - ticks[1], abs=0.11)   # log-x
    assert all(f">{n}</text>" in panel for n in (10, 100, 1000))


def test_md_table_pads_and_right_aligns():
    assert md_table(["a", "num"], [["xy", "1.5"], ["z", "10.25"]], right={1}).splitlines() == [
        "| a  |   num |", "|----|------:|", "| xy |   1.5 |", "| z  | 10.25 |"]


# ------------------------------------------------------------------------------------------- whole report
@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    folder = synthetic_bench(tmp_path_factory.mktemp("bench"))
    md, html = write_report(folder, folder / "report")
    return folder, md.read_text(), html.read_text()


SECTIONS = ("Source models", "Direct use", "Methods and attacks", "Fine-tuning curves", "ST-D per method",
            "Per-layer mask sparsity", "Cost")


def test_report_markdown_holds_the_hand_computed_numbers(toy_report):
    folder, md, _ = toy_report
    assert md.startswith("# Benchmark report: toy-suite\n")
    assert all(f"## {s}\n" in md for s in SECTIONS)
    assert "47 done, 1 not done" in md and "out of memory" in md and "box · cpu · 1 thread" in md
    # before protection: mnist's two models on syn 80 and 82 %, syn's on mnist 70 and 72 %
    assert re.search(r"\| mnist +\| +2 \| 95\.0 ± 0\.0 \| 81\.0 ± 1\.4 \| 50\.0 ± 0\.0 \|", md)
    assert re.search(r"\| syn +\| +2 \| 71\.0 ± 1\.4 \| 90\.0 ± 0\.0 \| 40\.0 ± 0\.0 \|", md)
    # sa-map, mnist → syn: source 95 → 80 / 90 %, target 80 → 13 / 15 %, ST-D 0.7 / 0.8
    assert re.search(r"\| sa-map +\| mnist → syn +\| +2 \| 95\.0 ± 0\.0 → 85\.0 ± 7\.1 \| 80\.0 ± 0\.0 → 14\.0 ± 1\.4 "
                     r"\| +0\.750 ± 0\.071 \| usps: 50\.0 ± 0\.0 → 25\.0 ± 7\.1 \|", md)
    assert re.search(r"\*\*mean of 2 pairs\*\* \| +4 \| +95\.0 → 85\.0 \| +80\.0 → 14\.0 \|", md)
    # ntp's worst case: finetune-head, (45 + 47 + 45) / 3 = 45.7 % (its fourth cell failed) > finetune 41.0 %
    assert re.search(r"\| ntp +\| +12\.0 \| 41\.0 \(rec 0\.40\) \| 45\.7 \(rec 0\.50\) \| "
                     r"\*\*finetune-head\*\*: 45\.7 \(rec 0\.50\)", md)
    assert "**finetune**: 51.0 (rec 0.60)" in md
    # per pair, over seeds: mnist → syn (45 + 47) / 2 = 46.0 %; syn → mnist only seed 0 finished: 45.0 %
    assert re.search(r"\| ntp +\| finetune-head: 46\.0 \(rec 0\.50\) \| finetune-head: 45\.0 \(rec 0\.50\) \|", md)
    # cost: sa-map kept 20, 20, 30 s against 10 s of training (the 100 s cell ran on other-box): 2.33×
    assert re.search(r"\| sa-map +\| wall +\| +3 \| +23\.3 \| +10\.0 \| +2\.33× \|", md)
    assert ("1 cell ran on other-box · cpu · 1 thread, source model on box · cpu · 1 thread: sa-map · syn → mnist · "
            "seed 1 · direct") in md
    assert re.search(r"\| ntp +\| syn → mnist \| +1 \| +0\.050 \|", md)    # the failed seed is not in the curve
    assert "| ntp       |        10.0 |        40.0 |         90.0 |    0.0 |" in md


def test_report_html_is_self_contained(toy_report):
    _, _, html = toy_report
    assert "<title>Benchmark report: toy-suite</title>" in html
    assert html.count("<svg") >= 16 + 1 + 2     # 16 curve panels, ST-D bars, 2 sparsity panels
    for s in SECTIONS:
        assert f"{s}</h2>" in html
    for needle in ("http://", "https://", "<script", "<link", "<img", "url(", "@import", "src="):
        assert needle not in html
    assert "45.7" in html and "2.33×" in html and "out of memory" in html and "85.0 ± 7.1" in html
    assert "Worst case per pair</h3>" in html


def test_report_refuses_existing_files_and_bad_folders(toy_report, tmp_path):
    folder, _, _ = toy_report
    with pytest.raises(DomainlockError, match="overwrite=True") as e:
        write_report(folder, folder / "report")
    assert "\n" not in str(e.value)
    md, _ = write_report(folder, folder / "report", overwrite=True)
    assert md.read_text().startswith("# Benchmark report")
    with pytest.raises(DomainlockError, match="no benchmark results"):
        write_report(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "empty").exists() and not (tmp_path / "out").exists()
    Store(tmp_path / "fresh").close()
    with pytest.raises(DomainlockError, match="no cells"):
        collect(tmp_path / "fresh")
    with pytest.raises(UnknownChoiceError, match="toy-suite"):
        write_report(folder, tmp_path / "out", suite="other")


def test_single_seed_shows_no_std(tmp_path):
    with Store(tmp_path) as store:
        fig = {"source_acc_before": 0.9, "source_acc_after": 0.8, "target_acc_before": 0.7, "target_acc_after": 0.1}
        store.put_cell("s", Cell("k", "m", "m", "a", "b", 0, "direct"), "done", fig)
    md, _ = write_report(tmp_path, tmp_path / "r")
    text = md.read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| m "))
    assert "90.0 → 80.0" in row and "70.0 → 10.0" in row and "±" not in row
    assert (tmp_path / DB_FILE).is_file()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium not installed")
def test_html_loads_in_headless_chromium(toy_report, tmp_path):
    folder, _, _ = toy_report
    page = folder / "report" / "report.html"
    cmd = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Benchmark report: toy-suite" in r.stdout and "</svg>" in r.stdout
    bad = [ln for ln in r.stderr.splitlines() if "Uncaught" in ln or ":CONSOLE" in ln]   # console messages
    assert not bad, bad


def test_readme_block_is_regenerated_and_nothing_else_changes(tmp_path):
    from domainlock.bench.readme import markers, update_readme

    folder = synthetic_bench(tmp_path / "bench")
    begin, end = markers("toy-suite")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{begin}\nold table\n{end}\nafter\n", encoding="utf-8")
    update_readme(folder, readme, "make readme-results")
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"# title\n\nbefore\n{begin}\n") and text.endswith(f"\n{end}\nafter\n")
    assert "old table" not in text and f"Generated by `make readme-results` from {folder / 'results.db'}." in text
    # ntp: direct 12.0 % target (see the matrix test); worst case finetune-head 45.7 %, recovery 0.50, 2 attacks
    assert re.search(r"\| ntp +\| +[\d.]+ \| +12\.0 \| finetune-head +\| +45\.7 \| +0\.50 \| +2 \|", text)
    assert re.search(r"\| sa-map +\| +85\.0 \| +14\.0 \| finetune +\| +51\.0 \| +0\.60 \| +2 \|", text)
    update_readme(folder, readme, "make readme-results")    # idempotent
    assert readme.read_text(encoding="utf-8") == text
    readme.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(DomainlockError, match="no block for suite 'toy-suite'"):
        update_readme(folder, readme, "x")
    assert readme.read_text(encoding="utf-8") == "no markers\n"


def test_db_export_is_a_self_contained_copy_the_report_reads(tmp_path, capsys):
    from domainlock.cli.main import main

    folder = synthetic_bench(tmp_path / "bench")
    copy = tmp_path / "docs" / "results.db"
    assert main(["bench", "export", str(folder), "--format", "db", "--out", str(copy)]) == 0
    assert sorted(p.name for p in copy.parent.iterdir()) == ["results.db"]       # no -wal, no -shm beside it
    a, b = collect(folder), collect(copy.parent)
    assert [c["key"] for c in a.cells] == [c["key"] for c in b.cells] and a.worst == b.worst
    assert main(["bench", "export", str(folder), "--format", "db", "--out", str(copy)]) == 2   # no --overwrite
    assert main(["bench", "export", str(folder), "--format", "db"]) == 2                       # needs --out
    err = capsys.readouterr().err.strip().splitlines()
    assert "already exists" in err[-2] and "--format db writes a database file" in err[-1]


def test_compute_text_sums_cpu_seconds_and_source_training():
    from domainlock.bench.report_data import compute_text

    adopted = {"kind": "source", "status": "done", "wall_s": 5.0, "result": {"train_wall_s": 3595.0, "cpu_s": 5.0}}
    nodes = [adopted,
             {"kind": "protect", "status": "done", "wall_s": 7200.0, "result": {"cpu_s": 3600.0}},
             {"kind": "attack", "status": "done", "wall_s": 1800.0, "result": {}},
             {"kind": "attack", "status": "pending", "wall_s": None, "result": None}]
    # the source model was trained before a kill: its training counts on top of the node
    # CPU: 5 + 3595 + 3600 = 7200 s = 2 h; wall: 5 + 7200 + 1800 + 3595 = 12600 s = 3.5 h
    assert compute_text(nodes) == "3 nodes: 2.00 CPU hours (2 with CPU seconds recorded), 3.50 wall node-hours"
    # a node that trained its model already holds the training: counted once
    nodes[0] = {"kind": "source", "status": "done", "wall_s": 3600.0,
                "result": {"train_wall_s": 3595.0, "train_cpu_s": 3000.0, "cpu_s": 3600.0}}
    assert compute_text(nodes) == "3 nodes: 2.00 CPU hours (2 with CPU seconds recorded), 3.50 wall node-hours"
    nodes[0] = {**adopted, "result": {**adopted["result"], "train_cpu_s": 1795.0}}   # its CPU s when recorded
    assert compute_text(nodes) == "3 nodes: 1.50 CPU hours (2 with CPU seconds recorded), 3.50 wall node-hours"


def test_cost_prefers_cpu_seconds_when_both_were_recorded():
    src = {**WHERE, "wall_s": 1.0}
    cpu = _cell(figures={"cost_s": 90.0, "source_train_s": 30.0, "cpu_s": 20.0, "source_train_cpu_s": 10.0,
                         "source_where": src})
    wall = _cell(seed=1, figures={"cost_s": 90.0, "source_train_s": 30.0, "cpu_s": 20.0, "source_where": src})
    assert agg.cost_basis(cpu) == (20.0, 10.0, "CPU") and agg.cost_basis(wall) == (90.0, 30.0, "wall")
    table, excluded = agg.cost_table([cpu, wall], ["m"], ["direct"])
    c = table["m"]["direct"]
    assert not excluded and c.basis == "mixed" and c.ratio.mean == pytest.approx((2.0 + 3.0) / 2)
    assert agg.cost_table([cpu], ["m"], ["direct"])[0]["m"]["direct"].basis == "CPU"


# ------------------------------------------------------------------------------------------- larger suites
def test_attacked_cells_keep_the_pairs_some_attack_ran_on():
    direct = [_cell(seed=0), _cell(seed=1), _cell(source="c", target="d")]
    ft = _cell(attack="ft")
    kept, pairs = agg.attacked_cells([*direct, ft])
    assert kept == [direct[0], ft] and pairs == [("a", "b")]
    assert agg.attacked_cells(direct) == (direct, None)                       # no attack: every cell
    everywhere = [*direct, ft, _cell(attack="ft", seed=1), _cell(attack="ft", source="c", target="d")]
    assert agg.attacked_cells(everywhere) == (everywhere, None)


def _partial_suite(folder, pending: int = 0):
    """Direct use on mnist → syn (target 10 %) and syn → mnist (95 %), one fine-tuning attack on mnist → syn
    alone (50 % after it), and ``pending`` nodes not run yet."""
    class _Node:
        def __init__(self, key):
            self.key, self.kind, self.label, self.config, self.deps = key, "attack", f"ft {key}", {}, ()

    with Store(folder) as store:
        store.sync_nodes([_Node(f"todo-{i}") for i in range(pending)])
        for (src, tgt), after in ((("mnist", "syn"), 0.10), (("syn", "mnist"), 0.95)):
            fig = {"source_acc_before": 0.9, "source_acc_after": 0.9, "target_acc_before": 0.95,
                   "target_acc_after": after, **WHERE}
            store.put_cell("s", Cell(f"d-{src}", "m", "m", src, tgt, 0, "direct"), "done", fig)
        store.put_cell("s", Cell("ft", "m", "m", "mnist", "syn", 0, "ft"), "done",
                       {"target_acc_after_attack": 0.5, "recovery": 0.47, **WHERE})
    return folder


def test_the_matrix_compares_attacks_on_the_pairs_they_ran_on(tmp_path):
    from domainlock.bench.readme import headline

    folder = _partial_suite(tmp_path)
    d = collect(folder)
    # over every pair, direct use would average 10 and 95 % (52.5 %) and pass for the worst case
    assert d.matrix["m"]["direct"].acc.mean == pytest.approx(0.10) and d.worst["m"] == "ft"
    assert d.matrix_pairs == [("mnist", "syn")]
    md, html = (p.read_text() for p in write_report(folder, tmp_path / "r"))
    scope = "Over the 1 pair the attacks ran on (mnist → syn), every column on the same pairs and seeds"
    assert scope in md and scope in html and "**ft**: 50.0" in md
    assert "Worst case per pair" not in md + html   # one attacked pair: the matrix already is that table
    assert re.search(r"\*\*mean of 2 pairs\*\* \| +2 \| +90\.0 → 90\.0 \| +95\.0 → 52\.5 \|", md)  # direct use: all
    assert "worst case is over the pairs the attacks ran on (mnist→syn)" in headline(d, "make readme")


def test_a_partial_folder_says_the_grid_is_incomplete(tmp_path):
    folder = _partial_suite(tmp_path, pending=3)
    md, html = (p.read_text() for p in write_report(folder, tmp_path / "r"))
    for text in (md, html):
        assert "3 done, 0 not done; 3 nodes still to run: the grid is incomplete" in text
        assert "No fine-tuning cell is done yet." in text
    md, _ = (p.read_text() for p in write_report(_partial_suite(tmp_path / "all"), tmp_path / "r2"))
    assert "still to run" not in md and "No fine-tuning attack in this suite." in md


def test_per_run_summaries_head_direct_use_and_the_curves(toy_report):
    _, md, html = toy_report
    assert "Per run, the mean over its pairs" in md and "Per run: the mean over its pairs" in html
    # sa-map over its 2 pairs: source 95 → 85 %, target 80 → 14 %, ST-D 0.75, 4 cells
    assert re.search(r"\| sa-map +\| +2 \| +4 \| +95\.0 → 85\.0 \| +80\.0 → 14\.0 \| +0\.750 \|", md)
    assert "### SLC-AUC per run" in md and "SLC-AUC per run</h3>" in html
    # SLC-AUC: sa-map -0.2 / -0.18 per seed on both pairs; ntp's finetune-head lost a cell: 0.05, 0.07, 0.05
    assert re.search(r"\| sa-map +\| +-0\.190 ± 0\.012 \(4\) \| +-0\.190 ± 0\.012 \(4\) \|", md)
    assert re.search(r"\| ntp +\| +0\.060 ± 0\.012 \(4\) \| +0\.057 ± 0\.012 \(3\) \|", md)


def test_excluded_cells_are_grouped_by_where_they_and_their_source_model_ran():
    from domainlock.bench.report_data import excluded_groups

    here = {"host": "a", "device": "cpu", "threads": 1}

    def cell(run, seed, attack, src_where):
        return {"run": run, "source": "mnist", "target": "syn", "seed": seed, "attack": attack, **here,
                "figures": {"source_where": src_where}}

    brought = [cell(r, s, a, {}) for r in ("ntp", "sa-map") for s in (0, 1) for a in ("direct", "finetune")]
    gpu = [cell("ntp", 0, "direct", {"host": "b", "device": "cuda", "threads": 8})]
    groups = excluded_groups(brought + gpu)
    assert groups == [
        ("8 cells ran on a · cpu · 1 thread, source model on an unknown machine (brought as an artifact)",
         "runs ntp, sa-map · mnist → syn · seeds 0, 1 · direct, finetune"),
        ("1 cell ran on a · cpu · 1 thread, source model on b · cuda · 8 threads",
         "ntp · mnist → syn · seed 0 · direct"),
    ]
