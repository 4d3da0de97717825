"""The command line: every verb documents itself, and every kind of bad input ends in one clear line,
exit code 2, no traceback and nothing half-written (issue: foundation, item 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from domainlock.artifact import load_artifact, save_artifact
from domainlock.cli.main import build_parser, main
from domainlock.models import build_model
from domainlock.utils.io import sha256_file


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("digitnet")
    out = tmp_path_factory.mktemp("art") / "src"
    save_artifact(out, model, {"domain": "mnist", "seed": 0})
    return out


def run(argv, capsys, data_root=None):
    full = list(argv) + (["--data-root", str(data_root)] if data_root is not None else [])
    rc = main(full)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("domainlock: error: ")
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------ unknown names
def test_unknown_domain(artifact, capsys, data_root):
    rc, _, err = run(["eval", "--model", str(artifact), "--domains", "mnist,nope"], capsys, data_root)
    line = one_line_error(err)
    assert rc == 2 and "unknown domain 'nope'" in line and "mnist" in line and "syn" in line


def test_unknown_arch(tmp_path, capsys, data_root):
    rc, _, err = run(["train", "--domain", "mnist", "--arch", "lenet9000", "--out", str(tmp_path / "o")],
                     capsys, data_root)
    line = one_line_error(err)
    assert rc == 2 and "unknown arch 'lenet9000'" in line and "digitnet" in line and "resnet18" in line
    assert not (tmp_path / "o").exists()


def test_unknown_device(artifact, capsys, data_root):
    rc, _, err = run(["eval", "--model", str(artifact), "--domains", "mnist", "--device", "tpu"], capsys, data_root)
    line = one_line_error(err)
    assert rc == 2 and "unknown device 'tpu'" in line and "cpu" in line and "cuda" in line


def test_unknown_method(artifact, capsys, data_root):
    rc, _, err = run(["protect", "--method", "nope", "--model", str(artifact), "--source", "mnist",
                      "--target", "syn"], capsys, data_root)
    assert rc == 2 and "unknown method 'nope'" in one_line_error(err)


# -------------------------------------------------------------------------------------------- artifacts
def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_missing_artifact(tmp_path, capsys, data_root):
    rc, _, err = run(["eval", "--model", str(tmp_path / "nothing"), "--domains", "mnist"], capsys, data_root)
    assert rc == 2 and "nothing" in one_line_error(err)


def test_truncated_artifact(artifact, tmp_path, capsys, data_root):
    bad = _copy(artifact, tmp_path / "trunc")
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    rc, _, err = run(["eval", "--model", str(bad), "--domains", "mnist"], capsys, data_root)
    assert rc == 2 and "truncated" in one_line_error(err)


def test_tampered_artifact(artifact, tmp_path, capsys, data_root):
    bad = _copy(artifact, tmp_path / "tamper")
    w = bad / "model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-5] ^= 0xFF
    w.write_bytes(bytes(raw))
    rc, _, err = run(["eval", "--model", str(bad), "--domains", "mnist"], capsys, data_root)
    assert rc == 2 and "hash mismatch" in one_line_error(err)


def test_artifact_of_another_arch(artifact, tmp_path, capsys, data_root):
    bad = _copy(artifact, tmp_path / "otherarch")
    card = json.loads((bad / "card.json").read_text())
    card["arch"], card["arch_kwargs"] = "vgg11", {}
    card["sha256"] = sha256_file(bad / "model.safetensors")
    (bad / "card.json").write_text(json.dumps(card))
    rc, _, err = run(["eval", "--model", str(bad), "--domains", "mnist"], capsys, data_root)
    line = one_line_error(err)
    assert rc == 2 and "digitnet" in line and "vgg11" in line


# ------------------------------------------------------------------------------------------------- data
def test_domain_not_available_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DOMAINLOCK_FASHION_DIR", str(tmp_path / "no-fashion-here"))
    rc, _, err = run(["data", "build", "fashion"], capsys, tmp_path / "root")
    line = one_line_error(err)
    assert rc == 2 and "dataset-fashion-mnist" in line and "apt-get install" in line
    assert not (tmp_path / "root" / "fashion").exists()


def test_unreadable_image_in_user_folder(artifact, tmp_path, capsys):
    from PIL import Image

    for c in ("0", "1"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (28, 28), (i * 40, 0, 0)).save(tmp_path / "imgs" / c / f"{i}.png")
    (tmp_path / "imgs" / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    rc, _, err = run(["eval", "--model", str(artifact), "--domains", f"folder:{tmp_path / 'imgs'}",
                      "--split", "train"], capsys)
    line = one_line_error(err)
    assert rc == 2 and "broken.png" in line


def test_user_folder_is_a_domain(artifact, tmp_path, capsys):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "ok" / c).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (40, 40), (i * 20, 255 if c == "a" else 0, 0)).save(tmp_path / "ok" / c / f"{i}.png")
    rc, out, err = run(["eval", "--model", str(artifact), "--domains", f"folder:{tmp_path / 'ok'}", "--json"],
                       capsys)
    assert rc == 0, err
    res = json.loads(out)["results"][f"folder:{tmp_path / 'ok'}"]
    assert res["n"] == 4 and res["shape"] == [3, 32, 32]  # 20% of 2 x 10 images, resized to 32 px


def test_show_refuses_to_overwrite(tmp_path, capsys, data_root):
    out = tmp_path / "grid.png"
    out.write_bytes(b"keep me")
    rc, _, err = run(["data", "show", "uci-digits", "--out", str(out)], capsys, data_root)
    assert rc == 2 and "--overwrite" in one_line_error(err)
    assert out.read_bytes() == b"keep me"
    rc, out_text, err = run(["data", "show", "uci-digits", "--out", str(out), "--overwrite", "-q"], capsys, data_root)
    assert rc == 0, err
    assert out.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------------------- training
def test_existing_output_without_overwrite(artifact, capsys, data_root):
    before = sorted(p.name for p in artifact.iterdir())
    rc, _, err = run(["train", "--domain", "mnist", "--out", str(artifact)], capsys, data_root)
    assert rc == 2 and "--overwrite" in one_line_error(err)
    assert sorted(p.name for p in artifact.iterdir()) == before
    load_artifact(artifact)  # untouched and still valid


def test_nan_loss_stops_and_says_so(tmp_path, capsys, data_root):
    out = tmp_path / "diverged"
    rc, _, err = run(["train", "--domain", "uci-digits", "--out", str(out), "--lr", "1e12", "--epochs", "2",
                      "--schedule", "constant", "--warmup-epochs", "0", "--augment", "none", "--limit-train", "256",
                      "-q", "--device", "cpu"], capsys, data_root)
    line = one_line_error(err)
    assert rc == 2 and ("loss became nan" in line or "loss became inf" in line) and "--lr" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_hyperparameter_value(tmp_path, capsys, data_root):
    rc, _, err = run(["train", "--domain", "mnist", "--out", str(tmp_path / "o"), "--label-smoothing", "1.5"],
                     capsys, data_root)
    line = one_line_error(err)
    assert rc == 2 and "label_smoothing=1.5" in line


def test_train_then_eval_end_to_end(tmp_path, capsys, data_root):
    out = tmp_path / "uci"
    rc, text, err = run(["train", "--domain", "uci-digits", "--out", str(out), "--epochs", "2", "-q",
                         "--device", "cpu"], capsys, data_root)
    assert rc == 0, err
    card = json.loads((out / "card.json").read_text())
    assert card["arch"] == "digitnet" and card["domain"] == "uci-digits" and card["seed"] == 0
    assert set(card["metrics"]["accuracy"]) >= {"train", "val", "test"}
    rc, text, err = run(["eval", "--model", str(out), "--domains", "uci-digits,mnist", "--json"], capsys, data_root)
    assert rc == 0, err
    res = json.loads(text)["results"]
    # the card rounds accuracies to 5 digits
    assert abs(res["uci-digits"]["accuracy"] - card["metrics"]["accuracy"]["test"]) < 1e-4
    assert res["uci-digits"]["accuracy"] > 0.5   # two epochs already learn UCI digits


# ------------------------------------------------------------------------------------------------- help
VERBS = [["data", "list"], ["data", "build"], ["data", "show"], ["train"], ["import"], ["eval"], ["protect"],
         ["verify"], ["synthesize"]]


def verb_help(verb: list[str]) -> str:
    """The help text of ``domainlock VERB`` (a two-word verb such as ``data list`` is a sub-command)."""
    parser = build_parser(verb)
    sub = parser._subparsers._group_actions[0].choices[verb[0]]
    if len(verb) == 2:
        sub = sub._subparsers._group_actions[0].choices[verb[1]]
    return sub.format_help()


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v))
def test_every_verb_has_help_with_an_example(verb):
    text = verb_help(verb)
    assert "example:" in text and "domainlock " + " ".join(verb) in text


def test_real_process_exit_code_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    p = subprocess.run([sys.executable, "-m", "domainlock", "eval", "--model", str(tmp_path / "missing"),
                        "--domains", "mnist"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stderr.startswith("domainlock: error: ")


def test_synthesize_end_to_end(tmp_path, capsys, data_root):
    src = tmp_path / "uci"
    rc, _, err = run(["train", "--domain", "uci-digits", "--out", str(src), "--epochs", "2", "-q", "--device", "cpu"],
                     capsys, data_root)
    assert rc == 0, err
    out = tmp_path / "pseudo"
    rc, text, err = run(["synthesize", "--model", str(src), "--n", "40", "--steps", "2", "--fidelity-epochs", "1",
                         "--out", str(out), "-q", "--device", "cpu"], capsys, data_root)
    assert rc == 0, err
    assert "fidelity on real uci-digits test: teacher" in text and "student distilled from 40" in text
    info = json.loads((out / "info.json").read_text())
    assert info["fidelity"]["domain"] == "uci-digits" and 0.0 <= info["fidelity"]["student_acc"] <= 1.0
    assert (out / "grid.png").read_bytes()[:4] == b"\x89PNG"
    rc, _, err = run(["synthesize", "--model", str(src), "--n", "40", "--out", str(out)], capsys, data_root)
    assert rc == 2 and "--overwrite" in one_line_error(err)
