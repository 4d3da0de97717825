"""MAP (sa-map, sf-map, df-map): the loss on hand-made logits, identity at zero steps, weights only masked,
BN statistics untouched, what each setting reads, hyper-parameter validation, registration."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import toys
from domainlock.errors import DomainlockError
from domainlock.methods import DataAccess, RunContext, get_method, method_names, protect
from domainlock.methods.map import (
    TARGET_LOSSES,
    MAPConfig,
    map_loss,
    max_damage,
    source_kl,
    target_damage,
    validate_config,
)
from domainlock.synthesis.neighbours import neighbour_families
from toys import C, Loader, toy


def tiny_model(seed: int = 0):
    m = toys.tiny_model(seed)
    with torch.no_grad():  # non-trivial BN statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def fast(**kw) -> MAPConfig:
    base = {"steps": 12, "batch_size": 16, "lr": 0.05, "eval_every": 4, "val_size": 16, "select": "last",
            "pseudo_source_size": 32, "early_stop": 0.0}
    return MAPConfig(**{**base, **kw})


def ctx() -> RunContext:
    return RunContext(device=torch.device("cpu"), seed=0, progress=False)


# tiny models gain nothing from 2 threads, and on a busy machine OpenMP spinning makes them 10-40x slower
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fake_synthesis(monkeypatch):
    """Replace the (slow) model inversion by random images; record that it ran."""
    import domainlock.synthesis.inversion as syn

    calls = []

    def fake(model, n, *, device="cpu", seed=0, progress=True, cfg=None):
        calls.append(n)
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % C

    monkeypatch.setattr(syn, "synthesize_pseudo_source", fake)
    return calls


# ------------------------------------------------------------------------------------------ the loss


def test_source_kl_on_hand_made_logits():
    t = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    s = torch.tensor([[1.0, 1.0, 0.0, 0.0], [3.0, 0.0, 0.0, -2.0]])
    p, q = t.softmax(1), s.softmax(1)
    want = (p * (p.log() - q.log())).sum(1).mean()
    assert torch.allclose(source_kl(t, s), want, atol=1e-6)
    assert float(source_kl(t, t)) == pytest.approx(0.0, abs=1e-7)
    pt, qt = (t / 2).softmax(1), (s / 2).softmax(1)
    assert torch.allclose(source_kl(t, s, temperature=2.0), (pt * (pt.log() - qt.log())).sum(1).mean(), atol=1e-6)


def test_each_target_damage_on_hand_made_logits():
    logits = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    logp = logits.log_softmax(1)
    # pseudo-kl with one-hot pseudo-labels = -log p_m(label)
    d = target_damage("pseudo-kl", logits, pseudo=torch.tensor([0, 2]))
    assert torch.allclose(d, -logp[[0, 1], [0, 2]], atol=1e-6)
    # soft pseudo-labels: KL(q || p)
    q = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    d = target_damage("pseudo-kl", logits, pseudo=q)
    want = torch.stack([(0.5 * (math.log(0.5) - logp[0, :2])).sum(), (0.25 * (math.log(0.25) - logp[1])).sum()])
    assert torch.allclose(d, want, atol=1e-6)
    # uniform: log C - KL(u || p); maximal (= log C) at the uniform prediction
    d = target_damage("uniform", logits)
    kl_u = (0.25 * (math.log(0.25) - logp)).sum(1)
    assert torch.allclose(d, math.log(C) - kl_u, atol=1e-6)
    assert float(d[1]) == pytest.approx(math.log(C))
    # garbage: log C + log p(g); maximal (log C) when everything is class g
    d = target_damage("garbage", logits, garbage_class=0)
    assert torch.allclose(d, math.log(C) + logp[:, 0], atol=1e-6)
    assert float(target_damage("garbage", torch.tensor([[50.0, 0, 0, 0]]), garbage_class=0)) == \
        pytest.approx(math.log(C), abs=1e-6)
    with pytest.raises(DomainlockError):
        target_damage("garbage", logits, garbage_class=C)
    # feature-collapse: 1 - |z_i - mean z|^2 / (mean source spread); identical features -> 1
    ft = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    fs = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    d = target_damage("feature-collapse", logits, feats_t=ft, feats_s=fs)
    assert torch.allclose(d, torch.tensor([1 - 1 / 4, 1 - 1 / 4]))
    same = torch.ones(2, 2)
    assert torch.allclose(target_damage("feature-collapse", logits, feats_t=same, feats_s=fs), torch.ones(2))


def test_map_loss_combines_terms_and_caps_damage():
    t = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0]])
    s = t + torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])
    lt = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    pseudo = torch.tensor([1, 3])           # damages: large for row 0, small for row 1
    dt = target_damage("pseudo-kl", lt, pseudo=pseudo)
    assert float(dt[0]) > 2.0 > float(dt[1])
    for beta in (100.0, 2.0, 0.01):
        out = map_loss(t, s, lt, target_loss="pseudo-kl", alpha=0.7, beta=beta, pseudo=pseudo, source_ce=0.0)
        want_cap = torch.clamp(dt, max=beta).mean()   # the cap is per target image
        assert torch.allclose(out.capped, want_cap, atol=1e-6)
        assert torch.allclose(out.total, source_kl(t, s) - 0.7 * want_cap, atol=1e-6)
        assert torch.allclose(out.damage, dt.mean(), atol=1e-6)
    # the extra source cross-entropy to the source model's hard predictions
    out = map_loss(t, s, lt, target_loss="uniform", alpha=0.0, source_ce=0.5)
    want = source_kl(t, s) + 0.5 * F.cross_entropy(s, t.argmax(1))
    assert torch.allclose(out.total, want, atol=1e-6)
    # an L1 penalty is added as is
    out2 = map_loss(t, s, lt, target_loss="uniform", alpha=0.0, source_ce=0.5, penalty=torch.tensor(0.25))
    assert float(out2.total - out.total) == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------ the method


def _assert_identical(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("kw", [{"alpha": 0.0, "lr": 0.0}, {"steps": 0}])
def test_zero_update_returns_the_source_model_exactly(kw):
    src = tiny_model()
    res = get_method("sa-map").run(tiny_model(), DataAccess("source-available", "src", "tgt", loader=Loader()),
                                    fast(**kw), ctx())
    _assert_identical(res.model, src)
    assert res.info["sparsity"] == 0.0
    x = toy("tgt", "test").x
    with torch.no_grad():
        assert torch.equal(res.model.eval()(x), src(x))


@pytest.mark.parametrize("target_loss", TARGET_LOSSES)
def test_weights_are_only_masked_and_bn_statistics_unchanged(target_loss):
    src = tiny_model()
    work = tiny_model()
    hp = fast(target_loss=target_loss, lr=0.2, steps=10)
    res = get_method("sa-map").run(work, DataAccess("source-available", "src", "tgt", loader=Loader()), hp, ctx())
    _assert_identical(work, src)                      # the frozen teacher itself is never changed
    out, ref = res.model.state_dict(), src.state_dict()
    assert out.keys() == ref.keys()
    pruned = 0
    for k, v in ref.items():
        w = out[k]
        if k.endswith(".weight") and v.dim() >= 2:   # conv / linear weights: source value or 0
            assert torch.all((w == v) | (w == 0)), k
            pruned += int(((w == 0) & (v != 0)).sum())
        else:                                         # biases, BN affine and running statistics: untouched
            assert torch.equal(w, v), k
    assert pruned > 0, "lr 0.2 for 10 steps should prune something"
    assert res.info["sparsity"] > 0
    assert 0.0 <= res.info["worst_source_acc"] <= 1.0
    assert {"final_losses", "steps", "history", "source_val_acc_before"} <= set(res.info)


def test_guard_selection_never_returns_a_worse_held_out_source():
    hp = fast(lr=0.5, steps=12, select="guard", guard_tol=0.0, alpha=5.0)
    res = get_method("sa-map").run(tiny_model(), DataAccess("source-available", "src", "tgt", loader=Loader()),
                                    hp, ctx())
    assert res.info["source_val_acc_after"] >= res.info["source_val_acc_before"]


def test_max_damage_is_the_cap_of_each_target_term():
    assert max_damage("garbage", 5.0, 10) == pytest.approx(math.log(10))
    assert max_damage("uniform", 1.0, 10) == 1.0                  # beta below ln C binds
    assert max_damage("feature-collapse", 5.0, 10) == 1.0
    assert max_damage("pseudo-kl", 3.0, 10) == 3.0


def _run_sa(hp):
    return get_method("sa-map").run(tiny_model(), DataAccess("source-available", "src", "tgt", loader=Loader()),
                                    hp, ctx())


def test_early_stop_needs_both_the_source_guard_and_the_target_damage():
    # a trivially reached damage bar and a guard that always passes: stop at the first evaluation
    res = _run_sa(fast(select="guard", guard_tol=1.0, early_stop=1e-6, steps=12, eval_every=4))
    assert res.info["early_stopped"] and res.info["steps_run"] == 4 and res.info["selected_step"] == 4
    assert len(res.info["history"]) == 2 and "window_damage" in res.info["history"][-1]
    # the damage bar at its largest value is never reached: every step runs
    res = _run_sa(fast(select="guard", guard_tol=1.0, early_stop=1.0, steps=12, eval_every=4))
    assert not res.info["early_stopped"] and res.info["steps_run"] == 12
    # a guard that never passes (no drop allowed, a destructive step size) never stops early
    res = _run_sa(fast(select="guard", guard_tol=0.0, early_stop=1e-6, steps=12, eval_every=4, lr=0.5, alpha=5.0))
    passed = [h for h in res.info["history"][1:] if h["val_acc"] >= res.info["source_val_acc_before"]]
    assert res.info["early_stopped"] == bool(passed)
    if not passed:
        assert res.info["steps_run"] == 12


def test_sa_map_reads_source_images_and_no_target_labels_by_default():
    loader = Loader()
    access = DataAccess("source-available", "src", "tgt", loader=loader)
    res = get_method("sa-map").run(tiny_model(), access, fast(), ctx())
    assert sorted(set(access.reads)) == ["source:src:train", "source:src:val", "target:tgt:train"]
    assert res.info["used_target_labels"] is False


def test_sf_map_never_loads_the_source(fake_synthesis):
    loader = Loader(forbid=("src",))
    access = DataAccess("source-free", "src", "tgt", loader=loader)
    res = get_method("sf-map").run(tiny_model(), access, fast(), ctx())
    assert fake_synthesis == [32]
    assert all(name != "src" for name, _ in loader.calls)
    assert access.reads == ["target:tgt:train"]
    assert res.info["pseudo_source_size"] == 32 and "pseudo_source_s" in res.info


@pytest.mark.parametrize("copies", [0, 2])
def test_df_map_never_calls_the_loader(fake_synthesis, copies):
    loader = Loader(forbid=("src", "tgt"))
    access = DataAccess("data-free", "src", None, loader=loader)
    res = get_method("df-map").run(tiny_model(), access, fast(neighbour_copies=copies), ctx())
    assert loader.calls == [] and access.reads == []
    if copies:
        assert res.info["neighbours"] == copies * res.info["pseudo_source_train"]
    else:
        assert res.info["neighbours"] == "fresh per step"


def test_saved_pseudo_source_is_used_and_checked(tmp_path):
    from domainlock.synthesis import PseudoSource, save_pseudo_source

    model = tiny_model()
    x = (torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).round() / 255
    with torch.no_grad():
        pred = model(x).argmax(1)
    save_pseudo_source(PseudoSource(x, pred, {}), tmp_path / "mine")
    save_pseudo_source(PseudoSource(x, (pred + 1) % C, {}), tmp_path / "other")
    access = DataAccess("data-free", "src", None, loader=Loader(forbid=("src", "tgt")))
    res = get_method("df-map").run(model, access, fast(pseudo_source=str(tmp_path / "mine")), ctx())
    assert res.info["pseudo_source_size"] == 32            # subsampled to pseudo_source_size
    assert res.info["pseudo_source_agreement"] == 1.0
    with pytest.raises(DomainlockError, match="not made from this model"):
        get_method("df-map").run(model, access, fast(pseudo_source=str(tmp_path / "other")), ctx())


def test_protect_end_to_end_with_injected_loader(fake_synthesis):
    """Through protect(): the card records the method's reads (protect's own test-split evaluation aside)."""
    loader = Loader()
    res = protect(tiny_model(), "sf-map", source="src", target="tgt", hparams=fast(), loader=loader,
                  device="cpu", progress=False)
    assert [c for c in loader.calls if c[0] == "src" and c[1] != "test"] == []
    prot = res.card["protection"]
    assert prot["data_read"] == ["target:tgt:train"]
    assert prot["info"]["pseudo_source_size"] == 32


def test_real_synthesis_and_neighbours_integrate():
    """The other engineer's synthesis and neighbours, called for real at a tiny size."""
    loader = Loader(forbid=("src", "tgt"))
    res = get_method("df-map").run(tiny_model(), DataAccess("data-free", "src", None, loader=loader),
                                   fast(pseudo_source_size=16, steps=4, neighbour_copies=1, synthesis_steps=2), ctx())
    assert res.info["pseudo_source_size"] == 16 and loader.calls == []
    q = res.info["pseudo_source_quality"]
    json.dumps(q)   # JSON-able, so the card and the bench result can hold it
    assert q["n"] == 16 and q["bn_distance"] >= 0 and 0 <= q["class_coverage"]["entropy"] <= 1
    assert set(q["neighbours"]) == set(neighbour_families()) and q["neighbour_sample"] == 16
    x8, y = res.extras["pseudo_source_grid"]
    assert x8.dtype == torch.uint8 and len(x8) == len(y) and all(int((y == c).sum()) <= 2 for c in y.unique())


