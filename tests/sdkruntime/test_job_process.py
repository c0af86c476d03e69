"""A real job process with ``runtime: livekit-agents``: an unchanged SDK agent behind lksup's IPC.

The agent below is written against livekit-agents only (``JobContext``, ``JobProcess``,
``JobRequest`` from the SDK); the test plays the supervisor over the IPC socket. No server is
involved: the entrypoint never connects, so a fake URL is enough.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio
import anyio.abc
import pytest

from lksup.jobs import ipc
from tests.jobs import harness
from tests.jobs.harness import job_wire, spawn, write_agent
from tests.sdkruntime.conftest import OLDEST, sdk_venv_python

pytestmark = [pytest.mark.anyio, pytest.mark.process]

AGENT = """
    import asyncio
    import json
    import logging
    import sys
    from pathlib import Path

    from livekit.agents import JobContext, JobProcess, JobRequest, get_job_context, utils

    log = logging.getLogger("sdk-agent")

    def prewarm(proc: JobProcess) -> None:
        proc.userdata["model"] = "loaded by prewarm"
        proc.userdata["prewarm_pid"] = proc.pid

    async def request(req: JobRequest) -> None:
        order = json.loads(req.job.metadata)["offer"]
        if order == "accept":
            await req.accept()
        elif order == "accept-with-attributes":
            await req.accept(name="Concierge", attributes={"tier": "vip", "lang": "fr"})
        elif order == "accept-as":
            await req.accept(identity="concierge-7", metadata="from the request function")
        elif order == "reject":
            await req.reject()
        elif order == "raise":
            raise ValueError("no capacity for this room")

    async def on_shutdown(reason: str) -> None:
        log.info("shutdown callback: %s", reason)

    async def on_session_end(ctx: JobContext) -> None:
        log.info("session end: job=%s same=%s", ctx.job.id, get_job_context() is ctx)

    async def entrypoint(ctx: JobContext) -> None:
        ctx.add_shutdown_callback(on_shutdown)
        order = json.loads(ctx.job.metadata)
        mode = order["mode"]
        if mode == "observe":
            info = ctx._info  # the accept arguments and the timeline have no public accessor
            accept = info.accept_arguments
            seen = {
                "get_job_context_is_ctx": get_job_context() is ctx,
                "userdata": dict(ctx.proc.userdata),
                "http_proxy": ctx.proc.http_proxy,
                "worker_id": ctx.worker_id,
                "job_id": ctx.job.id,
                "room": ctx.job.room.name,
                "metadata": ctx.job.metadata,
                "url": info.url,
                "accept": [accept.identity, accept.name, accept.metadata, accept.attributes],
                "timeline": [  # livekit-agents 1.8.2 and later
                    getattr(info, stage, None)
                    for stage in ("received_at", "accepted_at", "assigned_at", "launched_at")
                ],
            }
            log.info("observed %s", json.dumps(seen, sort_keys=True))
            ctx.shutdown("observed")
        elif mode == "fetch":
            session = utils.http_context.http_session()
            async with session.get(order["url"]) as response:
                body = await response.text()
            same = session is utils.http_context.http_session()
            log.info("fetched %s %s (same session: %s)", response.status, body, same)
            ctx.shutdown("fetched")
        elif mode == "log":
            ctx.log_context_fields = {"job_id": ctx.job.id, "room": ctx.job.room.name}
            log.info("hello from the job", extra={"caller": "+15550100"})
            ctx.shutdown("logged")
        elif mode == "raise":
            raise ValueError("bad input from the caller")
        elif mode == "exit":
            sys.exit(3)
        elif mode == "shutdown":
            ctx.shutdown("conversation over")
        elif mode == "return":
            log.info("entrypoint returning; the job goes on")
        elif mode == "hold":
            try:
                log.info("holding")
                await asyncio.Event().wait()
            finally:
                Path("ended.txt").write_text("entrypoint cancelled")
        elif mode == "infer":
            for question in (b"first", b"second"):
                try:
                    answer = await ctx.inference_executor.do_inference("lk_end_of_utterance", question)
                    log.info("inference answered %r", answer)
                except RuntimeError as exc:
                    log.info("inference failed: %s", exc)
            ctx.shutdown("inferred")
