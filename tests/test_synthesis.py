"""Pseudo-source synthesis by model inversion (domainlock.synthesis), on a tiny BN CNN built here."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import warnings

import pytest
import torch
from torch import nn

from domainlock.data import DomainData
from domainlock.errors import DomainlockError, OutputExistsError
from domainlock.models import Classifier, Normalize
from domainlock.synthesis import pseudo_source as S
from domainlock.synthesis.inversion import (
    BNStatsHook,
    SynthesisConfig,
    _Moments,
    attach_bn_hooks,
    bn_matching_loss,
    resolve_bf16,
    synthesize_pseudo_source,
)
from domainlock.synthesis.pseudo_source import PseudoSource, fidelity, load_pseudo_source, save_pseudo_source
from domainlock.utils.hparams import add_dataclass_args, dataclass_from_args

C = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def quadrant_images(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c = a bright blob in quadrant c of a dim noisy image."""
    y = torch.arange(n) % C
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    for i, c in enumerate(y.tolist()):
        r, k = divmod(c, 2)
        x[i, :, 16 * r + 4:16 * r + 12, 16 * k + 4:16 * k + 12] += 0.6
    return x.clamp(0, 1), y


def tiny(bn: bool = True, seed: int = 0) -> Classifier:
    """A tiny CNN trained for a moment on :func:`quadrant_images` (so BN running statistics and the
    classes mean something); a fresh copy each call."""
    return copy.deepcopy(_tiny(bn, seed))


@functools.cache
def _tiny(bn: bool, seed: int) -> Classifier:
    torch.manual_seed(seed)
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    enc = nn.Sequential(Normalize((0.5,) * 3, (0.5,) * 3),
                        nn.Conv2d(3, 8, 3, padding=1, bias=not bn), norm(8), nn.ReLU(), nn.MaxPool2d(4),
                        nn.Conv2d(8, 16, 3, padding=1, bias=not bn), norm(16), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(1))
    model = Classifier(enc, nn.Linear(16 * 4 * 4, C), num_classes=C)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        x, y = quadrant_images(16, g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


FAST = dict(batch_size=16, steps=25, lr=0.3)


def test_bn_hook_per_channel_stats_2d_and_1d():
    bn = nn.BatchNorm2d(2).eval()
    hook = BNStatsHook(bn)
    # channel 0 holds 1, 2, 3, 4; channel 1 holds 0, 0, 10, 10 (over batch 2 and two pixels)
    x = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]], [[[3.0, 4.0]], [[10.0, 10.0]]]])
    bn(x)
    assert torch.allclose(hook.mean, torch.tensor([2.5, 5.0]))
    assert torch.allclose(hook.var, torch.tensor([1.25, 25.0]))  # biased variance
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([2.5, 5.0]))
        bn.running_var.copy_(torch.tensor([1.25, 25.0]))
    assert float(hook.loss()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([2.5, 2.0]))  # mean off by 3 in one channel
    assert float(hook.loss()) == pytest.approx(3.0, abs=1e-5)
    hook.remove()
    bn1 = nn.BatchNorm1d(3).eval()
    h1 = BNStatsHook(bn1)
    bn1(torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 6.0]]))
    assert torch.allclose(h1.mean, torch.tensor([1.0, 1.0, 4.0]))
    assert torch.allclose(h1.var, torch.tensor([1.0, 0.0, 4.0]))
    h1.remove()


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_moments_match_mean_and_biased_var_with_exact_gradients(fmt):
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(6, 5, 4, 3, generator=g, dtype=torch.float64) * 2 + 1).contiguous(memory_format=fmt)
    assert torch.autograd.gradcheck(_Moments.apply, (h.clone().requires_grad_(True),))
    hf = h.float().requires_grad_(True)
    mean, sq = _Moments.apply(hf)
    assert torch.allclose(mean, hf.mean([0, 2, 3]), atol=1e-6)
    assert torch.allclose(sq - mean * mean, hf.var([0, 2, 3], unbiased=False), atol=1e-5)
    (mean.sum() + (sq - mean * mean).sum()).backward()
    ref = hf.detach().clone().requires_grad_(True)
    (ref.mean([0, 2, 3]).sum() + ref.var([0, 2, 3], unbiased=False).sum()).backward()
    assert torch.allclose(hf.grad, ref.grad, atol=1e-5)
    # bf16 input: statistics still accumulated in float32, gradient in the input's dtype
    hb = h.to(torch.bfloat16).requires_grad_(True)
    mb, sb = _Moments.apply(hb)
    assert mb.dtype == torch.float32 and torch.allclose(mb, h.float().mean([0, 2, 3]), atol=0.05)
    sb.sum().backward()
    assert hb.grad.dtype == torch.bfloat16


