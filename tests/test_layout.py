"""Channels-last compute layout: values never change, models come back contiguous, the switch turns it off."""

from __future__ import annotations

import torch

from domainlock.evaluation import batched_outputs, predict
from domainlock.models import build_model
from domainlock.utils.layout import (
    channels_last,
    is_channels_last,
    set_channels_last,
    to_channels_last,
    to_contiguous,
)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("digitnet", num_classes=10, width=8).eval()


def _all_contiguous(model: torch.nn.Module) -> bool:
    return all(t.is_contiguous() for t in [*model.parameters(), *model.buffers()])


def test_round_trip_keeps_every_value_and_ends_contiguous():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    to_channels_last(model)
    assert is_channels_last(model) and not _all_contiguous(model)
    to_contiguous(model)
    assert _all_contiguous(model) and not is_channels_last(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_context_restores_the_layout_it_found():
    model = _model()
    with channels_last(model):
        assert is_channels_last(model)
    assert _all_contiguous(model)
    to_channels_last(model)
    with channels_last(model):
        pass
    assert is_channels_last(model)      # a caller that chose channels-last keeps it


def test_outputs_agree_with_the_plain_forward_to_float_tolerance():
    model = _model()
    x = torch.rand(20, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
    (fast,) = batched_outputs(model, x, lambda logits: logits, batch_size=64)
    assert torch.allclose(plain, fast, atol=1e-5)
    assert torch.equal(predict(model, x), plain.argmax(1))
    assert _all_contiguous(model)       # evaluation hands the model back as it came


def test_switch_turns_the_conversion_off():
    model = _model()
    previous = set_channels_last(False)
    try:
        to_channels_last(model)
        assert _all_contiguous(model)
        with channels_last(model):
            assert _all_contiguous(model)
    finally:
        set_channels_last(previous)
    assert previous is True


def test_an_attack_hands_back_a_contiguous_model_and_leaves_the_victim_alone(tmp_path):
    """run_attack computes on a channels-last private copy; what it returns is contiguous and round-trips."""
    from domainlock.artifact import load_artifact, save_artifact
    from domainlock.attacks import run_attack
    from domainlock.attacks.finetune import FinetuneParams
    from domainlock.data.types import DomainData

    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 3, 32, 32, generator=g)
    y = torch.arange(60) % 10
    data = DomainData(name="toy", split="train", x=x, y=y, num_classes=10)
    model = _model()
    rep = run_attack(model, "finetune", target="toy", params=FinetuneParams(n=20, steps=2, epochs=1),
                     device="cpu", loader=lambda name, split, root: data)
    assert _all_contiguous(rep.model) and _all_contiguous(model)
    save_artifact(tmp_path / "a", rep.model, {"domain": "toy"})
    loaded = load_artifact(tmp_path / "a").model
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, rep.model.state_dict()[k]), k


def test_a_batch_goes_channels_last_with_its_values_and_other_tensors_pass_through():
    from domainlock.utils.layout import batch_to_channels_last

    x = torch.rand(2, 3, 4, 5)
    out = batch_to_channels_last(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, x)
    flat = torch.rand(2, 7)
    assert batch_to_channels_last(flat) is flat
