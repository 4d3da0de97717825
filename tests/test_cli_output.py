"""The output convention of every verb (see :mod:`domainlock.cli`): ``--json`` puts exactly one JSON document on
stdout and nothing else, files are written only at ``--out`` and never over existing ones without ``--overwrite``
(``slc --out DIR``: ``DIR/slc.json`` and ``DIR/slc.png``), and library warnings never make an error's stderr more
than its one line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from domainlock.artifact import save_artifact
from domainlock.errors import DomainlockError
from domainlock.models import build_model
from test_cli import one_line_error, run, verb_help

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = ["-q", "--device", "cpu"]
ATTACK = ["--steps", "3", "--epochs", "1", "--batch-size", "8", "--augment", "none", "--threads", "1", *CPU]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("art") / "tiny"
    save_artifact(out, build_model("digitnet", width=4, feat_dim=16), {"domain": "uci-digits", "seed": 0})
    return out


def json_argv(verb: str, tiny: Path, tmp: Path) -> list[str]:
    m = str(tiny)
    return {
        "data list": ["data", "list"],
        "data build": ["data", "build", "uci-digits", "-q"],
        "data show": ["data", "show", "uci-digits", "--n", "20", "--out", str(tmp / "grid.png"), "-q"],
        "train": ["train", "--domain", "uci-digits", "--arch", "digitnet", "--epochs", "1", "--limit-train", "64",
                  "--batch-size", "32", "--augment", "none", "--out", str(tmp / "src"), *CPU],
        "eval": ["eval", "--model", m, "--domains", "uci-digits", *CPU],
        "protect": ["protect", "--method", "ntl", "--variant", "source-only", "--model", m, "--source", "uci-digits",
                    "--steps", "2", "--batch-size", "8", "--neighbour-pool", "16", "--val-size", "8",
                    "--out", str(tmp / "prot"), *CPU],
        "verify": ["verify", "--model", m, "--owner-data", "uci-digits", *CPU],
        "synthesize": ["synthesize", "--model", m, "--n", "20", "--steps", "2", "--fidelity-domain", "none",
                       "--out", str(tmp / "pseudo"), *CPU],
        "attack finetune": ["attack", "finetune", "--model", m, "--target", "uci-digits", "--n", "10", *ATTACK],
        "slc": ["slc", "--model", m, "--target", "uci-digits", "--shots", "10,20", "--no-cache", *ATTACK],
    }[verb]


# what each verb's document must hold: a key and a check of its value
JSON_KEYS = {
    "data list": lambda d: any(r["name"] == "uci-digits" for r in d),
    "data build": lambda d: "uci-digits" in d["built"],
    "data show": lambda d: d["images"] == 20 and Path(d["path"]).is_file(),
    "train": lambda d: d["card"]["domain"] == "uci-digits" and "test" in d["card"]["metrics"]["accuracy"],
    "eval": lambda d: 0.0 <= d["results"]["uci-digits"]["accuracy"] <= 1.0,
    "protect": lambda d: d["card"]["protection"]["method"] == "ntl" and Path(d["path"]).is_dir(),
    "verify": lambda d: isinstance(d["flagged"], bool) and d["n"] > 0,
    "synthesize": lambda d: d["info"]["n"] == 20 and Path(d["path"]).is_dir(),
    "attack finetune": lambda d: [r["start"] for r in d["results"]] == ["model"],
    "slc": lambda d: d["shots"] == [10, 20] and "normalized" in d["slc_auc"],
}


@pytest.mark.parametrize("verb", list(JSON_KEYS))
def test_json_is_the_whole_of_stdout(verb, tiny, tmp_path, capsys, data_root):
    rc, out, err = run(json_argv(verb, tiny, tmp_path) + ["--json"], capsys, data_root)
    assert rc == 0, err
    doc = json.loads(out)   # fails on any other text on stdout
    assert JSON_KEYS[verb](doc), doc


@pytest.mark.parametrize("verb", list(JSON_KEYS))
def test_every_verb_documents_the_convention(verb):
    text = verb_help(verb.split())
    assert "--json" in text and "exactly one JSON document" in text
    if "--out" in text:
        assert "never over existing ones without --overwrite" in text


# ------------------------------------------------------------------------------------------------ slc --out
def slc_argv(tiny: Path, out: Path) -> list[str]:
    return ["slc", "--model", str(tiny), "--target", "uci-digits", "--shots", "10,20", "--no-cache",
            "--out", str(out), *ATTACK]


def test_slc_out_writes_the_json_document_and_the_plot(tiny, tmp_path, capsys, data_root):
    out = tmp_path / "runs" / "slc"
    rc, text, err = run(slc_argv(tiny, out) + ["--json"], capsys, data_root)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["slc.json", "slc.png"]
    assert json.loads(text) == json.loads((out / "slc.json").read_text())   # the file is the --json document
    assert (out / "slc.png").read_bytes()[:4] == b"\x89PNG"


def test_slc_no_plot_writes_json_only(tiny, tmp_path, capsys, data_root, monkeypatch):
    def no_matplotlib():
        raise DomainlockError("plotting needs matplotlib: pip install 'domainlock[plot]'")

    monkeypatch.setattr("domainlock.attacks.slc.require_matplotlib", no_matplotlib)
    rc, text, err = run(slc_argv(tiny, tmp_path / "s") + ["--no-plot"], capsys, data_root)
    assert rc == 0, err
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["slc.json"] and "slc.png" not in text


def test_slc_plot_without_matplotlib_fails_before_training(tiny, tmp_path, capsys, data_root, monkeypatch):
    def no_matplotlib():
        raise DomainlockError("plotting needs matplotlib: pip install 'domainlock[plot]'")

    monkeypatch.setattr("domainlock.attacks.slc.require_matplotlib", no_matplotlib)
    monkeypatch.setattr("domainlock.attacks.slc.finetune_attack", lambda *a, **k: pytest.fail("trained"))
    rc, _, err = run(slc_argv(tiny, tmp_path / "s"), capsys, data_root)
    line = one_line_error(err)
    assert rc == 2 and "domainlock[plot]" in line and "--no-plot" in line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("existing", ["slc.json", "slc.png"])
def test_slc_refuses_to_overwrite_before_training(existing, tiny, tmp_path, capsys, data_root, monkeypatch):
    monkeypatch.setattr("domainlock.attacks.slc.finetune_attack", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "s"
    out.mkdir()
    (out / existing).write_bytes(b"keep me")
    rc, _, err = run(slc_argv(tiny, out), capsys, data_root)
    line = one_line_error(err)
    assert rc == 2 and existing in line and "--overwrite" in line
    assert [p.name for p in out.iterdir()] == [existing] and (out / existing).read_bytes() == b"keep me"


def test_slc_out_must_be_a_directory(tiny, tmp_path, capsys, data_root):
    (tmp_path / "f").write_text("a file")
    rc, _, err = run(slc_argv(tiny, tmp_path / "f"), capsys, data_root)
    assert rc == 2 and "names a directory" in one_line_error(err)


# ---------------------------------------------------------------------------------------------- warnings
def test_a_warning_before_an_error_leaves_one_stderr_line(tiny, capsys, data_root, monkeypatch):
    def evaluate(*a, **k):
        warnings.warn("TypedStorage is deprecated", UserWarning, stacklevel=1)
        raise DomainlockError("the data went away")

    monkeypatch.setattr("domainlock.evaluation.evaluate", evaluate)
    rc, out, err = run(["eval", "--model", str(tiny), "--domains", "uci-digits", "--json"], capsys, data_root)
    assert rc == 2 and out == ""
    assert one_line_error(err) == "domainlock: error: the data went away"


def test_warnings_after_success_are_one_line_each_once(tiny, capsys, data_root, monkeypatch):
    from domainlock import evaluation

    real = evaluation.evaluate

    def evaluate(*a, **k):
        for _ in range(3):
            warnings.warn("a noisy\n   library warning", UserWarning, stacklevel=1)
        warnings.warn("another one", RuntimeWarning, stacklevel=1)
        print("progress the library prints")
        return real(*a, **k)

    monkeypatch.setattr("domainlock.evaluation.evaluate", evaluate)
    rc, out, err = run(["eval", "--model", str(tiny), "--domains", "uci-digits", "--json", *CPU], capsys, data_root)
    assert rc == 0, err
    assert "uci-digits" in json.loads(out)["results"]
    lines = err.splitlines()
    assert "progress the library prints" in lines
    assert [ln for ln in lines if ln.startswith("domainlock: warning:")] == [
        "domainlock: warning: a noisy library warning", "domainlock: warning: another one"]
