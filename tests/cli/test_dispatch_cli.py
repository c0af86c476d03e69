"""`lksup dev-server` and `lksup dispatch` as a user runs them: real subprocesses, against the
dev server and against the real livekit-server."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import anyio
import anyio.abc
import pytest

from tests.conftest import eventually
from tests.interop import livekit_server as real
from tests.interop.harness import ScriptedAgent, ServerUnderTest, agent_session, next_item

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SECRET = "cli-dispatch-secret-0123456789abcdef012345"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def dev_server_process() -> AsyncIterator[tuple[anyio.abc.Process, str]]:
    process = await anyio.open_process(
        [sys.executable, "-m", "lksup", "dev-server", "--port", "0", "--keys", f"devkey:{SECRET}"],
        stdout=-1,
        stderr=-1,
    )
    try:
        assert process.stdout is not None
        banner = b""
        with anyio.fail_after(20):
            while b"no media" not in banner:
                banner += await process.stdout.receive()
        match = re.search(rb"listening on (ws://\S+)", banner)
        assert match, banner
        assert SECRET.encode() not in banner
        yield process, match.group(1).decode()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()


async def lksup(*args: str, url: str, secret: str = SECRET) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "LIVEKIT_URL": url,
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": secret,
    }
    result = await anyio.run_process([sys.executable, "-m", "lksup", *args], env=env, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def _dispatch_round_trip(server: ServerUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = ScriptedAgent()
    async with agent_session(server, agent, name="cli-agent") as session:
        await session.wait_registered()
        for attempt in range(5):  # a real server may miss a dispatch right after registration
            room = f"cli-room-{attempt}"
            code, out, err = await lksup(
                "dispatch",
                "cli-agent",
                "--room",
                room,
                "--metadata",
                "hello",
                "-o",
                "json",
                url=server.url,
                secret=server.api_secret,
            )
            assert code == 0, err
            created = json.loads(out)
            assert created["kind"] == "AgentDispatch"
            assert created["agentName"] == "cli-agent"
            assert created["room"] == room
            assert datetime.fromisoformat(created["createdAt"]).tzinfo is not None  # RFC 3339
            with anyio.move_on_after(3):
                offer = await agent.offers.receive()
                assert offer.job.metadata == "hello"
                break
        else:
            raise AssertionError("no offer after 5 dispatches")
        await next_item(agent.assignments)
        code, out, err = await lksup(
            "dispatch", "--list", "--room", room, url=server.url, secret=server.api_secret
        )
        assert code == 0, err
        assert created["id"] in out

        async def listed_jobs() -> list[dict[str, str]] | None:
            code, out, err = await lksup(
                "dispatch",
                "--list",
                "--room",
                room,
                "-o",
                "json",
                url=server.url,
                secret=server.api_secret,
            )
            assert code == 0, err
            (listed,) = [d for d in json.loads(out)["items"] if d["id"] == created["id"]]
            jobs: list[dict[str, str]] = listed["jobs"]
            return jobs or None

        # a real server's list catches up with the job in seconds; the list is all it tells
        (job,) = await eventually(listed_jobs, timeout=30, interval=0.5)
        assert (job["id"], job["type"]) == (offer.job.id, "room")
        assert job["status"] in ("pending", "running")  # clean words, not JS_* enums
        code, out, err = await lksup(
            "dispatch",
            "--delete",
            created["id"],
            "--room",
            room,
            url=server.url,
            secret=server.api_secret,
        )
        assert code == 0, err
        assert f"dispatch {created['id']} deleted" in out
        await eventually(lambda: offer.job.id in agent.terminated, timeout=10, interval=0.01)


async def test_dispatch_against_the_dev_server_command(monkeypatch: pytest.MonkeyPatch) -> None:
    async with dev_server_process() as (process, url):
        server = ServerUnderTest("dev", url, "devkey", SECRET)
        await _dispatch_round_trip(server, monkeypatch)
        code, _, err = await lksup(
            "dispatch", "x", "--room", "r", url=url, secret="wrong-secret-0123456789abcdef0123456"
        )
        assert code == 1
        assert "the server refused the API key or secret" in err
        assert "wrong-secret" not in err
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            assert await process.wait() == 0


async def test_dispatch_against_the_real_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with real.real_livekit_server(tmp_path) as server:
        target = ServerUnderTest("real", server.url, real.API_KEY, real.API_SECRET)
        await _dispatch_round_trip(target, monkeypatch)


async def test_dispatch_usage_and_missing_settings() -> None:
    code, _, err = await lksup("dispatch", "--room", "r", url="")
    assert code == 2
    assert "give exactly one of AGENT, --list or --delete ID" in err
    env_less = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    result = await anyio.run_process(
        [sys.executable, "-m", "lksup", "dispatch", "a", "--room", "r"], env=env_less, check=False
    )
    assert result.returncode == 1
    assert b"missing --url (or LIVEKIT_URL)" in result.stderr
