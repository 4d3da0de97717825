"""The benchmark engine: suites (:mod:`.suite`) expanded into a graph of source -> protect -> attack nodes
(:mod:`.graph`), run resumably by :func:`run_bench` (:mod:`.engine`, :mod:`.launchers`, :mod:`.tasks`) into a SQLite
store (:mod:`.store`), and turned into ``report.md``/``report.html`` by :func:`write_report` (:mod:`.report`);
:func:`export` writes a folder's results as a SQLite database, CSV or JSON lines."""

from .engine import plan, run_bench
from .report import write_report
from .store import Store, export
from .suite import Suite, load_suite, suite_names

__all__ = ["Store", "Suite", "export", "load_suite", "plan", "run_bench", "suite_names", "write_report"]
