"""The fine-tuning attack (issue: attack harness): sampling, strategies, masked/dense, selection without target
test labels, scratch, BatchNorm handling, learning curves with their cache, SLC-AUC end to end, bad input.

Everything runs on a tiny digitnet and a synthetic 10-class set so the file stays fast."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from domainlock.attacks import (
    AttackProtocol,
    SampleCountError,
    finetune_attack,
    recalibrate_bn,
    sample_per_class,
    scratch_like,
    split_holdout,
)
from domainlock.attacks import finetune as finetune_mod
from domainlock.attacks.slc import PointCache, arch_fingerprint, learning_curve, plot_slc, slc, weights_fingerprint
from domainlock.data import DomainData
from domainlock.errors import DomainlockError, OutputExistsError, UnknownChoiceError
from domainlock.evaluation import accuracy
from domainlock.masking import magnitude_masks
from domainlock.models import build_model

FAST = AttackProtocol(steps=4, epochs=1, batch_size=8, lr=0.05, augment="none")

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic(n_per_class: int, seed: int, name: str = "toy", split: str = "train", counts=None) -> DomainData:
    """10 classes; class c is a bright square at one of 10 positions on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    counts = counts or [n_per_class] * 10
    y = torch.cat([torch.full((k,), c, dtype=torch.long) for c, k in enumerate(counts)])
    x = 0.2 * torch.rand(len(y), 3, 32, 32, generator=g)
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 5)
        x[i, :, 4 + 12 * r: 12 + 12 * r, 2 + 6 * col: 6 + 6 * col] += 0.7
    return DomainData(name, split, x.clamp(0, 1), y, 10)


@pytest.fixture(scope="module")
def toy():
    return synthetic(12, 0), synthetic(6, 1, split="test")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("digitnet", width=4, feat_dim=16)


def pruned(model: nn.Module, sparsity: float = 0.5) -> nn.Module:
    with torch.no_grad():
        for name, mask in magnitude_masks(model, sparsity).items():
            model.get_submodule(name).weight.mul_(mask)
    return model


def zeros_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() == 0 for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


# ------------------------------------------------------------------------------------------------ sampling
def test_sampling_is_balanced_nested_and_seeded(toy):
    train, _ = toy
    a = sample_per_class(train, 20, seed=3)
    assert torch.bincount(train.y[a], minlength=10).tolist() == [2] * 10
    b = sample_per_class(train, 25, seed=3)
    counts = torch.bincount(train.y[b], minlength=10)
    assert counts.sum() == 25 and set(counts.tolist()) == {2, 3}
    assert set(a.tolist()) <= set(b.tolist())                       # nested for one seed
    assert torch.equal(a, sample_per_class(train, 20, seed=3))        # deterministic
    assert not torch.equal(a, sample_per_class(train, 20, seed=4))


def test_sampling_errors(toy):
    train, _ = toy
    with pytest.raises(SampleCountError, match="exceeds the 120 samples of toy/train"):
        sample_per_class(train, 500)
    with pytest.raises(SampleCountError, match="smaller than the 10 classes"):
        sample_per_class(train, 5)
    short = synthetic(12, 0, counts=[12] * 9 + [3])
    with pytest.raises(SampleCountError, match="class 9 of toy/train has 3 samples but n=50 asks for 5"):
        sample_per_class(short, 50)
    assert isinstance(SampleCountError("x"), DomainlockError)


def test_holdout_split():
    y = torch.arange(10).repeat(5)
    tr, ho = split_holdout(y, 0.2, seed=0)
    assert len(ho) == 10 and len(tr) == 40 and not set(tr.tolist()) & set(ho.tolist())
    assert torch.bincount(y[ho], minlength=10).tolist() == [1] * 10
    assert split_holdout(torch.arange(10), 0.2, 0) is None   # one sample per class: nothing to hold out


