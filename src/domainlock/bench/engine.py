"""``domainlock bench``: run a suite's graph into a folder, resumably, locally or on Ray.

The folder holds ``results.db`` (:mod:`~domainlock.bench.store`), one sub-folder per node
(``nodes/<kind>/<key>/``: its artifact and ``result.json``) and ``points/``, the learning-curve points every
attack node reads and writes (keyed by what determines them, so a point two nodes share, such as the scratch
curve of a dense and a masked attack, is trained once). One engine process owns a
folder at a time (an exclusive lock, released by the OS if the process dies); it submits every node whose
inputs are finished to a launcher and writes the cells a finished node completes. Kill it at any moment and
run it again: finished nodes and cells are kept, a node that was running is adopted if it finished on disk
and rerun otherwise. A finished node whose folder is gone (a ``results.db`` carried to another host without
``nodes/``) keeps its figures and is run again only when a node still to run reads its artifact; a rerun
whose accuracies differ from the recorded ones is reported. ``reuse`` names other benchmark folders: a node
finished in one of them (same key, so the same configuration, inputs, data and version) is linked into this
folder instead of computed. A failing node records its one-line error, the nodes and cells behind it are
marked and the grid goes on; ``retry_failed`` runs them again.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DomainlockError
from .cells import cell_figures
from .graph import Cell, Graph, expand
from .launchers import make_launcher
from .store import Store
from .suite import Suite, check_sources, load_suite
from .tasks import read_result

ONLY_KEYS = ("method", "pair", "seed", "attack")
LOCK_FILE = ".bench.lock"
POINTS_DIR = "points"


@dataclass
class BenchSummary:
    folder: Path
    suite: str
    cells: int
    done: int
    failed: int
    nodes_run: int
    nodes_adopted: int
    wall_s: float
    plan: dict[str, dict[str, int]]
    estimate: Any = None   # a dry run's :class:`~domainlock.bench.estimate.Estimate`, when asked for

    def line(self) -> str:
        return (f"{self.suite}: {self.done}/{self.cells} cells done, {self.failed} failed; {self.nodes_run} nodes "
                f"computed, {self.nodes_adopted} reused, {self.wall_s:.1f} s -> {self.folder}")


@contextmanager
def folder_lock(folder: Path):
    """Exclusive use of a benchmark folder; a second engine gets a one-line error naming the holder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        import fcntl
    except ImportError:   # no advisory locks (Windows): one engine per folder is then the user's to ensure
        yield
        return
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise DomainlockError(f"{folder} is in use by {holder}; wait for it to finish or choose another "
                                  "--out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {platform.node()}")
        fh.flush()
        yield
    finally:
        fh.close()


def parse_only(text: str | None) -> dict[str, set[str]]:
    """``method=sa-map,pair=mnist->syn,seed=0`` (a key may repeat: either value) into a filter."""
    out: dict[str, set[str]] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ONLY_KEYS or not value.strip():
            raise DomainlockError(f"--only {part.strip()!r}: expected key=value with key one of {', '.join(ONLY_KEYS)}")
        out.setdefault(key, set()).add(value.strip())
    return out


def _selected(cell: Cell, only: dict[str, set[str]]) -> bool:
    values = {"method": {cell.run, cell.method}, "pair": {f"{cell.source}->{cell.target}"}, "seed": {str(cell.seed)},
              "attack": {cell.attack}}
    return all(values[k] & want for k, want in only.items())


