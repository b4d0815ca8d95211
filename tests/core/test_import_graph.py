"""No two modules of rlhf_ds.engine import each other, not even through an import inside a function: a
cycle hidden that way works only while the function-level import stays where it is, and means the two
modules are one thing split in two places. (The graph is built for the whole package; the check covers
the engine, where two such cycles were.)"""
import ast
import os

import rlhf_ds

PACKAGE_DIR = os.path.dirname(rlhf_ds.__file__)


def _modules():
    """{dotted module name: file} for every module of the package."""
    out = {}
    root = os.path.dirname(PACKAGE_DIR)
    for folder, _, files in os.walk(PACKAGE_DIR):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def _imports(name, path, modules):
    """The package modules that `name` imports anywhere in its body (module level or in a function)."""
    is_package = path.endswith("__init__.py")
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            for a in node.names:      # `from pkg import module` imports the module, else pkg itself
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_imports():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert "rlhf_ds.engine.lora_export" in graph["rlhf_ds.engine.export"]
    # A hand-made cycle through a function-level import is found.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_in_the_engine():
    modules = {m: p for m, p in _modules().items() if m.startswith("rlhf_ds.engine")}
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert _cycles(graph) == []