# ------------------------------------------------------------------------------------------------ strategies
def test_strategies_train_the_parts_they_name(toy, model):
    train, test = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    enc_keys = [k for k in before if k.startswith("encoder.")]
    head_keys = [k for k in before if k.startswith("head.")]
    changed = {}
    for strategy in ("all", "head", "reinit-head+all", "reinit-head"):
        r = finetune_attack(model, train, 20, strategy, protocol=FAST, seed=0, target_test=test, device="cpu")
        sd = r.model.state_dict()
        changed[strategy] = ({k for k in enc_keys if not torch.equal(sd[k], before[k])},
                             {k for k in head_keys if not torch.equal(sd[k], before[k])})
        assert 0.0 <= r.accuracy <= 1.0 and r.steps == 4 and r.select == "last" and r.n_train == 20
    for k, v in model.state_dict().items():   # the attacked model itself is untouched
        assert torch.equal(v, before[k])
    assert changed["all"][0] and changed["all"][1]
    assert changed["reinit-head+all"][0] and changed["reinit-head+all"][1]
    # head only: encoder weights AND its BatchNorm statistics stay exactly as they were
    assert changed["head"][0] == set() and changed["head"][1] == set(head_keys)
    assert changed["reinit-head"][0] == set() and changed["reinit-head"][1] == set(head_keys)


def test_inherited_and_fresh_weights_have_their_own_learning_rates(toy, model):
    train, _ = toy
    proto = AttackProtocol(steps=4, epochs=1, batch_size=8, augment="none", lr=0.5, lr_pretrained=1e-9)
    r = finetune_attack(model, train, 20, "reinit-head+all", protocol=proto, seed=0, device="cpu")
    enc = r.model.encoder[1].weight
    assert (enc - model.encoder[1].weight).abs().max() < 1e-6     # inherited: lr_pretrained
    fresh = dataclasses.replace(proto, lr=1e-9)
    init = finetune_attack(model, train, 20, "reinit-head+all", protocol=fresh, seed=0, device="cpu").model.head
    assert (init.weight - model.head.weight).abs().max() > 1e-3         # the same seeded re-initialization
    assert (r.model.head.weight - init.weight).abs().max() > 1e-3       # fresh head: trained at lr


def test_reinit_head_is_a_fresh_seeded_head(toy, model):
    train, _ = toy
    proto = AttackProtocol(steps=1, epochs=1, batch_size=8, lr=1e-9, augment="none", weight_decay=0)
    a = finetune_attack(model, train, 10, "reinit-head", protocol=proto, seed=5, device="cpu").model
    b = finetune_attack(model, train, 10, "reinit-head", protocol=proto, seed=5, device="cpu").model
    assert torch.equal(a.head.weight, b.head.weight)
    assert (a.head.weight - model.head.weight).abs().max() > 1e-3


def test_scratch_is_a_seeded_random_init_of_the_same_architecture(model):
    a, b, c = scratch_like(model, 1), scratch_like(model, 1), scratch_like(model, 2)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)
    assert not torch.equal(a.head.weight, model.head.weight)
    assert arch_fingerprint(a) == arch_fingerprint(model) != arch_fingerprint(build_model("digitnet", width=8))
    assert weights_fingerprint(a) != weights_fingerprint(model)
    bn = a.encoder[2]
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.equal(a.encoder[0].mean, model.encoder[0].mean)   # the input normalization is kept


def test_scratch_learns_and_rejects_head_strategies(toy, model):
    train, test = toy
    proto = AttackProtocol(steps=60, epochs=1, batch_size=16, lr=0.05, augment="none")
    r = finetune_attack(model, train, 40, "all", protocol=proto, seed=0, target_test=test, from_scratch=True,
                        device="cpu")
    assert r.from_scratch and r.accuracy > 0.5   # the toy task is learnable from scratch with 4 per class
    with pytest.raises(DomainlockError, match="from-scratch start trains all layers"):
        finetune_attack(model, train, 20, "head", protocol=FAST, from_scratch=True)


