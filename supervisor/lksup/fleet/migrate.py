"""From a livekit-agents agent's options to a fleet file (``lksup init --from``): pure.

Input: the document ``lksup.jobs.sdk.introspect`` prints for a ``WorkerOptions`` or an
``AgentServer`` (options under ``WorkerOptions``' names, only those not at the SDK's default,
functions as ``module:attr`` references). Output: a one-agent fleet with
``runtime: livekit-agents``, plus notes (an option with no fleet equivalent, or carried over
with a difference), each with what to use instead.

Invariants:

* The fleet is valid: it is checked with the schema and the cross-field rules before it is
  returned (``MigrationError`` otherwise, never an invalid fleet).
* No secret value appears: ``api_key``/``api_secret`` are always ``{env: LIVEKIT_API_KEY}`` /
  ``{env: LIVEKIT_API_SECRET}`` (the SDK's own fallback), whatever the module set, and a proxy
  URL with credentials becomes ``{env: HTTPS_PROXY}``. The input never holds them either.
* An option at the SDK's default is left out: the fleet's defaults are the SDK's production
  defaults. Where they differ (``AgentServer``'s idle pool, the SDK's health port) a note says so.
* Every function the fleet names (entrypoint, prewarm, request_fnc) is a resolvable
  ``module:attr``; a closure or lambda there is a ``MigrationError`` naming the function.
"""

from __future__ import annotations

import textwrap
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic

from lksup.errors import Severity
from lksup.fleet.normalize import normalize
from lksup.fleet.schema import (
    API_VERSION,
    KIND,
    AgentOptions,
    Fleet,
    LiveKitConnection,
    Permissions,
    check_agent_name,
)

SDK_DRAIN_TIMEOUT = 3600.0
SDK_PORT = 8081
RUNTIME = "livekit-agents"
API_KEY_ENV, API_SECRET_ENV, PROXY_ENV = "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "HTTPS_PROXY"

NoteKind = Literal["dropped", "changed", "default"]


@dataclass(frozen=True)
class Note:
    """What a reader of the fleet must know about one option.

    ``dropped``: no fleet equivalent, not carried over; ``changed``: carried over, differently;
    ``default``: left at a fleet default that is not the SDK's.
    """

    option: str
    message: str
    kind: NoteKind = "dropped"
    value: str | None = None
    """How the module set the option, for options not carried over."""

    def text(self) -> str:
        """``option (value): message``."""
        value = f" ({self.value})" if self.value is not None else ""
        return f"{self.option}{value}: {self.message}"


@dataclass(frozen=True)
class Migration:
    """The fleet document (plain data, ready for YAML or JSON) and its notes."""

    document: dict[str, Any]
    notes: tuple[Note, ...]
    agent: str


class MigrationError(ValueError):
    """The options cannot become a fleet; ``usage`` when a command-line option would fix it."""

    def __init__(self, problems: list[str], *, usage: bool = False) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.usage = usage


@dataclass
class _Builder:
    kind: str
    agent: dict[str, Any] = field(default_factory=dict)
    livekit: dict[str, Any] = field(default_factory=dict)
    supervisor: dict[str, Any] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def note(
        self, option: str, message: str, kind: NoteKind = "dropped", value: str | None = None
    ) -> None:
        self.notes.append(Note(option, message, kind, value))


# --- one handler per option ----------------------------------------------------------------


def _label(value: Any) -> str:
    """How an option's value is shown in a note."""
    if isinstance(value, dict) and "function" in value:
        return str(value["function"])
    if isinstance(value, dict) and "type" in value:
        return f"a {value['type']}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _function(fleet_field: str) -> Callable[[_Builder, str, Any], None]:
    def handle(b: _Builder, option: str, value: Any) -> None:
        if not isinstance(value, dict) or "function" not in value:
            b.problems.append(f"{option} is {_label(value)}, not a function")
        elif value.get("ref"):
            b.agent[fleet_field] = value["ref"]
        else:
            b.problems.append(f"{option} {value['function']}: {value.get('problem')}")

    return handle


def _same(b: _Builder, option: str, value: Any) -> None:
    if isinstance(value, bool | int | float | str):
        b.agent[option] = value
    else:
        b.note(option, "unexpected value, not carried over", value=_label(value))


def _load_threshold(b: _Builder, option: str, value: Any) -> None:
    if value > 1:
        b.agent[option] = 1
        b.note(
            option,
            f"{value:g} is above 1 (the SDK only warns); lksup's threshold is at most 1: 1 "
            "(full at 100% load)",
            "changed",
        )
    elif value <= 0:
        b.note(option, f"{value:g} would decline every job; left at the default 0.7")
    else:
        b.agent[option] = value


