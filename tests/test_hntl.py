"""H-NTL: the variational terms and the dependence measure on hand-computed values, the disentanglement on a
toy where content predicts the label and style does not (and what happens without the disentangling
terms), the dual-path teacher selection and distillation loss on hand-made tensors, the protect() contract
of both variants, presets, bad input in one line (API and CLI)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from domainlock.data import DomainData
from domainlock.errors import DomainlockError, UnknownChoiceError
from domainlock.methods import DataAccessError, get_method, protect
from domainlock.methods.baselines.hntl import HNTL, REFERENCE, HNTLConfig
from domainlock.methods.baselines.hntl.disentangle import (
    DisentangleSpec,
    dependence,
    gaussian_kl,
    grouped_dependence,
    path_accuracies,
    reparameterize,
    train_disentangle,
)
from domainlock.methods.baselines.hntl.distill import distill, dual_path_targets, hntl_loss
from toys import C, Loader, tiny_model, toy

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"steps": 3, "batch_size": 8, "disent_steps": 5, "disent_batch_size": 16, "val_size": 8,
        "neighbour_pool": 16, "hidden_dim": 16}
NO_TARGET_TRAINING = (("tgt", "train"), ("tgt", "val"))


def run(hp, target: str | None = "tgt", loader=None, model=None, **kw):
    return protect(model or tiny_model(), "hntl", source="src", target=target, hparams=hp,
                   loader=loader or Loader(), device="cpu", progress=False, **kw)


# ------------------------------------------------------------------------- variational terms, by hand


def test_gaussian_kl_hand_values():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    # row 0: 1/2 (1 + 1 - 1 - 0) + 1/2 (0 + 4 - 1 - log 4); row 1 is the prior itself: 0
    row0 = 0.5 + 0.5 * (3.0 - math.log(4.0))
    assert float(gaussian_kl(mu, logvar)) == pytest.approx(row0 / 2, rel=1e-6)
    assert float(gaussian_kl(mu[1:], logvar[1:])) == 0.0
    mu.requires_grad_(True)
    gaussian_kl(mu, logvar).backward()
    assert torch.allclose(mu.grad, torch.tensor([[0.5, 0.0], [0.0, 0.0]]))   # d/dmu = mu / n_rows


def test_reparameterization_hand_values_and_moments():
    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 2 * math.log(3.0)]])   # std 1 and 3
    z = reparameterize(mu, logvar, eps=torch.tensor([[0.5, -1.0]]))
    assert z[0].tolist() == pytest.approx([1.5, -5.0])
    z1 = reparameterize(mu, logvar, torch.Generator().manual_seed(3))
    z2 = reparameterize(mu, logvar, torch.Generator().manual_seed(3))
    eps = torch.randn((1, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(z1, z2) and torch.allclose(z1, mu + torch.tensor([[1.0, 3.0]]) * eps)
    many = reparameterize(mu.expand(20000, 2), logvar.expand(20000, 2), torch.Generator().manual_seed(0))
    assert many.mean(0).tolist() == pytest.approx([1.0, -2.0], abs=0.06)
    assert many.std(0).tolist() == pytest.approx([1.0, 3.0], rel=0.03)
    mu.requires_grad_(True)
    reparameterize(mu, logvar, eps=torch.ones(1, 2)).sum().backward()   # gradient passes through the sample
    assert mu.grad.tolist() == [[1.0, 1.0]]


def test_dependence_hand_values():
    # binary z: every kernel only sees "same z or not", so the centred kernels are 2 w w^T and 2 r r^T and
    # D = (w.r)^2 / (|w|^2 |r|^2) exactly
    z = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    assert float(dependence(z, torch.tensor([0, 1, 0, 1]), 2)) == pytest.approx(1.0, abs=1e-6)   # z = label
    assert float(dependence(z, torch.tensor([0, 0, 1, 1]), 2)) == pytest.approx(0.0, abs=1e-6)   # independent
    assert float(dependence(torch.tensor([[0.0], [5.0]]), torch.tensor([1, 0]), 2)) == pytest.approx(1.0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    zr = torch.randn(64, 3, generator=g)
    y = torch.arange(64) % 4
    assert float(dependence(zr * 7 + 2, y, 4)) == pytest.approx(float(dependence(zr, y, 4)), rel=1e-4)  # scale-free
    informative = zr + 3 * F.one_hot(y, 4)[:, :3].float()
    assert float(dependence(informative, y, 4)) > 3 * float(dependence(zr, y, 4))


def test_grouped_dependence_averages_within_groups():
    z = torch.tensor([[0.0], [1.0], [0.0], [1.0], [2.0], [3.0]])
    labels = torch.tensor([0, 1, 0, 1, 0, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])   # group 1 holds one label only: skipped
    assert float(grouped_dependence(z, labels, groups, 2)) == pytest.approx(1.0, abs=1e-6)
    # across the groups z would tell the group apart; within each group it says nothing about the label
    z2 = torch.tensor([[0.0], [0.0], [5.0], [5.0]])
    assert float(grouped_dependence(z2, torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]), 2)) == 0.0
    assert float(grouped_dependence(z2, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]), 2)) == 0.0


# --------------------------------------------------------------------------- the disentanglement toy


def _toy_features(n: int, domain: int, seed: int, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Content (2-D: the class on a circle) and style (2-D: the domain) plus weak noise, mixed by a rotation:
    the label depends on the content only, the domain on the style only."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    ang = y.float() * (2 * math.pi / C)
    content = 1.5 * torch.stack([ang.cos(), ang.sin()], 1) + 0.35 * torch.randn(n, 2, generator=g)
    style = torch.tensor([[1.5, -1.0]]) * (1 if domain else -1) + 0.35 * torch.randn(n, 2, generator=g)
    noise = 0.1 * torch.randn(n, 4, generator=g)
    return torch.cat([content, style, noise], 1) @ mix, y


def _probe(z, y, zt, yt, k: int, hidden: int = 0) -> float:
    """Held-out accuracy of a fresh probe (linear, or an MLP with ``hidden`` units) on standardized latents."""
    m, s = z.mean(0), z.std(0).clamp_min(1e-6)
    z, zt = (z - m) / s, (zt - m) / s
    torch.manual_seed(0)
    net = nn.Linear(z.shape[1], k) if not hidden else nn.Sequential(nn.Linear(z.shape[1], hidden), nn.ReLU(),
                                                                     nn.Linear(hidden, k))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(net(z), y).backward()
        opt.step()
    with torch.no_grad():
        return float((net(zt).argmax(1) == yt).float().mean())


@pytest.fixture(scope="module")
def toy_latents():
    """Stage 1 on the toy with and without the disentangling terms; probe accuracies on held-out latents."""
    mix, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))
    (xs, ys), (xo, yo) = _toy_features(512, 0, 1, mix), _toy_features(512, 1, 2, mix)
    (xs2, ys2), (xo2, yo2) = _toy_features(512, 0, 3, mix), _toy_features(512, 1, 4, mix)
    y, yt = torch.cat([ys, yo]), torch.cat([ys2, yo2])
    d = torch.cat([torch.zeros(512), torch.ones(512)]).long()
    out = {}
    for lam in (1.0, 0.0):
        spec = DisentangleSpec(steps=300, batch_size=64, lr=2e-3, latent_dim=4, hidden_dim=32, kl_weight=1e-3,
                               rec_weight=3.0, lambda_disent=lam)
        vae, info = train_disentangle(xs, ys, xo, yo, C, spec, torch.Generator().manual_seed(0))
        zc, zs = vae.means(torch.cat([xs, xo]))
        zct, zst = vae.means(torch.cat([xs2, xo2]))
        acc = {"c->y": _probe(zc, y, zct, yt, C), "s->d": _probe(zs, d, zst, d, 2)}
        for h, tag in ((0, "lin"), (32, "mlp")):
            acc[f"s->y {tag}"] = _probe(zs, y, zst, yt, C, h)
            acc[f"c->d {tag}"] = _probe(zc, d, zct, d, 2, h)
        out[lam] = (acc, vae, info, (xs2, ys2, xo2, yo2))
    return out


def _disentangled(acc: dict[str, float]) -> bool:
    return (acc["c->y"] > 0.9 and acc["s->d"] > 0.9                       # each latent keeps its own factor
            and acc["s->y lin"] < 0.45 and acc["s->y mlp"] < 0.45          # chance 0.25
            and acc["c->d lin"] < 0.75 and acc["c->d mlp"] < 0.75)         # chance 0.5


def test_stage1_separates_content_from_style_on_the_toy(toy_latents):
    acc, vae, info, (xs2, ys2, xo2, yo2) = toy_latents[1.0]
    assert _disentangled(acc), acc
    paths = path_accuracies(vae, xs2, ys2, xo2, yo2)
    assert paths["content_path_acc_source"] > 0.9 and paths["content_path_acc_other"] > 0.9
    assert paths["style_path_acc_source"] < 0.45 and paths["style_path_acc_other"] < 0.45
    assert paths["style_domain_acc_source"] > 0.9 and paths["style_domain_acc_other"] > 0.9
    assert info["history"][-1]["dep_style_label"] < 0.1
    assert "content_path_acc_other" not in path_accuracies(vae, xs2, ys2, xo2, None)   # labels not to be used


def test_without_the_disentangling_terms_style_reads_the_label(toy_latents):
    acc = toy_latents[0.0][0]
    assert not _disentangled(acc), acc                                   # the thresholds above would fail
    assert acc["s->y mlp"] > 0.6 and acc["c->d mlp"] > 0.85, acc
    assert toy_latents[0.0][2]["history"][-1]["dep_style_label"] == 0.0   # the terms were off


def test_stage1_unlabelled_other_rows_never_reach_a_label_term():
    g = torch.Generator().manual_seed(0)
    f_s, f_o = torch.randn(32, 6, generator=g), torch.randn(32, 6, generator=g)
    y_s = torch.arange(32) % C
    y_o = torch.full((32,), -1)   # any use in CE, one_hot or HSIC would raise
    spec = DisentangleSpec(steps=3, batch_size=8, latent_dim=2, hidden_dim=8)
    _, info = train_disentangle(f_s, y_s, f_o, y_o, C, spec, g, other_labelled=False)
    assert info["steps"] == 3
    with pytest.raises((RuntimeError, IndexError)):
        train_disentangle(f_s, y_s, f_o, y_o, C, spec, g, other_labelled=True)


# ------------------------------------------------------------------------ dual-path distillation, by hand


def test_dual_path_targets_give_source_rows_the_content_teacher():
    content = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    style = -content
    is_source = torch.tensor([True, False, True, False])
    picked = dual_path_targets(content, style, is_source)
    assert picked.tolist() == [[1.0, 0.0], [-2.0, -0.0], [3.0, 0.0], [-4.0, -0.0]]


def test_distillation_loss_hand_values():
    student = torch.zeros(2, 2, requires_grad=True)                    # uniform predictions
    content = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])   # p = (3/4, 1/4)
    style = torch.tensor([[0.0, 0.0], [0.0, 0.0]])                         # uniform
    is_source = torch.tensor([True, False])
    y = torch.tensor([1, 99])                                              # the target label is never read
    kl_src = 0.75 * math.log(0.75) + 0.25 * math.log(0.25) + math.log(2)  # KL((3/4, 1/4) || uniform)
    out = hntl_loss(student, content, style, is_source, y, temperature=1.0, kind="kl", ce_weight=0.5)
    total = out["total"]
    out = {k: v.detach() for k, v in out.items()}
    assert float(out["kd"]) == pytest.approx(kl_src / 2, rel=1e-6)        # the target row matches its teacher
    assert float(out["source_ce"]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(out["total"]) == pytest.approx(kl_src / 2 + 0.5 * math.log(2), rel=1e-6)
    swapped = hntl_loss(student, content, style, ~is_source, torch.tensor([99, 1]), temperature=1.0,
                        kind="kl", ce_weight=0.0)
    assert float(swapped["kd"].detach()) == pytest.approx(kl_src / 2, rel=1e-6)
    assert float(swapped["source_ce"]) == 0.0
    # temperature 2: tau^2 * KL(softmax(t / 2) || uniform), p = (sqrt 3, 1) / (1 + sqrt 3)
    p = math.sqrt(3) / (1 + math.sqrt(3))
    kl2 = p * math.log(p) + (1 - p) * math.log(1 - p) + math.log(2)
    assert float(distill(student[:1], content[:1], 2.0).detach()) == pytest.approx(4 * kl2, rel=1e-6)
    assert float(distill(student, content, 3.0, "mse").detach()) == pytest.approx(math.log(3) ** 2 / 2, rel=1e-6)
    total.backward()
    assert student.grad[1].abs().max() < 1e-7                           # target row already at its teacher


# ------------------------------------------------------------------------------ through protect()


def test_target_variant_contract(tmp_path):
    src = tiny_model()
    with torch.no_grad():
        for mod in src.modules():
            if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.2, 0.2)
    res = run(HNTLConfig(**FAST), model=src, out=tmp_path / "prot")
    m = res.model
    assert type(m) is type(src) and set(m.state_dict()) == set(src.state_dict())
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    before, after = src.state_dict(), m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" in k)          # bn="frozen"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    card = json.loads((tmp_path / "prot" / "card.json").read_text())
    prot = card["protection"]
    assert prot["method"] == "hntl" and prot["target_use"] == "method and evaluation"
    assert prot["data_read"] == ["source:src:train", "source:src:val", "target:tgt:train"]
    info = prot["info"]
    assert info["used_target_labels"] is True and info["steps"] == FAST["steps"]
    assert info["stage1"]["steps"] == FAST["disent_steps"] and "content_path_acc_other" in info["stage1"]["paths"]
    assert info["latent_dim"] == 8 and info["feature_dim"] == 16              # half tiny digitnet's features
    assert prot["hparams"]["variant"] == "target" and set(prot["accuracy_test"]) == {"src", "tgt"}


def test_source_only_variant_never_reads_the_target():
    loader = Loader(forbid=NO_TARGET_TRAINING)
    res = run(HNTLConfig(variant="source-only", **FAST), loader=loader)
    assert [c for c in loader.calls if c[0] == "tgt"] == [("tgt", "test")]      # protect()'s evaluation only
    prot = res.card["protection"]
    assert prot["target_use"] == "evaluation only" and prot["data_read"] == ["source:src:train", "source:src:val"]
    assert prot["info"]["neighbours"] == FAST["neighbour_pool"] and prot["info"]["used_target_labels"] is False
    assert run(HNTLConfig(variant="source-only", **FAST), target=None).card["protection"]["target_use"] is None


def test_a_source_only_run_that_tries_anyway_is_refused(monkeypatch):
    from domainlock.methods.baselines import hntl

    def sneaky(access, hp, ctx, x_s, y_s):
        return access.target("train")

    monkeypatch.setattr(hntl, "other_images", sneaky)
    loader = Loader()
    with pytest.raises(DataAccessError, match="evaluation only"):
        run(HNTLConfig(variant="source-only", **FAST), loader=loader)
    assert ("tgt", "train") not in loader.calls


def test_target_images_without_labels():
    class Unlabelled(Loader):
        def __call__(self, name, split, root=None):
            d = super().__call__(name, split, root)
            if name == "tgt" and split == "train":
                return DomainData(d.name, d.split, d.x, torch.full_like(d.y, -1), d.num_classes)
            return d

    with pytest.raises(DomainlockError, match="use --no-target-labels") as ei:
        run(HNTLConfig(**FAST), loader=Unlabelled())
    assert "\n" not in str(ei.value)
    res = run(HNTLConfig(target_labels=False, **FAST), loader=Unlabelled())
    info = res.card["protection"]["info"]
    assert info["used_target_labels"] is False and "content_path_acc_other" not in info["stage1"]["paths"]
    assert "style_domain_acc_other" in info["stage1"]["paths"]


def test_zero_steps_returns_the_source_model():
    src = tiny_model()
    res = run(HNTLConfig(**{**FAST, "steps": 0}), model=src)
    x = toy("src", "test").x
    with torch.no_grad():
        assert torch.equal(res.model(x), src(x))


def test_reference_preset_and_overrides():
    hp = HNTL.make_hparams("reference", steps=7)
    assert hp.steps == 7 and hp.kd_loss == "mse" and hp.optimizer == "sgd" and hp.ce_weight == 0.0
    assert hp.disent_steps == 7500 and hp.batch_size == 32 and hp.lambda_disent == 0.08
    assert set(REFERENCE) <= {f for f in HNTLConfig.__dataclass_fields__}
    get_method("hntl").validate(HNTL.make_hparams("reference"), "source-available")
    with pytest.raises(UnknownChoiceError, match="unknown preset of method 'hntl' 'paper'"):
        HNTL.make_hparams("paper")


def test_sgd_and_mse_run():
    res = run(HNTLConfig(**{**FAST, "optimizer": "sgd", "kd_loss": "mse", "ce_weight": 0.0}))
    assert res.card["protection"]["info"]["history"][-1]["source_ce"] == 0.0


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kw, match", [
    ({"variant": "target-free"}, "unknown variant 'target-free'; valid choices: source-only, target"),
    ({"temperature": 0.0}, "temperature=0.0"), ({"temperature": float("nan")}, "temperature=nan"),
    ({"kd_loss": "l1"}, "l1"), ({"optimizer": "rmsprop"}, "rmsprop"), ({"bn": "sometimes"}, "sometimes"),
    ({"lr": 0.0}, "lr=0.0"), ({"disent_lr": -1.0}, "disent_lr=-1.0"), ({"momentum": 1.0}, "momentum=1.0"),
    ({"steps": -1}, "steps=-1"), ({"disent_steps": 0}, "disent_steps=0"), ({"batch_size": 1}, "batch_size=1"),
    ({"disent_batch_size": 1}, "disent_batch_size=1"), ({"latent_dim": -1}, "latent_dim=-1"),
    ({"hidden_dim": 0}, "hidden_dim=0"), ({"lambda_disent": -1.0}, "lambda_disent=-1.0"),
    ({"kl_weight": float("inf")}, "kl_weight=inf"), ({"ce_weight": -0.5}, "ce_weight=-0.5"),
    ({"neighbour_pool": 0}, "neighbour_pool=0"), ({"neighbour_families": "plaid"}, "plaid"),
    ({"target_labels": "yes"}, "target_labels='yes'"),
    ({"variant": "source-only", "target_size": 500}, "target_size=500 selects target images"),
])
def test_bad_hyperparameters_fail_in_one_line_before_any_read(kw, match):
    loader = Loader()
    with pytest.raises(DomainlockError, match=match) as ei:
        run(HNTLConfig(**kw), loader=loader)
    assert "\n" not in str(ei.value) and loader.calls == []


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from domainlock.artifact import save_artifact
    from domainlock.models import build_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("hntl") / "src"
    save_artifact(out, build_model("digitnet", width=4, feat_dim=16), {"domain": "uci-digits", "seed": 0})
    return out


def test_cli_turns_every_field_into_a_flag(capsys):
    from domainlock.cli.main import main

    with pytest.raises(SystemExit):
        main(["protect", "--method", "hntl", "--help"])
    out = capsys.readouterr().out
    for f in ("--variant", "--target-labels", "--no-target-labels", "--temperature", "--kd-loss", "--ce-weight",
              "--disent-steps", "--latent-dim", "--kl-weight", "--rec-weight", "--lambda-disent", "source-only"):
        assert f in out


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "0"], "temperature=0.0 is out of range"),
    (["--disent-steps", "0"], "disent_steps=0 is out of range"),
    (["--variant", "source-only", "--target-size", "10"], "target_size=10 selects target images"),
    (["--preset", "paper"], "unknown preset of method 'hntl' 'paper'"),
    (["--kd-loss", "l1"], "l1"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(artifact, tmp_path, capsys, flags, message):
    from domainlock.cli.main import main

    out = tmp_path / "prot"
    try:
        rc = main(["protect", "--method", "hntl", "--model", str(artifact), "--source", "uci-digits", "--target",
                   "mnist", "--out", str(out), "--device", "cpu", "-q", *flags])
    except SystemExit as e:   # argparse's own choices check exits from the parser
        rc = e.code
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


def test_cli_source_only_end_to_end(artifact, tmp_path, capsys, data_root):
    from domainlock.cli.main import main

    out = tmp_path / "prot"
    rc = main(["protect", "--method", "hntl", "--variant", "source-only", "--model", str(artifact), "--source",
               "uci-digits", "--target", "mnist", "--steps", "2", "--batch-size", "8", "--disent-steps", "3",
               "--neighbour-pool", "16", "--train-size", "64", "--val-size", "8", "--out", str(out),
               "--device", "cpu", "-q", "--data-root", str(data_root)])
    text, err = capsys.readouterr()
    assert rc == 0, err
    assert "target mnist: used for evaluation only" in text
    card = json.loads((out / "card.json").read_text())
    assert card["protection"]["data_read"] == ["source:uci-digits:train", "source:uci-digits:val"]
    assert card["protection"]["info"]["source_train_images"] == 64
