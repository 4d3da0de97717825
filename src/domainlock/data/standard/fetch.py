"""Raw files of the standard datasets: pinned digests, resumable downloads, and the ``--archive`` way in.

A :class:`RawFile` is one file of a release with its URL and the digest pinned for it: sha256 where a
well-known source publishes one, else md5, else none (the build then records the file as unverified).
:func:`obtain` yields the local path of every raw file of a dataset:

- with ``archives`` (``--archive FILE``, repeatable): each is one of the raw files (matched by name; for a
  one-file release any name) or a ``.tar[.gz|.bz2|.xz]``/``.tgz``/``.zip`` bundle holding them (matched by
  base name). A digest mismatch is refused unless ``trust_archive``; the file is then "unverified".
  Verified files taken out of a bundle are kept in the downloads folder, so a rebuild needs no archive.
- otherwise from ``<data_root>/downloads/<dataset>/``, downloading what is missing with urllib into
  ``<file>.part``: a ``.part`` left by an interrupted download is resumed with an HTTP ``Range`` request
  (a server that ignores it sends the whole file again), then the digest is checked and the file renamed
  into place. A download that does not match is deleted. ``$DOMAINLOCK_MIRROR`` (a base URL) replaces
  each official URL by ``<mirror>/<file name>`` (a local mirror).

Without network the error is one line naming the URL and the ``--archive`` way. Nothing here unpickles:
:func:`refuse_pickle` stops a pickled file (by suffix, by the pickle protocol's first bytes, or a bundle
member that is one) with a message saying how to convert it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..._version import __version__
from ...errors import DataUnavailableError, DomainlockError

DOWNLOADS = "downloads"
ENV_MIRROR = "DOMAINLOCK_MIRROR"
CHUNK = 1 << 20
TIMEOUT_S = 60.0
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".p", ".joblib")
BUNDLE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".zip")


@dataclass(frozen=True)
class RawFile:
    """One file of a release: its name, URL and pinned digest (``pin_source`` says where the digest is from)."""

    name: str
    url: str | None = None
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    pin_source: str = ""

    @property
    def pinned(self) -> str:
        return f"sha256:{self.sha256}" if self.sha256 else f"md5:{self.md5}" if self.md5 else "none"


@dataclass
class Obtained:
    """A raw file on disk: where it is, its sha256, ``verified`` or ``unverified``, and where it came from."""

    file: RawFile
    path: Path
    sha256: str
    status: str
    origin: str
    mismatch: bool = False   # the pinned digest did not match and the user passed --trust-archive

    def record(self) -> dict[str, Any]:
        return {"name": self.file.name, "sha256": self.sha256, "pinned": self.file.pinned,
                "pin_source": self.file.pin_source or None, "verification": self.status,
                "digest_mismatch": self.mismatch, "origin": self.origin}


def downloads_dir(root: str | os.PathLike, dataset: str) -> Path:
    return Path(root) / DOWNLOADS / dataset.split(":")[0]


def source_url(f: RawFile) -> str | None:
    """The URL ``f`` is fetched from: ``$DOMAINLOCK_MIRROR/<name>`` if that is set, else the official one."""
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    if mirror and f.url:
        return mirror.rstrip("/") + "/" + f.name
    return f.url


def check(f: RawFile, path: Path) -> tuple[str, bool | None]:
    """``(sha256, matches)`` of ``path`` against ``f``'s pin; ``matches`` is ``None`` when nothing is pinned."""
    sha = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False) if (f.sha256 is None and f.md5) else None
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            sha.update(block)
            if md5 is not None:
                md5.update(block)
    digest = sha.hexdigest()
    if f.sha256:
        return digest, digest == f.sha256
    if md5 is not None:
        return digest, md5.hexdigest() == f.md5
    return digest, None


# ------------------------------------------------------------------------------------------------ pickles