def _megabytes(b: _Builder, option: str, value: Any) -> None:
    if value < 0:
        b.note(option, f"{value:g} is negative; left at the default")
        return
    rounded = round(value)
    b.agent[option] = rounded
    if rounded != value:
        b.note(option, f"{value:g} rounded to {rounded} (whole megabytes)", "changed")


def _drain_timeout(b: _Builder, option: str, value: Any) -> None:
    b.agent[option] = value
    # The SDK's SIGTERM drain is this agent's; in a one-agent fleet the fleet-wide deadline
    # (supervisor.drain_timeout) is the same one, and a longer agent deadline would be cut.
    b.supervisor["drain_timeout"] = value


def _permissions(b: _Builder, option: str, value: Any) -> None:
    defaults = Permissions().model_dump()
    (source_type,) = typing.get_args(Permissions.model_fields["can_publish_sources"].annotation)
    known = set(typing.get_args(source_type))
    sources = value.get("can_publish_sources", [])
    unknown = [s for s in sources if s not in known]
    if unknown:
        b.note(f"{option}.can_publish_sources", f"unknown sources {unknown} left out")
    chosen = {**value, "can_publish_sources": [s for s in sources if s in known]}
    changed = {k: v for k, v in chosen.items() if k in defaults and v != defaults[k]}
    if changed:
        b.agent[option] = changed


def _max_retry(b: _Builder, option: str, value: Any) -> None:
    if value == 0:
        b.agent[option] = 1
        b.note(
            option,
            "0 gives up after the first failed connection in the SDK but means `retry forever` "
            "in lksup: 1",
            "changed",
        )
    else:
        b.agent[option] = value


def _ws_url(b: _Builder, option: str, value: Any) -> None:
    try:
        LiveKitConnection(url=value)
    except pydantic.ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        b.note(option, f"not carried over: {reason}")
        return
    b.livekit["url"] = value


def _secret(b: _Builder, option: str, value: Any) -> None:
    del value  # {"secret": true}: never the value itself
    variable = API_KEY_ENV if option == "api_key" else API_SECRET_ENV
    b.note(
        option,
        f"the module sets it itself (in the code or from a .env file); the fleet reads "
        f"${variable} instead: set it where lksup runs, and keep the value out of the code",
        "changed",
    )


def _http_proxy(b: _Builder, option: str, value: Any) -> None:
    if value.get("credentials"):
        b.agent.setdefault("env", {})[PROXY_ENV] = {"env": PROXY_ENV}
        detail = (
            f"the module's proxy URL ({value['url']}) holds credentials, so job processes "
            f"get the supervisor's ${PROXY_ENV} (set it where lksup runs)"
        )
    else:
        b.agent.setdefault("env", {})[PROXY_ENV] = value["url"]
        detail = f"job processes get env {PROXY_ENV}"
    b.note(
        option,
        f"{detail}; lksup's own connection to LiveKit does not go through a proxy (not yet)",
        "changed",
    )


def _dropped(advice: str) -> Callable[[_Builder, str, Any], None]:
    def handle(b: _Builder, option: str, value: Any) -> None:
        b.note(option, advice, value=_label(value))

    return handle


def _preload(b: _Builder, option: str, value: Any) -> None:
    if isinstance(value, list | tuple) and all(isinstance(m, str) for m in value):
        if value:
            b.agent["preload"] = list(value)
    else:
        b.note(option, "unexpected value, not carried over", value=_label(value))


def _executor(b: _Builder, option: str, value: Any) -> None:
    if value == "thread":
        b.agent["job_executor"] = "thread"
        b.note(
            option,
            "job_executor: thread; up to max_jobs_per_process (4) jobs share one job host "
            "process, and num_idle_processes counts hosts, not threads",
            "changed",
        )
    elif value != "process":
        b.note(option, "unexpected value, not carried over", value=_label(value))


def _log_level(b: _Builder, option: str, value: Any) -> None:
    if str(value).upper() != "INFO":
        _dropped("no per-agent log level: lksup logs at INFO (DEBUG with `lksup run --dev`)")(
            b, option, value
        )


def _ignored(b: _Builder, option: str, value: Any) -> None:
    """host, port and prometheus_port are mapped together (``_http``)."""


