"""The package's import graph has no cycles, and the public API is what the README promises.

The graph is read statically from every ``import`` statement in ``src/domainlock`` (including imports inside
functions and ``TYPE_CHECKING`` blocks), so a cycle hidden behind a lazy import is still one.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "domainlock"


def _modules(src: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """``dotted name -> (file, is_package)`` for every module under ``src/domainlock``."""
    out = {}
    for path in (src / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _targets(module: str, is_pkg: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """The modules of this package that one import statement loads (the innermost one named)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".")[:None if is_pkg else -1]
            base = base[:len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
    out = []
    for name in names:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in known:
            out.append(name)
    return out


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    mods = _modules(src)
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                deps.update(t for t in _targets(name, is_pkg, node, known) if t != name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import x\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..b import y\n")   # lazy imports count
    (pkg / "b.py").write_text("from .sub import a\n")
    (pkg / "c.py").write_text("from . import b\n")
    graph = import_graph(tmp_path)
    assert graph[f"{PACKAGE}.sub.a"] == {f"{PACKAGE}.b"}
    assert cycles(graph) == [[f"{PACKAGE}.b", f"{PACKAGE}.sub.a"]]


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40
    assert cycles(graph) == []


def test_method_modules_do_not_import_each_other_through_the_registry():
    graph = import_graph()
    registry = f"{PACKAGE}.methods.registry"
    assert not {d for d in graph[registry] if d.startswith(f"{PACKAGE}.methods.") and d != f"{PACKAGE}.methods.base"}


PUBLIC = ["build_model", "evaluate", "finetune_attack", "load_artifact", "load_domain", "protect", "save_artifact",
          "slc", "verify", "wrap_model"]


def test_public_api_is_the_documented_handful():
    import domainlock

    assert sorted(n for n in domainlock.__all__ if n != "__version__") == PUBLIC
    for name in PUBLIC:
        assert callable(getattr(domainlock, name)), name
    from domainlock.attacks.finetune import finetune_attack
    from domainlock.methods import protect

    assert domainlock.protect is protect and domainlock.finetune_attack is finetune_attack


def test_version_has_one_source():
    from importlib import metadata

    import domainlock

    assert metadata.version("domainlock") == domainlock.__version__


@pytest.mark.parametrize("name", sorted(importlib.import_module("domainlock.methods.registry").BUILTIN_METHODS))
def test_every_builtin_method_registers_under_its_name(name):
    from domainlock.methods.registry import get_method_class

    assert get_method_class(name).name == name


def test_readme_python_example_uses_only_the_public_api():
    readme = (SRC.parent / "README.md").read_text()
    block = readme.split("## Quickstart: Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    tree = ast.parse(block)
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert [(a.name, a.asname) for n in imports for a in n.names] == [("domainlock", "dl")]
    used = {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "dl"}
    assert used == set(PUBLIC)   # the example shows every public name and nothing else
