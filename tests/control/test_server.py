from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import h11
import httpx
import pytest

from lksup import __version__
from lksup.control.client import ControlClient, SyncControlClient
from lksup.control.errors import (
    AlreadyRunning,
    ControlError,
    DaemonUnreachable,
    SocketPathError,
    UnsafeSocketDirectory,
)
from lksup.control.server import ControlServer
from tests.control.conftest import FakeApp, serving

pytestmark = pytest.mark.anyio


async def _read_all(stream: anyio.abc.ByteStream) -> bytes:
    data = bytearray()
    while True:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return bytes(data)


async def _raw(path: Path, payload: bytes) -> tuple[int, dict[str, Any], bool]:
    """Send ``payload`` on a fresh connection; (status, JSON body, closed by the server)."""
    with anyio.fail_after(5):
        async with await anyio.connect_unix(path) as stream:
            await stream.send(payload)
            data = await _read_all(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body), True


def _http(path: Path) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(path)), base_url="http://x")


# Round trips through the real client ------------------------------------------------------


async def test_status_round_trip(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        status = await client.status()
        assert [item.name for item in status.items] == ["alpha", "beta"]
        alpha = status.items[0]
        assert alpha.jobs_detail[0].room == "room-1"
        assert alpha.started_at == "2025-01-02T03:04:05Z"
        one = await client.status("beta")
        assert [item.state for item in one.items] == ["backoff"]
    assert app.calls == [("status", None), ("status", "beta")]


async def test_status_json_carries_api_version_and_kind(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app), _http(socket_path) as http:
        response = await http.get("/v1/status")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert (data["apiVersion"], data["kind"]) == ("lksup/v1", "StatusList")


async def test_status_of_unknown_agent_is_not_found(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        with pytest.raises(ControlError) as info:
            await client.status("gamma")
    assert (info.value.code, info.value.status) == ("not_found", 404)
    assert info.value.message == "no such agent: gamma"


async def test_apply_round_trip(socket_path: Path, app: FakeApp) -> None:
    fleet = {"apiVersion": "lksup/v1", "kind": "Fleet", "metadata": {"name": "f"}}
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        assert await client.applied() is None
        plan = await client.apply(fleet, source="fleets/dev.yaml", prune_all=True)
        assert plan == {
            "apiVersion": "lksup/v1",
            "kind": "Plan",
            "actions": [{"agent": "alpha", "action": "create"}],
        }
        assert await client.applied() == fleet
    request = app.calls[1][1]
    assert (request.source, request.dry_run, request.prune_all) == ("fleets/dev.yaml", False, True)


async def test_drain_undrain_reload_simulate_round_trips(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        assert (await client.drain("alpha"))["draining"] == ["alpha"]
        assert (await client.drain())["kind"] == "DrainResult"
        assert (await client.undrain("alpha"))["undrained"] == "alpha"
        assert (await client.reload("alpha"))["kind"] == "ReloadResult"
        assert (await client.reload())["reloading"] is None
        job = await client.simulate("alpha", "room-9", participant="bob")
        assert (job["room"], job["participant"], job["kind"]) == ("room-9", "bob", "SimulateResult")
        with pytest.raises(ControlError, match="no such agent: nope"):
            await client.undrain("nope")
    assert [name for name, _ in app.calls] == [
        "drain",
        "drain",
        "undrain",
        "reload",
        "reload",
        "simulate",
        "undrain",
    ]
    assert app.calls[1] == ("drain", None)


async def test_agent_names_are_quoted_in_paths(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        with pytest.raises(ControlError, match="no such agent: a/b c"):
            await client.drain("a/b c")
    assert app.calls == [("drain", "a/b c")]


async def test_health(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        health = await client.health()
    assert (health.ok, health.pid, health.version) == (True, os.getpid(), __version__)


async def test_sync_client(socket_path: Path, app: FakeApp) -> None:
    def use() -> tuple[list[str], dict[str, Any]]:
        with SyncControlClient(socket_path) as client:
            names = [item.name for item in client.status().items]
            return names, client.drain("beta")

    async with serving(socket_path, app):
        names, drained = await anyio.to_thread.run_sync(use)
    assert names == ["alpha", "beta"]
    assert drained["draining"] == ["beta"]


async def test_keep_alive_serves_several_requests_on_one_connection(
    socket_path: Path, app: FakeApp
) -> None:
    conn = h11.Connection(h11.CLIENT)
    statuses = []
    async with serving(socket_path, app), await anyio.connect_unix(socket_path) as stream:
        for _ in range(3):
            request = h11.Request(method="GET", target="/v1/health", headers=[("host", "x")])
            await stream.send(conn.send(request) + conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    with anyio.fail_after(5):
                        conn.receive_data(await stream.receive())
                elif isinstance(event, h11.Response):
                    statuses.append(event.status_code)
                elif isinstance(event, h11.EndOfMessage):
                    break
            conn.start_next_cycle()
    assert statuses == [200, 200, 200]


class _KeepAlive:
    """One client connection that sends health requests and reads their responses."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream, self.conn = stream, h11.Connection(h11.CLIENT)

    async def send(self) -> None:
        request = h11.Request(method="GET", target="/v1/health", headers=[("host", "x")])
        await self.stream.send(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))

    async def response(self) -> int:
        status = 0
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                with anyio.fail_after(5):
                    self.conn.receive_data(await self.stream.receive())
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                self.conn.start_next_cycle()
                return status

    def answered(self) -> bool:
        """Whether a response is waiting to be read (without waiting for one)."""
        sock = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
        try:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return False


async def test_connections_beyond_the_cap_wait_for_a_free_slot(
    socket_path: Path, app: FakeApp
) -> None:
    """Regression: a flood of idle connections took every descriptor the daemon had, and
    the daemon died. Beyond ``max_connections`` a client waits in the backlog instead."""
    async with serving(socket_path, app, max_connections=2):
        first = _KeepAlive(await anyio.connect_unix(socket_path))
        second = _KeepAlive(await anyio.connect_unix(socket_path))
        for client in (first, second):  # both served, and both held open
            await client.send()
            assert await client.response() == 200
        async with await anyio.connect_unix(socket_path) as stream:
            third = _KeepAlive(stream)
            await third.send()
            await second.send()  # the server goes on serving the connections it holds
            assert await second.response() == 200
            assert not third.answered()  # not accepted while both slots are taken
            await first.stream.aclose()
            assert await third.response() == 200  # the freed slot takes it
        await second.stream.aclose()


# Errors ---------------------------------------------------------------------------------


async def test_unknown_route_is_404(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app), _http(socket_path) as http:
        response = await http.get("/v2/status")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "message": "no such endpoint: /v2/status"}


async def test_wrong_method_is_405(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app), _http(socket_path) as http:
        response = await http.get("/v1/apply")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["code"] == "method_not_allowed"


async def test_oversized_body_is_413(socket_path: Path, app: FakeApp) -> None:
    body = json.dumps({"fleet": {"blob": "x" * 4096}}).encode()
    async with serving(socket_path, app, max_body=1024), _http(socket_path) as http:
        response = await http.post("/v1/apply", content=body)
        assert response.status_code == 413
        assert response.json() == {
            "code": "too_large",
            "message": "request body exceeds 1024 bytes",
        }
        assert (await http.get("/v1/health")).status_code == 200
    assert app.calls == []


async def test_invalid_body_is_422_with_the_validation_messages(
    socket_path: Path, app: FakeApp
) -> None:
    async with serving(socket_path, app), _http(socket_path) as http:
        response = await http.post("/v1/apply", json={"fleet": 3, "dry_run": "perhaps"})
        simulate = await http.post("/v1/agents/alpha/simulate", json={"room": ""})
    assert response.status_code == 422
    data = response.json()
    assert data["code"] == "invalid"
    assert "fleet: Input should be a valid dictionary" in data["message"]
    assert "dry_run: Input should be a valid boolean" in data["message"]
    assert simulate.status_code == 422
    assert simulate.json()["message"].startswith("room: String should have at least 1 character")
    assert app.calls == []


async def test_non_json_body_is_400(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app), _http(socket_path) as http:
        response = await http.post(
            "/v1/apply", content=b"fleet: {}", headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"


async def test_non_json_content_type_is_415(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app), _http(socket_path) as http:
        untyped = await http.post("/v1/apply", content=b"fleet=1")
        response = await http.post(
            "/v1/apply", content=b"fleet=1", headers={"content-type": "text/plain"}
        )
    assert untyped.status_code == 400  # no content-type: parsed as JSON, and it is not
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


async def test_malformed_http_is_400_and_the_server_keeps_answering(
    socket_path: Path, app: FakeApp
) -> None:
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        status, body, _ = await _raw(socket_path, b"\x00\xff\xfeGARBAGE\r\n\r\n")
        assert status == 400
        assert body["code"] == "bad_request"
        status, body, _ = await _raw(socket_path, b"GET /v1/health HTTP/1.1\r\nno-colon\r\n\r\n")
        assert status == 400
        assert (await client.status()).items


async def test_truncated_requests_and_junk_do_not_stop_the_server(
    socket_path: Path, app: FakeApp
) -> None:
    junk = [
        b"",
        b"GET /v1/st",
        b'POST /v1/apply HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"fl',
        os.urandom(4096),
        b"GET / HTTP/1.1\r\n" + b"x-long: " + b"a" * 70_000 + b"\r\n\r\n",
    ]
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        for payload in junk:
            with anyio.fail_after(5):
                async with await anyio.connect_unix(socket_path) as stream:
                    await stream.send(payload)
                    await stream.send_eof()
                    await _read_all(stream)
            assert [item.name for item in (await client.status()).items] == ["alpha", "beta"]


async def test_app_exception_is_500_json(socket_path: Path, app: FakeApp) -> None:
    app.fail_reload = True
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        with pytest.raises(ControlError) as info:
            await client.reload("alpha")
        assert (await client.health()).ok
    assert (info.value.code, info.value.status) == ("internal", 500)
    assert "RuntimeError: boom" in info.value.message


async def test_slow_handler_is_cut_off_at_the_request_timeout(
    socket_path: Path, app: FakeApp
) -> None:
    app.block_drain = True
    async with serving(socket_path, app, request_timeout=0.2), ControlClient(socket_path) as client:
        with anyio.fail_after(5), pytest.raises(ControlError) as info:
            await client.drain()
    assert (info.value.code, info.value.status) == ("timeout", 503)


# Concurrency and load -------------------------------------------------------------------


async def test_blocked_handler_does_not_block_status(socket_path: Path, app: FakeApp) -> None:
    app.block_drain = True
    async with (
        serving(socket_path, app, request_timeout=60),
        ControlClient(socket_path) as drainer,
        ControlClient(socket_path) as watcher,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(drainer.drain, "alpha")
        with anyio.fail_after(5):
            await app.drain_entered.wait()
            status = await watcher.status()
            health = await watcher.health()
        assert [item.name for item in status.items] == ["alpha", "beta"]
        assert health.ok
        tg.cancel_scope.cancel()


async def test_a_thousand_sequential_connections(socket_path: Path, app: FakeApp) -> None:
    request = b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    fds_before = len(os.listdir("/proc/self/fd"))
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        with anyio.fail_after(30):
            for _ in range(1000):
                async with await anyio.connect_unix(socket_path) as stream:
                    await stream.send(request)
                    assert (await _read_all(stream)).startswith(b"HTTP/1.1 200 ")
        assert (await client.health()).ok
    assert len(os.listdir("/proc/self/fd")) <= fds_before


# Socket file, permissions and peers -----------------------------------------------------


async def test_directory_and_socket_modes(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app):
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        info = socket_path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600


async def test_socket_removed_on_exit(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app):
        assert socket_path.exists()
    assert not socket_path.exists()


async def test_stale_socket_is_replaced(socket_path: Path, app: FakeApp) -> None:
    socket_path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(socket_path))
    dead.close()  # the file stays; connecting to it is refused
    assert socket_path.exists()
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        assert (await client.health()).ok


async def test_live_socket_refuses_a_second_daemon(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        second = ControlServer(socket_path, FakeApp())
        with anyio.fail_after(5), pytest.raises(AlreadyRunning) as info:
            await second.run()
        assert str(info.value) == f"another lksup daemon is running on {socket_path}"
        assert socket_path.exists()
        assert (await client.health()).ok


async def test_something_else_at_the_path_is_not_replaced(socket_path: Path, app: FakeApp) -> None:
    socket_path.parent.mkdir(mode=0o700)
    socket_path.write_text("precious")
    with pytest.raises(SocketPathError, match="is not a socket"):
        await ControlServer(socket_path, app).run()
    assert socket_path.read_text() == "precious"


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
async def test_writable_directory_is_refused(socket_path: Path, app: FakeApp, mode: int) -> None:
    socket_path.parent.mkdir()
    socket_path.parent.chmod(mode)
    with pytest.raises(UnsafeSocketDirectory, match="writable by group or others"):
        await ControlServer(socket_path, app).run()
    assert not socket_path.exists()


async def test_existing_private_directory_is_accepted(socket_path: Path, app: FakeApp) -> None:
    socket_path.parent.mkdir()
    socket_path.parent.chmod(0o755)
    async with serving(socket_path, app), ControlClient(socket_path) as client:
        assert (await client.health()).ok
    assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o755


async def test_wrong_peer_uid_is_forbidden(socket_path: Path, app: FakeApp) -> None:
    other = {os.getuid() + 4242}
    async with serving(socket_path, app, allowed_uids=other), ControlClient(socket_path) as client:
        with pytest.raises(ControlError) as info:
            await client.status()
        status, body, closed = await _raw(
            socket_path, b"GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n"
        )
    assert (info.value.code, info.value.status) == ("forbidden", 403)
    assert info.value.message == f"uid {os.getuid()} may not use this control socket"
    assert (status, body["code"], closed) == (403, "forbidden", True)
    assert app.calls == []


# Client errors --------------------------------------------------------------------------


async def test_unreachable_when_nothing_listens(socket_path: Path) -> None:
    async with ControlClient(socket_path) as client:
        with pytest.raises(DaemonUnreachable, match="no lksup daemon is listening"):
            await client.status()


async def test_unreachable_on_a_stale_socket(socket_path: Path) -> None:
    socket_path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(socket_path))
    dead.close()
    async with ControlClient(socket_path) as client:
        with pytest.raises(DaemonUnreachable):
            await client.health()


def test_sync_client_unreachable(socket_path: Path) -> None:
    with SyncControlClient(socket_path) as client, pytest.raises(DaemonUnreachable):
        client.drain()


async def test_partial_request_times_out_with_408(socket_path: Path, app: FakeApp) -> None:
    async with serving(socket_path, app, request_timeout=0.2):
        status, body, _ = await _raw(socket_path, b"GET /v1/status HTTP/1.1\r\nhost: x\r\n")
    assert (status, body["code"]) == (408, "timeout")


async def test_idle_connection_is_closed_after_the_request_timeout(
    socket_path: Path, app: FakeApp
) -> None:
    async with (
        serving(socket_path, app, request_timeout=0.2),
        await anyio.connect_unix(socket_path) as stream,
    ):
        with anyio.fail_after(5):
            assert await _read_all(stream) == b""


async def test_too_long_socket_path_is_refused(sock_dir: Path, app: FakeApp) -> None:
    path = sock_dir / ("x" * 120) / "lksup.sock"
    with pytest.raises(SocketPathError, match="too long"):
        await ControlServer(path, app).run()
    assert not path.parent.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")
async def test_directory_of_another_user_is_refused(socket_path: Path, app: FakeApp) -> None:
    socket_path.parent.mkdir(mode=0o700)
    os.chown(socket_path.parent, 65534, 65534)
    with pytest.raises(UnsafeSocketDirectory, match="owned by uid 65534"):
        await ControlServer(socket_path, app).run()
