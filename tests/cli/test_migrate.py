"""``lksup init --from``: SDK agents become fleet files that validate and keep their values."""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from click.testing import Result

from lksup.fleet.loading import load_fleet
from lksup.fleet.migrate import Migration, MigrationError, header, stderr_lines, to_fleet
from lksup.fleet.schema import Agent, EnvRef, Fleet
from tests.cli.helpers import run_cli
from tests.conftest import FIXTURES

MIGRATE = FIXTURES / "migrate"
SECRETS = ("APIcanaryKEYd0n0tpr1nt", "canary-secret-never-printed-0123456789abcdef")
PROXY_SECRETS = ("proxy-canary-pw", "proxyuser")


@functools.cache
def _init(*args: str) -> Result:
    return run_cli("init", "--working-dir", str(FIXTURES), *args)


def init(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """``lksup init`` on the fixtures (each child process costs a livekit.agents import)."""
    if env:
        return run_cli("init", "--working-dir", str(FIXTURES), *args, env=env)
    return _init(*args)


def fixture_module(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The fixture imported here, in the test, to compare with what the CLI printed."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    return importlib.import_module(f"migrate.{name}")


def written(tmp_path: Path, result: Result) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(result.stdout)
    return path


def validated(tmp_path: Path, result: Result) -> Fleet:
    """The printed fleet passes `lksup validate` (no warnings); its normalized form."""
    assert result.exit_code == 0, result.stderr
    path = written(tmp_path, result)
    check = run_cli("validate", str(path))
    assert check.exit_code == 0, check.stderr
    assert check.stderr == ""
    return load_fleet(str(path)).fleet


def ref(function: Any) -> str:
    return f"{function.__module__}:{function.__qualname__}"


def header_options(stdout: str, section: str) -> list[str]:
    """The options listed under one section of the header comment."""
    lines = stdout.split("\n#\n")
    block = next(b for b in lines if section in b)
    return re.findall(r"^#   ([a-z_]+)", block, flags=re.M)


def warned(stderr: str) -> list[str]:
    return re.findall(r"^lksup: warning: ([a-z_]+)", stderr, flags=re.M)


# --- the CLI, on SDK-style modules ---------------------------------------------------------


def test_worker_options_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every mapped WorkerOptions value is in the validated fleet, equal to the module's."""
    result = init("--from", "migrate.worker_options:opts")
    fleet = validated(tmp_path, result)
    opts = fixture_module("worker_options", monkeypatch).opts
    agent = fleet.agents[opts.agent_name]
    assert list(fleet.agents) == ["support"]
    assert fleet.metadata.name == "support"
    assert agent.runtime == "livekit-agents"
    assert agent.entrypoint == ref(opts.entrypoint_fnc)
    assert agent.prewarm == ref(opts.prewarm_fnc)
    assert agent.request_fnc == ref(opts.request_fnc)
    for option in (
        "load_threshold",
        "num_idle_processes",
        "job_memory_warn_mb",
        "job_memory_limit_mb",
        "drain_timeout",
        "shutdown_process_timeout",
        "initialize_process_timeout",
        "max_retry",
    ):
        assert getattr(agent, option) == getattr(opts, option), option
    assert agent.worker_type == opts.worker_type.name.lower() == "publisher"
    permissions = opts.permissions
    assert agent.permissions.can_publish_data is permissions.can_publish_data is False
    assert agent.permissions.hidden is permissions.hidden is True
    assert agent.permissions.can_publish_sources == ["microphone"]
    assert agent.livekit.url == opts.ws_url
    assert agent.livekit.api_key == EnvRef(env="LIVEKIT_API_KEY")
    assert agent.livekit.api_secret == EnvRef(env="LIVEKIT_API_SECRET")
    assert agent.env == {"HTTPS_PROXY": opts.http_proxy}
    assert fleet.supervisor.http == f"{opts.host}:{opts.port}"
    assert fleet.supervisor.drain_timeout == opts.drain_timeout
    assert agent.load == "cpu"  # load_fnc is not carried over


def test_worker_options_no_equivalent_listed_in_file_and_on_stderr() -> None:
    """Options with no fleet equivalent are comments at the top and warnings on stderr."""
    result = init("--from", "migrate.worker_options:opts")
    dropped = ["load_fnc", "multiprocessing_context"]
    assert header_options(result.stdout, "Not carried over") == dropped
    assert warned(result.stderr) == dropped
    assert "load_fnc (migrate.worker_options.compute_load): use the declarative `load:`" in (
        result.stderr
    )
    assert "job_executor_type: job_executor: thread; up to max_jobs_per_process" in result.stderr
    assert header_options(result.stdout, "Carried over differently") == [
        "job_executor_type",
        "http_proxy",
        "port",
    ]
    assert yaml.safe_load(result.stdout)["agents"]["support"]["job_executor"] == "thread"
    assert yaml.safe_load(result.stdout)["apiVersion"] == "lksup/v1"  # comments stay comments


def test_agent_server_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An AgentServer's constructor options, rtc_session and setup_fnc reach the fleet."""
    result = init("--from", "migrate.agent_server:server")
    fleet = validated(tmp_path, result)
    module = fixture_module("agent_server", monkeypatch)
    agent = fleet.agents["sales"]  # @server.rtc_session(agent_name="sales", ...)
    assert agent.entrypoint == ref(module.entrypoint)
    assert agent.prewarm == ref(module.server.setup_fnc) == "migrate.agent_server:prewarm"
    assert agent.request_fnc == ref(module.on_request)
    # AgentServer(ws_url=..., num_idle_processes=1, drain_timeout=7200, max_retry=0,
    #             prometheus_port=9100, job_memory_limit_mb=500, preload_modules=[...])
    assert agent.livekit.url == "ws://127.0.0.1:7880"
    assert agent.num_idle_processes == 1
    assert agent.drain_timeout == fleet.supervisor.drain_timeout == 7200
    assert agent.max_retry == 1  # 0 = give up at once in the SDK, forever in lksup
    assert agent.job_memory_limit_mb == 500
    assert agent.job_memory_warn_mb == 0  # the SDK's 1000 would be above the limit
    assert fleet.supervisor.http == "0.0.0.0:9100"
    assert warned(result.stderr) == []
    assert agent.preload == ["json"]  # preload_modules: what the shared base imports too
    assert agent.session_end_fnc == "migrate.agent_server:on_end"  # on_session_end


def test_hard_coded_secrets_never_printed(tmp_path: Path) -> None:
    """Credentials in the code become env references; their values appear in no output."""
    for output in ("yaml", "json"):
        result = init("--from", "migrate.hardcoded_secret:opts", "-o", output)
        assert result.exit_code == 0, result.stderr
        for secret in (*SECRETS, *PROXY_SECRETS):
            assert secret not in result.stdout
            assert secret not in result.stderr
    fleet = validated(tmp_path, result)
    livekit = fleet.agents["canary"].livekit
    assert (livekit.api_key, livekit.api_secret) == (
        EnvRef(env="LIVEKIT_API_KEY"),
        EnvRef(env="LIVEKIT_API_SECRET"),
    )
    assert fleet.agents["canary"].env == {"HTTPS_PROXY": EnvRef(env="HTTPS_PROXY")}
    assert "the fleet reads $LIVEKIT_API_SECRET instead" in result.stderr
    assert "proxy URL (http://proxy.internal:3128) holds credentials" in result.stderr


def test_environment_is_not_taken_for_the_module(tmp_path: Path) -> None:
    """$LIVEKIT_URL and friends in the caller's environment do not leak into the fleet."""
    env: dict[str, str | None] = {
        "LIVEKIT_URL": "wss://from-the-environment.example.com",
        "LIVEKIT_AGENT_NAME": "from-env",
        "HTTPS_PROXY": "http://env-proxy:1",
    }
    result = init("--from", "migrate.minimal:opts", "--name", "helper", env=env)
    fleet = validated(tmp_path, result)
    assert list(fleet.agents) == ["helper"]
    assert fleet.agents["helper"].livekit.url is None
    assert fleet.agents["helper"].env == {}
    assert "from-the-environment" not in result.stdout
    assert "ws_url: not set in the module (the SDK reads $LIVEKIT_URL)" in result.stderr


def test_no_agent_name_needs_name() -> None:
    """Automatic dispatch has no lksup equivalent: without --name, a usage error."""
    result = init("--from", "migrate.minimal:opts")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "the module registers no agent_name (automatic dispatch" in result.stderr
    assert "pass --name NAME" in result.stderr


def test_options_only_under_main(tmp_path: Path) -> None:
    """Options built only under __main__: exit 2, the line, and what to change."""
    source = (MIGRATE / "main_only.py").read_text().splitlines()
    line = next(i for i, text in enumerate(source, 1) if "WorkerOptions(" in text)
    result = init("--from", "migrate.main_only:opts")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"lksup: error: migrate/main_only.py:{line}: the WorkerOptions is built only under "
        '`if __name__ == "__main__":`'
    )
    assert "build it at module level (`opts = WorkerOptions(...)`)" in result.stderr


def test_import_error_shows_the_users_line_without_traceback() -> None:
    result = init("--from", "migrate.import_error:opts")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "lksup: error: migrate/import_error.py:5: cannot import 'migrate.import_error': "
        "ModuleNotFoundError: No module named 'helpers_that_do_not_exist'\n"
    )


