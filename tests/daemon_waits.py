"""Waits on a running ``lksup run`` through its control API, as an operator's tools see it.

``DaemonWaits`` is mixed into the test harnesses that run the daemon as a subprocess (its
``process``, its control ``socket`` and the ``log`` file its output goes to). It follows the
daemon's events and log records as ``lksup events -w`` and ``lksup logs -f`` do (a long poll of
``GET /v1/events`` and ``/v1/logs``), so a wait ends when the daemon records what it waits for,
and it reads status again at each event for the conditions events mark. The one poll is the
wait for the control socket itself: before it listens, the daemon has no other channel.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.abc

from lksup.control.api import MAX_WAIT, JournalQuery
from lksup.control.client import ControlClient
from lksup.control.errors import DaemonUnreachable
from tests.conftest import eventually

__all__ = ["DaemonWaits"]

S = TypeVar("S")


class DaemonWaits:
    """Waits on the daemon's control socket (see the module docstring)."""

    process: anyio.abc.Process
    socket: Path
    log: Path

    def _exited(self) -> AssertionError:
        return AssertionError(f"daemon exited:\n{self.log.read_text()[-3000:]}")

    async def connected(self, timeout: float = 60) -> None:
        """Until the control socket answers: before it listens the daemon has no other channel."""

        async def answers() -> bool:
            if self.process.returncode is not None:
                raise self._exited()
            try:
                async with ControlClient(self.socket) as client:
                    await client.health()
            except DaemonUnreachable:
                return False
            return True

        await eventually(answers, timeout=timeout)

    async def agents(self) -> dict[str, dict[str, Any]]:
        """``GET /v1/status`` (what ``lksup status -o json`` lists): the agents by name."""
        async with ControlClient(self.socket) as client:
            items = (await client.status()).items
        return {item.name: item.model_dump(mode="json") for item in items}

    async def until(
        self, check: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 30
    ) -> dict[str, dict[str, Any]]:
        """The agents (``agents``) once ``check`` accepts them (see ``until_read``)."""
        return await self.until_read(self.agents, check, timeout)

    async def until_read(
        self, read: Callable[[], Awaitable[S]], check: Callable[[S], bool], timeout: float = 30
    ) -> S:
        """What ``read`` returns once ``check`` accepts it, read again at each event.

        For what the events mark: an agent added or removed, its state (so READY), its
        registration, restarts, drains and jobs. Each read follows a mark of the events
        journal, so an event recorded after it always wakes the next read.
        """
        with anyio.fail_after(timeout):
            await self.connected(timeout)
            async with ControlClient(self.socket) as client:
                try:
                    seen = (await client.journal("events", JournalQuery(tail=0)))["last"]
                    while not check(found := await read()):
                        query = JournalQuery(after=seen, wait=MAX_WAIT)
                        seen = (await client.journal("events", query))["last"]
                except DaemonUnreachable:
                    raise self._exited() from None
                return found

    async def last_seq(self, what: Literal["events", "logs"]) -> int:
        """The ``seq`` of the latest event or log record: wait for what comes after it."""
        async with ControlClient(self.socket) as client:
            last: int = (await client.journal(what, JournalQuery(tail=0)))["last"]
            return last

    async def follow(
        self,
        what: Literal["events", "logs"],
        match: Callable[[dict[str, Any]], bool],
        *,
        after: int = 0,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """The first event or log record after ``after`` that ``match`` accepts, as ``lksup
        events -w`` / ``lksup logs -f`` (a long poll of the control API) deliver them."""
        with anyio.fail_after(timeout):
            async with ControlClient(self.socket) as client:
                while True:
                    try:
                        page = await client.journal(what, JournalQuery(after=after, wait=MAX_WAIT))
                    except DaemonUnreachable:
                        raise self._exited() from None
                    items: list[dict[str, Any]] = page["items"]
                    for item in items:
                        if match(item):
                            return item
                    after = page["last"]

    async def wait_event(
        self,
        reason: str,
        *,
        agent: str | None = None,
        message: str = "",
        after: int = 0,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """The first event ``reason`` (about ``agent``, ``message`` in its message)."""

        def match(event: dict[str, Any]) -> bool:
            return (
                event["reason"] == reason
                and agent in (None, event["agent"])
                and message in event["message"]
            )

        return await self.follow("events", match, after=after, timeout=timeout)

    async def wait_log(
        self,
        text: str,
        *,
        agent: str | None = None,
        level: str | None = None,
        after: int = 0,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """The first log record with ``text`` in its message or traceback (about ``agent``, at
        ``level``)."""

        def match(record: dict[str, Any]) -> bool:
            return (
                (text in record["msg"] or text in record.get("exc", ""))
                and agent in (None, record.get("agent"))
                and level in (None, record["level"])
            )

        return await self.follow("logs", match, after=after, timeout=timeout)
