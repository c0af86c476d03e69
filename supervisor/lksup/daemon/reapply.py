"""The fleet file of ``lksup run``: applied at start, re-applied on SIGHUP and ``--watch``.

At start the file given is applied, else the last applied fleet from the state directory
(``Reapplier.initial``), unchecked: each agent reports its own import failure.

A re-apply renders the applied source again with the values it was applied with, passes the
checks ``lksup apply`` runs (``lksup validate --check-imports`` in a child process group, with
the daemon's environment: user code that hangs at import is killed with the group, never held
in a thread), loads it and applies it. Invariants:

- at most one re-apply runs at a time; a SIGHUP meanwhile is logged and ignored, and a watched
  change waits for the next look;
- a re-apply runs in a task of its own, so signals keep being handled, and a stop cancels it
  (``Reapplier.cancel``);
- an ``lksup apply`` that lands during the checks wins (the revision changed): nothing is
  applied;
- any failure is logged, kept for status (``DaemonApp.reapply_failed``) and changes nothing;
  it never stops the daemon;
- nothing is re-applied once the supervisor is stopping.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
from watchfiles._rust_notify import RustNotify

from lksup.control.api import ApplyRequest
from lksup.daemon import state
from lksup.errors import LksupError
from lksup.fleet.loading import fleet_path, load_fleet
from lksup.fleet.normalize import REVEAL
from lksup.fleet.schema import Fleet
from lksup.reconcile import render as plan_render

log = logging.getLogger("lksup.daemon")

#: The longest a burst of changes is grouped before the file is looked at (milliseconds).
_GROUP_MS = 5000

#: Runs apply's checks on a fleet file with template values: the problems, or None.
Checker = Callable[[str, dict[str, Any]], Awaitable[str | None]]


class _Stopping(Protocol):
    @property
    def stopping(self) -> bool:
        """Whether a coordinated drain or stop began."""
        ...

    def change_event(self) -> anyio.Event:
        """The event the next change (an apply included) sets."""
        ...


class Target(Protocol):
    """What a re-apply reads and changes: the daemon's ``DaemonApp`` (a fake in tests)."""

    watching: bool
    """``--watch`` is on (status shows it)."""

    @property
    def source(self) -> str | None:
        """The applied fleet file, if the fleet came from one."""
        ...

    @property
    def values(self) -> dict[str, Any]:
        """The template values ``source`` was applied with."""
        ...

    @property
    def revision(self) -> str | None:
        """The applied revision (changed by every apply)."""
        ...

    @property
    def supervisor(self) -> _Stopping:
        """The supervisor the fleet runs on."""
        ...

    async def apply(self, request: ApplyRequest) -> dict[str, Any]:
        """Apply ``request``; the plan document."""
        ...

    def reapply_failed(self, reason: str) -> None:
        """Keep ``reason`` for status: the latest re-apply changed nothing."""
        ...


def load(path: str, values: dict[str, Any], environ: Mapping[str, str]) -> Fleet:
    """The fleet of ``path`` rendered with ``values``; its warnings logged."""
    loaded = load_fleet(path, values=values, environ=environ)
    for warning in loaded.warnings:
        log.warning("%s", warning.format())
    return loaded.fleet


async def check_source(
    source: str, values: dict[str, Any], *, scratch_dir: Path, environ: Mapping[str, str]
) -> str | None:
    """``lksup validate --check-imports`` on ``source`` with ``values``, in a child process.

    The problems as the command printed them, or None when the file passes. The child runs in
    its own process group, killed whole when the check is cancelled.
    """
    scratch_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = str(scratch_dir)
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
            env=dict(environ),
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