def test_closure_and_lambda_are_problems() -> None:
    """Functions the fleet must name but cannot: exit 1, each named, no fleet."""
    result = init("--from", "migrate.unreferenceable:opts")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "lksup: error: entrypoint_fnc migrate.unreferenceable.make_entrypoint.<locals>.entrypoint: "
        "it is defined inside another function (a closure); define it at module level so that it "
        "can be imported as module:attribute",
        "lksup: error: prewarm_fnc migrate.unreferenceable.<lambda>: it is a lambda; define it "
        "with def at module level",
    ]


def test_lambda_load_fnc_is_only_a_warning(tmp_path: Path) -> None:
    result = init("--from", "migrate.unreferenceable:lambda_load")
    validated(tmp_path, result)
    assert warned(result.stderr) == ["load_fnc"]
    assert header_options(result.stdout, "Not carried over") == ["load_fnc"]


@pytest.mark.parametrize(
    ("source", "code", "message"),
    [
        ("migrate.worker_options", 2, "'migrate.worker_options' must have the shape"),
        (
            "migrate.worker_options:nope",
            2,
            "lksup: error: migrate/worker_options.py: module "
            "'migrate.worker_options' has no attribute 'nope'; it has opts",
        ),
        (
            "migrate.worker_options:entrypoint",
            2,
            "lksup: error: migrate.worker_options:entrypoint "
            "is a function, not a livekit-agents WorkerOptions or AgentServer",
        ),
        ("migrate.not_there:opts", 1, "cannot import 'migrate.not_there': ModuleNotFoundError"),
    ],
)
def test_bad_references(source: str, code: int, message: str) -> None:
    result = init("--from", source)
    assert result.exit_code == code, result.stderr
    assert message in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_module_blocking_at_import_is_killed() -> None:
    result = init("--from", "migrate.blocks_at_import:opts", "--timeout", "0.5")
    assert result.exit_code == 1
    assert result.stderr == (
        "lksup: error: reading migrate.blocks_at_import:opts took over 0.5s "
        "(does the module block at import?)\n"
    )


