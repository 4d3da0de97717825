"""NTP (non-transferable pruning): the Fisher ratio on hand-made features, both Z-step proxes, the sparsity
schedule, the ADMM residual, the sparsity reached, the exact reparameterization, and the contract (bad
values and models without an encoder/head split fail with one clear line; the CLI runs it)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import toys
from domainlock.data import DomainData
from domainlock.errors import DomainlockError
from domainlock.losses import fisher_ratio, fisher_terms
from domainlock.masking import zero_masks
from domainlock.methods import RunContext, get_method, method_names, protect
from domainlock.methods.ntp import (
    NTPConfig,
    frozen_bn_stats,
    normalize_scales,
    ntp_prune,
    project_topk,
    quantile_threshold,
    reparameterize,
    scale_plan,
    scheduled_sparsity,
    simulated_attack_grads,
    soft_threshold,
    validate_config,
)
from domainlock.models import Classifier, build_model
from toys import C, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def toy(name: str, split: str, n: int = 64) -> DomainData:
    return toys.toy(name, split, n)   # NTP's ADMM and target head get 64 images per split, not 48


def loader(name: str, split: str, root=None) -> DomainData:
    return toy(name, split)


def ctx() -> RunContext:
    return RunContext(device=torch.device("cpu"), seed=0, progress=False)


def fast(**kw) -> NTPConfig:
    base = {"iterations": 3, "steps_per_iter": 3, "batch_size": 16, "head_steps": 5, "head_size": 64,
            "finetune_steps": 3, "val_size": 16, "recalibrate": 32, "lr": 1e-2, "sim_steps": 2, "sim_shots": 16}
    return NTPConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------ Fisher ratio

def test_fisher_ratio_by_hand_with_an_absent_class():
    # class 0: (1,0),(3,0) -> mean (2,0), within 1;  class 2: (0,2),(0,4) -> mean (0,3), within 1;
    # class 1 absent.  mean of means (1, 1.5); S_B = |(1,-1.5)|^2 = 3.25; S_W = 1; R = 3.25
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    y = torch.tensor([0, 0, 2, 2])
    t = fisher_terms(f, y, num_classes=3, normalize=False)
    assert t.classes == 2
    assert math.isclose(float(t.between), 3.25, rel_tol=1e-6)
    assert math.isclose(float(t.within), 1.0, rel_tol=1e-6)
    assert math.isclose(float(t.ratio), 3.25, rel_tol=1e-6)
    # the same features as a 4-D map [B, C, H, W] = [4, 2, 1, 1]: same value
    assert math.isclose(float(fisher_ratio(f.view(4, 2, 1, 1), y, 3, normalize=False)), 3.25, rel_tol=1e-6)
    # a 4-D map with spatial extent: [4, 1, 1, 2] flattens to the same vectors
    assert math.isclose(float(fisher_ratio(f.view(4, 1, 1, 2), y, 3, normalize=False)), 3.25, rel_tol=1e-6)


def test_fisher_ratio_normalizes_features_and_counts_a_singleton_class():
    # after L2 normalization: class 0: (1,0),(0,1) -> mean (.5,.5), within .5; class 1: (-1,0) alone,
    # within 0. mean of means (-.25,.25); S_B = .625; S_W = (.5 + 0) / 2 = .25; R = 2.5
    f = torch.tensor([[5.0, 0.0], [0.0, 0.5], [-2.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    t = fisher_terms(f, y)
    assert math.isclose(float(t.between), 0.625, rel_tol=1e-6)
    assert math.isclose(float(t.within), 0.25, rel_tol=1e-6)
    assert math.isclose(float(t.ratio), 2.5, rel_tol=1e-5)
    assert math.isclose(float(fisher_ratio(7 * f, y)), 2.5, rel_tol=1e-5)   # scale-free


def test_fisher_ratio_edge_cases_and_gradient():
    f = torch.randn(6, 3, 2, 2, requires_grad=True)
    one_class = fisher_ratio(f, torch.zeros(6, dtype=torch.long))
    assert float(one_class.detach()) == 0.0                                       # S_B = 0 with one class
    r = fisher_ratio(f, torch.tensor([0, 1, 2, 0, 1, 2]), num_classes=5)
    r.backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    with pytest.raises(DomainlockError, match="labels"):
        fisher_ratio(torch.randn(3, 2), torch.tensor([0, 1, 5]), num_classes=3)
    with pytest.raises(DomainlockError, match="features"):
        fisher_ratio(torch.randn(3, 2), torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------ Z-step

def test_topk_projection_keeps_the_largest_magnitudes_globally():
    a, b = torch.tensor([3.0, -1.0, 0.5]), torch.tensor([[-4.0, 0.2]])
    za, zb = project_topk([a, b], 0.6)          # 5 entries, prune 3: |0.2|, |0.5|, |-1|
    assert za.tolist() == [3.0, 0.0, 0.0]
    assert zb.tolist() == [[-4.0, 0.0]]
    assert [t.tolist() for t in project_topk([a, b], 0.0)] == [a.tolist(), b.tolist()]


def test_soft_threshold_shrinks_and_zeroes():
    a, b = torch.tensor([3.0, -1.0, 0.5]), torch.tensor([[-4.0, 0.2]])
    za, zb = soft_threshold([a, b], 0.75)
    assert torch.allclose(za, torch.tensor([2.25, -0.25, 0.0]))
    assert torch.allclose(zb, torch.tensor([[-3.25, 0.0]]))
    thr = quantile_threshold([a, b], 0.6)       # the 3rd smallest magnitude
    assert thr == 1.0
    za, zb = soft_threshold([a, b], thr)
    assert torch.allclose(za, torch.tensor([2.0, 0.0, 0.0])) and torch.allclose(zb, torch.tensor([[-3.0, 0.0]]))


def test_sparsity_schedules():
    assert scheduled_sparsity(1, 2, 0.8, "cubic") == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert scheduled_sparsity(2, 2, 0.8, "cubic") == pytest.approx(0.8)
    assert scheduled_sparsity(1, 4, 0.8, "linear") == pytest.approx(0.2)
    assert scheduled_sparsity(1, 4, 0.8, "constant") == 0.8
    assert all(scheduled_sparsity(i, 5, 0.9) <= scheduled_sparsity(i + 1, 5, 0.9) for i in range(1, 5))


# ------------------------------------------------------------------------------------------ ADMM

def _prunable_sparsity(model: nn.Module) -> float:
    m = zero_masks(model, "encoder")
    return sum(int((~v).sum()) for v in m.values()) / sum(v.numel() for v in m.values())


@pytest.mark.parametrize("zstep", ["topk", "soft"])
def test_sparsity_is_reached_and_only_the_encoder_is_pruned(zstep):
    model = tiny_model()
    s, t, v = toy("src", "train"), toy("tgt", "train"), toy("src", "val")
    out, info = ntp_prune(model, s.x, s.y, t.x, t.y, fast(sparsity=0.7, zstep=zstep), ctx(), val_x=v.x,
                          val_y=v.y, num_classes=C)
    assert out is model and type(out) is Classifier
    assert _prunable_sparsity(out) == pytest.approx(0.7, abs=1e-3)
    assert info["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert float((out.head.weight == 0).float().mean()) < 0.5           # the head is not pruned
    assert all(p.requires_grad for p in out.parameters())
    assert len(info["history"]) == 3 and info["history"][-1]["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert set(info["time_s"]) >= {"target_head", "admm", "finetune", "total"}
    # no hook left behind: a gradient step may move pruned weights again (the dense attacker)
    x = s.x[:8]
    nn.functional.cross_entropy(out.train()(x), s.y[:8]).backward()
    assert any(float(m.weight.grad[m.weight == 0].abs().sum()) > 0
               for m in out.encoder.modules() if isinstance(m, nn.Conv2d | nn.Linear))


@pytest.mark.parametrize("mode", ["fixed", "online"])
def test_every_head_mode_runs_and_the_fixed_head_is_not_trained(mode):
    model = tiny_model()
    s, t = toy("src", "train"), toy("tgt", "train")
    _, info = ntp_prune(model, s.x, s.y, t.x, t.y, fast(head_mode=mode, finetune_objective="ntp"), ctx(),
                        num_classes=C)
    assert info["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert all("refit_head_acc" not in h for h in info["history"])


def test_fixed_threshold_l1_prox_falls_back_to_magnitude_pruning():
    model = tiny_model()
    s, t = toy("src", "train"), toy("tgt", "train")
    _, info = ntp_prune(model, s.x, s.y, t.x, t.y, fast(sparsity=0.8, zstep="soft", delta=1e-6, iterations=1),
                        ctx(), num_classes=C)
    assert info["history"][0]["sparsity"] < 0.8                          # the tiny threshold fell short
    assert _prunable_sparsity(model) == pytest.approx(0.8, abs=1e-3)     # the final prune covers it


def test_admm_residual_shrinks_on_a_toy_problem():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU())
    model = Classifier(enc, nn.Linear(16, 2), num_classes=2)
    x = torch.randn(128, 3, 2, 2)
    y = (x.flatten(1)[:, 0] > 0).long()
    hp = NTPConfig(sparsity=0.5, alpha=0.0, fisher=0.0, rho=10.0, lr=3e-3, zstep="topk", prune_schedule="constant",
                   iterations=8, steps_per_iter=10, tol=0.0, batch_size=32, head_steps=0, finetune_steps=0,
                   val_size=0, recalibrate=0, weight_scale=1.0, bn_scale=1.0, sim_weight=0.0)
    _, info = ntp_prune(model, x, y, x, y, hp, ctx(), num_classes=2)
    res = [h["relative_residual"] for h in info["history"]]
    # W is pulled onto its sparse copy Z: ||W - Z|| / ||Z|| falls from ~0.4 (the pruned half) to ~0
    assert len(res) == 8 and res[0] > 0.2 and res[-1] < 0.01 and max(res[1:]) < 0.5 * res[0]
    assert _prunable_sparsity(model) == pytest.approx(0.5)


def test_small_residual_stops_early():
    model = tiny_model()
    s, t = toy("src", "train"), toy("tgt", "train")
    _, info = ntp_prune(model, s.x, s.y, t.x, t.y, fast(prune_schedule="constant", tol=1e5, iterations=4),
                        ctx(), num_classes=C)
    assert info["iterations"] == 1


# ------------------------------------------------------------------------------------------ reparameterization

def test_frozen_bn_stats_keeps_running_statistics_and_grads_flow():
    model = tiny_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    x = torch.rand(8, 3, 32, 32)
    with frozen_bn_stats(model):
        out = model(x)
    out.sum().backward()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("ws,bs", [(1000.0, 100.0), (10.0, 1.0)])
def test_reparameterization_is_exact_and_scales_what_it_says(ws, bs):
    model = tiny_model()
    for m in model.modules():                          # non-trivial statistics and affine parameters
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    x = torch.rand(16, 3, 32, 32)
    plan = scale_plan(model.encoder, x[:2])
    assert [n for n, _, _ in plan.layers] == ["1", "5", "9", "14"]        # conv, conv, conv, linear
    assert [n for n, _, _ in plan.bn_affine] == ["2", "6", "10"]          # not the feature BN "15"
    w0 = model.encoder[5].weight.detach().clone()
    g0 = model.encoder[15].weight.detach().clone()
    with torch.no_grad():
        e0 = model.eval()(x)
        with frozen_bn_stats(model):
            t0 = model.train()(x)
    info = reparameterize(model, model.encoder, x[:4], ws, bs)
    with torch.no_grad():
        e1 = model.eval()(x)
        with frozen_bn_stats(model):
            t1 = model.train()(x)
    assert torch.allclose(e0, e1, rtol=1e-4, atol=1e-4) and torch.allclose(t0, t1, rtol=1e-4, atol=1e-4)
    assert torch.allclose(model.encoder[5].weight, ws * w0)
    assert torch.equal(model.encoder[15].weight, g0)
    assert info["layers"] == ["encoder.1", "encoder.5", "encoder.9", "encoder.14"]


def test_reparameterization_undoes_what_it_cannot_keep_exact():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.conv(x)   # the conv output is also used outside the BN

    enc = nn.Sequential(Residual(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = Classifier(enc, nn.Linear(3, 2))
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        y0 = model.eval()(x)
    info = reparameterize(model, enc, x, 100.0, 10.0)
    assert info["layers"] == [] and info["rejected"] == ["encoder.0.conv"]
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), y0, rtol=1e-5, atol=1e-6)   # undone


def test_reparameterization_of_a_resnet_keeps_residual_paths_exact():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=C, width=4)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        y0 = model.eval()(x)
    info = reparameterize(model, model.encoder, x, 1000.0, 100.0)
    assert len(info["layers"]) == 20 and "encoder.4.0.bn1" in info["bn_affine"]
    assert info["rejected"] == ["encoder.2"]          # the stem BN also feeds the first identity shortcut
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), y0, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ contract

@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2])
def test_bad_sparsity_is_one_line_naming_value_and_range(bad):
    with pytest.raises(DomainlockError) as e:
        get_method("ntp").validate(NTPConfig(sparsity=bad), "source-available")
    msg = str(e.value)
    assert "\n" not in msg and f"sparsity={bad!r}" in msg and "(0.0, 1.0)" in msg


@pytest.mark.parametrize("bad", [{"zstep": "l0"}, {"head_mode": "adaptive"}, {"target_bn": "eval"}, {"rho": 0.0},
                                 {"iterations": 0}, {"alpha": float("nan")}, {"weight_scale": 0.5},
                                 {"sim_weight": -1.0}, {"sim_steps": 0}, {"sim_lr": 0.0}, {"sim_shots": 1},
                                 {"target_batch_size": 1}, {"fisher_at": "a,,b"}])
def test_validate_rejects_other_bad_values_with_one_line(bad):
    with pytest.raises(DomainlockError) as e:
        validate_config(NTPConfig(**bad))
    assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)


def test_model_without_split_fails_saying_how_to_name_it():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, C))
    with pytest.raises(DomainlockError) as e:
        protect(plain, "ntp", source="src", target="tgt", hparams=fast(), loader=loader, progress=False,
                device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "encoder" in msg and "wrap_model" in msg and "domainlock_split" in msg


def test_any_module_that_names_its_split_works():
    class Named(nn.Module):
        domainlock_split = ("body", "fc")

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(4, C)

        def forward(self, x):
            return self.fc(self.body(x))

    torch.manual_seed(0)
    hp = fast(sparsity=0.5, weight_scale=1000.0, bn_scale=100.0)
    res = protect(Named(), "ntp", source="src", target="tgt", hparams=hp, loader=loader, progress=False, device="cpu")
    assert type(res.model).__name__ == "Named"
    assert float((res.model.body[0].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert res.card["protection"]["info"]["reparameterized"]["layers"] == ["body.0"]


def test_protect_records_reads_and_diagnostics():
    res = protect(tiny_model(), "ntp", source="src", target="tgt", hparams=fast(), loader=loader, progress=False,
                  device="cpu")
    prot = res.card["protection"]
    assert prot["data_read"] == ["source:src:train", "source:src:val", "target:tgt:train"]
    assert prot["sparsity"] > 0.85                 # the encoder is 90% pruned and holds almost every weight
    info = prot["info"]
    assert info["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert {"target_head", "history", "source_val_acc_before", "source_val_acc_after", "target_fisher_after",
            "time_s"} <= set(info)
    json.dumps(info)                               # card-serializable


def test_registered_and_every_field_is_a_flag():
    assert "ntp" in method_names()
    m = get_method("ntp")
    assert m.settings == ("source-available",) and m.Hparams is NTPConfig
    import dataclasses
    for f in dataclasses.fields(NTPConfig):
        assert f.metadata.get("help"), f.name
        assert isinstance(f.default, int | float | str | bool), f.name


def test_cli_protect_ntp_end_to_end(tmp_path, capsys, data_root):
    from domainlock.artifact import load_artifact, save_artifact
    from domainlock.cli.main import main

    torch.manual_seed(0)
    src = tmp_path / "src"
    save_artifact(src, build_model("digitnet", width=8, feat_dim=32), {"domain": "mnist", "seed": 0})
    out = tmp_path / "ntp"
    rc = main(["protect", "--method", "ntp", "--sparsity", "0.9", "--model", str(src), "--source", "mnist",
               "--target", "syn", "--out", str(out), "--iterations", "2", "--steps-per-iter", "2",
               "--head-steps", "2", "--finetune-steps", "2", "--val-size", "0", "--recalibrate", "64",
               "--head-size", "64", "--device", "cpu", "-q", "--data-root", str(data_root)])
    _, err = capsys.readouterr()
    assert rc == 0, err
    art = load_artifact(out)
    prot = art.card["protection"]
    assert prot["method"] == "ntp" and prot["hparams"]["sparsity"] == 0.9 and prot["hparams"]["iterations"] == 2
    assert prot["info"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    rc = main(["protect", "--method", "ntp", "--sparsity", "1.5", "--model", str(src), "--source", "mnist",
               "--target", "syn", "--out", str(tmp_path / "bad"), "--data-root", str(data_root)])
    _, err = capsys.readouterr()
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "sparsity=1.5" in lines[0] and "(0.0, 1.0)" in lines[0]


def test_normalize_scales_undoes_the_reparameterization_exactly():
    model = tiny_model()
    x = torch.rand(8, 3, 32, 32)
    reparameterize(model, model.encoder, x, 1000.0, 100.0)
    assert float(model.encoder[5].weight.detach().abs().max()) > 10
    with torch.no_grad():
        y0 = model.eval()(x)
    info = normalize_scales(model, x)
    assert info["rejected"] == [] and len(info["layers"]) == 4 and len(info["bn_affine"]) == 3
    w = model.encoder[5].weight.detach()
    assert float(w.pow(2).mean().sqrt()) == pytest.approx(1 / math.sqrt(3 * w[0].numel()), rel=1e-4)
    assert float(model.encoder[6].weight.detach().pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-4)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), y0, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ simulated attack

def _sim_setup():
    model = tiny_model().train()
    t = toy("tgt", "train")
    enc_name = next(n for n, m in model.named_modules() if m is model.encoder)
    head_name = next(n for n, m in model.named_modules() if m is model.head)
    enc_params = {f"{enc_name}.{n}": p for n, p in model.encoder.named_parameters()}
    return model, t, head_name, enc_params


def test_simulated_attack_matches_an_sgd_reference_and_leaves_the_model_alone():
    import copy

    from domainlock.models import reinitialize

    model, t, head_name, enc_params = _sim_setup()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(steps=3, lr=0.01, head_lr=0.05, shots=24, batch_size=8, cap=100.0, seed=5, dev=torch.device("cpu"))
    grads, loss = simulated_attack_grads(model, head_name, enc_params, t.x, t.y, g=torch.Generator().manual_seed(1),
                                         **kw)
    for k, v in model.state_dict().items():          # weights and BN statistics untouched
        assert torch.equal(v, state[k]), k

    # independent reference: a deep copy with a fresh head, torch's own Nesterov SGD, the same samples
    ref = copy.deepcopy(model)
    ref.head = reinitialize(copy.deepcopy(model.head), 5)
    opt = torch.optim.SGD([{"params": ref.encoder.parameters(), "lr": 0.01},
                           {"params": ref.head.parameters(), "lr": 0.05}],
                          momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(len(t.y), generator=g)
    train_idx, query_idx = perm[:24], perm[24:24 + 64]
    for _ in range(3):
        idx = train_idx[torch.randint(24, (8,), generator=g)]
        opt.zero_grad()
        nn.functional.cross_entropy(ref(t.x[idx]), t.y[idx]).backward()
        opt.step()
    opt.zero_grad()
    after = nn.functional.cross_entropy(ref(t.x[query_idx]), t.y[query_idx])
    after.backward()
    assert loss == pytest.approx(float(after.detach()), rel=1e-4)
    for gr, p in zip(grads, ref.encoder.parameters(), strict=True):
        assert torch.allclose(gr, p.grad, atol=1e-5, rtol=1e-3)


def test_simulated_attack_gradient_vanishes_where_the_cap_binds():
    model, t, head_name, enc_params = _sim_setup()
    grads, loss = simulated_attack_grads(model, head_name, enc_params, t.x, t.y, steps=2, lr=0.01, head_lr=0.05,
                                         shots=24, batch_size=8, cap=1e-3, g=torch.Generator().manual_seed(0),
                                         seed=0, dev=torch.device("cpu"))
    assert loss == pytest.approx(1e-3) and all(float(gr.abs().max()) == 0.0 for gr in grads)


def test_ntp_with_the_simulated_attack_logs_it_and_still_prunes():
    model = tiny_model()
    s, t = toy("src", "train"), toy("tgt", "train")
    _, info = ntp_prune(model, s.x, s.y, t.x, t.y, fast(sim_weight=1.0, sim_steps=2, sim_shots=16), ctx(),
                        num_classes=C)
    assert all(0.0 < h["mean_sim_ce"] <= math.log(C) + 1e-6 for h in info["history"])
    assert info["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_simulated_attack_every_n_steps_reuses_its_gradient_in_between(monkeypatch):
    # a stand-in attack whose gradient does not depend on the weights: running it every 3rd W-step and
    # applying its last gradient in between must then train exactly like running it on every W-step
    import domainlock.methods.ntp.admm as admm

    calls = []

    def fake(model, head_name, enc_params, *a, **kw):
        calls.append(kw["seed"])
        return [torch.full_like(p, 0.01) for p in enc_params.values()], 0.5

    monkeypatch.setattr(admm, "simulated_attack_grads", fake)
    s, t = toy("src", "train"), toy("tgt", "train")
    out = {}
    for every in (1, 3):
        calls.clear()
        model = tiny_model()
        ntp_prune(model, s.x, s.y, t.x, t.y, fast(iterations=2, steps_per_iter=6, sim_every=every), ctx(),
                  num_classes=C)
        out[every] = (len(calls), {k: v.clone() for k, v in model.state_dict().items()})
    assert out[1][0] == 12 and out[3][0] == 4
    for k, v in out[1][1].items():
        assert torch.equal(v, out[3][1][k]), k