def _pickle_magic(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_pickle_name(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


def refuse_pickle(path: Path, convert: str, member: str | None = None) -> None:
    """Raise the one-line refusal if ``path`` (or its bundle ``member``) is a pickle; else return."""
    if member is None:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if not (_is_pickle_name(path.name) or _pickle_magic(head)):
            return
    what = f"{path.name} ({member})" if member else path.name
    raise DomainlockError(f"{what} is a pickle and domainlock never unpickles data files; {convert}")


def is_bundle(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(BUNDLE_SUFFIXES) and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def iter_bundle(path: Path) -> Iterator[tuple[str, Any]]:
    """``(member name, binary file object)`` for every regular file of a tar or zip, in archive order; read the
    file object before asking for the next member (tars are streamed, not seeked)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.is_dir():
                    with z.open(info) as fh:
                        yield info.filename, fh
        return
    with tarfile.open(path, mode="r|*") as tar:
        for m in tar:
            if m.isfile():
                yield m.name, tar.extractfile(m)


def safe_parts(name: str) -> tuple[str, ...] | None:
    """The path components of a bundle member, or ``None`` for an absolute path or one with ``..``."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        return None
    return tuple(s for s in p.parts if s not in ("", "."))


# ---------------------------------------------------------------------------------------------- download

def _range_start(content_range: str | None) -> int | None:
    # "bytes 100-199/200" -> 100
    try:
        return int(content_range.split()[1].split("-")[0]) if content_range else None
    except (IndexError, ValueError):
        return None


def download(url: str, dest: Path, *, opener: Any = None, progress: bool = True, timeout: float = TIMEOUT_S
             ) -> Path:
    """Fetch ``url`` into ``dest`` through ``dest.part``, resuming a ``.part`` already there.

    Raises ``urllib.error.URLError``/``OSError`` as they come (the caller words them); a body shorter than
    its Content-Length leaves the ``.part`` for the next try and raises :class:`DataUnavailableError`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": f"domainlock/{__version__}"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    opener = opener or urllib.request.build_opener()
    try:
        resp = opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:   # nothing past what the .part holds: it is complete
            os.replace(part, dest)
            return dest
        raise
    with resp:
        status = getattr(resp, "status", None) or resp.getcode()
        resumed = bool(start) and status == 206 and _range_start(resp.headers.get("Content-Range")) == start
        if not resumed:
            start = 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=f"downloading {dest.name}", leave=False, dynamic_ncols=True)
        try:
            with open(part, "ab" if resumed else "wb") as fh:
                while block := resp.read(CHUNK):
                    fh.write(block)
                    if bar is not None:
                        bar.update(len(block))
        except (OSError, http.client.HTTPException) as e:
            raise DataUnavailableError(f"download of {url} was interrupted after {part.stat().st_size} bytes "
                                       f"({type(e).__name__}); run the same command again to resume it") from None
        finally:
            if bar is not None:
                bar.close()
    got = part.stat().st_size
    if total is not None and got != total:
        raise DataUnavailableError(f"download of {url} stopped at {got} of {total} bytes; run the same command "
                                   f"again to resume it")
    os.replace(part, dest)
    return dest


def _offline(dataset: str, url: str, reason: object, files: Sequence[RawFile]) -> DataUnavailableError:
    names = ", ".join(f.name for f in files)
    why = " ".join(str(getattr(reason, "reason", reason)).split())
    return DataUnavailableError(
        f"cannot download {url} ({why}); without network, fetch {names} by hand and run `domainlock data build "
        f"{dataset} --archive FILE` (one --archive per file, or one .tar/.zip holding them)")


# ------------------------------------------------------------------------------------------------ obtain

@contextlib.contextmanager
def obtain(dataset: str, files: Sequence[RawFile], *, root: Path, archives: Sequence[Path] = (),
           trust_archive: bool = False, opener: Any = None, progress: bool = True, hint: str = "",
           convert: str = "") -> Iterator[dict[str, Obtained]]:
    """Yield ``{file name: Obtained}`` for every file of ``files`` (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=_mkdir(downloads_dir(root, dataset))) as tmp:
        if archives:
            yield _from_archives(dataset, files, root, [Path(a).expanduser() for a in archives], trust_archive,
                                 Path(tmp), convert)
        else:
            yield _from_downloads(dataset, files, root, opener, progress, hint)


def _mkdir(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


def _from_downloads(dataset: str, files: Sequence[RawFile], root: Path, opener: Any, progress: bool,
                    hint: str) -> dict[str, Obtained]:
    out: dict[str, Obtained] = {}
    for f in files:
        dest = downloads_dir(root, dataset) / f.name
        url = source_url(f)
        if not dest.is_file():
            if url is None:
                raise DataUnavailableError(hint or f"{dataset} has no download: pass --archive FILE ({f.name})")
            try:
                download(url, dest, opener=opener, progress=progress)
            except urllib.error.HTTPError as e:
                raise _offline(dataset, url, f"HTTP {e.code} {e.reason}", files) from None
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
                raise _offline(dataset, url, e, files) from None
        digest, ok = check(f, dest)
        if ok is False:
            dest.unlink()
            raise DomainlockError(f"{dest} does not match the pinned {f.pinned} ({f.pin_source}; its sha256 is "
                                  f"{digest}); deleted it: run the build again to download it afresh, or pass "
                                  f"--archive FILE")
        out[f.name] = Obtained(f, dest, digest, "verified" if ok else "unverified", url or str(dest))
    return out


def _from_archives(dataset: str, files: Sequence[RawFile], root: Path, archives: list[Path], trust: bool,
                   tmp: Path, convert: str) -> dict[str, Obtained]:
    wanted = {f.name: f for f in files}
    names = ", ".join(wanted)
    found: dict[str, tuple[Path, str]] = {}
    for a in archives:
        if not a.is_file():
            raise DomainlockError(f"--archive {str(a)!r} is not a file; {dataset} needs {names}")
        refuse_pickle(a, convert)
        if a.name in wanted:
            found[a.name] = (a, str(a))
            continue
        if is_bundle(a):
            got = _unpack(a, wanted, tmp, convert)
            found.update({n: (p, f"{a}:{n}") for n, p in got.items()})
            if got:
                continue
        if len(files) == 1:
            found[files[0].name] = (a, str(a))
            continue
        raise DomainlockError(f"--archive {a.name} is none of {names} and no .tar/.zip holding them")
    missing = [n for n in wanted if n not in found]
    if missing:
        raise DomainlockError(f"the --archive files hold no {', '.join(missing)}; {dataset} needs {names}")
    out: dict[str, Obtained] = {}
    keep = downloads_dir(root, dataset)
    for n, (path, origin) in found.items():
        f = wanted[n]
        digest, ok = check(f, path)
        if ok is False and not trust:
            raise DomainlockError(f"{path.name} does not match the pinned {f.pinned} of {n} ({f.pin_source}; its "
                                  f"sha256 is {digest}); refusing it (pass --trust-archive to build from it anyway, "
                                  f"recorded as unverified)")
        if ok and path.parent == tmp:   # a verified file from a bundle: keep it, so a rebuild needs no archive
            path = Path(shutil.move(str(path), str(keep / n)))
        out[n] = Obtained(f, path, digest, "verified" if ok else "unverified", origin, mismatch=ok is False)
    return out


def _unpack(bundle: Path, wanted: dict[str, RawFile], tmp: Path, convert: str) -> dict[str, Path]:
    got: dict[str, Path] = {}
    pickled: str | None = None
    for name, fh in iter_bundle(bundle):
        parts = safe_parts(name)
        base = parts[-1] if parts else ""
        if base in wanted and base not in got:
            with open(tmp / base, "wb") as out:
                shutil.copyfileobj(fh, out, CHUNK)
            got[base] = tmp / base
        elif pickled is None and (_is_pickle_name(base) or _pickle_magic(fh.read(2))):
            pickled = name
    if not got and pickled is not None:
        refuse_pickle(bundle, convert, member=pickled)
    return got
