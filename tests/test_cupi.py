"""CUPI-domain: the style statistics, the generator and the fusion, the memory banks and the loss on hand-made
tensors; the training-only hooks and the plain classifier returned; what each variant reads; the reference
preset; bad input in one line (API and CLI)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from domainlock.errors import DomainlockError
from domainlock.methods import get_method, method_names, protect
from domainlock.methods.baselines.cupi import CUPI, REFERENCE, CUPIConfig
from domainlock.methods.baselines.cupi.loop import anchor_count
from domainlock.methods.baselines.cupi.pyramid import (
    ClassMemory,
    CUPIBanks,
    PyramidFusion,
    class_means,
    conv_style,
    cupi_loss,
    kappa_at,
    mix_style,
    style_distance,
)
from domainlock.methods.baselines.cuti import instance_stats, restyle, restyle_points, restyling
from toys import Loader, tiny_model, toy

NO_TARGET_TRAINING = (("tgt", "train"), ("tgt", "val"))
FAST = {"steps": 3, "batch_size": 8, "val_size": 8, "neighbour_pool": 16}
LN3 = math.log(3.0)

pytestmark = pytest.mark.usefixtures("one_thread")


def run(hp, target: str | None = "tgt", loader: Loader | None = None, model=None):
    return protect(model or tiny_model(), "cupi", source="src", target=target, hparams=hp,
                   loader=loader or Loader(), device="cpu", progress=False)


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ------------------------------------------------------------------------ style statistics, by hand


H = t([[[1.0, 3.0]], [[0.0, 4.0]]], [[[5.0, 5.0]], [[-1.0, 1.0]]])   # [2 instances, 2 channels, 1, 2]


def test_instance_statistics_by_hand():
    mu, sd = instance_stats(H, eps=0.0)
    assert mu.shape == (2, 2, 1, 1)
    assert mu.flatten(1).tolist() == [[2.0, 2.0], [5.0, 0.0]]
    assert sd.flatten(1).tolist() == [[1.0, 2.0], [0.0, 1.0]]          # biased std over the spatial positions


def test_class_statistics_by_hand():
    mu = t([2.0, 2.0], [5.0, 0.0], [4.0, 6.0]).view(3, 2, 1, 1)          # per-instance channel means
    sd = t([1.0, 2.0], [0.0, 1.0], [3.0, 0.0]).view(3, 2, 1, 1)
    y = torch.tensor([0, 1, 0])
    means, counts = class_means(mu, y, 3)
    assert means.tolist() == [[3.0, 4.0], [5.0, 0.0], [0.0, 0.0]] and counts.tolist() == [2, 1, 0]
    stds, _ = class_means(sd, y, 3)
    assert stds.tolist() == [[2.0, 1.0], [0.0, 1.0], [0.0, 0.0]]


# ------------------------------------------------------------------------ generator and fusion, by hand


def test_conv_generator_mixes_channels_through_a_sigmoid():
    mu_s, sd_s = t(1.0, 2.0).view(1, 2, 1, 1), t(1.0, 1.0).view(1, 2, 1, 1)
    w_mu = t([LN3, 0.0], [-LN3, LN3 / 2])                                # W mu_s = [ln 3, 0]
    mu_f, sd_f = conv_style(mu_s, sd_s, w_mu, torch.zeros(2, 2))
    assert mu_f.flatten().tolist() == pytest.approx([0.75, 0.5]) and sd_f.flatten().tolist() == [0.5, 0.5]
    fused = restyle(H[:1], mu_f, sd_f, eps=0.0)                          # content: both channels normalize to [-1, 1]
    assert fused.flatten(1).tolist() == [pytest.approx([0.25, 1.25, 0.0, 1.0])]


def test_mix_generator_interpolates_the_two_anchors():
    mu_f, sd_f = mix_style(t(1.0, 2.0), t(1.0, 1.0), t(3.0, -2.0), t(3.0, 5.0), torch.tensor(0.25))
    assert mu_f.tolist() == [2.5, -1.0] and sd_f.tolist() == [2.5, 4.0]


def conv_draws(seed: int, c: int, calls: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(2, c, c, generator=g) * 2 - 1) * c ** -0.5 for _ in range(calls)]


def test_fusion_module_fuses_only_the_chosen_rows_and_records_statistics():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(5, 3, 4, 4, generator=g) * 2 + 1
    fusion = PyramidFusion("conv", eps=0.0, rng=torch.Generator().manual_seed(9))
    fusion.set_rows(torch.tensor([3, 4]), torch.tensor([0, 1]), n_stats=3)
    out = fusion(h)
    assert torch.equal(out[:3], h[:3])                                    # source and other rows untouched
    (w,) = conv_draws(9, 3, 1)
    mu, sd = instance_stats(h, eps=0.0)
    mu_f, sd_f = conv_style(mu[[0, 1]], sd[[0, 1]], w[0], w[1])
    mu_o, sd_o = instance_stats(out[3:], eps=0.0)
    assert torch.allclose(mu_o, mu_f, atol=1e-5) and torch.allclose(sd_o, sd_f, atol=1e-5)
    assert bool(((mu_o > 0) & (mu_o < 1) & (sd_o > 0) & (sd_o < 1)).all())   # sigmoid range
    assert torch.allclose((out[3:] - mu_o) / sd_o, (h[3:] - mu[3:]) / sd[3:], atol=1e-4)   # content kept
    assert len(fusion.levels) == 1 and torch.equal(fusion.levels[0][0], mu[:3])
    fusion.eval()
    assert torch.equal(fusion(h), h)
    fusion.train()
    assert torch.equal(fusion(h[:, :, :1, :1]), h[:, :, :1, :1])          # no spatial statistics: left alone
    fusion.set_rows(None)
    assert torch.equal(fusion(h), h) and fusion.levels == []
    with pytest.raises(DomainlockError, match="donor"):
        fusion.set_rows(torch.tensor([3]))


def test_mix_fusion_uses_the_row_own_style_and_the_donor_style():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(2, 2, 3, 3, generator=g)
    fusion = PyramidFusion("mix", eps=0.0, rng=torch.Generator().manual_seed(2))
    fusion.set_rows(torch.tensor([1]), torch.tensor([0]))
    out = fusion(h)
    lam = torch.rand(1, 1, 1, 1, generator=torch.Generator().manual_seed(2))
    mu, sd = instance_stats(h, eps=0.0)
    mu_o, sd_o = instance_stats(out[1:], eps=0.0)
    assert torch.allclose(mu_o, lam * mu[:1] + (1 - lam) * mu[1:], atol=1e-5)
    assert torch.allclose(sd_o, lam * sd[:1] + (1 - lam) * sd[1:], atol=1e-5)
    assert fusion.levels == []                                             # n_stats = 0: nothing recorded


def test_fusion_is_a_pyramid_over_the_hooked_blocks():
    model = tiny_model()
    points = [m for _, m in restyle_points(model)]
    x = toy("src", "train").x[:6]
    fusion = PyramidFusion("conv", rng=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(x)
    with restyling(points, fusion):
        fusion.set_rows(torch.tensor([4, 5]), torch.tensor([0, 1]), n_stats=4)
        model.train()
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
                mod.eval()
        with torch.no_grad():
            out = model(x)
        model.eval()
        assert fusion.calls == 3 and [m.shape for m, _ in fusion.levels] == [(4, 4, 1, 1), (4, 8, 1, 1),
                                                                              (4, 16, 1, 1)]
        assert torch.allclose(out[:4], plain[:4], atol=1e-6) and not torch.allclose(out[4:], plain[4:])
    assert all(not mod._forward_hooks for mod in model.modules())


# ------------------------------------------------------------------------------- memory banks, by hand


def test_memory_bank_running_mean_then_ema_by_hand():
    bank = ClassMemory(3, 2, momentum=0.5)
    bank.update(t([1.0, 2.0], [3.0, 4.0], [5.0, 6.0]), torch.tensor([0, 0, 2]))
    assert bank.values.tolist() == [[2.0, 3.0], [0.0, 0.0], [5.0, 6.0]]   # first sighting: the class mean
    assert bank.seen.tolist() == [True, False, True]
    bank.update(t([4.0, 5.0]), torch.tensor([0]))                          # rate max(0.5, 1/2)
    assert bank.values.tolist() == [[3.0, 4.0], [0.0, 0.0], [5.0, 6.0]]
    bank.update(t([7.0, 8.0]), torch.tensor([0]))                          # rate max(0.5, 1/3) = 0.5
    assert bank.values.tolist() == [[5.0, 6.0], [0.0, 0.0], [5.0, 6.0]]
    slow = ClassMemory(1, 1, momentum=0.1)
    for v, want in [(2.0, 2.0), (4.0, 3.0), (6.0, 4.0)]:                    # running mean while 1/u > m
        slow.update(t([v]), torch.tensor([0]))
        assert slow.values.item() == pytest.approx(want)
    for _ in range(7):
        slow.update(t([4.0]), torch.tensor([0]))
    assert slow.updates.item() == 10 and slow.values.item() == pytest.approx(4.0)
    slow.update(t([15.0]), torch.tensor([0]))                               # u = 11: rate = momentum 0.1
    assert slow.values.item() == pytest.approx(4.0 + 0.1 * 11.0)


def test_memory_bank_mse_skips_unseen_classes():
    bank = ClassMemory(3, 2, momentum=0.5)
    bank.update(t([5.0, 6.0], [5.0, 6.0]), torch.tensor([0, 2]))
    v = t([5.0, 8.0], [100.0, 100.0], [6.0, 6.0]).requires_grad_()
    assert bank.mse(v, torch.tensor([0, 1, 2])).item() == pytest.approx((4.0 + 1.0) / 4)
    empty = bank.mse(v, torch.tensor([1, 1, 1]))
    assert empty.item() == 0.0 and empty.requires_grad


# -------------------------------------------------------------------------------- the losses, by hand


def test_style_loss_sums_mean_squared_errors_over_levels():
    y_s = torch.tensor([0, 1])
    banks = [ClassMemory(2, 1, 0.5), ClassMemory(2, 2, 0.5)]
    banks[0].update(t([1.0], [3.0]), y_s)
    banks[1].update(t([0.0, 0.0], [2.0, -2.0]), y_s)
    stats = [t([2.0]).view(1, 1, 1, 1), t([4.0, 0.0]).view(1, 2, 1, 1)]  # one other row of class 1
    got = style_distance(banks, stats, torch.tensor([1]))
    assert got.item() == pytest.approx((2.0 - 3.0) ** 2 + ((4.0 - 2.0) ** 2 + (0.0 + 2.0) ** 2) / 2)
    with pytest.raises(DomainlockError, match="levels"):
        style_distance(banks, stats[:1], torch.tensor([1]))


def test_cupi_loss_by_hand_with_signs_and_caps():
    banks = CUPIBanks.create(2, 2, [1], momentum=0.5)
    banks.update(t([1.0, 0.0], [0.0, 1.0]), torch.tensor([0, 1]),           # F: class 0 [1, 0], class 1 [0, 1]
                 [(t([0.0], [1.0]).view(2, 1, 1, 1), t([0.0], [2.0]).view(2, 1, 1, 1))], torch.tensor([0, 1]))
    zeros = torch.zeros(1, 2)
    f_s = t([1.0, 2.0]).requires_grad_()
    f_o = t([0.0, 3.0]).requires_grad_()
    mu_o = t([3.0]).view(1, 1, 1, 1).requires_grad_()
    sd_o = t([2.5]).view(1, 1, 1, 1).requires_grad_()
    y0, y1 = torch.tensor([0]), torch.tensor([1])
    r = cupi_loss(zeros, y0, zeros, y1, zeros, y1, f_s, f_o, [(mu_o, sd_o)], banks, alpha=0.1, beta=1.0, kappa=0.4)
    f = r.floats()
    ln2 = math.log(2)
    assert f["source_ce"] == pytest.approx(ln2) and f["cupi_ce"] == pytest.approx(ln2)
    assert f["d_source"] == 2.0 and f["d_other"] == 2.0 and f["style_mean"] == 4.0 and f["style_std"] == 0.25
    # ln2 - 0.1 ln2 - 0.1 ln2 - 0.4*2 + 0.4*2 - min(1, 0.4*4) - 0.4*0.25
    assert f["total"] == pytest.approx(0.8 * ln2 - 1.0 - 0.1)
    r.total.backward()
    assert f_o.grad.flatten().tolist() == pytest.approx([0.0, 0.8])             # descent pulls g(x_o) onto F[1]
    assert f_s.grad.flatten().tolist() == pytest.approx([0.0, -0.8])            # descent pushes g(x_s) off F[0]
    assert mu_o.grad.item() == 0.0                                        # capped: no push left
    assert sd_o.grad.item() == pytest.approx(-0.4 * 2 * 0.5)             # style pushed away from Sd[1]


def test_kappa_ramp_and_anchor_count():
    assert kappa_at(10, 10, 2.0) == 2.0 and kappa_at(5, 10, 1.0) == pytest.approx(0.5 ** 0.9)
    assert kappa_at(1, 100, 1.0) == pytest.approx(0.01 ** 0.9)
    assert anchor_count(0.5, 64) == 32 and anchor_count(1.0, 8) == 8 and anchor_count(0.01, 8) == 1


# --------------------------------------------------------------------- the method under the contract


def test_exports_a_plain_classifier_of_the_same_class_with_no_hooks():
    src = tiny_model()
    res = run(CUPIConfig(**FAST), model=src)
    m = res.model
    assert type(m) is type(src) and set(m.state_dict()) == set(src.state_dict())
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    assert not any(isinstance(mod, PyramidFusion) for mod in m.modules())
    info = res.card["protection"]["info"]
    assert info["fusion_calls"] == 3 * FAST["steps"] and info["anchors_per_step"] == 4
    assert info["pyramid_layers"] == ["encoder.4", "encoder.8", "encoder.12"]
    assert set(info["final_losses"]) == {"total", "source_ce", "cupi_ce", "other_ce", "d_source", "d_other",
                                         "style_mean", "style_std"}
    assert res.card["protection"]["method"] == "cupi"


def test_fine_tuning_changes_weights_but_not_bn_statistics():
    src = tiny_model()
    with torch.no_grad():
        for mod in src.modules():
            if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.2, 0.2)
    res = run(CUPIConfig(**FAST), model=src)
    before, after = src.state_dict(), res.model.state_dict()
    stats = [k for k in before if "running" in k]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))


def test_target_free_never_loads_target_training_data():
    loader = Loader(forbid=NO_TARGET_TRAINING)
    res = run(CUPIConfig(variant="target-free", **FAST), loader=loader)
    assert [c for c in loader.calls if c[0] == "tgt"] == [("tgt", "test")]   # protect()'s evaluation only
    prot = res.card["protection"]
    assert prot["target_use"] == "evaluation only" and prot["info"]["used_target_labels"] is False
    assert prot["data_read"] == ["source:src:train", "source:src:val"]
    res = run(CUPIConfig(variant="target-free", **FAST), target=None, loader=Loader(forbid=NO_TARGET_TRAINING))
    assert res.card["protection"]["target_use"] is None


def test_target_variant_reads_target_and_needs_it():
    prot = run(CUPIConfig(**FAST)).card["protection"]
    assert "target:tgt:train" in prot["data_read"] and prot["target_use"] == "method and evaluation"
    assert prot["info"]["used_target_labels"] is True
    with pytest.raises(DomainlockError, match="needs --target"):
        run(CUPIConfig(**FAST), target=None)


def test_reference_preset_and_registration():
    assert "cupi" in method_names() and get_method("cupi").settings == ("source-available",)
    hp = CUPI.make_hparams("reference")
    assert {k: getattr(hp, k) for k in REFERENCE} == REFERENCE
    assert hp.alpha == 0.1 and hp.beta == 1.0 and hp.batch_size == 32 and hp.cupi_share == 1.0
    hp = CUPI.make_hparams("reference", steps=2, val_size=8)
    res = run(hp)
    assert res.card["protection"]["hparams"]["lr_decay"] == 0.999
    assert res.card["protection"]["info"]["anchors_per_step"] == 32          # equal thirds


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kw, match", [
    ({"cupi_share": 0.0}, r"cupi_share=0.0 is out of range; valid: \(0.0, 1.0\]"), ({"cupi_share": 1.5}, "1.5"),
    ({"generator": "plaid"}, "unknown generator 'plaid'; valid choices: conv, mix"),
    ({"kappa": -1.0}, "kappa=-1.0"), ({"kappa": float("nan")}, "kappa=nan"),
    ({"momentum": 0.0}, "momentum=0.0"), ({"momentum": 1.5}, "momentum=1.5"),
    ({"lr_decay": 0.0}, "lr_decay=0.0"), ({"lr_decay": 2.0}, "lr_decay=2.0"),
    ({"variant": "source-only"}, "unknown variant 'source-only'; valid choices: target, target-free"),
    ({"variant": "target-free", "target_size": 10}, "target_size=10 selects target images"),
    ({"beta": 0.0}, "beta=0.0"), ({"steps": -1}, "steps=-1"), ({"batch_size": 1}, "batch_size=1"),
])
def test_bad_hyperparameters_fail_in_one_line_before_any_read(kw, match):
    loader = Loader()
    with pytest.raises(DomainlockError, match=match) as ei:
        run(CUPIConfig(**kw), loader=loader)
    assert "\n" not in str(ei.value) and loader.calls == []


def test_pyramid_layers_that_match_nothing_fail_before_training_data_are_read():
    loader = Loader()
    with pytest.raises(DomainlockError, match=r"^pyramid_layers='nothing\.\*' matches no encoder module") as ei:
        run(CUPIConfig(pyramid_layers="nothing.*"), loader=loader)
    assert "\n" not in str(ei.value) and all(split == "test" for _, split in loader.calls)   # evaluation only
    assert run(CUPIConfig(pyramid_layers="encoder.8", **FAST)).card["protection"]["info"]["fusion_calls"] == 3


def test_cli_lists_every_field_and_refuses_bad_values_in_one_line(tmp_path, capsys):
    from domainlock.artifact import save_artifact
    from domainlock.cli.main import main

    with pytest.raises(SystemExit):
        main(["protect", "--method", "cupi", "--help"])
    out = capsys.readouterr().out
    for flag in ("--variant", "--cupi-share", "--generator", "--kappa", "--momentum", "--lr-decay",
                 "--pyramid-layers", "target-free"):
        assert flag in out
    art = save_artifact(tmp_path / "m", tiny_model(), {"domain": "mnist"})
    cases = [(["--cupi-share", "0"], "cupi_share=0.0 is out of range"),
             (["--momentum", "2"], "momentum=2.0 is out of range"),
             (["--variant", "target-free", "--target-size", "5"], "target_size=5 selects target images"),
             (["--preset", "paper"], "unknown preset of method 'cupi' 'paper'"),
             (["--generator", "plaid"], "invalid choice: 'plaid'")]
    for argv, message in cases:
        try:
            rc = main(["protect", "--method", "cupi", "--model", str(art), "--source", "mnist", "--target", "syn",
                       *argv, "--out", str(tmp_path / "out"), "--device", "cpu", "-q"])
        except SystemExit as e:    # argparse's own usage errors
            rc = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], (argv, err)
        assert not (tmp_path / "out").exists()
