"""Where the read-only health listener listens: ``--http``, else the applied ``supervisor.http``.

The listener itself is ``daemon.health``; this module keeps it on the address the settings
and the applied fleet ask for. An apply or SIGHUP that sets, moves or removes
``supervisor.http`` takes effect at once. At start a port that cannot be bound stops the
daemon; later it is logged and the listener stays off until the next change.
"""

from __future__ import annotations

import logging

import anyio
import anyio.abc

from lksup.control.api import ApplyRequest
from lksup.daemon.app import DaemonApp
from lksup.daemon.health import HealthServer
from lksup.daemon.supervisor import Supervisor
from lksup.errors import LksupError

log = logging.getLogger("lksup.daemon")


def http_of(request: ApplyRequest | None) -> str | None:
    """The ``supervisor.http`` of a fleet about to be applied (normalized document)."""
    if request is None:
        return None
    http = (request.fleet.get("supervisor") or {}).get("http")
    return http if isinstance(http, str) and http else None


async def follow(
    tg: anyio.abc.TaskGroup,
    supervisor: Supervisor,
    app: DaemonApp,
    *,
    override: str | None,
    initial: str | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the listener on ``override`` (``--http``), else on the applied ``supervisor.http``.

    ``initial``: the ``supervisor.http`` of the fleet about to be applied at start. Started
    once the first listener (if any) is bound; the listeners run in ``tg``.
    """
    current: str | None = None
    scope: anyio.CancelScope | None = None
    starting = True
    while True:
        changed = supervisor.change_event()  # before reading: no apply slips past
        fleet = supervisor.fleet
        applied = fleet.supervisor.http if fleet is not None else initial
        wanted = override or applied
        if wanted != current:
            if scope is not None:
                scope.cancel()
                log.info("Health and metrics listener on %s closed", current)
            scope, current = None, wanted
            if wanted:
                try:
                    scope = await tg.start(_serve, wanted, app)
                except LksupError as exc:
                    if starting:
                        raise
                    log.error("%s; the listener stays off until supervisor.http changes", exc)
        if starting:
            starting = False
            task_status.started()
        await changed.wait()


async def _serve(
    address: str,
    app: DaemonApp,
    *,
    task_status: anyio.abc.TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
) -> None:
    host, _, port = address.rpartition(":")
    server = HealthServer(host or "127.0.0.1", int(port), app)
    try:
        listener = await anyio.create_tcp_listener(local_host=server.host, local_port=server.port)
    except OSError as exc:
        raise LksupError(f"cannot listen on {address}: {exc.strerror}") from None
    with anyio.CancelScope() as scope:
        task_status.started(scope)
        await server.serve(listener)
