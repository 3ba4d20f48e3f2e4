"""The import graph of the server and the client follows the allowed directions and has no cycle.

The graph is built statically with :mod:`ast` over ``server/convserve_server`` and
``client/convserve`` (the generated ``convserve/v1`` code excluded): every ``import`` and
``from ... import`` counts, also those inside functions and under ``TYPE_CHECKING``, and so do
``importlib.import_module("...")`` calls with a constant name. Relative imports are resolved, and
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
An import of ``a.b.c`` is an edge to ``a.b.c`` only (the parent packages' ``__init__`` run too,
but they are not counted as edges). docs/architecture.md shows the same table.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"convserve_server": ROOT / "server" / "convserve_server", "convserve": ROOT / "client" / "convserve"}
GENERATED = "convserve.v1"  # generated code: a target only, never scanned

# --- The allowed directions -----------------------------------------------------------------
# layer -> what its modules may import: other layers by name, or single modules by their full
# name. A layer may always import its own modules. Imports outside the two packages (stdlib,
# third party) are free, except those in FORBIDDEN_EXTERNAL.
ENGINE_CORE_MODULES = ("config", "errors", "info", "cancellation", "resources")
SERVER_TOP_MODULES = ("app", "cli", "calibrate", "__main__")
SERVER_MAY_USE_CLIENT = ("proto", "convserve.codec", "convserve._wire", "convserve._shared_memory")
ALLOWED: dict[str, tuple[str, ...]] = {
    # the server
    "top": (
        "version",
        "transport",
        "admission",
        "ops",
        "errors",
        "settings",
        "engine",
        "engine.layers",
        "engine.signal",
        "engine.fft",
        "engine.core",
        *SERVER_MAY_USE_CLIENT,
    ),
    "transport": (
        "version",
        "admission",
        "ops",
        "errors",
        "settings",
        "engine",
        "engine.layers",
        "engine.signal",
        "engine.fft",
        "engine.core",
        *SERVER_MAY_USE_CLIENT,
    ),
    "admission": ("version", "ops", "errors", "settings", "engine", "engine.layers", "engine.signal", "engine.fft", "engine.core", *SERVER_MAY_USE_CLIENT),
    "ops": ("settings",),
    "settings": (),
    "version": (),  # convserve_server/__init__.py: the package's docstring and __version__, no imports
    "errors": ("convserve_server.engine.errors", "convserve_server.engine.cancellation"),  # the engine exceptions it re-exports
    # the engine: layers -> signal -> fft -> core; the facade (engine/__init__.py) may import all of it
    "engine": ("engine.layers", "engine.signal", "engine.fft", "engine.core"),
    "engine.layers": ("engine.signal", "engine.fft", "engine.core"),
    "engine.signal": ("engine.fft", "engine.core"),
    "engine.fft": ("engine.core",),
    "engine.core": (),  # config, errors, info, cancellation, resources import no engine module, not even each other
    # the client: never the server
    "client": ("proto",),
    "proto": ("client",),
}
FORBIDDEN_EXTERNAL: dict[str, tuple[str, ...]] = {
    layer: ("grpc", "grpc_health", "grpc_reflection", "grpc_status") for layer in ("engine", "engine.layers", "engine.signal", "engine.fft", "engine.core")
}


def layer_of(module: str) -> str | None:
    """The layer of one of our modules (None: not in the table, which the test reports)."""
    parts = module.split(".")
    if parts[0] == "convserve":
        return "proto" if module == GENERATED or module.startswith(GENERATED + ".") else "client"
    if parts[0] != "convserve_server":
        return None
    if len(parts) == 1:
        return "version"
    if len(parts) == 2 and parts[1] in SERVER_TOP_MODULES:
        return "top"
    if len(parts) == 2 and parts[1] in ("settings", "errors"):
        return parts[1]
    if parts[1] in ("transport", "admission", "ops"):
        return parts[1]
    if parts[1] == "engine":
        if len(parts) == 2:
            return "engine"
        if parts[2] in ("layers", "signal", "fft"):
            return "engine." + parts[2]
        if len(parts) == 3 and parts[2] in ENGINE_CORE_MODULES:
            return "engine.core"
    return None


# --- Building the graph ---------------------------------------------------------------------


def module_files() -> dict[str, Path]:
    """Every module of both packages (generated code included, as a target), by dotted name."""
    modules: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute package or module a ``from X import ...`` names."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _constant_import_module(node: ast.Call) -> str | None:
    """``importlib.import_module("x")`` / ``__import__("x")`` with a constant absolute name."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
        return first.value
    return None


