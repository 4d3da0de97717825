"""Evaluation: accuracy on hand-made data with a hand-made model, evaluate() and the text table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from domainlock import evaluation
from domainlock.data import DomainData
from domainlock.evaluation import accuracy, evaluate, format_table, predict


class ReadsPixel(nn.Module):
    """Predicts class ``floor(10 * x[:, 0, 0, 0])``; has a BN layer so eval mode matters."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(1)

    def forward(self, x):
        cls = (x[:, 0, 0, 0] * 10).floor().long().clamp(0, 9)
        return F.one_hot(cls, 10).float() + 0 * self.bn(x[:, :1, 0, 0]).sum()


def _data(preds, labels, name="hand", split="test", num_classes=10):
    x = torch.zeros(len(preds), 3, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(preds, dtype=torch.float32) / 10 + 0.05
    return DomainData(name, split, x, torch.tensor(labels), num_classes)


def test_accuracy_matches_hand_count():
    data = _data([0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 9, 9, 9, 7])  # 5 of 8 right
    m = ReadsPixel().train()
    assert accuracy(m, data) == pytest.approx(5 / 8)
    assert accuracy(m, data, batch_size=3) == pytest.approx(5 / 8)
    assert m.training  # mode restored
    assert predict(m, data.x).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_accuracy_runs_without_grad():
    seen = []

    class Spy(ReadsPixel):
        def forward(self, x):
            seen.append((torch.is_grad_enabled(), self.training))
            return super().forward(x)

    accuracy(Spy().train(), _data([1, 2], [1, 2]))
    assert seen and all(g is False and t is False for g, t in seen)


def test_evaluate_and_table():
    a = _data([1, 1, 1, 1], [1, 1, 1, 0], name="alpha", num_classes=4)
    b = _data([2, 3], [0, 0], name="beta", split="val", num_classes=2)
    res = evaluate(ReadsPixel(), [a, b], device="cpu")
    assert res["alpha"] == {"accuracy": 0.75, "n": 4, "chance": 0.25, "split": "test", "shape": [3, 4, 4]}
    assert res["beta"]["accuracy"] == 0.0 and res["beta"]["split"] == "val"
    table = format_table(res, title="hand")
    lines = table.splitlines()
    assert lines[0] == "hand" and "accuracy" in lines[1] and "chance" in lines[1]
    assert "alpha" in table and "75.00%" in table and "0.00%" in table and "25.0%" in table


def test_evaluate_loads_named_domains(monkeypatch):
    calls = []

    def fake_load(name, split="train", root=None):
        calls.append((name, split, root))
        return _data([3, 3, 3, 3, 3], [3, 4, 0, 1, 2], name=name, split=split, num_classes=5)

    import domainlock.data as data_mod

    monkeypatch.setattr(data_mod, "load_domain", fake_load)
    res = evaluation.evaluate(ReadsPixel(), ["syn", "mnistm"], split="val", data_root="/r", device="cpu")
    assert calls == [("syn", "val", "/r"), ("mnistm", "val", "/r")]
    assert res["syn"]["accuracy"] == pytest.approx(0.2) and res["mnistm"]["n"] == 5


def test_empty_data_is_nan():
    empty = DomainData("e", "test", torch.zeros(0, 3, 4, 4), torch.zeros(0, dtype=torch.long), 10)
    assert accuracy(ReadsPixel(), empty) != accuracy(ReadsPixel(), empty)  # nan


def test_accuracy_on_is_the_exact_share_of_right_answers_and_nan_when_empty():
    from domainlock.evaluation import accuracy_on

    class FirstPixel(nn.Module):   # class 1 where pixel (0, 0, 0) > 0.5, else class 0
        def forward(self, x):
            v = (x[:, 0, 0, 0] > 0.5).float()
            return torch.stack([1 - v, v], 1)

    x = torch.zeros(3, 3, 2, 2)
    x[0, 0, 0, 0] = 1.0
    y = torch.tensor([1, 1, 0])            # right, wrong, right
    assert accuracy_on(FirstPixel(), x, y) == 2 / 3
    assert accuracy_on(FirstPixel(), x[:0], y[:0]) != accuracy_on(FirstPixel(), x[:0], y[:0])   # NaN
