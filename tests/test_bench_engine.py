"""The benchmark engine on the digits-quick suite: a real run killed mid-grid resumes without losing or
duplicating anything, reruns compute nothing, the table's invariants hold, a second engine is refused, failing
nodes are recorded and retried on request, and the process pool and a local Ray instance run nodes too."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from domainlock.artifact import load_artifact
from domainlock.bench import tasks
from domainlock.bench.engine import folder_lock, run_bench
from domainlock.bench.store import Store
from domainlock.cli.main import main
from domainlock.evaluation import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK_CELLS = 16   # 8 direct rows (unprotected + 7 methods) and 8 fine-tuning rows on mnist->uci-digits


def _done_nodes(db_path: Path) -> dict[str, tuple]:
    if not db_path.exists():
        return {}
    db = sqlite3.connect(db_path, timeout=30)
    try:
        return {k: (a, f) for k, a, f in db.execute("SELECT key, attempts, finished FROM nodes WHERE status='done'")}
    except sqlite3.OperationalError:   # the schema is not written yet
        return {}
    finally:
        db.close()


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, data_root):
    """Start ``domainlock bench`` in a subprocess, SIGKILL it once two nodes are finished, then resume."""
    out = tmp_path_factory.mktemp("bench") / "quick"
    env = {**os.environ, "DOMAINLOCK_DATA": str(data_root)}
    proc = subprocess.Popen([sys.executable, "-m", "domainlock", "bench", "--suite", "digits-quick", "--out", str(out),
                             "--threads", "1", "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while len(_done_nodes(out / "results.db")) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the run finished no node in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _done_nodes(out / "results.db")
    db = sqlite3.connect(out / "results.db")
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    running = db.execute("SELECT count(*) FROM nodes WHERE status='running'").fetchone()[0]
    db.close()
    summary = run_bench("digits-quick", out, threads=1, data_root=data_root, progress=False)
    return out, before, integrity, running, summary


def test_killed_run_resumes_without_loss_or_duplicates(killed_and_resumed):
    out, before, integrity, running, summary = killed_and_resumed
    assert integrity == "ok"
    assert running <= 1                       # the node in progress at the kill, nothing else
    assert summary.cells == summary.done == QUICK_CELLS and summary.failed == 0
    after = _done_nodes(out / "results.db")
    for key, (attempts, finished) in before.items():   # finished before the kill: kept, not recomputed
        assert after[key] == (attempts, finished) and attempts == 1
    with Store(out) as st:
        cells = st.cells("digits-quick")
        nodes = st.nodes()
    assert len(cells) == len({c["key"] for c in cells}) == QUICK_CELLS
    assert all(n["status"] == "done" and (out / "nodes" / n["kind"] / n["key"] / "result.json").is_file()
               for n in nodes)
    assert not list(out.rglob("*.tmp*"))   # no half-written artifact or result anywhere


def test_rerun_computes_nothing(killed_and_resumed, data_root):
    out = killed_and_resumed[0]
    with Store(out) as st:
        stamps = {c["key"]: c["updated"] for c in st.cells("digits-quick")}
    summary = run_bench("digits-quick", out, threads=1, data_root=data_root, progress=False)
    assert (summary.nodes_run, summary.nodes_adopted, summary.done) == (0, 0, QUICK_CELLS)
    assert summary.plan["cells"]["to_run"] == 0
    with Store(out) as st:
        assert {c["key"]: c["updated"] for c in st.cells("digits-quick")} == stamps


def test_table_invariants(killed_and_resumed, data_root):
    out = killed_and_resumed[0]
    with Store(out) as st:
        cells = st.cells("digits-quick")
        source = next(n for n in st.nodes() if n["kind"] == "source")
    direct = {c["run"]: c for c in cells if c["attack"] == "direct"}
    attacked = {c["run"]: c for c in cells if c["attack"] == "finetune"}
    assert set(direct) == set(attacked) == {"unprotected", "sa-map", "sf-map", "df-map", "ntp", "ntl", "cuti",
                                            "magnitude"}
    # the unprotected reference row is the source model's own evaluation
    model = load_artifact(out / "nodes" / "source" / source["key"] / "model").model
    own = evaluate(model, ["mnist", "uci-digits"], data_root=data_root)
    ref = direct["unprotected"]
    assert ref["source_acc_after"] == ref["source_acc_before"] == pytest.approx(own["mnist"]["accuracy"], abs=1e-9)
    assert ref["target_acc_after"] == pytest.approx(own["uci-digits"]["accuracy"], abs=1e-9)
    for run, c in direct.items():
        assert c["status"] == "done" and c["target_acc_before"] == pytest.approx(ref["target_acc_after"], abs=1e-9)
        assert c["source_acc_before"] == pytest.approx(ref["source_acc_after"], abs=1e-9)
        assert c["device"] == "cpu" and c["threads"] == 1 and c["wall_s"] > 0 and c["peak_rss_mb"] > 0
        assert 0 < c["figures"]["cpu_s"] < 4 * c["wall_s"] + 1  # CPU seconds of the node's own process
        assert c["figures"]["source_train_cpu_s"] > 0   # the suite trained the source: its loop's CPU seconds
        if run != "unprotected":
            assert c["retain_s"] is not None and c["figures"]["cost_s"] > 0
    assert direct["magnitude"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert max(direct["magnitude"]["figures"]["sparsity_layers"].values()) > 0
    # every fine-tuning row holds the figures its attack declares, on the same curves' shots
    for c in attacked.values():
        f = c["figures"]
        assert f["curves"]["shots"] == [10, 30] and f["report_n"] == 30
        assert all(len(f["curves"][k]) == 2 for k in ("protected", "scratch", "unprotected"))
        assert c["slc_auc"] is not None and c["unprotected_slc_auc"] == attacked["unprotected"]["slc_auc"]
        assert f["target_acc_after_attack"] == f["curves"]["protected"][1]
    assert attacked["unprotected"]["recovery"] is None     # nothing to recover on the reference row


def test_reuse_takes_finished_nodes_from_another_folder(killed_and_resumed, data_root, tmp_path, capsys):
    """A second folder with --reuse computes nothing the first one finished, and its table is the same."""
    first = killed_and_resumed[0]
    second = tmp_path / "second"
    dry = run_bench("digits-quick", second, threads=1, data_root=data_root, progress=False, dry_run=True,
                    reuse=[first])
    assert dry.plan["attack"]["to_run"] == dry.plan["protect"]["to_run"] == dry.plan["source"]["to_run"] == 0
    assert not (second / "nodes").exists()   # a dry run links nothing
    s = run_bench("digits-quick", second, threads=1, data_root=data_root, progress=False, reuse=[first])
    assert (s.nodes_run, s.done, s.failed) == (0, QUICK_CELLS, 0) and s.nodes_adopted == dry.nodes_adopted > 0
    with Store(first) as a, Store(second) as b:
        want = {c["key"]: c["figures"] for c in a.cells("digits-quick")}
        got = {c["key"]: c["figures"] for c in b.cells("digits-quick")}
        assert {n["key"]: n["wall_s"] for n in b.nodes()} == {n["key"]: n["wall_s"] for n in a.nodes()}
    assert got == want
    source = next((second / "nodes" / "source").iterdir())
    assert (source / "result.json").stat().st_ino == (first / "nodes" / "source" / source.name /
                                                      "result.json").stat().st_ino   # linked, not copied
    assert not list(second.rglob("*.reuse"))
    for bad, why in ((tmp_path / "nowhere", "not a benchmark folder"), (second, "is the run's own --out folder")):
        rc = main(["bench", "--suite", "digits-quick", "--out", str(second), "--reuse", str(bad), "-q"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"--reuse {bad}: {why}" in err[0]


def test_a_carried_results_db_reruns_only_the_inputs_a_pending_node_reads(killed_and_resumed, data_root, tmp_path,
                                                                          capsys):
    """A results.db copied without nodes/ (a committed grid on a fresh host) keeps every finished node; to run the
    one node set back to pending, exactly the nodes it reads are run again, and its cell comes out the same. A
    recorded accuracy the rerun does not reproduce is reported in one line."""
    first = killed_and_resumed[0]
    carried = tmp_path / "carried"
    carried.mkdir()
    with Store(first) as st:
        nodes = {n["key"]: n for n in st.nodes()}
        want = {c["key"]: c for c in st.cells("digits-quick")}
    attack = next(k for k, n in nodes.items() if n["kind"] == "attack" and n["label"].startswith("finetune ntl "))
    protect = nodes[attack]["deps"][0]
    reads = {attack, *nodes[attack]["deps"]}
    for dep in list(reads):
        reads |= set(nodes[dep]["deps"])
    assert {nodes[k]["kind"] for k in reads} == {"source", "protect", "attack"}
    db = sqlite3.connect(first / "results.db")
    db.execute(f"VACUUM INTO '{carried / 'results.db'}'")
    db.close()
    db = sqlite3.connect(carried / "results.db")
    db.execute("UPDATE nodes SET status='pending', result=NULL WHERE key=?", (attack,))
    cell = next(k for k, c in want.items() if c["run"] == "ntl" and c["attack"] == "finetune")
    db.execute("DELETE FROM cells WHERE key=?", (cell,))
    recorded = json.loads(db.execute("SELECT result FROM nodes WHERE key=?", (protect,)).fetchone()[0])
    recorded["accuracy_test"]["mnist"]["after"] = 0.5   # a figure the rerun cannot reproduce
    db.execute("UPDATE nodes SET result=? WHERE key=?", (json.dumps(recorded), protect))
    db.commit()
    db.close()
    dry = run_bench("digits-quick", carried, threads=1, data_root=data_root, progress=False, dry_run=True)
    assert sum(k["to_run"] for kind, k in dry.plan.items() if kind != "cells") == len(reads)
    capsys.readouterr()
    s = run_bench("digits-quick", carried, threads=1, data_root=data_root, progress=False)
    err = capsys.readouterr().err
    assert (s.nodes_run, s.done, s.failed) == (len(reads), QUICK_CELLS, 0)
    assert sorted(p.name for p in (carried / "nodes").glob("*/*")) == sorted(reads)
    assert f"{len(reads) - 1} finished node(s) have no folder here" in err   # all it reads but itself
    changed = [line for line in err.splitlines() if "differs from its recorded result" in line]
    assert len(changed) == 1 and nodes[protect]["label"] in changed[0] and "mnist/after: 0.5000 ->" in changed[0]
    with Store(carried) as st:
        got = {c["key"]: c for c in st.cells("digits-quick")}
    for key in ("curves", "target_acc_after_attack"):   # the same inputs, the same attack, the same curve
        assert got[cell]["figures"][key] == want[cell]["figures"][key]
    assert all(got[k]["updated"] == want[k]["updated"] for k in want if k != cell)   # the others untouched


def test_fields_added_at_their_neutral_value_keep_node_names():
    """A field added to the code later, at the value that does what the code did before, renames nothing."""
    from domainlock.bench.graph import ADDED_FIELDS, node_key

    old = {"arch": "digitnet", "train": {"lr": 0.05, "seed": 0}}
    assert "train.precision" in ADDED_FIELDS
    same = {"arch": "digitnet", "train": {"lr": 0.05, "seed": 0, "precision": "fp32"}}
    other = {"arch": "digitnet", "train": {"lr": 0.05, "seed": 0, "precision": "bf16"}}
    key = node_key("source", old, (), {"mnist": "abc"})
    assert node_key("source", same, (), {"mnist": "abc"}) == key
    assert node_key("source", other, (), {"mnist": "abc"}) != key
    weight = {"hparams": {"keep_restyle": "first", "keep_restyle_weight": 1}}   # an int is not the listed 1.0
    assert node_key("protect", weight, (), {}) != node_key("protect", {"hparams": {"keep_restyle": "first"}}, (), {})
    # a field scoped to one attack kind: left out for it, kept for a kind that always had it
    for kind, named in (("distill", False), ("mask-reset", True)):
        cfg = {"attack": kind, "params": {"n": 100, "precision": "fp32"}}
        bare = {"attack": kind, "params": {"n": 100}}
        assert (node_key("attack", cfg, (), {}) != node_key("attack", bare, (), {})) is named


def test_the_committed_grids_keep_their_node_names():
    """Today's defaults name every committed source model and protection as it was named when it ran: each
    configuration class, built from the stored values, adds only ADDED_FIELDS at their neutral value (a field
    added without an entry there would make ``bench --reuse`` recompute every node of its kind)."""
    from dataclasses import asdict

    from domainlock.bench.graph import _named_part
    from domainlock.methods import get_method_class
    from domainlock.training.loop import TrainConfig

    root = Path(__file__).resolve().parents[1] / "docs"
    checked = set()
    for db in (root / "offline" / "digits" / "results.db", root / "attacks" / "digits" / "results.db"):
        rows = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
            "select kind, config from nodes where kind in ('source', 'protect')").fetchall()
        for kind, text in rows:
            cfg = json.loads(text)
            if kind == "source":
                stored, now = cfg["train"], asdict(TrainConfig(**cfg["train"]))
                assert _named_part({"train": now}) == _named_part({"train": stored})
            else:
                stored = cfg["hparams"]
                now = asdict(get_method_class(cfg["method"]).Hparams(**stored))
                assert _named_part({"hparams": now}) == _named_part({"hparams": stored}), cfg["method"]
            checked.add(cfg.get("method", kind))
    assert {"source", "sa-map", "sf-map", "df-map", "ntp", "ntl", "cuti", "sophon", "hntl", "cupi"} <= checked


def test_second_engine_on_a_folder_is_refused(killed_and_resumed, capsys):
    out = killed_and_resumed[0]
    with folder_lock(out):
        rc = main(["bench", "--suite", "digits-quick", "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is in use by pid" in err[0] and "choose another --out" in err[0]


def _suite_file(tmp_path: Path, methods: str) -> Path:
    """A suite sharing digits-quick's source model (so the folder reuses it) with other methods."""
    path = tmp_path / "extra.yaml"
    path.write_text("name: extra\ndomains: [mnist, uci-digits]\npairs: [mnist->uci-digits]\nseeds: [0]\n"
                    "train: {epochs: 3, limit_train: 3000}\nmethods:\n" + methods)
    return path


