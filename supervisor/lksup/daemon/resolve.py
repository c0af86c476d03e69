"""An agent's settings resolved into the pieces that run it.

A normalized ``fleet.schema.Agent`` becomes a ``ProcessSpec`` (its job processes' command,
environment and limits), a request policy and a memory policy for its pool, ``Options`` for
its protocol machine and ``Credentials`` for its connection. Secrets are resolved here, at
connection time, from the daemon's ``Environment``; a reference that cannot be resolved is an
``AgentConfigError`` that names it and never shows a value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lksup import __version__
from lksup.errors import SecretError
from lksup.fleet.environment import agent_environment, interpreter, working_dir
from lksup.fleet.schema import Agent, EnvRef, Fleet
from lksup.fleet.secrets import Redactor, resolve
from lksup.monitors.memory_policy import MemoryPolicy
from lksup.pool.pool import RequestPolicy, auto_idle_processes
from lksup.pool.process import ProcessSpec
from lksup.pool.zygote import PRELOAD_VARIABLE
from lksup.protocol.events import JobType, Permissions
from lksup.protocol.machine import Options
from lksup.transport.session import Credentials


@dataclass(frozen=True)
class Environment:
    """Where an agent's settings are resolved: the daemon's environment and the fleet's folder."""

    environ: Mapping[str, str]
    base_dir: Path
    default_url: str | None = None  # the embedded dev server, for agents without a URL
    default_api_key: str | None = None
    default_api_secret: str | None = None
    withheld: frozenset[str] = frozenset()
    """Variables the fleet's connections read their key or secret from ({env: NAME}): job
    processes do not inherit them unless their agent's ``env`` names them."""
    connection_secrets: frozenset[str] = field(default=frozenset(), repr=False)
    """The fleet's resolved connection keys and secrets: masked in every job's output."""


class AgentConfigError(Exception):
    """An agent cannot be started as configured (no URL, unresolvable secret)."""


def for_fleet(env: Environment, fleet: Fleet) -> Environment:
    """``env`` with what the fleet's connections hold back from, and mask in, job processes.

    A connection secret that cannot be read now is left out (its agent's start reports it).
    """
    withheld, secrets = set(), set()
    for agent in fleet.agents.values():
        for reference in (agent.livekit.api_key, agent.livekit.api_secret):
            if isinstance(reference, EnvRef):
                withheld.add(reference.env)
            if reference is not None:
                with contextlib.suppress(SecretError):
                    secrets.add(resolve(reference, environ=env.environ, base_dir=env.base_dir))
    return dataclasses.replace(
        env, withheld=frozenset(withheld), connection_secrets=frozenset(secrets)
    )


def build_credentials(agent: Agent, env: Environment) -> Credentials:
    """The connection settings, secrets resolved (raises ``AgentConfigError``)."""
    livekit = agent.livekit
    url = livekit.url or env.default_url
    if url is None:
        raise AgentConfigError("no livekit.url (and no dev server to fall back on)")
    try:
        key = (
            resolve(livekit.api_key, environ=env.environ, base_dir=env.base_dir)
            if livekit.api_key
            else env.default_api_key
        )
        secret = (
            resolve(livekit.api_secret, environ=env.environ, base_dir=env.base_dir)
            if livekit.api_secret
            else env.default_api_secret
        )
    except SecretError as exc:  # the message names the reference, never a value
        raise AgentConfigError(str(exc)) from None
    if not key or not secret:
        raise AgentConfigError("no livekit.api_key/api_secret (and no dev server keys)")
    return Credentials(url, key, secret)