def _digests(suite: Suite, data_root: Any, progress: bool) -> dict[str, str]:
    from ..data import build_domain, get_spec, parse_domain, read_manifest

    out = {}
    for name in suite.all_domains:
        base = parse_domain(name)[0]
        if base not in out:
            build_domain(base, data_root, progress=progress,
                         protocol=suite.protocol if get_spec(base).standard else None)
            out[base] = read_manifest(base, data_root)["data_sha256"]
    return out


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def plan(suite: Suite | str, data_root: Any = None, only: str | None = None, progress: bool = False) -> Graph:
    """The graph of a suite (domains are built so their digests can name the nodes), filtered by ``only``."""
    suite = load_suite(suite) if isinstance(suite, str | Path) else suite
    check_sources(suite)
    graph = expand(suite, _digests(suite, data_root, progress))
    want = parse_only(only)
    if want:
        cells = [c for c in graph.cells if _selected(c, want)]
        if not cells:
            raise DomainlockError(f"--only {only!r} selects no cell of suite {suite.name!r}")
        graph = graph.only(cells)
    return graph


def run_bench(suite: Suite | str, out: str | Path, *, jobs: int = 1, launcher: str = "local", threads: int = 0,
              gpus: float = 0, device: str = "auto", data_root: Any = None, only: str | None = None,
              retry_failed: bool = False, dry_run: bool = False, progress: bool = True,
              echo: Callable[[str], None] | None = None, estimate_from: list[str] | None = None,
              reuse: list[str | Path] | None = None) -> BenchSummary:
    """Run (or with ``dry_run`` only count) the suite's cells into ``out``; see the module docstring. A dry run
    with ``estimate_from`` (benchmark folders) also estimates the time of what it would run
    (:mod:`~domainlock.bench.estimate`)."""
    from ..data import resolve_data_root

    echo = echo or (lambda s: print(s, file=sys.stderr))
    if jobs < 1:
        raise DomainlockError(f"--jobs {jobs}: must be at least 1")
    if threads == 0 and jobs > 1:   # share the cores instead of oversubscribing them
        threads = max(1, (os.cpu_count() or 1) // jobs)
    suite = load_suite(suite) if isinstance(suite, str | Path) else suite
    check_sources(suite)   # before the folder exists
    folder = Path(out)
    donors = _check_reuse(folder, reuse or [])
    data_root = str(resolve_data_root(data_root))
    t0 = time.perf_counter()
    with folder_lock(folder), Store(folder) as store:
        graph = plan(suite, data_root, only, progress)
        store.sync_nodes(graph.nodes.values(), retry_failed)
        store.set_meta("suite", {"name": suite.name, "origin": suite.origin})
        state = store.node_states(graph.nodes)
        adopted = 0
        for key, node in graph.nodes.items():   # finished on disk before a kill, or in a --reuse folder: adopt
            if state[key] != "pending":
                continue
            done = read_result(_node_dir(folder, node.kind, key))
            if done is None and donors:
                done = _take_from(donors, folder, node.kind, key, dry_run)
                if done is not None and dry_run:   # would be taken; a dry run writes nothing
                    state[key] = "done"
                    adopted += 1
                    continue
            if done is not None:
                store.finish_node(key, done)
                state[key] = "done"
                adopted += 1
        recorded = _restore_inputs(graph, folder, state, donors, dry_run, store)
        if recorded:
            echo(f"domainlock: {len(recorded)} finished node(s) have no folder here and are run again for the "
                 "nodes that read them")
        todo = [k for k in graph.nodes if state[k] == "pending"]
        written = store.cell_keys("done")
        cells = [c for c in graph.cells if c.key not in written]
        counts = {kind: {"total": sum(n.kind == kind for n in graph.nodes.values()),
                         "to_run": sum(graph.nodes[k].kind == kind for k in todo)}
                  for kind in ("source", "protect", "attack")}
        counts["cells"] = {"total": len(graph.cells), "to_run": len(cells)}
        if dry_run:
            est = None
            if estimate_from:
                from .estimate import estimate, measured_costs

                est = estimate(graph, todo, measured_costs(estimate_from))
            return BenchSummary(folder, suite.name, len(graph.cells), len(graph.cells) - len(cells), 0, 0, adopted,
                                time.perf_counter() - t0, counts, est)
        run = _Run(suite, graph, store, folder, state, cells, echo, progress)
        run.recorded = recorded
        run.flush_cells()
        if todo:
            with make_launcher(launcher, jobs, threads=threads, gpus=gpus) as pool:
                run.execute(todo, pool, {"data_root": data_root, "device": device, "threads": threads,
                                         "points_dir": str(folder / POINTS_DIR)})
        run.flush_cells()
        run.close()
        rows = store.cells(suite.name)
        keys = {c.key for c in graph.cells}
        done = sum(r["status"] == "done" for r in rows if r["key"] in keys)
        return BenchSummary(folder, suite.name, len(graph.cells), done, len(graph.cells) - done, run.computed,
                            adopted, time.perf_counter() - t0, counts)


def _node_dir(folder: Path, kind: str, key: str) -> Path:
    return folder / "nodes" / kind / key


def _check_reuse(folder: Path, reuse: list[str | Path]) -> list[Path]:
    donors = []
    for item in reuse:
        path = Path(item)
        if not (path / "nodes").is_dir():
            raise DomainlockError(f"--reuse {item}: not a benchmark folder (no nodes/ in it)")
        if folder.exists() and path.resolve() == folder.resolve():
            raise DomainlockError(f"--reuse {item}: is the run's own --out folder")
        donors.append(path)
    return donors


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)   # artifacts are never written after their node finished: sharing the inode is safe
    except OSError:
        shutil.copy2(src, dst)


