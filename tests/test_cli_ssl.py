"""``domainlock train --recipe simclr``: its flags and example in the help, an end-to-end run to a simclr
artifact, and one-line errors (existing output, bad values); the supervised default is unchanged."""

from __future__ import annotations

import json

import pytest

from domainlock.cli.main import build_parser, main
from test_cli import one_line_error, run  # the same helpers as the other CLI tests


def _help(argv):
    parser = build_parser(argv)
    return parser._subparsers._group_actions[0].choices["train"].format_help()


def test_train_help_shows_the_recipe_example_and_the_recipes_flags():
    text = _help(["train"])
    assert "example:" in text and "domainlock train --recipe simclr --domain mnist" in text
    assert "--recipe {supervised,simclr}" in text and "--label-smoothing" in text and "--temperature" not in text
    ssl = _help(["train", "--recipe", "simclr"])
    for flag in ("--temperature", "--proj-dim", "simclr-crop", "--probe-l2", "--probe-max-iter"):
        assert flag in ssl, flag
    assert "--label-smoothing" not in ssl
    assert "--temperature" in _help(["train", "--recipe=simclr"])


SMALL = ["train", "--recipe", "simclr", "--domain", "uci-digits", "--epochs", "1", "--limit-train", "64",
         "--batch-size", "32", "--probe-l2", "1e-3", "--probe-max-iter", "30", "-q", "--device", "cpu"]


def test_train_simclr_end_to_end(tmp_path, capsys, data_root):
    out = tmp_path / "ssl-uci"
    rc, text, err = run(SMALL + ["--out", str(out), "--temperature", "0.2"], capsys, data_root)
    assert rc == 0, err
    assert text.startswith(f"wrote {out}") and "test=" in text
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["recipe"] == "simclr" and card["training"]["encoder_saw_labels"] is False
    assert card["training"]["simclr"]["temperature"] == 0.2 and card["training"]["simclr"]["epochs"] == 1
    assert card["training"]["linear_probe"]["probe_l2"] == "1e-3"
    assert card["training"]["linear_probe"]["probe_max_iter"] == 30
    assert card["arch"] == "digitnet" and card["domain"] == "uci-digits"
    rc, _, err = run(SMALL + ["--out", str(out)], capsys, data_root)
    assert rc == 2 and "--overwrite" in one_line_error(err)


def test_train_simclr_bad_values_are_one_line(tmp_path, capsys, data_root):
    rc, _, err = run(SMALL + ["--out", str(tmp_path / "o"), "--temperature", "0"], capsys, data_root)
    assert rc == 2 and "temperature=0.0 is out of range" in one_line_error(err)
    rc, _, err = run(SMALL + ["--out", str(tmp_path / "o"), "--probe-l2", "x"], capsys, data_root)
    assert rc == 2 and "probe_l2='x'" in one_line_error(err)
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):  # a supervised-only flag is not silently ignored
        main(SMALL + ["--out", str(tmp_path / "o"), "--label-smoothing", "0.1"])