def test_failing_node_is_recorded_and_retried(killed_and_resumed, data_root, tmp_path, monkeypatch):
    out = killed_and_resumed[0]
    suite = _suite_file(tmp_path, "  - {method: magnitude, name: m3, hparams: {sparsity: 0.3, finetune_epochs: 0}}\n"
                                  "  - {method: magnitude, name: m2, hparams: {sparsity: 0.2, finetune_epochs: 0}}\n")
    real = tasks.RUNNERS["protect"]

    def flaky(cfg, *a):
        if cfg["hparams"]["sparsity"] == 0.3:
            raise RuntimeError("simulated failure\nsecond line")
        return real(cfg, *a)

    monkeypatch.setitem(tasks.RUNNERS, "protect", flaky)
    s = run_bench(suite, out, threads=1, data_root=data_root, progress=False)
    assert (s.cells, s.done, s.failed, s.nodes_run) == (3, 2, 1, 1)   # the source model is reused
    with Store(out) as st:
        bad = [c for c in st.cells("extra") if c["status"] == "failed"]
    assert [c["run"] for c in bad] == ["m3"] and bad[0]["error"].endswith("RuntimeError: simulated failure")
    monkeypatch.setitem(tasks.RUNNERS, "protect", real)
    assert run_bench(suite, out, threads=1, data_root=data_root, progress=False).failed == 1   # not retried
    s = run_bench(suite, out, threads=1, data_root=data_root, progress=False, retry_failed=True)
    assert (s.done, s.failed, s.nodes_run) == (3, 0, 1)


