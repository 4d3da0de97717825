"""Ownership verification end to end (METHODS.md §1): a model protected against its own watermarked
domain is flagged, so is a copy an adversary fine-tuned briefly on clean data, and an independently
trained model is not. Small real data (UCI digits) and short runs keep it CPU-sized."""

from __future__ import annotations

import copy

import pytest

from domainlock.data import load_domain
from domainlock.methods import protect
from domainlock.methods.map import MAPConfig
from domainlock.ownership import verify
from domainlock.training import TrainConfig, fit, train_source

DOMAIN = "uci-digits"


@pytest.fixture(scope="module")
def owners(data_root):
    cfg = TrainConfig(epochs=6, augment="default", seed=0)
    source = train_source(DOMAIN, "digitnet", cfg, data_root=data_root, device="cpu", progress=False)
    other = train_source(DOMAIN, "digitnet", TrainConfig(epochs=6, augment="default", seed=1),
                         data_root=data_root, device="cpu", progress=False)
    prot = protect(source, "sa-map", source=DOMAIN, target=f"wm:{DOMAIN}", hparams=MAPConfig(),
                   data_root=data_root, device="cpu", progress=False)
    return source.model, other.model, prot


def test_protected_model_is_flagged_and_unprotected_ones_are_not(owners, data_root):
    source, other, prot = owners
    acc = prot.card["protection"]["accuracy_test"]
    assert acc[DOMAIN]["after"] >= acc[DOMAIN]["before"] - 0.02
    assert acc[f"wm:{DOMAIN}"]["after"] <= 0.2

    r = verify(prot.model, DOMAIN, data_root=data_root, device="cpu")
    assert r.flagged and r.gap >= 0.5 and r.p_value < 1e-10

    for innocent in (source, other):   # the unprotected source itself and an independent model
        r = verify(innocent, DOMAIN, data_root=data_root, device="cpu")
        assert not r.flagged, r.verdict


def test_briefly_fine_tuned_copy_is_still_flagged(owners, data_root):
    _, _, prot = owners
    stolen = copy.deepcopy(prot.model)
    train = load_domain(DOMAIN, "train", data_root)
    fit(stolen, train.subset(slice(0, 400)), None,
        TrainConfig(epochs=2, lr=0.005, schedule="constant", warmup_epochs=0, augment="none", seed=3),
        device="cpu", progress=False)
    r = verify(stolen, DOMAIN, data_root=data_root, device="cpu")
    assert r.clean_accuracy > 0.9
    assert r.flagged, r.verdict
