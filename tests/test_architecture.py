"""Pure modules stay pure: no clocks, processes, sockets or event loops, directly or through
other lksup modules (DESIGN.md §4). Layering: lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "supervisor" / "lksup"

PURE = {
    "lksup.errors",
    "lksup.fleet.budget",
    "lksup.fleet.durations",
    "lksup.fleet.loadexpr",
    "lksup.fleet.schema",
    "lksup.fleet.yamlsrc",
    "lksup.fleet.normalize",
    "lksup.fleet.templating",
    "lksup.fleet.migrate",
    "lksup.reconcile.diff",
    "lksup.reconcile.render",
    "lksup.protocol.events",
    "lksup.protocol.backoff",
    "lksup.protocol.machine",
    "lksup.protocol.codec",
    "lksup.devserver.model",
    "lksup.devserver.dispatch",
    "lksup.jobs.framing",
    "lksup.jobs.ipc",
    "lksup._pb.lksup_ipc_pb2",
    "lksup.monitors.memory_policy",
    "lksup.monitors.load",
    "lksup.monitors.events",
    "lksup.control.api",
    "lksup.control.errors",
    "lksup.control.paths",
    "lksup.daemon.conditions",
    "lksup.daemon.status",
    "lksup.cli.present",
    "lksup.pool.ended",
    "lksup.daemon.intents",
}
FORBIDDEN = {
    "anyio",
    "asyncio",
    "trio",
    "websockets",
    "psutil",
    "time",
    "os",
    "socket",
    "subprocess",
    "signal",
    "threading",
    "multiprocessing",
    "httpx",
    "h11",
}
#: Layers from the bottom up; a module may import its own layer and the ones below.
LAYERS = [
    {"lksup.errors", "lksup.logs", "lksup.httpd"},
    {"lksup.fleet", "lksup.protocol", "lksup.jobs", "lksup._pb"},
    {"lksup.reconcile"},
    {"lksup.control", "lksup.transport", "lksup.pool", "lksup.monitors", "lksup.devserver"},
    {"lksup.daemon"},
    {"lksup.cli", "lksup.__main__"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return index
    return None


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_no_io(module: str) -> None:
    imports = _imports(MODULES[module])
    bad = {name for name in imports if name.split(".")[0] in FORBIDDEN}
    assert not bad, f"{module} imports {sorted(bad)}"
    internal = {name for name in imports if name in MODULES and name != "lksup"}
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    impure = internal - PURE - packages
    assert not impure, f"{module} imports impure lksup modules {sorted(impure)}"


def test_pure_modules_exist() -> None:
    assert set(MODULES) >= PURE


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_point_downwards(module: str) -> None:
    own = _layer(module)
    if own is None:
        return
    for name in _imports(MODULES[module]):
        other = _layer(name)
        assert other is None or other <= own, f"{module} (layer {own}) imports {name} ({other})"


#: The only parts of the child runtime the supervisor side may import.
JOBS_SHARED = {
    "lksup.jobs",
    "lksup.jobs.framing",
    "lksup.jobs.ipc",
    "lksup.jobs.context",
    "lksup.jobs.sockio",  # reading an IPC socket: both ends of it
    "lksup.jobs.sigmask",  # group signals at a spawn: both ends of it
}


#: Entry points of child processes that live outside ``lksup.jobs`` (run as ``python -m``, never
#: imported by the supervisor or the CLI): they may use the child runtime.
CHILD_ENTRIES = {"lksup.fleet.importcheck"}


@pytest.mark.parametrize(
    "module",
    sorted(m for m in MODULES if not m.startswith("lksup.jobs") and m not in CHILD_ENTRIES),
)
def test_supervisor_side_never_imports_the_child_runtime(module: str) -> None:
    jobs_imports = {
        name
        for name in _imports(MODULES[module])
        if name.startswith("lksup.jobs.") and name in MODULES
    }
    assert jobs_imports <= JOBS_SHARED, f"{module} imports {sorted(jobs_imports - JOBS_SHARED)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_child_entries_are_never_imported_in_process(module: str) -> None:
    assert not _imports(MODULES[module]) & CHILD_ENTRIES, f"{module} imports a child entry point"


def _load_time_imports(path: Path) -> set[str]:
    """What a module imports when it is loaded: its top level, ``if TYPE_CHECKING`` and
    ``try`` blocks included, function bodies (deliberately lazy imports) not."""
    found: set[str] = set()
    pending: list[ast.AST] = [ast.parse(path.read_text(), filename=str(path))]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _internal_imports(module: str) -> set[str]:
    """The lksup modules ``module`` imports when loaded (a name imported from a package counts
    when it is a module of its own), TYPE_CHECKING imports included."""
    found = set()
    for name in _load_time_imports(MODULES[module]):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != "lksup" and name != module:
            found.add(name)
    return found


def test_no_import_cycles() -> None:
    graph = {module: _internal_imports(module) for module in MODULES}
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module] - packages):  # a package's __init__ re-exports
            if state.get(other) == 1:
                cycles.append([*path[path.index(other) :], other])
            elif other not in state:
                visit(other, [*path, other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


#: The only modules outside the dev server that may import it (it is a tool of its own).
DEVSERVER_ENTRIES = {"lksup.cli.dev", "lksup.daemon.main"}
#: What the dev server may use of lksup: leaves that import nothing of lksup themselves, so
#: it can still be lifted out whole (it shares the HTTP layer with the daemon's servers).
DEVSERVER_USES = {"lksup.errors", "lksup.httpd"}


def test_the_dev_server_stands_apart() -> None:
    for module in MODULES:
        imports = {
            name
            for name in _imports(MODULES[module])  # lazy imports too: any use counts here
            if name.startswith("lksup.") and name in MODULES
        }
        if module.startswith("lksup.devserver"):
            outside = {m for m in imports if not m.startswith("lksup.devserver")}
            assert outside <= DEVSERVER_USES, f"{module} imports {sorted(outside)}"
        elif module not in DEVSERVER_ENTRIES:
            inside = {m for m in imports if m.startswith("lksup.devserver")}
            assert not inside, f"{module} imports the dev server: {sorted(inside)}"


@pytest.mark.parametrize("module", sorted(DEVSERVER_USES))
def test_what_the_dev_server_uses_imports_nothing_of_lksup(module: str) -> None:
    assert _internal_imports(module) == set(), f"{module} imports {_internal_imports(module)}"


def test_every_module_is_in_a_layer() -> None:
    loose = [m for m in MODULES if m != "lksup" and _layer(m) is None]
    assert not loose, f"modules in no layer: {loose}"


#: The one dependency inside layer 3: a pool watches memory through the monitor it is given.
LAYER_3_EDGES = {("lksup.pool", "lksup.monitors")}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_layer_3_packages_are_independent() -> None:
    layer = LAYERS[3]
    for module in MODULES:
        own = _package(module)
        if own not in layer:
            continue
        for name in _imports(MODULES[module]):
            other = _package(name)
            if other in layer and other != own:
                assert (own, other) in LAYER_3_EDGES, f"{module} imports {name}"


def test_the_documented_layers_are_the_enforced_ones() -> None:
    text = (PACKAGE.parent.parent / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    documented = [
        {f"lksup.{name.strip(' `')}" for name in line.split(". ", 1)[1].split("|")}
        for line in section.splitlines()
        if line[:1].isdigit() and ". " in line
    ]
    assert documented == list(reversed(LAYERS))