"""

#: What ``build_spec`` gives every livekit-agents job process (no local model preloading).
SDK_ENV = {"LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "0"}


@pytest.fixture(autouse=True, params=["newest", "oldest"])
def sdk_end(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs at both ends of the supported window: 1.8.9 here, 1.6.10 in its own
    virtual environment (the agent's ``python:``)."""
    end: str = request.param
    if end == "oldest":
        monkeypatch.setattr(harness, "PYTHON", sdk_venv_python())
    return end


@pytest.fixture(autouse=True)
def slower_handshakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing livekit-agents takes seconds: give the harness's handshakes more room."""
    monkeypatch.setattr(harness, "WAIT", 30.0)


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    write_agent(tmp_path, AGENT)
    return tmp_path


def sdk_env(**extra: str) -> dict[str, str]:
    """The test's environment without proxies (the job's HTTP session would use them)."""
    inherited = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    return {**inherited, **SDK_ENV, **extra}


def initialize(**overrides: object) -> ipc.Initialize:
    values: dict[str, object] = {"runtime": ipc.RUNTIME_LIVEKIT_AGENTS}
    values.update(overrides)
    return harness.initialize(**values)


def start(mode: str, *, url: str = "", **fields: object) -> ipc.StartJob:
    """A StartJob whose job metadata tells the agent what to do (``mode``, ``url``)."""
    metadata = json.dumps({"mode": mode, "url": url} if url else {"mode": mode})
    return ipc.StartJob(job=job_wire(metadata=metadata), url="ws://lk", token="tok", **fields)  # type: ignore[arg-type]


def observed(child: harness.Child, prefix: str) -> Mapping[str, object]:
    record = next(r for r in child.logs if r.message.startswith(prefix))
    seen: dict[str, object] = json.loads(record.message.removeprefix(prefix))
    return seen


@pytest.mark.parametrize("how", ["Shutdown", "SIGTERM"])
async def test_ready_reports_the_sdk_version_and_an_idle_process_stops_when_told(
    agent_dir: Path, how: str, sdk_end: str
) -> None:
    """An SDK agent initialises through the SDK (version in Ready), ignores SIGINT and leaves
    when told while idle."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        ready = await child.ready(initialize(prewarm="agent:prewarm"))
        version = OLDEST if sdk_end == "oldest" else "1.8.9"
        assert (ready.pid, ready.sdk_version) == (child.process.pid, version)
        if how == "SIGTERM":
            child.process.send_signal(signal.SIGINT)  # Ctrl+C is the supervisor's business
            await child.send(ipc.Ping(sent_at_ns=1))  # serving: the SIGTERM handler is in place
            assert await child.expect(ipc.Pong) == ipc.Pong(sent_at_ns=1)
            child.process.send_signal(signal.SIGTERM)
        else:
            await child.send(ipc.Shutdown(reason="pool closing"))
        assert await child.wait_exit() == ipc.ExitCode.OK
        assert not child.messages  # no JobEnded without a job


async def test_the_entrypoint_gets_the_sdk_context_with_what_the_supervisor_sent(
    agent_dir: Path, sdk_end: str
) -> None:
    """get_job_context(), prewarm's userdata, the proxy, worker id, accept arguments, metadata
    and the dispatch timeline."""
    proxy = "http://proxy.example:3128"
    async with spawn(agent_dir, env=sdk_env(HTTPS_PROXY=proxy)) as child:
        ready = await child.ready(initialize(prewarm="agent:prewarm"))
        await child.send(
            start(
                "observe",
                url="unused",
                worker_id="AW_worker7",
                participant_identity="agent-AJ_1-custom",
                participant_name="Support",
                participant_metadata='{"team": "cs"}',
                participant_attributes={"tier": "std", "lk.agent.name": "support"},
                received_at=1000.25,
                accepted_at=1000.5,
                assigned_at=1001.0,
                launched_at=1001.125,
            )
        )
        assert await child.expect(ipc.JobStarted) == ipc.JobStarted(job_id="AJ_1")
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="observed"
        )
        assert observed(child, "observed ") == {
            "get_job_context_is_ctx": True,
            "userdata": {"model": "loaded by prewarm", "prewarm_pid": ready.pid},
            "http_proxy": proxy,
            "worker_id": "AW_worker7",
            "job_id": "AJ_1",
            "room": "room-1",
            "metadata": '{"mode": "observe", "url": "unused"}',
            "url": "ws://lk",
            "accept": [
                "agent-AJ_1-custom",
                "Support",
                '{"team": "cs"}',
                {"tier": "std", "lk.agent.name": "support"},
            ],
            "timeline": (
                [1000.25, 1000.5, 1001.0, 1001.125] if sdk_end == "newest" else [None] * 4
            ),
        }
        assert "shutdown callback: observed" in child.log_messages()
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_the_sdk_http_session_works_in_the_entrypoint(agent_dir: Path) -> None:
    """utils.http_context.http_session() is the job's open session: a real GET goes through."""
    requests: list[bytes] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            requests.append(data.split(b"\r\n", 1)[0])
            await stream.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nfrom-test"
            )

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        async with spawn(agent_dir, env=sdk_env()) as child:
            await child.ready(initialize())
            await child.send(start("fetch", url=f"http://127.0.0.1:{port}/health"))
            await child.expect(ipc.JobStarted)
            assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
                job_id="AJ_1", error="", reason="fetched"
            )
            assert "fetched 200 from-test (same session: True)" in child.log_messages()
            assert await child.wait_exit() == ipc.ExitCode.OK
        tg.cancel_scope.cancel()
    assert requests == [b"GET /health HTTP/1.1"]


