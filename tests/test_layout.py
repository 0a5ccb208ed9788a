"""The package's layout, as issue 11 and DESIGN.md set it: packages by layer, no module
over 600 lines, no import cycle between cosim's modules (counting every import, also
those inside functions), `import cosim` does no solver work, and a mechanism never
imports pandapower nor the grid check Pyomo."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cosim"
MAX_LINES = 600
LAYERS = ("config", "physical", "flex", "virtual", "markets", "sim", "io", "reporting", "bench", "study",
          "portal")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """cosim modules that `path` imports anywhere (top level or inside functions; not
    under ``if TYPE_CHECKING``)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # imports for type hints only never run
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("cosim"):
                found.add(t)
    return found


def test_top_level_is_the_layers():
    subpackages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert set(LAYERS) <= subpackages
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "cli.py"]


def test_no_module_is_over_600_lines():
    long = {name: len(p.read_text().splitlines()) for name, p in _modules().items()}
    assert {n: k for n, k in long.items() if k > MAX_LINES} == {}


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how packages re-export; a
    # submodule importing its package's __init__ back is the cycle we look for
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):  # a package re-exporting its own submodule
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif state.get(nxt) is None:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if state.get(name) is None:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_markets_do_not_import_pandapower_and_the_grid_check_not_pyomo():
    for name, path in _modules().items():
        text = path.read_text()
        if name.startswith("cosim.markets"):
            assert "import pandapower" not in text, name
        if name.startswith(("cosim.physical.grid", "cosim.sim.feedback")):
            assert "import pyomo" not in text, name


@pytest.mark.parametrize("module", ["cosim", "cosim.config.scenario"])
def test_import_does_no_solver_work(module):
    """Importing cosim loads neither HiGHS nor Pyomo."""
    code = f"import sys, {module}; print(sorted(m for m in ('highspy', 'pyomo') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