def test_attack_nodes_share_learning_curve_points(killed_and_resumed, data_root, tmp_path):
    """The scratch curve and a model without pruned weights are the same points under the dense and the masked
    attack: the folder's shared point cache trains them once."""
    out = killed_and_resumed[0]
    suite = _suite_file(tmp_path, "  - {method: magnitude, name: m4, hparams: {sparsity: 0.4, finetune_epochs: 0}}\n")
    attack = "{shots: [10, 20], protocol: {steps: 3, epochs: 1}%s}"
    suite.write_text(suite.read_text() + "attacks:\n"
                     f"  - {{name: ft, kind: finetune, params: {attack % ''}}}\n"
                     f"  - {{name: ft-masked, kind: finetune, params: {attack % ', masked: true'}}}\n")
    before = set((out / "points").glob("*.json"))
    s = run_bench(suite, out, threads=1, data_root=data_root, progress=False)
    assert (s.failed, s.nodes_run) == (0, 7)   # m4, then unprotected, scratch and m4 under each attack
    new = set((out / "points").glob("*.json")) - before
    # two points each (n = 10, 20): unprotected and scratch (shared by both attacks), m4 dense, m4 masked (it holds
    # zeros); without sharing there would be 12
    assert sorted(p.name.split("-")[0] for p in new) == ["model"] * 6 + ["scratch"] * 2
    with Store(out) as st:
        cells = {c["attack"]: c for c in st.cells("extra") if c["run"] == "unprotected" and c["attack"] != "direct"}
    assert cells["ft"]["figures"]["curves"] == cells["ft-masked"]["figures"]["curves"]