#: Every WorkerOptions option lksup knows: how it is carried over.
HANDLERS: dict[str, Callable[[_Builder, str, Any], None]] = {
    "entrypoint_fnc": _function("entrypoint"),
    "prewarm_fnc": _function("prewarm"),
    "request_fnc": _function("request_fnc"),
    "load_threshold": _load_threshold,
    "num_idle_processes": _same,
    "job_memory_warn_mb": _megabytes,
    "job_memory_limit_mb": _megabytes,
    "drain_timeout": _drain_timeout,
    "shutdown_process_timeout": _same,
    "initialize_process_timeout": _same,
    "permissions": _permissions,
    "worker_type": _same,
    "max_retry": _max_retry,
    "ws_url": _ws_url,
    "api_key": _secret,
    "api_secret": _secret,
    "http_proxy": _http_proxy,
    "host": _ignored,
    "port": _ignored,
    "prometheus_port": _ignored,
    "load_fnc": _dropped(
        "use the declarative `load:` expression instead: cpu (the SDK's default), memory, "
        "jobs (with max_jobs), or e.g. max(cpu, jobs)"
    ),
    "job_executor_type": _executor,
    "multiprocessing_context": _dropped(
        "lksup starts job processes itself, each in its own session; there is no start "
        "method to choose"
    ),
    "preload_modules": _preload,
    "on_session_end": _function("session_end_fnc"),
    "session_end_fnc": _function("session_end_fnc"),
    "session_end_timeout": _dropped("no equivalent: session_end_fnc gets the SDK's 60 s"),
    "on_simulation_end": _dropped("no equivalent (`lk simulate` runs are not supported)"),
    "log_level": _log_level,
    "prometheus_multiproc_dir": _dropped(
        "no equivalent: lksup's /metrics (supervisor.http) reports each agent from the "
        "supervisor; metrics registered inside job processes are not collected"
    ),
}


def _http(b: _Builder, options: Mapping[str, Any]) -> None:
    """``host``/``port``/``prometheus_port`` -> one listener, ``supervisor.http``."""
    host = options.get("host") or "0.0.0.0"
    port, metrics = options.get("port"), options.get("prometheus_port")
    if port is None and metrics is None:
        if "host" in options:
            b.note("host", f"{host!r} without a port: not carried over")
        b.note(
            "port",
            f"the SDK serves a health check on 0.0.0.0:{SDK_PORT} by default; lksup opens no "
            f"HTTP listener unless supervisor.http is set (e.g. http: 0.0.0.0:{SDK_PORT}; "
            "probes: /livez, /readyz)",
            "default",
        )
        return
    chosen = port if port is not None else metrics
    if not isinstance(chosen, int) or not 0 < chosen < 65536:
        b.note("port", "not a fixed port; supervisor.http needs one", value=_label(chosen))
        return
    b.supervisor["http"] = f"{host}:{chosen}"
    served = "/livez, /readyz and /metrics"
    if port is None:
        b.note(
            "prometheus_port",
            f"supervisor.http serves {served} on {host}:{chosen}; the SDK's health port "
            f"({SDK_PORT}) has no separate counterpart",
            "changed",
        )
    elif metrics is not None and metrics != port:
        b.note(
            "prometheus_port",
            f"{metrics}: lksup serves {served} on one listener, supervisor.http ({host}:{port})",
            "changed",
        )
    else:
        b.note("port", f"supervisor.http serves {served} on {host}:{chosen}", "changed")


def _memory(b: _Builder) -> None:
    """Lksup needs warn < limit; the SDK just never warns before killing then."""
    fields = AgentOptions.model_fields
    warn = b.agent.get("job_memory_warn_mb", fields["job_memory_warn_mb"].default)
    limit = b.agent.get("job_memory_limit_mb", fields["job_memory_limit_mb"].default)
    if limit and warn and warn >= limit:
        b.agent["job_memory_warn_mb"] = 0
        b.note(
            "job_memory_warn_mb",
            f"{warn} is not below job_memory_limit_mb ({limit}): the SDK kills before it "
            "warns, and lksup requires warn < limit, so the warning is off (0)",
            "changed",
        )


# --- the fleet -----------------------------------------------------------------------------


def _agent_name(read: Mapping[str, Any], name: str | None, b: _Builder) -> str:
    module_name = str(read.get("agent_name") or "")
    chosen = name or module_name
    if not chosen:
        raise MigrationError(
            [
                "the module registers no agent_name (automatic dispatch: a job for every new "
                "room); lksup registers every agent by name, so pass --name NAME (rooms then "
                "get the agent by explicit dispatch: a token, the AgentDispatch API or "
                "`lksup dispatch`)"
            ],
            usage=True,
        )
    try:
        check_agent_name(chosen)
    except ValueError as exc:
        raise MigrationError([str(exc)], usage=name is not None) from None
    if not module_name:
        b.note(
            "agent_name",
            f"the module registers none (automatic dispatch); in the fleet the agent is "
            f"{chosen!r} and is dispatched explicitly (a token, the AgentDispatch API or "
            "`lksup dispatch`)",
            "changed",
        )
    elif name and name != module_name:
        b.note("agent_name", f"{module_name!r} is registered as {name!r} (--name)", "changed")
    return chosen