def _take_from(donors: list[Path], folder: Path, kind: str, key: str, dry_run: bool) -> dict[str, Any] | None:
    """A finished node of ``donors`` with this key, linked into ``folder`` (atomically); ``None`` if none has it."""
    for donor in donors:
        src = _node_dir(donor, kind, key)
        done = read_result(src)
        if done is None:
            continue
        if not dry_run:
            dest = _node_dir(folder, kind, key)
            tmp = dest.with_name(f".{key}.reuse")
            shutil.rmtree(tmp, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, tmp, copy_function=_link_or_copy, symlinks=True)
            shutil.rmtree(dest, ignore_errors=True)   # what a killed run of this node left unfinished
            os.replace(tmp, dest)
        return done
    return None


def _restore_inputs(graph: Graph, folder: Path, state: dict[str, str], donors: list[Path], dry_run: bool,
                    store: Store) -> dict[str, dict[str, Any]]:
    """Set back to pending every finished node that a pending node reads but whose folder is missing (and no
    donor has), transitively; returns their recorded results, to compare the reruns with."""
    recorded: dict[str, dict[str, Any]] = {}
    need = [k for k in graph.nodes if state[k] == "pending"]
    seen: set[str] = set()
    while need:
        for dep in graph.nodes[need.pop()].deps:
            if dep in seen or state[dep] != "done":
                continue
            seen.add(dep)
            kind = graph.nodes[dep].kind
            if read_result(_node_dir(folder, kind, dep)) is not None:
                continue
            if donors and _take_from(donors, folder, kind, dep, dry_run) is not None:
                continue
            state[dep] = "pending"
            recorded[dep] = (store.node(dep) or {}).get("result") or {}
            need.append(dep)
    return recorded


