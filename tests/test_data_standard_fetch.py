"""Downloading the standard datasets, with no network: a local HTTP server in a thread (honouring ``Range``),
``file://`` URLs and injected openers stand in for the official hosts. Checks resuming a partial ``.part``,
a server that ignores ``Range``, an interrupted transfer, a download whose digest does not match, the mirror
setting, and the one-line error without network that names the URL and the ``--archive`` way."""

from __future__ import annotations

import os
import socket
import urllib.error

import pytest

from domainlock.data import build_domain, read_manifest
from domainlock.data.standard import digits
from domainlock.data.standard.fetch import ENV_MIRROR, RawFile, download, obtain
from domainlock.errors import DataUnavailableError, DomainlockError
from standard_files import http_server, pin, sha256, write_mnist, write_usps

pytestmark = pytest.mark.usefixtures("one_thread")

BLOB = os.urandom(300_000)


def test_resume_a_partial_download_with_range(tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(BLOB[:123_456])
    with http_server({"f.bin": BLOB}) as srv:
        download(f"{srv.url}/f.bin", dest, progress=False)
    assert dest.read_bytes() == BLOB and not (tmp_path / "f.bin.part").exists()
    assert srv.requests == [("/f.bin", "bytes=123456-")]


def test_server_ignoring_range_starts_over(tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"garbage" * 10)
    with http_server({"f.bin": BLOB}) as srv:
        srv.ignore_range = True
        download(f"{srv.url}/f.bin", dest, progress=True)
    assert dest.read_bytes() == BLOB


def test_complete_part_answered_416_is_kept(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(BLOB)
    with http_server({"f.bin": BLOB}) as srv:
        download(f"{srv.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == BLOB


def test_interrupted_download_keeps_the_part_and_resumes(tmp_path):
    dest = tmp_path / "f.bin"
    with http_server({"f.bin": BLOB}) as srv:
        srv.cut = 100_000
        with pytest.raises(DataUnavailableError, match="run the same command again to resume") as e:
            download(f"{srv.url}/f.bin", dest, progress=False)
        assert "\n" not in str(e.value) and not dest.exists()
        assert (tmp_path / "f.bin.part").stat().st_size == 100_000
        download(f"{srv.url}/f.bin", dest, progress=False)
    assert dest.read_bytes() == BLOB and srv.requests[-1] == ("/f.bin", "bytes=100000-")


def test_build_downloads_once_through_a_mirror_and_resumes(tmp_path, monkeypatch):
    files = write_mnist(tmp_path / "raw", n_train=30, n_test=10)
    pin(monkeypatch, digits, "MNIST_FULL", files)
    root = tmp_path / "root"
    part = root / "downloads" / "mnist-full" / "train-images-idx3-ubyte.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files["train-images-idx3-ubyte.gz"].read_bytes()[:5000])
    with http_server({n: p.read_bytes() for n, p in files.items()}) as srv:
        monkeypatch.setenv(ENV_MIRROR, srv.url + "/mnist/")
        srv.files = {f"mnist/{n}": b for n, b in srv.files.items()}
        build_domain("mnist-full", root, progress=False)
        assert ("/mnist/train-images-idx3-ubyte.gz", "bytes=5000-") in srv.requests
        n_requests = len(srv.requests)
        build_domain("mnist-full", root, progress=False, force=True)   # files already there: no request
        assert len(srv.requests) == n_requests == 4
    m = read_manifest("mnist-full", root)
    assert m["verification"] == "verified" and m["source"]["how"] == "download"
    assert {f["origin"] for f in m["source"]["files"]} == {f"{srv.url}/mnist/{n}" for n in files}
    assert m["raw_sha256"] == {n: sha256(p) for n, p in files.items()}


def test_file_url_mirror(tmp_path, monkeypatch):
    files = write_usps(tmp_path / "mirror")
    pin(monkeypatch, digits, "USPS", files)
    monkeypatch.setenv(ENV_MIRROR, (tmp_path / "mirror").as_uri())
    build_domain("usps", tmp_path / "root", progress=False)
    assert read_manifest("usps", tmp_path / "root")["verification"] == "verified"


def test_mismatching_download_is_deleted(tmp_path, monkeypatch):
    f = RawFile("f.bin", "http://example.invalid/f.bin", sha256="0" * 64, pin_source="test")
    pinned = "does not match the pinned sha256:0000"
    with http_server({"f.bin": BLOB}) as srv, pytest.raises(DomainlockError, match=pinned) as e:
        monkeypatch.setenv(ENV_MIRROR, srv.url)
        with obtain("usps", [f], root=tmp_path, progress=False):
            pass
    assert "deleted it" in str(e.value) and not (tmp_path / "downloads" / "usps" / "f.bin").exists()


class _NoNetwork:
    def open(self, req, timeout=None):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))


def test_no_network_error_names_the_url_and_the_archive_way(tmp_path):
    with pytest.raises(DataUnavailableError) as e:
        build_domain("svhn", tmp_path / "root", progress=False, opener=_NoNetwork())
    msg = str(e.value)
    assert "\n" not in msg and "http://ufldl.stanford.edu/housenumbers/train_32x32.mat" in msg
    assert "domainlock data build svhn --archive FILE" in msg and "train_32x32.mat, test_32x32.mat" in msg
    assert not (tmp_path / "root" / "svhn").exists()


def test_cli_offline_error_is_one_line(tmp_path, monkeypatch, capsys):
    from test_cli import one_line_error, run

    with socket.socket() as s:          # a port nothing listens on: connection refused, never the network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(ENV_MIRROR, f"http://127.0.0.1:{port}")
    rc, out, err = run(["data", "build", "cifar10", "-q"], capsys, tmp_path / "root")
    line = one_line_error(err)
    assert rc == 2 and out == "" and f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz" in line
    assert "--archive FILE" in line
