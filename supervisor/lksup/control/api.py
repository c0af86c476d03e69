"""The control API, as data: request and response models, routes and their handlers.

The daemon's control socket speaks HTTP/1.1 with JSON bodies (so ``curl --unix-socket``
works). This module owns everything about that API except the bytes: which routes exist,
what their bodies look like, which ``ControlApp`` method answers each, and what the answer
looks like on the wire. ``server`` parses HTTP and calls ``call``; ``client`` builds the
same requests and parses the same models.

Invariants:

* Pure: no sockets, clocks or event loops (tests/test_architecture.py).
* Every response document carries ``apiVersion: lksup/v1`` and a ``kind``; every error is
  ``{"code": ..., "message": ...}`` with a non-2xx status.
* Request bodies are validated here (``extra="forbid"``); an invalid body never reaches the
  app. Response models ignore unknown fields, so an older CLI still reads a newer daemon.
* Unknown paths are 404, known paths with the wrong method 405, before any body is parsed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, Protocol
from urllib.parse import parse_qsl, unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lksup.control.errors import ControlError, MethodNotAllowed

__all__ = [
    "API_VERSION",
    "ROUTES",
    "AgentState",
    "AgentStatus",
    "ApplyRequest",
    "Condition",
    "ControlApp",
    "FleetStatus",
    "Health",
    "JobRow",
    "JournalQuery",
    "Match",
    "Route",
    "SimulateRequest",
    "StatusList",
    "SyncState",
    "call",
    "document",
    "parse_body",
    "resolve",
    "validation_message",
]

API_VERSION: Final = "lksup/v1"

AgentState = Literal[
    "pending",
    "starting",
    "connecting",
    "running",
    "full",
    "draining",
    "drained",
    "stopped",
    "backoff",
    "failed",
]
SyncState = Literal["synced", "override", "pending"]


def _rfc3339(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"RFC 3339 time without an offset: {value!r}")
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Document(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class JobRow(_Document):
    """One running or recently ended job of an agent (``lksup status AGENT --jobs``)."""

    job_id: str
    room: str
    pid: int | None = None
    state: str
    """The process's state while it runs; ``succeeded`` or ``failed`` once it ended."""
    started_at: str | None = None
    """RFC 3339 wall-clock time the job started."""
    memory_mb: float = 0.0
    ended_at: str | None = None
    """RFC 3339 wall-clock time it ended (ended jobs only)."""
    reason: str = ""
    """Why it ended: its error when it failed, else the reason it was ended."""

    _check_started_at = field_validator("started_at")(_rfc3339)
    _check_ended_at = field_validator("ended_at")(_rfc3339)