def test_bf16_synthesis_matches_bn_statistics_like_fp32():
    assert resolve_bf16("fp32", torch.device("cpu")) is False
    assert resolve_bf16("bf16", torch.device("cpu")) is True
    out = {}
    for precision in ("fp32", "bf16"):
        ps = synthesize_pseudo_source(tiny(), 32, seed=0, progress=False,
                                      cfg=SynthesisConfig(**FAST, precision=precision))
        assert ps.info["bf16"] is (precision == "bf16")
        assert ps.info["teacher_acc"] >= 0.8
        out[precision] = ps.info["final_losses"]["bn"]
    assert out["bf16"] < 1.5 * out["fp32"] + 0.05


def test_bn_matching_loss_first_layer_weight():
    model = tiny()
    hooks = attach_bn_hooks(model)
    assert len(hooks) == 2
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))
    l1 = float(bn_matching_loss(hooks, 1.0))
    l3 = float(bn_matching_loss(hooks, 3.0))
    assert l3 == pytest.approx(l1 + 2 * float(hooks[0].loss()), rel=1e-5)
    for h in hooks:
        h.remove()


def test_synthesis_improves_bn_loss_and_hits_intended_classes():
    model = tiny()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    ps = synthesize_pseudo_source(model, 32, seed=0, progress=False, cfg=SynthesisConfig(**FAST))
    assert ps.x.shape == (32, 3, 32, 32) and ps.x.dtype == torch.float32
    assert ps.y.dtype == torch.int64 and ps.y.shape == (32,)
    assert float(ps.x.min()) >= 0 and float(ps.x.max()) <= 1
    info = ps.info
    assert info["used_bn_matching"] is True and info["n_bn_layers"] == 2
    assert info["class_counts"] == [8, 8, 8, 8]
    assert info["final_losses"]["bn"] < 0.5 * info["initial_losses"]["bn"]
    assert info["final_losses"]["ce"] < info["initial_losses"]["ce"]
    assert info["teacher_acc"] >= 0.8
    with torch.no_grad():
        acc = float((model(ps.x).argmax(1) == ps.y).float().mean())
    assert acc == pytest.approx(info["teacher_acc"])
    # the caller's model is untouched: same weights and statistics, still in eval mode, still trainable
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    assert not model.training and all(p.requires_grad for p in model.parameters())
    json.dumps(info)  # the info is JSON-able


def test_synthesis_is_deterministic_given_the_seed():
    model = tiny()
    cfg = SynthesisConfig(**{**FAST, "steps": 5})
    a = synthesize_pseudo_source(model, 20, seed=3, progress=False, cfg=cfg)
    b = synthesize_pseudo_source(model, 20, seed=3, progress=False, cfg=cfg)
    c = synthesize_pseudo_source(model, 20, seed=4, progress=False, cfg=cfg)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)


def test_no_bn_model_falls_back_to_image_priors():
    model = tiny(bn=False)
    with pytest.warns(UserWarning, match="no BatchNorm"):
        ps = synthesize_pseudo_source(model, 16, progress=False, cfg=SynthesisConfig(**{**FAST, "steps": 4}))
    assert ps.info["used_bn_matching"] is False
    assert ps.info["n_bn_layers"] == 0
    assert "image-priors" in ps.info["fallback"]
    assert "bn" not in ps.info["final_losses"]
    assert "tv" in ps.info["final_losses"]


def test_bn_model_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ps = synthesize_pseudo_source(tiny(), 8, progress=False, cfg=SynthesisConfig(**{**FAST, "steps": 2}))
    assert ps.info["fallback"] is None


def test_synthesis_never_reads_real_data(monkeypatch):
    import domainlock.data
    import domainlock.data.storage

    def boom(*a, **k):
        raise AssertionError("synthesis must not read real data")

    monkeypatch.setattr(domainlock.data, "load_domain", boom)
    monkeypatch.setattr(domainlock.data.storage, "load_domain", boom)
    ps = synthesize_pseudo_source(tiny(), 12, progress=False, cfg=SynthesisConfig(**{**FAST, "steps": 3}))
    assert len(ps) == 12


def test_odd_sizes_and_single_image_batches():
    # n not a multiple of the batch nor of the classes; a last batch of one image (BN needs two)
    ps = synthesize_pseudo_source(tiny(), 17, progress=False, cfg=SynthesisConfig(batch_size=8, steps=2))
    assert ps.x.shape[0] == 17
    assert sorted(ps.info["class_counts"]) == [4, 4, 4, 5]


