"""The readers of the standard datasets' formats, on tiny files written in the exact release formats: pixel
values and orientation of a hand-made image, label mappings (SVHN 10 -> 0, USPS 1..10 -> 0..9, the 9 classes
CIFAR-10 and STL-10 share), and the split protocols."""

from __future__ import annotations

import bz2
import gzip

import numpy as np
import pytest

from domainlock.data.standard import objects
from domainlock.data.standard.base import remap
from domainlock.data.standard.parsers import (
    digits_10_to_0,
    read_cifar_batch,
    read_digit_mat,
    read_idx,
    read_idx_gz,
    read_libsvm_bz2,
    read_npz,
    read_stl_images,
    usps_images,
)
from domainlock.data.standard.protocol import capped_split, plan, store
from domainlock.errors import DomainlockError
from standard_files import (
    cifar_batch,
    idx_bytes,
    libsvm_text,
    stl_images,
    write_digit_mat,
    write_mnist,
    write_usps,
)


def test_idx_gz_orientation_and_labels(tmp_path):
    files = write_mnist(tmp_path, n_train=12, n_test=5)
    x = read_idx_gz(files["train-images-idx3-ubyte.gz"])
    y = read_idx_gz(files["train-labels-idx1-ubyte.gz"])
    assert x.shape == (12, 28, 28) and x.dtype == np.uint8 and y.tolist() == [i % 10 for i in range(12)]
    assert x[0, 2, 5] == 255 and int(x[0].sum()) == 255          # row 2, column 5: C order, row first


def test_idx_header_is_checked(tmp_path):
    blob = idx_bytes(np.zeros((2, 3, 4), np.uint8))
    assert read_idx(blob, "f").shape == (2, 3, 4)
    with pytest.raises(DomainlockError, match="IDX header says"):
        read_idx(blob[:-1], "f")
    with pytest.raises(DomainlockError, match="not an IDX file"):
        read_idx(b"\x1f\x8b\x08\x00" + blob, "f")
    (tmp_path / "x.gz").write_bytes(b"not gzip")
    with pytest.raises(DomainlockError, match="not a readable gzip"):
        read_idx_gz(tmp_path / "x.gz")


def test_usps_libsvm_values_orientation_and_labels(tmp_path):
    files = write_usps(tmp_path, n_train=11, n_test=3)
    x, labels = read_libsvm_bz2(files["usps.bz2"], 256)
    assert x.shape == (11, 256) and labels.tolist() == [i % 10 + 1 for i in range(11)]
    img = usps_images(x)
    assert img.shape == (11, 16, 16, 1)
    assert img[0, 1, 3, 0] == 255 and img[0, 0, 0, 0] == 0 and int((img[0] == 255).sum()) == 1


def test_libsvm_sparse_lines_mean_zero_and_bad_lines_are_named(tmp_path):
    rows = np.zeros((2, 256))
    rows[0, 0], rows[1, 255] = 1.0, -1.0
    p = tmp_path / "s.bz2"
    p.write_bytes(bz2.compress(libsvm_text(rows, [1, 10], sparse=True).encode()))
    x, labels = read_libsvm_bz2(p, 256)
    img = usps_images(x)
    assert img[0, 0, 0, 0] == 255 and img[1, 15, 15, 0] == 0 and img[0, 5, 5, 0] == 128   # left out: 0 -> grey
    p.write_bytes(bz2.compress(b"3 1:0.5 300:1\n"))
    with pytest.raises(DomainlockError, match="line 1"):
        read_libsvm_bz2(p, 256)


def test_mat_layout_and_label_10_is_zero(tmp_path):
    pytest.importorskip("scipy")
    x, y = read_digit_mat(write_digit_mat(tmp_path / "train_32x32.mat", 7))
    assert x.shape == (7, 32, 32, 3) and x.dtype == np.uint8
    assert x[0, 3, 7, 0] == 200 and int(x[0].sum()) == 200      # X[H, W, C, N]: row 3, column 7, red
    assert y.tolist() == [0, 2, 3, 4, 5, 6, 7]
    assert digits_10_to_0(np.array([[10], [9], [1]]), "y").tolist() == [0, 9, 1]
    with pytest.raises(DomainlockError, match="1..10"):
        digits_10_to_0(np.array([0, 10]), "y")


def test_mat_v73_and_missing_variables_are_refused(tmp_path):
    pytest.importorskip("scipy")
    from scipy.io import savemat

    p = tmp_path / "a.mat"
    savemat(str(p), {"images": np.zeros((2, 2), np.uint8)})
    with pytest.raises(DomainlockError, match="lacks the variables X and y"):
        read_digit_mat(p)
    h5 = tmp_path / "b.mat"
    h5.write_bytes(b"MATLAB 7.3 MAT-file" + b" " * 97 + b"\x00\x02IM" + b"\0" * 400)
    with pytest.raises(DomainlockError):
        read_digit_mat(h5)


