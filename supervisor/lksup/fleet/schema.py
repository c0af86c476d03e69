"""The fleet file format (``apiVersion: lksup/v1``, ``kind: Fleet``) as pydantic models.

One model describes both what users write and the normalized form lksup works with: a fleet as
written has ``defaults`` and a fleet-wide ``livekit`` block; the normalized fleet (see
``normalize``) has every agent fully spelled out, with defaults and the connection merged in.
The JSON Schema in ``schemas/fleet.schema.json`` is generated from these models, and the
attribute docstrings below are its descriptions: keep them user-facing.

Option names and defaults follow livekit-agents' ``WorkerOptions`` wherever one exists (its
production defaults), so users moving from the SDK recognise them.

Secrets (``api_secret``, and optionally ``env`` values) are *references* resolved only when a
connection or a process is made: ``{env: NAME}``, ``{file: PATH}``. A literal value is accepted
with a warning; it is never displayed (render shows ``{redacted: sha256:...}``) unless a caller
explicitly asks to serialize with ``context={"reveal_secrets": True}`` for internal transport.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import string
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SerializationInfo,
    WithJsonSchema,
)

from lksup.fleet import loadexpr
from lksup.fleet.durations import HINT as DURATION_HINT
from lksup.fleet.durations import parse_duration

API_VERSION = "lksup/v1"
KIND = "Fleet"
MAX_AGENT_NAME = 128


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        populate_by_name=True,
        validate_default=False,
    )


# --- scalar types -------------------------------------------------------------------------

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h|d)\s*)+$"},
            ],
            "description": f"Duration: {DURATION_HINT}.",
        }
    ),
]

_IDENT = r"[A-Za-z_][A-Za-z_0-9]*"
_IMPORT_REF = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")


def _check_import_ref(value: str) -> str:
    if not _IMPORT_REF.match(value):
        raise ValueError(
            f"{value!r} must have the shape module.path:attribute (e.g. agents.support:entrypoint)"
        )
    return value


ImportRef = Annotated[
    str,
    AfterValidator(_check_import_ref),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$",
            "description": "A Python object as module.path:attribute.",
        }
    ),
]


def check_agent_name(name: str) -> str:
    """Validate an agent name (the ``agent_name`` registered with LiveKit)."""
    if not name:
        raise ValueError("agent name must not be empty")
    if len(name) > MAX_AGENT_NAME:
        raise ValueError(f"agent name is {len(name)} characters long; the limit is 128")
    if any(ch.isspace() or not ch.isprintable() for ch in name):
        raise ValueError(f"agent name {name!r} contains whitespace or control characters")
    return name


AgentName = Annotated[str, AfterValidator(check_agent_name)]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")


# --- secrets --------------------------------------------------------------------------------


class EnvRef(_Model):
    """A value read from the supervisor's environment when it is needed."""

    env: str = Field(pattern=_ENV_NAME.pattern)
    """Name of the environment variable."""


class FileRef(_Model):
    """A value read from a file (trailing newline stripped) when it is needed."""

    file: str = Field(min_length=1)
    """Path of the file, e.g. /run/secrets/livekit_secret."""


class RedactedRef(_Model):
    """A literal secret as shown by ``lksup render``: a digest, never the value.

    It cannot be resolved: a fleet holding one must get the secret from env or a file.
    """

    redacted: str
    """``sha256:`` and the first 8 hex digits of the secret's digest."""


@dataclass(frozen=True)
class LiteralSecret:
    """A secret written literally in the fleet file. Its repr never shows the value."""

    value: str

    def __repr__(self) -> str:
        return f"LiteralSecret({self.digest()})"

    def digest(self) -> str:
        """A short digest that shows whether the value changed, not what it is."""
        return "sha256:" + hashlib.sha256(self.value.encode()).hexdigest()[:8]


SecretRef = EnvRef | FileRef | RedactedRef | LiteralSecret
_REF_KEYS: dict[str, type[EnvRef] | type[FileRef] | type[RedactedRef]] = {
    "env": EnvRef,
    "file": FileRef,
    "redacted": RedactedRef,
}


def _validate_secret(value: object) -> SecretRef:
    if isinstance(value, EnvRef | FileRef | RedactedRef | LiteralSecret):
        return value
    if isinstance(value, str):
        return LiteralSecret(value)
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        model = _REF_KEYS.get(key)
        if model is not None:
            ref: EnvRef | FileRef | RedactedRef = model.model_validate(value)
            return ref
    raise ValueError("expected a reference {env: NAME} or {file: PATH} (or a literal string)")


def _serialize_secret(value: SecretRef, info: SerializationInfo) -> str | dict[str, str]:
    if isinstance(value, LiteralSecret):
        if (info.context or {}).get("reveal_secrets"):
            return value.value
        return {"redacted": value.digest()}
    if isinstance(value, EnvRef):
        return {"env": value.env}
    if isinstance(value, FileRef):
        return {"file": value.file}
    return {"redacted": value.redacted}


