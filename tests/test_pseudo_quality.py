"""The pseudo-source quality figures on hand-made values, the bench node's sample grid, and the report's
Pseudo-sources section rendered from a hand-made results database."""

from __future__ import annotations

import base64
import math

import pytest
import torch
from torch import nn

from bench_toys import synthetic_bench
from domainlock.bench.report import write_report
from domainlock.bench.store import Store
from domainlock.bench.tasks import GRID_FILE, GRID_INLINE_MAX, _pseudo_source_figures
from domainlock.synthesis.quality import (
    bn_distance,
    class_coverage,
    grid_sample,
    neighbour_effects,
    pseudo_source_quality,
)
from toys import tiny_model


def _one_bn(x: torch.Tensor, shift: torch.Tensor | None = None) -> nn.Module:
    """BN over 3 channels whose running statistics are exactly x's (biased variance), plus ``shift``."""
    bn = nn.BatchNorm2d(3)
    bn.running_mean.copy_(x.mean((0, 2, 3)) + (0 if shift is None else shift))
    bn.running_var.copy_(x.var((0, 2, 3), unbiased=False))
    return nn.Sequential(bn, nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()


def test_bn_distance_is_zero_when_the_statistics_are_the_running_ones():
    x = torch.rand(50, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    # batches of 16, 16, 16, 2: the full-set moments are assembled from per-batch ones
    assert bn_distance(_one_bn(x), x, batch_size=16) == pytest.approx(0.0, abs=1e-5)
    # running mean off by (0.3, 0.4, 0): ‖μ − μ̂‖ = 0.5, variances equal
    assert bn_distance(_one_bn(x, torch.tensor([0.3, 0.4, 0.0])), x, batch_size=7) == pytest.approx(0.5, abs=1e-5)
    assert bn_distance(nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), x) is None   # no BN layer


def test_class_coverage_of_given_predictions():
    c = class_coverage(torch.tensor([0, 1, 0, 1]), 2)
    assert c == {"shares": [0.5, 0.5], "entropy": 1.0, "min_share": 0.5}
    c = class_coverage(torch.tensor([0, 0, 0, 1]), 4)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(4)   # 0.40564
    assert c["shares"] == [0.75, 0.25, 0.0, 0.0] and c["min_share"] == 0.0
    assert c["entropy"] == pytest.approx(h, abs=1e-5)
    assert class_coverage(torch.tensor([2, 2]), 3)["entropy"] == 0.0


def test_identity_family_keeps_agreement_and_features():
    x = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    eff = neighbour_effects(tiny_model(), x, families={"identity": lambda x, g: x, "black": lambda x, g: x * 0},
                            batch_size=8)
    assert eff["identity"] == {"agreement": 1.0, "feature_shift": 0.0}
    assert eff["black"]["feature_shift"] > 0


def test_quality_block_and_grid_sample():
    model = tiny_model()
    x = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pred = model(x).argmax(1)
    q = pseudo_source_quality(model, x, pred, neighbours=True, sample=8)
    assert q["agreement"] == 1.0 and q["n"] == 24 and q["neighbour_sample"] == 8
    assert 0 < q["confidence"] <= 1 and len(q["neighbours"]) == 13
    x8, y = grid_sample(x, pred, len(q["class_coverage"]["shares"]), per_class=2)
    assert x8.dtype == torch.uint8 and len(x8) == sum(min(2, int((pred == c).sum())) for c in pred.unique())


def test_protect_node_keeps_a_small_grid(tmp_path):
    x8 = (torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    q = _pseudo_source_figures({"bn_distance": 1.0}, {"pseudo_source_grid": (x8, torch.tensor([0, 0, 1, 1] * 2))},
                               tmp_path)
    png = base64.b64decode(q["grid_png"])
    assert q["grid"] == GRID_FILE and (tmp_path / GRID_FILE).is_file() and len(png) <= GRID_INLINE_MAX
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and q["bn_distance"] == 1.0
    assert "grid" not in _pseudo_source_figures({"bn_distance": 1.0}, {}, tmp_path)


def _quality(bn: float, grid: bool, neighbours: bool = False) -> dict:
    q = {"n": 128, "bn_distance": bn, "agreement": 0.9, "confidence": 0.8, "time_s": 0.5,
         "class_coverage": {"shares": [0.5, 0.5], "entropy": 1.0, "min_share": 0.5}, "grid": GRID_FILE}
    if grid:
        import io

        from PIL import Image
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, format="PNG")
        q["grid_png"] = base64.b64encode(buf.getvalue()).decode()
    if neighbours:
        q["neighbours"] = {"invert": {"agreement": 0.5, "feature_shift": 0.25}}
    return q


def test_pseudo_sources_section_renders_from_a_fake_db(tmp_path):
    folder = synthetic_bench(tmp_path / "bench")
    _, html = write_report(folder, tmp_path / "plain")
    assert "Pseudo-sources" not in html.read_text()   # no sf-map / df-map run: no section

    class _Node:
        def __init__(self, key, label, config):
            self.key, self.kind, self.label, self.config, self.deps = key, "protect", label, config, ()

    nodes = [_Node("p-sf", "sf-map mnist->syn s0", {"method": "sf-map", "source": "mnist", "seed": 0}),
             _Node("p-df0", "df-map mnist->* s0", {"method": "df-map", "source": "mnist", "seed": 0}),
             _Node("p-df1", "df-map mnist->* s1", {"method": "df-map", "source": "mnist", "seed": 1})]
    with Store(folder) as store:
        store.sync_nodes(nodes)
        for n, q in zip(nodes, (_quality(12.5, True), _quality(3.0, False, True), _quality(5.0, True, True)),
                        strict=True):
            store.finish_node(n.key, {"figures": {"pseudo_source_quality": q}, "wall_s": 1.0})
    md, html = (p.read_text() for p in write_report(folder, tmp_path / "report"))
    assert "## Pseudo-sources" in md and "[Pseudo-sources](#pseudo-sources)" in md
    assert "| sf-map | mnist s0     | mnist → syn |    128 |      12.500 |        90.0 |" in md
    # df-map's invert family, mean over its two nodes: agreement 50 %, shift 0.250
    assert "| invert |        50.0 |         0.250 |" in md
    assert "Sample grids: 1 of 3 not stored" in md   # p-df0 has neither an inline PNG nor its file
    assert html.count('<img alt="') == 2 and html.count('src="data:image/png;base64,') == 2
    assert "sample grid not stored" in html and "Pseudo-sources</h2>" in html
    for needle in ("http://", "https://", "<script", "<link"):
        assert needle not in html