def _accuracy_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The test accuracies (``accuracy_test``) a rerun of a node changed, as ``domain: old -> new``."""
    def flat(result: dict[str, Any]) -> dict[str, float]:
        acc = result.get("accuracy_test") or {}
        out = {}
        for dom, v in acc.items():
            for when, x in (v.items() if isinstance(v, dict) else [("", v)]):
                out[f"{dom}{'/' + when if when else ''}"] = float(x)
        return out

    a, b = flat(before), flat(after)
    return [f"{k}: {a[k]:.4f} -> {b[k]:.4f}" for k in sorted(a.keys() & b.keys()) if abs(a[k] - b[k]) > 1e-6]


class _Run:
    """The scheduling loop of one engine invocation."""

    def __init__(self, suite: Suite, graph: Graph, store: Store, folder: Path, state: dict[str, str],
                 cells: list[Cell], echo: Callable[[str], None], progress: bool):
        self.suite, self.graph, self.store, self.folder, self.state = suite, graph, store, folder, state
        self.cells, self.echo, self.computed, self.errors = list(cells), echo, 0, {}
        self.bar = None
        self.recorded: dict[str, dict[str, Any]] = {}
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(cells), desc=f"bench {suite.name}", unit="cell", dynamic_ncols=True,
                            file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _payload(self, key: str, common: dict[str, Any]) -> dict[str, Any]:
        node = self.graph.nodes[key]
        deps = {d: str(_node_dir(self.folder, self.graph.nodes[d].kind, d)) for d in node.deps}
        return {"key": key, "kind": node.kind, "config": node.config, "deps": deps,
                "out_dir": str(_node_dir(self.folder, node.kind, key)), **common}

    def _block(self, key: str, why: str) -> None:
        self.state[key] = "blocked"
        self.errors[key] = why
        self.store.fail_node(key, why, status="blocked")

    def execute(self, todo: list[str], pool: Any, common: dict[str, Any]) -> None:
        waiting = list(todo)
        inflight: dict[Future, str] = {}
        while waiting or inflight:
            for key in list(waiting):
                if len(inflight) >= pool.slots:
                    break
                deps = [self.state[d] for d in self.graph.nodes[key].deps]
                bad = [d for d in self.graph.nodes[key].deps if self.state[d] in ("failed", "blocked")]
                if bad:
                    waiting.remove(key)
                    self._block(key, f"blocked by {self.graph.nodes[bad[0]].label}: "
                                     f"{self.errors.get(bad[0]) or self.store.node(bad[0])['error']}")
                elif all(s == "done" for s in deps):
                    waiting.remove(key)
                    self.state[key] = "running"
                    self.store.mark_running(key)
                    if self.bar is not None:
                        self.bar.set_postfix_str(self.graph.nodes[key].label, refresh=True)
                    inflight[pool.submit(self._payload(key, common))] = key
            if not inflight:
                for key in waiting:   # only nodes behind failures are left
                    self._block(key, "blocked by a failed node")
                break
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for fut in finished:
                key = inflight.pop(fut)
                try:
                    result = fut.result()
                except Exception as e:   # the node's own error: recorded, the grid goes on
                    self.state[key], self.errors[key] = "failed", _one_line(e)
                    self.store.fail_node(key, self.errors[key])
                    self.echo(f"domainlock: node {self.graph.nodes[key].label} failed: {self.errors[key]}")
                else:
                    changed = _accuracy_changes(self.recorded.get(key) or {}, result.get("figures") or {})
                    if changed:
                        self.echo(f"domainlock: node {self.graph.nodes[key].label} run again differs from its "
                                  f"recorded result ({'; '.join(changed[:3])}); cells already written keep theirs")
                    self.store.finish_node(key, result)
                    self.state[key] = "done"
                    self.computed += 0 if result.get("adopted") else 1
            self.flush_cells()

    def flush_cells(self) -> None:
        """Write every pending cell whose inputs are all finished (or record why it cannot be)."""
        still = []
        for cell in self.cells:
            states = [self.state.get(d) for d in cell.deps]
            if all(s == "done" for s in states):
                nodes = {d: self.store.node(d) for d in cell.deps}
                try:
                    self.store.put_cell(self.suite.name, cell, "done", cell_figures(self.suite, cell, nodes))
                except Exception as e:   # a figure that cannot be computed fails its cell only
                    self.store.put_cell(self.suite.name, cell, "failed", error=_one_line(e))
            elif any(s in ("failed", "blocked") for s in states):
                bad = next(d for d in cell.deps if self.state.get(d) in ("failed", "blocked"))
                why = self.errors.get(bad) or (self.store.node(bad) or {}).get("error") or "failed"
                self.store.put_cell(self.suite.name, cell, "failed", error=f"{self.graph.nodes[bad].label}: {why}")
            else:
                still.append(cell)
                continue
            if self.bar is not None:
                self.bar.update(1)
        self.cells = still