async def test_a_returning_entrypoint_leaves_the_job_running_until_shutdown(
    agent_dir: Path,
) -> None:
    """As under the SDK's worker, the job outlives its entrypoint; Shutdown(reason) ends it."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize())
        await child.send(start("return"))
        await child.expect(ipc.JobStarted)
        await child.wait_log(lambda r: r.message == "entrypoint returning; the job goes on")
        await child.send(ipc.Ping(sent_at_ns=42))  # still serving, and no JobEnded before it
        assert await child.expect(ipc.Pong) == ipc.Pong(sent_at_ns=42)
        await child.send(ipc.Shutdown(reason="drain: agent removed"))
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="drain: agent removed"
        )
        assert "shutdown callback: drain: agent removed" in child.log_messages()
        assert await child.wait_exit() == ipc.ExitCode.OK


@pytest.mark.parametrize(
    ("mode", "how", "reason"),
    [
        ("shutdown", "ctx.shutdown", "conversation over"),
        ("return", "SIGTERM", "SIGTERM"),
    ],
)
async def test_shutdown_callbacks_get_the_reason(
    agent_dir: Path, mode: str, how: str, reason: str
) -> None:
    """The reason of ctx.shutdown() and of SIGTERM (as of Shutdown, above) reaches both the
    SDK's shutdown callbacks and JobEnded; a requested shutdown is a success."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize())
        await child.send(start(mode))
        await child.expect(ipc.JobStarted)
        if how == "SIGTERM":
            await child.wait_log(lambda r: r.message == "entrypoint returning; the job goes on")
            child.process.send_signal(signal.SIGTERM)
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason=reason
        )
        assert f"shutdown callback: {reason}" in child.log_messages()
        assert await child.wait_exit() == ipc.ExitCode.OK


