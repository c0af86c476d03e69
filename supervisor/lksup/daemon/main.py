"""``lksup run``: the supervisor in the foreground, from start to its exit status.

Startup order (each step is ready before the next): the state directory's lock, the fleet file
checked (an invalid one stops the start before anything listens), the embedded dev server
(with ``--dev-server``), the shared monitor, the supervisor, the control socket (refuses to
start when another daemon answers on it), the health listener (``daemon.listener``), then the
fleet: the file given, else the last applied one from the state directory, else none (apply
one later). Every listener is bound before the first apply: a daemon that cannot start has
started no agent and persisted nothing.

Then the loop: signals become intents (``daemon.intents``, received in ``daemon.signals``) and
are carried out here; SIGHUP and ``--watch`` re-apply the fleet file (``daemon.reapply``);
systemd hears of readiness and status (``daemon.notify``); the log file follows the applied
fleet (``daemon.logfile``). The loop ends with a drain (``daemon.drain``: exit 0 when the last
job ended, 1 when its deadline forced the stop sequence) or a forced stop (exit 1).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from lksup.control.server import ControlServer
from lksup.daemon import drain, listener, logfile, reapply, signals, stacks, state
from lksup.daemon.app import DaemonApp
from lksup.daemon.intents import Intent, Phase, phase_after
from lksup.daemon.journal import LogBuffer
from lksup.daemon.notify import STATUS_INTERVAL, Notifier, SystemdReporter
from lksup.daemon.resolve import Environment
from lksup.daemon.supervisor import Supervisor
from lksup.errors import LksupError
from lksup.fleet.loading import fleet_path
from lksup.monitors.monitor import Monitor
from lksup.pool.zygote import Zygotes

log = logging.getLogger("lksup.daemon")

#: The embedded dev server's credentials: a documented development constant, not a secret.
DEV_KEY, DEV_SECRET = "devkey", "secret-for-local-development-only"


@dataclass
class DaemonSettings:
    """What ``lksup run`` was asked to do."""

    socket: Path
    state_dir: Path
    fleet: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    dev: bool = False
    dev_server: str | None = None  # "HOST:PORT", or "" for 127.0.0.1:7880
    http: str | None = None  # "HOST:PORT" of the read-only listener (else supervisor.http)
    watch: bool = False  # re-apply the fleet file when it changes (``Reapplier.watch``)
    watch_interval: float = 1.0
    watch_debounce: float = 0.5
    status_interval: float = STATUS_INTERVAL  # how often systemd gets a STATUS= line
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))


class Daemon:
    """One run of the supervisor."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.phase = Phase.RUNNING
        self.systemd = SystemdReporter(
            Notifier(settings.environ),
            draining=lambda: self.phase is Phase.DRAINING,
            status_interval=settings.status_interval,
        )
        self.reapplier = reapply.Reapplier(
            check=functools.partial(
                reapply.check_source, scratch_dir=settings.state_dir, environ=settings.environ
            ),
            environ=settings.environ,
            watch_interval=settings.watch_interval,
            watch_debounce=settings.watch_debounce,
        )
        self.exit_code = 0
        self._forced = False  # a second stop signal forced the stop: exit 1
        self._done = anyio.Event()
        self._log_buffer = LogBuffer()  # ``lksup logs``: the recent records, per agent
        self._running = False  # started: a failure from now on "stopped" it

    async def run(self) -> int:
        """Run until a signal ends it; the exit status (see ``_run``).

        Raises:
            LksupError: it cannot start (nothing was applied or persisted then), or it
                stopped because of an error once running ("stopped because ...", logged
                with its traceback).
        """
        try:
            with state.lock(self.settings.state_dir), logfile.kept(self._log_buffer):
                return await self._run()
        except state.StateDirInUse as exc:
            raise LksupError(f"cannot start: {exc}") from None
        except Exception as exc:
            if not self._running:
                raise  # a startup failure says itself (run_daemon, the CLI: "cannot start")
            error = _only_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
            log.error("lksup stopped because of an error.", exc_info=exc)
            raise LksupError(f"stopped because {reapply.describe(error or exc)}") from None

    async def _run(self) -> int:
        settings = self.settings
        base_dir = fleet_path(settings.fleet).parent if settings.fleet else Path.cwd()
        # an invalid file stops here, before anything started
        initial = self.reapplier.initial(settings.fleet, settings.values, settings.state_dir)
        async with anyio.create_task_group() as tg:
            env = Environment(environ=settings.environ, base_dir=base_dir)
            if settings.dev_server is not None:
                env = await self._start_dev_server(tg, env)
            monitor = Monitor()
            await tg.start(monitor.run)
            learned = state.load_learned_plugins(settings.state_dir)

            def remember(modules: list[str]) -> None:
                try:
                    state.save_learned_plugins(settings.state_dir, modules)
                except OSError as exc:
                    log.warning("Cannot keep the learned plugins in the state directory: %s", exc)

            zygotes = Zygotes(learned=learned, on_learned=remember, monitor=monitor)
            supervisor = Supervisor(env, monitor, zygotes=zygotes)
            await tg.start(supervisor.run)
            app = DaemonApp(
                supervisor,
                settings.state_dir,
                dev=settings.dev,
                checker=self.reapplier.check,
                logs=self._log_buffer,
            )
            await tg.start(ControlServer(settings.socket, app).run)
            # every listener is bound before the first apply: a daemon that cannot start
            # has started no agent and persisted nothing
            await tg.start(
                functools.partial(
                    listener.follow,
                    tg,
                    supervisor,
                    app,
                    override=settings.http,
                    initial=listener.http_of(initial),
                )
            )
            tg.start_soon(logfile.follow, supervisor)
            if initial is not None:
                await app.apply(initial)
            log.info("lksup is running; control socket %s", settings.socket)
            self._running = True
            tg.start_soon(self.systemd.announce_ready, supervisor)
            tg.start_soon(app.observe_forever)
            if self.systemd.notifier.enabled:
                tg.start_soon(self.systemd.report_status, supervisor)
            handle = functools.partial(self._carry_out, tg, supervisor, app)
            await tg.start(signals.receive, handle, lambda: self.phase)
            if settings.watch:
                tg.start_soon(self.reapplier.watch, app)
            await self._done.wait()
            tg.cancel_scope.cancel()
        return self.exit_code

    async def _carry_out(
        self,
        tg: anyio.abc.TaskGroup,
        supervisor: Supervisor,
        app: DaemonApp,
        intent: Intent,
        signal: str,
    ) -> None:
        """Act on the intent of ``signal`` (``daemon.intents`` says which)."""
        if intent.stops:
            self.reapplier.cancel()  # a SIGHUP's checks never hold up a stop
        self.phase = phase_after(intent, self.phase)
        if intent is Intent.DRAIN:
            tg.start_soon(self._drain, supervisor)
        elif intent is Intent.STOP_NOW:
            log.warning("%s: stopping every job now", signal)
            self._forced = True  # whatever the drain in progress concludes
            await supervisor.stop_all(force=True)
            self.exit_code = 1
            self._done.set()
        elif intent is Intent.REAPPLY:
            self.reapplier.request(tg, app, signal)
        elif intent is Intent.DUMP_STACKS:
            log.warning("%s: what the supervisor is doing now\n%s", signal, stacks.dump())

    async def _drain(self, supervisor: Supervisor) -> None:
        finished = await drain.drain_and_stop(supervisor, self.systemd)
        self.exit_code = 0 if finished and not self._forced else 1
        self._done.set()

    async def _start_dev_server(self, tg: anyio.abc.TaskGroup, env: Environment) -> Environment:
        from lksup.devserver.server import DevServer  # only when asked for

        host, _, port = (self.settings.dev_server or "127.0.0.1:7880").rpartition(":")
        host, port = host or "127.0.0.1", port or "7880"
        server = DevServer({DEV_KEY: DEV_SECRET}, host=host, port=int(port))
        try:
            await tg.start(server.run)
        except OSError as exc:
            raise LksupError(
                f"cannot start the dev server on {host}:{port}: {exc.strerror}"
            ) from None
        log.info("dev server listening on %s (API key %s; no media)", server.url, DEV_KEY)
        return Environment(
            environ=env.environ,
            base_dir=env.base_dir,
            default_url=server.url,
            default_api_key=DEV_KEY,
            default_api_secret=DEV_SECRET,
        )


def _only_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one real error in a task group's exception group (cancellations aside), if one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, asyncio.CancelledError):  # run_daemon runs on asyncio
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


#: The soft descriptor limit asked for when the hard one is unlimited (the kernel's usual cap).
_UNLIMITED_NOFILE = 1_048_576


def raise_descriptor_limit() -> None:
    """Raise the soft limit on open descriptors to the hard one, as most servers do.

    Every job process, template and connection costs the supervisor descriptors, and the
    common soft default of 1,024 is reached by a fleet long before the hard limit.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, _UNLIMITED_NOFILE)
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError) as exc:  # a container may forbid it: run with what there is
        log.warning("Cannot raise the open-descriptor limit: %s.", exc)


def run_daemon(settings: DaemonSettings) -> int:
    """Run the daemon on the asyncio backend; the exit status.

    A startup failure (an invalid fleet, another daemon on the socket, a port in use) is
    raised as itself, not wrapped in the task group's exception group, so the CLI can say it
    in one line.
    """
    raise_descriptor_limit()
    try:
        return anyio.run(Daemon(settings).run)
    except BaseExceptionGroup as group:
        error = _only_error(group)
        if error is None:
            raise
        raise error from None
