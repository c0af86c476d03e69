"""Launching a dispatch's jobs, offering each to the workers, and terminating them.

The I/O half of dispatch (the pure half is ``dispatch``), after ``pkg/agent/client.go`` and
``AgentHandler.JobRequest`` (reference §2.3-§2.4, §2.7, §3.3):

* A dispatch launches one JT_ROOM job per namespace that has a pool for the dispatch's agent
  name and deployment; with none, nothing is launched (the real server's agent-name cache makes
  that take up to 5 s; here it is immediate).
* One job: the affinity gate, then the simulated psrpc claim delay, then offers to one
  weighted-random worker after another, each at most once, until one accepts or terminates,
  none is left, or the shared deadline passes. ``available=false`` and a worker that closes
  mid-offer lead to the next worker; a timeout, a duplicate or a failed write drop the job.
  **No queueing**: a dropped job is logged and forgotten.
* Launched jobs are appended to the dispatch record with their state at launch (RUNNING, or
  SUCCESS for a ``terminate`` answer); later ``update_job`` messages never reach it.
* Deleting a dispatch waits for its pending launches, then terminates each job still running
  on a connected worker, and records the ended state.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import anyio
import anyio.abc

from lksup.devserver import dispatch, model
from lksup.devserver.registry import Registry, new_id
from lksup.devserver.rooms import Dispatch
from lksup.devserver.workers import RETRY, Outcome

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchSettings:
    """The knobs of job dispatch (see ``DevServer``)."""

    target_load: float
    dispatch_timeout: float
    claim_delay: float
    assign_timeout: float


class _Launches:
    """Pending launches of one dispatch."""

    def __init__(self) -> None:
        self.count = 0
        self.done = anyio.Event()


class Launcher:
    """Runs launches and terminations in the server's task group."""

    def __init__(self, registry: Registry, settings: LaunchSettings, rng: random.Random) -> None:
        self._registry = registry
        self._settings = settings
        self._rng = rng
        self._launching: dict[str, _Launches] = {}
        self._terminations: dict[str, anyio.Event] = {}
        self._dispatches: dict[str, Dispatch] = {}  # every dispatch ever launched

    def launch(self, tg: anyio.abc.TaskGroup, room: model.RoomInfo, record: Dispatch) -> None:
        """Start the JT_ROOM launch of ``record`` in ``room``."""
        self._dispatches[record.id] = record
        launches = self._launching.get(record.id)
        if launches is None or launches.done.is_set():
            launches = self._launching[record.id] = _Launches()
        launches.count += 1
        tg.start_soon(self._launch_room_job, room, record, launches)

    def delete(self, tg: anyio.abc.TaskGroup, record: Dispatch) -> None:
        """Start terminating the jobs of a dispatch just removed from its room."""
        done = self._terminations[record.id] = anyio.Event()
        tg.start_soon(self._terminate, record, done)

    async def settled(self, dispatch_id: str) -> Dispatch:
        """Wait for a dispatch's launches (and terminations, once deleted) to finish.

        Raises:
            NotFound: no dispatch ``dispatch_id`` was ever launched.
        """
        record = self._dispatches.get(dispatch_id)
        if record is None:
            raise model.NotFound("dispatch ID not found")
        launches = self._launching.get(dispatch_id)
        if launches is not None:
            await launches.done.wait()
        terminated = self._terminations.get(dispatch_id)
        if terminated is not None:
            await terminated.wait()
        return record

    async def _launch_room_job(
        self, room: model.RoomInfo, record: Dispatch, launches: _Launches
    ) -> None:
        spec = record.spec
        try:
            namespaces = self._registry.namespaces(
                spec.agent_name, model.JobType.ROOM, spec.deployment
            )
            if not namespaces:
                _log.info("No worker for agent %r; %s not dispatched.", spec.agent_name, record.id)
                return
            async with anyio.create_task_group() as tg:
                for namespace in namespaces:
                    job = model.Job(
                        id=new_id("AJ_"),
                        type=model.JobType.ROOM,
                        room=room,
                        namespace=namespace,
                        metadata=spec.metadata,
                        agent_name=spec.agent_name,
                        dispatch_id=record.id,
                        deployment=spec.deployment,
                        attributes=dict(spec.attributes),
                    )
                    tg.start_soon(self._request_into, job, record)
        finally:
            launches.count -= 1
            if launches.count == 0:
                launches.done.set()
                if self._launching.get(record.id) is launches:
                    del self._launching[record.id]

    async def _request_into(self, job: model.Job, record: Dispatch) -> None:
        launched = await self.job_request(job)
        if launched is not None:
            record.jobs.append(launched)

    async def job_request(self, job: model.Job) -> model.Job | None:
        """Offer one job until a worker takes it; the launched job, or None when dropped."""
        settings = self._settings
        start = anyio.current_time()
        budget = dispatch.Budget(start + settings.dispatch_timeout, settings.assign_timeout)
        key = model.PoolKey(job.agent_name, job.namespace, job.type, job.deployment)
        if dispatch.affinity(self._registry.candidates(key), settings.target_load) <= 0:
            _log.info("Job %s dropped: no worker below the target load.", job.id)
            return None
        if settings.claim_delay > 0:
            await anyio.sleep(settings.claim_delay)  # psrpc's claim window, not synchronisation
        tried: set[str] = set()
        while True:
            wait = budget.wait(anyio.current_time())
            if wait <= 0:
                _log.info("Job %s dropped: dispatch timeout.", job.id)
                return None
            chosen = dispatch.pick(self._registry.candidates(key), tried, self._rng.random())
            session = self._registry.session(chosen) if chosen is not None else None
            if chosen is None or session is None:
                _log.info("Job %s dropped: no worker with capacity.", job.id)
                return None
            tried.add(chosen)
            result = await session.assign_job(job, timeout=wait)
            if result.outcome in RETRY:
                continue
            if result.outcome in (Outcome.ACCEPTED, Outcome.TERMINATED):
                return result.job
            _log.info("Job %s dropped: %s.", job.id, result.outcome.value)
            return None

    async def _terminate(self, record: Dispatch, done: anyio.Event) -> None:
        try:
            launches = self._launching.get(record.id)
            if launches is not None:
                await launches.done.wait()
            for index, job in enumerate(list(record.jobs)):
                session = self._registry.session(job.state.worker_id)
                if session is None:
                    continue
                ended = await session.terminate_job(job.id)
                if ended is not None:
                    record.jobs[index] = ended
        finally:
            done.set()
