"""utils.precision and the precision option of the training loop and the fine-tuning attack: bf16 autocast wraps
only the model's forward; weights, gradients and the loss stay float32."""

from __future__ import annotations

import pytest
import torch

from domainlock.attacks.finetune import AttackProtocol
from domainlock.data import DomainData
from domainlock.errors import DomainlockError
from domainlock.models import build_model
from domainlock.training.loop import TrainConfig, fit
from domainlock.utils.precision import forward_autocast, resolve_bf16


def _toy(n: int = 40) -> DomainData:
    g = torch.Generator().manual_seed(0)
    return DomainData(name="toy", split="train", x=torch.rand(n, 3, 32, 32, generator=g), y=torch.arange(n) % 10,
                      num_classes=10)


def test_resolve_bf16_follows_the_choice_and_rejects_unknown_ones():
    cpu = torch.device("cpu")
    assert resolve_bf16("fp32", cpu) is False and resolve_bf16("bf16", cpu) is True
    assert isinstance(resolve_bf16("auto", cpu), bool)
    with pytest.raises(DomainlockError, match="fp16.*auto, bf16, fp32"):
        resolve_bf16("fp16", cpu)
    with pytest.raises(DomainlockError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(DomainlockError, match="precision"):
        AttackProtocol(precision="half")


def test_forward_autocast_lowers_convolutions_only_when_asked():
    conv, x = torch.nn.Conv2d(3, 4, 3), torch.rand(2, 3, 8, 8)
    with forward_autocast(True, torch.device("cpu")):
        assert conv(x).dtype == torch.bfloat16
    with forward_autocast(False, torch.device("cpu")):
        assert conv(x).dtype == torch.float32


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fit_runs_the_forward_in_the_asked_precision_and_keeps_float32_weights(precision):
    model = build_model("digitnet")
    seen: list[torch.dtype] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = fit(model, _toy(), None, TrainConfig(epochs=2, batch_size=16, augment="none", precision=precision),
              device="cpu", progress=False)
    hook.remove()
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert seen and set(seen) == {want}
    assert out["bf16"] is (precision == "bf16")
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.isfinite(v.float()).all(), k
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())   # it trained


def test_the_attack_protocol_hands_its_precision_to_the_training_loop():
    cfg = AttackProtocol(precision="bf16").train_config(n_train=20, seed=3, select_best=False)
    assert cfg.precision == "bf16" and cfg.seed == 3
    assert AttackProtocol().train_config(n_train=20, seed=0, select_best=False).precision == "fp32"