def test_python_must_exist() -> None:
    result = init("--from", "migrate.minimal:opts", "--python", "/nonexistent/bin/python")
    assert result.exit_code == 2
    assert "cannot run /nonexistent/bin/python" in result.stderr


def test_cli_never_imports_user_code(tmp_path: Path) -> None:
    """The module is read in a child process, from --working-dir, written as working_dir."""
    marker = tmp_path / "imported-by"
    (tmp_path / "marker_agent.py").write_text(
        "import os, pathlib\n"
        "from livekit.agents import JobContext, WorkerOptions\n"
        f"pathlib.Path({str(marker)!r}).write_text(str(os.getpid()))\n"
        "async def entrypoint(ctx: JobContext) -> None: ...\n"
        "opts = WorkerOptions(entrypoint_fnc=entrypoint, agent_name='marker')\n"
    )
    result = run_cli("init", "--from", "marker_agent:opts", "--working-dir", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert int(marker.read_text()) != os.getpid()
    document = yaml.safe_load(result.stdout)
    assert document["agents"]["marker"]["working_dir"] == str(tmp_path)


def test_json_output_is_the_same_fleet() -> None:
    as_yaml = init("--from", "migrate.worker_options:opts")
    as_json = init("--from", "migrate.worker_options:opts", "-o", "json")
    assert json.loads(as_json.stdout) == yaml.safe_load(as_yaml.stdout)
    assert warned(as_json.stderr) == warned(as_yaml.stderr)


# --- the pure mapper, table-driven ---------------------------------------------------------

ENTRY = {"function": "agent.entrypoint", "ref": "agent:entrypoint", "problem": None}


def read_doc(kind: str = "WorkerOptions", name: str = "a", **options: Any) -> dict[str, Any]:
    return {
        "ok": True,
        "kind": kind,
        "sdk_version": "1.8.9",
        "agent_name": name,
        "options": {"entrypoint_fnc": ENTRY, **options},
    }


def fn(name: str) -> dict[str, Any]:
    return {"function": f"agent.{name}", "ref": f"agent:{name}", "problem": None}


def notes(migration: Migration) -> dict[str, str]:
    return {n.option: n.kind for n in migration.notes}


BASE_NOTES = {"port": "default", "ws_url": "default"}

#: (options, agent fields expected, supervisor expected, notes expected beyond BASE_NOTES;
#: None: that base note is absent)
TABLE: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, str | None]]] = [
    ({}, {}, {}, {}),
    ({"prewarm_fnc": fn("prewarm")}, {"prewarm": "agent:prewarm"}, {}, {}),
    ({"request_fnc": fn("req")}, {"request_fnc": "agent:req"}, {}, {}),
    ({"load_threshold": 0.5}, {"load_threshold": 0.5}, {}, {}),
    ({"load_threshold": math.inf}, {"load_threshold": 1}, {}, {"load_threshold": "changed"}),
    ({"load_threshold": 0}, {}, {}, {"load_threshold": "dropped"}),
    ({"num_idle_processes": 0}, {"num_idle_processes": 0}, {}, {}),
    (
        {"job_memory_warn_mb": 512.6},
        {"job_memory_warn_mb": 513},
        {},
        {"job_memory_warn_mb": "changed"},
    ),
    ({"job_memory_limit_mb": 2000}, {"job_memory_limit_mb": 2000}, {}, {}),
    (
        {"job_memory_limit_mb": 500},
        {"job_memory_limit_mb": 500, "job_memory_warn_mb": 0},
        {},
        {"job_memory_warn_mb": "changed"},
    ),
    ({"drain_timeout": 0}, {"drain_timeout": 0}, {"drain_timeout": 0}, {}),
    ({"drain_timeout": 90}, {"drain_timeout": 90}, {"drain_timeout": 90}, {}),
    ({"shutdown_process_timeout": 2.5}, {"shutdown_process_timeout": 2.5}, {}, {}),
    ({"initialize_process_timeout": 60.0}, {"initialize_process_timeout": 60}, {}, {}),
    (
        {
            "permissions": {
                "can_publish": True,
                "can_subscribe": False,
                "can_publish_data": True,
                "can_update_metadata": True,
                "can_publish_sources": ["camera", "unknown"],
                "hidden": False,
            }
        },
        {"permissions": {"can_subscribe": False, "can_publish_sources": ["camera"]}},
        {},
        {"permissions.can_publish_sources": "dropped"},
    ),
    ({"worker_type": "publisher"}, {"worker_type": "publisher"}, {}, {}),
    ({"max_retry": 3}, {"max_retry": 3}, {}, {}),
    ({"max_retry": 0}, {"max_retry": 1}, {}, {"max_retry": "changed"}),
    ({"api_key": {"secret": True}}, {}, {}, {"api_key": "changed"}),
    ({"api_secret": {"secret": True}}, {}, {}, {"api_secret": "changed"}),
    (
        {"http_proxy": {"url": "http://p:3128", "credentials": False}},
        {"env": {"HTTPS_PROXY": "http://p:3128"}},
        {},
        {"http_proxy": "changed"},
    ),
    (
        {"http_proxy": {"url": "http://p:3128", "credentials": True}},
        {"env": {"HTTPS_PROXY": {"env": "HTTPS_PROXY"}}},
        {},
        {"http_proxy": "changed"},
    ),
    ({"port": 9000}, {}, {"http": "0.0.0.0:9000"}, {"port": "changed"}),
    ({"host": "127.0.0.1", "port": 9000}, {}, {"http": "127.0.0.1:9000"}, {"port": "changed"}),
    (
        {"prometheus_port": 9100},
        {},
        {"http": "0.0.0.0:9100"},
        {"prometheus_port": "changed", "port": None},
    ),
    (
        {"port": 9000, "prometheus_port": 9100},
        {},
        {"http": "0.0.0.0:9000"},
        {"prometheus_port": "changed", "port": None},
    ),
    ({"port": 0}, {}, {}, {"port": "dropped"}),
    ({"host": "127.0.0.1"}, {}, {}, {"host": "dropped"}),
    ({"load_fnc": fn("load")}, {}, {}, {"load_fnc": "dropped"}),
    (
        {"job_executor_type": "thread"},
        {"job_executor": "thread"},
        {},
        {"job_executor_type": "changed"},
    ),
    ({"job_executor_type": "process"}, {}, {}, {}),
    ({"multiprocessing_context": "spawn"}, {}, {}, {"multiprocessing_context": "dropped"}),
    ({"preload_modules": ["torch"]}, {"preload": ["torch"]}, {}, {}),
    ({"on_session_end": fn("end")}, {"session_end_fnc": "agent:end"}, {}, {}),
    ({"session_end_timeout": 30.0}, {}, {}, {"session_end_timeout": "dropped"}),
    ({"on_simulation_end": fn("sim")}, {}, {}, {"on_simulation_end": "dropped"}),
    ({"log_level": "DEBUG"}, {}, {}, {"log_level": "dropped"}),
    ({"log_level": "INFO"}, {}, {}, {}),
    ({"prometheus_multiproc_dir": "/tmp/p"}, {}, {}, {"prometheus_multiproc_dir": "dropped"}),
    ({"some_future_option": {"type": "Thing"}}, {}, {}, {"some_future_option": "dropped"}),
    ({"load_threshold": {"type": "Thing"}}, {}, {}, {"load_threshold": "dropped"}),
    ({"num_idle_processes": {"type": "Thing"}}, {}, {}, {"num_idle_processes": "dropped"}),
]


