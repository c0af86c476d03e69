"""The fleet's inference processes, seen from the supervisor (livekit-agents inference runners).

The SDK's worker starts one inference process per worker. lksup starts one per distinct
(interpreter, set of runners) for the whole fleet, usually one: ten agents that use the turn
detector load its model once. Job processes report the runners their imports registered in
``Ready``; the first report of a set starts its process (so the model loads while the agents
are idle, as under the SDK), and every ``InferenceRequest`` a job sends is relayed to it under a
request id of the supervisor's own, and its ``InferenceResponse`` back to the job that asked.

The process (``python -m lksup.jobs.inference``) is a ``JobProcessHandle`` with another first
message: own session, output and log forwarding with the agent's secrets masked, pings, the
stop sequence, memory watched by the monitor under the name ``INFERENCE_OWNER`` (the policy of
the agent that first needed it) and killed over its limit. When it exits or cannot start, the
requests in flight are answered with an error (the job's ``do_inference`` raises, as under the
SDK), and it is started again after a backoff (1 s doubling to 60 s, reset once it is ready).

Invariants: each relayed request is answered exactly once (by the process, or with an error
when the process is gone or the service closes); requests that arrive while the process
starts wait for it, bounded by ``MAX_WAITING``.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc

from lksup.jobs import ipc
from lksup.monitors.events import MemoryLimitExceeded, MonitorEvent
from lksup.monitors.memory_policy import MemoryPolicy
from lksup.monitors.monitor import Monitor
from lksup.pool.process import InitFailed, JobProcessHandle, ProcessSpec, child_command
from lksup.protocol.backoff import Backoff

__all__ = ["INFERENCE_OWNER", "MAX_WAITING", "InferenceProcess", "InferenceService"]

log = logging.getLogger("lksup.inference")

#: The name the inference processes' memory is watched under (never an agent's name: agent
#: names are DNS labels, so they cannot contain parentheses).
INFERENCE_OWNER = "(inference)"
#: Requests that may wait for a starting inference process; more are answered with an error.
MAX_WAITING = 1000


class InferenceProcess(JobProcessHandle):
    """A ``JobProcessHandle`` that runs ``lksup.jobs.inference`` for a set of runners."""

    def __init__(self, spec: ProcessSpec, runners: tuple[str, ...]) -> None:
        super().__init__(spec)
        self.runners = runners

    def __repr__(self) -> str:
        return f"InferenceProcess({', '.join(self.runners)}, pid={self.pid}, {self.state.value})"

    def _command(self, fd: int) -> list[str]:
        return child_command(self.spec.python, fd, module="lksup.jobs.inference")

    def _first_message(self) -> ipc.ParentMessage:
        return ipc.StartInference(runners=self.runners, log_level=self.spec.log_level)


@dataclass
class _Relay:
    """A request in flight: who asked, under which id."""

    requester: JobProcessHandle
    request_id: str


@dataclass
class InferenceGroup:
    """One inference process and its requests."""

    python: str
    runners: tuple[str, ...]
    spec: ProcessSpec
    memory: MemoryPolicy
    process: InferenceProcess | None = None
    restarts: int = 0
    last_error: str | None = None
    in_flight: dict[str, _Relay] = field(default_factory=dict)
    waiting: list[tuple[str, ipc.InferenceRequest]] = field(default_factory=list)
    ready: bool = False
    _changed: anyio.Event = field(default_factory=anyio.Event, repr=False)

    def changed(self) -> None:
        """Wake whoever waits on this group's state (``wait_until``)."""
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds (checked on every change of ready or last_error)."""
        while not predicate():
            await self._changed.wait()


class InferenceService:
    """Starts, supervises and relays to the fleet's inference processes."""

    def __init__(
        self,
        *,
        monitor: Monitor | None = None,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.monitor = monitor
        self.backoff = backoff or Backoff(initial_delay=1.0, factor=2.0, max_delay=60.0)
        self._rand = rand
        self.groups: dict[tuple[str, tuple[str, ...]], InferenceGroup] = {}
        self._ids = itertools.count(1)
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the inference processes until cancelled; they are stopped on the way out."""
        if self.monitor is not None:
            self.monitor.add_listener(self._on_monitor)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._closed = True
            if self.monitor is not None:
                self.monitor.remove_listener(self._on_monitor)

    @property
    def closed(self) -> bool:
        """Stopping or stopped: nothing is started again."""
        return self._closed

    async def aclose(self) -> None:
        """Stop every inference process (the stop sequence) and answer what is pending."""
        self._closed = True
        async with anyio.create_task_group() as tg:
            for group in self.groups.values():
                if group.process is not None:
                    tg.start_soon(group.process.stop, "supervisor stopping")
        for group in self.groups.values():
            self._fail_pending(group, "the supervisor is stopping")

    # --- registration and relay ---------------------------------------------------------------

    def register(
        self, spec: ProcessSpec, runners: tuple[str, ...], memory: MemoryPolicy
    ) -> InferenceGroup | None:
        """Make sure an inference process serves ``runners`` for ``spec``'s interpreter."""
        if not runners or self._tg is None or self._closed:
            return None
        key = (spec.python, runners)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = InferenceGroup(spec.python, runners, spec, memory)
            log.info("Starting an inference process for %s.", ", ".join(runners))
            self._tg.start_soon(self._supervise, group, name=f"inference {runners}")
        return group

    def attach(self, process: JobProcessHandle, memory: MemoryPolicy) -> None:
        """Route ``process``'s inference requests (call once it is ready)."""
        group = self.register(process.spec, process.inference_runners, memory)
        if group is None:
            return

        def submit(requester: JobProcessHandle, request: ipc.InferenceRequest) -> None:
            self._submit(group, requester, request)

        process.on_inference = submit

    def _submit(
        self, group: InferenceGroup, requester: JobProcessHandle, request: ipc.InferenceRequest
    ) -> None:
        relay_id = f"inf_{next(self._ids)}"
        if self._closed:
            self._answer(requester, request.request_id, "the supervisor is stopping")
            return
        if not group.ready:
            if len(group.waiting) >= MAX_WAITING:
                reason = group.last_error or "starting"
                self._answer(requester, request.request_id, f"inference process {reason}")
                return
            group.in_flight[relay_id] = _Relay(requester, request.request_id)
            group.waiting.append((relay_id, request))
            return
        group.in_flight[relay_id] = _Relay(requester, request.request_id)
        self._forward(group, relay_id, request)

    def _forward(self, group: InferenceGroup, relay_id: str, request: ipc.InferenceRequest) -> None:
        assert self._tg is not None
        assert group.process is not None
        relayed = ipc.InferenceRequest(
            request_id=relay_id, method=request.method, data=request.data
        )
        process = group.process

        async def send() -> None:
            if not await process.send(relayed):
                relay = group.in_flight.pop(relay_id, None)
                if relay is not None:
                    self._answer(relay.requester, relay.request_id, "inference process exited")

        self._tg.start_soon(send)

    def _on_response(self, group: InferenceGroup, response: ipc.InferenceResponse) -> None:
        relay = group.in_flight.pop(response.request_id, None)
        if relay is None:
            return  # answered already (its requester is gone, or the process restarted)
        answer = ipc.InferenceResponse(
            request_id=relay.request_id,
            data=response.data,
            has_data=response.has_data,
            error=response.error,
        )
        self._send(relay.requester, answer)

    def _answer(self, requester: JobProcessHandle, request_id: str, error: str) -> None:
        self._send(requester, ipc.InferenceResponse(request_id=request_id, error=error))

    def _send(self, requester: JobProcessHandle, response: ipc.InferenceResponse) -> None:
        if self._tg is not None and requester.alive:
            self._tg.start_soon(requester.send, response)

    def _fail_pending(self, group: InferenceGroup, reason: str) -> None:
        pending, group.in_flight, group.waiting = group.in_flight, {}, []
        for relay in pending.values():
            self._answer(relay.requester, relay.request_id, reason)

    # --- supervision ----------------------------------------------------------------------------

    async def _supervise(self, group: InferenceGroup) -> None:
        assert self._tg is not None
        failures = 0
        while not self._closed:
            process = InferenceProcess(group.spec, group.runners)
            process.on_inference_response = lambda r, g=group: self._on_response(g, r)
            group.process = process
            try:
                await self._tg.start(process.run)
            except InitFailed as exc:
                group.last_error = f"failed to start: {exc}"
                group.changed()
                log.error("Inference process for %s %s", ", ".join(group.runners), group.last_error)
                self._fail_pending(group, f"inference process {group.last_error}")
            else:
                failures = -1  # a start that got ready resets the backoff
                group.ready = True
                group.last_error = None
                group.changed()
                if self.monitor is not None and process.pid is not None:
                    self.monitor.watch(
                        process.pid, agent=INFERENCE_OWNER, job_id=None, policy=group.memory
                    )
                waiting, group.waiting = group.waiting, []
                for relay_id, request in waiting:
                    self._forward(group, relay_id, request)
                await process.wait_exited()
                group.ready = False
                if self.monitor is not None and process.pid is not None:
                    self.monitor.unwatch(process.pid)
                if self.closed:
                    group.changed()
                    break
                group.last_error = f"exited ({process.exit_description})"
                group.changed()
                log.error("Inference process %s %s; restarting it.", process.pid, group.last_error)
                self._fail_pending(group, f"inference process {group.last_error}")
            group.restarts += 1
            failures += 1
            if failures > 0:
                await anyio.sleep(self.backoff.delay(failures - 1, self._rand()))

    def _on_monitor(self, event: MonitorEvent) -> None:
        if not isinstance(event, MemoryLimitExceeded) or event.agent != INFERENCE_OWNER:
            return
        for group in self.groups.values():
            process = group.process
            if process is not None and process.pid == event.pid and self._tg is not None:
                log.error("Inference process %s: %s; killing it.", process.pid, event.reason)
                self._tg.start_soon(process.kill, event.reason)