# ------------------------------------------------------------------------------------------------ masked / dense
def test_masked_attacker_keeps_pruned_weights_at_zero_dense_regrows(toy, model):
    train, _ = toy
    model = pruned(model)
    z0 = zeros_of(model)
    masked = finetune_attack(model, train, 20, "all", masked=True, protocol=FAST, seed=0, device="cpu")
    z1 = zeros_of(masked.model)
    for k in z0:
        assert torch.all(z1[k][z0[k]]), k    # every pruned weight is still exactly zero
    assert masked.zeros_after >= masked.zeros_before > 0.45
    dense = finetune_attack(model, train, 20, "all", masked=False, protocol=FAST, seed=0, device="cpu")
    assert dense.zeros_before > 0.45 and dense.zeros_after < 0.05   # pruned weights regrow
    # a re-initialized head is not masked: its fresh weights are dense; the encoder's zeros stay
    re = finetune_attack(model, train, 20, "reinit-head+all", masked=True, protocol=FAST, seed=0, device="cpu")
    assert (re.model.head.weight == 0).float().mean() < 0.05
    assert torch.all((re.model.encoder[1].weight == 0)[z0["encoder.1"]])


def test_masked_head_only_keeps_the_heads_zeros(toy, model):
    train, _ = toy
    model = pruned(model)
    z0 = model.head.weight == 0
    r = finetune_attack(model, train, 20, "head", masked=True, protocol=FAST, seed=0, device="cpu")
    assert torch.all(r.model.head.weight[z0] == 0)


def test_masked_attack_without_pruned_weights_is_the_dense_attack(toy, model):
    train, test = toy
    assert not finetune_mod.holds_pruned(model, "reinit-head+all")
    runs = [finetune_attack(model, train, 20, "reinit-head+all", masked=m, protocol=FAST, seed=0, target_test=test,
                            device="cpu") for m in (False, True)]
    assert runs[0].accuracy == runs[1].accuracy
    assert all(torch.equal(a, b) for a, b in zip(runs[0].model.state_dict().values(),
                                                 runs[1].model.state_dict().values(), strict=True))
    # which parts the masked attacker holds: the encoder unless only the head trains, the head unless re-initialized
    enc = pruned(finetune_mod.copy.deepcopy(model))
    with torch.no_grad():
        enc.head.weight.add_(1.0 - enc.head.weight.abs().min())   # no zero left in the head
    assert [finetune_mod.holds_pruned(enc, s) for s in ("all", "head", "reinit-head+all", "reinit-head")] == \
        [True, False, True, False]
    head = finetune_mod.copy.deepcopy(model)
    with torch.no_grad():
        head.head.weight[0, 0] = 0.0
    assert [finetune_mod.holds_pruned(head, s) for s in ("all", "head", "reinit-head+all", "reinit-head")] == \
        [True, True, False, False]


def test_masked_curve_of_a_dense_model_reads_the_dense_points(toy, model, tmp_path, monkeypatch):
    train, test = toy
    cache = PointCache(tmp_path / "c")
    dense = learning_curve(model, train, test, [10, 20], protocol=FAST, cache=cache, device="cpu")
    prot = pruned(finetune_mod.copy.deepcopy(model))
    learning_curve(prot, train, test, [10, 20], protocol=FAST, cache=cache, device="cpu")
    assert cache.misses == 4 and cache.hits == 0

    def boom(*a, **k):
        raise AssertionError("a cached point was trained again")

    monkeypatch.setattr("domainlock.attacks.slc.finetune_attack", boom)
    masked = learning_curve(model, train, test, [10, 20], masked=True, protocol=FAST, cache=cache, device="cpu")
    assert masked.per_seed == dense.per_seed and cache.hits == 2
    with pytest.raises(AssertionError, match="trained again"):   # pruned weights to hold: its own points
        learning_curve(prot, train, test, [10, 20], masked=True, protocol=FAST, cache=cache, device="cpu")


