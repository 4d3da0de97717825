"""House rules of the code base (DEVELOPERS guide): no source file over 600 lines, module docstrings of at
most 40 lines (what the module does and its equation; measurements live in docs/), and no page, script or
module that speaks of how the project was developed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "domainlock"
MAX_LINES = 600
MAX_DOCSTRING_LINES = 40
HISTORY = re.compile(r"session[ -]?[0-9]|until session|since session", re.IGNORECASE)
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _docstring_lines(path: Path) -> int:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    first = tree.body[0] if tree.body else None
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        return first.end_lineno - first.lineno + 1
    return 0


def _text_files() -> list[Path]:
    """README.md and every text file under src/, docs/, scripts/ and benchmarks/ (build outputs skipped)."""
    files = [ROOT / "README.md"]
    for folder in ("src", "docs", "scripts", "benchmarks"):
        files += [f for f in (ROOT / folder).rglob("*") if f.is_file()
                  and not any(part == "__pycache__" or part.endswith(".egg-info") for part in f.parts)]
    return sorted(f for f in files if f.is_file() and b"\0" not in f.read_bytes()[:8192])


def test_sources_found():
    assert len(SOURCES) > 20


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_source_file_at_most_600_lines(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{_rel(path)} has {n} lines (at most {MAX_LINES}): split it"


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_module_docstring_at_most_40_lines(path):
    n = _docstring_lines(path)
    assert n <= MAX_DOCSTRING_LINES, (f"{_rel(path)}: module docstring of {n} lines (at most "
                                      f"{MAX_DOCSTRING_LINES}); move measurements to docs/design/")


def test_no_development_history():
    hits = []
    for path in _text_files():
        for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if HISTORY.search(line):
                hits.append(f"{_rel(path)}:{no}: {line.strip()[:100]}")
    assert not hits, "text that speaks of development sessions:\n" + "\n".join(hits)


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_resolve():
    """Every relative link of README.md and the pages under docs/ names a file or folder that exists (a
    generated page's report and database included: ``domainlock report`` and ``bench export`` write them)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for no, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for target in LINK.findall(line):
                path = target.split("#", 1)[0]
                if path and not re.match(r"[a-z][a-z0-9+.-]*:", path) and not (page.parent / path).exists():
                    broken.append(f"{_rel(page)}:{no}: {target}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)
