"""What the deployment tests share: the stop budget of a fleet, and the tools they need.

The stop budget (``lksup.fleet.budget``, ``lksup stop-budget``) is the worst case from SIGTERM
to the supervisor's exit. Every layer that bounds a stop (``terminationGracePeriodSeconds``,
``TimeoutStopSec``, ``docker stop --time``) must be at least this.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

from lksup.fleet import budget
from lksup.fleet.loading import load_fleet
from lksup.fleet.schema import Fleet

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
    total = budget.stop_budget(fleet).total
    if total is None:
        pytest.fail("supervisor.drain_timeout is 0 (wait forever): no stop timeout covers it")
    return total


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
