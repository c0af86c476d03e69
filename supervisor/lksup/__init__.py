"""lksup: a declarative supervisor for fleets of LiveKit agent workers.

Agent authors import their API from here::

    from lksup import JobContext, JobProcess, JobRequest

The names are resolved on first use (``lksup.jobs.context``), so that importing lksup's own
modules (the supervisor, the CLI) does not load the job-process API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lksup.jobs.context import JobContext, JobProcess, JobRequest

__version__ = "0.1.0"

__all__ = ["JobContext", "JobProcess", "JobRequest", "__version__"]

_LAZY = frozenset({"JobContext", "JobProcess", "JobRequest"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from lksup.jobs import context

        return getattr(context, name)
    raise AttributeError(f"module 'lksup' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