@pytest.mark.parametrize(("options", "agent", "supervisor", "expected_notes"), TABLE)
def test_mapping_table(
    options: dict[str, Any],
    agent: dict[str, Any],
    supervisor: dict[str, Any],
    expected_notes: dict[str, str | None],
) -> None:
    migration = to_fleet(read_doc(**options))
    document = migration.document
    assert document["agents"]["a"] == {
        "entrypoint": "agent:entrypoint",
        "runtime": "livekit-agents",
        **agent,
    }
    assert document.get("supervisor", {}) == supervisor
    assert document["livekit"] == {
        "api_key": {"env": "LIVEKIT_API_KEY"},
        "api_secret": {"env": "LIVEKIT_API_SECRET"},
    }
    expected = {k: v for k, v in {**BASE_NOTES, **expected_notes}.items() if v is not None}
    assert notes(migration) == expected
    Fleet.model_validate(document)


def test_every_option_of_the_sdk_has_a_handler_or_is_listed() -> None:
    """Every WorkerOptions field has a mapping (agent_name is the agent's key)."""
    from lksup.fleet.migrate import HANDLERS

    sdk_fields = {
        "entrypoint_fnc",
        "request_fnc",
        "prewarm_fnc",
        "load_fnc",
        "job_executor_type",
        "load_threshold",
        "job_memory_warn_mb",
        "job_memory_limit_mb",
        "drain_timeout",
        "num_idle_processes",
        "shutdown_process_timeout",
        "session_end_timeout",
        "initialize_process_timeout",
        "permissions",
        "worker_type",
        "max_retry",
        "ws_url",
        "api_key",
        "api_secret",
        "log_level",
        "host",
        "port",
        "http_proxy",
        "multiprocessing_context",
        "preload_modules",
        "prometheus_port",
        "prometheus_multiproc_dir",
    }  # dataclasses.fields(WorkerOptions) in 1.8.9, minus agent_name
    assert sdk_fields <= set(HANDLERS)