def test_synthesis_gray_reaches_the_synthesis():
    access = DataAccess("source-free", "src", "tgt", loader=Loader(forbid=("src",)))
    res = get_method("sf-map").run(tiny_model(), access,
                                   fast(pseudo_source_size=16, steps=2, synthesis_steps=2, synthesis_gray=True),
                                   ctx())
    cfg = res.info["pseudo_source_synthesis"]["config"]
    assert cfg["gray"] is True and cfg["steps"] == 2


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("bad", [
    {"alpha": -0.1}, {"alpha": float("nan")}, {"beta": 0.0}, {"beta": -1.0}, {"max_sparsity": 1.5},
    {"max_sparsity": -0.1}, {"lr": -1e-3}, {"lr": 2.0}, {"lr": float("inf")}, {"steps": -1}, {"steps": 2.5},
    {"batch_size": 1}, {"target_loss": "entropy"}, {"optimizer": "rmsprop"}, {"garbage_class": -2},
    {"warmup": 1.5}, {"momentum": 1.0}, {"l1": -1.0}, {"init_score": -1.0}, {"layers": "attention"},
    {"source_ce": -1.0}, {"temperature": 0.0}, {"eval_every": 0}, {"early_stop": 1.5}, {"early_stop": -0.1},
])
def test_validate_rejects_out_of_range_values_with_one_line(bad):
    hp = MAPConfig(**bad)
    with pytest.raises(DomainlockError) as e:
        validate_config(hp)
    msg = str(e.value)
    assert "\n" not in msg and msg
    name, value = next(iter(bad.items()))
    assert name in msg or repr(value) in msg or name.replace("_", " ") in msg


