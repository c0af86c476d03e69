"""Twirp endpoints of the dev server: AgentDispatchService and part of RoomService.

Follows Twirp v8 as livekit-server serves it (reference §3.4):

* ``POST /twirp/livekit.<Service>/<Method>`` only; another method, an unknown route or a
  ``Content-Type`` other than ``application/json`` / ``application/protobuf`` is ``bad_route``
  (404).
* JSON bodies are protojson: ``snake_case`` or ``lowerCamel`` names, unknown fields dropped.
  Responses use the request's content type; JSON responses use proto field names and include
  unpopulated scalar, repeated and map fields.
* Errors are ``{"code", "msg"}`` (plus ``meta`` when there is any) with the HTTP status of the
  code. A missing grant is ``unauthenticated`` (401) "permissions denied", not 403.
* Grants: the dispatch calls need ``roomAdmin`` and ``room`` equal to the request's room;
  CreateRoom and DeleteRoom need ``roomCreate``; ListRooms needs ``roomList``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import agent_dispatch, models, room

from lksup.devserver import http
from lksup.devserver.auth import Grants
from lksup.devserver.model import DevServerError, DispatchSpec
from lksup.devserver.rooms import RoomOptions


class Backend(Protocol):
    """What the Twirp services call on the dev server (``DevServer`` is one)."""

    async def create_dispatch(
        self,
        room: str,
        agent_name: str,
        metadata: str = "",
        *,
        deployment: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> agent_dispatch.AgentDispatch:
        """Add a dispatch to ``room`` and launch its job."""
        ...

    async def delete_dispatch(self, room: str, dispatch_id: str) -> agent_dispatch.AgentDispatch:
        """Delete a dispatch (its jobs end)."""
        ...

    def list_dispatch(self, room: str, dispatch_id: str = "") -> list[agent_dispatch.AgentDispatch]:
        """The dispatches of ``room``."""
        ...

    async def create_room(self, name: str, options: RoomOptions | None = None) -> models.Room:
        """Create ``name`` (or return it)."""
        ...

    def delete_room(self, name: str) -> None:
        """Delete ``name``."""
        ...

    def list_rooms(self, names: Sequence[str] = ()) -> list[models.Room]:
        """The rooms (all, or those named)."""
        ...


_PREFIX = "/twirp/"
_JSON = "application/json"
_PROTOBUF = "application/protobuf"
#: HTTP status of each Twirp error code.
STATUS = {
    "canceled": 408,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}


class TwirpError(Exception):
    """A Twirp error response."""

    def __init__(self, code: str, msg: str, meta: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.meta = meta or {}

    def response(self) -> http.Response:
        """The error as an HTTP response."""
        body: dict[str, Any] = {"code": self.code, "msg": self.msg}
        if self.meta:
            body["meta"] = self.meta
        return http.Response(STATUS.get(self.code, 500), json.dumps(body).encode(), _JSON)


def _denied() -> TwirpError:
    return TwirpError("unauthenticated", "permissions denied")


def _ensure_admin(grants: Grants | None, room_name: str) -> None:
    if grants is None or not grants.room_admin or grants.room != room_name:
        raise _denied()


def _ensure(grants: Grants | None, allowed: Callable[[Grants], bool]) -> None:
    if grants is None or not allowed(grants):
        raise _denied()


async def _create_dispatch(
    server: Backend, req: agent_dispatch.CreateAgentDispatchRequest, grants: Grants | None
) -> Message:
    _ensure_admin(grants, req.room)
    return await server.create_dispatch(
        req.room,
        req.agent_name,
        req.metadata,
        deployment=req.deployment,
        attributes=dict(req.attributes),
    )


async def _delete_dispatch(
    server: Backend, req: agent_dispatch.DeleteAgentDispatchRequest, grants: Grants | None
) -> Message:
    _ensure_admin(grants, req.room)
    return await server.delete_dispatch(req.room, req.dispatch_id)


async def _list_dispatch(
    server: Backend, req: agent_dispatch.ListAgentDispatchRequest, grants: Grants | None
) -> Message:
    _ensure_admin(grants, req.room)
    found = server.list_dispatch(req.room, req.dispatch_id)
    return agent_dispatch.ListAgentDispatchResponse(agent_dispatches=found)


async def _create_room(
    server: Backend, req: room.CreateRoomRequest, grants: Grants | None
) -> Message:
    _ensure(grants, lambda g: g.room_create)
    agents = [
        DispatchSpec(a.agent_name, a.metadata, a.deployment, dict(a.attributes)) for a in req.agents
    ]
    options = RoomOptions(
        empty_timeout=req.empty_timeout,
        departure_timeout=req.departure_timeout,
        max_participants=req.max_participants,
        metadata=req.metadata,
        agents=agents,
    )
    return await server.create_room(req.name, options)


async def _delete_room(
    server: Backend, req: room.DeleteRoomRequest, grants: Grants | None
) -> Message:
    _ensure(grants, lambda g: g.room_create)
    server.delete_room(req.room)
    return room.DeleteRoomResponse()


async def _list_rooms(
    server: Backend, req: room.ListRoomsRequest, grants: Grants | None
) -> Message:
    _ensure(grants, lambda g: g.room_list)
    return room.ListRoomsResponse(rooms=server.list_rooms(list(req.names)))


@dataclass(frozen=True)
class _Method:
    request: type[Message]
    call: Callable[[Backend, Any, Grants | None], Awaitable[Message]]


_ROUTES: dict[str, _Method] = {
    "livekit.AgentDispatchService/CreateDispatch": _Method(
        agent_dispatch.CreateAgentDispatchRequest, _create_dispatch
    ),
    "livekit.AgentDispatchService/DeleteDispatch": _Method(
        agent_dispatch.DeleteAgentDispatchRequest, _delete_dispatch
    ),
    "livekit.AgentDispatchService/ListDispatch": _Method(
        agent_dispatch.ListAgentDispatchRequest, _list_dispatch
    ),
    "livekit.RoomService/CreateRoom": _Method(room.CreateRoomRequest, _create_room),
    "livekit.RoomService/DeleteRoom": _Method(room.DeleteRoomRequest, _delete_room),
    "livekit.RoomService/ListRooms": _Method(room.ListRoomsRequest, _list_rooms),
}


async def handle(server: Backend, request: http.Request, grants: Grants | None) -> http.Response:
    """Serve one request under ``/twirp/``."""
    try:
        return await _handle(server, request, grants)
    except TwirpError as exc:
        return exc.response()
    except DevServerError as exc:
        return TwirpError(exc.code, str(exc)).response()


async def _handle(server: Backend, request: http.Request, grants: Grants | None) -> http.Response:
    route = f"{request.method} {request.path}"
    if request.method != "POST":
        msg = f"unsupported method {request.method!r} (only POST is allowed)"
        raise TwirpError("bad_route", msg, {"twirp_invalid_route": route})
    method = _ROUTES.get(request.path.removeprefix(_PREFIX))
    if method is None:
        msg = f"no handler for path {request.path!r}"
        raise TwirpError("bad_route", msg, {"twirp_invalid_route": route})
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if content_type not in (_JSON, _PROTOBUF):
        msg = f"unexpected Content-Type: {content_type!r}"
        raise TwirpError("bad_route", msg, {"twirp_invalid_route": route})
    message = method.request()
    try:
        if content_type == _JSON:
            json_format.Parse(request.body.decode(), message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(request.body)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError):
        kind = "json" if content_type == _JSON else "protobuf"
        raise TwirpError("malformed", f"the {kind} request could not be decoded") from None
    reply = await method.call(server, message, grants)
    if content_type == _JSON:
        text = json_format.MessageToJson(
            reply,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
            indent=None,
        )
        return http.Response(200, text.encode(), _JSON)
    return http.Response(200, reply.SerializeToString(), _PROTOBUF)