def build_spec(
    name: str, agent: Agent, env: Environment, *, log_level: str = "INFO"
) -> ProcessSpec:
    """How this agent's job processes are started.

    Secrets in ``env`` are resolved now; ``AgentConfigError`` when one cannot be.
    """
    redactor = Redactor()
    try:
        environment = agent_environment(
            agent, environ=env.environ, base_dir=env.base_dir, redactor=redactor
        )
    except SecretError as exc:  # the message names the reference, never a value
        raise AgentConfigError(str(exc)) from None
    for variable in env.withheld - set(agent.env):
        environment.pop(variable, None)
    for value in env.connection_secrets:
        redactor.add(value)
    if agent.runtime == "livekit-agents":
        environment.update(sdk_environment(agent, env, environment, redactor))
    return ProcessSpec(
        agent_name=name,
        entrypoint=agent.entrypoint,
        prewarm=agent.prewarm or "",
        request_fnc=agent.request_fnc or "",
        env=environment,
        cwd=working_dir(agent, env.base_dir),
        log_level=log_level,
        shutdown_timeout=agent.shutdown_process_timeout,
        initialize_timeout=agent.initialize_process_timeout,
        secrets=redactor.values,
        runtime=agent.runtime,
        session_end_fnc=agent.session_end_fnc or "",
        max_jobs=agent.max_jobs_per_process if agent.job_executor == "thread" else 1,
        python=interpreter(agent, env.base_dir),
    )


def sdk_environment(
    agent: Agent, env: Environment, environment: Mapping[str, str], redactor: Redactor
) -> dict[str, str]:
    """What livekit-agents job processes get on top of the agent's environment.

    The connection (``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET``), as the SDK's
    worker exports it for ``ctx.api``; key and secret are masked in all output. The SDK's
    preload of local inference models is off unless the agent's ``env`` sets it: a spawned
    job process would load its own copy of the models (hundreds of MB each).
    """
    credentials = build_credentials(agent, env)
    redactor.add(credentials.api_key)
    redactor.add(credentials.api_secret)
    extra = {
        "LIVEKIT_URL": credentials.url,
        "LIVEKIT_API_KEY": credentials.api_key,
        "LIVEKIT_API_SECRET": credentials.api_secret,
    }
    if PRELOAD_VARIABLE not in agent.env:
        extra[PRELOAD_VARIABLE] = "0"
    return extra


def resolved_fingerprint(name: str, agent: Agent, env: Environment) -> str:
    """A digest of what the agent's secret references resolve to now.

    It covers the connection credentials and the job processes' environment (raises
    ``AgentConfigError`` when a reference cannot be resolved). Kept in memory only, to see
    whether a referenced secret changed since the agent started (a rotated ``{file: ...}``);
    it shows nothing of the values.
    """
    return fingerprint(build_credentials(agent, env), build_spec(name, agent, env).env)


def fingerprint(credentials: Credentials, environment: Mapping[str, str]) -> str:
    """The digest ``resolved_fingerprint`` compares (of values already resolved)."""
    material = json.dumps(
        [credentials.url, credentials.api_key, credentials.api_secret, sorted(environment.items())]
    )
    return hashlib.sha256(material.encode()).hexdigest()


def build_options(name: str, agent: Agent) -> Options:
    """What the worker connection registers with."""
    permissions = agent.permissions
    return Options(
        agent_name=name,
        version=__version__,
        job_type=JobType.PUBLISHER if agent.worker_type == "publisher" else JobType.ROOM,
        permissions=Permissions(
            can_publish=permissions.can_publish,
            can_subscribe=permissions.can_subscribe,
            can_publish_data=permissions.can_publish_data,
            can_update_metadata=permissions.can_update_metadata,
            can_publish_sources=tuple(permissions.can_publish_sources),
            hidden=permissions.hidden,
        ),
        max_jobs=agent.max_jobs,
        max_retry=agent.max_retry,
    )


def idle_target(agent: Agent) -> int:
    """Warm processes wanted (``auto`` resolved on this host)."""
    idle = agent.num_idle_processes
    return auto_idle_processes() if idle == "auto" else idle


def memory_policy(agent: Agent) -> MemoryPolicy:
    """The per-process memory rules of an agent."""
    return MemoryPolicy(agent.job_memory_warn_mb, agent.job_memory_limit_mb)


def request_policy(agent: Agent) -> RequestPolicy:
    """The declarative request policy, as the pool evaluates it."""
    request = agent.request
    return RequestPolicy(
        room=request.room,
        identity=request.identity,
        name=request.name,
        metadata=request.metadata,
        attributes=dict(request.attributes),
    )
