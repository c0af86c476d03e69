"""Client of the daemon's control socket, used by the CLI and the tests.

``ControlClient`` (async) and ``SyncControlClient`` (for click commands) send the requests
``lksup.control.api`` defines over httpx with a Unix-socket transport and turn the answers
back into models and exceptions:

* nothing listening, no socket file, no permission, no answer in time, or the daemon
  vanishing mid-request → ``DaemonUnreachable``, whose ``reason`` says which (the CLI exits 4,
  and suggests starting a daemon only when nothing listens);
* a JSON error ``{code, message}`` → ``ControlError(code, message, status)``.

Both clients build requests and decode answers with the same functions, so they cannot
drift apart. The client timeout is longer than the server's request timeout, so a slow
handler is reported by the server (503 ``timeout``) rather than by the client.
"""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import anyio
import httpx

from lksup.control.api import ApplyRequest, Health, JournalQuery, SimulateRequest, StatusList
from lksup.control.errors import ControlError, DaemonUnreachable, Unreachable

__all__ = ["DEFAULT_TIMEOUT", "ControlClient", "SyncControlClient"]

#: Seconds the client waits for an answer (the server's own request timeout is 10 s).
DEFAULT_TIMEOUT = 30.0
_BASE_URL = "http://lksup"


@dataclass(frozen=True)
class _Call:
    method: str
    url: str
    params: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None


def _agent_url(agent: str, action: str) -> str:
    return f"/v1/agents/{quote(agent, safe='')}/{action}"


def _status(agent: str | None) -> _Call:
    return _Call("GET", "/v1/status", {"agent": agent} if agent is not None else {})


def _apply(
    fleet: dict[str, Any],
    source: str | None,
    dry_run: bool,
    prune_all: bool,
    values: dict[str, Any] | None,
    replace_fleet: bool = False,
    check: bool = True,
) -> _Call:
    request = ApplyRequest(
        fleet=fleet,
        source=source,
        dry_run=dry_run,
        prune_all=prune_all,
        values=values or {},
        replace_fleet=replace_fleet,
        check=check,
    )
    return _Call("POST", "/v1/apply", body=request.model_dump(mode="json"))


def _drain(agent: str | None) -> _Call:
    return _Call("POST", "/v1/drain" if agent is None else _agent_url(agent, "drain"))


def _reload(agent: str | None) -> _Call:
    return _Call("POST", "/v1/reload" if agent is None else _agent_url(agent, "reload"))


def _simulate(agent: str, room: str, participant: str | None) -> _Call:
    request = SimulateRequest(room=room, participant=participant)
    return _Call("POST", _agent_url(agent, "simulate"), body=request.model_dump(mode="json"))


def _unreachable(path: Path, exc: httpx.TransportError) -> DaemonUnreachable:
    if isinstance(exc, httpx.TimeoutException):
        return DaemonUnreachable(
            f"the lksup daemon on {path} did not answer in time", Unreachable.TIMEOUT
        )
    if not isinstance(exc, httpx.ConnectError):
        return DaemonUnreachable(
            f"lost the connection to the lksup daemon on {path} ({exc})", Unreachable.DISCONNECTED
        )
    code = _os_errno(exc)
    if code in (errno.EACCES, errno.EPERM):
        return DaemonUnreachable(
            f"permission denied on {path}: only the daemon's user and root may use it",
            Unreachable.PERMISSION_DENIED,
        )
    reason = (
        Unreachable.NOT_LISTENING
        if code in (errno.ENOENT, errno.ECONNREFUSED)
        else Unreachable.CONNECT_FAILED
    )
    return DaemonUnreachable(f"no lksup daemon is listening on {path} ({exc})", reason)


