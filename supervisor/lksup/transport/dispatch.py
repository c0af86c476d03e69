"""Explicit dispatches through LiveKit's AgentDispatchService (livekit-api).

Used by ``lksup dispatch``; works the same against a real server and the embedded dev server.

Connection settings come from the caller (flags) or the environment (``LIVEKIT_URL``,
``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET``), flags first. Errors are ``DispatchError`` with
the server's Twirp code and message; never a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from livekit import api as lkapi
from livekit.protocol import agent as pb_agent
from livekit.protocol import agent_dispatch as pb_dispatch

from lksup.errors import LksupError


class DispatchError(LksupError):
    """A dispatch request failed (unreachable server, refused credentials, unknown room...)."""


@dataclass(frozen=True)
class ApiSettings:
    """Where the server's API is, and the credentials to sign requests with."""

    url: str
    api_key: str
    api_secret: str

    def __repr__(self) -> str:
        return f"ApiSettings(url={self.url!r}, api_key={self.api_key!r}, api_secret=****)"

    @classmethod
    def resolve(
        cls,
        *,
        url: str | None,
        api_key: str | None,
        api_secret: str | None,
        environ: Mapping[str, str] | None = None,
    ) -> ApiSettings:
        """Flags first, then ``LIVEKIT_URL`` / ``LIVEKIT_API_KEY`` / ``LIVEKIT_API_SECRET``.

        Raises:
            DispatchError: a setting is missing from both.
        """
        env = os.environ if environ is None else environ
        values = {
            "url": url or env.get("LIVEKIT_URL"),
            "api_key": api_key or env.get("LIVEKIT_API_KEY"),
            "api_secret": api_secret or env.get("LIVEKIT_API_SECRET"),
        }
        missing = [name for name, value in values.items() if not value]
        if missing:
            flags = ", ".join(f"--{m.replace('_', '-')} (or LIVEKIT_{m.upper()})" for m in missing)
            raise DispatchError(f"missing {flags}")
        return cls(
            url=values["url"] or "",
            api_key=values["api_key"] or "",
            api_secret=values["api_secret"] or "",
        )


def rfc3339(stamp: int) -> str | None:
    """An RFC 3339 UTC time for a LiveKit timestamp (nanoseconds; None when unset)."""
    if stamp <= 0:
        return None
    seconds = stamp / 1e9 if stamp > 10**14 else stamp / 1e3 if stamp > 10**11 else stamp
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def job_to_dict(job: pb_agent.Job) -> dict[str, Any]:
    """A dispatched job as JSON: its status without the enum prefix, times in RFC 3339."""
    state = job.state
    return {
        "id": job.id,
        "type": pb_agent.JobType.Name(job.type).removeprefix("JT_").lower(),
        "agentName": job.agent_name,
        "status": pb_agent.JobStatus.Name(state.status).removeprefix("JS_").lower(),
        "workerId": state.worker_id or None,
        "participantIdentity": state.participant_identity or None,
        "error": state.error or None,
        "startedAt": rfc3339(state.started_at),
        "endedAt": rfc3339(state.ended_at),
    }


def dispatch_to_dict(dispatch: pb_dispatch.AgentDispatch) -> dict[str, Any]:
    """A dispatch as JSON: camelCase names, times in RFC 3339, its jobs (``job_to_dict``)."""
    return {
        "id": dispatch.id,
        "agentName": dispatch.agent_name,
        "room": dispatch.room,
        "metadata": dispatch.metadata,
        "createdAt": rfc3339(dispatch.state.created_at),
        "deletedAt": rfc3339(dispatch.state.deleted_at),
        "jobs": [job_to_dict(job) for job in dispatch.state.jobs],
    }


async def _call(settings: ApiSettings, method: str, *args: Any) -> Any:
    client = lkapi.LiveKitAPI(settings.url, settings.api_key, settings.api_secret)
    try:
        return await getattr(client.agent_dispatch, method)(*args)
    except lkapi.TwirpError as exc:
        if exc.status == 401 and exc.code in ("unknown", "unauthenticated", ""):
            raise DispatchError(
                f"the server refused the API key or secret, or they lack the room's admin "
                f"grant (HTTP 401{': ' + exc.message if exc.message else ''})"
            ) from None
        raise DispatchError(f"{exc.code}: {exc.message}") from None
    except aiohttp.ClientError as exc:
        raise DispatchError(f"cannot reach {settings.url}: {exc}") from None
    finally:
        await client.aclose()


async def create_dispatch(
    settings: ApiSettings, *, agent_name: str, room: str, metadata: str = ""
) -> pb_dispatch.AgentDispatch:
    """Create an explicit dispatch (the room is created when missing)."""
    request = pb_dispatch.CreateAgentDispatchRequest(
        agent_name=agent_name, room=room, metadata=metadata
    )
    result: pb_dispatch.AgentDispatch = await _call(settings, "create_dispatch", request)
    return result


async def list_dispatches(settings: ApiSettings, *, room: str) -> list[pb_dispatch.AgentDispatch]:
    """The dispatches of a room."""
    result: list[pb_dispatch.AgentDispatch] = await _call(settings, "list_dispatch", room)
    return result


async def delete_dispatch(
    settings: ApiSettings, *, dispatch_id: str, room: str
) -> pb_dispatch.AgentDispatch:
    """Delete a dispatch (its running jobs are terminated)."""
    result: pb_dispatch.AgentDispatch = await _call(settings, "delete_dispatch", dispatch_id, room)
    return result
