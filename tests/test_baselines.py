"""The baselines (NTL, CUTI-domain, magnitude pruning): the loss and the re-styling on hand-made tensors,
the training-only hooks, what each variant reads (target for evaluation only), bad input, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from domainlock.errors import DomainlockError
from domainlock.masking.pruning import magnitude_masks
from domainlock.methods import DataAccess, DataAccessError, get_method, method_names, protect
from domainlock.methods.baselines.cuti import (
    CUTIConfig,
    CUTIRestyle,
    instance_stats,
    restyle,
    restyle_points,
    restyling,
)
from domainlock.methods.baselines.magnitude import MagnitudeConfig
from domainlock.methods.baselines.nontransfer import nt_loss
from domainlock.methods.baselines.ntl import NTLConfig
from domainlock.models import build_model
from toys import C, Loader, tiny_model, toy

NO_TARGET_TRAINING = (("tgt", "train"), ("tgt", "val"))


FAST = {"steps": 3, "batch_size": 8, "val_size": 8, "neighbour_pool": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


def run(method: str, hp, target: str | None = "tgt", loader: Loader | None = None, model=None):
    return protect(model or tiny_model(), method, source="src", target=target, hparams=hp,
                   loader=loader or Loader(), device="cpu", progress=False)


# ----------------------------------------------------------------------------------- the loss, by hand


def test_nt_loss_on_hand_made_logits():
    ls, ys = torch.zeros(1, 2), torch.tensor([0])
    lo = torch.zeros(1, 2, requires_grad=True)
    yo = torch.tensor([1])
    r = nt_loss(ls, ys, lo, yo, alpha=0.1, beta=1.0, mmd_value=torch.tensor(2.0))
    f = r.floats()
    assert f["source_ce"] == pytest.approx(math.log(2)) and f["mmd"] == 2.0
    assert f["term"] == pytest.approx(0.1 * math.log(2) * 2)            # below the cap
    assert f["total"] == pytest.approx(math.log(2) - 0.2 * math.log(2))
    r = nt_loss(ls, ys, lo, yo, alpha=10.0, beta=1.0)                     # CUTI form, capped
    assert r.floats()["term"] == 1.0 and r.mmd is None
    r.total.backward()
    assert torch.count_nonzero(lo.grad) == 0                              # past the cap: no push


# ------------------------------------------------------------------------------ the re-styling, by hand


def test_restyle_hand_made_values():
    h = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)            # mean 2, std 1 -> normalized [-1, 1]
    out = restyle(h, torch.tensor(10.0).view(1, 1, 1, 1), torch.tensor(2.0).view(1, 1, 1, 1), eps=0.0)
    assert out.flatten().tolist() == pytest.approx([8.0, 12.0])


def test_restyle_gives_exactly_the_donor_statistics_and_keeps_the_pattern():
    g = torch.Generator().manual_seed(0)
    content = torch.randn(2, 3, 4, 5, generator=g) * 3 + 1
    d_mean = torch.tensor([[0.5, -2.0, 4.0], [1.0, 0.0, -1.0]]).view(2, 3, 1, 1)
    d_std = torch.tensor([[0.1, 2.0, 5.0], [1.0, 3.0, 0.5]]).view(2, 3, 1, 1)
    out = restyle(content, d_mean, d_std, eps=0.0)
    mu, sd = instance_stats(out, eps=0.0)
    assert torch.allclose(mu, d_mean, atol=1e-5) and torch.allclose(sd, d_std, atol=1e-5)
    mu_c, sd_c = instance_stats(content, eps=0.0)
    assert torch.allclose((out - mu) / sd, (content - mu_c) / sd_c, atol=1e-4)


def test_restyle_module_source_style_takes_the_paired_source_row():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(4, 2, 3, 3, generator=g)
    h[1] = h[1] * 4 + 2
    m = CUTIRestyle("source", eps=0.0)
    m.set_rows(torch.tensor([2, 3]), torch.tensor([0, 1]))
    out = m(h)
    assert torch.equal(out[:2], h[:2])                                  # source rows untouched
    for row, donor in ((2, 0), (3, 1)):
        mu, sd = instance_stats(out[row:row + 1], eps=0.0)
        mu_d, sd_d = instance_stats(h[donor:donor + 1], eps=0.0)
        assert torch.allclose(mu, mu_d, atol=1e-5) and torch.allclose(sd, sd_d, atol=1e-5)
    m.eval()
    assert torch.equal(m(h), h)                                          # identity outside training
    m.train()
    m.set_rows(None)
    assert torch.equal(m(h), h)
    one_pixel = torch.randn(4, 2, 1, 1)
    m.set_rows(torch.tensor([2]), torch.tensor([0]))
    assert torch.equal(m(one_pixel), one_pixel)                          # no spatial statistics: left alone


def test_restyle_module_random_style_is_seeded_and_positive():
    h = torch.randn(4, 3, 4, 4)
    outs = []
    for _ in range(2):
        m = CUTIRestyle("random", eps=0.0, generator=torch.Generator().manual_seed(5))
        m.set_rows(torch.tensor([1, 3]))
        outs.append(m(h))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0][[0, 2]], h[[0, 2]])
    _, sd = instance_stats(outs[0][[1, 3]], eps=0.0)
    assert bool((sd > 0.04).all())
    with pytest.raises(DomainlockError, match="donor"):
        CUTIRestyle("source").set_rows(torch.tensor([1]))


def test_hooks_sit_after_each_block_and_are_removed():
    model = tiny_model()
    names = [n for n, _ in restyle_points(model)]
    assert names == ["encoder.4", "encoder.8", "encoder.12"]             # digitnet's three MaxPool2d
    x = toy("src", "train").x[:8]
    with torch.no_grad():
        plain = model(x)
    m = CUTIRestyle("source")
    with restyling([mod for _, mod in restyle_points(model)], m):
        m.set_rows(torch.tensor([4, 5, 6, 7]), torch.tensor([0, 1, 2, 3]))
        with torch.no_grad():
            assert torch.equal(model(x), plain)                          # model in eval mode: hooks inert
            model.train()
            for mod in model.modules():
                if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
                    mod.eval()
            out = model(x)
            model.eval()
        assert torch.allclose(out[:4], plain[:4], atol=1e-6) and not torch.allclose(out[4:], plain[4:])
        assert m.calls == 3
    assert all(not mod._forward_hooks for mod in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), plain)
    with pytest.raises(DomainlockError, match="restyle_layers"):
        restyle_points(model, "nothing.*")
    assert [n for n, _ in restyle_points(model, "encoder.8")] == ["encoder.8"]


def test_auto_points_fall_back_to_sequential_stages():
    model = build_model("resnet18", num_classes=C, width=4)
    assert [n for n, _ in restyle_points(model)] == ["encoder.4", "encoder.5", "encoder.6", "encoder.7"]


# ----------------------------------------------------------------------- what each variant reads


def test_data_access_refuses_target_with_the_given_reason():
    loader = Loader()
    a = DataAccess("source-available", "src", "tgt", loader=loader, target_refusal="variant 'x' reads none")
    with pytest.raises(DataAccessError, match="variant 'x' reads none"):
        a.target("train")
    a.source("train")
    assert loader.calls == [("src", "train")] and not a.target_allowed


@pytest.mark.parametrize("method, hp", [
    ("ntl", NTLConfig(variant="source-only", **FAST)),
    ("cuti", CUTIConfig(variant="target-free", **FAST)),
    ("magnitude", MagnitudeConfig(finetune_epochs=1, batch_size=16)),
])
def test_no_target_variants_never_load_target_training_data(method, hp):
    loader = Loader(forbid=NO_TARGET_TRAINING)
    res = run(method, hp, loader=loader)
    assert [c for c in loader.calls if c[0] == "tgt"] == [("tgt", "test")]   # protect()'s evaluation only
    prot = res.card["protection"]
    assert prot["target_use"] == "evaluation only"
    assert all(r.startswith("source:") for r in prot["data_read"]) and prot["data_read"]
    assert prot["st_d"] is not None and set(prot["accuracy_test"]) == {"src", "tgt"}
    # no --target needed for them
    res = run(method, hp, target=None, loader=Loader(forbid=NO_TARGET_TRAINING))
    assert res.card["protection"]["target_use"] is None


def test_a_no_target_method_that_tries_anyway_is_refused(monkeypatch):
    from domainlock.methods.baselines import ntl

    def sneaky(access, hp, ctx, src, target_variant):
        return access.target("train")

    monkeypatch.setattr(ntl, "other_data", sneaky)
    loader = Loader()
    with pytest.raises(DataAccessError, match="evaluation only"):
        run("ntl", NTLConfig(variant="source-only", **FAST), loader=loader)
    assert ("tgt", "train") not in loader.calls


@pytest.mark.parametrize("method, hp", [("ntl", NTLConfig(**FAST)), ("cuti", CUTIConfig(**FAST))])
def test_target_variants_read_target_and_need_it(method, hp):
    res = run(method, hp)
    prot = res.card["protection"]
    assert "target:tgt:train" in prot["data_read"] and prot["target_use"] == "method and evaluation"
    assert prot["info"]["used_target_labels"] is True
    with pytest.raises(DomainlockError, match="needs --target"):
        run(method, hp, target=None)


# ------------------------------------------------------------------------------- the protected models


def test_cuti_exports_a_plain_classifier_of_the_same_class():
    src = tiny_model()
    res = run("cuti", CUTIConfig(**FAST), model=src)
    m = res.model
    assert type(m) is type(src) and set(m.state_dict()) == set(src.state_dict())
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    assert not any(isinstance(mod, CUTIRestyle) for mod in m.modules())
    info = res.card["protection"]["info"]
    assert info["restyle_calls"] == 3 * FAST["steps"] and info["style"] == "source"
    assert info["restyle_layers"] == ["encoder.4", "encoder.8", "encoder.12"]
    assert run("cuti", CUTIConfig(variant="target-free", **FAST)).card["protection"]["info"]["style"] == "random"


@pytest.mark.parametrize("method, cfg", [("ntl", NTLConfig), ("cuti", CUTIConfig)])
def test_fine_tuning_changes_weights_but_not_bn_statistics(method, cfg):
    src = tiny_model()
    with torch.no_grad():
        for mod in src.modules():
            if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.2, 0.2)
    res = run(method, cfg(**FAST), model=src)
    before, after = src.state_dict(), res.model.state_dict()
    stats = [k for k in before if "running" in k]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)      # bn="frozen"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    assert res.card["protection"]["info"]["steps"] == FAST["steps"]


def test_zero_steps_returns_the_source_model():
    src = tiny_model()
    res = run("ntl", NTLConfig(**{**FAST, "steps": 0}), model=src)
    x = toy("src", "test").x
    with torch.no_grad():
        assert torch.equal(res.model(x), src(x))


@pytest.mark.parametrize("epochs", [0, 1])
def test_magnitude_prunes_to_the_sparsity_and_keeps_pruned_weights_zero(epochs):
    src = tiny_model()
    masks = magnitude_masks(src, 0.6)
    res = run("magnitude", MagnitudeConfig(sparsity=0.6, finetune_epochs=epochs, batch_size=16), model=src)
    assert res.card["protection"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    mods = dict(res.model.named_modules())
    for name, keep in masks.items():
        assert torch.count_nonzero(mods[name].weight.detach()[~keep]) == 0
    assert all(not (mod.weight._backward_hooks or {}) for mod in mods.values()    # FixedMask hooks removed
               if isinstance(mod, nn.Conv2d | nn.Linear))


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("method, kw, match", [
    ("ntl", {"alpha": 0.0}, "alpha=0.0"), ("ntl", {"alpha": -1.0}, "alpha=-1.0"),
    ("ntl", {"alpha": float("nan")}, "alpha=nan"), ("ntl", {"beta": 0.0}, "beta=0.0"),
    ("ntl", {"variant": "target-free"}, "unknown variant 'target-free'; valid choices: source-only, target"),
    ("ntl", {"steps": -1}, "steps=-1"), ("ntl", {"batch_size": 1}, "batch_size=1"), ("ntl", {"lr": 0.0}, "lr=0.0"),
    ("ntl", {"mmd_kernels": 0}, "mmd_kernels=0"), ("ntl", {"mmd_mul": 1.0}, "mmd_mul=1.0"),
    ("ntl", {"mmd_bandwidth": -1.0}, "mmd_bandwidth=-1.0"), ("ntl", {"mmd_heuristic": "mode"}, "mode"),
    ("ntl", {"bn": "sometimes"}, "sometimes"), ("ntl", {"neighbour_strength": 0.0}, "neighbour_strength=0.0"),
    ("ntl", {"neighbour_families": "plaid"}, "plaid"),
    ("ntl", {"variant": "source-only", "target_size": 500}, "target_size=500 selects target images"),
    ("cuti", {"variant": "source-only"}, "unknown variant 'source-only'; valid choices: target, target-free"),
    ("cuti", {"cuti_share": 1.5}, "cuti_share=1.5"), ("cuti", {"style": "plaid"}, "plaid"),
    ("cuti", {"beta": -2.0}, "beta=-2.0"),
    ("cuti", {"variant": "target-free", "target_size": 10}, "target_size=10 selects target images"),
    ("magnitude", {"sparsity": 0.0}, r"sparsity=0.0 is out of range; valid: \(0.0, 1.0\)"),
    ("magnitude", {"sparsity": 1.0}, "sparsity=1.0"), ("magnitude", {"sparsity": 1.5}, "sparsity=1.5"),
    ("magnitude", {"sparsity": -0.1}, "sparsity=-0.1"), ("magnitude", {"scope": "row"}, "row"),
    ("magnitude", {"finetune_epochs": -1}, "finetune_epochs=-1"), ("magnitude", {"lr": 0.0}, "lr=0.0"),
])
def test_bad_hyperparameters_fail_in_one_line_before_any_read(method, kw, match):
    loader = Loader()
    hp = get_method(method).Hparams(**kw)
    with pytest.raises(DomainlockError, match=match) as ei:
        run(method, hp, loader=loader)
    assert "\n" not in str(ei.value) and loader.calls == []


def test_magnitude_prefix_must_name_layers():
    with pytest.raises(DomainlockError, match="prefix='nowhere'"):
        run("magnitude", MagnitudeConfig(prefix="nowhere", finetune_epochs=0))


# ------------------------------------------------------------------------------ registry and the CLI


def test_methods_are_registered_source_available():
    assert {"ntl", "cuti", "magnitude"} <= set(method_names())
    for name in ("ntl", "cuti", "magnitude"):
        assert get_method(name).settings == ("source-available",)
    with pytest.raises(DomainlockError, match="does not support setting"):
        protect(tiny_model(), "ntl", source="src", target="tgt", setting="source-free", loader=Loader(),
                device="cpu", progress=False)


@pytest.mark.parametrize("method, flags", [
    ("ntl", ["--variant", "--alpha", "--beta", "--mmd-kernels", "source-only"]),
    ("cuti", ["--variant", "--style", "--cuti-share", "--restyle-layers", "target-free"]),
    ("magnitude", ["--sparsity", "--finetune-epochs", "--scope"]),
])
def test_cli_turns_every_field_into_a_flag(method, flags, capsys):
    from domainlock.cli.main import main

    with pytest.raises(SystemExit):
        main(["protect", "--method", method, "--help"])
    out = capsys.readouterr().out
    for f in flags:
        assert f in out


def test_cli_source_only_without_target_data_end_to_end(tmp_path, capsys, data_root):
    from domainlock.artifact import save_artifact
    from domainlock.cli.main import main

    art = tmp_path / "src"
    torch.manual_seed(0)
    save_artifact(art, build_model("digitnet", width=4, feat_dim=16), {"domain": "uci-digits", "seed": 0})
    out = tmp_path / "prot"
    rc = main(["protect", "--method", "ntl", "--variant", "source-only", "--model", str(art), "--source",
               "uci-digits", "--target", "mnist", "--steps", "2", "--batch-size", "8", "--neighbour-pool", "16",
               "--val-size", "8", "--out", str(out), "--device", "cpu", "-q", "--data-root", str(data_root)])
    text, err = capsys.readouterr()
    assert rc == 0, err
    assert "target mnist: used for evaluation only" in text
    card = json.loads((out / "card.json").read_text())
    assert card["protection"]["target_use"] == "evaluation only"
    assert card["protection"]["data_read"] == ["source:uci-digits:train", "source:uci-digits:val"]
    assert card["protection"]["hparams"]["variant"] == "source-only"

