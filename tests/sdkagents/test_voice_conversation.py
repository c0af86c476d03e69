"""One unchanged livekit-agents voice agent, run by lksup (``runtime: livekit-agents`` under
``lksup run``) and by the SDK's own worker (``python voice_agent.py start``) against the real
livekit-server, observed by a real participant: the agent joins as an agent participant, greets
with speech and a transcript, hears the participant's speech (VAD, STT, LLM, TTS) and answers
it. Both runs give the same participant-side trace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from bench.processes import stop_worker

from lksup.control.client import ControlClient
from lksup.control.errors import DaemonUnreachable
from tests.conftest import ROOT, eventually
from tests.interop import livekit_server as real
from tests.interop.harness import unique_room
from tests.sdkagents.participant import ConversationStalled, run_conversation

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.process]

AGENT = Path(__file__).with_name("voice_agent.py")
START_TIMEOUT = (
    90  # ~3.5 s on an idle host: the SDK imports a lot and prewarms idle processes first
)
REGISTERED = b'"message": "registered worker"'  # the SDK's JSON log line (start mode)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the livekit rtc package runs on asyncio


class _Output:
    """Copies the worker's output (stdout and stderr) to its log, and notes its registration."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.registered = False
        self.settled = anyio.Event()  # registered, or the output ended first

    async def copy(self, process: anyio.abc.Process) -> None:
        assert process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)
        async with await anyio.open_file(self.log, "wb") as sink:
            try:
                while True:
                    line = await lines.receive_until(b"\n", 1 << 20)
                    await sink.write(line + b"\n")
                    if not self.registered and REGISTERED in line:
                        self.registered = True
                        self.settled.set()
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
                self.settled.set()

    def tail(self) -> str:
        return self.log.read_text()[-4000:]


@asynccontextmanager
async def sdk_worker(server: real.RealServer, log: Path, agent_name: str) -> AsyncIterator[_Output]:
    """``voice_agent.py start`` in a session of its own, registered with ``server``; stopped
    (SIGTERM, SIGINT, then SIGKILL to its process group) and reaped on exit.

    ``--simulation`` is the SDK's own (hidden) ``start`` switch that turns its CPU-load limit
    off, so a busy CI host never makes the worker refuse the test's job; it also drops the
    health server on the fixed port 8081. The agent module stays as users write it.
    """
    env = {
        **os.environ,
        "LIVEKIT_URL": server.url,
        "LIVEKIT_API_KEY": real.API_KEY,
        "LIVEKIT_API_SECRET": real.API_SECRET,
        "AGENT_NAME": agent_name,
        "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "0",
    }
    process = await anyio.open_process(
        [sys.executable, str(AGENT), "start", "--simulation"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = _Output(log)
    async with anyio.create_task_group() as tg:
        tg.start_soon(output.copy, process)
        try:
            with anyio.fail_after(START_TIMEOUT):
                await output.settled.wait()
            if not output.registered:
                pytest.fail(f"the SDK worker exited before registering:\n{output.tail()}")
            yield output
        finally:  # the output is still drained while the worker stops
            with anyio.CancelScope(shield=True):
                await stop_worker(process)


EXPECTED = [
    ("agent_joined", "PARTICIPANT_KIND_AGENT"),
    ("agent_attribute", "lk.agent.name=voice-agent"),
    ("agent_attribute", "test.accepted_by=request_fnc"),  # the agent's on_request ran
    ("agent_track", "audio roomio_audio"),
    ("agent_audio", "sound"),
    ("agent_transcript", "Hello from the test agent."),
    ("user_audio", "speech.wav"),
    ("user_transcript", "what time is it"),
    ("agent_audio", "sound"),
    ("agent_transcript", "You said: what time is it."),
]

FLEET = """\
apiVersion: lksup/v1
kind: Fleet
metadata: {{name: voice}}
livekit:
  url: {url}
  api_key: {{env: LIVEKIT_API_KEY}}
  api_secret: {{env: LIVEKIT_API_SECRET}}
agents:
  voice-agent:
    runtime: livekit-agents
    working_dir: {root}
    entrypoint: tests.sdkagents.voice_agent:entrypoint
    prewarm: tests.sdkagents.voice_agent:prewarm
    request_fnc: tests.sdkagents.voice_agent:on_request
    num_idle_processes: 1
    initialize_process_timeout: 60s
    # a busy CI host must not make the agent refuse the test's job (the SDK run passes
    # --simulation for the same reason): load counts jobs only
    load: jobs
    max_jobs: 10
    load_threshold: 1
"""


@asynccontextmanager
async def lksup_daemon(server: real.RealServer, tmp_path: Path) -> AsyncIterator[Path]:
    """``lksup run`` with the voice agent, until its agent is ready; SIGTERM and reaped on exit.

    Yields the daemon's log.
    """
    scratch = Path(tempfile.mkdtemp(dir="/tmp", prefix="lksup-voice-"))
    fleet = tmp_path / "voice.yaml"
    fleet.write_text(FLEET.format(url=server.url, root=ROOT))
    log = scratch / "daemon.log"
    socket_path = scratch / "ctl.sock"
    env = {
        **os.environ,
        "LKSUP_SOCKET": str(socket_path),
        "LKSUP_STATE_DIR": str(scratch / "state"),
        "LIVEKIT_API_KEY": real.API_KEY,
        "LIVEKIT_API_SECRET": real.API_SECRET,
    }
    with log.open("wb") as sink:
        daemon = await anyio.open_process(
            [sys.executable, "-m", "lksup", "run", str(fleet)], env=env, stdout=sink, stderr=sink
        )
    try:

        async def warm() -> bool:  # up, then every agent ready with a warm process (no event)
            assert daemon.returncode is None, log.read_text()[-4000:]
            try:
                async with ControlClient(socket_path) as client:
                    items = (await client.status()).items
            except DaemonUnreachable:
                return False
            return bool(items) and all(i.ready and i.idle >= 1 for i in items)

        await eventually(warm, timeout=START_TIMEOUT * 2, interval=0.1)
        yield log
        daemon.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await daemon.wait() == 0, log.read_text()[-4000:]
    finally:
        with anyio.CancelScope(shield=True):
            if daemon.returncode is None:
                daemon.kill()
            await daemon.wait()
            await daemon.aclose()


async def converse(server: real.RealServer, room: str, log: Path) -> list[tuple[str, str]]:
    try:
        return await run_conversation(
            server.url, real.API_KEY, real.API_SECRET, "voice-agent", room
        )
    except ConversationStalled as stalled:
        pytest.fail(f"{stalled}\nagent output:\n{log.read_text()[-4000:]}")


async def test_the_same_voice_agent_under_lksup_and_under_the_sdk_worker(tmp_path: Path) -> None:
    """lksup runs the SDK agent unchanged: the participant sees what the SDK's worker gives."""
    async with real.real_livekit_server(tmp_path) as server:
        async with lksup_daemon(server, tmp_path) as log:
            under_lksup = await converse(server, unique_room("voice-lksup"), log)
        text = log.read_text()
        assert real.API_SECRET not in text
        async with sdk_worker(server, tmp_path / "worker.log", "voice-agent") as output:
            under_sdk = await converse(server, unique_room("voice-sdk"), output.log)
    assert under_lksup == EXPECTED
    assert under_sdk == under_lksup
