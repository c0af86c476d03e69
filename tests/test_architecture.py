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
    {"lksup.errors"},
    {"lksup.fleet", "lksup.protocol", "lksup.jobs", "lksup._pb"},
    {"lksup.reconcile"},
    {"lksup.control", "lksup.transport", "lksup.pool", "lksup.monitors", "lksup.devserver"},
    {"lksup.daemon"},
    {"lksup.cli"},
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
