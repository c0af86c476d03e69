"""Twirp: the dispatch API and part of RoomService, in protobuf (livekit-api) and JSON."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from livekit import api
from livekit.protocol import agent

from lksup.devserver import DevServer

from .helpers import KEY, SECRET, WAIT, http_url, running_server, token, worker

pytestmark = pytest.mark.anyio

DISPATCH = "/twirp/livekit.AgentDispatchService"
ROOMS = "/twirp/livekit.RoomService"


def bearer(video: dict[str, Any] | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(video)}"}


async def post_json(
    server: DevServer, path: str, body: dict[str, Any] | str, video: dict[str, Any] | None
) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    headers = {"Content-Type": "application/json", **(bearer(video) if video is not None else {})}
    async with httpx.AsyncClient(base_url=http_url(server)) as client:
        return await client.post(path, content=content, headers=headers)


async def test_livekit_api_dispatch_round_trip() -> None:
    async with running_server() as server, worker(server) as w:
        await w.register("lk-agent")
        async with api.LiveKitAPI(http_url(server), KEY, SECRET) as lk:
            created = await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="lk-agent", room="r-api", metadata="m")
            )
            assert created.id.startswith("AD_")
            assert created.room == "r-api"
            assert list(created.state.jobs) == []
            assert created.state.created_at > 0
            offer = (await w.expect("availability")).availability
            assert (offer.job.dispatch_id, offer.job.metadata) == (created.id, "m")
            await w.answer(offer.job.id, identity="agent-api")
            await w.expect("assignment")
            with anyio.fail_after(WAIT):
                await server.wait_dispatch_settled(created.id)
            listed = await lk.agent_dispatch.list_dispatch("r-api")
            assert {d.agent_name for d in listed} == {"", "lk-agent"}  # the room's default dispatch
            (mine,) = [d for d in listed if d.id == created.id]
            assert [j.id for j in mine.state.jobs] == [offer.job.id]
            assert mine.state.jobs[0].state.status == agent.JS_RUNNING
            got = await lk.agent_dispatch.get_dispatch(created.id, "r-api")
            assert got is not None
            assert got.id == created.id
            deleted = await lk.agent_dispatch.delete_dispatch(created.id, "r-api")
            assert deleted.id == created.id
            assert (await w.expect("termination")).termination.job_id == offer.job.id
            with pytest.raises(api.ServerError) as info:
                await lk.agent_dispatch.delete_dispatch(created.id, "r-api")
            assert (info.value.code, info.value.status) == ("not_found", 404)
            with pytest.raises(api.ServerError) as info:
                await lk.agent_dispatch.list_dispatch("no-such-room")
            assert (info.value.code, info.value.status) == ("not_found", 404)


async def test_livekit_api_create_room_with_agents() -> None:
    async with running_server() as server, worker(server) as unnamed, worker(server) as named:
        await unnamed.register("")
        await named.register("x")
        async with api.LiveKitAPI(http_url(server), KEY, SECRET) as lk:
            room = await lk.room.create_room(
                api.CreateRoomRequest(
                    name="r-agents", agents=[api.RoomAgentDispatch(agent_name="x")]
                )
            )
            assert room.sid.startswith("RM_")
            assert room.name == "r-agents"
            offer = (await named.expect("availability")).availability
            assert offer.job.room.sid == room.sid
            await named.answer(offer.job.id, available=False)
            (dispatch,) = server.list_dispatch("r-agents")
            with anyio.fail_after(WAIT):
                await server.wait_dispatch_settled(dispatch.id)
            assert await unnamed.sync() == []  # agents replace the default unnamed dispatch
            again = await lk.room.create_room(api.CreateRoomRequest(name="r-agents"))
            assert again.sid == room.sid  # exists: nothing new is launched
            assert len(server.list_dispatch("r-agents")) == 1


async def test_create_room_adds_the_unnamed_dispatch() -> None:
    async with running_server() as server, worker(server) as unnamed:
        await unnamed.register("")
        response = await post_json(
            server,
            f"{ROOMS}/CreateRoom",
            {"name": "r-json", "empty_timeout": 60},
            {"roomCreate": True},
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        room = response.json()
        assert (room["name"], room["empty_timeout"], room["departure_timeout"]) == (
            "r-json",
            60,
            20,
        )
        assert room["sid"].startswith("RM_")
        assert room["metadata"] == ""
        offer = (await unnamed.expect("availability")).availability
        assert (offer.job.room.name, offer.job.agent_name) == ("r-json", "")


async def test_json_create_dispatch_accepts_camel_and_answers_snake() -> None:
    async with running_server() as server:
        body = {"room": "r-camel", "agentName": "j", "metadata": "m", "unknownField": 1}
        response = await post_json(
            server, f"{DISPATCH}/CreateDispatch", body, {"roomAdmin": True, "room": "r-camel"}
        )
        assert response.status_code == 200, response.text
        dispatch = response.json()
        assert dispatch["agent_name"] == "j"
        assert dispatch["id"].startswith("AD_")
        assert dispatch["deployment"] == ""
        assert dispatch["attributes"] == {}
        assert dispatch["state"]["jobs"] == []
        assert isinstance(dispatch["state"]["created_at"], str)
        body2 = {"room": "r-camel", "agent_name": "snake"}
        response = await post_json(
            server, f"{DISPATCH}/CreateDispatch", body2, {"roomAdmin": True, "room": "r-camel"}
        )
        assert response.json()["agent_name"] == "snake"
        listed = await post_json(
            server,
            f"{DISPATCH}/ListDispatch",
            {"room": "r-camel"},
            {"roomAdmin": True, "room": "r-camel"},
        )
        assert {d["agent_name"] for d in listed.json()["agent_dispatches"]} == {"", "j", "snake"}


ADMIN = {"roomAdmin": True, "room": "r-err"}


@pytest.mark.parametrize(
    ("method", "path", "body", "video", "content_type", "status", "code"),
    [
        (
            "POST",
            f"{DISPATCH}/CreateDispatch",
            '{"room": "r-err"}',
            None,
            "application/json",
            401,
            "unauthenticated",
        ),
        (
            "POST",
            f"{DISPATCH}/CreateDispatch",
            '{"room": "r-err"}',
            {"roomAdmin": True, "room": "other"},
            "application/json",
            401,
            "unauthenticated",
        ),
        (
            "POST",
            f"{DISPATCH}/CreateDispatch",
            '{"room": "r-err"}',
            {"roomAdmin": True},
            "application/json",
            401,
            "unauthenticated",
        ),
        (
            "POST",
            f"{DISPATCH}/CreateDispatch",
            '{"room": "r-err"}',
            {"room": "r-err", "agent": True},
            "application/json",
            401,
            "unauthenticated",
        ),
        (
            "POST",
            f"{DISPATCH}/ListDispatch",
            '{"room": "r-err"}',
            ADMIN,
            "application/json",
            404,
            "not_found",
        ),
        (
            "POST",
            f"{DISPATCH}/DeleteDispatch",
            '{"room": "r-err", "dispatch_id": "AD_x"}',
            ADMIN,
            "application/json",
            404,
            "not_found",
        ),
        (
            "POST",
            f"{DISPATCH}/CreateDispatch",
            '{"room": "r-err", "deployment": "a_b"}',
            ADMIN,
            "application/json",
            400,
            "invalid_argument",
        ),
        (
            "POST",
            f"{DISPATCH}/CreateDispatch",
            "{not json",
            ADMIN,
            "application/json",
            400,
            "malformed",
        ),
        (
            "POST",
            f"{DISPATCH}/CreateDispatch",
            "\x08\xff",
            ADMIN,
            "application/protobuf",
            400,
            "malformed",
        ),
        ("POST", f"{DISPATCH}/CreateDispatch", "{}", ADMIN, "text/plain", 404, "bad_route"),
        ("GET", f"{DISPATCH}/CreateDispatch", "", ADMIN, "application/json", 404, "bad_route"),
        ("POST", f"{DISPATCH}/Nope", "{}", ADMIN, "application/json", 404, "bad_route"),
        (
            "POST",
            f"{ROOMS}/CreateRoom",
            '{"name": "r"}',
            ADMIN,
            "application/json",
            401,
            "unauthenticated",
        ),
        (
            "POST",
            f"{ROOMS}/ListRooms",
            "{}",
            {"roomCreate": True},
            "application/json",
            401,
            "unauthenticated",
        ),
    ],
)
async def test_twirp_errors(
    method: str,
    path: str,
    body: str,
    video: dict[str, Any] | None,
    content_type: str,
    status: int,
    code: str,
) -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=http_url(server)) as client:
        headers = {"Content-Type": content_type, **(bearer(video) if video is not None else {})}
        response = await client.request(
            method, path, content=body.encode("latin-1"), headers=headers
        )
        assert response.status_code == status, response.text
        error = response.json()
        assert error["code"] == code
        assert error["msg"]
        if code == "unauthenticated":
            assert error["msg"] == "permissions denied"


async def test_invalid_token_is_plain_401_before_twirp() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=http_url(server)) as client:
        bad = token({"roomAdmin": True, "room": "r"}, secret="not-the-secret-not-the-secret-xx")
        response = await client.post(
            f"{DISPATCH}/ListDispatch",
            content="{}",
            headers={"Authorization": f"Bearer {bad}", "Content-Type": "application/json"},
        )
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("text/plain")


async def test_list_and_delete_rooms() -> None:
    async with running_server() as server:
        for name in ("r-a", "r-b"):
            await post_json(server, f"{ROOMS}/CreateRoom", {"name": name}, {"roomCreate": True})
        listed = await post_json(server, f"{ROOMS}/ListRooms", {}, {"roomList": True})
        assert [r["name"] for r in listed.json()["rooms"]] == ["r-a", "r-b"]
        only = await post_json(server, f"{ROOMS}/ListRooms", {"names": ["r-b"]}, {"roomList": True})
        assert [r["name"] for r in only.json()["rooms"]] == ["r-b"]
        deleted = await post_json(
            server, f"{ROOMS}/DeleteRoom", {"room": "r-a"}, {"roomCreate": True}
        )
        assert (deleted.status_code, deleted.json()) == (200, {})
        gone = await post_json(
            server, f"{DISPATCH}/ListDispatch", {"room": "r-a"}, {"roomAdmin": True, "room": "r-a"}
        )
        assert (gone.status_code, gone.json()["code"]) == (404, "not_found")
        again = await post_json(
            server, f"{ROOMS}/DeleteRoom", {"room": "r-a"}, {"roomCreate": True}
        )
        assert again.status_code == 404
