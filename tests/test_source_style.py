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


def test_a_bf16_forward_restyles_about_as_far_as_float32():
    model = tiny()
    x = tinted(32)
    full, _, a = source_styled(model, x, cfg=SourceStyleConfig(**FAST))
    half, _, b = source_styled(model, x, cfg=SourceStyleConfig(**FAST, precision="bf16"))
    assert b["bn_loss_after"] < 0.5 * b["bn_loss_before"]
    assert b["bn_loss_after"] == pytest.approx(a["bn_loss_after"], rel=0.5)
    assert not torch.equal(full, half)                  # the forward really ran in bf16
    with pytest.raises(DomainlockError, match="precision"):
        SourceStyleConfig(precision="fp8")


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


def test_recoloured_maps_each_images_luminance_onto_two_colours():
    from domainlock.data.augment import _luma
    from domainlock.synthesis.source_style import recoloured

    x = tinted(16)
    out = recoloured(x, torch.Generator().manual_seed(0), 0.3)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, recoloured(x, torch.Generator().manual_seed(0), 0.3))
    lum = _luma(x).flatten(1)                                       # [n, HW]
    for img, luma in zip(out.flatten(2), lum, strict=True):        # each channel: bg + luma * (fg - bg)
        design = torch.stack([torch.ones_like(luma), luma], 1)
        coef = torch.linalg.lstsq(design, img.T).solution           # [2, 3]: bg, fg - bg per channel
        assert torch.allclose(design @ coef, img.T, atol=1e-4)
    grey = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    spread = recoloured(grey, torch.Generator().manual_seed(1), 0.3)
    assert float((spread.amax(1) - spread.amin(1)).mean()) > 0.05   # grey in, colours out
    with pytest.raises(DomainlockError, match="3, H, W"):
        recoloured(x[:, :1], torch.Generator())


def test_a_recoloured_start_is_what_zero_steps_give_back():
    from domainlock.synthesis.source_style import recoloured

    x = tinted(8)
    out, _, _ = source_styled(tiny(), x, cfg=SourceStyleConfig(steps=0, start="recoloured"), seed=3)
    want = recoloured(x, torch.Generator().manual_seed(3)).clamp(0.02, 0.98)
    assert torch.allclose(out, (want * 255).round() / 255, atol=1 / 255 + 1e-6)
    plain, _, _ = source_styled(tiny(), x, cfg=SourceStyleConfig(steps=0), seed=3)
    assert not torch.allclose(out, plain, atol=0.05)
    with pytest.raises(DomainlockError, match="colour source"):
        SourceStyleConfig(gray=True, start="recoloured")
    with pytest.raises(DomainlockError, match="start"):
        SourceStyleConfig(start="noise")


def test_keep_set_options_that_cannot_work_are_one_line_errors():
    for kw, match in ((dict(pseudo_source_size=0), "fewer than 8"),
                      (dict(pseudo_source_size=0, pseudo_source="somewhere", pseudo_source_restyled=8),
                       "pseudo_source_size=0"),
                      (dict(synthesis_gray=True, pseudo_source_recoloured=8), "colour source"),
                      (dict(synthesis_gray=True, restyle_start="recoloured"), "colour source"),
                      (dict(restyle_start="noise"), "restyle_start"),
                      (dict(pseudo_source_recoloured=-1), "pseudo_source_recoloured")):
        with pytest.raises(DomainlockError, match=match):
            validate_config(MAPConfig(**kw))
    validate_config(MAPConfig(pseudo_source_size=0, pseudo_source_recoloured=8))
    df = get_method("df-map")
    with pytest.raises(DomainlockError, match="df-map reads no target"):
        df.validate(MAPConfig(pseudo_source_size=0, pseudo_source_recoloured=8), "data-free")
    with pytest.raises(DomainlockError, match="df-map reads no target"):
        df.validate(MAPConfig(pseudo_source_restyled=8), "data-free")


class GreyLoader(Loader):
    """The toy domains with every image in grey (equal channels)."""

    def __call__(self, name, split, root=None):
        d = super().__call__(name, split, root)
        d.x = d.x.mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
        return d


def test_sf_map_can_keep_the_target_in_the_sources_style_alone(monkeypatch):
    import domainlock.synthesis.inversion as syn

    def never(*a, **kw):
        raise AssertionError("no pseudo-source is synthesized with pseudo_source_size=0")

    monkeypatch.setattr(syn, "synthesize_pseudo_source", never)
    hp = MAPConfig(steps=4, batch_size=16, lr=0.05, eval_every=2, val_size=8, select="last", early_stop=0.0,
                   pseudo_source_size=0, pseudo_source_restyled=12, restyle_start="recoloured",
                   pseudo_source_recoloured=20, restyle_steps=7, restyle_precision="bf16")
    ctx = RunContext(device=torch.device("cpu"), seed=0, progress=False)
    access = DataAccess("source-free", "src", "tgt", loader=GreyLoader(forbid=("src",)))
    res = get_method("sf-map").run(tiny_model(), access, hp, ctx)
    assert access.reads == ["target:tgt:train"]
    assert res.info["pseudo_source_size"] == 12 + 20
    assert res.info["pseudo_source_restyled"]["config"]["start"] == "recoloured"
    assert {k: res.info["pseudo_source_restyled"]["config"][k] for k in ("steps", "precision")} == {
        "steps": 7, "precision": "bf16"}
    assert res.info["pseudo_source_recoloured"] == {"n": 20, "min_saturation": 0.3}
    # a colour target gets no recoloured copies (they would keep its textures), and says so
    colour = get_method("sf-map").run(tiny_model(), DataAccess("source-free", "src", "tgt", loader=Loader()), hp, ctx)
    assert colour.info["pseudo_source_size"] == 12
    assert colour.info["pseudo_source_recoloured"] == {"n": 0, "skipped": "the target is in colour"}
    alone = MAPConfig(**{**hp.__dict__, "pseudo_source_restyled": 0})
    with pytest.raises(DomainlockError, match="keep set has 0 images"):
        get_method("sf-map").run(tiny_model(), DataAccess("source-free", "src", "tgt", loader=Loader()), alone, ctx)
