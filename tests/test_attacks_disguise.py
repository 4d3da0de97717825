"""Test-time input disguising (JailNTL): what it reads and never reads, its black-box gradient estimator, that it
changes nothing where nothing needs changing, and that it recovers a toy non-transferable model's target.

The toy: four classes, a bright 4x4 square in one of four positions of a 12x12 image, drawn in channel 0 (red) on
the source and channel 2 (blue) on the target. The protected model is trained NTL-style: source images with
their labels, target images all labelled "0", so it is right on the source and collapses the target to one class
(25 %). A per-pixel colour map (blue to red) undoes the shift, and the translator, which starts as the identity,
finds it; its objective never sees a label, so accuracy is the evaluator's check.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from domainlock.attacks import QueryOnly, ThreatModel, get_attack, run_attack
from domainlock.attacks.disguise import DisguiseParams, block_directions, estimate_vjp, guided_loss, train_disguise
from domainlock.data import DomainData
from domainlock.errors import DomainlockError
from domainlock.evaluation import accuracy
from domainlock.training.loop import TrainConfig, fit
from toys import Loader, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 12
#: settings of a test run: a narrow translator, small batches, a rate for a few hundred steps
FAST = {"fraction": 1.0, "p": 1.0, "batch_size": 8, "width": 8, "lr": 3e-3}


def squares(name: str, split: str, n: int = 64) -> DomainData:
    g = torch.Generator().manual_seed(sum(map(ord, name + split)))
    y = torch.arange(n) % 4
    x = 0.3 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    ch = 2 if name == "tgt" else 0
    for i, k in enumerate(y.tolist()):
        r, c = divmod(k, 2)
        x[i, ch, 1 + 6 * r: 5 + 6 * r, 1 + 6 * c: 5 + 6 * c] += 0.6
    return DomainData(name, split, x.clamp(0, 1), y, 4)


def serve(name, split, root=None):
    return squares(name, split)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Flatten(), nn.Linear(8 * 3 * 3, 16), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.encoder(x))


@pytest.fixture(scope="module")
def protected():
    torch.manual_seed(0)
    src, tgt = squares("src", "train", 128), squares("tgt", "train", 128)
    both = DomainData("ntl", "train", torch.cat([src.x, tgt.x]), torch.cat([src.y, torch.zeros_like(tgt.y)]), 4)
    model = Net()
    fit(model, both, None, TrainConfig(epochs=15, batch_size=32, lr=0.05, augment="none", select="last",
                                       label_smoothing=0, channels_last=False), device="cpu", progress=False)
    return model.eval()


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------ the door
def test_reads_unlabelled_target_and_source_images_only(protected):
    loader = Loader()
    before = _weights(protected)
    params = DisguiseParams(fraction=0.5, p=1.0, steps=3, batch_size=4, width=4)
    r = run_attack(tiny_model(), "disguise", target="tgt", source="src", params=params, loader=loader, device="cpu")
    assert r.reads == ["target:tgt:train", "source:src:train"]
    assert loader.calls == [("tgt", "train"), ("src", "train"), ("tgt", "test"), ("src", "test")]  # test: evaluator
    assert isinstance(r.model.protected, QueryOnly)      # black box: the attack held a query-only view
    assert r.info["queries"] == 3 * 4 * (2 * 8 + 1) + 24 and r.info["target_images"] == 24
    threat = get_attack("disguise").threat(DisguiseParams())
    assert threat == ThreatModel(target_unlabelled=0.1, source_fraction=0.01, white_box=False)
    assert threat.describe().startswith("query access to the outputs only")
    for white in (False, True):       # the copy the attack held keeps its weights: the translator is trained
        r = run_attack(protected, "disguise", target="tgt", source="src", loader=serve, device="cpu",
                       params=DisguiseParams(**FAST, steps=2, white_box=white))
        held = r.model.protected if white else r.model.protected._model
        assert isinstance(r.model.protected, nn.Module) == white
        after = held.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before.items())
        assert all(p.grad is None for p in held.parameters())


def test_never_uses_source_labels():
    def scrambled(name, split, root=None):
        data = Loader()(name, split, root)
        if name == "src":
            perm = torch.randperm(len(data.y), generator=torch.Generator().manual_seed(5))
            return DomainData(data.name, split, data.x, data.y[perm], data.num_classes)
        return data

    params = DisguiseParams(fraction=0.5, p=1.0, steps=3, batch_size=4, width=4)
    a, b = (run_attack(tiny_model(), "disguise", target="tgt", source="src", params=params, loader=ld, device="cpu")
            for ld in (Loader(), scrambled))
    for k, v in a.model.translator.state_dict().items():
        assert torch.equal(v, b.model.translator.state_dict()[k]), k


def test_without_a_source_domain_says_to_name_it():
    with pytest.raises(DomainlockError, match=r"name the source domain \(--source\)") as e:
        run_attack(tiny_model(), "disguise", target="tgt", loader=Loader(), device="cpu")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad, name", [({"p": 0.0}, "p=0.0"), ({"fraction": 1.5}, "fraction=1.5"),
                                       ({"directions": 0}, "directions=0"), ({"sigma": -1.0}, "sigma=-1.0"),
                                       ({"white_box": "yes"}, "white_box='yes'"), ({"block": 0}, "block=0")])
def test_bad_parameters_are_one_line_errors(bad, name):
    with pytest.raises(DomainlockError, match=name) as e:
        DisguiseParams(**bad)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ the estimator
def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def test_finite_differences_estimate_the_vector_jacobian_product():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 5, generator=g)

    def f(x):
        return torch.softmax(torch.tanh(x.flatten(1)) @ w, dim=1)

    x = torch.rand(3, 2, 4, 4, generator=g).requires_grad_(True)
    v = torch.randn(3, 5, generator=g)
    (true,) = torch.autograd.grad((f(x) * v).sum(), x)
    est = estimate_vjp(f, x.detach(), v, directions=400, sigma=1e-3, generator=g)
    assert _cos(est, true).min() > 0.8
    assert (est.norm() / true.norm()).item() == pytest.approx(1.0, abs=0.35)     # unbiased: the right scale
    few = estimate_vjp(f, x.detach(), v, directions=4, sigma=1e-3, generator=g)
    assert _cos(few, true).mean() < _cos(est, true).mean()
    # on 2x2 blocks it estimates the block-mean gradient
    blocks = nn.functional.avg_pool2d(true, 2).repeat_interleave(2, -2).repeat_interleave(2, -1)
    est = estimate_vjp(f, x.detach(), v, directions=200, sigma=1e-3, block=2, generator=g)
    assert _cos(est, blocks).min() > 0.8


def test_block_directions_are_constant_on_blocks_with_cropped_edges():
    u, area = block_directions(2, (1, 5, 5), 2, torch.Generator().manual_seed(0))
    assert u.shape == (2, 1, 5, 5) and torch.equal(u[:, :, 0, 0], u[:, :, 1, 1])
    assert area[0, 0] == 4 and area[4, 0] == 2 and area[4, 4] == 1


# ------------------------------------------------------------------------------------------------ it works
def test_the_translator_learns_identity_when_the_domains_are_the_same(protected):
    own = accuracy(protected, squares("same", "test"), device="cpu")
    r = run_attack(protected, "disguise", target="same", source="src", loader=serve, device="cpu",
                   params=DisguiseParams(**FAST, steps=60))
    assert r.info["change"] < 0.01                      # mean |T(x) − x| on the attacker's images
    assert r.target_acc == pytest.approx(own, abs=0.03) and own > 0.95


def test_disguise_recovers_the_target_of_a_non_transferable_model(protected):
    before = accuracy(protected, squares("tgt", "test"), device="cpu")
    assert before == pytest.approx(0.25, abs=0.05)
    r = run_attack(protected, "disguise", target="tgt", source="src", loader=serve, device="cpu",
                   params=DisguiseParams(**FAST, steps=200))
    assert r.target_acc >= before + 0.5, (before, r.target_acc)
    assert r.source_acc > 0.95                           # source images pass the translator unharmed
    hist = r.info["history"]
    assert len(hist) == 10 and hist[-1]["guided"] < hist[0]["guided"] - 0.5
    assert r.info["queries"] == 200 * 8 * (2 * 8 + 1) + 64


@pytest.mark.parametrize("white", [False, True])
def test_the_model_guided_terms_alone_make_predictions_confident_and_balanced(white):
    # no adversarial, cycle or identity term: only the model-guided terms (estimated, or backpropagated) move it
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    model = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(3 * 2 * 2, 4)).eval()
    with torch.no_grad():
        model[2].weight.mul_(10)
        start = float(guided_loss(torch.softmax(model(x), 1), 1.0, 1.0))
    params = DisguiseParams(fraction=1.0, p=1.0, steps=40, batch_size=16, width=8, lr=3e-3, adversarial=0.0,
                            cycle=0.0, directions=32, white_box=white)
    translator, info = train_disguise(model if white else QueryOnly(model, torch.device("cpu")), x, x, params,
                                      torch.device("cpu"))
    with torch.no_grad():
        end = float(guided_loss(torch.softmax(model(translator(x)), 1), 1.0, 1.0))
    assert end < start - 0.2, (start, end)
    assert info["history"][-1]["guided"] < info["history"][0]["guided"] - 0.2
    assert info["queries"] == (40 * 16 + 32 if white else 40 * 16 * (2 * 32 + 1) + 32)
