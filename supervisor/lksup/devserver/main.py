"""Running the dev server as a service of its own (the future ``lksup dev-server`` command).

``serve`` starts a ``DevServer``, hands a banner (URL, API key, and the reminder that this is
a development server without media) to ``announce`` once the port is bound, and serves until
cancelled. The banner never contains a secret.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import anyio
import anyio.abc

from lksup.devserver.server import DevServer

NOTE = "Development server: agent protocol and dispatch API only, no media."


def banner(url: str, api_key: str) -> str:
    """The lines to show when the server is up."""
    return f"LiveKit dev server listening on {url}\n  API key: {api_key}\n  {NOTE}"


async def serve(
    host: str,
    port: int,
    keys: Mapping[str, str],
    *,
    target_load: float = 0.7,
    dispatch_timeout: float = 3.0,
    claim_delay: float = 0.2,
    region: str = "",
    announce: Callable[[str], None] | None = None,
    task_status: anyio.abc.TaskStatus[DevServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; report the running ``DevServer`` through ``task_status``.

    Raises:
        ValueError: no keys (see ``DevServer``).
        OSError: the address cannot be bound.
    """
    server = DevServer(
        keys,
        host=host,
        port=port,
        target_load=target_load,
        dispatch_timeout=dispatch_timeout,
        claim_delay=claim_delay,
        region=region,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        if announce is not None:
            announce(banner(server.url, next(iter(keys))))
        task_status.started(server)