def _os_errno(exc: BaseException) -> int | None:
    """The errno of the OS error that caused ``exc`` (httpx wraps httpcore's, which wraps it)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno is not None:
            return cause.errno
        cause = cause.__cause__ or cause.__context__
    return None


def _decode(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if response.is_success and isinstance(data, dict):
        return data
    if isinstance(data, dict) and isinstance(data.get("code"), str):
        raise ControlError(data["code"], str(data.get("message", "")), response.status_code)
    text = response.text.strip()[:200] or response.reason_phrase
    if response.is_success:
        raise ControlError("bad_response", f"the daemon answered with non-JSON: {text}", 502)
    raise ControlError("http_error", text, response.status_code)


def _applied_or_none(exc: ControlError) -> None:
    if exc.code != "not_found":
        raise exc


class ControlClient:
    """Async client of the control socket at ``path``; use as ``async with``.

    Args:
        path: The control socket.
        timeout: Seconds to wait for each answer.
    """

    def __init__(self, path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(path)), base_url=_BASE_URL, timeout=timeout
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def _call(self, call: _Call) -> dict[str, Any]:
        try:
            response = await self._http.request(
                call.method, call.url, params=call.params, json=call.body
            )
        except httpx.TransportError as exc:
            raise _unreachable(self.path, exc) from exc
        return _decode(response)

    async def health(self) -> Health:
        """``GET /v1/health``."""
        return Health.model_validate(await self._call(_Call("GET", "/v1/health")))

    async def journal(self, what: str, query: JournalQuery) -> dict[str, Any]:
        """``GET /v1/events`` or ``/v1/logs`` (``what``).

        The answer has the ``items`` after ``query.after`` and the ``last`` seq to ask after.
        """
        params = {"after": str(query.after), "wait": f"{query.wait:g}"}
        for name in ("agent", "job", "since", "tail"):
            value = getattr(query, name)
            if value is not None:
                params[name] = str(value)
        return await self._call(_Call("GET", f"/v1/{what}", params))

    async def status(self, agent: str | None = None) -> StatusList:
        """``GET /v1/status``; an unknown ``agent`` raises ``ControlError`` ``not_found``."""
        return StatusList.model_validate(await self._call(_status(agent)))

    async def apply(
        self,
        fleet: dict[str, Any],
        *,
        source: str | None = None,
        dry_run: bool = False,
        prune_all: bool = False,
        values: dict[str, Any] | None = None,
        replace_fleet: bool = False,
        check: bool = True,
    ) -> dict[str, Any]:
        """``POST /v1/apply``; returns the Plan document."""
        call = _apply(fleet, source, dry_run, prune_all, values, replace_fleet, check)
        return await self._call(call)

    async def applied(self) -> dict[str, Any] | None:
        """``GET /v1/fleet``: the applied fleet document, or None when none was applied."""
        try:
            return await self._call(_Call("GET", "/v1/fleet"))
        except ControlError as exc:
            _applied_or_none(exc)
            return None

    async def drain(self, agent: str | None = None) -> dict[str, Any]:
        """Drain ``agent``, or every agent when None."""
        return await self._call(_drain(agent))

    async def undrain(self, agent: str) -> dict[str, Any]:
        """Clear the drain override of ``agent``."""
        return await self._call(_Call("POST", _agent_url(agent, "undrain")))

    async def reload(self, agent: str | None = None) -> dict[str, Any]:
        """Rolling-replace ``agent``, or every agent when None."""
        return await self._call(_reload(agent))

    async def simulate(
        self, agent: str, room: str, participant: str | None = None
    ) -> dict[str, Any]:
        """Ask the server for a job on ``agent`` in ``room``."""
        return await self._call(_simulate(agent, room, participant))


class SyncControlClient:
    """Blocking twin of ``ControlClient`` for the CLI; use as ``with``.

    Each call runs the async client in its own short event loop (``anyio.run``): httpcore's
    synchronous Unix-socket connect leaks the socket when the connect fails, which is
    exactly the "no daemon" case the CLI hits. Do not call it from inside an event loop.

    Args:
        path: The control socket.
        timeout: Seconds to wait for each answer.
    """

    def __init__(self, path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (each call opens and closes its own connection)."""

    def _call(self, call: _Call) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            async with ControlClient(self.path, timeout=self.timeout) as client:
                return await client._call(call)

        return anyio.run(run)

    def health(self) -> Health:
        """``GET /v1/health``."""
        return Health.model_validate(self._call(_Call("GET", "/v1/health")))

    def status(self, agent: str | None = None) -> StatusList:
        """``GET /v1/status``; an unknown ``agent`` raises ``ControlError`` ``not_found``."""
        return StatusList.model_validate(self._call(_status(agent)))

    def apply(
        self,
        fleet: dict[str, Any],
        *,
        source: str | None = None,
        dry_run: bool = False,
        prune_all: bool = False,
        values: dict[str, Any] | None = None,
        replace_fleet: bool = False,
        check: bool = True,
    ) -> dict[str, Any]:
        """``POST /v1/apply``; returns the Plan document."""
        call = _apply(fleet, source, dry_run, prune_all, values, replace_fleet, check)
        return self._call(call)

    def applied(self) -> dict[str, Any] | None:
        """``GET /v1/fleet``: the applied fleet document, or None when none was applied."""
        try:
            return self._call(_Call("GET", "/v1/fleet"))
        except ControlError as exc:
            _applied_or_none(exc)
            return None

    def drain(self, agent: str | None = None) -> dict[str, Any]:
        """Drain ``agent``, or every agent when None."""
        return self._call(_drain(agent))

    def undrain(self, agent: str) -> dict[str, Any]:
        """Clear the drain override of ``agent``."""
        return self._call(_Call("POST", _agent_url(agent, "undrain")))

    def reload(self, agent: str | None = None) -> dict[str, Any]:
        """Rolling-replace ``agent``, or every agent when None."""
        return self._call(_reload(agent))

    def simulate(self, agent: str, room: str, participant: str | None = None) -> dict[str, Any]:
        """Ask the server for a job on ``agent`` in ``room``."""
        return self._call(_simulate(agent, room, participant))
