"""The optional read-only TCP listener: liveness, readiness, status and Prometheus metrics.

``supervisor.http`` (or ``lksup run --http HOST:PORT``) serves, with h11 on anyio:

- ``GET /livez``: 200 while the event loop answers (this handler runs on it);
- ``GET /readyz``: 200 when every agent is ready (registered and not draining), else 503
  with the agents that are not; ``GET /readyz/{agent}`` for one agent (404 if unknown);
- ``GET /status``: the same JSON as ``lksup status -o json``;
- ``GET /metrics``: Prometheus text, read from the live objects at scrape time: per agent,
  its state (one series per state, 1 for the current one), load, jobs, idle processes, offers
  by answer and declines by cause, jobs by outcome and failures by kind, job start latency,
  process memory, restarts, reconnects, drain state; ``lksup_build_info``; and the
  supervisor process's own CPU, memory and descriptors (``process_*``).

Nothing here can change the fleet. Secrets never appear (status carries none).
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Iterable
from typing import Any, get_args

import anyio
import anyio.abc
import h11
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from lksup.control.api import AgentState
from lksup.control.server import runtime_versions
from lksup.daemon.app import DaemonApp
from lksup.pool.process import FailureKind
from lksup.protocol.events import DeclineCause

log = logging.getLogger("lksup.health")

MAX_REQUEST = 16 * 1024
MAX_CONNECTIONS = 64  # clients served at once (scrapers and probes need a handful)
ACCEPT_RETRY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class FleetCollector(Collector):
    """Prometheus metrics computed from the supervisor at scrape time."""

    def __init__(self, app: DaemonApp) -> None:
        self.app = app

    def collect(self) -> Iterable[Any]:
        """Yield one family per metric, one sample per agent."""
        sup = self.app.supervisor
        load = GaugeMetricFamily(
            "lksup_agent_load", "Load reported to the server", labels=["agent"]
        )
        jobs = GaugeMetricFamily("lksup_agent_jobs", "Running jobs", labels=["agent"])
        idle = GaugeMetricFamily(
            "lksup_agent_idle_processes", "Warm idle processes", labels=["agent"]
        )
        ready = GaugeMetricFamily(
            "lksup_agent_ready", "1 when registered and not draining", labels=["agent"]
        )
        draining = GaugeMetricFamily("lksup_agent_draining", "1 while draining", labels=["agent"])
        memory = GaugeMetricFamily(
            "lksup_agent_memory_bytes", "Memory of the agent's job processes", labels=["agent"]
        )
        offers = CounterMetricFamily("lksup_offers", "Offers answered", labels=["agent", "answer"])
        declines = CounterMetricFamily(
            "lksup_offers_declined",
            "Offers not accepted, by cause (draining, full, room, stopping, memory, no_process, "
            "request_fnc, timeout, error)",
            labels=["agent", "cause"],
        )
        outcomes = CounterMetricFamily("lksup_jobs", "Jobs ended", labels=["agent", "outcome"])
        failures = CounterMetricFamily(
            "lksup_job_failures",
            "Failed jobs, by kind (exception, exit_code, signal, memory, unresponsive, killed, "
            "no_process)",
            labels=["agent", "kind"],
        )
        state = GaugeMetricFamily(
            "lksup_agent_state",
            "1 for the agent's current state (as lksup status shows it), 0 for the others",
            labels=["agent", "state"],
        )
        restarts = CounterMetricFamily(
            "lksup_agent_restarts", "Workers restarted or replaced", labels=["agent"]
        )
        info = GaugeMetricFamily(
            "lksup_build_info",
            "Versions of lksup, livekit-protocol and Python; always 1",
            labels=["version", "livekit_protocol", "python"],
        )
        info.add_metric(list(runtime_versions()), 1.0)
        reconnects = CounterMetricFamily(
            "lksup_reconnects", "Connections lost and reopened", labels=["agent"]
        )
        latency = HistogramMetricFamily(
            "lksup_job_start_seconds", "Assignment to entrypoint called", labels=["agent"]
        )
        for name, slot in sorted(sup.slots.items()):
            status = self.app.agent_status(slot)
            load.add_metric([name], status.load)
            jobs.add_metric([name], status.jobs)
            idle.add_metric([name], status.idle)
            ready.add_metric([name], 1.0 if status.ready else 0.0)
            draining.add_metric([name], 1.0 if status.draining else 0.0)
            for known in get_args(AgentState):
                state.add_metric([name, known], 1.0 if status.state == known else 0.0)
            restarts.add_metric([name], status.restarts)
            memory.add_metric([name], status.memory_mb * 2**20)
            totals = slot.totals()  # every runtime the agent had: replaces never reset them
            for answer in ("accepted", "declined", "terminated"):
                offers.add_metric([name, answer], totals.offers.get(answer, 0))
            outcomes.add_metric([name, "success"], totals.jobs_succeeded)
            outcomes.add_metric([name, "failure"], totals.jobs_failed)
            for kind in get_args(FailureKind):
                failures.add_metric([name, kind], totals.failures.get(kind, 0))
            for cause in get_args(DeclineCause):
                declines.add_metric([name, cause], totals.declines.get(cause, 0))
            reconnects.add_metric([name], totals.reconnects)
            histogram = totals.start_latency
            latency.add_metric([name], histogram.cumulative(), sum_value=histogram.total)
        yield from (
            info,
            state,
            restarts,
            declines,
            failures,
            load,
            jobs,
            idle,
            ready,
            draining,
            memory,
            offers,
            outcomes,
            reconnects,
            latency,
        )


class HealthServer:
    """The read-only listener (see the module docstring)."""

    def __init__(self, host: str, port: int, app: DaemonApp) -> None:
        self.host, self.port, self.app = host, port, app
        self._slots = anyio.Semaphore(MAX_CONNECTIONS)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(app))
        ProcessCollector(registry=self.registry)  # the supervisor's own CPU, memory, fds

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, then serve until cancelled; reports the bound port."""
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        await self.serve(listener, task_status=task_status)

    async def serve(
        self,
        listener: anyio.abc.Listener[anyio.abc.SocketStream],
        *,
        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on a bound listener until cancelled (it is closed then)."""
        # accept loops of our own (not Listener.serve, whose accept error would end it)
        sockets: list[anyio.abc.SocketListener] = list(
            getattr(listener, "listeners", None) or [listener]
        )
        async with listener, anyio.create_task_group() as tg:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            log.info("Health and metrics on http://%s:%d", self.host, port)
            task_status.started(port)
            for sock in sockets:
                tg.start_soon(self._accept_loop, sock, tg)

    async def _accept_loop(
        self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup
    ) -> None:
        while True:
            # a bounded number of clients at once: a flood of idle connections waits in the
            # kernel's backlog instead of taking the daemon's file descriptors
            await self._slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:  # out of descriptors or buffers: wait, never die
                self._slots.release()
                if exc.errno not in ACCEPT_RETRY:
                    raise
                log.warning("Health listener accept failed: %s; retrying.", exc)
                await anyio.sleep(0.1)
                continue
            tg.start_soon(self._connection, stream)

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        """One client connection; nothing a client sends can harm the daemon."""
        try:
            async with stream:
                with anyio.move_on_after(10):
                    await self._serve(stream)
        except (h11.ProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # a broken or hostile client: drop it
        except Exception:  # whatever else: this connection only
            log.exception("Health listener: a request failed")
        finally:
            self._slots.release()

    async def _serve(self, stream: anyio.abc.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        request: h11.Request | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive(4096)
                except anyio.EndOfStream:
                    data = b""
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                status, ctype, body = await self._answer(request)
                headers = [("content-type", ctype), ("content-length", str(len(body)))]
                for part in (
                    h11.Response(status_code=status, headers=headers),
                    h11.Data(data=body),
                    h11.EndOfMessage(),
                ):
                    await stream.send(conn.send(part) or b"")
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
                request = None
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return

    async def _answer(self, request: h11.Request) -> tuple[int, str, bytes]:
        target = request.target.decode("latin-1").split("?", 1)[0]
        if request.method != b"GET":
            return 405, "application/json", b'{"code": "method_not_allowed"}'
        if target == "/livez":
            return 200, "text/plain", b"ok\n"
        if target == "/metrics":
            return 200, "text/plain; version=0.0.4", generate_latest(self.registry)
        if target == "/status":
            status = await self.app.status(None)
            return 200, "application/json", status.model_dump_json(by_alias=True).encode()
        if target == "/readyz" or target.startswith("/readyz/"):
            name = target.removeprefix("/readyz").strip("/") or None
            slots = self.app.supervisor.slots
            if name is not None and name not in slots:
                return 404, "application/json", b'{"code": "not_found"}'
            names = [name] if name else sorted(slots)
            not_ready = [n for n in names if not self.app.agent_status(slots[n]).ready]
            body = json.dumps({"ready": not not_ready, "not_ready": not_ready}).encode()
            return (503 if not_ready else 200), "application/json", body
        return 404, "application/json", b'{"code": "not_found"}'
