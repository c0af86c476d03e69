"""``lksup run``: the supervisor in the foreground, from start to its exit status.

Startup order (each step is ready before the next): logging, the embedded dev server (with
``--dev-server``), the shared monitor, the supervisor, the control socket (refuses to start when
another daemon answers on it), then the fleet: the file given, else the last applied one from
the state directory, else none (apply one later).

Signals, only ever turned into intents here:

- first SIGTERM or SIGINT: every agent drains at once against ``supervisor.drain_timeout``;
  exit 0 when the last job ended, 1 when the deadline forced the stop sequence;
- a second SIGTERM or SIGINT: the stop sequence at once, exit 1;
- SIGQUIT: the stop sequence at once, no drain, exit 1;
- SIGHUP: re-apply the last applied source file (templates re-rendered, secrets re-read);
- SIGUSR1: every task's await chain and every thread's stack to the log (``daemon.stacks``).

With ``--http`` or ``supervisor.http`` a read-only listener serves /livez, /readyz,
/readyz/{agent}, /status and /metrics (``daemon.health``).

Under systemd (``NOTIFY_SOCKET``): READY=1 once every agent registered, a STATUS= summary every
few seconds, STOPPING=1 when a drain starts and EXTEND_TIMEOUT_USEC repeated while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from lksup.control.api import ApplyRequest
from lksup.control.server import ControlServer
from lksup.daemon import stacks, state
from lksup.daemon.agent import Environment
from lksup.daemon.app import DaemonApp
from lksup.daemon.health import HealthServer
from lksup.daemon.journal import LogBuffer
from lksup.daemon.notify import Notifier
from lksup.daemon.supervisor import Supervisor
from lksup.errors import LksupError
from lksup.fleet.durations import format_duration
from lksup.fleet.loading import fleet_path, load_fleet
from lksup.fleet.normalize import REVEAL
from lksup.fleet.schema import Fleet
from lksup.logs import JsonFormatter
from lksup.monitors.monitor import Monitor
from lksup.pool.zygote import Zygotes
from lksup.reconcile import render as plan_render

log = logging.getLogger("lksup.daemon")

#: How often systemd gets a STATUS= line (and, while draining, more time).
STATUS_INTERVAL = 5.0

#: The longest a drain goes without a progress line in the log.
PROGRESS_INTERVAL = 10.0

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
    watch: bool = False  # re-apply the fleet file when it changes (``Daemon._watch``)
    watch_interval: float = 1.0
    watch_debounce: float = 0.5
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))


def _http_of(request: ApplyRequest | None) -> str | None:
    """The ``supervisor.http`` of a fleet about to be applied (normalized document)."""
    if request is None:
        return None
    http = (request.fleet.get("supervisor") or {}).get("http")
    return http if isinstance(http, str) and http else None


class Daemon:
    """One run of the supervisor."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.notifier = Notifier(settings.environ)
        self.exit_code = 0
        self._draining = False
        self._forced = False  # a second stop signal forced the stop: exit 1
        self._done = anyio.Event()
        self._reapplying: anyio.CancelScope | None = None  # a SIGHUP re-apply in progress
        self._watched: dict[str, bytes | str] = {}  # ``--watch``: source -> content last tried
        self._log_buffer = LogBuffer()  # ``lksup logs``: the recent records, per agent
        self._running = False  # started: a failure from now on "stopped" it

    def _load(self, path: str, values: dict[str, Any]) -> Fleet:
        loaded = load_fleet(path, values=values, environ=self.settings.environ)
        for warning in loaded.warnings:
            log.warning("%s", warning.format())
        return loaded.fleet

    async def run(self) -> int:
        """Run until a signal ends it; the exit status (see ``_run``).

        Raises:
            LksupError: it cannot start (nothing was applied or persisted then), or it
                stopped because of an error once running ("stopped because ...", logged
                with its traceback).
        """
        try:
            with state.lock(self.settings.state_dir), _kept(self._log_buffer):
                return await self._run()
        except state.StateDirInUse as exc:
            raise LksupError(f"cannot start: {exc}") from None
        except Exception as exc:
            if not self._running:
                raise  # a startup failure says itself (run_daemon, the CLI: "cannot start")
            error = _only_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
            log.error("lksup stopped because of an error.", exc_info=exc)
            raise LksupError(f"stopped because {_describe(error or exc)}") from None

    async def _run(self) -> int:
        settings = self.settings
        base_dir = fleet_path(settings.fleet).parent if settings.fleet else Path.cwd()
        initial = self._initial_fleet()  # an invalid file stops here, before anything started
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
                checker=self._check_source,
                logs=self._log_buffer,
            )
            await tg.start(ControlServer(settings.socket, app).run)
            # every listener is bound before the first apply: a daemon that cannot start
            # has started no agent and persisted nothing
            await tg.start(self._listener, tg, supervisor, app, _http_of(initial))
            tg.start_soon(self._log_file, supervisor)
            if initial is not None:
                await app.apply(initial)
            log.info("lksup is running; control socket %s", settings.socket)
            self._running = True
            tg.start_soon(self._announce_ready, supervisor)
            tg.start_soon(app.observe_forever)
            if self.notifier.enabled:
                tg.start_soon(self._status_loop, supervisor)
            tg.start_soon(self._signals, tg, supervisor, app)
            if settings.watch:
                tg.start_soon(self._watch, app)
            await self._done.wait()
            tg.cancel_scope.cancel()
        return self.exit_code

    async def _log_file(self, supervisor: Supervisor) -> None:
        """Keep a rotated log file as the applied ``supervisor.log_file`` says (each apply).

        A file that cannot be opened is logged, and stdout stays the only log until the next
        change.
        """
        current: tuple[str, int, int] | None = None
        handler: logging.Handler | None = None
        root = logging.getLogger()
        try:
            while True:
                changed = supervisor.change_event()  # before reading: no apply slips past
                fleet = supervisor.fleet
                setting = fleet.supervisor.log_file if fleet is not None else None
                wanted = None
                if setting is not None:
                    path = supervisor.env.base_dir / setting.path
                    wanted = (str(path), setting.max_mb, setting.backups)
                if wanted != current:
                    if handler is not None:
                        root.removeHandler(handler)
                        handler.close()
                        handler = None
                    current = wanted
                    if wanted is not None:
                        handler = _rotating_file(*wanted)
                        if handler is not None:
                            root.addHandler(handler)
                            log.info("logging also to %s", wanted[0])
                await changed.wait()
        finally:
            if handler is not None:
                root.removeHandler(handler)
                handler.close()

    async def _listener(
        self,
        tg: anyio.abc.TaskGroup,
        supervisor: Supervisor,
        app: DaemonApp,
        initial_http: str | None = None,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the read-only listener on ``--http``, else on the applied ``supervisor.http``.

        ``initial_http``: the ``supervisor.http`` of the fleet about to be applied at start.

        An apply or SIGHUP that sets, moves or removes ``supervisor.http`` takes effect at
        once. At start a port that cannot be bound stops the daemon; later it is logged and
        the listener stays off until the next change.
        """
        current: str | None = None
        scope: anyio.CancelScope | None = None
        starting = True
        while True:
            changed = supervisor.change_event()  # before reading: no apply slips past
            fleet = supervisor.fleet
            applied = fleet.supervisor.http if fleet is not None else initial_http
            wanted = self.settings.http or applied
            if wanted != current:
                if scope is not None:
                    scope.cancel()
                    log.info("Health and metrics listener on %s closed", current)
                scope, current = None, wanted
                if wanted:
                    try:
                        scope = await tg.start(self._serve_health, wanted, app)
                    except LksupError as exc:
                        if starting:
                            raise
                        log.error("%s; the listener stays off until supervisor.http changes", exc)
            if starting:
                starting = False
                task_status.started()
            await changed.wait()

    async def _serve_health(
        self,
        address: str,
        app: DaemonApp,
        *,
        task_status: anyio.abc.TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        host, _, port = address.rpartition(":")
        server = HealthServer(host or "127.0.0.1", int(port), app)
        try:
            listener = await anyio.create_tcp_listener(
                local_host=server.host, local_port=server.port
            )
        except OSError as exc:
            raise LksupError(f"cannot listen on {address}: {exc.strerror}") from None
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            await server.serve(listener)

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

    def _initial_fleet(self) -> ApplyRequest | None:
        """The fleet to apply at start: the file given, else the last applied one, else none."""
        settings = self.settings
        source: str | None
        values = settings.values
        if settings.fleet is not None:
            source = str(fleet_path(settings.fleet))
            with contextlib.suppress(OSError):  # the load says why
                # read before loading: a change made meanwhile is one ``--watch`` applies
                self._watched[source] = fleet_path(settings.fleet).read_bytes()
            fleet = self._load(settings.fleet, values)
        else:
            try:
                applied = state.load(settings.state_dir)
            except ValueError as exc:
                log.error("%s", exc)
                return None
            if applied is None:
                log.info("no fleet yet: apply one with `lksup apply FLEET`")
                return None
            fleet, source, values = applied.fleet, applied.source, applied.values
            log.info("resuming the last applied fleet (revision %s)", applied.revision)
        return ApplyRequest(
            fleet=fleet.model_dump(mode="json", by_alias=True, context=REVEAL),
            source=source,
            values=values,
            # at start nothing runs that a bad file could break: each agent reports its own
            # import or reference failure (backoff, reason in status) while the others start
            # at once, instead of all of them waiting for every agent's imports to be checked
            check=False,
        )

    async def _announce_ready(self, supervisor: Supervisor) -> None:
        """READY=1 once every agent's *current* worker is registered.

        An agent restarted or replaced before its first registration counts with its new one;
        an agent drained by the operator is not waited for. A daemon that is stopping never
        announces: its drain drains agents that never registered.
        """
        while not self._draining:
            changed = supervisor.change_event()  # registrations are notified
            slots = list(supervisor.slots.values())
            registered = sum(1 for slot in slots if slot.runtime and slot.runtime.registered)
            drained = sum(1 for slot in slots if slot.override_drained)
            if all(
                slot.override_drained or (slot.runtime is not None and slot.runtime.registered)
                for slot in slots
            ):
                self.notifier.ready(f"{registered} agent(s) registered")
                log.info(
                    "every agent is registered (%d%s)",
                    registered,
                    f"; {drained} drained" if drained else "",
                )
                return
            await changed.wait()

    async def _status_loop(self, supervisor: Supervisor) -> None:
        """STATUS= summaries for systemd; EXTEND_TIMEOUT_USEC again and again while draining."""
        while True:
            await anyio.sleep(STATUS_INTERVAL)
            states: dict[str, int] = {}
            for slot in supervisor.slots.values():
                state_name = supervisor.agent_state(slot)
                states[state_name] = states.get(state_name, 0) + 1
            summary = ", ".join(f"{count} {name}" for name, count in sorted(states.items()))
            jobs = supervisor.running_jobs()
            self.notifier.status(f"{len(supervisor.slots)} agents ({summary}); {jobs} job(s)")
            if self._draining:
                self.notifier.extend_timeout(STATUS_INTERVAL * 3)

    async def _signals(
        self, tg: anyio.abc.TaskGroup, supervisor: Supervisor, app: DaemonApp
    ) -> None:
        wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)
        with anyio.open_signal_receiver(*wanted) as signals:
            async for number in signals:
                sig = signal.Signals(number)
                if (
                    sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
                    and self._reapplying is not None
                ):
                    self._reapplying.cancel()  # a SIGHUP's checks never hold up a stop
                if sig in (signal.SIGTERM, signal.SIGINT) and not self._draining:
                    self._draining = True
                    tg.start_soon(self._drain, supervisor)
                elif sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                    log.warning("%s: stopping every job now", sig.name)
                    self._forced = True  # whatever the drain in progress concludes
                    await supervisor.stop_all(force=True)
                    self.exit_code = 1
                    self._done.set()
                elif sig is signal.SIGHUP:
                    if self._reapplying is not None:
                        log.warning("SIGHUP: a re-apply is already running; ignored")
                    else:
                        self._reapplying = anyio.CancelScope()
                        tg.start_soon(self._reapply_guarded, app, self._reapplying)
                elif sig is signal.SIGUSR1:
                    log.warning("SIGUSR1: what the supervisor is doing now\n%s", stacks.dump())

    async def _drain(self, supervisor: Supervisor) -> None:
        fleet = supervisor.fleet
        timeout = fleet.supervisor.drain_timeout if fleet is not None else 0.0
        deadline = anyio.current_time() + timeout if timeout else None
        self.notifier.stopping(f"draining {supervisor.running_jobs()} job(s)")
        if timeout:
            self.notifier.extend_timeout(timeout + 30)
        finished = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._drain_progress, supervisor, deadline)
            finished = await supervisor.drain_all(timeout or None)
            tg.cancel_scope.cancel()
        if finished:
            log.info("drained: every job finished")
        else:
            log.warning("drain deadline reached: the remaining jobs were stopped")
        await supervisor.stop_all()
        self.exit_code = 0 if finished and not self._forced else 1
        self._done.set()

    async def _drain_progress(self, supervisor: Supervisor, deadline: float | None) -> None:
        """Log the drain's progress: at once, on each change, at least every PROGRESS_INTERVAL.

        The line reads "draining: 3 jobs left on 2 agents, deadline in 29m12s" (the count is
        checked every second).
        """
        last: tuple[int, int] | None = None
        logged_at = 0.0
        while True:
            now = anyio.current_time()
            jobs = supervisor.jobs_by_agent()
            counts = (sum(jobs.values()), sum(1 for count in jobs.values() if count))
            if counts != last or now - logged_at >= PROGRESS_INTERVAL:
                total, agents = counts
                left = (
                    f", deadline in {format_duration(max(0.0, deadline - now))}"
                    if deadline is not None
                    else ", no deadline"
                )
                log.info(
                    "draining: %d job%s left on %d agent%s%s",
                    total,
                    "" if total == 1 else "s",
                    agents,
                    "" if agents == 1 else "s",
                    left,
                )
                last, logged_at = counts, now
            await anyio.sleep(1.0)

    async def _check_source(self, source: str, values: dict[str, Any]) -> str | None:
        """``lksup validate --check-imports`` on ``source`` with ``values``.

        The problems as the command printed them, or None when the file passes.
        """
        self.settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        scratch = str(self.settings.state_dir)
        with (  # 0600 files, removed when done
            tempfile.NamedTemporaryFile(
                "w", suffix=".json", prefix=".sighup-", dir=scratch
            ) as values_file,
            tempfile.TemporaryFile(prefix=".sighup-", dir=scratch) as output,
        ):
            json.dump(values, values_file)
            values_file.flush()
            command = [sys.executable, "-m", "lksup", "validate", "--check-imports", source]
            process = await anyio.open_process(
                [*command, "--values", values_file.name],
                env=self.settings.environ,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: a stop kills the import checks too
            )
            try:
                await process.wait()
            finally:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    with anyio.CancelScope(shield=True):
                        await process.wait()
                await process.aclose()
            output.seek(0)
            text = output.read().decode(errors="replace").strip()
        return None if process.returncode == 0 else text

    async def _reapply_guarded(
        self, app: DaemonApp, scope: anyio.CancelScope, trigger: str = "SIGHUP"
    ) -> None:
        """A re-apply in a task of its own, so signals keep being handled meanwhile.

        Whatever goes wrong is logged, shown by status, and the daemon goes on.
        """
        try:
            with scope:
                await self._reapply(app, trigger)
        except Exception as exc:
            log.exception("%s: the re-apply failed; nothing changed", trigger)
            app.reapply_failed(f"{trigger}: the re-apply failed: {_describe(exc)}")
        finally:
            self._reapplying = None

    async def _reapply(self, app: DaemonApp, trigger: str) -> None:
        """Re-apply the applied fleet file (SIGHUP, or a change seen by ``--watch``).

        It passes the checks ``lksup apply`` runs (imports included) first. Any failure is
        logged, kept for status (``DaemonApp.reapply_failed``) and changes
        nothing; it never stops the daemon.
        """
        source = app.source
        if source is None:
            log.warning("%s: no fleet file to re-apply", trigger)
            return
        if app.supervisor.stopping:
            log.warning("%s: ignored while shutting down", trigger)
            return

        def failed(headline: str, details: str) -> None:
            log.error("%s: %s; nothing changed:\n%s", trigger, headline, details)
            first = details.strip().splitlines()[0] if details.strip() else ""
            app.reapply_failed(f"{trigger}: {headline}" + (f": {first}" if first else ""))

        # rendered with the values it was applied with (by `apply --set`, or `run`), checked
        # like `lksup apply` does: `lksup validate --check-imports` in a child process, which
        # a stop signal kills at once (user code imported in a thread could not be)
        revision = app.revision
        problems = await self._check_source(source, app.values)
        if app.revision != revision:  # an `lksup apply` landed meanwhile: it wins
            log.warning("%s: superseded by an apply during its checks; nothing changed", trigger)
            return
        if problems is not None:
            failed(f"{source} does not pass its checks", problems)
            return
        try:
            fleet = self._load(source, app.values)
        except LksupError as exc:  # changed again since the check
            failed(f"{source} is invalid", str(exc))
            return
        request = ApplyRequest(
            fleet=fleet.model_dump(mode="json", by_alias=True, context=REVEAL),
            source=source,
            values=app.values,
            check=False,  # checked above
        )
        try:
            plan = await app.apply(request)
        except (LksupError, OSError) as exc:  # e.g. it would remove every agent
            failed(f"{source} was not applied", str(exc))
            return
        summary = plan_render.counts(plan["summary"])
        rotated = plan.get("secretsChanged") or []
        if rotated:
            summary += f"; replaced for a changed secret: {', '.join(rotated)}"
        log.info("%s: re-applied %s (%s)", trigger, source, summary)

    async def _watch(self, app: DaemonApp) -> None:
        """``--watch``: re-apply the applied fleet file whenever its content changes.

        The file is read every ``watch_interval`` seconds (a Kubernetes ConfigMap is replaced
        by swapping a ``..data`` symlink, which no single inotify watch sees; polling a small
        file is cheap and sees every kind of update). A change is applied once the content has
        stayed the same for ``watch_debounce`` seconds, so an editor's several writes make one
        apply. Content that failed is not retried until it changes again (or SIGHUP).
        """
        settings = self.settings
        seen = self._watched  # source -> the content last applied or tried
        app.watching = True
        log.info("watching the fleet file for changes (every %gs)", settings.watch_interval)
        while True:
            await anyio.sleep(settings.watch_interval)
            source = app.source
            if source is None or app.supervisor.stopping:
                continue
            content = await _read_quietly(source)
            if source not in seen:
                seen[source] = content  # what was applied from it (at start, or by apply)
                continue
            if content == seen[source] or self._reapplying is not None:
                continue
            while True:  # debounce: until it holds still
                await anyio.sleep(settings.watch_debounce)
                again = await _read_quietly(source)
                if again == content:
                    break
                content = again
            if content == seen[source] or self._reapplying is not None or app.source != source:
                continue
            seen[source] = content
            log.info("watch: %s changed; re-applying", source)
            self._reapplying = anyio.CancelScope()
            await self._reapply_guarded(app, self._reapplying, "watch")


def _rotating_file(path: str, max_mb: int, backups: int) -> logging.Handler | None:
    """A JSON-lines handler rotating ``path`` at ``max_mb``; None (logged) when it cannot."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_mb * 2**20, backupCount=backups, encoding="utf-8"
        )
    except OSError as exc:
        log.error("cannot write the log file %s: %s; logging to stdout only", path, exc)
        return None
    handler.setFormatter(JsonFormatter())
    return handler


@contextlib.contextmanager
def _kept(handler: logging.Handler) -> Iterator[None]:
    """Every record also goes to ``handler`` (the daemon's ``LogBuffer``) while it runs."""
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


async def _read_quietly(path: str) -> bytes | str:
    """The bytes of ``path``, or why it cannot be read (for ``--watch``'s comparisons)."""
    try:
        return await anyio.Path(path).read_bytes()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"


def _describe(error: BaseException) -> str:
    """An error in one line: an OSError says itself; others with their type."""
    if isinstance(error, OSError | LksupError):
        return str(error)
    return f"{type(error).__name__}: {error}"


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