@pytest.mark.parametrize(
    ("mode", "error", "line"),
    [
        (
            "raise",
            "ValueError: bad input from the caller",
            'raise ValueError("bad input from the caller")',
        ),
        ("exit", "SystemExit: 3", "sys.exit(3)"),
    ],
)
async def test_a_raising_entrypoint_fails_the_job(
    agent_dir: Path, mode: str, error: str, line: str
) -> None:
    """JobEnded carries "<ExcType>: ..." (the SDK's own worker would report a success), the
    shutdown callbacks still run and the process exits normally."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize())
        await child.send(start(mode))
        await child.expect(ipc.JobStarted)
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error=error, reason="job crashed"
        )
        # the outcome went out first, before the SDK left the room
        assert child.outcomes == [ipc.JobOutcome(job_id="AJ_1", error=error, reason="job crashed")]
        failure = next(
            r for r in child.logs if r.message == "unhandled exception while running the job task"
        )
        assert failure.logger == "livekit.agents"
        assert line in failure.exc_text
        assert "shutdown callback: job crashed" in child.log_messages()
        assert await child.wait_exit() == ipc.ExitCode.OK


def offer(order: str) -> ipc.OfferRequest:
    return ipc.OfferRequest(
        job=job_wire(metadata=json.dumps({"offer": order, "mode": "shutdown"})),
        default_identity="support-AJ_1",
        default_name="Support",
        default_metadata='{"team": "cs"}',
        default_attributes={"team": "cs", "tier": "std"},
    )


@pytest.mark.parametrize(
    ("order", "answer"),
    [
        (
            "accept",
            ipc.OfferAnswer(
                accept=True,
                identity="support-AJ_1",
                name="Support",
                metadata='{"team": "cs"}',
                attributes={"team": "cs", "tier": "std"},
                job_id="AJ_1",
            ),
        ),
        (
            "accept-with-attributes",
            ipc.OfferAnswer(
                accept=True,
                identity="support-AJ_1",
                name="Concierge",
                metadata='{"team": "cs"}',
                attributes={"team": "cs", "tier": "vip", "lang": "fr"},
                job_id="AJ_1",
            ),
        ),
        (
            "accept-as",
            ipc.OfferAnswer(
                accept=True,
                identity="concierge-7",
                name="Support",
                metadata="from the request function",
                attributes={"team": "cs", "tier": "std"},
                job_id="AJ_1",
            ),
        ),
        ("reject", ipc.OfferAnswer(accept=False, terminate=True, job_id="AJ_1")),
        (
            "raise",
            ipc.OfferAnswer(
                accept=False, error="ValueError: no capacity for this room", job_id="AJ_1"
            ),
        ),
        ("silent", ipc.OfferAnswer(accept=False, terminate=False, job_id="AJ_1")),
    ],
)
async def test_the_sdk_request_function_answers_over_the_fleet_defaults(
    agent_dir: Path, order: str, answer: ipc.OfferAnswer
) -> None:
    """JobRequest.accept()'s arguments win field by field (attributes merged over the fleet's);
    what it leaves empty, identity included, comes from the declarative policy."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize(request_fnc="agent:request"))
        await child.send(offer(order))
        assert await child.expect(ipc.OfferAnswer) == answer
        await child.send(ipc.Shutdown(reason="test over"))
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_a_raising_prewarm_fails_ready_with_its_location(tmp_path: Path) -> None:
    """Ready.error names the prewarm, the exception and the agent's file:line; exit 78."""
    write_agent(
        tmp_path,
        """
        from livekit.agents import JobContext, JobProcess

        def prewarm(proc: JobProcess) -> None:
            raise RuntimeError("model file missing")

        async def entrypoint(ctx: JobContext) -> None:
            pass
        """,
    )
    async with spawn(tmp_path, env=sdk_env()) as child:
        await child.send(initialize(prewarm="agent:prewarm"))
        ready = await child.expect(ipc.Ready)
        assert ready.error == (
            "prewarm agent:prewarm failed: RuntimeError: model file missing (at agent.py:5)"
        )
        assert await child.wait_exit() == ipc.ExitCode.INIT_FAILED