def test_generator_mode_smoke():
    cfg = SynthesisConfig(mode="generator", batch_size=16, steps=4, z_dim=8, gen_width=8)
    ps = synthesize_pseudo_source(tiny(), 24, seed=1, progress=False, cfg=cfg)
    assert ps.x.shape == (24, 3, 32, 32) and ps.info["mode"] == "generator"
    again = synthesize_pseudo_source(tiny(), 24, seed=1, progress=False, cfg=cfg)
    assert torch.equal(ps.x, again.x)


def test_config_validation_and_cli_flags():
    with pytest.raises(DomainlockError):
        SynthesisConfig(mode="gan")
    with pytest.raises(DomainlockError):
        SynthesisConfig(steps=0)
    with pytest.raises(DomainlockError):
        SynthesisConfig(w_bn=-1)
    with pytest.raises(DomainlockError, match="schedule"):
        SynthesisConfig(schedule="step")
    with pytest.raises(DomainlockError, match="precision"):
        SynthesisConfig(precision="fp16")
    p = argparse.ArgumentParser()
    add_dataclass_args(p, SynthesisConfig)
    cfg = dataclass_from_args(SynthesisConfig, p.parse_args(["--n", "64", "--w-bn", "2.5", "--flip"]))
    assert cfg.n == 64 and cfg.w_bn == 2.5 and cfg.flip is True and cfg.mode == "batch"


def test_save_load_round_trip_and_refuse_overwrite(tmp_path):
    ps = synthesize_pseudo_source(tiny(), 20, progress=False, cfg=SynthesisConfig(**{**FAST, "steps": 2}))
    out = tmp_path / "pseudo"
    save_pseudo_source(ps, out)
    assert (out / S.PSEUDO_FILE).is_file() and (out / S.INFO_FILE).is_file() and (out / S.GRID_FILE).is_file()
    back = load_pseudo_source(out)
    assert torch.equal(back.x, ps.x) and torch.equal(back.y, ps.y)  # x was quantized to 1/255 steps
    assert back.info["n"] == 20 and back.info["used_bn_matching"] is True
    with pytest.raises(OutputExistsError):
        save_pseudo_source(ps, out)
    ps2 = PseudoSource(ps.x[:10], ps.y[:10], dict(ps.info, n=10))
    save_pseudo_source(ps2, out, overwrite=True)
    assert len(load_pseudo_source(out)) == 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    with pytest.raises(DomainlockError):
        load_pseudo_source(tmp_path / "missing")


def test_fidelity_distills_a_fresh_model():
    model = tiny()
    ps = synthesize_pseudo_source(model, 32, progress=False, cfg=SynthesisConfig(**{**FAST, "steps": 3}))
    g = torch.Generator().manual_seed(0)
    real = DomainData("fake", "test", torch.rand(40, 3, 32, 32, generator=g), torch.arange(40) % C, C)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    r = fidelity(model, ps, real, epochs=1, seed=0, batch_size=16)
    for k in ("teacher_acc", "student_acc", "gap", "agreement",
              "student_pseudo_agreement", "time_s"):
        assert k in r
    assert 0 <= r["student_acc"] <= 1 and r["gap"] == pytest.approx(r["teacher_acc"] - r["student_acc"], abs=1e-4)
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())  # teacher untouched
    json.dumps(r)
    r2 = fidelity(model, ps, real, epochs=1, seed=0, batch_size=16, return_student=True)
    student = r2.pop("student")
    assert isinstance(student, nn.Module) and student is not model
    assert r2 == {**r, "time_s": r2["time_s"]}  # deterministic


@pytest.mark.parametrize("mode", ["batch", "generator"])
def test_gray_images_repeat_one_value_over_the_channels(mode):
    cfg = SynthesisConfig(**{**FAST, "mode": mode, "gray": True, "batch_size": 16, "steps": 4})
    ps = synthesize_pseudo_source(tiny(), 16, seed=0, progress=False, cfg=cfg)
    assert ps.x.shape == (16, 3, 32, 32)
    assert torch.equal(ps.x[:, 0], ps.x[:, 1]) and torch.equal(ps.x[:, 0], ps.x[:, 2])
    assert float(ps.x.std()) > 0   # not a constant image
    colour = synthesize_pseudo_source(tiny(), 16, seed=0, progress=False,
                                      cfg=SynthesisConfig(**{**FAST, "mode": mode, "batch_size": 16, "steps": 4}))
    assert not torch.equal(colour.x[:, 0], colour.x[:, 1])
