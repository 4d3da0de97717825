"""The restyled keep set of MAP (domainlock.methods.map.restyle): the re-normalization on hand-made tensors, the
hooks' on/off behaviour, and keep_restyle inside the mask-learning loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import toys
from domainlock.errors import DomainlockError
from domainlock.methods import DataAccess, RunContext, get_method
from domainlock.methods.map import MAPConfig, validate_config
from domainlock.methods.map.restyle import Restyler, restyle
from toys import Loader

pytestmark = pytest.mark.usefixtures("one_thread")


def test_restyle_gives_each_channel_the_running_mean_and_variance():
    # channel 0: values 1, 3 (mean 2, var 1); channel 1: 0, 4 (mean 2, var 4)
    h = torch.tensor([[[[1.0]], [[0.0]]], [[[3.0]], [[4.0]]]])          # [2, 2, 1, 1]
    out = restyle(h, torch.tensor([10.0, -1.0]), torch.tensor([4.0, 0.25]), eps=0.0)
    # (h - mean) / std * sqrt(running_var) + running_mean
    expected = torch.tensor([[[[8.0]], [[-1.5]]], [[[12.0]], [[-0.5]]]])
    assert torch.allclose(out, expected)


def test_restyle_is_the_identity_on_a_batch_with_the_running_statistics():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(64, 3, 5, 5, generator=g) * 2 + 1
    mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
    assert torch.allclose(restyle(h, mean, var, eps=0.0), h, atol=1e-5)


def _bn_net() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return net.eval()


@pytest.mark.parametrize("which,n_changed", [("first", 1), ("all", 2)])
def test_restyler_acts_only_while_on_and_only_on_the_chosen_layers(which, n_changed):
    net, x = _bn_net(), torch.rand(8, 3, 9, 9)
    bns = [m for m in net if isinstance(m, nn.BatchNorm2d)]
    seen: dict[int, torch.Tensor] = {}   # what each BN layer normalizes (forward hooks see the pre-hooks' output)
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, inp[0]))
             for i, m in enumerate(bns)]
    plain = net(x)
    r = Restyler(net, which)
    assert torch.equal(net(x), plain)                      # off: no effect
    with r.on():
        styled = net(x)
    assert not torch.allclose(styled, plain)

    def has_running_stats(i: int) -> bool:
        h = seen[i]
        return (torch.allclose(h.mean((0, 2, 3)), bns[i].running_mean, atol=1e-4)
                and torch.allclose(h.var((0, 2, 3), unbiased=False), bns[i].running_var, atol=1e-3))

    assert sum(has_running_stats(i) for i in range(len(bns))) == n_changed
    assert has_running_stats(0)
    r.remove()
    assert torch.equal(net(x), plain)                      # removed: no effect
    for h in hooks:
        h.remove()


def test_restyler_refuses_a_model_without_batchnorm():
    with pytest.raises(DomainlockError, match="keep_restyle"):
        Restyler(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), "first")


def test_keep_restyle_validation():
    with pytest.raises(DomainlockError, match="keep_restyle"):
        validate_config(MAPConfig(keep_restyle="some"))
    with pytest.raises(DomainlockError, match="keep_restyle_weight"):
        validate_config(MAPConfig(keep_restyle_weight=-1.0))


def test_keep_restyle_runs_in_the_loop_and_leaves_the_teacher_unhooked():
    model = toys.tiny_model(0).eval()
    hp = MAPConfig(steps=6, batch_size=16, lr=0.05, eval_every=3, val_size=16, select="last", early_stop=0.0,
                   keep_restyle="all")
    res = get_method("sa-map").run(model, DataAccess("source-available", "src", "tgt", loader=Loader()), hp,
                                   RunContext(device=torch.device("cpu"), seed=0, progress=False))
    assert res.info["final_losses"]["restyled"] >= 0
    assert all(not m._forward_pre_hooks for m in model.modules())   # hooks removed from the caller's model
    off = get_method("sa-map").run(model, DataAccess("source-available", "src", "tgt", loader=Loader()),
                                   MAPConfig(**{**hp.__dict__, "keep_restyle": "none"}),
                                   RunContext(device=torch.device("cpu"), seed=0, progress=False))
    assert "restyled" not in off.info["final_losses"]
    assert any(not torch.equal(a, b) for a, b in zip(res.model.state_dict().values(),
                                                     off.model.state_dict().values(), strict=True))