def _ordered(agent: dict[str, Any]) -> dict[str, Any]:
    """Entrypoint first, then the schema's field order (stable output)."""
    order = ["entrypoint", *AgentOptions.model_fields]
    return {key: agent[key] for key in sorted(agent, key=order.index)}


def to_fleet(
    read: Mapping[str, Any],
    *,
    name: str | None = None,
    working_dir: str | None = None,
    python: str | None = None,
) -> Migration:
    """The fleet for the introspection document ``read`` (see the module docstring).

    Args:
        read: what ``lksup.jobs.sdk.introspect`` printed (``ok`` true).
        name: the agent's name, over the module's ``agent_name``.
        working_dir: the agent's ``working_dir``, as given on the command line.
        python: the agent's ``python``, as given on the command line.

    Raises:
        MigrationError: no agent name, or a function the fleet must name is not importable by
            ``module:attr`` (every problem is listed).
    """
    options: Mapping[str, Any] = read.get("options", {})
    b = _Builder(kind=str(read.get("kind", "WorkerOptions")))
    agent = _agent_name(read, name, b)
    b.agent["runtime"] = RUNTIME
    if python:
        b.agent["python"] = python
    if working_dir:
        b.agent["working_dir"] = working_dir
    if "entrypoint_fnc" not in options:
        b.problems.append("no entrypoint: register one with @server.rtc_session")
    for option, value in options.items():
        handler = HANDLERS.get(option, _dropped("lksup has no equivalent for this option"))
        try:
            handler(b, option, value)
        except (TypeError, KeyError, AttributeError):  # a value of a type the SDK never uses
            b.note(option, "unexpected value, not carried over", value=_label(value))
    _http(b, options)
    _memory(b)
    if b.kind == "AgentServer" and "num_idle_processes" not in options:
        b.note(
            "num_idle_processes",
            "AgentServer keeps ceil(CPU count) processes warm by default; the fleet's default, "
            "auto, is min(CPU count, 4) (WorkerOptions' default)",
            "default",
        )
    if b.problems:
        raise MigrationError(b.problems)
    document: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": agent},
        "livekit": {
            **b.livekit,
            "api_key": {"env": API_KEY_ENV},
            "api_secret": {"env": API_SECRET_ENV},
        },
    }
    if "ws_url" not in options:
        b.note(
            "ws_url",
            "not set in the module (the SDK reads $LIVEKIT_URL); set livekit.url in the fleet, "
            "or run with `lksup run --dev-server`",
            "default",
        )
    if b.supervisor:
        document["supervisor"] = b.supervisor
    document["agents"] = {agent: _ordered(b.agent)}
    document = _tidy(document)
    _check(document)
    order = [section for section, _ in _SECTIONS]
    notes = sorted(b.notes, key=lambda n: order.index(n.kind))
    return Migration(document, tuple(notes), agent)


def _tidy(value: Any) -> Any:
    """Whole floats as ints (20.0 -> 20), as ``lksup render`` prints them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


def _check(document: dict[str, Any]) -> None:
    """The generated fleet must be valid; a failure here is a bug in this module."""
    try:
        fleet = Fleet.model_validate(document)
    except pydantic.ValidationError as exc:
        raise MigrationError([f"the generated fleet is invalid (a bug in lksup): {exc}"]) from None
    _, findings = normalize(fleet)
    errors = [f.message for f in findings if f.severity is Severity.ERROR]
    if errors:
        raise MigrationError(
            [f"the generated fleet is invalid (a bug in lksup): {e}" for e in errors]
        )


# --- text ----------------------------------------------------------------------------------

_SECTIONS: tuple[tuple[NoteKind, str], ...] = (
    ("dropped", "Not carried over (no fleet equivalent):"),
    ("changed", "Carried over differently:"),
    ("default", "Fleet defaults that differ from the SDK's:"),
)


def header(migration: Migration, *, source: str, kind: str, sdk_version: str) -> str:
    """YAML comment lines for the top of the file: where it came from, then every note."""
    lines = textwrap.wrap(
        f"Generated by `lksup init --from {source}` from a livekit-agents {sdk_version} "
        f"{kind}. Check it with `lksup validate FILE`, run it with `lksup run FILE`. Relative "
        "paths (working_dir, python) are taken from the fleet file's folder.",
        width=96,
        break_on_hyphens=False,
    )
    for section, title in _SECTIONS:
        notes = [n for n in migration.notes if n.kind == section]
        if not notes:
            continue
        lines += ["", title]
        for note in notes:
            lines += textwrap.wrap(
                note.text(),
                width=94,
                initial_indent="  ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


def stderr_lines(migration: Migration) -> list[str]:
    """One line per note: ``warning`` for an option not carried over, else ``note``."""
    return [f"{'warning' if n.kind == 'dropped' else 'note'}: {n.text()}" for n in migration.notes]
