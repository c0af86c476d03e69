"""``validate --check-imports``: import every agent's functions in subprocesses.

Each agent is checked in its own fresh interpreter (``lksup.fleet.importcheck``) with the
environment and working directory its job processes would get, so agents whose modules clash
never interfere, and the CLI process never runs user code. Checks run concurrently and each is
bounded by a timeout. Secret references in ``env`` are resolved for the check and their values
are scrubbed from every message.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lksup.errors import SecretError
from lksup.fleet.environment import agent_environment, interpreter, working_dir
from lksup.fleet.schema import Agent
from lksup.fleet.secrets import Redactor
from lksup.jobs.ipc import ExitCode, launch_command, runtime_missing_message

#: Extra time beyond the agent's initialize_process_timeout that an import check may take.
CHECK_TIMEOUT_MARGIN = 50.0
_KINDS = {
    "entrypoint": "async",
    "prewarm": "sync",
    "request_fnc": "async",
    "session_end_fnc": "async",
}


@dataclass(frozen=True)
class ImportProblem:
    """One agent function that cannot be used; ``field`` is entrypoint/prewarm/request_fnc."""

    agent: str
    field: str
    message: str


@dataclass(frozen=True)
class ImportReport:
    """The problems found, and the livekit-agents version of each ``livekit-agents`` agent."""

    problems: list[ImportProblem]
    sdk_versions: dict[str, str]


def check_agents(
    agents: Mapping[str, Agent],
    *,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
    redactor: Redactor | None = None,
) -> ImportReport:
    """Import-check every agent concurrently; the problems found, in agent order."""
    env = dict(os.environ if environ is None else environ)
    scrub = redactor if redactor is not None else Redactor()
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(agents)))) as pool:
        futures = [
            pool.submit(_check_one, name, agent, base_dir, env, scrub)
            for name, agent in agents.items()
        ]
        outcomes = [f.result() for f in futures]
    problems = [p for found, _ in outcomes for p in found]
    versions = {name: v for (_, v), name in zip(outcomes, agents, strict=True) if v}
    return ImportReport(
        [ImportProblem(p.agent, p.field, scrub(p.message)) for p in problems], versions
    )


def _check_one(
    name: str, agent: Agent, base_dir: Path, environ: dict[str, str], redactor: Redactor
) -> tuple[list[ImportProblem], str | None]:
    """The agent's problems, and its livekit-agents version (runtime livekit-agents)."""
    checks = [
        {"field": field, "ref": getattr(agent, field), "kind": kind}
        for field, kind in _KINDS.items()
        if getattr(agent, field)
    ]
    try:
        env = agent_environment(agent, environ=environ, base_dir=base_dir, redactor=redactor)
    except SecretError as exc:
        return [ImportProblem(name, "env", str(exc))], None
    cwd = working_dir(agent, base_dir)
    if not cwd.is_dir():
        problem = f"working_dir {str(cwd)!r} is not a directory"
        return [ImportProblem(name, "working_dir", problem)], None
    python = interpreter(agent, base_dir)
    timeout = agent.initialize_process_timeout + CHECK_TIMEOUT_MARGIN
    try:
        proc = subprocess.run(
            launch_command(python, "lksup.fleet.importcheck"),
            input=json.dumps({"checks": checks, "runtime": agent.runtime}),
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        message = f"importing the agent's modules took over {timeout:g}s"
        return [ImportProblem(name, "entrypoint", message)], None
    except OSError as exc:  # python: names no interpreter
        return [ImportProblem(name, "python", f"agent {name!r}: python: {exc}")], None
    if proc.returncode == ExitCode.RUNTIME_MISSING:
        message = f"agent {name!r}: python: {runtime_missing_message(python)}"
        return [ImportProblem(name, "python", message)], None
    try:
        document = json.loads(proc.stdout)
        results = document["results"]
    except (ValueError, KeyError):
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return [ImportProblem(name, "entrypoint", f"import check crashed: {tail[0]}")], None
    problems = [
        ImportProblem(name, r["field"], f"agent {name!r}: {r['field']}: {r['error']}")
        for r in results
        if not r["ok"]
    ]
    if document.get("sdk_error"):
        problems.insert(
            0, ImportProblem(name, "runtime", f"agent {name!r}: {document['sdk_error']}")
        )
    version: str | None = document.get("sdk_version")
    return problems, version
