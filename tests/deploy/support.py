"""What the deployment tests share: the stop budget of a fleet, and the tools they need.

The stop budget is the worst case from SIGTERM to the supervisor's exit: the fleet-wide drain
(``supervisor.drain_timeout``), then the stop sequence of what is left, run on every process at
once (``shutdown_process_timeout`` of the slowest agent, then SIGTERM and the term grace), plus
a margin for the templates, the connections and the process's own exit. Every layer that
bounds a stop (``terminationGracePeriodSeconds``, ``TimeoutStopSec``, ``docker stop --time``)
must be at least this.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

from lksup.fleet.loading import load_fleet
from lksup.fleet.schema import Fleet
from lksup.pool.process import ProcessSpec


def _spec_default(name: str) -> float:
    for spec_field in dataclasses.fields(ProcessSpec):
        if spec_field.name == name and isinstance(spec_field.default, float):
            return spec_field.default
    raise AssertionError(f"ProcessSpec has no float field {name!r}")


#: Time a process gets after SIGTERM before SIGKILL, in lksup's stop sequence.
TERM_GRACE = _spec_default("term_grace")
#: For what the stop sequence does not bound: templates, connections, the interpreter's exit.
MARGIN = 15.0

#: Dummy values for the secret references of the example fleets (``validate --strict``
#: resolves every one).
SECRETS = {
    "LIVEKIT_API_KEY": "example-key",
    "LIVEKIT_API_SECRET": "example-secret-0123456789abcdef",
    "CRM_API_TOKEN": "example-token",
}


def load(path: Path) -> Fleet:
    """The normalized fleet, as ``lksup validate`` and ``lksup run`` load it."""
    return load_fleet(str(path), environ={}).fleet


def stop_budget(fleet: Fleet) -> float:
    """Seconds from SIGTERM to exit in the worst case (see the module docstring)."""
    drain = fleet.supervisor.drain_timeout
    if not drain:
        pytest.fail("supervisor.drain_timeout is 0 (wait forever): no stop timeout covers it")
    stop = max((agent.shutdown_process_timeout for agent in fleet.agents.values()), default=0.0)
    return drain + stop + TERM_GRACE + MARGIN


def require_tool(name: str) -> str:
    """The path of a tool; skips the test without it, except in CI (``CI`` set): fails there."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} not found")
    return path


def missing(reason: str) -> NoReturn:
    """Skip for a missing tool, or fail in CI, where every tool must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)