def imports_of(module: str, source: str, is_package: bool, known: Iterable[str]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in ``source``, at any depth."""
    known = set(known)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            base = _resolve_from(module, is_package, node)
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                yield (candidate if candidate in known else base), node.lineno
        elif isinstance(node, ast.Call):
            target = _constant_import_module(node)
            if target:
                yield target, node.lineno


def build_graph() -> tuple[dict[str, dict[str, int]], set[str], dict[str, list[tuple[str, int]]]]:
    """(edges between our modules with a line each, scanned modules, external imports per module)."""
    modules = module_files()
    ours = set(modules)
    scanned = {name for name in modules if not (name == GENERATED or name.startswith(GENERATED + "."))}
    edges: dict[str, dict[str, int]] = {name: {} for name in scanned}
    external: dict[str, list[tuple[str, int]]] = {name: [] for name in scanned}
    for name in sorted(scanned):
        path = modules[name]
        for target, line in imports_of(name, path.read_text(), _is_package(path), ours):
            if target.split(".")[0] in SOURCES:
                if target != name:
                    edges[name].setdefault(target, line)
            else:
                external[name].append((target, line))
    return edges, scanned, external


def _where(module: str, line: int) -> str:
    path = module_files()[module]
    return f"{path.relative_to(ROOT)}:{line}"


# --- Checks ---------------------------------------------------------------------------------


def _allows(layer: str, target: str) -> bool:
    target_layer = layer_of(target)
    allowed = ALLOWED[layer]
    return target_layer == layer or target_layer in allowed or target in allowed


def direction_violations(edges: dict[str, dict[str, int]]) -> list[str]:
    """Every edge the table forbids, and every module with no layer."""
    problems = []
    for module, targets in sorted(edges.items()):
        layer = layer_of(module)
        if layer is None:
            problems.append(f"{module}: has no layer in ALLOWED (add it to layer_of)")
            continue
        for target, line in sorted(targets.items()):
            if layer_of(target) is None:
                problems.append(f"{module} -> {target} ({_where(module, line)}): {target} is not one of our modules or has no layer")
            elif not _allows(layer, target):
                rule = ", ".join(ALLOWED[layer]) or "nothing of ours"
                problems.append(f"{module} -> {target} ({_where(module, line)}): {layer} may import only {rule}, not {layer_of(target)}")
    return problems


def external_violations(external: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Imports of third-party packages a layer must not use (the engine and grpc)."""
    problems = []
    for module, targets in sorted(external.items()):
        forbidden = FORBIDDEN_EXTERNAL.get(layer_of(module) or "", ())
        for target, line in targets:
            if target.split(".")[0] in forbidden:
                problems.append(f"{module} -> {target} ({_where(module, line)}): {layer_of(module)} never imports {target.split('.')[0]}")
    return problems


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a closed path of modules) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_a_cycle(component, edges) for component in components]


def _a_cycle(component: list[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """A shortest closed path through the component's first module (breadth first)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(edges.get(node, {})):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target in members and target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    return component


def _describe(cycle: list[str], edges: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} -> {b} ({_where(a, edges[a][b])})" for a, b in zip(cycle, cycle[1:])]
    return "cycle: " + "; ".join(steps)


# --- Tests ----------------------------------------------------------------------------------


def test_the_resolver_counts_relative_nested_and_submodule_imports() -> None:
    """The graph builder itself: relative imports, imports inside functions, ``from pkg import module``."""
    source = (
        "from . import sibling\n"
        "from .. import helper as h\n"
        "from convserve_server.engine import EngineConfig\n"
        "def run():\n"
        "    from convserve_server.engine import errors\n"
        "    import importlib\n"
        "    importlib.import_module('convserve_server.settings')\n"
    )
    known = ["convserve_server.engine.fft.sibling", "convserve_server.engine.helper", "convserve_server.engine", "convserve_server.engine.errors"]
    found = {target for target, _ in imports_of("convserve_server.engine.fft.plans", source, False, known)}
    assert found == {
        "convserve_server.engine.fft.sibling",
        "convserve_server.engine.helper",
        "convserve_server.engine",
        "convserve_server.engine.errors",
        "importlib",
        "convserve_server.settings",
    }
    package = {target for target, _ in imports_of("convserve_server.engine.fft", "from . import sibling\n", True, known)}
    assert package == {"convserve_server.engine.fft.sibling"}


def test_the_graph_is_not_empty_and_finds_known_edges() -> None:
    """The graph covers both packages and holds edges the code is known to have (so no check passes vacuously)."""
    edges, scanned, _ = build_graph()
    assert len(scanned) > 50 and sum(len(targets) for targets in edges.values()) > 100
    assert "convserve_server.transport.servicer" in edges["convserve_server.app"]  # module level
    assert "convserve_server.admission.workers" in edges["convserve_server.transport.servicer"]
    assert "convserve_server.app" in edges["convserve_server.cli"]  # inside a function
    assert "convserve.codec" in edges["convserve._base"]  # from pkg import module
    assert not any(name.startswith(GENERATED) for name in scanned)
    assert all(layer in ALLOWED for layer in (layer_of(name) for name in scanned) if layer)


def test_imports_follow_the_allowed_directions() -> None:
    """No forbidden edge between our modules, no module without a layer, no grpc in the engine."""
    edges, _, external = build_graph()
    problems = direction_violations(edges) + external_violations(external)
    assert not problems, f"{len(problems)} forbidden imports:\n" + "\n".join(problems)


def test_the_client_never_imports_the_server() -> None:
    """``convserve.*`` imports nothing of ``convserve_server`` (a client-only install has no server)."""
    edges, _, _ = build_graph()
    problems = [
        f"{module} -> {target} ({_where(module, line)})"
        for module, targets in sorted(edges.items())
        if module.split(".")[0] == "convserve"
        for target, line in sorted(targets.items())
        if target.split(".")[0] == "convserve_server"
    ]
    assert not problems, "the client imports the server:\n" + "\n".join(problems)


def test_there_is_no_import_cycle() -> None:
    """No cycle between modules, counting imports inside functions."""
    edges, _, _ = build_graph()
    found = cycles(edges)
    assert not found, f"{len(found)} import cycles:\n" + "\n".join(_describe(cycle, edges) for cycle in found)