def test_validate_accepts_defaults_and_rejects_target_labels_without_target():
    for name in ("sa-map", "sf-map", "df-map"):
        m = get_method(name)
        m.validate(MAPConfig(), m.settings[0])
    with pytest.raises(DomainlockError):
        get_method("df-map").validate(MAPConfig(use_target_labels=True), "data-free")


def test_methods_are_registered_with_their_settings():
    names = method_names()
    assert {"sa-map", "sf-map", "df-map"} <= set(names)
    assert get_method("sa-map").settings == ("source-available",)
    assert get_method("sf-map").settings == ("source-free",)
    assert get_method("df-map").settings == ("data-free",)
    assert not get_method("df-map").needs_target
    for name in ("sa-map", "sf-map", "df-map"):
        assert issubclass(get_method(name).Hparams, MAPConfig)


def test_config_fields_are_flat_cli_flags():
    import argparse
    import dataclasses

    from domainlock.utils.hparams import add_dataclass_args, dataclass_from_args

    ap = argparse.ArgumentParser()
    add_dataclass_args(ap, MAPConfig)
    args = ap.parse_args(["--target-loss", "uniform", "--alpha", "0.5", "--exclude-last", "--steps", "7"])
    hp = dataclass_from_args(MAPConfig, args)
    assert (hp.target_loss, hp.alpha, hp.exclude_last, hp.steps) == ("uniform", 0.5, True, 7)
    for f in dataclasses.fields(MAPConfig):
        assert f.metadata.get("help"), f.name
        assert f.type in ("int", "float", "str", "bool", int, float, str, bool), f.name


def test_pseudo_source_settings_keep_their_gentler_defaults_and_share_every_flag():
    from dataclasses import fields

    from domainlock.methods.map import PseudoSourceMAPConfig

    sa, sf, df = (get_method(n).Hparams() for n in ("sa-map", "sf-map", "df-map"))
    assert type(sa) is MAPConfig and type(sf) is type(df) is PseudoSourceMAPConfig
    assert (sa.alpha, sa.lr, sa.steps, sa.early_stop) == (0.3, 3e-3, 600, 0.98)
    assert (sf.alpha, sf.lr, sf.steps, sf.early_stop) == (1.0, 1e-3, 200, 0.0)
    assert [f.name for f in fields(sf)] == [f.name for f in fields(sa)]
    validate_config(sf)
