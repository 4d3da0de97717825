"""Suites validate before anything runs; the graph names nodes by what determines them; the store keeps one
row per cell. Fast: nothing here trains."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

from domainlock.attacks import attack_names
from domainlock.bench import graph as G
from domainlock.bench.attacks import recovery
from domainlock.bench.graph import Cell, expand
from domainlock.bench.store import Store, export
from domainlock.bench.suite import SuiteError, load_suite, parse_suite, suite_names
from domainlock.errors import DomainlockError

BASE = {"name": "t", "domains": ["mnist", "syn", "uci-digits"], "pairs": ["mnist->syn", "syn->mnist"],
        "seeds": [0, 1], "methods": [{"method": "sa-map", "hparams": {"steps": 10}}, {"method": "df-map"}],
        "attacks": [{"name": "ft", "kind": "finetune", "pairs": ["mnist->syn"], "params": {"shots": [10, 20]}}]}
DIGESTS = {"mnist": "a" * 64, "syn": "b" * 64, "uci-digits": "c" * 64}


def doc(**changes):
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in BASE.items()}
    out.update(changes)
    return out


def test_packaged_suites_validate():
    assert {"digits-quick", "digits-offline", "digits-attacks"} <= set(suite_names())
    offline = load_suite("digits-offline")
    assert len(offline.pairs) == 12 and offline.seeds == (0, 1)
    assert {a.name for a in offline.attacks} == {"finetune", "finetune-masked"}
    assert all(len(a.pairs) == 4 for a in offline.attacks)
    attacks = load_suite("digits-attacks")
    assert len(attacks.pairs) == 4 and attacks.seeds == (0, 1)
    assert {a.kind for a in attacks.attacks} <= set(attack_names())
    quick = load_suite("digits-quick")
    assert {m.method for m in quick.methods} == {"sa-map", "sf-map", "df-map", "ntp", "ntl", "cuti", "magnitude"}


@pytest.mark.parametrize("changes, message", [
    ({"methods": [{"method": "sa-mapp"}]}, "methods[0].method: unknown method 'sa-mapp'; valid: cupi, cuti, df-map"),
    ({"methods": [{"method": "sa-map", "hparams": {"alpah": 1}}]}, "methods[0].hparams.alpah: unknown key; valid"),
    ({"methods": [{"method": "sa-map", "hparams": {"alpha": "x"}}]}, "methods[0].hparams.alpha='x': expected float"),
    ({"methods": [{"method": "sa-map", "hparams": {"alpha": -1.0}}]}, "methods[0].hparams: alpha=-1.0"),
    ({"methods": [{"method": "ntp"}, {"method": "ntp"}]}, "methods[1].name: 'ntp' is used twice"),
    ({"methods": [{"method": "ntp", "name": "unprotected"}]}, "methods[0].name: 'unprotected' is reserved"),
    ({"domains": ["mnist", "nope"]}, "domains[1]: unknown domain 'nope'"),
    ({"pairs": ["mnist->fashion"]}, "pairs[0]: 'mnist->fashion' is not a pair of the suite's domains; valid: mnist->"),
    ({"pairs": ["mnist:syn"]}, "pairs[0]: 'mnist:syn' is not a pair"),
    ({"attacks": [{"kind": "jailbreak"}]}, "attacks[0].kind: unknown attack 'jailbreak'; valid: aad, "),
    ({"attacks": [{"kind": "finetune", "params": {"shots": [20, 10]}}]}, "attacks[0].params: shots"),
    ({"attacks": [{"kind": "finetune", "params": {"protocol": {"lrr": 1}}}]},
     "attacks[0].params.protocol.lrr: unknown key"),
    ({"attacks": [{"kind": "finetune", "pairs": ["syn->uci-digits"]}]},
     "attacks[0].pairs: syn->uci-digits is not among"),
    ({"attacks": [{"kind": "finetune", "params": {"strategy": "everything"}}]}, "unknown strategy 'everything'"),
    ({"seeds": [0, 0]}, "seeds: expected distinct non-negative integers"),
    ({"train": {"epochs": 0}}, "train: epochs"),
    ({"colour": "red"}, "colour: unknown key; valid keys: name, description"),
    ({"arch": "vgg99"}, "arch: unknown architecture 'vgg99'"),
])
def test_bad_suites_name_the_key_path(changes, message):
    with pytest.raises(SuiteError) as e:
        parse_suite(doc(**changes), "my.yaml")
    text = str(e.value)
    assert text.startswith("suite my.yaml: ") and message in text, text
    assert "\n" not in text


def test_suite_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmethods: [\n")
    with pytest.raises(SuiteError, match=r"not valid YAML at line"):
        load_suite(bad)
    with pytest.raises(SuiteError, match="unknown suite 'nope'; packaged suites: cifar-stl, cifar-stl-resnet18, "
                                         "digits-attacks, digits-offline"):
        load_suite("nope")
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "missing.yaml")


def test_pairs_default_to_every_ordered_pair():
    s = parse_suite(doc(pairs="all", attacks=[]))
    assert len(s.pairs) == 6 and ("uci-digits", "syn") in s.pairs


def test_graph_shape_and_sharing():
    s = parse_suite(doc())
    g = expand(s, DIGESTS)
    kinds = [n.kind for n in g.nodes.values()]
    # sources: 2 domains x 2 seeds; sa-map: 2 pairs x 2 seeds; df-map reads no target: 2 sources x 2 seeds
    assert kinds.count("source") == 4 and kinds.count("protect") == 8
    # attacks on mnist->syn x 2 seeds: unprotected, scratch, sa-map, df-map
    assert kinds.count("attack") == 8
    order = list(g.nodes)
    assert all(order.index(d) < order.index(k) for k, n in g.nodes.items() for d in n.deps)
    # per pair and seed: 3 direct rows (unprotected + 2 methods) and, on the attack pair, 3 attack rows
    assert len(g.cells) == 2 * 2 * 3 + 2 * 3
    df = [c for c in g.cells if c.run == "df-map" and c.attack == "direct" and c.seed == 0]
    assert len({c.inputs["protected"] for c in df}) == 2   # one per source model, shared by its targets


def test_by_source_overrides_a_run_on_the_sources_it_names_only():
    methods = [{"method": "sa-map", "hparams": {"steps": 10, "alpha": 0.5},
                "by_source": {"mnist": {"alpha": 0.7, "lr": 0.01}}}, {"method": "df-map"}]
    s = parse_suite(doc(methods=methods))
    run = s.methods[0]
    assert run.hparams_for("mnist")["alpha"] == 0.7 and run.hparams_for("mnist")["lr"] == 0.01
    assert run.hparams_for("mnist")["steps"] == 10                  # the run's own overrides still apply
    assert run.hparams_for("syn") == run.hparams and run.hparams["alpha"] == 0.5
    nodes = expand(s, DIGESTS).nodes
    plain = expand(parse_suite(doc(methods=[methods[0] | {"by_source": {}}, methods[1]])), DIGESTS).nodes
    protect = {n.label: n for n in nodes.values() if n.kind == "protect" and n.label.startswith("sa-map")}
    assert {lbl: n.config["hparams"]["alpha"] for lbl, n in protect.items()} == {
        "sa-map mnist->syn s0": 0.7, "sa-map mnist->syn s1": 0.7, "sa-map syn->mnist s0": 0.5,
        "sa-map syn->mnist s1": 0.5}
    renamed = {n.label for k, n in nodes.items() if k not in plain}
    assert renamed and all("mnist->syn" in lbl for lbl in renamed)   # the other source's nodes keep their names
    with pytest.raises(SuiteError, match=r"methods\[0\]\.by_source\.mnist\.alpah: unknown key"):
        parse_suite(doc(methods=[{"method": "sa-map", "by_source": {"mnist": {"alpah": 1}}}]))
    with pytest.raises(SuiteError, match=r"methods\[0\]\.by_source: 'svhn' is not a domain of the suite; valid: "
                                         "mnist, syn, uci-digits"):
        parse_suite(doc(methods=[{"method": "sa-map", "by_source": {"svhn": {"alpha": 1.0}}}]))
    with pytest.raises(SuiteError, match=r"by_source\.mnist: alpha=-1"):
        parse_suite(doc(methods=[{"method": "sa-map", "by_source": {"mnist": {"alpha": -1.0}}}]))


def test_a_change_recomputes_exactly_what_depends_on_it(monkeypatch):
    s = parse_suite(doc())
    before = expand(s, DIGESTS).nodes
    s2 = parse_suite(doc(methods=[{"method": "sa-map", "hparams": {"steps": 11}}, {"method": "df-map"}]))
    after = expand(s2, DIGESTS).nodes
    changed = {n.label for k, n in after.items() if k not in before}
    assert changed and all(lbl.startswith("sa-map") or lbl.startswith("ft sa-map") for lbl in changed)
    # a data digest changes what reads that domain (sources evaluate on every suite domain, so all that
    # depends on them) and nothing else: the scratch references read only their target
    after = expand(s, {**DIGESTS, "uci-digits": "d" * 64}).nodes
    kept = {n.label for k, n in after.items() if k in before}
    assert kept == {"ft scratch s0 on syn", "ft scratch s1 on syn"}
    monkeypatch.setattr(G, "__version__", "9.9.9")
    assert not set(expand(s, DIGESTS).nodes) & set(before)


def test_recovery_formula():
    assert recovery(0.55, 0.10, 0.90) == pytest.approx(0.5625)
    assert recovery(0.95, 0.10, 0.90) == 1.0 and recovery(0.05, 0.10, 0.90) == 0.0
    assert recovery(0.5, 0.9, 0.9) is None


def test_store_keeps_one_row_per_cell_and_exports(tmp_path):
    cell = Cell("k1", "sa-map", "sa-map", "mnist", "syn", 0, "direct")
    with Store(tmp_path) as st:
        st.put_cell("t", cell, "failed", error="boom")
        st.put_cell("t", cell, "done", {"target_acc_after": 0.1, "threads": 2, "unseen": {"x": 1}})
        st.put_cell("t", dataclasses.replace(cell, key="k2", seed=1), "done", {"target_acc_after": 0.2})
        rows = st.cells()
    assert [(r["key"], r["status"], r["target_acc_after"]) for r in rows] == [("k1", "done", 0.1), ("k2", "done", 0.2)]
    assert rows[0]["threads"] == 2 and rows[0]["figures"]["unseen"] == {"x": 1} and rows[0]["error"] is None
    db_bytes = (tmp_path / "results.db").read_bytes()
    csv_text = export(tmp_path, "csv").splitlines()
    assert csv_text[0].startswith("key,suite,run,method,source,target,seed,attack,status,error,")
    assert len(csv_text) == 3
    assert len(export(tmp_path, "jsonl").splitlines()) == 2
    assert (tmp_path / "results.db").read_bytes() == db_bytes   # reading writes nothing
    db = sqlite3.connect(tmp_path / "results.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(DomainlockError, match="unknown format 'xml'"):
        export(tmp_path, "xml")
    with pytest.raises(DomainlockError, match="holds no benchmark results"):
        export(tmp_path / "empty", "csv")


def test_own_source_models(tmp_path):
    import torch

    from domainlock.artifact import save_artifact
    from domainlock.bench.suite import with_sources
    from domainlock.models import build_model

    torch.manual_seed(0)
    art = save_artifact(tmp_path / "src", build_model("digitnet"), {"domain": "mnist"})
    s = with_sources(parse_suite(doc()), {"mnist": str(art)})
    g = expand(s, DIGESTS)
    mine = [n for n in g.nodes.values() if n.kind == "source" and n.config["domain"] == "mnist"]
    assert len(mine) == 1 and mine[0].config["artifact"] == str(art.resolve())   # one model for both seeds
    assert "train" not in mine[0].config and len([n for n in g.nodes.values() if n.kind == "source"]) == 3
    with pytest.raises(SuiteError, match=r"--source-model: syn: not a source domain of the suite's pairs; "
                                         r"valid: mnist$") as e:
        with_sources(parse_suite(doc(pairs=["mnist->syn"])), {"syn": str(art)})
    assert "\n" not in str(e.value)
    with pytest.raises(SuiteError, match="the artifact's arch 'digitnet' differs from the suite's arch 'resnet18'"):
        parse_suite(doc(arch="resnet18", sources={"mnist": str(art)}))
    with pytest.raises(SuiteError, match="sources.mnist: .*does not exist"):
        parse_suite(doc(sources={"mnist": str(tmp_path / "nope")}))


def test_an_attacker_of_its_own_domain():
    s = parse_suite(doc(attacks=[{"name": "steal", "kind": "distill", "params": {"queries": "other"},
                                  "other": "uci-digits"}]))
    g = expand(s, DIGESTS)
    steal = [n for n in g.nodes.values() if n.kind == "attack"]
    assert steal and all(n.config["other"] == "uci-digits" and n.config["source"] in ("mnist", "syn") for n in steal)
    with pytest.raises(SuiteError, match=r"attacks\[0\].other: 'syn' is a source or target of the attack's pairs"):
        parse_suite(doc(attacks=[{"kind": "distill", "other": "syn"}]))
    with pytest.raises(SuiteError, match=r"attacks\[0\].other: unknown domain 'nope'"):
        parse_suite(doc(attacks=[{"kind": "distill", "other": "nope"}]))


@pytest.mark.parametrize("name,arch", [("cifar-stl", "vgg13_bn"), ("cifar-stl-resnet18", "resnet18")])
def test_cifar_stl_suites_validate_and_dry_run_on_the_ntlbench_protocol(name, arch, tmp_path, monkeypatch):
    from domainlock.bench.engine import run_bench
    from domainlock.data import read_manifest
    from domainlock.data.standard import objects
    from standard_files import pin, write_cifar, write_stl

    suite = load_suite(name)
    assert suite.arch == arch and suite.protocol == "ntlbench"
    assert suite.pairs == (("cifar10", "stl10"), ("stl10", "cifar10")) and suite.seeds == (0, 1)
    cifar = write_cifar(tmp_path / "cifar-10-binary.tar.gz", per_class=2)
    stl = write_stl(tmp_path / "stl10_binary.tar.gz", per_class=3)
    pin(monkeypatch, objects, "CIFAR10", {"cifar-10-binary.tar.gz": cifar})
    pin(monkeypatch, objects, "STL10", {"stl10_binary.tar.gz": stl})
    root = tmp_path / "data"
    monkeypatch.setenv("DOMAINLOCK_MIRROR", tmp_path.as_uri())   # the engine builds them: from these files
    s = run_bench(suite, tmp_path / "bench", data_root=root, dry_run=True, progress=False)
    for d in ("cifar10", "stl10"):
        m = read_manifest(d, root)
        assert m["protocol"] == "ntlbench" and m["image_size"] == [3, 64, 64] and m["num_classes"] == 9
    # 2 source domains x 2 seeds; per pair and seed 8 target-reading runs, per source and seed 6 others;
    # 11 attacks x (14 runs + the unprotected model) per pair and seed, + a scratch curve per target, seed and
    # curve attack (finetune, finetune-masked); cells: (1 direct + 11 attacks) x 15 rows x 2 pairs x 2 seeds
    assert s.plan == {"source": {"total": 4, "to_run": 4}, "protect": {"total": 56, "to_run": 56},
                      "attack": {"total": 668, "to_run": 668}, "cells": {"total": 720, "to_run": 720}}


def _doc_suites() -> list[tuple[str, str]]:
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    return [(f"{p.relative_to(docs)}:{i}", m.group(1)) for p in sorted(docs.rglob("*.md"))
            for i, m in enumerate(re.finditer(r"```yaml\n(.*?)```", p.read_text(encoding="utf-8"), re.S))]


@pytest.mark.parametrize("where,text", _doc_suites(), ids=[w for w, _ in _doc_suites()])
def test_suites_shown_in_docs_validate(where, text):
    """Every suite a page shows (a yaml block) validates as it is written."""
    import yaml

    doc = yaml.safe_load(text)
    assert "methods" in doc, f"{where}: a yaml block that is not a suite"
    doc.pop("sources", None)   # artifacts on the reader's machine
    parse_suite(doc, where)


def test_docs_show_suites():
    assert len(_doc_suites()) >= 2