@pytest.mark.parametrize("launcher, jobs", [("local", 2), ("ray", 1)])
def test_pool_and_ray_run_nodes_in_other_processes(killed_and_resumed, data_root, tmp_path, launcher, jobs):
    if launcher == "ray":
        pytest.importorskip("ray")
    out = killed_and_resumed[0]
    sparsity = {"local": 0.1, "ray": 0.15}[launcher]
    suite = _suite_file(tmp_path, f"  - {{method: magnitude, name: m, hparams: {{sparsity: {sparsity}, "
                                  "finetune_epochs: 0}}\n")
    s = run_bench(suite, out, jobs=jobs, launcher=launcher, threads=1, data_root=data_root, progress=False)
    assert (s.done, s.failed, s.nodes_run) == (2, 0, 1)
    with Store(out) as st:
        node = next(n for n in st.nodes()
                    if n["kind"] == "protect" and n["config"]["hparams"].get("sparsity") == sparsity)
    pid = json.loads((out / "nodes" / "protect" / node["key"] / "result.json").read_text())["pid"]
    assert pid != os.getpid()


def test_registered_attacks_run_through_the_bench(killed_and_resumed, data_root, tmp_path):
    """Any registered attack is a suite attack kind; an attack that changes nothing recovers nothing."""
    from dataclasses import dataclass

    from domainlock.attacks import Attack, AttackOutcome, ThreatModel, register_attack
    from domainlock.attacks.registry import unregister_attack

    @dataclass
    class NoParams:
        pass

    @register_attack
    class Nothing(Attack):
        name = "nothing-test"
        Params = NoParams

        def threat(self, params):
            return ThreatModel(source_fraction=0.1)

        def run(self, model, access, params, ctx):
            access.source_labelled()
            return AttackOutcome(model, {"held": "source"})

    try:
        out = killed_and_resumed[0]
        methods = "  - {method: magnitude, name: m2, hparams: {sparsity: 0.2, finetune_epochs: 0}}\n"
        suite = _suite_file(tmp_path, methods + "attacks:\n  - {name: idle, kind: nothing-test}\n")
        s = run_bench(suite, out, threads=1, data_root=data_root, progress=False)
        assert (s.done, s.failed) == (4, 0)
        with Store(out) as st:
            cells = {(c["run"], c["attack"]): c for c in st.cells("extra")}
        for run in ("m2", "unprotected"):
            direct, idle = cells[run, "direct"], cells[run, "idle"]
            assert idle["figures"]["target_acc_after_attack"] == pytest.approx(direct["target_acc_after"], abs=1e-9)
            assert idle["source_acc_after"] == pytest.approx(direct["source_acc_after"], abs=1e-9)
            assert idle["figures"]["threat"] == "the weights; 10% of the labelled source data"
        assert cells["unprotected", "idle"]["recovery"] is None
        assert cells["m2", "idle"]["recovery"] in (None, 0.0)
    finally:
        unregister_attack("nothing-test")
