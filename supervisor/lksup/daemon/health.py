"""The optional read-only TCP listener: liveness, readiness, status and Prometheus metrics.

``supervisor.http`` (or ``lksup run --http HOST:PORT``) serves, through ``lksup.httpd``:

- ``GET /livez``: 200 while the event loop answers (this handler runs on it);
- ``GET /readyz``: 200 when every agent is ready (registered and not draining), else 503
  with the agents that are not; ``GET /readyz/{agent}`` for one agent (404 if unknown);
- ``GET /status``: the same JSON as ``lksup status -o json``;
- ``GET /metrics``: Prometheus text, read from the live objects at scrape time: per agent,
  its state (one series per state, 1 for the current one), load, jobs, idle processes, offers
  by answer and declines by cause, jobs by outcome and failures by kind, job start latency,
  process memory, restarts, reconnects, drain state; ``lksup_build_info``; and the
  supervisor process's own CPU, memory and descriptors (``process_*``).

Nothing here can change the fleet. Secrets never appear (status carries none). The HTTP
layer's limits apply (``lksup.httpd``): malformed requests are answered 400 and closed, a
request has 10 s to arrive and 10 s to be answered (503), and at most 64 clients are served
at once, the rest waiting in the kernel's backlog; while all 64 slots are taken, a connection
that sends nothing is closed after a second.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, get_args

import anyio
import anyio.abc
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from lksup import httpd
from lksup.control.api import AgentState
from lksup.control.server import runtime_versions
from lksup.daemon.app import DaemonApp
from lksup.pool.process import FailureKind
from lksup.protocol.events import DeclineCause

log = logging.getLogger("lksup.health")

MAX_REQUEST = 16 * 1024  # largest request body (requests here have none)
REQUEST_TIMEOUT = 10.0  # to receive one request, and to answer it
MAX_CONNECTIONS = 64  # clients served at once (scrapers and probes need a handful)
_JSON = "application/json"
_NOT_FOUND = httpd.Reply(404, b'{"code": "not_found"}', _JSON)


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
        limits = httpd.Limits(MAX_REQUEST, REQUEST_TIMEOUT, MAX_CONNECTIONS)
        self._http = httpd.HttpServer("Health listener", self._answer, limits)
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
        async with listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            log.info("Health and metrics on http://%s:%d", self.host, port)
            task_status.started(port)
            await self._http.serve(httpd.listening_sockets(listener))

    async def _answer(self, request: httpd.Request, _: httpd.Connection) -> httpd.Reply:
        target = request.target.split("?", 1)[0]
        if request.method != "GET":
            return httpd.Reply(405, b'{"code": "method_not_allowed"}', _JSON)
        if target == "/livez":
            return httpd.Reply(200, b"ok\n", "text/plain")
        if target == "/metrics":
            return httpd.Reply(200, generate_latest(self.registry), "text/plain; version=0.0.4")
        if target == "/status":
            status = await self.app.status(None)
            return httpd.Reply(200, status.model_dump_json(by_alias=True).encode(), _JSON)
        if target == "/readyz" or target.startswith("/readyz/"):
            name = target.removeprefix("/readyz").strip("/") or None
            slots = self.app.supervisor.slots
            if name is not None and name not in slots:
                return _NOT_FOUND
            names = [name] if name else sorted(slots)
            not_ready = [n for n in names if not self.app.agent_status(slots[n]).ready]
            body = json.dumps({"ready": not not_ready, "not_ready": not_ready}).encode()
            return httpd.Reply(503 if not_ready else 200, body, _JSON)
        return _NOT_FOUND