async def test_log_records_carry_the_sdk_job_context_fields(agent_dir: Path) -> None:
    """ctx.log_context_fields and extra= reach the supervisor as LogRecord.fields."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize())
        await child.send(start("log"))
        await child.expect(ipc.JobStarted)
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="logged"
        )
        record = next(r for r in child.logs if r.message == "hello from the job")
        assert (record.logger, record.level) == ("sdk-agent", 20)
        assert dict(record.fields) == {"job_id": "AJ_1", "room": "room-1", "caller": "+15550100"}
        assert await child.wait_exit() == ipc.ExitCode.OK


@pytest.mark.parametrize("version", ["1.9.0", "1.5.3"])
async def test_an_sdk_outside_the_window_fails_ready_naming_it(
    agent_dir: Path, tmp_path: Path, version: str
) -> None:
    """With another livekit-agents version installed, Ready.error names the supported window."""
    site = tmp_path / "site"
    dist_info = site / f"livekit_agents-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: livekit-agents\nVersion: {version}\n"
    )
    probe = await anyio.run_process(
        [
            sys.executable,
            "-c",
            "import importlib.metadata as m; print(m.version('livekit-agents'))",
        ],
        env=sdk_env(PYTHONPATH=str(site)),
    )
    assert probe.stdout.decode().strip() == version  # the child's interpreter sees that version
    async with spawn(agent_dir, env=sdk_env(PYTHONPATH=str(site))) as child:
        await child.send(initialize(prewarm="agent:prewarm"))
        ready = await child.expect(ipc.Ready)
        assert ready.error == (
            f"livekit-agents {version} is outside the supported window "
            "livekit-agents>=1.6,<1.9; install a version inside it for this agent "
            "(or give the agent its own interpreter with `python:`)"
        )
        assert await child.wait_exit() == ipc.ExitCode.INIT_FAILED


async def test_inference_requests_are_relayed_and_answered(agent_dir: Path) -> None:
    """ctx.inference_executor reaches the supervisor; its data or its error comes back."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize())
        await child.send(start("infer"))
        await child.expect(ipc.JobStarted)
        first = await child.expect(ipc.InferenceRequest)
        assert (first.method, first.data) == ("lk_end_of_utterance", b"first")
        await child.send(
            ipc.InferenceResponse(request_id=first.request_id, data=b"0.93", has_data=True)
        )
        second = await child.expect(ipc.InferenceRequest)
        assert (second.method, second.data) == ("lk_end_of_utterance", b"second")
        assert second.request_id != first.request_id
        await child.send(
            ipc.InferenceResponse(request_id=second.request_id, error="no inference process")
        )
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="inferred"
        )
        messages = child.log_messages()
        assert "inference answered b'0.93'" in messages
        assert (
            "inference failed: inference of lk_end_of_utterance failed: no inference process"
            in (messages)
        )
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_eof_during_a_job_cancels_the_entrypoint_and_exits(agent_dir: Path) -> None:
    """The supervisor going away ends a running SDK job within the EOF cleanup bound."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize())
        await child.send(start("hold"))
        await child.expect(ipc.JobStarted)
        await child.wait_log(lambda r: r.message == "holding")
        await child.stream.aclose()
        assert await child.wait_exit(timeout=3) == ipc.ExitCode.OK
    assert (agent_dir / "ended.txt").read_text() == "entrypoint cancelled"


async def test_an_undecodable_job_ends_at_once(agent_dir: Path) -> None:
    """A StartJob whose job cannot be parsed fails without reaching the SDK, and the process
    exits."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize())
        await child.send(ipc.StartJob(job=b"\xff\xff", url="", token=""))
        ended = await child.expect(ipc.JobEnded)
        assert (ended.job_id, ended.error.startswith("undecodable job")) == ("", True)
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_an_sdk_that_cannot_be_imported_fails_ready_with_the_reason(tmp_path: Path) -> None:
    """An agent module that imports nothing of the SDK at import time (the SDK's own imports
    happen when lksup builds the job host) still gets Ready.error and exit 78 when
    livekit-agents is installed but cannot be imported (a native library missing)."""
    write_agent(tmp_path, "async def entrypoint(ctx):\n    await ctx.connect()\n")
    broken = tmp_path / "site" / "livekit" / "agents"
    broken.mkdir(parents=True)  # shadows the installed package; its dist-info still says 1.8.9
    (broken / "__init__.py").write_text(
        "raise ImportError('liblivekit_ffi.so: cannot open shared object file')\n"
    )
    async with spawn(tmp_path, env=sdk_env(PYTHONPATH=str(tmp_path / "site"))) as child:
        await child.send(initialize())
        ready = await child.expect(ipc.Ready)
        assert ready.error.startswith("livekit-agents cannot be imported: ImportError: ")
        assert "liblivekit_ffi.so: cannot open shared object file" in ready.error
        assert await child.wait_exit() == ipc.ExitCode.INIT_FAILED


async def test_the_session_end_function_runs_before_the_shutdown_callbacks(
    agent_dir: Path,
) -> None:
    """session_end_fnc is the SDK's on_session_end: it gets the job's context once the primary
    session closed, before the room is left and the shutdown callbacks run."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize(session_end_fnc="agent:on_session_end"))
        await child.send(start("shutdown"))
        await child.expect(ipc.JobStarted)
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="conversation over"
        )
        messages = child.log_messages()
        assert "session end: job=AJ_1 same=True" in messages
        assert messages.index("session end: job=AJ_1 same=True") < messages.index(
            "shutdown callback: conversation over"
        )
        assert await child.wait_exit() == ipc.ExitCode.OK
