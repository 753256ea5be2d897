"""The package's import graph: no cycles, and every module imports on its own.

Two checks.  The static one reads every ``import`` of every module of the
package (at module level and inside functions: a deferred import that would
close a cycle only moves the cycle to call time) and fails on any cycle,
naming it.  The dynamic one imports each module alone, first thing, in a
fresh interpreter, so an order-dependent import (a module that only works
because another one happened to be imported before it) fails too.
"""
import ast
import importlib.machinery
import os
import re
import subprocess
import sys

import pytest

import fastattn
from fastattn import _dispatch

PKG_DIR = os.path.dirname(os.path.abspath(fastattn.__file__))
ROOT = os.path.dirname(PKG_DIR)


def _modules():
    """``{module name: source file or None}`` for every Python module,
    Cython source and built extension of the package."""
    mods = {}
    for dirpath, dirnames, filenames in os.walk(PKG_DIR):
        dirnames[:] = sorted(d for d in dirnames
                             if os.path.exists(os.path.join(dirpath, d, "__init__.py")))
        rel = os.path.relpath(dirpath, ROOT).replace(os.sep, ".")
        for f in sorted(filenames):
            stem, path = None, os.path.join(dirpath, f)
            if f.endswith((".py", ".pyx")):
                stem = f.rsplit(".", 1)[0]
            else:
                for suf in importlib.machinery.EXTENSION_SUFFIXES:
                    if f.endswith(suf):
                        stem, path = f[:-len(suf)], None
                        break
            if stem is None:
                continue
            name = rel if stem == "__init__" else f"{rel}.{stem}"
            if path is not None or name not in mods:
                mods[name] = path
    return mods


MODULES = _modules()


def _resolve(module, level, target):
    """Absolute name of ``from <level dots><target> import ...`` in ``module``."""
    if level == 0:
        return target
    is_pkg = os.path.basename(MODULES.get(module) or "") == "__init__.py"
    parts = module.split(".")
    base = parts if is_pkg else parts[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _edges_py(module, src):
    out = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in MODULES else base)
    return out


_CY_IMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+c?import\s+([\w, ]+)|c?import\s+([\w.]+))",
                        re.MULTILINE)


def _edges_pyx(module, src):
    out = set()
    for m in _CY_IMPORT.finditer(src):
        if m.group(3):
            out.add(m.group(3))
            continue
        target = m.group(1)
        level = len(target) - len(target.lstrip("."))
        base = _resolve(module, level, target.lstrip(".") or None)
        for name in (n.strip() for n in m.group(2).split(",")):
            sub = f"{base}.{name}"
            out.add(sub if sub in MODULES else base)
    return out


def import_graph():
    """``{module: set of package modules it imports}``."""
    graph = {}
    for name, path in MODULES.items():
        if path is None:
            graph[name] = set()
            continue
        with open(path, encoding="utf-8") as f:
            src = f.read()
        edges = _edges_py(name, src) if path.endswith(".py") else _edges_pyx(name, src)
        graph[name] = {e for e in edges if e.split(".")[0] == "fastattn" and e != name}
    return graph


def find_cycles(graph):
    """Every elementary cycle reachable by depth-first search (each reported
    once, as the list of modules around it)."""
    cycles, state, stack = [], {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return cycles


def test_the_graph_sees_the_package():
    """Guard for the cycle test: it reads the real modules and edges."""
    g = import_graph()
    for name in ("fastattn", "fastattn.weights", "fastattn.threads", "fastattn.nn.module",
                 "fastattn.nn.convert", "fastattn._layers", "fastattn.functional"):
        assert name in g, name
    assert "fastattn.nn.layers" in g["fastattn.nn.attention"]          # from .layers import
    assert "fastattn.weights" in g["fastattn.nn.module"]               # from .. import weights
    assert "fastattn._dispatch" in g["fastattn.functional"]            # from ._dispatch import
    assert "fastattn.nn.convert" in g["fastattn"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_weights_needs_nothing_from_the_layers():
    """weights.py is file I/O only: the torch conversion (which needs the
    layers) lives in nn/convert.py."""
    g = import_graph()
    assert not any(e.startswith("fastattn.nn") for e in g["fastattn.weights"])


def _built():
    """Names of the extension modules built in the tree."""
    return {n for n, p in MODULES.items() if p is None} | {
        n for n in MODULES if any(
            os.path.exists(os.path.join(ROOT, *n.split(".")[:-1], n.split(".")[-1] + suf))
            for suf in importlib.machinery.EXTENSION_SUFFIXES)}


def _importable():
    """Modules this machine can import: built extensions only, and kernel
    builds only for the ISAs the CPU runs (another could die of SIGILL)."""
    built, ok = _built(), []
    for name, path in sorted(MODULES.items()):
        if (path is None or path.endswith(".pyx")) and name not in built:
            continue
        isa = name.rpartition("._kernels_")[2] if "._kernels_" in name else None
        if isa is not None and (isa not in _dispatch.ORDER or not _dispatch.supported(isa)):
            continue
        ok.append(name)
    return ok


def test_every_module_imports_alone_in_a_fresh_interpreter(tmp_path):
    names = _importable()
    assert "fastattn.nn.convert" in names and "fastattn._layers" in names
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    code = ("import importlib, sys; m = importlib.import_module(sys.argv[1]); "
            "assert m.__name__ == sys.argv[1]")
    failures = []
    for i in range(0, len(names), 4):              # four interpreters at a time
        procs = [(n, subprocess.Popen([sys.executable, "-c", code, n], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
                 for n in names[i:i + 4]]
        for n, p in procs:
            out, err = p.communicate(timeout=300)
            if p.returncode != 0:
                failures.append(f"{n}: exit {p.returncode}\n{err[-2000:]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", ["fastattn.weights", "fastattn.threads"])
def test_leaf_modules_import_without_the_kernels(tmp_path, name):
    """weights.py and threads.py stand alone: loading them from their files
    (outside the package) imports no other fastattn module."""
    code = ("import importlib.util, sys; "
            f"s = importlib.util.spec_from_file_location('leaf', {MODULES[name]!r}); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "assert not [k for k in sys.modules if k.startswith('fastattn')], sys.modules")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
