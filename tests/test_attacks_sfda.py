"""Source-free domain adaptation attacks (SHOT, NRC, AaD): what they read, that they recover accuracy on a toy
domain shift, their building blocks, bad input.

The toy: four classes, a bright square in one of four positions (channel 0). The target adds a "watermark" —
a square of random strength (mean ``MARK`` of the class square) at class 0's position — so the source model
calls part of every other class "0", while each class still forms its own cluster in feature space. The model
is a small BatchNorm-free CNN: re-estimated BatchNorm statistics cannot do an attack's work, only its loss can.

Over 8 source seeds of this toy, SHOT recovered every model whose clusters it could (6/8); NRC and AaD only
those whose every class is mostly predicted right, and AaD needs the milder watermark (0.85; at 0.95 it merges
one class into another even then): the neighbour methods amplify the model's majority per cluster.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from domainlock.attacks import get_attack, run_attack
from domainlock.attacks.sfda import AadParams, MemoryBank, NrcParams, ShotParams, centroid_labels, nrc_affinity
from domainlock.attacks.sfda.aad import dispersion
from domainlock.attacks.sfda.common import diversity, entropy
from domainlock.data import DomainData
from domainlock.errors import DomainlockError
from domainlock.evaluation import accuracy
from domainlock.training.loop import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 4
MARK = {"shot": 0.95, "nrc": 0.95, "aad": 0.85}
FAST = {"fraction": 0.5, "epochs": 1, "steps": 30, "batch_size": 32}
#: AaD's dispersion sums over the batch, a quarter of it the sample's own class with 4 classes; lambda 0.3 keeps
#: the balance the default lambda 1 has at 10 classes and batch 64
PARAMS = {"shot": ShotParams(**FAST), "nrc": NrcParams(**FAST), "aad": AadParams(**FAST, lam=0.3)}


def squares(n: int, seed: int, shifted: float = 0.0, name: str = "src", split: str = "train") -> DomainData:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.3 * torch.rand(n, 3, 32, 32, generator=g)
    mark = shifted + 0.15 * torch.randn(n, generator=g)
    for i, k in enumerate(y.tolist()):
        for pos, level in [(k, 0.6)] + ([(0, 0.6 * float(mark[i]))] if shifted else []):
            r, c = divmod(pos, 2)
            x[i, 0, 4 + 14 * r: 14 + 14 * r, 4 + 14 * c: 14 + 14 * c] += level
    return DomainData(name, split, x.clamp(0, 1), y, 4)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(4),
                                     nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.encoder(x))


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(SEED)
    model = Net()
    fit(model, squares(160, SEED), None, TrainConfig(epochs=6, batch_size=32, lr=0.05, augment="none",
                                                     select="last", label_smoothing=0, channels_last=False,
                                                     seed=SEED), device="cpu", progress=False)
    return model.eval()


def shifted_target(mark: float) -> tuple[DomainData, DomainData]:
    return squares(200, 10 + SEED, mark, "tgt"), squares(200, 20 + SEED, mark, "tgt", "test")


@pytest.fixture(scope="module")
def target():
    return shifted_target(MARK["shot"])


class Recorder:
    """A loader serving the toy target that records every call; ``labels`` replaces the train labels."""

    def __init__(self, target, labels=None):
        self.train, self.test = target
        if labels is not None:
            self.train = DomainData("tgt", "train", self.train.x, labels, 4)
        self.calls: list[tuple[str, str]] = []

    def __call__(self, name, split, root=None):
        self.calls.append((name, split))
        return self.train if split == "train" else self.test


# ------------------------------------------------------------------------------------------------ the door
@pytest.mark.parametrize("name", ["shot", "nrc", "aad"])
def test_reads_only_unlabelled_target_train_images(name, source_model, target):
    params = PARAMS[name]
    true = Recorder(target)
    r1 = run_attack(source_model, name, target="tgt", params=params, loader=true, device="cpu")
    assert r1.reads == ["target:tgt:train"]
    assert true.calls == [("tgt", "train"), ("tgt", "test")]     # the test split: the evaluator's, afterwards
    assert r1.info["select"] == "last"
    constant = Recorder(target, labels=torch.zeros(len(target[0].y), dtype=torch.long))
    r2 = run_attack(source_model, name, target="tgt", params=params, loader=constant, device="cpu")
    for k, v in r1.model.state_dict().items():     # labels of the attacker's images change nothing
        assert torch.equal(v, r2.model.state_dict()[k]), k
    assert get_attack(name).threat(params).describe().endswith("50% of the target data without labels")


@pytest.mark.parametrize("cls", [ShotParams, NrcParams, AadParams])
@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_outside_0_1_is_a_one_line_error(cls, fraction):
    with pytest.raises(DomainlockError, match=r"fraction=.* out of range; valid: \(0.0, 1.0\]") as e:
        cls(fraction=fraction)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ it works
@pytest.mark.parametrize("name", ["shot", "nrc", "aad"])
def test_recovers_target_accuracy_on_a_domain_shift(name, source_model):
    target = shifted_target(MARK[name])
    before = accuracy(source_model, target[1], device="cpu")
    assert 0.7 < before < 0.92           # the shift breaks the model partially
    r = run_attack(source_model, name, target="tgt", params=PARAMS[name], loader=Recorder(target), device="cpu")
    assert r.target_acc >= before + 0.08 and r.target_acc > 0.97, (before, r.target_acc)
    hist = r.info["history"]
    assert len(hist) == r.info["epochs"] and r.info["steps"] == 30


def test_shot_keeps_the_head_nrc_and_aad_train_it(source_model, target):
    for name, frozen in [("shot", True), ("nrc", False), ("aad", False)]:
        r = run_attack(source_model, name, target="tgt", params=PARAMS[name], loader=Recorder(target), device="cpu")
        assert torch.equal(r.model.head.weight, source_model.head.weight) == frozen, name
        assert not torch.equal(r.model.encoder[0].weight, source_model.encoder[0].weight), name
        assert all(p.requires_grad for p in r.model.parameters())


# ------------------------------------------------------------------------------------------------ pieces
def test_shot_pseudo_labels_follow_the_feature_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 8) * 4
    y = torch.arange(60) % 3
    feats = nn.functional.normalize(centres[y] + 0.3 * torch.randn(60, 8, generator=g), dim=1)
    probs = torch.full((60, 3), 0.1)
    probs[torch.arange(60), y] = 0.8
    wrong = torch.arange(60) % 5 == 0                 # a fifth of the predictions point to the next class
    probs[wrong] = probs[wrong].roll(1, dims=1)
    assert (probs.argmax(1) == y).float().mean() < 0.85
    assert torch.equal(centroid_labels(feats, probs), y)
    # a class nobody predicts takes no pseudo-label
    probs[:, 2] = 0.0
    assert (centroid_labels(feats, probs) != 2).all()


def test_nrc_weights_reciprocal_non_reciprocal_and_expanded_neighbours():
    # 0 and 1 are mutual nearest neighbours; 2's nearest is 1, but 1's nearest is 0; 3 is far away
    feats = nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 0.5], [0.0, 1.0]]), dim=1)
    bank = MemoryBank(feats, torch.full((4, 2), 0.5))
    near, w = nrc_affinity(bank, feats[[0, 2]], torch.tensor([0, 2]), k=1, m=2, r=0.1, r_expanded=0.05)
    assert near[:, 0].tolist() == [1, 1]
    assert w[:, 0].tolist() == pytest.approx([1.0, 0.1])            # reciprocal, then not
    assert near[0, 1:].tolist() == [0, 2] and w[0, 1:].tolist() == pytest.approx([0.0, 0.05])   # self: weight 0
    assert near[1, 1:].tolist() == [0, 2] and w[1, 1:].tolist() == pytest.approx([0.05, 0.0])


def test_objective_terms():
    onehot = torch.eye(4)
    assert entropy(onehot).abs().max() < 1e-3 and float(diversity(onehot)) == pytest.approx(math.log(4), abs=1e-3)
    assert float(dispersion(onehot)) == 0 and float(dispersion(onehot[[0, 0, 0]])) == pytest.approx(2.0)
    p = AadParams(lam=2.0, decay=1.0)
    assert p.weight(0.0) == 2.0 and p.weight(1.0) == pytest.approx(2.0 / 11)
    assert AadParams(decay=0.0).weight(0.7) == 1.0


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_parameters_are_one_line_errors():
    with pytest.raises(DomainlockError, match="k=0"):
        NrcParams(k=0)
    with pytest.raises(DomainlockError, match="r=2"):
        NrcParams(r=2)
    with pytest.raises(DomainlockError, match="beta=-1"):
        ShotParams(beta=-1)
    with pytest.raises(DomainlockError, match="lr=0"):
        AadParams(lr=0)


def test_model_without_split_says_how_to_name_one(target):
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    with pytest.raises(DomainlockError, match="the shot attack needs an encoder/head split"):
        run_attack(plain, "shot", target="tgt", params=PARAMS["shot"], loader=Recorder(target), device="cpu")