def describe(error: BaseException) -> str:
    """An error in one line: an OSError says itself; others with their type."""
    if isinstance(error, OSError | LksupError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class Reapplier:
    """Re-applies the daemon's source file (``Target.source``), one re-apply at a time."""

    def __init__(
        self,
        *,
        check: Checker,
        environ: Mapping[str, str],
        watch_interval: float = 1.0,
        watch_debounce: float = 0.5,
    ) -> None:
        self.check = check
        self.environ = environ
        self.watch_interval = watch_interval
        self.watch_debounce = watch_debounce
        self.watched: dict[str, bytes | str] = {}
        """``--watch``: source -> the content last applied or tried."""
        self._running: anyio.CancelScope | None = None  # the re-apply in progress
        self._finished = anyio.Event()  # set (and replaced) when a re-apply ends

    def initial(
        self, fleet: str | None, values: dict[str, Any], state_dir: Path
    ) -> ApplyRequest | None:
        """The fleet to apply at start: the file given, else the last applied one, else none.

        Raises:
            LksupError: the file given is invalid (nothing has started yet).
        """
        source: str | None
        if fleet is not None:
            source = str(fleet_path(fleet))
            with contextlib.suppress(OSError):  # the load says why
                # read before loading: a change made meanwhile is one ``--watch`` applies
                self.watched[source] = fleet_path(fleet).read_bytes()
            loaded = load(fleet, values, self.environ)
        else:
            try:
                applied = state.load(state_dir)
            except ValueError as exc:
                log.error("%s", exc)
                return None
            if applied is None:
                log.info("no fleet yet: apply one with `lksup apply FLEET`")
                return None
            loaded, source, values = applied.fleet, applied.source, applied.values
            log.info("resuming the last applied fleet (revision %s)", applied.revision)
        return ApplyRequest(
            fleet=loaded.model_dump(mode="json", by_alias=True, context=REVEAL),
            source=source,
            values=values,
            # at start nothing runs that a bad file could break: each agent reports its own
            # import or reference failure (backoff, reason in status) while the others start
            # at once, instead of all of them waiting for every agent's imports to be checked
            check=False,
        )

    @property
    def running(self) -> bool:
        """Whether a re-apply is in progress."""
        return self._running is not None

    def cancel(self) -> None:
        """Cancel the re-apply in progress, if any (a stop signal: its checks never hold it up)."""
        if self._running is not None:
            self._running.cancel()

    def request(self, tg: anyio.abc.TaskGroup, app: Target, trigger: str = "SIGHUP") -> None:
        """Start a re-apply in a task of ``tg``, unless one is running (then say so)."""
        if self._running is not None:
            log.warning("%s: a re-apply is already running; ignored", trigger)
            return
        self._running = anyio.CancelScope()
        tg.start_soon(self._guarded, app, self._running, trigger)

    async def _guarded(self, app: Target, scope: anyio.CancelScope, trigger: str) -> None:
        """A re-apply whose failure of any kind is logged and shown by status."""
        try:
            with scope:
                await self.reapply(app, trigger)
        except Exception as exc:
            log.exception("%s: the re-apply failed; nothing changed", trigger)
            app.reapply_failed(f"{trigger}: the re-apply failed: {describe(exc)}")
        finally:
            self._running = None
            finished, self._finished = self._finished, anyio.Event()
            finished.set()

    async def reapply(self, app: Target, trigger: str) -> None:
        """Re-apply ``app``'s fleet file now (see the module's invariants)."""
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
        problems = await self.check(source, app.values)
        if app.revision != revision:  # an `lksup apply` landed meanwhile: it wins
            log.warning("%s: superseded by an apply during its checks; nothing changed", trigger)
            return
        if problems is not None:
            failed(f"{source} does not pass its checks", problems)
            return
        try:
            fleet = load(source, app.values, self.environ)
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

    async def watch(self, app: Target) -> None:
        """``--watch``: re-apply the applied fleet file whenever its content changes.

        The folders of the file and of what it links to are watched (inotify, through
        ``watchfiles``; where the kernel cannot, the file system is polled every
        ``watch_interval`` seconds): a Kubernetes ConfigMap is replaced by swapping a ``..data``
        symlink in the file's folder, which a watch of the file alone never sees. Whatever
        changes there, the file is read and compared with what was applied or tried: a change
        is applied once the folder has been quiet for ``watch_debounce`` seconds, so an
        editor's several writes make one apply, and content that failed is not tried again
        until it changes (or SIGHUP). When an ``lksup apply`` makes another file the applied
        one, that file is watched instead.
        """
        app.watching = True
        log.info("watching the fleet file for changes")
        while True:
            changed = app.supervisor.change_event()  # before reading: no apply slips past
            source = app.source
            if source is None:
                await changed.wait()
                continue
            await self._watch_file(app, source)

    async def _watch_file(self, app: Target, source: str) -> None:
        """Follow ``source`` until another file is the applied one."""
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow, app, source, stop)
            try:
                while True:
                    changed = app.supervisor.change_event()
                    if app.source != source:
                        break
                    await changed.wait()
            finally:
                stop.set()  # the watching thread ends at its next step (a cancel included)

    async def _follow(self, app: Target, source: str, stop: anyio.Event) -> None:
        polling = False
        while not stop.is_set():
            folders = watched_folders(source)
            try:
                # watching starts here, before the first look: no change slips in between
                watcher = RustNotify(
                    list(folders),
                    False,  # debug
                    polling,  # force_polling
                    max(1, round(self.watch_interval * 1000)),  # poll_delay_ms
                    False,  # recursive
                    False,  # ignore_permission_denied
                )
            except OSError as exc:
                if not polling:  # no inotify here (or no watch left): poll instead
                    log.warning("watch: cannot watch %s (%s); polling it", source, exc)
                    polling = True
                    continue
                log.warning("watch: cannot watch %s (%s); trying again", source, exc)
                with anyio.move_on_after(self.watch_interval):  # a retry delay, or stopped
                    await stop.wait()
                continue
            with watcher:
                await self._look(app, source)
                while watched_folders(source) == folders:
                    step = max(1, round(self.watch_debounce * 1000))
                    result = await anyio.to_thread.run_sync(watcher.watch, _GROUP_MS, step, 0, stop)
                    if result == "stop":
                        return
                    await self._look(app, source)
                # it links elsewhere now (a ConfigMap update): watch there

    async def _look(self, app: Target, source: str) -> None:
        """Apply ``source`` if its content is not what was applied or tried from it."""
        while self._running is not None:  # a SIGHUP's re-apply: then look again
            await self._finished.wait()
        if app.supervisor.stopping or app.source != source:
            return
        content = await read_quietly(source)
        seen = self.watched
        if source not in seen:
            seen[source] = content  # what was applied from it (at start, or by apply)
            return
        if content == seen[source]:
            return
        seen[source] = content
        log.info("watch: %s changed; re-applying", source)
        self._running = anyio.CancelScope()
        await self._guarded(app, self._running, "watch")


def watched_folders(source: str) -> tuple[str, ...]:
    """The folder of ``source`` and the folder of the file it resolves to (symlinks)."""
    path = Path(source)
    folders = [path.parent, path.resolve().parent]
    return tuple(dict.fromkeys(str(folder) for folder in folders))


async def read_quietly(path: str) -> bytes | str:
    """The bytes of ``path``, or why it cannot be read (for ``--watch``'s comparisons)."""
    try:
        return await anyio.Path(path).read_bytes()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"
