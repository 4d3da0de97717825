"""The grid-time estimate: node classes, measured costs (CPU seconds at one thread, a source's training loop),
family fallbacks and totals, on a graph expanded from a small suite and a hand-filled measured folder."""

from __future__ import annotations

import pytest

from domainlock.bench.estimate import estimate, measured_costs
from domainlock.bench.graph import expand
from domainlock.bench.store import Store
from domainlock.bench.suite import parse_suite
from domainlock.errors import DomainlockError

DIGESTS = {"mnist": "m" * 8, "syn": "s" * 8}


def suite(seeds):
    return parse_suite({"name": "est", "domains": ["mnist", "syn"], "pairs": ["mnist->syn"], "seeds": seeds,
                        "methods": [{"method": "sa-map"}, {"method": "ntp", "name": "ntp-short",
                                                           "hparams": {"iterations": 2}}],
                        "attacks": [{"name": "finetune", "kind": "finetune"}]})


def by_label(graph, label):
    return next(k for k, n in graph.nodes.items() if n.label == label)


def measured_folder(path, done):
    """A benchmark folder in which the nodes ``done`` (label -> (figures, wall_s, threads)) finished."""
    measured = expand(suite([0]), DIGESTS)
    with Store(path) as store:
        store.sync_nodes(measured.nodes.values())
        for label, (figures, wall, threads) in done.items():
            store.finish_node(by_label(measured, label), {"figures": figures, "wall_s": wall, "threads": threads})
    return path


OLD = {
    "source mnist s0": ({"train_wall_s": 100.0, "cpu_s": 2.0}, 3.0, 1),      # only re-evaluated here
    "sa-map mnist->syn s0": ({"cpu_s": 10.0}, 40.0, 1),                       # CPU seconds beat wall
    "finetune scratch s0 on syn": ({"cpu_s": 7.0}, 20.0, 2),                  # 2 threads: wall counts
    "finetune source mnist s0 on syn": ({"cpu_s": 30.0}, 31.0, 1),
}


def test_estimate_from_a_measured_folder(tmp_path):
    (costs,) = measured_costs([measured_folder(tmp_path, OLD)])
    assert costs["source"] == [100.0] and costs["protect sa-map"] == [10.0]
    assert costs["finetune scratch"] == [20.0] and costs["finetune unprotected"] == [30.0]
    assert sorted(costs["finetune *"]) == [20.0, 30.0]

    graph = expand(suite([0, 1]), DIGESTS)
    est = estimate(graph, list(graph.nodes), [costs])
    assert est.rows["source"] == {"nodes": 2, "mean_s": 100.0, "tier": 0, "measured": 1, "total_s": 200.0}
    assert est.rows["protect sa-map"]["total_s"] == 20.0
    # never measured: an attack from another start borrows its family's mean and says so
    assert est.rows["finetune sa-map"] == {"nodes": 2, "mean_s": 25.0, "tier": 0, "measured": 0,
                                           "like": "finetune *", "total_s": 50.0}
    # no family measured at all: listed, not guessed
    assert est.unmeasured == {"protect ntp-short": 2}
    assert "finetune ntp-short" in est.rows
    assert est.total_s == pytest.approx(200 + 20 + 2 * 20 + 2 * 30 + 2 * 25 + 2 * 25)
    # longest chain: source 100 -> sa-map 10 -> finetune from sa-map 25
    assert est.critical_path_s == pytest.approx(135.0)
    assert est.wall_s(2) == pytest.approx(est.total_s / 2) and est.wall_s(100) == pytest.approx(135.0)
    # only what is still to run counts
    assert estimate(graph, [by_label(graph, "source mnist s1")], [costs]).total_s == pytest.approx(100.0)


def test_newer_folders_come_first(tmp_path):
    """A class costs what the first folder measured of it or of its family; older folders fill in the rest."""
    new = measured_folder(tmp_path / "new", {"finetune source mnist s0 on syn": ({"cpu_s": 10.0}, 12.0, 1)})
    old = measured_folder(tmp_path / "old", OLD)
    graph = expand(suite([0]), DIGESTS)
    est = estimate(graph, list(graph.nodes), measured_costs([new, old]))
    assert est.rows["finetune unprotected"]["mean_s"] == 10.0 and est.rows["finetune unprotected"]["tier"] == 0
    # the newer folder's family beats the older folder's measurement of the class itself
    assert est.rows["finetune scratch"] == {"nodes": 1, "mean_s": 10.0, "tier": 0, "measured": 0,
                                            "like": "finetune *", "total_s": 10.0}
    # nothing of the family in the newer folder: the older one's measurement
    assert est.rows["protect sa-map"]["mean_s"] == 10.0 and est.rows["protect sa-map"]["tier"] == 1
    assert est.rows["source"]["tier"] == 1
    pooled = estimate(graph, list(graph.nodes), measured_costs([old, new]))
    assert pooled.rows["finetune unprotected"]["mean_s"] == 30.0   # order matters: the first folder wins


def test_estimate_from_a_folder_that_is_not_a_benchmark(tmp_path):
    with pytest.raises(DomainlockError, match="not a benchmark folder"):
        measured_costs([tmp_path])


def test_cli_estimate_needs_a_dry_run(tmp_path, capsys):
    from domainlock.cli.main import main

    rc = main(["bench", "--suite", "digits-quick", "--out", str(tmp_path / "b"), "--estimate-from", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--estimate-from goes with --dry-run" in err[0]
    assert not (tmp_path / "b").exists()


def test_a_source_model_costs_its_training_loop_in_cpu_seconds_at_one_thread():
    from domainlock.bench.estimate import _cost

    trained = {"train_wall_s": 900.0, "train_cpu_s": 100.0, "cpu_s": 101.0}   # waited for a busy CPU
    assert _cost({"kind": "source", "result": trained, "threads": 1, "wall_s": 905.0}) == 100.0
    assert _cost({"kind": "source", "result": trained, "threads": 4, "wall_s": 905.0}) == 900.0
    assert _cost({"kind": "source", "result": {"train_wall_s": 50.0}, "threads": 1, "wall_s": 2.0}) == 50.0
    assert _cost({"kind": "source", "result": {"external": True}, "threads": 1, "wall_s": 2.0}) is None