_REF_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"env": {"type": "string", "pattern": _ENV_NAME.pattern}},
            "required": ["env"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"file": {"type": "string", "minLength": 1}},
            "required": ["file"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"redacted": {"type": "string"}},
            "required": ["redacted"],
            "additionalProperties": False,
        },
    ]
}

Secret = Annotated[
    SecretRef,
    PlainValidator(_validate_secret),
    PlainSerializer(_serialize_secret),
    WithJsonSchema(
        {
            "anyOf": [*_REF_SCHEMA["oneOf"], {"type": "string"}],
            "description": "A secret: {env: NAME} or {file: PATH}; a literal string is "
            "accepted with a warning (an error under --strict).",
        }
    ),
]


def _validate_env_value(value: object) -> str | EnvRef | FileRef | RedactedRef:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    ref = _validate_secret(value)
    if isinstance(ref, LiteralSecret):
        return ref.value
    return ref


def _serialize_env_value(
    value: str | EnvRef | FileRef | RedactedRef, info: SerializationInfo
) -> str | dict[str, str]:
    if isinstance(value, str):
        return value
    return _serialize_secret(value, info)


EnvValue = Annotated[
    str | EnvRef | FileRef | RedactedRef,
    PlainValidator(_validate_env_value),
    PlainSerializer(_serialize_env_value),
    WithJsonSchema(
        {
            "anyOf": [{"type": ["string", "number", "boolean"]}, *_REF_SCHEMA["oneOf"]],
            "description": "A literal value, or a reference {env: NAME} / {file: PATH} for "
            "secrets.",
        }
    ),
]


# --- sections ---------------------------------------------------------------------------------


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss", "http", "https"):
        raise ValueError(f"LiveKit URL must start with ws://, wss://, http:// or https://: {url!r}")
    if not parts.hostname:
        raise ValueError(f"LiveKit URL has no host: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError("LiveKit URL must not have a query or a fragment")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ValueError(f"LiveKit URL has an invalid port: {url!r}") from None
    return url


class LiveKitConnection(_Model):
    """How to reach the LiveKit server. Every field may be overridden per agent."""

    url: Annotated[str, AfterValidator(_check_url)] | None = None
    """Server URL: ws, wss, http or https; a base path is kept and /agent is appended. Unset
    means the embedded dev server (``lksup run --dev-server``)."""

    api_key: Secret | None = None
    """API key the worker authenticates with (also a reference: {env: LIVEKIT_API_KEY})."""

    api_secret: Secret | None = None
    """API secret: {env: NAME} or {file: PATH}. A literal value is a warning."""


_SOURCES = Literal["camera", "microphone", "screen_share", "screen_share_audio"]


class Permissions(_Model):
    """What the agent's participant may do in the room (``WorkerPermissions``)."""

    can_publish: bool = True
    """Publish tracks."""
    can_subscribe: bool = True
    """Subscribe to tracks."""
    can_publish_data: bool = True
    """Publish data packets."""
    can_update_metadata: bool = True
    """Update its own name, metadata and attributes."""
    can_publish_sources: list[_SOURCES] = Field(default_factory=list)
    """Track sources it may publish; empty means any."""
    hidden: bool = False
    """Hidden from other participants."""


_IDENTITY_FIELDS = ("job_id", "agent_name", "room")


def _check_template(template: str) -> str:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"invalid template {template!r}: {exc}") from None
    for name in fields:
        if name not in _IDENTITY_FIELDS:
            raise ValueError(
                f"unknown placeholder {{{name}}} in {template!r}; use "
                + ", ".join(f"{{{f}}}" for f in _IDENTITY_FIELDS)
            )
    return template


def _check_glob(pattern: str) -> str:
    fnmatch.translate(pattern)  # raises re.error on nothing today; kept for clarity
    return pattern


class RequestPolicy(_Model):
    """Declarative request policy, evaluated by the supervisor for every job offer."""

    room: Annotated[str, AfterValidator(_check_glob)] = "*"
    """Glob on the room name (``support-*``); offers for other rooms are declined."""

    identity: Annotated[str, AfterValidator(_check_template), Field(min_length=1)] = (
        "agent-{job_id}"
    )
    """Identity of the agent's participant; placeholders {job_id}, {agent_name}, {room}."""

    name: Annotated[str, AfterValidator(_check_template)] = ""
    """Display name of the agent's participant (same placeholders)."""

    metadata: str = ""
    """Metadata of the agent's participant."""

    attributes: dict[str, str] = Field(default_factory=dict)
    """Attributes of the agent's participant (``lk.agent.name`` is always added)."""


