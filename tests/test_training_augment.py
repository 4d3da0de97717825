"""Batch augmentation (domainlock.data.augment): presets, ranges, determinism, and what each op does."""

from __future__ import annotations

import pytest
import torch

from domainlock.data import augment as A
from domainlock.errors import UnknownChoiceError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _batch(n=16, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, 32, 32)
    x[:, :, 8:24, 12:20] = 1.0  # a bright bar ("digit") on black, like MNIST
    x = x * 0.8 + 0.2 * torch.rand(n, 3, 32, 32, generator=g)
    return x.to(device)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_presets_exist():
    assert {"none", "default", "strong", "crop"} <= set(A.AUGMENTS)
    with pytest.raises(UnknownChoiceError):
        A.get_augment("nope")
    with pytest.raises(UnknownChoiceError):
        A.Augment([("spin", {})])


def test_none_is_identity():
    x = _batch()
    aug = A.get_augment("none")
    assert not aug
    assert torch.equal(aug(x, _gen()), x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", sorted(A.AUGMENTS))
def test_presets_stay_in_range_and_are_deterministic(preset, device):
    x = _batch(device=device)
    aug = A.get_augment(preset)
    a, b = aug(x, _gen(1)), aug(x, _gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert torch.equal(x, _batch(device=device))  # input untouched
    if preset != "none":
        assert not torch.equal(aug(x, _gen(2)), a)


@pytest.mark.parametrize("op", sorted(A.OPS))
def test_every_op_in_range_and_deterministic(op):
    x = _batch()
    a, b = A.OPS[op](x, _gen(3)), A.OPS[op](x, _gen(3))
    assert torch.equal(a, b)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1


def test_describe_is_json_able():
    import json

    json.dumps(A.get_augment("default").describe())


def test_invert():
    x = _batch()
    assert torch.equal(A.invert(x, _gen(), p=1.0), 1 - x)
    assert torch.equal(A.invert(x, _gen(), p=0.0), x)
    half = A.invert(x, _gen(), p=0.5)
    flipped = [torch.equal(half[i], 1 - x[i]) for i in range(len(x))]
    kept = [torch.equal(half[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)


def test_translate_shifts_by_at_most_pad():
    x = torch.zeros(32, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    out = A.translate(x, _gen(), pad=2, mode="constant")
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(32))  # the pixel stays inside the frame
    pos = out.view(32, -1).argmax(1)
    r, c = pos // 9, pos % 9
    assert int((r - 4).abs().max()) <= 2 and int((c - 4).abs().max()) <= 2
    assert len(set(zip(r.tolist(), c.tolist(), strict=True))) > 5  # offsets vary per image
    assert torch.equal(A.translate(x, _gen(), pad=0), x)


@pytest.mark.parametrize("mode", ["replicate", "reflect", "constant"])
def test_translate_is_the_padded_crop_lookup(mode):
    """The two-gather crop gives bit for bit the pixels of a direct 4-index lookup in the padded batch."""
    x, pad = _batch(12), 3
    out = A.translate(x, _gen(5), pad=pad, p=0.7, mode=mode)
    g = _gen(5)   # the same draws, in the same order, as translate
    mask = (torch.rand(12, generator=g) < 0.7).view(12, 1, 1, 1)
    offs = (torch.rand((2, 12), generator=g) * (2 * pad + 1)).floor().long().clamp_(0, 2 * pad)
    xp = torch.nn.functional.pad(x, (pad,) * 4, mode=mode)
    rows = (offs[0].view(12, 1) + torch.arange(32)).view(12, 1, 32, 1)
    cols = (offs[1].view(12, 1) + torch.arange(32)).view(12, 1, 1, 32)
    ref = xp[torch.arange(12).view(12, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1), rows, cols]
    assert torch.equal(out, torch.where(mask, ref, x))


def test_affine_identity_and_rotation():
    x = _batch()
    same = A.affine(x, _gen(), degrees=0, scale=(1.0, 1.0), shear=0, translate=0, p=1.0)
    assert torch.allclose(same, x, atol=1e-5)
    rot = A.affine(x, _gen(), degrees=90, scale=(1.0, 1.0), p=1.0)
    assert not torch.allclose(rot, x, atol=1e-3)


def test_channel_shuffle_permutes_channels():
    x = torch.rand(8, 3, 4, 4)
    out = A.channel_shuffle(x, _gen(), p=1.0)
    for i in range(8):
        got = sorted(out[i].sum(dim=(1, 2)).tolist())
        assert got == pytest.approx(sorted(x[i].sum(dim=(1, 2)).tolist()))
        perm_ok = any(torch.equal(out[i][j], x[i][k]) for j in range(3) for k in range(3))
        assert perm_ok


def test_channel_gain():
    x = torch.full((2, 3, 4, 4), 0.25)
    out = A.channel_gain(x, _gen(), gain=(2.0, 2.0), p=1.0)
    assert torch.allclose(out, torch.full_like(x, 0.5))
    assert torch.allclose(A.channel_gain(torch.full((1, 3, 2, 2), 0.9), _gen(), gain=(2, 2), p=1),
                          torch.ones(1, 3, 2, 2))  # clipped


def test_tint_full_strength_gives_a_solid_colour():
    out = A.tint(_batch(), _gen(), strength=(1.0, 1.0), p=1.0)
    flat = out.flatten(2)
    assert torch.allclose(flat.amax(2), flat.amin(2))


def test_colorize_maps_two_levels_to_two_contrasting_colours():
    x = torch.zeros(16, 3, 8, 8)
    x[:, :, 2:6, 3:5] = 1.0
    out = A.colorize(x, _gen(), p=1.0, min_contrast=0.4)
    fg, bg = out[:, :, 3, 3], out[:, :, 0, 0]
    w = torch.tensor([0.299, 0.587, 0.114])
    assert bool(((fg @ w) - (bg @ w)).abs().min() >= 0.4 - 0.12)  # saturation clipping loses a little
    assert torch.equal(out[:, :, 0, 0], out[:, :, 7, 7])  # the background is one colour
    assert not torch.allclose(fg[0], fg[1])  # colours differ per image


def test_grayscale():
    out = A.grayscale(torch.rand(4, 3, 5, 5), _gen(), p=1.0)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_brightness_contrast():
    x = _batch()
    assert torch.allclose(A.brightness_contrast(x, _gen(), brightness=0.0, contrast=(1, 1), p=1), x)
    flat = A.brightness_contrast(x, _gen(), brightness=0.0, contrast=(0, 0), p=1)
    assert torch.allclose(flat, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))
    up = A.brightness_contrast(torch.full((64, 3, 2, 2), 0.5), _gen(), brightness=0.2, contrast=(1, 1), p=1)
    assert 0.3 - 1e-6 <= float(up.min()) and float(up.max()) <= 0.7 + 1e-6 and float(up.std()) > 0.05


def test_gaussian_blur():
    const = torch.full((2, 3, 9, 9), 0.3)
    assert torch.allclose(A.gaussian_blur(const, _gen(), sigma=(1, 1), p=1), const, atol=1e-6)
    delta = torch.zeros(1, 1, 9, 9)
    delta[0, 0, 4, 4] = 1.0
    out = A.gaussian_blur(delta, _gen(), sigma=(1.0, 1.0), p=1.0)
    assert out[0, 0, 4, 4] < 1.0 and out[0, 0, 4, 5] > 0 and out[0, 0, 4, 5] == out[0, 0, 5, 4]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)


def test_gaussian_noise():
    x = torch.full((4, 3, 16, 16), 0.5)
    assert torch.equal(A.gaussian_noise(x, _gen(), std=(0, 0), p=1), x)
    noisy = A.gaussian_noise(x, _gen(), std=(0.1, 0.1), p=1)
    assert float((noisy - x).std()) == pytest.approx(0.1, rel=0.1)


def test_texture_blend_and_distractors():
    x = _batch()
    tex = A.texture_blend(x, _gen(), p=1.0)
    assert float(tex.flatten(1).std(1).min()) > 0.05  # a textured background
    d = torch.zeros(4, 1, 8, 16)
    d[:, :, 2:6, 7:9] = 1.0
    out = A.distractors(d, _gen(), p=1.0, shift=(0.5, 0.5))
    assert bool((out >= d).all())  # max-composite: the digit is kept
    assert float(out.sum()) > float(d.sum())  # and neighbours appear beside it


def test_generator_on_another_device_is_moved():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x = _batch(device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    out = A.get_augment("default")(x, g)
    assert out.device.type == "cuda"