def test_url_is_carried_over_and_checked() -> None:
    ok = to_fleet(read_doc(ws_url="wss://lk.example.com"))
    assert ok.document["livekit"]["url"] == "wss://lk.example.com"
    assert "ws_url" not in notes(ok)
    bad = to_fleet(read_doc(ws_url="localhost:7880"))
    assert "url" not in bad.document["livekit"]
    assert notes(bad)["ws_url"] == "dropped"


def test_agent_server_default_idle_pool_differs() -> None:
    migration = to_fleet(read_doc(kind="AgentServer"))
    assert notes(migration)["num_idle_processes"] == "default"
    assert "num_idle_processes" not in notes(
        to_fleet(read_doc(kind="AgentServer", num_idle_processes=2))
    )


def test_name_working_dir_and_python() -> None:
    migration = to_fleet(
        read_doc(name="sales"), name="sales-eu", working_dir="src", python=".venv/bin/python"
    )
    agent = migration.document["agents"]["sales-eu"]
    assert (agent["working_dir"], agent["python"]) == ("src", ".venv/bin/python")
    assert migration.document["metadata"] == {"name": "sales-eu"}
    assert notes(migration)["agent_name"] == "changed"
    Agent.model_validate(agent)


@pytest.mark.parametrize(
    ("doc", "name", "usage", "problem"),
    [
        (read_doc(name=""), None, True, "the module registers no agent_name"),
        (read_doc(), "bad name", True, "contains whitespace"),
        (
            read_doc(
                entrypoint_fnc={"function": "agent.<lambda>", "ref": None, "problem": "lambda"}
            ),
            None,
            False,
            "entrypoint_fnc agent.<lambda>: lambda",
        ),
        (
            read_doc(entrypoint_fnc={"type": "Thing"}),
            None,
            False,
            "entrypoint_fnc is a Thing, not a function",
        ),
        (
            {**read_doc(), "options": {"prewarm_fnc": fn("p")}},
            None,
            False,
            "no entrypoint: register one with @server.rtc_session",
        ),
    ],
)
def test_problems(doc: dict[str, Any], name: str | None, usage: bool, problem: str) -> None:
    with pytest.raises(MigrationError) as caught:
        to_fleet(doc, name=name)
    assert caught.value.usage is usage
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_header_is_comments_and_notes_are_ordered() -> None:
    migration = to_fleet(
        read_doc(load_fnc=fn("load"), max_retry=0, preload_modules=["x"], port=9000)
    )
    text = header(migration, source="agent:opts", kind="WorkerOptions", sdk_version="1.8.9")
    assert all(line.startswith("#") for line in text.splitlines())
    assert max(len(line) for line in text.splitlines()) <= 100
    kinds = [n.kind for n in migration.notes]
    assert kinds == sorted(kinds, key=["dropped", "changed", "default"].index)
    assert stderr_lines(migration)[0].startswith(
        "warning: load_fnc (agent.load): use the declarative"
    )
    body = yaml.safe_dump(migration.document, sort_keys=False)
    assert yaml.safe_load(text + body) == migration.document
