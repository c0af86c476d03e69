"""Fuzz: the worker protocol (server messages into the codec and the connection's machine),
the job-process IPC payloads and the control API's request parsing."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st

from lksup.control.api import ROUTES, parse_body, resolve
from lksup.control.errors import ControlError, MethodNotAllowed
from lksup.jobs import ipc
from lksup.protocol.codec import CodecError, decode_server
from lksup.protocol.machine import Options, WorkerMachine
from tests.fuzz.conftest import fuzz, inputs
from tests.protocol import server

SERVER_SEEDS = [
    server.register(),
    server.offer("AJ_1"),
    server.assignment("AJ_1"),
    server.termination("AJ_1"),
    server.pong(1, 2),
]

IPC_SEEDS = [
    ipc.encode_payload(message)
    for message in (
        ipc.StartJob(job=b"\x0a\x04AJ_1", url="ws://lk", token="t", worker_id="AW_1"),
        ipc.OfferRequest(job=b"\x0a\x04AJ_1", default_identity="agent"),
        ipc.AwaitJob(job_id="AJ_1", poll_s=0.02),
        ipc.Shutdown(reason="drain"),
        ipc.Ping(sent_at_ns=1),
        ipc.JobEnded(job_id="AJ_1", error="boom"),
        ipc.LogRecord(level=20, logger="agent", message="hello"),
    )
]


@fuzz
@given(data=inputs(SERVER_SEEDS))
def test_server_bytes_decode_or_say_why(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_server(data)


@fuzz
@given(frames=st.lists(inputs(SERVER_SEEDS), max_size=8))
def test_the_machine_survives_any_server_frames(frames: list[bytes]) -> None:
    """Garbage from the server is a protocol violation (a reconnect), never an exception."""
    machine = WorkerMachine(Options(agent_name="agent", version="1"), rand=lambda: 0.5)
    machine.start(0.0)
    machine.connection_opened(0.0)
    machine.receive(server.register(), 0.0)
    for now, frame in enumerate(frames, start=1):
        machine.receive(frame, float(now))
        machine.tick(float(now))
        machine.data_to_send()
        machine.events()
        machine.commands()


@fuzz
@given(data=inputs(IPC_SEEDS))
def test_ipc_payloads_decode_or_say_why(data: bytes) -> None:
    with contextlib.suppress(ipc.IpcError):
        ipc.decode(data)


TARGETS = [
    "/v1/status",
    "/v1/status?agent=sales",
    "/v1/apply",
    "/v1/agents/sales/drain",
    "/v1/agents/a%2Fb/simulate",
]


@fuzz
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "get", ""]),
    target=st.one_of(
        st.text(max_size=80),
        st.sampled_from(TARGETS).flatmap(
            lambda t: st.builds(lambda head, tail: head + tail, st.just(t), st.text(max_size=20))
        ),
    ),
)
def test_any_request_line_routes_or_says_why(method: str, target: str) -> None:
    with contextlib.suppress(ControlError, MethodNotAllowed):
        resolve(method, target)


BODY_SEEDS = [
    json.dumps({"fleet": {"apiVersion": "lksup/v1", "kind": "Fleet", "agents": {}}}).encode(),
    json.dumps({"room": "sales-1", "participant": "p"}).encode(),
    json.dumps({"timeout": 30, "force": True}).encode(),
    b"{}",
]


@fuzz
@given(route=st.sampled_from([r for r in ROUTES if r.body is not None]), body=inputs(BODY_SEEDS))
def test_any_request_body_parses_or_says_why(route: object, body: bytes) -> None:
    error: ControlError | None = None
    try:
        parse_body(route, body)  # type: ignore[arg-type]
    except ControlError as exc:
        error = exc
    assert error is None or error.status in (400, 422)
