"""Target images moved into the source's style (domainlock.synthesis.source_style) and SF-MAP's use of them
(``pseudo_source_restyled``), on a tiny BN CNN trained on hand-made images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from domainlock.errors import DomainlockError
from domainlock.methods import DataAccess, RunContext, get_method
from domainlock.methods.map import MAPConfig, validate_config
from domainlock.synthesis.inversion import attach_bn_hooks, bn_matching_loss
from domainlock.synthesis.source_style import SourceStyleConfig, source_styled
from test_synthesis import quadrant_images, tiny
from toys import Loader, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(steps=40, batch_size=16)


def tinted(n: int, seed: int = 1) -> torch.Tensor:
    """The source's quadrant images in another style: a strong red cast and half the contrast."""
    x, _ = quadrant_images(n, torch.Generator().manual_seed(seed))
    x = 0.5 * x
    x[:, 0] += 0.45
    return x.clamp(0.03, 0.97)


def bn_loss(model: nn.Module, x: torch.Tensor) -> float:
    hooks = attach_bn_hooks(model)
    with torch.no_grad():
        model(x)
    loss = float(bn_matching_loss(hooks, 10.0))
    for h in hooks:
        h.remove()
    return loss


def test_the_style_moves_to_the_source_and_the_class_stays():
    model = tiny()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    x = tinted(32)
    with torch.no_grad():
        before = model(x).argmax(1)
    out, y, info = source_styled(model, x, cfg=SourceStyleConfig(**FAST))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(y, before)                                   # the classes of the originals
    assert info["bn_loss_after"] < 0.5 * info["bn_loss_before"]
    assert info["bn_loss_before"] == pytest.approx(bn_loss(model, x), rel=0.05)
    assert bn_loss(model, out) < 0.5 * bn_loss(model, x)           # measured again on what came back
    with torch.no_grad():
        assert float((model(out).argmax(1) == y).float().mean()) == pytest.approx(info["class_kept"])
    assert info["class_kept"] >= 0.9
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())   # the model is untouched
    assert all(p.requires_grad for p in model.parameters())
    again, _, _ = source_styled(model, x, cfg=SourceStyleConfig(**FAST))
    assert torch.equal(out, again)                                  # no random draws


def test_zero_steps_give_back_the_images():
    model = tiny()
    x = (tinted(8) * 255).round() / 255
    out, _, info = source_styled(model, x, cfg=SourceStyleConfig(steps=0))
    assert torch.allclose(out, x, atol=1 / 255 + 1e-6)
    assert info["bn_loss_after"] == info["bn_loss_before"]


def test_gray_images_repeat_one_value_over_the_channels():
    out, _, _ = source_styled(tiny(), tinted(8), cfg=SourceStyleConfig(steps=3, batch_size=8, gray=True))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_a_model_without_batchnorm_is_refused():
    with pytest.raises(DomainlockError, match="pseudo_source_restyled"):
        source_styled(tiny(bn=False), tinted(4), cfg=SourceStyleConfig(steps=1))


def test_bad_values_are_one_line_errors():
    with pytest.raises(DomainlockError, match="lr"):
        SourceStyleConfig(lr=0.0)
    with pytest.raises(DomainlockError, match="steps"):
        SourceStyleConfig(steps=-1)
    with pytest.raises(DomainlockError, match="pseudo_source_restyled"):
        validate_config(MAPConfig(pseudo_source_restyled=-1))


def test_sf_map_adds_the_restyled_target_and_still_never_reads_the_source(monkeypatch):
    import domainlock.synthesis.inversion as syn

    def fake(model, n, *, device="cpu", seed=0, progress=True, cfg=None):   # the slow inversion from noise
        return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)), torch.arange(n) % 4

    monkeypatch.setattr(syn, "synthesize_pseudo_source", fake)
    calls = []
    real = source_styled

    def spy(model, x, **kw):
        calls.append(len(x))
        return real(model, x, **kw)

    monkeypatch.setattr("domainlock.synthesis.source_style.source_styled", spy)
    hp = MAPConfig(steps=4, batch_size=16, lr=0.05, eval_every=2, val_size=8, select="last", early_stop=0.0,
                   pseudo_source_size=32, pseudo_source_restyled=12)
    loader = Loader(forbid=("src",))
    access = DataAccess("source-free", "src", "tgt", loader=loader)
    res = get_method("sf-map").run(tiny_model(), access, hp, RunContext(device=torch.device("cpu"), seed=0,
                                                                       progress=False))
    assert calls == [12] and access.reads == ["target:tgt:train"]
    assert res.info["pseudo_source_size"] == 32 + 12
    assert res.info["pseudo_source_restyled"]["n"] == 12
    off = get_method("sf-map").run(tiny_model(), DataAccess("source-free", "src", "tgt", loader=Loader()),
                                   MAPConfig(**{**hp.__dict__, "pseudo_source_restyled": 0}),
                                   RunContext(device=torch.device("cpu"), seed=0, progress=False))
    assert off.info["pseudo_source_size"] == 32 and "pseudo_source_restyled" not in off.info