def _check_load(text: str) -> str:
    try:
        return loadexpr.canonical(text)
    except loadexpr.LoadExprError as exc:
        raise LoadExprValueError(str(exc), exc.offset) from None


class LoadExprValueError(ValueError):
    """A load expression error with its offset inside the string (for precise columns)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"invalid load expression: {message}")
        self.offset = offset


LoadExpr = Annotated[
    str,
    AfterValidator(_check_load),
    WithJsonSchema(
        {
            "type": "string",
            "description": "cpu, memory, jobs, or an expression over them with max(), min(), "
            "+, * and numbers, e.g. max(cpu, jobs, 0.5 * memory).",
        }
    ),
]


_MODULE = re.compile(rf"^{_IDENT}(\.{_IDENT})*$")


def _check_module_name(value: str) -> str:
    if not _MODULE.match(value):
        raise ValueError(f"expected a module name such as livekit.plugins.silero, not {value!r}")
    return value


class AgentOptions(_Model):
    """Every option of an agent except its entrypoint; also the shape of ``defaults``."""

    runtime: Literal["lksup", "livekit-agents"] = "lksup"
    """What the agent's functions are written against: lksup (``lksup.JobContext``) or
    livekit-agents (unchanged SDK agents: ``livekit.agents.JobContext``, ``AgentSession``,
    plugins), run with the SDK's own job-side machinery."""

    process_start: Literal["zygote", "isolated", "spawn"] = "zygote"
    """How job processes start. zygote: forked from the agent's template, itself forked from
    the fleet's shared base template (modules imported once, memory shared); isolated: forked
    from a template of the agent's own, started with its environment (modules that read their
    environment at import); spawn: a fresh interpreter per process. Where forking with pidfds
    is not available (not Linux), zygote and isolated spawn."""

    job_executor: Literal["process", "thread"] = "process"
    """process: every job in a process of its own. thread: several jobs share one job host
    process, each in its own thread and event loop (as the SDK's thread executor; for light
    agents on small machines: jobs share the host's memory, its memory limit and its fate)."""

    max_jobs_per_process: Annotated[int, Field(ge=1)] = 4
    """job_executor thread: most jobs one host runs at once (more start another host)."""

    preload: list[Annotated[str, AfterValidator(_check_module_name)]] = Field(default_factory=list)
    """Modules the fleet's base template imports for this agent too (plugins, model loaders),
    so their memory is shared with every agent's processes."""

    python: str | None = None
    """Interpreter of the agent's job processes (e.g. another virtual environment's
    bin/python, relative paths from the fleet file's folder), so agents with conflicting
    dependencies share one fleet; lksup must be installed there too. Unset: lksup's own."""

    prewarm: ImportRef | None = None
    """Prepares each job process before any job (``prewarm_fnc``): ``def f(proc: JobProcess)``.
    Where it runs: ``prewarm_in``."""

    prewarm_in: Literal["template", "process"] = "template"
    """Where prewarm runs when job processes are forked (process_start zygote or isolated).
    template: once, in the agent's template, before it forks: every job process starts with
    ``proc.userdata`` filled, in memory shared with the others (a VAD or model loaded in
    prewarm is one copy for all the agent's processes), and is ready in milliseconds. A prewarm
    that leaves a thread running or a descriptor open cannot be forked: lksup sees it, logs
    it, and runs prewarm in each process instead. process: in each job process (prewarm that
    must be per process: its own connection, seed or pid). With process_start spawn prewarm
    always runs in each process."""

    request: RequestPolicy = Field(default_factory=RequestPolicy)
    """Declarative request policy, evaluated in the supervisor (room glob, identity...)."""

    request_fnc: ImportRef | None = None
    """Python request function ``async def f(req: JobRequest)``, run in the warm process that
    would take the job, after the declarative ``request`` policy accepted the offer."""

    session_end_fnc: ImportRef | None = None
    """runtime livekit-agents: ``async def on_session_end(ctx: JobContext)``, run when the job's
    primary AgentSession has closed (the SDK's ``on_session_end``)."""

    load: LoadExpr = "cpu"
    """How load is computed (``load_fnc``): cpu (host/cgroup CPU share), memory (host memory
    share), jobs (running jobs / max_jobs), or an expression such as max(cpu, jobs)."""

    max_jobs: Annotated[int, Field(ge=1)] | None = None
    """Most jobs this agent runs at once on this host; `jobs` = running / max_jobs. Unset: no
    limit other than the load threshold."""

    load_threshold: Annotated[float, Field(gt=0, le=1)] = 0.7
    """Report full and decline offers when load reaches this value (SDK production default)."""

    num_idle_processes: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    """Warm processes kept ready for this agent; auto = min(CPU count, 4), as the SDK."""

    job_memory_warn_mb: Annotated[int, Field(ge=0)] = 1000
    """Log a warning when a job process uses more memory (PSS) than this; 0 disables."""

    job_memory_limit_mb: Annotated[int, Field(ge=0)] = 0
    """Kill a job process that uses more memory than this (the job fails); 0 disables."""

    drain_timeout: Duration | None = None
    """How long a drain of this agent waits for running jobs; unset = supervisor.drain_timeout."""

    shutdown_process_timeout: Duration = 10.0
    """Time a job process gets to shut down after it is asked to, before it is killed."""

    initialize_process_timeout: Duration = 10.0
    """Time a new process gets to import the agent's module and run prewarm."""

    permissions: Permissions = Field(default_factory=Permissions)
    """Permissions of the agent's participant, sent at registration."""

    worker_type: Literal["room", "publisher"] = "room"
    """room: one job per room; publisher: one job per publishing participant."""

    max_retry: Annotated[int, Field(ge=0)] = 16
    """Consecutive failed connection attempts before the agent is marked failed; 0 = forever."""

    env: dict[str, EnvValue] = Field(default_factory=dict)
    """Extra environment of this agent's job processes; values may be {env:}/{file:} refs."""

    working_dir: str | None = None
    """Working directory of the job processes (relative paths: from the fleet file's folder);
    it is also where the agent's modules are imported from. Unset: lksup's own directory."""

    livekit: LiveKitConnection = Field(default_factory=LiveKitConnection)
    """Per-agent override of the fleet's LiveKit connection."""


