"""Model registry, the Classifier encoder/head contract, and adapters for users' own modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from domainlock.errors import DomainlockError, UnknownChoiceError
from domainlock.models import (
    ARCHS,
    Classifier,
    Normalize,
    arch_names,
    as_classifier,
    build_model,
    count_params,
    register_arch,
    split_model,
    wrap_model,
)

EXPECTED = {"digitnet", "resnet18", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn",
            "vgg19_bn"}


def test_registry_lists_all_archs():
    assert EXPECTED <= set(arch_names())
    # ``imported`` is built only from an artifact's card (it names the user's builder file): not a choice
    from domainlock.models import UNLISTED

    assert UNLISTED == {"imported"} and set(arch_names()) == set(ARCHS) - UNLISTED


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_every_arch_builds_and_splits(arch):
    torch.manual_seed(0)
    m = build_model(arch, num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = m(x)
        feats = m.features(x)
        composed = m.head(m.encoder(x))
    assert out.shape == (2, 10)
    assert feats.ndim == 2 and feats.shape[0] == 2
    assert torch.equal(out, composed)
    assert isinstance(m.encoder[0], Normalize)  # every model takes [0, 1] images
    assert m.arch == arch and m.num_classes == 10
    enc, head = split_model(m)
    assert enc is m.encoder and head is m.head
    norm = m.normalization
    assert norm is not None and len(norm["mean"]) == 3 and len(norm["std"]) == 3


@pytest.mark.parametrize("arch", ["vgg13_bn", "vgg11", "resnet18"])
def test_cifar_size_archs_take_64_px_images(arch):
    """NTLBench's protocol is 64 px: the same networks (and parameters) take it, ending in 512 features."""
    torch.manual_seed(0)
    m = build_model(arch, num_classes=9).eval()
    n32 = sum(p.numel() for p in m.parameters())
    with torch.no_grad():
        out, feats = m(torch.rand(2, 3, 64, 64)), m.features(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 9) and feats.shape == (2, 512) and n32 == sum(p.numel() for p in m.parameters())


def test_param_counts_are_sane():
    counts = {a: count_params(build_model(a)) for a in ("digitnet", "vgg11", "vgg16", "vgg19_bn", "resnet18")}
    assert 100_000 < counts["digitnet"] < 2_000_000
    assert 9_000_000 < counts["vgg11"] < 10_500_000
    assert 14_500_000 < counts["vgg16"] < 15_500_000
    assert 20_000_000 < counts["vgg19_bn"] < 21_000_000
    assert 11_000_000 < counts["resnet18"] < 11_400_000  # the classic CIFAR ResNet-18: 11.17 M


def test_num_classes_and_kwargs_are_recorded():
    m = build_model("digitnet", num_classes=7, width=8, feat_dim=32)
    assert m(torch.rand(3, 3, 32, 32)).shape == (3, 7)
    assert m.arch_kwargs == {"width": 8, "feat_dim": 32}
    assert m.features(torch.rand(3, 3, 32, 32)).shape == (3, 32)


def test_normalize_is_applied_and_stored():
    m = build_model("digitnet", mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    assert m.normalization == {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]}
    sd = m.state_dict()
    assert "encoder.0.mean" in sd and "encoder.0.std" in sd
    n = Normalize((0.5,), (0.25,))
    assert torch.allclose(n(torch.full((1, 1, 2, 2), 1.0)), torch.full((1, 1, 2, 2), 2.0))
    with pytest.raises(DomainlockError):
        Normalize((0.5, 0.5), (1.0, 0.0))


def test_unknown_arch_and_bad_num_classes():
    with pytest.raises(UnknownChoiceError) as e:
        build_model("alexnet")
    assert "digitnet" in str(e.value) and "arch" in str(e.value)
    with pytest.raises(DomainlockError):
        build_model("digitnet", num_classes=1)


def test_register_arch_adds_a_builder():
    name = "test-tiny-arch"

    @register_arch(name)
    def tiny(num_classes=10):
        return Classifier(nn.Sequential(Normalize(), nn.Flatten(1)), nn.Linear(3 * 32 * 32, num_classes))

    try:
        m = build_model(name, num_classes=4)
        assert m(torch.rand(1, 3, 32, 32)).shape == (1, 4) and m.arch == name
        with pytest.raises(DomainlockError):
            register_arch(name)(lambda num_classes=10: None)
    finally:
        ARCHS.pop(name, None)


class VGGLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def test_wrap_model_matches_the_users_forward():
    torch.manual_seed(0)
    user = VGGLike().eval()
    m = wrap_model(user, encoder="features", head="classifier")
    x = torch.rand(2, 3, 32, 32)
    assert isinstance(m, Classifier)
    assert torch.allclose(m(x), user(x))
    assert m.features(x).shape == (2, 16)
    assert m.head is user.classifier  # shared, not copied
    assert m.arch == "custom:VGGLike"


def test_wrap_model_names_missing_submodules():
    with pytest.raises(DomainlockError, match="no submodule 'backbone'.*features, classifier"):
        wrap_model(VGGLike(), encoder="backbone")


class WithAttrs(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(1), nn.Linear(3 * 32 * 32, 8))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.encoder(x))


class Declared(nn.Module):
    domainlock_split = ("body", "fc")

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(1), nn.Linear(3 * 32 * 32, 8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.body(x))


def test_split_model_accepts_named_splits():
    a = WithAttrs()
    assert split_model(a) == (a.encoder, a.head)
    d = Declared()
    assert split_model(d) == (d.body, d.fc)
    x = torch.rand(2, 3, 32, 32)
    c = as_classifier(d)
    assert torch.allclose(c(x), d(x))
    m = build_model("digitnet")
    assert as_classifier(m) is m


def test_split_model_error_says_how_to_name_the_split():
    with pytest.raises(DomainlockError) as e:
        split_model(VGGLike())
    msg = str(e.value)
    assert "wrap_model" in msg and "domainlock_split" in msg and "encoder" in msg and "head" in msg

    class Bad(nn.Module):
        domainlock_split = "body"

    with pytest.raises(DomainlockError, match="pair of attribute names"):
        split_model(Bad())


def test_reinitialize_redraws_every_layer_reproducibly_and_resets_batchnorm():
    from domainlock.models import reinitialize

    a, b = build_model("digitnet"), build_model("digitnet")
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for m in a.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(3.0)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    assert reinitialize(a, 7) is a
    reinitialize(b, 7)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k          # same seed, same draw
    conv = next(k for k, v in before.items() if v.dim() == 4 and k.endswith("weight"))
    assert not torch.equal(a.state_dict()[conv], before[conv])
    for m in a.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