def test_cifar_binary_record_layout():
    x, y = read_cifar_batch(cifar_batch([6, 3, 9]), "b")
    assert x.shape == (3, 32, 32, 3) and y.tolist() == [6, 3, 9]
    assert x[0, 0, 1, 0] == 255 and x[0, 31, 0, 1] == 77 and int(x[0].sum()) == 255 + 77
    with pytest.raises(DomainlockError, match="3073-byte records"):
        read_cifar_batch(b"\0" * 3000, "b")


def test_stl_binary_is_column_major():
    x = read_stl_images(stl_images(2), "train_X.bin")
    assert x.shape == (2, 96, 96, 3)
    assert x[0, 2, 5, 1] == 255 and int(x[0].sum()) == 255         # row 2, column 5, green


def test_nine_shared_classes():
    assert objects.CLASSES == ["airplane", "automobile", "bird", "cat", "deer", "dog", "horse", "ship", "truck"]
    x = np.arange(10)
    kept, cy = remap(x, np.arange(10), objects.CIFAR_TO_9)            # CIFAR labels 0..9
    assert 6 not in kept.tolist() and cy.tolist() == list(range(9))   # frog (6) dropped, order kept
    kept, sy = remap(x, np.arange(1, 11), objects.STL_TO_9)           # STL labels 1..10
    assert 7 not in kept.tolist()                                      # monkey (label 8) dropped
    names = [objects.STL_CLASSES[k - 1] for k in np.arange(1, 11) if k != 8]
    assert [objects.CLASSES[i] for i in sy] == [{"car": "automobile"}.get(n, n) for n in names]
    cifar_names = [n for n in objects.CIFAR_CLASSES if n != "frog"]
    assert [objects.CLASSES[i] for i in cy] == cifar_names


def test_npz_layouts_and_object_arrays(tmp_path):
    p = tmp_path / "a.npz"
    np.savez(p, x_train=np.zeros((4, 3, 28, 28), np.uint8), y_train=np.arange(4), x_test=np.zeros((2, 28, 28),
             np.uint8), y_test=np.arange(2))
    got = read_npz(p)
    assert got["train"][0].shape == (4, 28, 28, 3) and got["test"][0].shape == (2, 28, 28, 1)
    np.savez(p, x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([1, 2]))
    assert set(read_npz(p)) == {"all"}
    np.savez(p, x=np.array([{"a": 1}], dtype=object), y=np.array([1]))
    with pytest.raises(DomainlockError, match="pickled objects"):
        read_npz(p)
    np.savez(p, x=np.zeros((2, 8, 8, 3), np.float32), y=np.array([1, 2]))
    with pytest.raises(DomainlockError, match="uint8"):
        read_npz(p)


def test_store_pads_resizes_and_replicates_grey():
    x = np.zeros((1, 28, 28, 1), np.uint8)
    x[0, 2, 5, 0] = 255
    padded = store(x, 32, inner=28)
    assert padded.shape == (1, 3, 32, 32) and (padded[0, :, 4, 7] == 255).all() and int(padded.sum()) == 3 * 255
    big = store(np.full((2, 96, 96, 3), 9, np.uint8), 64)
    assert big.shape == (2, 3, 64, 64) and (big == 9).all()
    same = store(np.full((3, 32, 32, 3), 5, np.uint8), 32)
    assert same.shape == (3, 3, 32, 32) and (same == 5).all()


def test_default_protocol_keeps_the_official_test_set():
    parts = {"train": np.repeat(np.arange(10), 20), "test": np.repeat(np.arange(10), 3)}
    idx = plan(parts, "default")
    assert sorted(idx["test"].tolist()) == list(range(200, 230))
    assert len(idx["train"]) == 180 and len(idx["val"]) == 20
    assert set(idx["train"]).isdisjoint(idx["val"]) and max(idx["val"]) < 200
    assert np.bincount(parts["train"][idx["val"]]).tolist() == [2] * 10   # stratified
    whole = plan({"all": np.repeat(np.arange(5), 10)}, "default")
    assert [len(whole[s]) for s in ("train", "val", "test")] == [35, 5, 10]
    with pytest.raises(DomainlockError, match="protocol"):
        plan(parts, "nope")


def test_ntlbench_protocol_is_8_1_1_capped_and_fixed():
    small = plan({"train": np.repeat(np.arange(10), 8), "test": np.repeat(np.arange(10), 2)}, "ntlbench")
    assert [len(small[s]) for s in ("train", "val", "test")] == [80, 10, 10]
    y = np.repeat(np.arange(10), 1300)                                  # 13,000 images: 10400/1300/1300 -> capped
    idx = capped_split(y)
    assert [len(idx[s]) for s in ("train", "val", "test")] == [8000, 1000, 1000]
    assert np.bincount(y[idx["test"]]).tolist() == [100] * 10           # class proportions kept
    every = np.concatenate([idx[s] for s in idx])
    assert len(np.unique(every)) == len(every)                          # no overlap
    again = capped_split(y)
    assert all(np.array_equal(idx[s], again[s]) for s in idx)           # fixed seed


def test_gzip_of_labels_is_read_as_labels(tmp_path):
    p = tmp_path / "l.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.array([3, 1, 4], np.uint8))))
    assert read_idx_gz(p).tolist() == [3, 1, 4]
