"""``serve``: the entry point of the future ``lksup dev-server`` command."""

from __future__ import annotations

from functools import partial

import anyio
import httpx
import pytest

from lksup.devserver import DevServer, serve
from lksup.devserver.main import NOTE

from .helpers import KEY, SECRET, WAIT, running_server, worker

pytestmark = pytest.mark.anyio


async def test_serve_announces_url_and_key_but_never_the_secret() -> None:
    lines: list[str] = []
    async with anyio.create_task_group() as tg:
        run = partial(serve, "127.0.0.1", 0, {KEY: SECRET}, announce=lines.append)
        server: DevServer = await tg.start(run)
        (banner,) = lines
        assert server.url in banner
        assert KEY in banner
        assert NOTE in banner
        assert SECRET not in banner
        async with httpx.AsyncClient() as client:
            response = await client.get(server.url.replace("ws://", "http://") + "/")
        assert response.text == "OK"
        tg.cancel_scope.cancel()


def test_keys_are_required() -> None:
    with pytest.raises(ValueError, match="API key"):
        DevServer({})
    with pytest.raises(ValueError, match="negative"):
        DevServer({KEY: SECRET}, dispatch_timeout=-1)


async def test_claim_delay_comes_before_the_first_offer() -> None:
    async with running_server(claim_delay=0.1) as server, worker(server) as w:
        await w.register("c")
        start = anyio.current_time()
        await server.create_dispatch("room-claim", "c")
        with anyio.fail_after(WAIT):
            await w.expect("availability")
        assert anyio.current_time() - start >= 0.1
