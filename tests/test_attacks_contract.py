"""The attack contract: the attacker's door hands out exactly what its threat model holds and never a test split,
black-box attackers get outputs only, run_attack scores as the evaluator, and every registered attack gets a
CLI verb. Tiny data only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from domainlock.artifact import save_artifact
from domainlock.attacks import (
    Attack,
    AttackAccess,
    AttackAccessError,
    AttackOutcome,
    QueryOnly,
    ThreatModel,
    attack_names,
    register_attack,
    run_attack,
)
from domainlock.attacks.finetune import FinetuneParams
from domainlock.attacks.registry import unregister_attack
from domainlock.cli.main import main
from domainlock.errors import DomainlockError
from domainlock.evaluation import accuracy
from toys import Loader, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_door_gives_exactly_the_threat_model():
    loader = Loader()
    access = AttackAccess(ThreatModel(target_labelled=8, source_fraction=0.25), target="tgt", source="src",
                          loader=loader, seed=3)
    t = access.target_labelled()
    assert len(t) == 8 and t.class_counts() == [2, 2, 2, 2]
    s = access.source_labelled()
    assert len(s) == 12 and s.class_counts() == [3, 3, 3, 3]     # 25% of 48, stratified
    assert access.reads == ["target:tgt:train", "source:src:train"]
    for ask in (access.target_unlabelled, access.other_unlabelled):
        with pytest.raises(AttackAccessError, match="this attacker holds the weights; 8 labelled target samples"):
            ask()
    with pytest.raises(AttackAccessError, match="never reads a test split"):
        access._load("target", "tgt", "test")
    assert all(split != "test" for _, split in loader.calls)
    # the same seed and holdings draw the same samples
    again = AttackAccess(ThreatModel(target_labelled=8), target="tgt", loader=Loader(), seed=3).target_labelled()
    assert torch.equal(again.x, t.x)


def test_an_attacker_needs_the_domains_its_threat_model_names():
    with pytest.raises(AttackAccessError, match=r"name the source domain \(--source\)"):
        AttackAccess(ThreatModel(source_fraction=0.1), target="tgt", loader=Loader())
    with pytest.raises(AttackAccessError, match=r"name the other domain \(--other\)"):
        AttackAccess(ThreatModel(other_unlabelled=True), target="tgt", loader=Loader())
    for p in (0.0001 - 1, 1.5):
        with pytest.raises(DomainlockError, match=r"p=.* is out of range; valid: \(0.0, 1.0\]"):
            ThreatModel(source_fraction=p)
    with pytest.raises(DomainlockError, match="n=-1 must be a non-negative integer"):
        ThreatModel(target_labelled=-1)


def test_unlabelled_target_is_images_only():
    access = AttackAccess(ThreatModel(target_unlabelled=0.5), target="tgt", loader=Loader())
    x = access.target_unlabelled()
    assert isinstance(x, torch.Tensor) and x.shape == (24, 3, 32, 32)


def test_query_only_gives_probabilities_and_counts_queries():
    model = tiny_model()
    view = QueryOnly(model, torch.device("cpu"))
    x = torch.rand(5, 3, 32, 32)
    p = view(x)
    assert torch.allclose(p.sum(1), torch.ones(5)) and view.queries == 5
    assert not hasattr(view, "parameters") and not hasattr(view, "state_dict")


def test_run_attack_reads_only_what_the_attacker_holds_and_scores_as_the_evaluator():
    loader = Loader()
    params = FinetuneParams(n=8, steps=5, epochs=1)
    rep = run_attack(tiny_model(), "finetune", target="tgt", source="src", params=params, loader=loader,
                     device="cpu")
    assert rep.reads == ["target:tgt:train"]                    # the attack's own reads
    assert loader.calls[-2:] == [("tgt", "test"), ("src", "test")]   # the evaluator's, after the attack
    assert rep.target_acc == pytest.approx(accuracy(rep.model, loader("tgt", "test")))
    assert rep.params["n"] == 8 and "8 labelled target samples" in rep.threat


@dataclass
class _ScaleParams:
    scale: float = field(default=1.0, metadata={"help": "multiply the logits"})


class _BlackBoxIdentity(Attack):
    """A black-box 'attack' that returns the model it may only query, wrapped: to test the plumbing."""

    name = "identity-test"
    summary = "test-only: query the model and return it unchanged"
    Params = _ScaleParams

    def threat(self, params):
        return ThreatModel(target_unlabelled=0.5, white_box=False)

    def run(self, model, access, params, ctx):
        assert isinstance(model, QueryOnly)
        x = access.target_unlabelled()
        model(x)

        class Answer(torch.nn.Module):
            def forward(self, inp):
                return params.scale * torch.log(model(inp))

        return AttackOutcome(Answer(), {"queries": model.queries})


@pytest.fixture
def identity_attack():
    register_attack(_BlackBoxIdentity)
    yield
    unregister_attack(_BlackBoxIdentity.name)


def test_every_registered_attack_gets_a_cli_verb(identity_attack, tmp_path, capsys, monkeypatch):
    import domainlock.data as data
    from toys import toy

    assert "identity-test" in attack_names()
    torch.manual_seed(0)
    art = save_artifact(tmp_path / "m", tiny_model(), {"domain": "mnist"})
    calls = []

    def serve(name, split, root=None):   # real domain names, toy data
        calls.append((name, split))
        return toy("src" if name == "mnist" else "tgt", split)

    monkeypatch.setattr(data, "load_domain", serve)
    rc = main(["attack", "identity-test", "--model", str(art), "--target", "syn", "--scale", "2", "--json",
               "--device", "cpu", "-q"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["attack"] == "identity-test" and doc["params"] == {"scale": 2.0}
    assert doc["reads"] == ["target:syn:train"] and doc["info"]["queries"] == 24
    assert "query access to the outputs only" in doc["threat"]
    assert calls == [("syn", "train"), ("syn", "test")]
    rc = main(["attack", "identity-test", "--model", str(art), "--target", "nope-domain", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown domain 'nope-domain'" in err[0]


@pytest.mark.parametrize("name", [n for n in attack_names() if n != "finetune"])
def test_every_attack_documents_itself(name, capsys):
    with pytest.raises(SystemExit) as e:
        main(["attack", name, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "example:" in out and "--model" in out and "--target" in out


def test_cli_refuses_an_attacker_without_the_data_it_needs(tmp_path, capsys):
    torch.manual_seed(0)
    art = save_artifact(tmp_path / "m", tiny_model(), {"domain": "mnist"})
    cases = [(["source-ft"], "name the source domain (--source)"),
             (["distill", "--queries", "other"], "name the other domain (--other)"),
             (["source-ft", "--source", "mnist", "--p", "1.5"], "p=1.5 is out of range; valid: (0.0, 1.0]"),
             (["shot", "--fraction", "0"], "is out of range"),
             (["source-ft", "--source", "mnist", "--strategy", "everything"], "invalid choice: 'everything'")]
    for argv, message in cases:
        try:
            rc = main(["attack", *argv, "--model", str(art), "--target", "syn", "--out", str(tmp_path / "out"),
                       "--device", "cpu"])
        except SystemExit as e:   # argparse's own usage errors
            rc = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], (argv, err)
        assert not (tmp_path / "out").exists()
