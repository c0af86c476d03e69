"""Working without a LiveKit deployment: ``dev-server``, the embedded LiveKit dev server."""

from __future__ import annotations

import functools
import signal

import anyio
import click

from lksup.cli.common import (
    fail,
    main,
)

#: The dev server's default credentials: a documented development constant, not a secret.
DEV_KEYS = "devkey:secret-for-local-development-only"


def _parse_keys(value: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for item in value.split(","):
        key, sep, secret = item.strip().partition(":")
        if not sep or not key.strip() or not secret.strip():
            raise click.BadParameter("expected KEY:SECRET[,KEY:SECRET...]", param_hint="--keys")
        keys[key.strip()] = secret.strip()
    return keys


@main.command("dev-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=7880, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--keys",
    envvar="LKSUP_DEV_KEYS",
    default=DEV_KEYS,
    show_default=True,
    metavar="KEY:SECRET[,...]",
    help="API keys workers and API calls sign with [env: LKSUP_DEV_KEYS].",
)
@click.option(
    "--target-load",
    default=0.7,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="A worker reporting this load or more gets no jobs (the server's agents.target_load).",
)
@click.option(
    "--dispatch-timeout",
    default=3.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds all workers together get to accept a job (the real server's ~3 s).",
)
def dev_server(
    host: str, port: int, keys: str, target_load: float, dispatch_timeout: float
) -> None:
    """Run the embedded LiveKit dev server: the agent protocol and the dispatch API, no media.

    For development, demos and tests without a LiveKit deployment. Workers (lksup, or the
    livekit-agents SDK) connect to ws://HOST:PORT; `lksup dispatch` and livekit-api's
    AgentDispatchService / RoomService.CreateRoom work against it. It behaves like a single-node
    livekit-server for agents: load-based worker choice, the ~3 s answer budget, no queueing.
    It carries no audio or video: agents cannot actually join rooms. Stop it with Ctrl+C.

    \b
    Examples:
      lksup dev-server
      lksup dev-server --port 7881 --keys "devkey:$(openssl rand -hex 24)"
      LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey \\
        LIVEKIT_API_SECRET=secret-for-local-development-only lksup dispatch my-agent --room r1
    """
    from lksup.devserver.main import serve  # lazily: offline commands stay fast

    parsed = _parse_keys(keys)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                try:
                    await tg.start(
                        functools.partial(
                            serve,
                            host,
                            port,
                            parsed,
                            target_load=target_load,
                            dispatch_timeout=dispatch_timeout,
                            announce=click.echo,
                        )
                    )
                except OSError as exc:
                    fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
                async for _ in signals:
                    click.echo("stopping the dev server", err=True)
                    tg.cancel_scope.cancel()
                    break

    anyio.run(run)
