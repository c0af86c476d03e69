"""The dev server in a process of its own, driven over stdin/stdout, for benchmarks.

Each worker under test then competes with nothing else for its event loop. Commands (one per
line on stdin) and answers (one JSON line on stdout):

    url                          -> {"url": "ws://127.0.0.1:PORT"}
    workers                      -> {"agents": ["name", ...]}
    dispatch ROOM AGENT          -> {"ok": true}
    assignments AGENT            -> {"JOB_ID": MONOTONIC_SECONDS, ...}   (when each was written)
    answers AGENT                -> {"JOB_ID": [OFFER_SENT, ANSWER_READ], ...}
    outcomes AGENT               -> {"JS_SUCCESS": COUNT, ...}   (each job's last status)

Timestamps are the server's ``anyio.current_time()``: CLOCK_MONOTONIC, shared by every
process on the host.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit.protocol import agent as agent_pb

from lksup.devserver.server import DevServer


def _assignments(server: DevServer, agent: str) -> dict[str, float]:
    found = {}
    for entries in server.traces().values():
        for entry in entries:
            message: Any = entry.message
            if entry.kind == "assignment" and message.assignment.job.agent_name == agent:
                found[message.assignment.job.id] = entry.at
    return found


def _answers(server: DevServer, agent: str) -> dict[str, list[float]]:
    sent: dict[str, float] = {}
    read: dict[str, float] = {}
    for entries in server.traces().values():
        for entry in entries:
            message: Any = entry.message
            if entry.kind != "availability":
                continue
            if entry.direction == "send" and message.availability.job.agent_name == agent:
                sent[message.availability.job.id] = entry.at
            elif entry.direction == "recv":
                read[message.availability.job_id] = entry.at
    return {job: [sent[job], read[job]] for job in sent if job in read}


def _outcomes(server: DevServer, agent: str) -> dict[str, int]:
    jobs = set(_assignments(server, agent))
    last: dict[str, int] = {}
    for entries in server.traces().values():
        for entry in entries:
            message: Any = entry.message
            received = entry.kind == "update_job" and entry.direction == "recv"
            if received and message.update_job.job_id in jobs:
                last[message.update_job.job_id] = message.update_job.status
    counts: dict[str, int] = {}
    for status in last.values():
        name = agent_pb.JobStatus.Name(status)
        counts[name] = counts.get(name, 0) + 1
    return counts


async def main(key: str, secret: str) -> None:
    server = DevServer({key: secret}, port=0, trace=True, claim_delay=0.0)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        stdin = anyio.wrap_file(sys.stdin)
        async for line in stdin:
            words = line.split()
            answer: Any
            if words == ["url"]:
                answer = {"url": server.url}
            elif words == ["workers"]:
                answer = {"agents": [w.agent_name for w in server.workers()]}
            elif len(words) == 3 and words[0] == "dispatch":
                await server.create_dispatch(words[1], words[2])
                answer = {"ok": True}
            elif len(words) == 2 and words[0] == "assignments":
                answer = _assignments(server, words[1])
            elif len(words) == 2 and words[0] == "answers":
                answer = _answers(server, words[1])
            elif len(words) == 2 and words[0] == "outcomes":
                answer = _outcomes(server, words[1])
            else:
                answer = {"error": f"unknown command {line.strip()!r}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])


class RemoteDevServer:
    """The client side: start ``python bench/devserver_process.py`` and talk to it."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self._process = process
        self._buffer = b""
        self._lock = anyio.Lock()
        self.url = ""

    @classmethod
    async def start(cls, key: str, secret: str) -> RemoteDevServer:
        """Start the server process and learn its URL."""
        process = await anyio.open_process([sys.executable, __file__, key, secret], stderr=-3)
        remote = cls(process)
        remote.url = (await remote.ask("url"))["url"]
        return remote

    async def ask(self, command: str) -> Any:
        """Send one command, read its JSON answer."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        async with self._lock:
            await self._process.stdin.send(command.encode() + b"\n")
            while b"\n" not in self._buffer:
                self._buffer += await self._process.stdout.receive()
            line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    async def aclose(self) -> None:
        """Stop the server process."""
        if self._process.stdin is not None:
            await self._process.stdin.aclose()
        with anyio.move_on_after(5):
            await self._process.wait()
        if self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        await self._process.aclose()