class Agent(AgentOptions):
    """One agent: a worker registered with LiveKit under the agent's name."""

    entrypoint: ImportRef
    """The job's entrypoint, ``async def entrypoint(ctx: JobContext)``, as module:attribute."""


def check_host_port(value: str) -> str:
    """``HOST:PORT`` with a host and a port in 1..65535 (``ValueError`` says what is wrong)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8081), not {value!r}")
    if not host:
        raise ValueError(f"expected HOST:PORT with a host (e.g. 0.0.0.0:8081), not {value!r}")
    return value


class LogFile(_Model):
    """A rotated file the supervisor also writes its log to (JSON lines)."""

    path: Annotated[str, Field(min_length=1)]
    """The file; a relative path is relative to the fleet file's directory."""

    max_mb: Annotated[int, Field(ge=1)] = 100
    """Rotate once the file reaches this size."""

    backups: Annotated[int, Field(ge=0)] = 5
    """Rotated files kept (path.1 ... path.N)."""


class SupervisorSettings(_Model):
    """Settings of the supervisor process itself."""

    http: Annotated[str, AfterValidator(check_host_port)] | None = None
    """Optional read-only listener for /livez, /readyz and /metrics, as HOST:PORT."""

    log_file: LogFile | None = None
    """Also write the log to a rotated file (stdout stays the primary log)."""

    drain_timeout: Duration = 3600.0
    """One deadline for the coordinated drain of the whole fleet (SIGTERM); 0 waits forever."""

    memory_budget_mb: Annotated[int, Field(ge=1)] | None = None
    """Memory of all job processes together; above it every agent reports full."""

    max_concurrent_initializations: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"

    preload: list[Annotated[str, AfterValidator(_check_module_name)]] = Field(default_factory=list)
    """Modules the base template imports for every agent, added to the defaults (see
    preload_defaults)."""

    preload_defaults: bool = True
    """Also preload what is worth sharing: livekit.agents, livekit.rtc and the SDK's warm-up when
    installed, and the livekit.plugins.* modules the agents' templates were seen importing
    (learned on their first start, kept in the state directory). false: only `preload`."""
    """Processes initializing at once across the fleet; auto = min(CPU count, 4)."""


class Metadata(_Model):
    """Identifies the fleet."""

    name: Annotated[str, Field(min_length=1)]
    """Name of the fleet (shown by status and in logs)."""

    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form labels."""


class Fleet(_Model):
    """A fleet of LiveKit agents run by one lksup supervisor."""

    model_config = ConfigDict(title="lksup fleet (v1)")

    api_version: Literal["lksup/v1"] = Field(alias="apiVersion")
    """Format version of this file."""

    kind: Literal["Fleet"]
    """Always Fleet."""

    metadata: Metadata
    """Name and labels of the fleet."""

    livekit: LiveKitConnection = Field(default_factory=LiveKitConnection)
    """Shared connection settings; an agent may override any of them."""

    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)
    """Settings of the supervisor process."""

    defaults: AgentOptions = Field(default_factory=AgentOptions)
    """Options merged under every agent; request, permissions, env and livekit are merged key
    by key, every other option is replaced by the agent's own value."""

    agents: dict[AgentName, Agent] = Field(default_factory=dict)
    """The agents; each key is the agent_name registered with LiveKit."""


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a fleet file, with descriptions and defaults."""
    schema = Fleet.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://lksup.dev/schemas/fleet/v1.json"
    return schema