# ------------------------------------------------------------------------------------------------ selection, BN
def test_holdout_selection_uses_only_the_attackers_samples(toy, model):
    train, test = toy
    proto = AttackProtocol(steps=4, epochs=3, batch_size=8, augment="none", select="holdout", holdout=0.25)
    r = finetune_attack(model, train, 40, "all", protocol=proto, seed=0, target_test=test, device="cpu")
    assert r.select == "holdout" and r.n_holdout == 10 and r.n_train == 30
    assert r.holdout_accuracy is not None and 1 <= r.selected_epoch <= r.epochs
    # one sample per class: nothing to hold out, the attacker keeps its last step
    r = finetune_attack(model, train, 10, "all", protocol=proto, seed=0, device="cpu")
    assert r.select == "last" and r.n_holdout == 0 and r.n_train == 10


def test_recalibrated_bn_statistics_are_those_of_the_samples(model):
    x = torch.rand(24, 3, 32, 32) * 0.5 + 0.25
    recalibrate_bn(model, model, x, batch_size=24)
    bn = model.encoder[2]
    with torch.no_grad():
        feats = model.encoder[1](model.encoder[0](x))
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1 and not model.training


def test_protocol_length_and_validation():
    p = AttackProtocol(steps=200, epochs=20, batch_size=32)
    assert p.length(10) == (10, 1, 200)          # small n: the step budget, full batch
    assert p.length(100) == (32, 3, 67)
    assert p.length(1000) == (32, 31, 20)        # large n: the epoch budget
    with pytest.raises(DomainlockError, match="lr"):
        AttackProtocol(lr=0)
    with pytest.raises(UnknownChoiceError, match="select"):
        AttackProtocol(select="best-test")


# ------------------------------------------------------------------------------------------------ bad input
def test_unknown_strategy(toy, model):
    with pytest.raises(UnknownChoiceError, match="unknown strategy 'everything'.*reinit-head\\+all"):
        finetune_attack(model, toy[0], 20, "everything", protocol=FAST)


def test_model_without_encoder_head_split_says_how_to_name_one(toy):
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(DomainlockError, match="encoder/head split.*wrap_model.*domainlock_split"):
        finetune_attack(plain, toy[0], 20, protocol=FAST)
    with pytest.raises(DomainlockError, match="encoder/head split"):
        slc(plain, toy, [10, 20], protocol=FAST, cache=False, progress=False)


def test_target_with_more_classes_than_the_head(toy, model):
    train = toy[0]
    wide = DomainData("wide", "train", train.x, train.y % 12 + (train.y >= 8) * 2, 12)
    with pytest.raises(DomainlockError, match="10 outputs but target 'wide' has 12 classes"):
        finetune_attack(model, wide, 24, protocol=FAST)


def test_model_that_names_its_split_is_accepted(toy):
    class Net(nn.Module):
        domainlock_split = ("body", "fc")

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU())
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.body(x))

    r = finetune_attack(Net(), toy[0], 20, "reinit-head", protocol=FAST, target_test=toy[1], device="cpu")
    assert isinstance(r.model, Net) and r.accuracy is not None


def test_attack_accuracy_is_the_default_layout_accuracy(toy, model):
    """The attack evaluates channels-last in small batches: the accuracy the default layout gives at batch 512,
    and the attacked model comes back contiguous."""
    from domainlock.utils.layout import set_channels_last

    train, test = toy
    r = finetune_attack(model, train, 20, protocol=FAST, seed=0, target_test=test, device="cpu")
    assert all(p.is_contiguous() for p in r.model.parameters())
    previous = set_channels_last(False)
    try:
        plain = accuracy(r.model, test, batch_size=512)
    finally:
        set_channels_last(previous)
    assert r.accuracy == plain


