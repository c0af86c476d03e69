"""The registered workers of one server: pools by key, snapshots, and waiting for changes.

``Registry`` is the ``workers.Hub`` the sessions report to. A session enters its pool only
after its ``register`` answer went out and leaves it when its connection ends; nothing is sent
to anyone when that happens (reference §2.8).

Invariants:

* ``pools[key]`` lists the registered sessions of ``key`` in registration order, and a key
  with no session has no entry.
* Every change (registration, status, load, jobs, departure) wakes ``wait`` callers: tests
  and tools synchronise on the server's state instead of sleeping.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import anyio

from lksup.devserver import codec
from lksup.devserver.dispatch import Candidate
from lksup.devserver.model import PoolKey
from lksup.devserver.workers import WorkerInfo, WorkerSession

_ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def new_id(prefix: str) -> str:
    """A LiveKit-style ID: ``prefix`` and 12 random base57 characters."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


class Registry:
    """Registered sessions and their pools."""

    def __init__(self, wall_clock: Callable[[], float]) -> None:
        self._wall_clock = wall_clock
        self._sessions: dict[str, WorkerSession] = {}
        self._pools: dict[PoolKey, list[WorkerSession]] = {}
        self._changed: anyio.Event | None = None
        self.traces: dict[str, list[codec.TraceEntry]] = {}

    def start(self) -> None:
        """Bind to the running event loop (``wait`` needs it)."""
        self._changed = anyio.Event()

    # --- workers.Hub -----------------------------------------------------------------------

    def worker_registered(self, session: WorkerSession) -> None:
        """Add a registered worker to its pool."""
        self._sessions[session.id] = session
        self._pools.setdefault(session.key, []).append(session)
        self._notify()

    def worker_changed(self, session: WorkerSession) -> None:
        """Wake ``wait`` callers."""
        self._notify()

    def worker_closed(self, session: WorkerSession) -> None:
        """Forget a worker (its jobs go with it)."""
        if self._sessions.pop(session.id, None) is None:
            return
        pool = self._pools.get(session.key, [])
        if session in pool:
            pool.remove(session)
        if not pool:
            self._pools.pop(session.key, None)
        self._notify()

    def new_id(self, prefix: str) -> str:
        """A fresh ID with ``prefix``."""
        return new_id(prefix)

    def wall_time(self) -> float:
        """Unix time from the injected clock."""
        return self._wall_clock()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()

    # --- queries ---------------------------------------------------------------------------

    def session(self, worker_id: str) -> WorkerSession | None:
        """The registered session ``worker_id``, if still connected."""
        return self._sessions.get(worker_id)

    def candidates(self, key: PoolKey) -> list[Candidate]:
        """The pool of ``key`` as the selection sees it."""
        return [Candidate(s.id, s.status, s.load) for s in self._pools.get(key, [])]

    def namespaces(self, agent_name: str, job_type: int, deployment: str) -> list[str]:
        """Namespaces with a pool for this agent name, job type and deployment."""
        found = {
            key.namespace
            for key in self._pools
            if (key.agent_name, key.job_type, key.deployment) == (agent_name, job_type, deployment)
        }
        return sorted(found)

    def workers(self) -> list[WorkerInfo]:
        """Snapshots of the registered workers, in registration order."""
        return [session.info() for session in self._sessions.values()]

    async def wait(self, predicate: Callable[[list[WorkerInfo]], bool]) -> list[WorkerInfo]:
        """Wait until ``predicate(workers())`` holds; return that snapshot."""
        while True:
            changed = self._changed
            snapshot = self.workers()
            if predicate(snapshot):
                return snapshot
            if changed is None:
                raise RuntimeError("the dev server is not running")
            await changed.wait()
