"""DF-MAP's neighbour domains (methods/neighbours.py)."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from domainlock.errors import DomainlockError, UnknownChoiceError
from domainlock.synthesis.neighbours import (
    NeighbourConfig,
    apply_family,
    feature_stat_hooks,
    make_neighbours,
    neighbour_families,
    perturb_feature_stats,
    save_neighbour_grid,
    shape_map,
)
from domainlock.utils.hparams import add_dataclass_args, dataclass_from_args

pytestmark = pytest.mark.usefixtures("one_thread")


def digits(n: int = 12, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Digit-like images: light strokes (a bar and a ring, at random places) on a dark, slightly noisy
    background."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, 32, 32, generator=g) * 0.1
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for i in range(n):
        cy, cx = 12 + int(torch.randint(0, 8, (1,), generator=g)), 12 + int(torch.randint(0, 8, (1,), generator=g))
        ring = ((((yy - cy) ** 2 + (xx - cx) ** 2).sqrt() - 6).abs() < 1.5).float()
        bar = ((xx - cx).abs() < 1.5).float() * ((yy - cy).abs() < 10).float()
        x[i] = torch.maximum(x[i], 0.9 * torch.maximum(ring, bar) if i % 2 else 0.9 * ring)
    return x


def test_families_listed_and_unknown_refused():
    fams = neighbour_families()
    assert len(fams) >= 10 and len(set(fams)) == len(fams)
    for must in ("invert", "colour", "texture", "blur_noise", "randconv", "adain", "lowres", "stroke",
                 "elastic", "render", "background"):
        assert must in fams
    with pytest.raises(UnknownChoiceError):
        apply_family("sepia", digits(2))
    with pytest.raises(UnknownChoiceError):
        NeighbourConfig(families="colour,sepia")
    with pytest.raises(DomainlockError):
        NeighbourConfig(strength=0)
    with pytest.raises(DomainlockError):
        make_neighbours(torch.rand(3, 32, 32), generator=torch.Generator())


@pytest.mark.parametrize("channels", [3, 1])
def test_every_family_keeps_shape_range_and_changes_the_image(channels):
    x = digits(8, channels)
    for name in neighbour_families():
        g = torch.Generator().manual_seed(1)
        out = apply_family(name, x, g)
        assert out.shape == x.shape and out.dtype == x.dtype, name
        assert torch.isfinite(out).all(), name
        assert float(out.min()) >= 0 and float(out.max()) <= 1, name
        changed = (out - x).abs().flatten(1).amax(1) > 0.05
        assert bool(changed.all()), f"{name} left {int((~changed).sum())} of {len(x)} images (nearly) unchanged"


def test_invert_is_one_minus_x():
    x = torch.tensor([0.0, 0.25, 1.0, 0.5]).view(1, 1, 2, 2).expand(2, 3, 2, 2).contiguous()
    assert torch.equal(apply_family("invert", x), 1 - x)
    out = make_neighbours(x, generator=torch.Generator().manual_seed(0),
                          cfg=NeighbourConfig(families="invert", compose_p=0.0))
    assert torch.equal(out, 1 - x)


def test_make_neighbours_deterministic_for_a_generator():
    x = digits(24)
    a = make_neighbours(x, generator=torch.Generator().manual_seed(5))
    b = make_neighbours(x, generator=torch.Generator().manual_seed(5))
    c = make_neighbours(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(x, digits(24))  # the input is not modified


def test_each_image_gets_a_random_family_from_the_selection():
    x = digits(64)
    fams = neighbour_families()
    _, idx = make_neighbours(x, generator=torch.Generator().manual_seed(0), return_families=True)
    assert idx.shape == (64,) and idx.dtype == torch.int64
    assert len(set(idx.tolist())) >= len(fams) // 2  # many families used
    cfg = NeighbourConfig(families="lowres, stroke", compose_p=0.0)
    _, idx = make_neighbours(x, generator=torch.Generator().manual_seed(0), cfg=cfg, return_families=True)
    assert set(idx.tolist()) == {fams.index("lowres"), fams.index("stroke")}


def test_single_family_selection_matches_apply_family_up_to_randomness():
    x = digits(6)
    cfg = NeighbourConfig(families="lowres", compose_p=0.0)
    out = make_neighbours(x, generator=torch.Generator().manual_seed(0), cfg=cfg)
    # lowres turns most images grey and coarse: at most 16x16 distinct blocks per channel
    assert out.shape == x.shape
    assert (out - x).abs().mean() > 0.01


def test_lowres_and_stroke_behave():
    x = digits(8)
    g = torch.Generator().manual_seed(0)
    lr = apply_family("lowres", x, g)
    # a 32 px image rebuilt from <= 16 px: neighbouring 2x2 blocks hold few distinct values
    assert lr.shape == x.shape
    thick = apply_family("stroke", x, torch.Generator().manual_seed(0))
    # light-on-dark strokes: thickening raises, thinning lowers the mean brightness; both happen
    delta = (thick - x).mean((1, 2, 3))
    assert (delta != 0).all()


def test_shape_map_is_polarity_free():
    x = digits(4)
    s1, s2 = shape_map(x), shape_map(1 - x)
    assert s1.shape == (4, 1, 32, 32)
    assert torch.allclose(s1, s2, atol=1e-5)
    assert float(s1.max()) == pytest.approx(1.0)


def test_strength_scales_the_change():
    x = digits(16)
    weak = apply_family("blur_noise", x, torch.Generator().manual_seed(0), strength=0.1)
    strong = apply_family("blur_noise", x, torch.Generator().manual_seed(0), strength=1.0)
    assert (strong - x).abs().mean() > (weak - x).abs().mean()


def test_config_cli_flags():
    p = argparse.ArgumentParser()
    add_dataclass_args(p, NeighbourConfig)
    cfg = dataclass_from_args(NeighbourConfig, p.parse_args(["--families", "colour,texture", "--strength", "0.5"]))
    assert cfg.family_list() == ["colour", "texture"] and cfg.strength == 0.5
    assert NeighbourConfig().family_list() == neighbour_families()


def test_save_neighbour_grid(tmp_path):
    from PIL import Image

    names = save_neighbour_grid(digits(5), tmp_path / "nb.png", generator=torch.Generator().manual_seed(0))
    assert names[0] == "source" and names[1:] == neighbour_families()
    img = Image.open(tmp_path / "nb.png")
    assert img.size[0] > 5 * 64 and img.size[1] > len(names) * 64


def test_perturb_feature_stats():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(8, 4, 5, 5, generator=g) * 2 + 1
    out = perturb_feature_stats(h, torch.Generator().manual_seed(1), strength=1.0)
    assert out.shape == h.shape
    assert not torch.allclose(out.mean((2, 3)), h.mean((2, 3)))
    # the normalized pattern is kept: per-instance, per-channel correlation stays ~1 (up to sign of std > 0)
    z1 = (h - h.mean((2, 3), keepdim=True)) / h.std((2, 3), keepdim=True)
    z2 = (out - out.mean((2, 3), keepdim=True)) / out.std((2, 3), keepdim=True)
    assert torch.allclose(z1, z2, atol=1e-3)
    assert torch.equal(perturb_feature_stats(h, g, p=0.0), h)
    flat = torch.randn(4, 6)
    assert torch.equal(perturb_feature_stats(flat, g), flat)  # nothing to do on flat features
    conv = nn.Conv2d(3, 4, 3)
    handles = feature_stat_hooks([conv], torch.Generator().manual_seed(0))
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        y1 = conv(x)
        for hd in handles:
            hd.remove()
        y2 = conv(x)
    assert not torch.allclose(y1, y2)
