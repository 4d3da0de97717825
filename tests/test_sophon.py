"""SOPHON: the suppression losses on hand-made logits, the fine-tuning simulation against an independent
reference implementation, what a simulation step leaves untouched (BatchNorm statistics, the model's head,
the global RNG), a toy protect() run under the contract, presets, and bad input in one line."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from domainlock.errors import DomainlockError
from domainlock.losses.suppression import inverse_cross_entropy, kl_to_uniform, suppression_loss
from domainlock.methods import get_method, get_method_class, method_names, protect
from domainlock.methods.baselines.sophon import (
    PRESETS,
    InnerBatch,
    SophonConfig,
    direct_suppression,
    fresh_head,
    simulate_finetuning,
    split_support,
)
from domainlock.models import Classifier, build_model
from toys import C, Loader, tiny_model, toy

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"iterations": 3, "inner_batches": 2, "inner_batch_size": 16, "support": 8, "batch_size": 8, "val_size": 8}


def run(hp, loader=None, model=None, **kw):
    return protect(model or tiny_model(), "sophon", source="src", target="tgt", hparams=hp,
                   loader=loader or Loader(), device="cpu", progress=False, **kw)


# ----------------------------------------------------------------------------------- the losses, by hand


def test_ice_on_hand_made_logits():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])   # p = [1/4, 3/4]
    per = inverse_cross_entropy(logits, torch.tensor([1, 0]), reduction="none")
    assert per.tolist() == pytest.approx([math.log(4.0), -math.log(0.75)])  # -log(1 - 3/4), -log(1 - 1/4)
    assert float(inverse_cross_entropy(logits, torch.tensor([1, 0]))) == pytest.approx(
        (math.log(4.0) - math.log(0.75)) / 2)
    three = torch.tensor([[1.0, 2.0, 3.0]])
    p = [math.exp(v) / (math.e + math.e ** 2 + math.e ** 3) for v in (1, 2, 3)]
    assert float(inverse_cross_entropy(three, torch.tensor([2]))) == pytest.approx(-math.log(1 - p[2]))
    # p_y -> 1 is where 1 - p_y cancels; the logsumexp form stays exact: -log(1 - p_y) = 100 + log(1 + e^-100)
    big = inverse_cross_entropy(torch.tensor([[0.0, 100.0]]), torch.tensor([1]))
    assert math.isfinite(float(big)) and float(big) == pytest.approx(100.0)
    assert float(inverse_cross_entropy(torch.tensor([[0.0, 100.0]]), torch.tensor([0]))) == pytest.approx(0.0,
                                                                                                         abs=1e-6)


def test_klu_on_hand_made_logits():
    logits = torch.tensor([[0.0, math.log(3.0)]])                       # p = [1/4, 3/4], U = [1/2, 1/2]
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)   # KL(U || p) = 0.5 log(4/3)
    assert float(kl_to_uniform(logits)) == pytest.approx(expected) == pytest.approx(0.5 * math.log(4 / 3))
    assert float(kl_to_uniform(torch.full((3, 5), 7.0))) == pytest.approx(0.0, abs=1e-7)   # uniform: 0
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g) * 3
    # the reference code's form: kl_div(log p, uniform, batchmean) = KL(U || p)
    ref = F.kl_div(F.log_softmax(z, 1), torch.full((6, 4), 0.25), reduction="batchmean")
    assert float(kl_to_uniform(z)) == pytest.approx(float(ref), rel=1e-5)
    assert float(kl_to_uniform(z)) != pytest.approx(float((F.softmax(z, 1) * (F.log_softmax(z, 1) + math.log(4)))
                                                          .sum(1).mean()), rel=1e-3)   # not KL(p || U)
    assert float(suppression_loss("klu", z, torch.zeros(6, dtype=torch.long))) == float(kl_to_uniform(z))
    assert float(suppression_loss("ice", z, torch.ones(6, dtype=torch.long))) == pytest.approx(
        float(inverse_cross_entropy(z, torch.ones(6, dtype=torch.long))))
    with pytest.raises(DomainlockError, match="unknown suppression loss 'kl'"):
        suppression_loss("kl", z, torch.zeros(6, dtype=torch.long))


# ------------------------------------------------------------------------------------------- the batches


def test_support_is_c_way_balanced_and_disjoint_from_the_query():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    for seed in range(5):
        s, q = split_support(y, 7, 3, torch.Generator().manual_seed(seed))
        assert sorted(torch.cat([s, q]).tolist()) == list(range(12)) and len(s) == 7 and len(q) == 5
        counts = torch.bincount(y[s], minlength=3)
        assert bool((counts >= 2).all())                      # floor(7 / 3) = 2 shots of every class
    rare = torch.tensor([0] * 10 + [1, 1, 2, 2])               # classes 1 and 2 are rare in this batch
    for seed in range(5):
        s, _ = split_support(rare, 6, 3, torch.Generator().manual_seed(seed))
        assert torch.bincount(rare[s], minlength=3).tolist() == [2, 2, 2]   # a random 6 would rarely be
    with pytest.raises(DomainlockError, match="support=12"):
        split_support(y, 12, 3, torch.Generator())


# ---------------------------------------------------------------------- the simulation vs a reference


class Tiny(Classifier):
    def __init__(self):
        torch.manual_seed(3)
        enc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6), nn.ReLU())
        super().__init__(enc, nn.Linear(6, 3), num_classes=3)


def _batches(k: int = 3, seed: int = 0) -> list[InnerBatch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        x = torch.rand(10, 3, 6, 6, generator=g)
        y = torch.randint(0, 3, (10,), generator=g)
        out.append(InnerBatch(x[:6], y[:6], x[6:], y[6:]))
    return out


def reference_simulation(model, batches, *, loss, lr, head_lr, momentum, reinit_head, seed):
    """Plain module code: deep copy, explicit SGD updates, .backward(), the losses written out."""
    att = copy.deepcopy(model).train()
    if reinit_head:
        with torch.no_grad():
            for name, p in fresh_head(model, seed).items():
                att.get_parameter(name).copy_(p)
    head = {id(p) for p in att.head.parameters()} if reinit_head else set()
    vel = {id(p): torch.zeros_like(p) for p in att.parameters()}
    outer = {n: torch.zeros_like(p) for n, p in att.named_parameters() if not (reinit_head and n.startswith("head."))}
    values = []
    for b in batches:
        att.zero_grad()
        F.cross_entropy(att(b.xs), b.ys).backward()
        with torch.no_grad():
            for p in att.parameters():
                step = p.grad
                if momentum:
                    vel[id(p)] = momentum * vel[id(p)] + p.grad
                    step = vel[id(p)]
                p -= (head_lr if id(p) in head else lr) * step
        att.zero_grad()
        prob = torch.softmax(att(b.xq), 1)
        if loss == "ice":
            value = -torch.log(1 - prob[torch.arange(len(b.yq)), b.yq]).mean()
        else:
            value = (-torch.log(prob).mean(1) - math.log(prob.shape[1])).mean()
        value.backward()
        for n, p in att.named_parameters():
            if n in outer:
                outer[n] += p.grad / len(batches)
        values.append(float(value.detach()))
    return outer, sum(values) / len(values)


@pytest.mark.parametrize("loss, reinit, momentum", [("ice", True, 0.0), ("klu", False, 0.0), ("ice", False, 0.9),
                                                    ("klu", True, 0.5)])
def test_simulation_matches_an_independent_reference(loss, reinit, momentum):
    model = Tiny().eval()
    batches = _batches()
    kw = dict(lr=0.3, head_lr=0.7 if reinit else 0.3, momentum=momentum, reinit_head=reinit, seed=11)
    ref, ref_loss = reference_simulation(model, batches, loss=loss, **kw)
    sim = simulate_finetuning(model, batches, loss=loss, inner_lr=0.3, inner_head_lr=0.7 if reinit else 0.0,
                              inner_momentum=momentum, reinit_head=reinit, head_seed=11)
    assert set(sim.grads) == set(ref)
    assert sim.fresh == (["head.bias", "head.weight"] if reinit else [])
    for n in ref:
        assert torch.allclose(sim.grads[n], ref[n], atol=1e-6, rtol=1e-4), n
    assert sim.loss == pytest.approx(ref_loss, rel=1e-5)
    assert len(sim.query_acc) == 3 and all(0 <= a <= 1 for a in sim.query_acc)
    assert any(float(g.abs().sum()) > 0 for g in sim.grads.values())
    # first order: the gradient is taken at the adapted weights, so it differs from the plain gradient at theta
    plain = torch.autograd.grad(suppression_loss(loss, model.train()(batches[0].xq), batches[0].yq),
                                [model.encoder[0].weight])[0]
    assert not torch.allclose(sim.grads["encoder.0.weight"], plain / 3, atol=1e-6)


def test_simulation_leaves_the_model_and_its_bn_statistics_untouched():
    model = Tiny()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    model.train()
    model.encoder[1].eval()                       # a mixed mode (frozen BN) must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    held = (torch.rand(5, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1]))
    rng = torch.get_rng_state()
    sim = simulate_finetuning(model, _batches(4), loss="ice", inner_lr=0.5, reinit_head=True, head_seed=2,
                              evaluate=held)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)        # weights, running stats, counters
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)                       # the head draw forks the RNG
    assert 0.0 <= sim.eval_acc <= 1.0


def test_head_reinit_happens_on_the_attackers_copy_only():
    model = Tiny().eval()
    own = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    a, b, c = fresh_head(model, 5), fresh_head(model, 5), fresh_head(model, 6)
    assert set(a) == {"head.weight", "head.bias"}
    assert all(torch.equal(a[n], b[n]) for n in a) and not torch.equal(a["head.weight"], c["head.weight"])
    assert not torch.equal(a["head.weight"], own["weight"])
    assert all(torch.equal(p, own[n]) for n, p in model.head.named_parameters())
    sim = simulate_finetuning(model, _batches(2), loss="ice", inner_lr=0.1, reinit_head=True, head_seed=5)
    assert "head.weight" not in sim.grads and "encoder.0.weight" in sim.grads
    kept = simulate_finetuning(model, _batches(2), loss="ice", inner_lr=0.1, reinit_head=False)
    assert "head.weight" in kept.grads and kept.fresh == []


def test_direct_term_is_the_released_models_gradient():
    model = Tiny().eval()
    b = _batches(1)[0]
    grads, value = direct_suppression(model, b, "ice", 2.0)
    expected = inverse_cross_entropy(model(b.xq), b.yq)
    assert value == pytest.approx(float(expected.detach()))
    ref = torch.autograd.grad(2.0 * expected, [model.head.weight])[0]
    assert torch.allclose(grads["head.weight"], ref) and all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------------------- protect()


def test_toy_protect_follows_the_contract(tmp_path):
    src = tiny_model()
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
    loader = Loader()
    res = run(SophonConfig(**FAST), loader=loader, model=src, out=tmp_path / "prot")
    m = res.model
    assert type(m) is type(src) and set(m.state_dict()) == set(src.state_dict())
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    prot = res.card["protection"]
    assert prot["data_read"] == ["source:src:train", "source:src:val", "target:tgt:train"]
    assert prot["target_use"] == "method and evaluation"
    assert ("tgt", "test") in loader.calls and ("tgt", "val") not in loader.calls
    info = prot["info"]
    assert info["iterations"] == 3 and info["used_target_labels"] is True and len(info["history"]) == 1
    assert 0 <= info["simulated_attacker_acc_before"] <= 1 and 0 <= info["simulated_attacker_acc_after"] <= 1
    before, after = src.state_dict(), m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" in k)   # bn frozen + restored
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    card = json.loads((tmp_path / "prot" / "card.json").read_text())
    assert card["protection"]["method"] == "sophon" and card["protection"]["hparams"]["loss"] == "ice"
    with pytest.raises(DomainlockError, match="needs --target"):
        protect(tiny_model(), "sophon", source="src", hparams=SophonConfig(**FAST), loader=Loader(), device="cpu",
                progress=False)


def test_zero_iterations_return_the_source_model():
    src = tiny_model()
    res = run(SophonConfig(**{**FAST, "iterations": 0}), model=src)
    x = toy("src", "test").x
    with torch.no_grad():
        assert torch.equal(res.model(x), src(x))


def test_reference_presets_hold_the_papers_values_and_run():
    cls = get_method_class("sophon")
    assert cls.presets is PRESETS
    ref = cls.make_hparams("reference")
    assert (ref.loss, ref.alpha, ref.beta, ref.lr, ref.normal_steps) == ("ice", 3.0, 5.0, 1e-4, 1)
    assert (ref.inner_lr, ref.inner_batches, ref.inner_batch_size, ref.support, ref.clip) == (1e-4, 50, 150, 130, 0.5)
    assert ref.reinit_head and ref.direct_weight == 0.0 and ref.inner_head_lr == 0.0 and ref.inner_momentum == 0.0
    klu = cls.make_hparams("reference-klu", **FAST)
    assert (klu.loss, klu.alpha, klu.beta, klu.normal_steps, klu.bn) == ("klu", 1.0, 1.0, 5, "train")
    src = tiny_model()
    res = run(klu, model=src)
    assert res.card["protection"]["hparams"]["loss"] == "klu"
    stats = [k for k in src.state_dict() if "running_mean" in k]
    assert any(not torch.equal(src.state_dict()[k], res.model.state_dict()[k]) for k in stats)   # bn="train"


# ------------------------------------------------------------------------------------------ bad input


class UnlabelledTarget(Loader):
    def __init__(self, labels):
        super().__init__()
        self.labels = labels

    def __call__(self, name, split, root=None):
        data = super().__call__(name, split, root)
        if name == "tgt" and split == "train":
            y = None if self.labels is None else self.labels(data.y)
            return SimpleNamespace(name=name, split=split, x=data.x, y=y, num_classes=C, classes=data.classes)
        return data


@pytest.mark.parametrize("labels, match", [
    (None, "target 'tgt' has no labels; sophon needs labelled target data"),
    (lambda y: torch.where(torch.arange(len(y)) % 3 == 0, -1, y), "16 of 48 images without a label"),
    (lambda y: y + 10, "has label 13; the model has 4 outputs"),
    (lambda y: torch.zeros_like(y), "1 labelled class"),
    (lambda y: y.float(), "labels must be one integer class per image"),
])
def test_a_target_without_labels_fails_before_training(labels, match):
    loader = UnlabelledTarget(labels)
    with pytest.raises(DomainlockError, match=match) as ei:
        run(SophonConfig(**FAST), loader=loader)
    assert "\n" not in str(ei.value)
    assert ("src", "train") not in loader.calls            # refused before the source is even read


def test_support_needs_more_target_images_than_it_holds():
    with pytest.raises(DomainlockError, match="support=60 needs more than 60 target training images"):
        run(SophonConfig(**{**FAST, "inner_batch_size": 64, "support": 60}))


@pytest.mark.parametrize("kw, match", [
    ({"loss": "kl"}, "unknown loss 'kl'; valid choices: ice, klu"), ({"alpha": 0.0}, r"alpha=0.0 is out of range"),
    ({"beta": -1.0}, "beta=-1.0"), ({"alpha": float("nan")}, "alpha=nan"), ({"lr": 0.0}, "lr=0.0"),
    ({"inner_lr": 0.0}, r"inner_lr=0.0 is out of range; valid: \(0.0, 10.0\]"),
    ({"inner_head_lr": -0.1}, "inner_head_lr=-0.1"), ({"inner_momentum": 1.0}, "inner_momentum=1.0"),
    ({"clip": -1.0}, "clip=-1.0"), ({"direct_weight": -1.0}, "direct_weight=-1.0"),
    ({"iterations": -1}, "iterations=-1"), ({"normal_steps": -1}, "normal_steps=-1"),
    ({"batch_size": 1}, "batch_size=1"), ({"inner_batches": 0}, "inner_batches=0"),
    ({"inner_batch_size": 2}, "inner_batch_size=2"),
    ({"support": 64}, r"support=64 is out of range; valid: \[2, 63\]"), ({"support": 1}, "support=1"),
    ({"iterations": 2.5}, "iterations=2.5 must be an integer"), ({"bn": "sometimes"}, "sometimes"),
    ({"target_size": -5}, "target_size=-5"), ({"reinit_head": "yes"}, "reinit_head='yes'"),
])
def test_bad_hyperparameters_fail_in_one_line_before_any_read(kw, match):
    loader = Loader()
    with pytest.raises(DomainlockError, match=match) as ei:
        run(SophonConfig(**kw), loader=loader)
    assert "\n" not in str(ei.value) and loader.calls == []


def test_registered_source_available_with_flags_and_presets(capsys):
    from domainlock.cli.main import main

    assert "sophon" in method_names() and get_method("sophon").settings == ("source-available",)
    with pytest.raises(DomainlockError, match="does not support setting"):
        protect(tiny_model(), "sophon", source="src", target="tgt", setting="source-free", loader=Loader(),
                device="cpu", progress=False)
    with pytest.raises(SystemExit):
        main(["protect", "--method", "sophon", "--help"])
    out = capsys.readouterr().out
    for flag in ("--loss", "--alpha", "--beta", "--inner-lr", "--inner-batches", "--support", "--reinit-head",
                 "--no-reinit-head", "--direct-weight", "--clip", "--normal-steps", "--preset", "klu"):
        assert flag in out


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    from domainlock.artifact import save_artifact
    from domainlock.cli.main import main

    art = tmp_path / "src"
    save_artifact(art, build_model("digitnet", width=4, feat_dim=16), {"domain": "mnist", "seed": 0})
    for flags, match in ((["--support", "64"], "support=64 is out of range"),
                         (["--loss", "kl"], "invalid choice: 'kl'"),
                         (["--preset", "papers"], "unknown preset of method 'sophon' 'papers'")):
        try:   # argparse's own refusals (a choice) exit; the method's come back as the return code
            rc = main(["protect", "--method", "sophon", "--model", str(art), "--source", "mnist", "--target", "syn",
                       "--out", str(tmp_path / "prot"), "--device", "cpu", "-q", *flags])
        except SystemExit as e:
            rc = e.code
        err = capsys.readouterr().err
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert rc == 2 and match in lines[-1] and "Traceback" not in err, err
        assert not (tmp_path / "prot").exists()


def test_cli_end_to_end_on_real_digits(tmp_path, capsys, data_root):
    from domainlock.artifact import save_artifact
    from domainlock.cli.main import main

    art = tmp_path / "src"
    torch.manual_seed(0)
    save_artifact(art, build_model("digitnet", width=4, feat_dim=16), {"domain": "uci-digits", "seed": 0})
    out = tmp_path / "prot"
    rc = main(["protect", "--method", "sophon", "--model", str(art), "--source", "uci-digits", "--target", "mnist",
               "--preset", "reference", "--iterations", "2", "--inner-batches", "2", "--inner-batch-size", "24",
               "--support", "20", "--batch-size", "8", "--val-size", "8", "--target-size", "200", "--out", str(out),
               "--device", "cpu", "-q", "--data-root", str(data_root)])
    text, err = capsys.readouterr()
    assert rc == 0, err
    card = json.loads((out / "card.json").read_text())
    prot = card["protection"]
    assert prot["data_read"] == ["source:uci-digits:train", "source:uci-digits:val", "target:mnist:train"]
    assert prot["hparams"]["alpha"] == 3.0 and prot["hparams"]["iterations"] == 2   # preset, flags on top
    assert prot["info"]["target_train_images"] == 200 and "target mnist: used for method and evaluation" in text
