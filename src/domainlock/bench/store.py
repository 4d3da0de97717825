"""The results database of a benchmark folder: SQLite (stdlib, WAL), one row per node and one per cell.

``nodes`` records the state of every unit of work (``pending``, ``running``, ``done``, ``failed`` with its
one-line error, ``blocked`` behind a failed dependency) with where and how it ran: wall time, peak RSS,
device, thread count, host. ``cells`` holds the table: one row per (run, source, target, seed, attack) with
its headline figures as columns and every figure, curves included, in ``figures`` (JSON). Each write is one
transaction, so a process killed at any moment leaves the database as it was before or after a write.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DB_FILE = "results.db"
SCHEMA_VERSION = 1
NODE_STATES = ("pending", "running", "done", "failed", "blocked")
#: cell columns besides the identifying ones; every other figure lives in ``figures``
CELL_FIGURES = ("source_acc_before", "source_acc_after", "target_acc_before", "target_acc_after", "st_d",
                "retain_s", "drop_t", "recovery", "slc_auc", "slc_auc_raw", "unprotected_slc_auc", "sparsity",
                "wall_s", "peak_rss_mb", "device", "threads", "host")
CELL_KEYS = ("key", "suite", "run", "method", "source", "target", "seed", "attack", "status", "error")
EXPORT_FORMATS = ("csv", "jsonl", "db")
_SQL_TYPES = {"device": "TEXT", "host": "TEXT", "threads": "INTEGER"}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, label TEXT NOT NULL, config TEXT NOT NULL, deps TEXT NOT NULL,
    status TEXT NOT NULL, error TEXT, result TEXT, wall_s REAL, peak_rss_mb REAL, device TEXT, threads INTEGER,
    host TEXT, attempts INTEGER NOT NULL DEFAULT 0, started TEXT, finished TEXT);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, suite TEXT NOT NULL, run TEXT NOT NULL, method TEXT NOT NULL, source TEXT NOT NULL,
    target TEXT NOT NULL, seed INTEGER NOT NULL, attack TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
    {", ".join(f"{c} {_SQL_TYPES.get(c, 'REAL')}" for c in CELL_FIGURES)},
    figures TEXT, updated TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS cells_by_run ON cells (suite, run, attack);
"""


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Store:
    """A benchmark folder's database. Use as a context manager or call :meth:`close`. ``read_only`` opens an
    existing database without writing anything (reports, exports)."""

    def __init__(self, folder: str | Path, read_only: bool = False):
        from ..errors import DomainlockError

        self.path = Path(folder) / DB_FILE
        if read_only:
            if not self.path.is_file():
                raise DomainlockError(f"{folder} holds no benchmark results ({DB_FILE} not found)")
            self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                                      isolation_level=None)
            self.db.row_factory = sqlite3.Row
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        with self.transaction():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self.db.execute(stmt)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------------------------------- nodes
    def sync_nodes(self, nodes: Iterable[Any], retry_failed: bool = False) -> None:
        """Add new nodes as pending; put interrupted (``running``) and ``blocked`` ones back to pending, and
        ``failed`` ones too when ``retry_failed``."""
        again = ("running", "blocked") + (("failed",) if retry_failed else ())
        with self.transaction() as db:
            for n in nodes:
                db.execute("INSERT OR IGNORE INTO nodes (key, kind, label, config, deps, status) "
                           "VALUES (?, ?, ?, ?, ?, 'pending')",
                           (n.key, n.kind, n.label, json.dumps(n.config, sort_keys=True), json.dumps(list(n.deps))))
                db.execute(f"UPDATE nodes SET status = 'pending', error = NULL WHERE key = ? AND status IN "
                           f"({','.join('?' * len(again))})", (n.key, *again))

    def node_states(self, keys: Iterable[str]) -> dict[str, str]:
        keys = list(keys)
        out: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self.db.execute(f"SELECT key, status FROM nodes WHERE key IN ({','.join('?' * len(chunk))})",
                                   chunk)
            out.update({r["key"]: r["status"] for r in rows})
        return out

    def mark_running(self, key: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE nodes SET status = 'running', attempts = attempts + 1, started = ? WHERE key = ?",
                       (utc_now(), key))

    def finish_node(self, key: str, result: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("UPDATE nodes SET status = 'done', error = NULL, result = ?, wall_s = ?, peak_rss_mb = ?, "
                       "device = ?, threads = ?, host = ?, finished = ? WHERE key = ?",
                       (json.dumps(result["figures"]), result.get("wall_s"), result.get("peak_rss_mb"),
                        result.get("device"), result.get("threads"), result.get("host"), utc_now(), key))

    def fail_node(self, key: str, error: str, status: str = "failed") -> None:
        with self.transaction() as db:
            db.execute("UPDATE nodes SET status = ?, error = ?, finished = ? WHERE key = ?",
                       (status, error, utc_now(), key))

    def node(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM nodes WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        for k in ("config", "deps", "result"):
            out[k] = json.loads(out[k]) if out[k] else None
        return out

    def nodes(self) -> list[dict[str, Any]]:
        return [self.node(r["key"]) for r in self.db.execute("SELECT key FROM nodes ORDER BY rowid")]

    # ------------------------------------------------------------------------------------------- cells
    def cell_keys(self, status: str | None = None) -> set[str]:
        if status is None:
            return {r["key"] for r in self.db.execute("SELECT key FROM cells")}
        return {r["key"] for r in self.db.execute("SELECT key FROM cells WHERE status = ?", (status,))}

    def put_cell(self, suite: str, cell: Any, status: str, figures: dict[str, Any] | None = None,
                 error: str | None = None) -> None:
        figures = figures or {}
        cols = list(CELL_KEYS) + list(CELL_FIGURES) + ["figures", "updated"]
        values = [cell.key, suite, cell.run, cell.method, cell.source, cell.target, cell.seed, cell.attack, status,
                  error] + [figures.get(c) for c in CELL_FIGURES] + [json.dumps(figures, sort_keys=True), utc_now()]
        with self.transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO cells ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                       values)

    def cells(self, suite: str | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM cells", ()
        if suite is not None:
            q, args = q + " WHERE suite = ?", (suite,)
        out = []
        for row in self.db.execute(q + " ORDER BY suite, run, source, target, attack, seed", args):
            d = dict(row)
            d["figures"] = json.loads(d["figures"]) if d["figures"] else {}
            out.append(d)
        return out

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT key, value FROM meta")}


def export_db(folder: str | Path, out: str | Path) -> Path:
    """A compact, self-contained copy of the folder's database (one file, no WAL) that ``domainlock report`` reads
    from the folder it sits in as ``results.db``: the form in which results are committed beside their pages."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    with Store(folder, read_only=True) as store:
        store.db.execute("VACUUM INTO ?", (str(tmp),))
    copy = sqlite3.connect(tmp, isolation_level=None)
    try:
        copy.execute("PRAGMA journal_mode=DELETE")
    finally:
        copy.close()
    os.replace(tmp, out)
    return out


def export(folder: str | Path, fmt: str) -> str:
    """Every cell of the folder's database as CSV (headline columns, figures as JSON) or JSON lines (the ``db``
    format is :func:`export_db`)."""
    from ..errors import check_choice

    check_choice("format", fmt, EXPORT_FORMATS[:2])
    with Store(folder, read_only=True) as store:
        rows = store.cells()
    if fmt == "jsonl":
        return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    buf = io.StringIO()
    cols = list(CELL_KEYS) + list(CELL_FIGURES) + ["figures", "updated"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "figures": json.dumps(r["figures"], sort_keys=True)})
    return buf.getvalue()
