import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from domainlock.errors import DomainlockError
from domainlock.masking import MaskConfig, MaskedModel, apply_masks
from domainlock.utils.hparams import add_dataclass_args, dataclass_from_args


class SmallCNN(nn.Module):
    """Classifier-like: encoder (nested Sequential, conv with bias, BN) + head."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.5))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.encoder(x))


def _cnn(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    m = SmallCNN()
    with torch.no_grad():  # non-trivial BN statistics
        for bn in (m.encoder[0][1], m.encoder[1][1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return m.eval()


def _x(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _random_masks(mm: MaskedModel, p: float = 0.5, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s.shape, generator=g) >= p for n, s in mm.named_scores()}


def test_all_ones_mask_is_identical_to_source():
    src = _cnn()
    mm = MaskedModel(src).eval()
    assert all(m.all() for m in mm.masks().values())
    with torch.no_grad():
        assert torch.equal(mm(_x()), src(_x()))
    # in train mode too (no dropout difference once dropout is off): BN uses running stats
    src2 = _cnn()
    src2.encoder[4].p = 0.0
    mm2 = MaskedModel(src2).train()
    with torch.no_grad():
        assert torch.equal(mm2(_x()), src2.eval()(_x()))


def test_default_targets_conv_and_linear_weights_only():
    mm = MaskedModel(_cnn())
    assert mm.masked_names == ["encoder.0.0.weight", "encoder.1.0.weight", "head.weight"]
    assert len(mm.score_parameters()) == 3
    assert all(s.requires_grad for s in mm.score_parameters())
    assert all(not p.requires_grad for p in mm.model.parameters()
               if not any(p is s for s in mm.score_parameters()))


def _train_steps(mm: MaskedModel, steps: int = 5, lr: float = 0.5):
    opt = torch.optim.Adam(mm.score_parameters(), lr=lr)
    x, y = _x(16), torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(2))
    mm.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(mm(x), y).backward()
        opt.step()


def test_frozen_weights_and_bn_stats_never_change_during_mask_learning():
    mm = MaskedModel(_cnn())
    before = {k: v.clone() for k, v in mm.model.state_dict().items() if "score" not in k}
    _train_steps(mm, steps=5, lr=0.5)
    assert mm.sparsity().zeros > 0, "lr 0.5 x 5 steps from margin 1 must prune something"
    after = mm.model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    bn = mm.model.encoder[0][1]
    assert not bn.training and mm.model.encoder[4].training  # BN eval, dropout follows train()
    assert int(bn.num_batches_tracked) == 0


def test_bn_stays_eval_even_if_inner_model_switched_to_train():
    mm = MaskedModel(_cnn())
    mm.model.train()  # bypasses MaskedModel.train
    bn = mm.model.encoder[0][1]
    rm = bn.running_mean.clone()
    mm(_x())
    assert not bn.training and torch.equal(bn.running_mean, rm)


def test_user_model_is_not_mutated():
    src = _cnn()
    ref = copy.deepcopy(src)
    mm = MaskedModel(src)
    _train_steps(mm, steps=3)
    mm.fold()
    assert type(src) is SmallCNN and not parametrize.is_parametrized(src.head)
    assert all(p.requires_grad for p in src.parameters())
    for (k, v), (k2, v2) in zip(src.state_dict().items(), ref.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_fold_gives_plain_module_with_same_outputs():
    src = _cnn()
    mm = MaskedModel(src)
    mm.set_masks_from(_random_masks(mm))
    mm.eval()
    folded = mm.fold()
    assert type(folded) is SmallCNN
    for a, b in zip(folded.modules(), src.modules(), strict=True):
        assert type(a) is type(b)
        assert not parametrize.is_parametrized(a)
        assert not a._forward_hooks and not a._forward_pre_hooks and not a._backward_hooks
    assert [n for n, _ in folded.named_parameters()] == [n for n, _ in src.named_parameters()]
    assert not any("score" in k for k in folded.state_dict())
    assert all(p.requires_grad for p in folded.parameters())
    with torch.no_grad():
        assert torch.allclose(folded(_x()), mm(_x()), atol=0, rtol=0)
        w = folded.encoder[0][0].weight
        assert torch.equal(w == 0, ~mm.masks()["encoder.0.0.weight"] | (src.encoder[0][0].weight == 0))
    # folding does not change the masked model
    assert parametrize.is_parametrized(mm.model.head)


def test_ste_gradient_equals_dL_dm_for_linear_by_hand():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3, bias=False)
    mm = MaskedModel(lin)
    x = torch.randn(5, 4)
    g = torch.randn(5, 3)
    (mm(x) * g).sum().backward()
    (score,) = mm.score_parameters()
    # y = x (W*m)^T ; dL/dW_eff = g^T x ; dL/dm = (g^T x) * W
    expected = (g.T @ x) * lin.weight
    assert score.grad is not None and score.grad.abs().sum() > 0
    assert torch.allclose(score.grad, expected, atol=1e-6)
    assert mm.model.parametrizations.weight.original.grad is None


def test_ste_gradient_passes_for_pruned_entries_too():
    lin = nn.Linear(3, 2, bias=False)
    mm = MaskedModel(lin)
    mm.set_masks_from({"weight": torch.zeros(2, 3, dtype=torch.bool)})
    x = torch.randn(4, 3)
    mm(x).sum().backward()
    expected = torch.ones(4, 2).T @ x * lin.weight
    assert torch.allclose(mm.score_parameters()[0].grad, expected, atol=1e-6)


def test_score_below_threshold_zeroes_exactly_that_weight():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    mm = MaskedModel(lin, MaskConfig(threshold=0.2, init_score=0.7))
    with torch.no_grad():
        mm.score_parameters()[0][1, 2] = 0.1999
    w = mm.model.weight
    expected = lin.weight.detach().clone()
    expected[1, 2] = 0
    assert torch.equal(w, expected)
    assert torch.equal(mm.model.bias, lin.bias)  # bias not masked by default
    with torch.no_grad():
        mm.score_parameters()[0][1, 2] = 0.2  # s >= tau keeps
    assert torch.equal(mm.model.weight, lin.weight)


def test_sparsity_report_on_hand_set_mask():
    mm = MaskedModel(_cnn())
    masks = {n: torch.ones(s.shape, dtype=torch.bool) for n, s in mm.named_scores()}
    masks["encoder.0.0.weight"].view(-1)[:54] = False  # 54 of 216
    masks["head.weight"][0] = False  # 32 of 160
    mm.set_masks_from(masks)
    rep = mm.sparsity()
    by = {r.name: r for r in rep.layers}
    assert (by["encoder.0.0.weight"].numel, by["encoder.0.0.weight"].zeros) == (216, 54)
    assert by["encoder.0.0.weight"].fraction == pytest.approx(0.25)
    assert (by["encoder.1.0.weight"].zeros, by["encoder.1.0.weight"].fraction) == (0, 0.0)
    assert (by["head.weight"].numel, by["head.weight"].zeros) == (160, 32)
    assert rep.numel == 216 + 576 + 160 and rep.zeros == 86
    assert rep.fraction == pytest.approx(86 / 952)
    total = sum(p.numel() for p in _cnn().parameters())
    assert rep.model_numel == total and rep.model_fraction == pytest.approx(86 / total)
    assert "total" in str(rep) and rep.as_dict()["layers"][0]["zeros"] == 54
    for name, m in mm.masks().items():
        assert torch.equal(m, masks[name])


def test_reset_scores_restores_identity():
    src = _cnn()
    mm = MaskedModel(src).eval()
    mm.set_masks_from(_random_masks(mm))
    mm.reset_scores()
    with torch.no_grad():
        assert torch.equal(mm(_x()), src(_x()))


def test_set_masks_from_validates():
    mm = MaskedModel(_cnn())
    with pytest.raises(DomainlockError, match="unknown"):
        mm.set_masks_from({"nope.weight": torch.ones(1)})
    with pytest.raises(DomainlockError, match="missing"):
        mm.set_masks_from({"head.weight": torch.ones(5, 32)})
    with pytest.raises(DomainlockError, match="shape"):
        mm.set_masks_from({"head.weight": torch.ones(5, 31)}, strict=False)


def test_linear_only_mlp_and_bias_option():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3))
    mm = MaskedModel(mlp, MaskConfig(include_bias=True))
    assert mm.masked_names == ["1.weight", "1.bias", "3.weight", "3.bias"]
    x = torch.randn(4, 3, 2, 2)
    assert torch.equal(mm(x), mlp(x))
    mm.set_masks_from({"3.bias": torch.tensor([True, False, True])}, strict=False)
    assert mm.model[3].bias[1] == 0 and mm.model[3].bias[0] == mlp[3].bias[0]
    folded = mm.fold()
    assert torch.equal(folded(x), mm(x))


def test_conv_with_bias_masked_weight_and_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(DomainlockError, match="lazy"):
        MaskedModel(net)
    net(_x(2))
    mm = MaskedModel(net)
    mm(_x()).sum().backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in mm.score_parameters())


def test_include_bn_masks_bn_weight():
    src = _cnn()
    mm = MaskedModel(src, MaskConfig(include_bn=True))
    assert "encoder.0.1.weight" in mm.masked_names and "encoder.0.1.bias" not in mm.masked_names
    mm.set_masks_from({"encoder.0.1.weight": torch.tensor([False] + [True] * 7)}, strict=False)
    bn = mm.model.encoder[0][1]
    assert bn.weight[0] == 0 and torch.equal(bn.weight[1:], src.encoder[0][1].weight[1:])
    assert torch.equal(bn.bias, src.encoder[0][1].bias)


def test_layer_filters():
    src = _cnn()
    assert MaskedModel(src, MaskConfig(exclude="head")).masked_names == [
        "encoder.0.0.weight", "encoder.1.0.weight"]
    assert MaskedModel(src, MaskConfig(exclude_first=True, exclude_last=True)).masked_names == [
        "encoder.1.0.weight"]
    assert MaskedModel(src, MaskConfig(include="encoder")).masked_names == [
        "encoder.0.0.weight", "encoder.1.0.weight"]
    assert MaskedModel(src, MaskConfig(layers="linear")).masked_names == ["head.weight"]
    with pytest.raises(DomainlockError, match="matches no module"):
        MaskedModel(src, MaskConfig(exclude="haed"))
    with pytest.raises(DomainlockError, match="excluded"):
        MaskedModel(src, MaskConfig(exclude="encoder,head"))


def test_error_on_model_without_maskable_layer():
    with pytest.raises(DomainlockError, match="model has no Conv/Linear layer to mask; "):
        MaskedModel(nn.Sequential(nn.ReLU(), nn.ReLU()))
    with pytest.raises(DomainlockError, match="torch.nn.Module"):
        MaskedModel(lambda x: x)  # type: ignore[arg-type]


def test_config_validation_and_cli_flags():
    with pytest.raises(DomainlockError, match="init_score"):
        MaskConfig(threshold=1.0, init_score=1.0)
    with pytest.raises(DomainlockError, match="max_sparsity"):
        MaskConfig(max_sparsity=1.5)
    with pytest.raises(DomainlockError, match="layer kind"):
        MaskConfig(layers="conv,attention")
    with pytest.raises(DomainlockError, match="scope"):
        MaskConfig(scope="local")
    import argparse
    p = argparse.ArgumentParser()
    add_dataclass_args(p, MaskConfig, prefix="mask_")
    cfg = dataclass_from_args(MaskConfig, p.parse_args(["--threshold", "0.1", "--include-bn",
                                                        "--scope", "per-layer"]), prefix="mask_")
    assert cfg.threshold == 0.1 and cfg.include_bn and cfg.scope == "per-layer" and cfg.init_score == 1.0


def test_weight_sharing_one_score_and_tie_kept_in_fold():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    src = Tied()
    mm = MaskedModel(src)
    assert mm.masked_names == ["a.weight"] and len(mm.score_parameters()) == 1
    mm.set_masks_from(_random_masks(mm))
    assert torch.equal(mm.model.a.weight, mm.model.b.weight)
    x = torch.randn(3, 4)
    folded = mm.fold()
    assert folded.a.weight is folded.b.weight
    assert torch.equal(folded(x), mm(x))


def test_sub_module_calls_are_masked():
    src = _cnn()
    mm = MaskedModel(src).eval()
    mm.set_masks_from({n: torch.zeros(s.shape, dtype=torch.bool) for n, s in mm.named_scores()})
    with torch.no_grad():
        feats = mm.model.encoder(_x())
    # every conv weight pruned: features are a function of biases and BN only, identical for all inputs
    assert torch.allclose(feats, feats[:1].expand_as(feats))


def test_max_sparsity_budget_global_and_per_layer():
    src = _cnn()
    for scope in ("global", "per-layer"):
        mm = MaskedModel(src, MaskConfig(max_sparsity=0.3, scope=scope))
        assert mm.sparsity().zeros == 0  # step-0 identity holds with a budget
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for s in mm.score_parameters():
                s.copy_(torch.rand(s.shape, generator=g) - 0.9)  # ~90% below tau=0
        rep = mm.sparsity()
        assert rep.fraction <= 0.3 + 1e-9 and rep.fraction > 0.29
        if scope == "per-layer":
            assert all(layer.fraction <= 0.3 + 1e-9 for layer in rep.layers)
        x = _x()
        with torch.no_grad():
            assert torch.equal(mm.eval()(x), mm.fold()(x))


def test_l1_penalty_value_and_gradient():
    mm = MaskedModel(_cnn(), MaskConfig(l1=0.5))
    pen = mm.score_penalty()
    assert pen.item() == pytest.approx(0.5)  # density 1
    pen.backward()
    assert all((s.grad > 0).all() for s in mm.score_parameters())
    mm2 = MaskedModel(_cnn(), MaskConfig(l1=0.0))
    assert mm2.score_penalty().item() == 0.0
    mm3 = MaskedModel(_cnn(), MaskConfig(l1=1.0, scope="per-layer"))
    mm3.set_masks_from({"head.weight": torch.zeros(5, 32)}, strict=False)
    assert mm3.score_penalty().item() == pytest.approx(2 / 3)


def test_magnitude_init_and_apply_masks_overrides():
    src = _cnn()
    mm = apply_masks(src, init_mode="magnitude", threshold=0.0, init_score=1.0)
    s = dict(mm.named_scores())["head.weight"]
    w = src.head.weight.abs()
    assert torch.allclose(s, w / w.mean())
    assert all(m.all() for m in mm.masks().values())


def test_state_dict_round_trip_and_deepcopy():
    src = _cnn()
    mm = MaskedModel(src)
    mm.set_masks_from(_random_masks(mm))
    mm2 = MaskedModel(src)
    mm2.load_state_dict(mm.state_dict())
    for k, v in mm.masks().items():
        assert torch.equal(mm2.masks()[k], v)
    mm3 = copy.deepcopy(mm).eval()
    with torch.no_grad():
        assert torch.equal(mm3(_x()), mm.eval()(_x()))


def test_user_parametrized_model_not_mutated_and_fold_flattens():
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    src = nn.Sequential(weight_norm(nn.Linear(4, 3)), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    ref = src(x).detach()
    mm = MaskedModel(src, MaskConfig(include_bias=True))
    assert torch.equal(mm(x), ref)
    mm.set_masks_from(_random_masks(mm))
    out = mm(x).detach()
    folded = mm.fold()
    assert torch.allclose(folded(x), out, atol=1e-6)
    assert type(folded[0]) is nn.Linear and not parametrize.is_parametrized(folded[0])
    assert torch.equal(mm(x), out)  # folding leaves the masked model working
    assert torch.equal(src(x), ref) and parametrize.is_parametrized(src[0], "weight")
    assert not parametrize.is_parametrized(src[0], "bias")


def test_reset_scores_magnitude_mode():
    src = _cnn()
    mm = MaskedModel(src, MaskConfig(init_mode="magnitude"))
    init = [s.detach().clone() for s in mm.score_parameters()]
    mm.set_masks_from(_random_masks(mm))
    mm.reset_scores()
    for a, b in zip(init, mm.score_parameters(), strict=True):
        assert torch.equal(a, b)
