"""The import structure, read from the source with `ast` (nothing is imported): the layers the folders show.

- No import circle among the modules of compiler/, schedules/ and targets/ (imports inside functions count:
  a lazy import still ties two modules together).
- schedules/ and targets/ import of compiler/ only its leaf foundations (LEAVES); targets/ imports nothing of
  schedules/; the leaves import nothing of the project but each other.
- The runtime loader (compiler/runtime.py) reaches only the modules a deployment ships (RUNTIME), not the
  compiler (TVM's compiler half is not on a board).
- compiler/tvm_compat.py alone names the TVM paths that moved in 0.2x (tvm.tirx, tvm.s_tir, tvm.script.tirx)
  or constructs a relax TensorType, so a TVM upgrade touches one file; tests and examples included.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("compiler", "schedules", "targets")
LEAVES = {"compiler.errors", "compiler.tvm_compat", "compiler.progress", "compiler.io_safety"}
RUNTIME = {"compiler.runtime", "compiler.artifact", "compiler.config", "compiler.errors", "compiler.io_safety",
           "compiler.progress",
           # the manifest's typed records (standard library only): the report and the calibration it was built with
           "compiler.report", "compiler.calibrate.table"}
TVM_COMPAT = "compiler.tvm_compat"
MOVED = ("tvm.tirx", "tvm.s_tir", "tvm.script.tirx")  # and anything below them


def _python_files(folders):
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "out"))
            for name in sorted(filenames):
                if name.endswith(".py"):
                    yield os.path.join(dirpath, name)


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _parse(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


MODULES = {_module_name(p): p for p in _python_files(PACKAGES)}


def _imported_names(tree: ast.Module, module: str, is_package: bool):
    """(line, dotted name) of everything a module imports, anywhere in it; `from X import a` gives X.a."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parent = parts if is_package else parts[:-1]
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base


def _project_target(name: str):
    """The project module an imported name lands in (`compiler.x.f` -> `compiler.x`), or None."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in MODULES:
            return candidate
    return None


def _graph() -> dict[str, dict[str, int]]:
    """module -> {imported project module: first line}."""
    graph = {}
    for module, path in MODULES.items():
        edges: dict[str, int] = {}
        for line, name in _imported_names(_parse(path), module, path.endswith("__init__.py")):
            target = _project_target(name)
            if target and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def _circles(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _where(module: str, line: int) -> str:
    return f"{os.path.relpath(MODULES[module], ROOT)}:{line}"


def test_no_import_circle():
    graph = _graph()
    circles = _circles(graph)
    described = []
    for comp in circles:
        ties = [f"{_where(a, graph[a][b])} imports {b}" for a in comp for b in graph[a] if b in comp]
        described.append(" <-> ".join(comp) + "\n    " + "\n    ".join(ties))
    assert not circles, "import circles:\n" + "\n".join(described)


def test_layers():
    graph = _graph()
    wrong = []
    for module, edges in graph.items():
        top = module.split(".")[0]
        for target, line in edges.items():
            if top in ("schedules", "targets") and target.split(".")[0] == "compiler" and target not in LEAVES:
                wrong.append(f"{_where(module, line)}: {top}/ imports {target} (only {sorted(LEAVES)})")
            if top == "targets" and target.split(".")[0] == "schedules":
                wrong.append(f"{_where(module, line)}: targets/ imports {target}")
            if module in LEAVES and target not in LEAVES:
                wrong.append(f"{_where(module, line)}: the leaf {module} imports {target}")
    assert not wrong, "imports across the layers:\n" + "\n".join(wrong)


def test_runtime_loader_reaches_only_what_a_deployment_ships():
    graph, seen, todo = _graph(), set(), ["compiler.runtime"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert seen <= RUNTIME, f"compiler/runtime.py reaches {sorted(seen - RUNTIME)}"


def _moved_names(tree: ast.Module):
    """(line, what) of every use of a TVM path that moved in 0.2x, and of every TensorType construction."""
    def dotted(node):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            return ".".join([node.id, *reversed(parts)])
        return None

    def moved(name):
        return any(name == m or name.startswith(m + ".") for m in MOVED)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module or ""]
        elif isinstance(node, ast.Attribute):
            names = [dotted(node) or ""]
        else:
            names = []
        for name in names:
            if moved(name):
                yield node.lineno, name
        if isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname == "TensorType":
                yield node.lineno, "TensorType(...)"


@pytest.mark.parametrize("folder", [*PACKAGES, "tests", "examples"])
def test_one_module_names_what_moves_between_tvm_releases(folder):
    found = []
    for path in _python_files([folder]):
        if _module_name(path) == TVM_COMPAT:
            continue
        by_line = {}
        for line, what in _moved_names(_parse(path)):
            by_line.setdefault(line, what)
        found += [f"{os.path.relpath(path, ROOT)}:{line}: {what}" for line, what in sorted(by_line.items())]
    assert not found, (f"TVM names that moved in 0.2x, outside {TVM_COMPAT} (import them from there):\n"
                       + "\n".join(found))
