"""What an agent's job processes start with: their environment, directory and interpreter.

The daemon starts job processes (and templates) with these; ``validate --check-imports``
checks the agents' imports with the same, so a check judges what will run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lksup.errors import SecretError
from lksup.fleet.schema import Agent
from lksup.fleet.secrets import Redactor, resolve

__all__ = ["agent_environment", "interpreter", "working_dir"]


def agent_environment(
    agent: Agent, *, environ: Mapping[str, str], base_dir: Path, redactor: Redactor
) -> dict[str, str]:
    """The environment of an agent's job processes (secret values added to ``redactor``).

    Raises:
        SecretError: an ``env`` reference cannot be resolved.
    """
    env = dict(environ)
    for key, value in agent.env.items():
        try:
            resolved = resolve(value, environ=environ, base_dir=base_dir)
        except SecretError as exc:
            raise SecretError(f"env.{key}: {exc}") from None
        if not isinstance(value, str):
            redactor.add(resolved)
        env[key] = resolved
    return env


def working_dir(agent: Agent, base_dir: Path) -> Path:
    """Where the agent's job processes run; relative paths are taken from the fleet's folder."""
    if agent.working_dir is None:
        return Path.cwd()
    path = Path(agent.working_dir)
    return path if path.is_absolute() else base_dir / path


def interpreter(agent: Agent, base_dir: Path) -> str:
    """The agent's ``python:`` ("" for lksup's own interpreter).

    A path with a folder in it is taken from the fleet's folder when relative; a bare name
    (``python3.12``) is looked up on ``PATH`` when the process starts.
    """
    if not agent.python:
        return ""
    path = Path(agent.python).expanduser()
    if "/" not in agent.python:
        return agent.python
    return str(path if path.is_absolute() else base_dir / path)
