"""`domainlock attack finetune` and `domainlock slc`: help with an example, end-to-end runs on UCI digits with a
tiny model and a few-step protocol, outputs written atomically and never overwritten, and one-line errors for bad
input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from domainlock.artifact import load_artifact, save_artifact
from domainlock.models import ARCHS, build_model
from test_cli import one_line_error, run, verb_help  # the same helpers as the other CLI tests

FAST = ["--steps", "3", "--epochs", "1", "--batch-size", "8", "--augment", "none", "-q", "--device", "cpu",
        "--threads", "1"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("art") / "tiny"
    save_artifact(out, build_model("digitnet", width=4, feat_dim=16), {"domain": "mnist", "seed": 0})
    return out


@pytest.mark.parametrize("verb", [["attack"], ["attack", "finetune"], ["slc"]], ids=" ".join)
def test_help_has_an_example(verb):
    text = verb_help(verb)
    assert "example:" in text and "domainlock " + " ".join(verb) in text
    if verb != ["attack"]:   # the protocol is a set of flags with their defaults
        assert "--lr-pretrained" in text and "--steps" in text and "(default: 200)" in text


def test_slc_end_to_end_with_cache_and_outputs(tiny, tmp_path, capsys, data_root):
    out_dir, cache = tmp_path / "slc", tmp_path / "cache"
    argv = ["slc", "--model", str(tiny), "--target", "uci-digits", "--shots", "10,20", "--unprotected", str(tiny),
            "--out", str(out_dir), "--cache-dir", str(cache), *FAST]
    rc, out, err = run(argv, capsys, data_root)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["n", "protected", "scratch", "unprotected", "d"]
    assert lines[2].split()[0] == "10" and lines[3].split()[0] == "20"
    assert "SLC-AUC (dense attacker, reinit-head+all, uci-digits, seeds 0):" in out
    assert "unprotected model's SLC-AUC" in out
    # the cache is keyed by what a model is, not the role it plays: the "unprotected" copy reuses the protected points
    assert "cache: 2 of 6 fine-tunes reused" in out
    assert f"wrote {out_dir / 'slc.json'}" in out and f"wrote {out_dir / 'slc.png'}" in out
    blob = json.loads((out_dir / "slc.json").read_text())
    assert blob["shots"] == [10, 20] and blob["protocol"]["steps"] == 3 and blob["model"] == str(tiny)
    assert blob["slc_auc"]["normalized"] == pytest.approx(blob["unprotected_slc_auc"]["normalized"])  # same model
    assert (out_dir / "slc.png").read_bytes()[:4] == b"\x89PNG"
    # outputs are never overwritten silently, and nothing trains before that is checked
    rc, _, err = run(argv, capsys, data_root)
    assert rc == 2 and "already exists; pass --overwrite" in one_line_error(err)
    # a second run reuses every cached fine-tune
    rc, out, err = run(argv + ["--overwrite"], capsys, data_root)
    assert rc == 0, err
    assert "cache: 6 of 6 fine-tunes reused" in out


def test_attack_finetune_end_to_end(tiny, tmp_path, capsys, data_root):
    out_dir = tmp_path / "ft"
    rc, out, err = run(["attack", "finetune", "--model", str(tiny), "--target", "uci-digits", "--n", "20",
                        "--strategy", "reinit-head+all", "--scratch", "--out", str(out_dir), *FAST], capsys, data_root)
    assert rc == 0, err
    assert "n=20, reinit-head+all, dense attacker" in out
    starts = [ln.split()[0] for ln in out.splitlines()[2:] if ln and not ln.startswith("wrote")]
    assert starts == ["model", "scratch"]
    art = load_artifact(out_dir)
    assert art.card["attack"]["n"] == 20 and art.card["attack"]["strategy"] == "reinit-head+all"
    rc, out, err = run(["attack", "finetune", "--model", str(tiny), "--target", "uci-digits", "--n", "10",
                        "--seeds", "0,1", "--json", *FAST], capsys, data_root)
    assert rc == 0, err
    assert [r["seed"] for r in json.loads(out)["results"]] == [0, 1]


@pytest.mark.parametrize("extra, msg", [
    (["--shots", "10,2000"], "n=2000 exceeds the 1258 samples of uci-digits/train"),
    (["--shots", "10,1250"], "class 8 of uci-digits/train has 121 samples but n=1250 asks for 125 per class; "
                             "per-class balanced n can be at most 1210"),
    (["--shots", "10,abc"], "--shots must be comma-separated integers"),
    (["--shots", "50,20"], "strictly increasing"),
    (["--shots", "10"], "at least 2 shot counts"),
    (["--strategy", "everything"], "unknown strategy 'everything'; valid choices: all, head, reinit-head"),
    (["--lr", "-1"], "lr=-1.0 is out of range"),
    (["--target", "kmnist"], "unknown domain 'kmnist'"),
    (["--threads", "-2"], "threads=-2 is out of range"),
])
def test_slc_bad_input_is_one_line(tiny, tmp_path, capsys, data_root, monkeypatch, extra, msg):
    monkeypatch.setattr("domainlock.attacks.slc.finetune_attack", lambda *a, **k: pytest.fail("trained"))
    argv = ["slc", "--model", str(tiny), "--target", "uci-digits", "--no-cache", "--out", str(tmp_path / "o"),
            *FAST]
    rc, _, err = run(argv + extra, capsys, data_root)
    assert rc == 2 and msg in one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_attack_finetune_bad_input(tiny, tmp_path, capsys, data_root):
    base = ["attack", "finetune", "--model", str(tiny), "--target", "uci-digits", *FAST]
    rc, _, err = run(base + ["--n", "5000"], capsys, data_root)
    assert rc == 2 and "n=5000 exceeds the 1258 samples" in one_line_error(err)
    rc, _, err = run(base + ["--n", "20", "--seeds", "0,1", "--out", str(tmp_path / "x")], capsys, data_root)
    assert rc == 2 and "single --seeds value" in one_line_error(err)
    rc, _, err = run(base + ["--n", "20", "--strategy", "head-and-shoulders"], capsys, data_root)
    assert rc == 2 and "unknown strategy" in one_line_error(err)


def test_model_without_encoder_head_split(tmp_path, capsys, data_root, monkeypatch):
    def plainnet(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))

    monkeypatch.setitem(ARCHS, "plainnet", plainnet)
    art = tmp_path / "plain"
    save_artifact(art, build_model("plainnet"), {"arch": "plainnet"})
    rc, _, err = run(["slc", "--model", str(art), "--target", "uci-digits", "--shots", "10,20", "--no-cache", *FAST],
                     capsys, data_root)
    line = one_line_error(err)
    assert rc == 2 and "needs an encoder/head split" in line and "wrap_model" in line