class Condition(_Document):
    """One Kubernetes-style condition of an agent (``daemon.conditions`` lists the types)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = Field(default=None, alias="lastTransitionTime")
    """RFC 3339 wall-clock time ``status`` last changed."""

    _check_last_transition_time = field_validator("last_transition_time")(_rfc3339)


class AgentStatus(_Document):
    """The observed state of one agent: one row of ``lksup status``."""

    name: str
    state: AgentState
    ready: bool = False
    registered: bool = False
    worker_id: str | None = None
    jobs: int = 0
    idle: int = 0
    """Warm idle processes ready now."""
    idle_target: int = 0
    """Warm idle processes wanted."""
    load: float = 0.0
    threshold: float = 1.0
    memory_mb: float = 0.0
    restarts: int = 0
    started_at: str | None = None
    """RFC 3339 wall-clock time the current worker started; AGE is computed by the CLI."""
    sync: SyncState = "synced"
    message: str = ""
    sdk_version: str | None = None
    """The livekit-agents version its job processes run (runtime livekit-agents)."""
    draining: bool = False
    last_failure: str | None = None
    """Why its latest failed job failed (within the last 10 minutes)."""
    last_failure_at: str | None = None
    """RFC 3339 wall-clock time that job ended."""
    conditions: list[Condition] = Field(default_factory=list)
    jobs_detail: list[JobRow] = Field(default_factory=list)

    _check_started_at = field_validator("started_at")(_rfc3339)
    _check_last_failure_at = field_validator("last_failure_at")(_rfc3339)


class InferenceStatus(_Document):
    """One shared inference process (livekit-agents inference runners) of the fleet."""

    runners: list[str]
    """``module:qualname`` of the runners it serves."""
    state: Literal["starting", "running", "backoff"]
    pid: int | None = None
    memory_mb: float = 0.0
    restarts: int = 0
    message: str = ""
    python: str = ""
    """The interpreter it runs on ("" for lksup's own)."""


class TemplateStatus(_Document):
    """One template (zygote) job processes are forked from."""

    agent: str | None = None
    """The agent whose template it is; None: a base template, shared by the agents."""
    pid: int | None = None
    children: int = 0
    """Processes forked from it that are alive (job processes, or agent templates)."""
    memory_mb: float = 0.0
    python: str = ""
    preload: list[str] = Field(default_factory=list)
    """A base template: what it imported for every agent."""


class FleetStatus(_Document):
    """The applied fleet, as ``lksup status`` shows it above the agents."""

    name: str
    """``metadata.name``."""
    revision: str | None = None
    """The revision applied (``lksup diff``/``apply`` print it; the state directory keeps it)."""
    source: str | None = None
    """The file it was applied from (SIGHUP and ``run --watch`` re-apply it)."""
    watching: bool = False
    """``lksup run --watch``: a change of ``source`` is applied."""
    last_error: str | None = None
    """Why the latest re-apply of ``source`` (SIGHUP or ``--watch``) changed nothing; cleared
    by the next re-apply or apply that succeeds."""
    last_error_at: str | None = None
    """RFC 3339 wall-clock time of that failure."""

    _check_last_error_at = field_validator("last_error_at")(_rfc3339)


class StatusList(_Document):
    """The answer to ``GET /v1/status``: one item per agent, sorted by name by the daemon."""

    api_version: Literal["lksup/v1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["StatusList"] = "StatusList"
    items: list[AgentStatus] = Field(default_factory=list)
    inference: list[InferenceStatus] = Field(default_factory=list)
    """The fleet's inference processes (none unless an agent's imports register runners)."""
    templates: list[TemplateStatus] = Field(default_factory=list)
    """The templates job processes are forked from (process_start zygote or isolated)."""
    fleet: FleetStatus | None = None
    """The applied fleet (None: nothing applied yet)."""


class Health(_Document):
    """The answer to ``GET /v1/health``: the daemon is up and its event loop answers."""

    api_version: Literal["lksup/v1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["Health"] = "Health"
    ok: bool = True
    pid: int
    version: str
    """lksup's version in the daemon."""
    livekit_protocol: str = ""
    """The livekit-protocol version the daemon speaks the worker protocol with."""
    python: str = ""
    """The daemon's Python version."""


class ApplyRequest(_Request):
    """Body of ``POST /v1/apply``."""

    fleet: dict[str, Any]
    """The normalized fleet document, secrets revealed where the daemon needs them."""
    source: str | None = None
    """Where the fleet came from (a path), for SIGHUP re-applies and status messages."""
    values: dict[str, Any] = Field(default_factory=dict)
    """The template values ``source`` was rendered with (SIGHUP renders it again with them)."""
    dry_run: bool = False
    """Only compute the plan."""
    prune_all: bool = False
    """Allow a plan that removes every agent."""
    replace_fleet: bool = False
    """Allow a fleet whose ``metadata.name`` differs from the running one's."""
    check: bool = True
    """Run ``lksup validate --check-imports`` on ``source`` where the agents will run: in the
    daemon's environment and directory (False: ``--skip-import-check``)."""


class SimulateRequest(_Request):
    """Body of ``POST /v1/agents/{name}/simulate``."""

    room: str = Field(min_length=1)
    participant: str | None = None


class ControlApp(Protocol):
    """What the daemon implements to answer the control socket.

    Every method may raise ``ControlError`` (e.g. ``not_found``/404 for an unknown agent,
    ``conflict``/409); anything else becomes a 500 ``internal`` error. Methods that start
    long work (drain, reload, apply) return once it is *started*: the CLI's ``--wait``
    polls ``status``. Dict results are passed through; ``apiVersion`` and ``kind`` are added
    when missing.
    """

    async def status(self, agent: str | None) -> StatusList:
        """Status of every agent, or of ``agent`` only (an unknown agent is ``not_found``)."""
        ...

    async def apply(self, request: ApplyRequest) -> dict[str, Any]:
        """Validate and apply (or only plan) a fleet; returns the Plan document."""
        ...

    async def applied(self) -> dict[str, Any] | None:
        """The applied fleet document, or None when nothing has been applied."""
        ...

    async def drain(self, agent: str | None) -> dict[str, Any]:
        """Start draining ``agent`` (or every agent when None)."""
        ...

    async def undrain(self, agent: str) -> dict[str, Any]:
        """Clear the drain override of ``agent``."""
        ...

    async def reload(self, agent: str | None) -> dict[str, Any]:
        """Start a rolling replace of ``agent`` (or every agent when None)."""
        ...

    async def simulate(self, agent: str, request: SimulateRequest) -> dict[str, Any]:
        """Ask the server for a job on ``agent``'s own connection."""
        ...

    async def events(self, query: JournalQuery) -> dict[str, Any]:
        """Events after ``query.after`` (an ``EventList``: ``items`` and ``last``)."""
        ...

    async def logs(self, query: JournalQuery) -> dict[str, Any]:
        """Log records after ``query.after`` (a ``LogList``: ``items`` and ``last``)."""
        ...


#: The longest a ``GET /v1/events`` or ``/v1/logs`` waits for its first item (the server
#: answers every request within its request timeout).
MAX_WAIT: Final = 5.0


@dataclass(frozen=True)
class JournalQuery:
    """The query of ``GET /v1/events`` and ``GET /v1/logs``.

    ``after``: the last ``seq`` the reader has (0: from the oldest kept); ``wait``: seconds
    to wait for the first new item (at most ``MAX_WAIT``); ``agent``, ``job``: only those;
    ``since``: wall-clock seconds, only items from then on; ``tail``: only the last N.
    """

    after: int = 0
    wait: float = 0.0
    agent: str | None = None
    job: str | None = None
    since: float | None = None
    tail: int | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> JournalQuery:
        """From query parameters; ``bad_request`` when a number is not one."""

        def number(name: str, kind: type[int] | type[float]) -> Any:
            text = query.get(name)
            if text is None or text == "":
                return None
            try:
                value = kind(text)
            except ValueError:
                message = f"{name} must be a number, not {text!r}"
                raise ControlError("bad_request", message, 400) from None
            if value < 0:
                raise ControlError("bad_request", f"{name} cannot be negative", 400)
            return value

        return cls(
            after=number("after", int) or 0,
            wait=min(number("wait", float) or 0.0, MAX_WAIT),
            agent=query.get("agent") or None,
            job=query.get("job") or None,
            since=number("since", float),
            tail=number("tail", int),
        )


Handler = Callable[[ControlApp, "Match", BaseModel | None], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True)
class Route:
    """One operation: ``method`` on a path ``template`` such as ``/v1/agents/{name}/drain``."""

    method: str
    template: str
    kind: str
    """The ``kind`` of the response document."""
    body: type[BaseModel] | None = None
    """The request body's model; None means the body is ignored."""
    query: frozenset[str] = frozenset()
    """Query parameters accepted; any other is a 400."""

    @property
    def segments(self) -> tuple[str, ...]:
        """The template split on ``/``, placeholders kept as ``{name}``."""
        return tuple(self.template.strip("/").split("/"))


@dataclass(frozen=True)
class Match:
    """A request resolved to a route, with its path parameters and query."""

    route: Route
    params: Mapping[str, str]
    query: Mapping[str, str]


def _params(segments: tuple[str, ...], parts: list[str]) -> dict[str, str] | None:
    if len(segments) != len(parts):
        return None
    params: dict[str, str] = {}
    for template, part in zip(segments, parts, strict=True):
        if template.startswith("{") and template.endswith("}"):
            if not part:
                return None
            params[template[1:-1]] = part
        elif template != part:
            return None
    return params


def resolve(method: str, target: str) -> Match:
    """Find the route for ``method`` and request ``target`` (path and query).

    Raises:
        ControlError: ``not_found`` (404) for an unknown path, ``bad_request`` (400) for an
            unknown or repeated query parameter.
        MethodNotAllowed: The path exists for other methods only.
    """
    raw_path, _, raw_query = target.partition("?")
    parts = [unquote(part) for part in raw_path.strip("/").split("/")]
    allowed: list[str] = []
    for route in ROUTES:
        params = _params(route.segments, parts)
        if params is None:
            continue
        if route.method != method:
            allowed.append(route.method)
            continue
        query: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            if key not in route.query:
                raise ControlError("bad_request", f"unknown query parameter {key!r}", 400)
            if key in query:
                raise ControlError("bad_request", f"query parameter {key!r} repeated", 400)
            query[key] = value
        return Match(route, params, query)
    path = unquote(raw_path)
    if allowed:
        raise MethodNotAllowed(method, path, tuple(sorted(set(allowed))))
    raise ControlError("not_found", f"no such endpoint: {path}", 404)


def validation_message(error: ValidationError) -> str:
    """The errors of ``error`` as ``loc: message`` phrases joined by ``; ``."""
    phrases = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(part) for part in item["loc"])
        phrases.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
    return "; ".join(phrases)


def parse_body(route: Route, body: bytes) -> BaseModel | None:
    """Decode and validate a request body for ``route``.

    Raises:
        ControlError: ``bad_request`` (400) when the body is not JSON, ``invalid`` (422) when
            it does not match the route's model.
    """
    if route.body is None:
        return None
    try:
        data = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError("bad_request", f"request body is not valid JSON: {exc}", 400) from None
    try:
        return route.body.model_validate(data)
    except ValidationError as exc:
        raise ControlError("invalid", validation_message(exc), 422) from None


def document(kind: str, result: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """The wire form of a handler's result, with ``apiVersion`` and ``kind`` present."""
    if isinstance(result, BaseModel):
        data: dict[str, Any] = result.model_dump(mode="json", by_alias=True)
    else:
        data = dict(result)
    data.setdefault("apiVersion", API_VERSION)
    data.setdefault("kind", kind)
    return data


async def _status(app: ControlApp, match: Match, body: BaseModel | None) -> Mapping[str, Any]:
    agent = match.query.get("agent") or None
    result = await app.status(agent)
    if agent is not None and not any(item.name == agent for item in result.items):
        raise ControlError("not_found", f"no such agent: {agent}", 404)
    return document("StatusList", result)


async def _apply(app: ControlApp, match: Match, body: BaseModel | None) -> Mapping[str, Any]:
    assert isinstance(body, ApplyRequest)
    return await app.apply(body)


async def _applied(app: ControlApp, match: Match, body: BaseModel | None) -> Mapping[str, Any]:
    fleet = await app.applied()
    if fleet is None:
        raise ControlError("not_found", "no fleet has been applied", 404)
    return fleet


async def _drain(app: ControlApp, match: Match, body: BaseModel | None) -> Mapping[str, Any]:
    return await app.drain(match.params.get("name"))


async def _undrain(app: ControlApp, match: Match, body: BaseModel | None) -> Mapping[str, Any]:
    return await app.undrain(match.params["name"])


async def _reload(app: ControlApp, match: Match, body: BaseModel | None) -> Mapping[str, Any]:
    return await app.reload(match.params.get("name"))


async def _events(app: ControlApp, match: Match, body: BaseModel | None) -> Mapping[str, Any]:
    return await app.events(JournalQuery.parse(match.query))


async def _logs(app: ControlApp, match: Match, body: BaseModel | None) -> Mapping[str, Any]:
    return await app.logs(JournalQuery.parse(match.query))


async def _simulate(app: ControlApp, match: Match, body: BaseModel | None) -> Mapping[str, Any]:
    assert isinstance(body, SimulateRequest)
    return await app.simulate(match.params["name"], body)


_JOURNAL_QUERY: Final = frozenset({"after", "wait", "agent", "job", "since", "tail"})

#: Every route, in the order they are matched. ``GET /v1/health`` is answered by the server
#: itself (it needs the pid); it is listed so that 404/405 treat it like the others.
ROUTES: Final = (
    Route("GET", "/v1/health", "Health"),
    Route("GET", "/v1/status", "StatusList", query=frozenset({"agent"})),
    Route("GET", "/v1/fleet", "Fleet"),
    Route("GET", "/v1/events", "EventList", query=_JOURNAL_QUERY),
    Route("GET", "/v1/logs", "LogList", query=_JOURNAL_QUERY),
    Route("POST", "/v1/apply", "Plan", ApplyRequest),
    Route("POST", "/v1/drain", "DrainResult"),
    Route("POST", "/v1/reload", "ReloadResult"),
    Route("POST", "/v1/agents/{name}/drain", "DrainResult"),
    Route("POST", "/v1/agents/{name}/undrain", "UndrainResult"),
    Route("POST", "/v1/agents/{name}/reload", "ReloadResult"),
    Route("POST", "/v1/agents/{name}/simulate", "SimulateResult", SimulateRequest),
)

_HANDLERS: Final[dict[tuple[str, str], Handler]] = {
    ("GET", "/v1/status"): _status,
    ("GET", "/v1/fleet"): _applied,
    ("GET", "/v1/events"): _events,
    ("GET", "/v1/logs"): _logs,
    ("POST", "/v1/apply"): _apply,
    ("POST", "/v1/drain"): _drain,
    ("POST", "/v1/reload"): _reload,
    ("POST", "/v1/agents/{name}/drain"): _drain,
    ("POST", "/v1/agents/{name}/undrain"): _undrain,
    ("POST", "/v1/agents/{name}/reload"): _reload,
    ("POST", "/v1/agents/{name}/simulate"): _simulate,
}


async def call(app: ControlApp, match: Match, body: BaseModel | None) -> dict[str, Any]:
    """Call the app method behind ``match`` and return the response document.

    Raises:
        ControlError: From the app, or ``not_found`` for a status of an unknown agent.
    """
    handler = _HANDLERS[(match.route.method, match.route.template)]
    return document(match.route.kind, await handler(app, match, body))
