"""Tiny files in the exact formats of the standard datasets' releases, for the tests of data/standard/, and a
local HTTP server that honours ``Range`` (so a resumed download can be tested without any network)."""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import hashlib
import http.server
import io
import struct
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def write_mnist(folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict[str, Path]:
    """The four MNIST .gz files; image 0 of each set is black with one white pixel at row 2, column 5."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        x[0] = 0
        x[0, 2, 5] = 255
        y = np.arange(n, dtype=np.uint8) % 10
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            p = folder / f"{prefix}-{kind}-ubyte.gz"
            p.write_bytes(gzip.compress(idx_bytes(arr)))
            out[p.name] = p
    return out


def libsvm_text(rows: np.ndarray, labels, sparse: bool = False) -> str:
    lines = []
    for row, lab in zip(rows, labels, strict=True):
        feats = [f"{i + 1}:{v:g}" for i, v in enumerate(row) if not (sparse and v == 0)]
        lines.append(" ".join([str(int(lab))] + feats))
    return "\n".join(lines) + "\n"


def write_usps(folder: Path, n_train: int = 30, n_test: int = 20) -> dict[str, Path]:
    """usps.bz2 / usps.t.bz2 with labels 1..10; row 0 is -1 everywhere but +1 at row 1, column 3."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    rng = np.random.default_rng(1)
    for name, n in (("usps.bz2", n_train), ("usps.t.bz2", n_test)):
        rows = rng.uniform(-1, 1, (n, 256)).round(4)
        rows[0] = -1.0
        rows[0, 1 * 16 + 3] = 1.0
        labels = np.arange(n) % 10 + 1
        p = folder / name
        p.write_bytes(bz2.compress(libsvm_text(rows, labels).encode()))
        out[name] = p
    return out


def write_digit_mat(path: Path, n: int, seed: int = 0) -> Path:
    """An SVHN-layout v5 .mat: X uint8 [32, 32, 3, N], y [N, 1] in 1..10; image 0 has red 200 at row 3, column 7
    and label 10 (the digit 0)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    x[:, :, :, 0] = 0
    x[3, 7, 0, 0] = 200
    y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)
    y[0] = 10
    savemat(str(path), {"X": x, "y": y}, format="5")
    return path


def cifar_batch(labels, seed: int = 0) -> bytes:
    """CIFAR-10 binary records; record 0 has red 255 at row 0, column 1 and green 77 at row 31, column 0."""
    rng = np.random.default_rng(seed)
    recs = []
    for k, lab in enumerate(labels):
        planes = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
        if k == 0:
            planes[:] = 0
            planes[0, 0, 1] = 255
            planes[1, 31, 0] = 77
        recs.append(bytes([lab]) + planes.tobytes())
    return b"".join(recs)


CIFAR_META = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"
STL_NAMES = "airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n"


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    mode = "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    return path


def write_cifar(path: Path, per_class: int = 3) -> Path:
    """cifar-10-binary.tar.gz with 5 train batches and a test batch, every class ``per_class`` times per batch."""
    labels = [c for c in range(10) for _ in range(per_class)]
    members = {f"cifar-10-batches-bin/data_batch_{i}.bin": cifar_batch(labels, i) for i in range(1, 6)}
    members["cifar-10-batches-bin/test_batch.bin"] = cifar_batch(labels, 9)
    members["cifar-10-batches-bin/batches.meta.txt"] = CIFAR_META.encode()
    return write_tar(path, members)


def stl_images(n: int, seed: int = 0) -> bytes:
    """STL-10 ``*_X.bin``: image 0 has green 255 at row 2, column 5 (stored column-major)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)   # [n, c, row, col]
    x[0] = 0
    x[0, 1, 2, 5] = 255
    return x.transpose(0, 1, 3, 2).tobytes()                     # column by column


def write_stl(path: Path, per_class: int = 4) -> Path:
    labels = np.array([c for c in range(1, 11) for _ in range(per_class)], dtype=np.uint8)
    n = len(labels)
    return write_tar(path, {
        "stl10_binary/class_names.txt": STL_NAMES.encode(),
        "stl10_binary/train_X.bin": stl_images(n, 1), "stl10_binary/train_y.bin": labels.tobytes(),
        "stl10_binary/test_X.bin": stl_images(n, 2), "stl10_binary/test_y.bin": labels.tobytes(),
        "stl10_binary/unlabeled_X.bin": b"\0" * (3 * 96 * 96),
        "stl10_binary/fold_indices.txt": b"0 1 2\n",
    })


def png_bytes(rgb, size=(28, 28)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, tuple(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def write_mnistm(path: Path, n_train: int = 20, n_test: int = 10) -> Path:
    """Ganin's mnist_m.tar.gz layout: PNG folders and '<file> <digit>' label lists."""
    members = {}
    for split, n in (("train", n_train), ("test", n_test)):
        lines = []
        for i in range(n):
            name = f"{i:08d}.png"
            members[f"mnist_m/mnist_m_{split}/{name}"] = png_bytes((i * 10 % 256, 40, 200))
            lines.append(f"{name} {i % 10}")
        members[f"mnist_m/mnist_m_{split}_labels.txt"] = ("\n".join(lines) + "\n").encode()
    return write_tar(path, members)


def write_image_tree(root: Path, domain: str, classes, per_class: int = 10) -> Path:
    for ci, cls in enumerate(classes):
        for k in range(per_class):
            p = root / domain / cls / f"img{k}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(png_bytes((ci * 20 % 256, k * 20, 100), size=(40, 30)))
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def pin(monkeypatch, module, attr: str, paths: dict[str, Path]) -> None:
    """Pin the sha256 of the given files on the dataset ``module.attr`` (the tests' files stand in for the
    release)."""
    ds = getattr(module, attr)
    files = tuple(dataclasses.replace(f, sha256=sha256(paths[f.name]), md5=None) for f in ds.files)
    monkeypatch.setattr(module, attr, dataclasses.replace(ds, files=files))


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes), honouring ``Range: bytes=N-`` unless ``server.ignore_range``;
    ``server.cut`` > 0 makes the next response stop after that many bytes (an interrupted download)."""

    def log_message(self, *args):   # quiet
        pass

    def do_GET(self):   # noqa: N802
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        blob = srv.files.get(self.path.lstrip("/"))
        if blob is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(blob):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(blob)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(blob) - 1}/{len(blob)}")
        else:
            self.send_response(200)
        body = blob[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut:
            body, srv.cut = body[:srv.cut], 0
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@contextlib.contextmanager
def http_server(files: dict[str, bytes]):
    """A local server on 127.0.0.1 (a free port) in a thread; yields it (``.url``, ``.requests``, ``.files``)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    srv.files, srv.requests, srv.ignore_range, srv.cut = dict(files), [], False, 0
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)
