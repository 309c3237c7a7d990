"""The package's shape: each layer imports only from layers below it, and nothing imports in a cycle.

Layers, bottom up: ``hndsr.config`` / ``hndsr.paths`` < ``hndsr.models`` < ``hndsr.inference`` <
``hndsr.serving`` / ``hndsr.training`` / ``hndsr.evaluation`` < ``hndsr.cli``. Imports inside
functions count too (a lazy import is still a dependency).
"""

import ast
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "hndsr"
LAYERS = {
    "hndsr": 0,
    "hndsr.config": 0,
    "hndsr.paths": 0,
    "hndsr.models": 1,
    "hndsr.inference": 2,
    "hndsr.serving": 3,
    "hndsr.training": 3,
    "hndsr.evaluation": 3,
    "hndsr.cli": 4,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts as a.b when a.b is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name.startswith("hndsr") and name != "hndsr":
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_layer_imports_a_higher_one():
    wrong = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, bs in graph().items()
        for b in bs
        if layer(b) > layer(a)
    ]
    assert not wrong, wrong


def test_no_import_cycle_between_modules_or_sub_packages():
    edges = graph()
    assert find_cycle(edges) is None, find_cycle(edges)
    packages: dict[str, set[str]] = {}
    for a, bs in edges.items():
        pa = ".".join(a.split(".")[:2])
        packages.setdefault(pa, set()).update(".".join(b.split(".")[:2]) for b in bs)
    packages = {a: bs - {a} for a, bs in packages.items()}
    assert find_cycle(packages) is None, find_cycle(packages)


def test_the_checker_catches_what_it_should():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert (
        layer("hndsr.models.fno") < layer("hndsr.inference.pipeline") < layer("hndsr.serving.core") < layer("hndsr.cli")
    )


def test_the_light_client_does_not_import_the_server():
    client = ROOT / "client" / "hndsr_client"
    for path in client.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("hndsr."), (path, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("hndsr.") for a in node.names), path


def test_the_interface_definition_imports_nothing_outside_the_standard_library():
    """client/hndsr_client/interface.py is the served interface: the light front stubs, the server,
    the client and the UI all import it, so it must load with Python alone."""
    import sys

    path = ROOT / "client" / "hndsr_client" / "interface.py"
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}, modules