# ------------------------------------------------------------------------------------------------ curves, SLC-AUC
def test_learning_curve_is_cached_per_point(toy, model, tmp_path, monkeypatch):
    train, test = toy
    cache = PointCache(tmp_path / "cache")
    c1 = learning_curve(model, train, test, [10, 20], protocol=FAST, seeds=[0, 1], from_scratch=True, cache=cache,
                        device="cpu")
    assert cache.misses == 4 and cache.hits == 0 and len(list((tmp_path / "cache").glob("scratch-*.json"))) == 4
    assert c1.accuracy == pytest.approx([(c1.per_seed[0][i] + c1.per_seed[1][i]) / 2 for i in range(2)])

    def boom(*a, **k):
        raise AssertionError("a cached point was trained again")

    monkeypatch.setattr("domainlock.attacks.slc.finetune_attack", boom)
    # scratch depends only on the architecture: another model of the same arch reuses the points
    other = pruned(build_model("digitnet", width=4, feat_dim=16))
    c2 = learning_curve(other, train, test, [10, 20], protocol=FAST, seeds=[0, 1], from_scratch=True, cache=cache,
                        device="cpu")
    assert c2.per_seed == c1.per_seed and cache.hits == 4 and all(p["cached"] for p in c2.points)
    # the lr of inherited weights cannot change a random-init start: same key
    learning_curve(model, train, test, [10, 20], protocol=AttackProtocol(**{**FAST.to_dict(), "lr_pretrained": 1.0}),
                   seeds=[0, 1], from_scratch=True, cache=cache, device="cpu")
    assert cache.hits == 8
    with pytest.raises(AssertionError, match="trained again"):   # a new protocol is a new key
        learning_curve(model, train, test, [10, 20], protocol=AttackProtocol(steps=5, epochs=1, augment="none"),
                       from_scratch=True, cache=cache, device="cpu")


def test_slc_end_to_end(toy, model, tmp_path):
    train, test = toy
    src = model
    prot = pruned(finetune_mod.copy.deepcopy(model), 0.6)
    res = slc(prot, (train, test), [10, 20, 40], protocol=FAST, seeds=[0], unprotected=src,
              cache=PointCache(tmp_path / "c"), progress=False, device="cpu")
    assert [c.start for c in (res.protected, res.scratch, res.unprotected)] == ["protected", "scratch", "unprotected"]
    d = [a - b for a, b in zip(res.protected.accuracy, res.scratch.accuracy, strict=True)]
    assert res.score.d == pytest.approx(tuple(d))
    assert -1 <= res.score.normalized <= 1 and res.unprotected_score is not None
    assert res.score_per_seed[0].normalized == pytest.approx(res.score.normalized)
    table = res.table()
    assert table.splitlines()[0].split() == ["n", "protected", "scratch", "unprotected", "d"]
    assert "SLC-AUC (dense attacker, reinit-head+all, toy, seeds 0)" in res.summary()
    blob = json.loads(json.dumps(res.as_dict()))
    assert blob["attacker"] == "dense" and set(blob["curves"]) == {"protected", "scratch", "unprotected"}
    pytest.importorskip("matplotlib")
    out = plot_slc(res, tmp_path / "slc.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(OutputExistsError):
        plot_slc(res, tmp_path / "slc.png")


def test_slc_checks_every_shot_before_training(toy, model, monkeypatch):
    monkeypatch.setattr("domainlock.attacks.slc.finetune_attack", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(SampleCountError, match="n=500 exceeds"):
        slc(model, toy, [10, 500], protocol=FAST, cache=False, progress=False)
    with pytest.raises(DomainlockError, match="strictly increasing"):
        slc(model, toy, [20, 10], protocol=FAST, cache=False, progress=False)
    with pytest.raises(UnknownChoiceError, match="strategy"):
        slc(model, toy, [10, 20], strategy="nope", protocol=FAST, cache=False, progress=False)
    with pytest.raises(DomainlockError, match="distinct"):
        slc(model, toy, [10, 20], seeds=[0, 0], protocol=FAST, cache=False, progress=False)
