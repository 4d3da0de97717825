"""Where the benchmark's nodes run: in the engine's own process, in a local process pool, or as Ray tasks.

Every launcher returns :class:`concurrent.futures.Future` objects, so the engine has one scheduling loop.
``slots`` is how many nodes it keeps in flight. Local pools start their workers with ``spawn`` (a fresh
interpreter each: no state inherited from the engine, no fork of a threaded torch). Ray connects to
``$RAY_ADDRESS`` when set (a cluster started with ``ray start --head``) and otherwise starts a local instance;
each task asks for ``threads`` CPUs (1 if unset) and ``gpus`` GPUs.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from ..errors import DomainlockError, check_choice
from .tasks import run_node

LAUNCHERS = ("local", "ray")


class InlineLauncher:
    """``--jobs 1``: each node runs in the engine's process when submitted."""

    slots = 1

    def submit(self, payload: dict[str, Any]) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(run_node(payload))
        except Exception as e:
            fut.set_exception(e)
        return fut

    def close(self) -> None:
        pass


class PoolLauncher:
    """``--jobs N``: a pool of N worker processes on this machine."""

    def __init__(self, jobs: int):
        self.slots = jobs
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, payload: dict[str, Any]) -> Future:
        return self.pool.submit(run_node, payload)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayLauncher:
    """Nodes as Ray tasks on a local instance or the cluster at ``$RAY_ADDRESS``."""

    def __init__(self, jobs: int, threads: int, gpus: float):
        try:
            import ray
        except ImportError:
            raise DomainlockError("--launcher ray needs Ray: pip install 'domainlock[ray]'") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            address = os.environ.get("RAY_ADDRESS")
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if not address:
                kwargs["num_cpus"] = max(jobs * max(threads, 1), 1)
            ray.init(address=address or None, **kwargs)
        self.remote = ray.remote(run_node).options(num_cpus=max(threads, 1), num_gpus=gpus, max_retries=0)
        self.slots = jobs

    def submit(self, payload: dict[str, Any]) -> Future:
        return self.remote.remote(payload).future()

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


class _Managed:
    def __init__(self, launcher: Any):
        self.launcher = launcher

    def __enter__(self) -> Any:
        return self.launcher

    def __exit__(self, *exc: Any) -> None:
        self.launcher.close()


def make_launcher(name: str, jobs: int, *, threads: int = 0, gpus: float = 0) -> _Managed:
    """A launcher as a context manager (closed, workers stopped, on exit)."""
    check_choice("launcher", name, LAUNCHERS)
    if name == "ray":
        return _Managed(RayLauncher(jobs, threads, gpus))
    return _Managed(InlineLauncher() if jobs == 1 else PoolLauncher(jobs))
