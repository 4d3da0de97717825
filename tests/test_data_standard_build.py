"""Building the standard datasets from files in their real formats given with ``--archive`` (each file, or a
.tar.gz/.zip of them): stored splits, labels and manifests; pinned digests (a mismatch is refused, and
``--trust-archive`` records "unverified"); the refusal of pickles; folder datasets from ``--root``/``--archive``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from domainlock.data import build_domain, domain_dir, domain_info, load_domain, parse_domain, read_manifest
from domainlock.data.standard import digits, objects
from domainlock.errors import DataUnavailableError, DomainlockError
from standard_files import (
    pin,
    png_bytes,
    write_cifar,
    write_digit_mat,
    write_image_tree,
    write_mnist,
    write_mnistm,
    write_stl,
    write_tar,
    write_usps,
    write_zip,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _all(name, root):
    return {s: load_domain(name, s, root, build=False) for s in ("train", "val", "test")}


def test_mnist_full_from_a_tar_of_the_four_files_verified(tmp_path, monkeypatch):
    files = write_mnist(tmp_path / "raw", n_train=40, n_test=20)
    pin(monkeypatch, digits, "MNIST_FULL", files)
    bundle = write_tar(tmp_path / "mnist.tar.gz", {f"mnist/{n}": p.read_bytes() for n, p in files.items()})
    build_domain("mnist-full", tmp_path / "root", archives=[bundle], progress=False)
    m = read_manifest("mnist-full", tmp_path / "root")
    assert m["verification"] == "verified" and m["protocol"] == "default" and m["image_size"] == [3, 32, 32]
    assert m["counts"] == {"train": 36, "val": 4, "test": 20} and m["classes"] == [str(d) for d in range(10)]
    assert {f["name"]: f["verification"] for f in m["source"]["files"]} == {n: "verified" for n in files}
    test = load_domain("mnist-full", "test", tmp_path / "root")
    hot = [i for i in range(len(test)) if float(test.x[i].sum()) == 3.0]   # the one-pixel image, padded by 2
    assert len(hot) == 1 and float(test.x[hot[0], 0, 4, 7]) == 1.0 and int(test.y[hot[0]]) == 0
    # the verified files were kept: a rebuild needs no archive
    assert sorted(p.name for p in (tmp_path / "root" / "downloads" / "mnist-full").iterdir()) == sorted(files)


def test_digest_mismatch_is_refused_unless_trusted(tmp_path):
    files = write_mnist(tmp_path / "raw")
    with pytest.raises(DomainlockError) as e:
        build_domain("mnist-full", tmp_path / "root", archives=list(files.values()), progress=False)
    msg = str(e.value)
    assert "does not match the pinned sha256:" in msg and "--trust-archive" in msg and "\n" not in msg
    assert not (tmp_path / "root" / "mnist-full").exists()
    build_domain("mnist-full", tmp_path / "root", archives=list(files.values()), trust_archive=True, progress=False)
    m = read_manifest("mnist-full", tmp_path / "root")
    assert m["verification"] == "unverified"
    assert all(f["verification"] == "unverified" and f["digest_mismatch"] for f in m["source"]["files"])
    assert not (tmp_path / "root" / "downloads" / "mnist-full" / "t10k-images-idx3-ubyte.gz").exists()


def test_usps_labels_and_md5_pin(tmp_path, monkeypatch):
    files = write_usps(tmp_path / "raw", n_train=30, n_test=20)
    import hashlib

    md5 = {n: hashlib.md5(p.read_bytes()).hexdigest() for n, p in files.items()}
    ds = digits.USPS
    monkeypatch.setattr(digits, "USPS", dataclasses.replace(ds, files=tuple(
        dataclasses.replace(f, md5=md5[f.name]) for f in ds.files)))
    zipped = write_zip(tmp_path / "usps.zip", {n: p.read_bytes() for n, p in files.items()})
    build_domain("usps", tmp_path / "root", archives=[zipped], progress=False)
    m = read_manifest("usps", tmp_path / "root")
    assert m["verification"] == "verified" and m["source"]["files"][0]["pinned"].startswith("md5:")
    test = load_domain("usps", "test", tmp_path / "root")
    assert sorted(test.y.tolist()) == sorted(i % 10 for i in range(20))     # 1..10 -> 0..9
    assert m["release_counts"] == {"train": 30, "test": 20}


@pytest.mark.parametrize("name, module, attr, names, bundle", [
    ("svhn", digits, "SVHN", ("train_32x32.mat", "test_32x32.mat"), "svhn.zip"),
    ("syndigits", digits, "SYNDIGITS", ("synth_train_32x32.mat", "synth_test_32x32.mat"), None),
])
def test_mat_datasets(name, module, attr, names, bundle, tmp_path, monkeypatch):
    pytest.importorskip("scipy")
    files = {n: write_digit_mat(tmp_path / n, 30 if "train" in n else 20, seed=k) for k, n in enumerate(names)}
    pin(monkeypatch, module, attr, files)
    archives = list(files.values())
    if bundle:   # the two files in one zip
        archives = [write_zip(tmp_path / bundle, {f"{name}/{n}": p.read_bytes() for n, p in files.items()})]
    build_domain(name, tmp_path / "root", archives=archives, progress=False)
    d = _all(name, tmp_path / "root")
    assert [len(d[s]) for s in ("train", "val", "test")] == [27, 3, 20]
    test = d["test"]
    hot = [i for i in range(len(test)) if abs(float(test.x[i].sum()) - 200 / 255) < 1e-6]
    assert len(hot) == 1 and int(test.y[hot[0]]) == 0 and float(test.x[hot[0], 0, 3, 7]) == pytest.approx(200 / 255)


def test_cifar10_and_stl10_share_nine_classes(tmp_path, monkeypatch):
    cifar = write_cifar(tmp_path / "cifar-10-binary.tar.gz", per_class=2)
    stl = write_stl(tmp_path / "stl10_binary.tar.gz", per_class=3)
    pin(monkeypatch, objects, "CIFAR10", {"cifar-10-binary.tar.gz": cifar})
    pin(monkeypatch, objects, "STL10", {"stl10_binary.tar.gz": stl})
    root = tmp_path / "root"
    build_domain("cifar10", root, archives=[cifar], progress=False)
    build_domain("stl10", root, archives=[stl], progress=False)
    for name, n_train, n_test in (("cifar10", 5 * 18, 18), ("stl10", 27, 27)):
        m = read_manifest(name, root)
        assert m["classes"] == objects.CLASSES and m["num_classes"] == 9 and m["verification"] == "verified"
        assert m["counts"]["test"] == n_test and m["counts"]["train"] + m["counts"]["val"] == n_train
        assert sum(m["class_counts"]["test"]) == n_test and min(m["class_counts"]["test"]) > 0
    c = load_domain("cifar10", "test", root)
    hot = [i for i in range(len(c)) if float(c.x[i].sum()) == pytest.approx(1 + 77 / 255)]
    assert [int(c.y[i]) for i in hot] == [0]                          # record 0: airplane
    assert float(c.x[hot[0], 0, 0, 1]) == 1.0 and float(c.x[hot[0], 1, 31, 0]) == pytest.approx(77 / 255)
    s = load_domain("stl10", "test", root)
    assert s.x.shape[1:] == (3, 32, 32)


def test_ntlbench_protocol_build_is_64px_and_recorded(tmp_path, monkeypatch):
    stl = write_stl(tmp_path / "stl10_binary.tar.gz", per_class=3)
    pin(monkeypatch, objects, "STL10", {"stl10_binary.tar.gz": stl})
    root = tmp_path / "root"
    build_domain("stl10", root, archives=[stl], protocol="ntlbench", progress=False)
    m = read_manifest("stl10", root)
    assert m["protocol"] == "ntlbench" and m["image_size"] == [3, 64, 64] and m["split_fractions"] == [0.8, 0.1, 0.1]
    assert m["split_caps"] == [8000, 1000, 1000] and sum(m["counts"].values()) == 54
    assert load_domain("stl10", "val", root).x.shape[1:] == (3, 64, 64)
    with pytest.raises(DomainlockError, match="protocol ntlbench; pass force=True"):
        build_domain("stl10", root, archives=[stl], protocol="default", progress=False)
    assert build_domain("stl10", root, progress=False) == root / "stl10"    # no protocol named: what is built
    build_domain("stl10", root, archives=[stl], protocol="default", progress=False, force=True)
    assert read_manifest("stl10", root)["image_size"] == [3, 32, 32]


def test_mnistm_full_from_the_png_tarball_and_from_npz(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(DataUnavailableError, match="--archive mnist_m.tar.gz"):
        build_domain("mnistm-full", root, progress=False)
    tar = write_mnistm(tmp_path / "mnist_m.tar.gz", n_train=20, n_test=10)
    build_domain("mnistm-full", root, archives=[tar], progress=False)
    m = read_manifest("mnistm-full", root)
    assert m["verification"] == "unverified" and m["release_counts"] == {"train": 20, "test": 10}
    test = load_domain("mnistm-full", "test", root)
    assert sorted(test.y.tolist()) == list(range(10)) and float(test.x[:, 2].mean()) == pytest.approx(200 / 255)
    np.savez(tmp_path / "mnist_m_train.npz", x=np.zeros((20, 28, 28, 3), np.uint8), y=np.arange(20) % 10)
    np.savez(tmp_path / "mnist_m_test.npz", x=np.zeros((10, 3, 28, 28), np.uint8), y=np.arange(10))
    build_domain("mnistm-full", root, archives=[tmp_path / "mnist_m_train.npz", tmp_path / "mnist_m_test.npz"],
                 progress=False, force=True)
    assert read_manifest("mnistm-full", root)["counts"]["test"] == 10


def test_pickles_are_refused_with_a_way_to_convert(tmp_path):
    root = tmp_path / "root"
    pt = write_tar(tmp_path / "mnist_m_train.pt.tar.gz", {"mnist_m_train.pt": b"PK\x03\x04" + b"\0" * 40})
    with pytest.raises(DomainlockError) as e:
        build_domain("mnistm-full", root, archives=[pt], progress=False)
    assert "is a pickle" in str(e.value) and "weights_only=True" in str(e.value) and ".npz" in str(e.value)
    py = write_tar(tmp_path / "cifar-10-python.tar.gz",
                   {"cifar-10-batches-py/data_batch_1": b"\x80\x02}q\x00" + b"\0" * 20})
    with pytest.raises(DomainlockError, match="is a pickle.*cifar-10-binary.tar.gz"):
        build_domain("cifar10", root, archives=[py], progress=False)
    pkl = tmp_path / "train_32x32.mat"
    pkl.write_bytes(b"\x80\x04\x95" + b"\0" * 30)      # a pickle stream, whatever its name
    with pytest.raises(DomainlockError, match="train_32x32.mat is a pickle"):
        build_domain("svhn", root, archives=[pkl], progress=False)
    with pytest.raises(DomainlockError, match="data.pkl is a pickle"):
        (tmp_path / "data.pkl").write_bytes(b"(dp0\n.")
        build_domain("syndigits", root, archives=[tmp_path / "data.pkl"], progress=False)
    assert not any((root / n).exists() for n in ("mnistm-full", "cifar10", "svhn", "syndigits"))


def test_archive_errors_name_the_files(tmp_path):
    with pytest.raises(DomainlockError, match="hold no usps.t.bz2"):
        build_domain("usps", tmp_path / "r", archives=[write_usps(tmp_path)["usps.bz2"]], progress=False)
    with pytest.raises(DomainlockError, match="is not a file"):
        build_domain("usps", tmp_path / "r", archives=[tmp_path / "missing.bz2"], progress=False)
    with pytest.raises(DomainlockError, match="offline domain"):
        build_domain("uci-digits", tmp_path / "r", protocol="ntlbench", progress=False)
    with pytest.raises(DomainlockError, match="--root applies to the folder datasets"):
        build_domain("usps", tmp_path / "r", source_root=tmp_path, progress=False)


OH = [f"c{k:02d}" for k in range(65)]


def test_folder_dataset_from_root_and_from_zip(tmp_path):
    release = tmp_path / "OfficeHomeDataset_10072016"
    write_image_tree(release, "Real World", OH, per_class=10)
    write_image_tree(release, "Art", OH[:64], per_class=10)
    root = tmp_path / "root"
    assert parse_domain("wm:officehome:Real_World@strength=0.3")[0] == "officehome:Real_World"
    build_domain("officehome:Real_World", root, source_root=tmp_path, progress=False)
    assert domain_dir("officehome:Real_World", root) == root / "officehome" / "Real_World"
    m = read_manifest("officehome:Real_World", root)
    assert m["counts"] == {"train": 455, "val": 65, "test": 130} and m["classes"] == OH
    assert m["source"]["how"] == "--root" and len(m["source"]["listing_sha256"]) == 64
    wm = load_domain("wm:officehome:Real_World", "test", root)
    assert wm.name == "wm:officehome:Real_World" and wm.num_classes == 65
    with pytest.raises(DomainlockError, match="found 64 class folders"):
        build_domain("officehome:Art", root, source_root=release, progress=False)
    members = {f"PACS/kfold/sketch/{c}/{k}.png": png_bytes((k, 9, 9), (20, 20))
               for c in ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person") for k in range(10)}
    members["PACS/kfold/photo/dog/0.png"] = png_bytes((1, 1, 1))
    zipped = write_zip(tmp_path / "pacs.zip", members)
    build_domain("pacs:sketch", root, archives=[zipped], progress=False, protocol="ntlbench")
    m = read_manifest("pacs:sketch", root)
    assert m["counts"] == {"train": 56, "val": 7, "test": 7} and m["image_size"] == [3, 64, 64]
    assert m["source"]["how"] == "--archive" and m["verification"] == "unverified"
    with pytest.raises(DataUnavailableError, match="--root DIR"):
        load_domain("domainnet:real", "train", root)


def test_data_list_states_and_show_on_a_standard_dataset(tmp_path, monkeypatch, capsys):
    from test_cli import one_line_error, run

    root = tmp_path / "root"
    files = write_mnist(tmp_path / "raw")
    pin(monkeypatch, digits, "MNIST_FULL", files)
    (root / "downloads" / "usps").mkdir(parents=True)
    for n, p in write_usps(tmp_path / "u").items():
        (root / "downloads" / "usps" / n).write_bytes(p.read_bytes())
    rc, out, err = run(["data", "build", "mnist-full", "--archive", str(tmp_path / "raw" / "*.gz"), "-q"], capsys, root)
    assert rc == 2 and "is not a file" in one_line_error(err)
    argv = ["data", "build", "mnist-full", "-q", "--json"] + [a for p in files.values() for a in ("--archive", str(p))]
    rc, out, err = run(argv, capsys, root)
    assert rc == 0, err
    assert json.loads(out)["built"] == {"mnist-full": str(root / "mnist-full")}
    rc, out, err = run(["data", "list", "--json"], capsys, root)
    state = {r["name"]: r["state"] for r in json.loads(out)}
    assert state["mnist-full"] == "built" and state["usps"] == "downloaded" and state["svhn"] == "needs download"
    assert state["mnistm-full"] == "needs a file" and state["officehome:Art"] == "needs a folder"
    assert all(r["licence"] for r in json.loads(out) if r["kind"] != "offline")
    rc, out, _ = run(["data", "list"], capsys, root)
    assert "needs a folder" in out and "CC BY-SA 3.0" in out
    show = ["data", "show", "mnist-full", "--n", "10", "--out", str(tmp_path / "g.png"), "-q"]
    rc, out, err = run(show, capsys, root)
    assert rc == 0 and (tmp_path / "g.png").is_file()
    rc, _, err = run(["data", "build", "usps", "svhn", "--archive", str(files["t10k-labels-idx1-ubyte.gz"])], capsys,
                     root)
    assert rc == 2 and "one dataset at a time" in one_line_error(err)


def test_unverified_build_notes_it_on_the_cli(tmp_path, capsys):
    from test_cli import run

    tar = write_mnistm(tmp_path / "mnist_m.tar.gz", n_train=10, n_test=10)
    rc, out, err = run(["data", "build", "mnistm-full", "--archive", str(tar), "-q"], capsys, tmp_path / "root")
    assert rc == 0 and "domainlock: note: mnistm-full was built from unverified files (mnist_m.tar.gz" in err
    info = domain_info("mnistm-full", tmp_path / "root")
    assert info["state"] == "built" and info["verification"] == "unverified"
    assert torch.equal(load_domain("mnistm-full", "test", tmp_path / "root").y.sort().values, torch.arange(10))
