"""Templates (zygotes), seen from the supervisor: job processes forked, not spawned.

``lksup.jobs.zygote`` describes the tree (a base template per interpreter, an agent template per
agent, job processes forked from it). Here:

* ``TemplateProcess`` is a ``JobProcessHandle`` whose first message is ``ZygoteStart`` (a spawned
  template) or none (a template forked with its request), whose ``Ready`` is ``ZygoteReady``,
  and which answers fork requests. It inherits everything a job process has: output and log
  forwarding with secrets masked, pings (an unresponsive template is killed), the stop sequence,
  reaping.
* ``ForkedProcess`` is the ``ProcessHandle`` of a forked child: its stdout and stderr are
  socketpairs the supervisor made, signals go through the pidfd the template sent (never a pid
  that could have been reused), and its exit status comes from the template that reaps it. If
  that template is gone, the pidfd still tells when the child ended (status then unknown).
* ``Zygotes`` keeps the fleet's templates: one base per interpreter, started on first use
  and restarted after it dies (a new base serves new agent templates); one template per agent
  and configuration, forked from the base, or spawned with the agent's environment when the
  agent opts out of sharing (``process_start: isolated``). It is a ``Launcher`` for the pool:
  starting the agent's template is part of starting its first process, so an import error or
  a crashed template is that agent's init failure (backoff, reason in status), never another
  agent's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from lksup.jobs import ipc
from lksup.jobs.sockio import SocketReceiver, receive_fds
from lksup.monitors.memory_policy import MemoryPolicy
from lksup.monitors.monitor import Monitor
from lksup.pool.process import (
    InitFailed,
    JobProcessHandle,
    ProcessHandle,
    ProcessSpec,
    ProcessState,
    describe_exit,
    initialize_message,
)

__all__ = [
    "DEFAULT_PRELOAD",
    "LOCAL_MODELS",
    "PRELOAD_VARIABLE",
    "ForkedProcess",
    "TemplateProcess",
    "Zygotes",
    "forking_supported",
]

log = logging.getLogger("lksup.zygote")
_signals = signal  # methods below take a parameter named ``signal``, as anyio's Process does

#: What the base template imports when installed: the SDK and its realtime package, and the
#: SDK's own warm-up (the rtc library, av, its SSL context), without its local models.
DEFAULT_PRELOAD = ("livekit.agents", "livekit.rtc", "livekit.agents.ipc._preload")
#: livekit-agents' switch for preloading its local inference models in every process image.
PRELOAD_VARIABLE = "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE"
#: Imported by the base once a job was seen using the SDK's local models: it loads them.
LOCAL_MODELS = "lksup.jobs.sdk.localmodels"
_FALSY = ("0", "false", "no", "off")
#: The name templates' memory is watched under (never an agent's name).
TEMPLATE_OWNER = "(template)"
_NO_LIMIT = MemoryPolicy(warn_mb=0, limit_mb=0)
#: The least time a template gets to import (its agent's initialize_process_timeout if longer).
TEMPLATE_INIT_TIMEOUT = 60.0
#: How long a fork request may take before the template is deemed stuck.
FORK_TIMEOUT = 10.0
#: After a forked child's pidfd says it ended, how long to wait for its template's report.
EXIT_REPORT_TIMEOUT = 1.0
#: How long a template being stopped waits for the processes forked from it to end.
CHILDLESS_TIMEOUT = 30.0
#: The exit status of a child whose template is gone (it cannot be known).
UNKNOWN_EXIT = 255


class ForkedProcess:
    """A process forked by a template (a ``ProcessHandle``)."""

    def __init__(
        self,
        pid: int,
        pidfd: int,
        stdout: SocketReceiver,
        stderr: SocketReceiver,
        template: TemplateProcess,
    ) -> None:
        self._pid = pid
        self._pidfd = pidfd
        self._stdout = stdout
        self._stderr = stderr
        self._template = template
        self._returncode: int | None = None
        self._reported = anyio.Event()

    @property
    def pid(self) -> int:
        """The process id."""
        return self._pid

    @property
    def returncode(self) -> int | None:
        """The exit status once known."""
        return self._returncode

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream | None:
        """The process's standard output (a socketpair)."""
        return self._stdout

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream | None:
        """The process's standard error (a socketpair)."""
        return self._stderr

    def exited(self, returncode: int) -> None:
        """The template reaped it."""
        if self._returncode is None:
            self._returncode = returncode
        self._reported.set()

    async def wait(self) -> int:
        """Wait for the exit; its status (``UNKNOWN_EXIT`` when its template is gone)."""
        if self._returncode is not None:
            return self._returncode
        async with anyio.create_task_group() as tg:

            async def ended() -> None:
                await anyio.wait_readable(self._pidfd)  # a pidfd is readable once it ended
                if self._template.alive:  # its report is on the way
                    with anyio.move_on_after(EXIT_REPORT_TIMEOUT):
                        await self._reported.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(ended)
            await self._reported.wait()
            tg.cancel_scope.cancel()
        if self._returncode is None:
            log.warning(
                "Process %s ended; its exit status is unknown (its template is gone).", self._pid
            )
            self._returncode = UNKNOWN_EXIT
        return self._returncode

    def send_signal(self, signal: _signals.Signals) -> None:
        """Signal it through its pidfd."""
        if self._returncode is None and self._pidfd >= 0:
            _signals.pidfd_send_signal(self._pidfd, signal)

    def kill(self) -> None:
        """SIGKILL it."""
        self.send_signal(_signals.SIGKILL)

    async def aclose(self) -> None:
        """Close the pidfd and the output streams."""
        if self._pidfd >= 0:
            with contextlib.suppress(OSError):
                anyio.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        await self._stdout.aclose()
        await self._stderr.aclose()


class TemplateProcess(JobProcessHandle):
    """One template (see the module docstring)."""

    def __init__(
        self,
        spec: ProcessSpec,
        start: ipc.ZygoteStart | None,
        *,
        launcher: _ForkLauncher | None = None,
    ) -> None:
        super().__init__(spec, launcher=launcher)
        self._start = start
        self.zygote: ipc.ZygoteReady | None = None
        self.children: dict[int, ForkedProcess] = {}
        self._ids = itertools.count(1)
        self._pending: dict[str, tuple[anyio.Event, list[ipc.Forked]]] = {}
        self._fds: list[int] = []
        self._pidfds: dict[str, int] = {}
        self._fork_lock = anyio.Lock()
        self._childless = anyio.Event()
        self._early_exits: dict[int, int] = {}
        self.generation = 0

    def __repr__(self) -> str:
        return f"TemplateProcess({self.spec.agent_name}, pid={self.pid}, {self.state.value})"

    def _command(self, fd: int) -> list[str]:
        return ipc.launch_command(self.spec.python, "lksup.jobs.zygote", "--ipc-fd", str(fd))

    def _first_message(self) -> ipc.ParentMessage | None:
        return self._start

    # --- the control stream carries descriptors -------------------------------------------------

    async def _receive(self) -> bytes:
        assert self._stream is not None
        try:
            data, fds = await receive_fds(self._stream.extra(SocketAttribute.raw_socket))
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        self._fds.extend(fds)
        if not data:
            raise anyio.EndOfStream
        return data

    def _on_message(self, message: ipc.Message) -> None:
        if isinstance(message, ipc.ZygoteReady):
            self.zygote = message
            ready = ipc.Ready(
                pid=message.pid, error=message.error, init_seconds=message.init_seconds
            )
            super()._on_message(ready)
        elif isinstance(message, ipc.Forked):
            pidfd = self._fds.pop(0) if message.pid and self._fds else -1
            waiter = self._pending.get(message.request_id)
            if waiter is None:
                if pidfd >= 0:
                    os.close(pidfd)
                return
            event, box = waiter
            box.append(dataclasses.replace(message, pid=message.pid if pidfd >= 0 else 0))
            self._pidfds[message.request_id] = pidfd
            event.set()
        elif isinstance(message, ipc.Exited):
            child = self.children.pop(message.pid, None)
            if child is not None:
                child.exited(message.returncode)
            else:  # ended before ``fork`` registered it (both frames in one read)
                self._early_exits[message.pid] = message.returncode
            if not self.children:
                self._childless.set()
        else:
            super()._on_message(message)

    # --- forks ------------------------------------------------------------------------------

    async def fork(
        self, request: ipc.ForkJob | ipc.ForkTemplate, control: socket.socket
    ) -> ForkedProcess:
        """Fork a child that talks on ``control``; its handle (raises ``InitFailed``)."""
        if self.state is not ProcessState.READY or self._stream is None:
            raise InitFailed(f"its template is {self.state.value}")
        out_parent, out_child = socket.socketpair()
        err_parent, err_child = socket.socketpair()
        try:
            async with self._fork_lock:
                forked = await self._request(request, [control, out_child, err_child])
        except BaseException:
            out_parent.close()
            err_parent.close()
            raise
        finally:
            out_child.close()
            err_child.close()
        pid, pidfd = forked
        child = ForkedProcess(
            pid, pidfd, SocketReceiver(out_parent), SocketReceiver(err_parent), self
        )
        if pid in self._early_exits:
            child.exited(self._early_exits.pop(pid))
        else:
            self.children[pid] = child
        return child

    async def _request(
        self, request: ipc.ForkJob | ipc.ForkTemplate, fds: Sequence[socket.socket]
    ) -> tuple[int, int]:
        assert self._stream is not None
        event: anyio.Event = anyio.Event()
        box: list[ipc.Forked] = []
        self._pending[request.request_id] = (event, box)
        try:
            try:
                async with self._send_lock:  # one writer at a time on the control stream
                    await self._stream.send_fds(ipc.encode(request), [s.fileno() for s in fds])
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise InitFailed(f"its template is gone ({exc})") from None
            with anyio.move_on_after(FORK_TIMEOUT):
                async with anyio.create_task_group() as tg:

                    async def gone() -> None:
                        await self.wait_exited()
                        tg.cancel_scope.cancel()

                    tg.start_soon(gone)
                    await event.wait()
                    tg.cancel_scope.cancel()
        finally:
            self._pending.pop(request.request_id, None)
            if not self._pending and not self.children:
                self._childless.set()
        if not box:
            if self.alive:
                raise InitFailed(f"its template did not fork within {FORK_TIMEOUT:g}s")
            raise InitFailed(f"its template ended ({describe_exit(self.exit_code)})")
        answer = box[0]
        pidfd = self._pidfds.pop(request.request_id, -1)
        if answer.error or not answer.pid:
            raise InitFailed(f"its template could not fork: {answer.error or 'no pidfd'}")
        return answer.pid, pidfd

    async def wait_childless(self) -> None:
        """Wait until no process forked from this template is running (or being forked)."""
        while (self.children or self._pending) and self.alive:
            self._childless = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def gone() -> None:
                    await self.wait_exited()
                    tg.cancel_scope.cancel()

                tg.start_soon(gone)
                await self._childless.wait()
                tg.cancel_scope.cancel()

    def next_id(self) -> str:
        """A fresh request id."""
        return f"fork-{next(self._ids)}"

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[JobProcessHandle] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """As ``JobProcessHandle.run``; descriptors nobody took are closed at the end."""
        try:
            await super().run(task_status=task_status)
        finally:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
            for pidfd in self._pidfds.values():
                if pidfd >= 0:
                    os.close(pidfd)
            self._pidfds.clear()


@dataclass
class _ForkLauncher:
    """Launches a process by asking ``template`` to fork it with ``request``."""

    template: TemplateProcess
    request: ipc.ForkTemplate | None = None  # None: a job process

    async def launch(self, process: JobProcessHandle, child: socket.socket) -> ProcessHandle:
        request: ipc.ForkJob | ipc.ForkTemplate
        if self.request is None:
            request = ipc.ForkJob(request_id=self.template.next_id())
        else:
            request = dataclasses.replace(self.request, request_id=self.template.next_id())
        return await self.template.fork(request, child)


class Zygotes:
    """The fleet's templates, and the ``Launcher`` of every forking agent's job processes."""

    def __init__(
        self,
        *,
        preload: Sequence[str] = (),
        defaults: bool = True,
        learned: Sequence[str] = (),
        on_learned: Callable[[list[str]], None] | None = None,
        log_level: str = "INFO",
        monitor: Monitor | None = None,
    ) -> None:
        self.log_level = log_level
        self.monitor = monitor
        self.learned: set[str] = set(learned)
        self.unforkable: dict[tuple[object, ...], str] = {}
        """Templates (by key) whose prewarm was found unsafe to fork, and why."""
        self.on_learned = on_learned
        self._configured: tuple[str, ...] = ()
        self._defaults = True
        self._sdk = True
        self._retiring: set[TemplateProcess] = set()
        self.preload: tuple[str, ...] = ()
        self.generation = 0
        """Bumped when the preload changes: templates of an older one are replaced."""
        self.configure(preload=preload, defaults=defaults)
        self.bases: dict[str, TemplateProcess] = {}
        self.templates: dict[tuple[object, ...], TemplateProcess] = {}
        self._users: dict[tuple[object, ...], int] = {}
        self._launchers: dict[tuple[object, ...], list[ZygoteLauncher]] = {}
        self._locks: dict[object, anyio.Lock] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the templates until cancelled (``aclose`` stops them first)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    async def aclose(self) -> None:
        """Stop every template once what was forked from it ended (agent templates first)."""
        self._closed = True
        templates = [*self.templates.values(), *(t for t in self._retiring if t.launcher)]
        bases = [*self.bases.values(), *(t for t in self._retiring if not t.launcher)]
        for generation in (templates, bases):
            async with anyio.create_task_group() as tg:
                for template in generation:
                    tg.start_soon(_stop_when_childless, template, "supervisor stopping")

    def configure(self, *, preload: Sequence[str], defaults: bool, sdk: bool = True) -> None:
        """What the base template imports.

        ``preload``: ``supervisor.preload`` and the agents' own; ``defaults``: also what is
        worth sharing (the SDK and its warm-up when ``sdk``, a livekit-agents agent being in
        the fleet, and what agent templates were seen importing).
        """
        self._configured = tuple(dict.fromkeys(preload))
        self._defaults = defaults
        self._sdk = sdk
        self._update()

    def _update(self) -> None:
        wanted = list(self._configured)
        if self._defaults:
            defaults = DEFAULT_PRELOAD if self._sdk else ()
            wanted = [*defaults, *wanted, *sorted(self.learned)]
        preload = tuple(dict.fromkeys(wanted))
        if preload != self.preload:
            if self.preload:
                log.info("Base template preload is now: %s", ", ".join(preload) or "(nothing)")
            self.preload = preload
            self.generation += 1

    def _learn(self, template: TemplateProcess) -> None:  # bumps the generation if it learns
        """Remember the plugins an agent template imported: the next base preloads them."""
        self._learn_modules(set(template.zygote.plugins if template.zygote else ()))

    def learn_local_models(self, models: Sequence[str]) -> None:
        """A job used the SDK's local models (``models``): the next base preloads them.

        Not when the supervisor's environment turns the SDK's preloading off (``PRELOAD_VARIABLE``
        set to a false value): then every process loads what it uses itself.
        """
        if not models or os.environ.get(PRELOAD_VARIABLE, "").strip().lower() in _FALSY:
            return
        self._learn_modules({LOCAL_MODELS})

    def _learn_modules(self, modules: set[str]) -> None:
        new = modules - self.learned - set(self.preload)
        if not new or not self._defaults:
            return
        log.info("Learned modules to share: %s", ", ".join(sorted(new)))
        self.learned |= new
        if self.on_learned is not None:
            self.on_learned(sorted(self.learned))
        self._update()
        # warm processes forked from the old templates are replaced by ones that share more
        for launchers in self._launchers.values():
            for launcher in launchers:
                if launcher.on_stale is not None:
                    launcher.on_stale(self.generation)

    def _retire(self, template: TemplateProcess) -> None:
        """Stop ``template`` once the processes forked from it have ended."""
        assert self._tg is not None

        self._retiring.add(template)

        async def retire() -> None:
            await template.wait_childless()
            await template.stop("replaced by a template with the current preload")
            self._retiring.discard(template)
            if self.bases.get(template.spec.python) is template:
                del self.bases[template.spec.python]

        self._tg.start_soon(retire)

    def refresh(self, agent_name: str) -> int:
        """Retire ``agent_name``'s templates; how many were retired.

        The next process forks from a template that imports the agent's code anew (``lksup
        reload``); the old ones stop once the processes forked from them have ended.
        """
        stale = [
            key
            for key, template in self.templates.items()
            if template.spec.agent_name == agent_name
        ]
        for key in stale:
            self._retire(self.templates.pop(key))
        return len(stale)

    def live(self) -> list[tuple[bool, TemplateProcess]]:
        """(is a base, template) for every template now, bases first."""
        bases = [(True, t) for t in [*self.bases.values()] if t.alive]
        agents = [(False, t) for t in self.templates.values() if t.alive]
        retiring = [(t.launcher is None, t) for t in self._retiring if t.alive]
        return [*bases, *agents, *retiring]

    def launcher(
        self, spec: ProcessSpec, *, isolated: bool = False, prepare: bool = False
    ) -> ZygoteLauncher:
        """The launcher of ``spec``'s job processes; ``prepare``: its template runs prewarm."""
        return ZygoteLauncher(self, spec, isolated, prepare)

    def _lock(self, key: object) -> anyio.Lock:
        return self._locks.setdefault(key, anyio.Lock())

    async def _start(self, template: TemplateProcess) -> TemplateProcess:
        assert self._tg is not None
        if self._closed:
            raise InitFailed("the supervisor is stopping")
        try:
            started = await self._tg.start(template.run)
        except InitFailed as exc:
            raise InitFailed(f"its template failed to start: {exc}") from None
        assert isinstance(started, TemplateProcess)
        if self.monitor is not None and started.pid is not None:  # its memory, for status
            self.monitor.watch(started.pid, agent=TEMPLATE_OWNER, job_id=None, policy=_NO_LIMIT)
            self._tg.start_soon(self._unwatch_at_exit, started)
        return started

    async def _unwatch_at_exit(self, template: TemplateProcess) -> None:
        await template.wait_exited()
        if self.monitor is not None and template.pid is not None:
            self.monitor.unwatch(template.pid)

    async def base(self, spec: ProcessSpec) -> TemplateProcess:
        """The base template of ``spec``'s interpreter, started or restarted as needed."""
        python = spec.python
        async with self._lock(("base", python)):
            base = self.bases.get(python)
            if base is not None and base.alive and base.state is ProcessState.READY:
                if base.generation == self.generation:
                    return base
                self._retire(base)
            elif base is not None:
                log.warning("The base template %s is gone; starting a new one.", base.pid)
            base_spec = ProcessSpec(
                agent_name="(base template)",
                entrypoint="",
                env=_base_environment(),
                python=python,
                log_level=self.log_level,
                initialize_timeout=2 * TEMPLATE_INIT_TIMEOUT,
            )
            start = ipc.ZygoteStart(preload=self.preload, log_level=self.log_level)
            base = await self._start(TemplateProcess(base_spec, start))
            base.generation = self.generation
            self.bases[python] = base
            assert self._tg is not None
            self._tg.start_soon(self._watch_base, base)
            if base.zygote is not None and base.zygote.preload_failed:
                log.info("Base template: not preloaded: %s", "; ".join(base.zygote.preload_failed))
            return base

    async def template(
        self, spec: ProcessSpec, *, isolated: bool, prepare: bool = False
    ) -> TemplateProcess:
        """``spec``'s agent template, started (or restarted after it died) as needed.

        ``prepare``: the template runs the agent's prewarm before it forks, unless that
        prewarm was found unsafe to fork (then its processes run it, as with False).
        """
        key = _key(spec, isolated, prepare)
        async with self._lock(key):
            while True:
                template = await self._template(key, spec, isolated, prepare)
                if isolated or template.generation == self.generation:
                    return template
                # it taught the base something: fork from a base that shares it instead
                self._retire(template)

    async def _template(
        self, key: tuple[object, ...], spec: ProcessSpec, isolated: bool, prepare: bool
    ) -> TemplateProcess:
        current = self.templates.get(key)
        if current is not None and current.alive and current.state is ProcessState.READY:
            if isolated or current.generation == self.generation:
                return current
            self._retire(current)  # forked from an older base: fork anew from the new one
        elif current is not None:
            log.warning("The template of agent %s is gone; starting a new one.", spec.agent_name)
        while True:
            template, generation = await self._new_template(
                spec, isolated, prepare and key not in self.unforkable
            )
            reason = template.zygote.unforkable if template.zygote else ""
            if not reason:
                break
            log.info(
                "Agent %s: %s, which a fork cannot carry: its prewarm runs in each job process "
                "instead (prewarm_in: process says so and skips this check).",
                spec.agent_name,
                reason,
            )
            self.unforkable[key] = reason
            await template.stop("its prewarm runs in each job process")
        template.generation = generation  # older than self.generation: replaced by template()
        self.templates[key] = template
        self._learn(template)
        assert self._tg is not None
        self._tg.start_soon(self._watch_template, key, template)
        return template

    async def _new_template(
        self, spec: ProcessSpec, isolated: bool, prepare: bool
    ) -> tuple[TemplateProcess, int]:
        """Start a template for ``spec``; it and the generation it was forked from."""
        template_spec = dataclasses.replace(
            spec, initialize_timeout=max(spec.initialize_timeout, TEMPLATE_INIT_TIMEOUT)
        )
        prepared = ipc.encode_payload(initialize_message(spec)) if prepare else b""
        generation = self.generation  # what it is forked from; learning may move on meanwhile
        if isolated:
            start = ipc.ZygoteStart(
                preload=self.preload,
                imports=_imports(spec),
                log_level=spec.log_level,
                agent_name=spec.agent_name,
                prepare=prepared,
            )
            template = TemplateProcess(template_spec, start)
        else:
            base = await self.base(spec)
            generation = base.generation
            request = ipc.ForkTemplate(
                request_id="",
                agent_name=spec.agent_name,
                env=dict(spec.env),
                cwd=str(spec.cwd or os.getcwd()),
                imports=_imports(spec),
                log_level=spec.log_level,
                prepare=prepared,
            )
            template = TemplateProcess(template_spec, None, launcher=_ForkLauncher(base, request))
        return await self._start(template), generation

    async def _watch_template(self, key: tuple[object, ...], template: TemplateProcess) -> None:
        """An agent template that dies unexpectedly is its agents' init failure (backoff)."""
        await template.wait_exited()
        if self._closed or template.stopping or self.templates.get(key) is not template:
            return
        reason = f"its template {_ended(template)}"
        log.error("Agent %s: %s.", template.spec.agent_name, reason)
        for launcher in self._launchers.get(key, []):
            if launcher.on_failure is not None:
                launcher.on_failure(reason)

    async def _watch_base(self, base: TemplateProcess) -> None:
        """A base that dies is started again on demand, and the agents' templates fork anew."""
        await base.wait_exited()
        if self._closed or base.stopping or self.bases.get(base.spec.python) is not base:
            return
        log.error("The base template %s; agent templates will fork from a new one.", _ended(base))
        self.generation += 1

    def acquire(self, launcher: ZygoteLauncher) -> None:
        """A pool launches from ``launcher``'s template."""
        key = _key(launcher.spec, launcher.isolated, launcher.prepare)
        self._users[key] = self._users.get(key, 0) + 1
        self._launchers.setdefault(key, []).append(launcher)

    async def release(self, launcher: ZygoteLauncher) -> None:
        """A pool is done with its template: the last one stops it."""
        key = _key(launcher.spec, launcher.isolated, launcher.prepare)
        users = self._launchers.get(key, [])
        if launcher in users:
            users.remove(launcher)
        self._users[key] = self._users.get(key, 1) - 1
        if self._users[key] > 0:
            return
        del self._users[key]
        template = self.templates.pop(key, None)
        if template is not None:
            await _stop_when_childless(template, "no agent uses it")
        if not self._users:  # no agent forks any more: the bases' memory goes too
            bases, self.bases = list(self.bases.values()), {}
            for base in bases:
                await _stop_when_childless(base, "no agent uses it")


@dataclass(eq=False)
class ZygoteLauncher:
    """Forks one agent's job processes from its template (starting the template first)."""

    zygotes: Zygotes
    spec: ProcessSpec
    isolated: bool = False
    prepare: bool = False
    """Its template runs the agent's prewarm before forking (``prewarm_in: template``)."""
    on_failure: Callable[[str], None] | None = field(default=None, compare=False)
    """Told when the template dies unexpectedly (the pool records an init failure)."""
    on_stale: Callable[[int], None] | None = field(default=None, compare=False)
    """Told the new generation when the base's preload grew: warm processes of an older one
    can be replaced by ones that share more."""

    def __post_init__(self) -> None:
        self.zygotes.acquire(self)

    async def launch(self, process: JobProcessHandle, child: socket.socket) -> ProcessHandle:
        """Fork ``process`` from the agent's template (raises ``InitFailed``)."""
        template = await self.zygotes.template(
            self.spec, isolated=self.isolated, prepare=self.prepare
        )
        process.generation = template.generation
        process.on_local_models = self.zygotes.learn_local_models
        return await _ForkLauncher(template).launch(process, child)

    async def aclose(self) -> None:
        """The pool is closed: its template may go."""
        await self.zygotes.release(self)


def _ended(template: TemplateProcess) -> str:
    return (
        "ended unexpectedly ("
        + describe_exit(template.exit_code).removeprefix("job process ")
        + ")"
    )


async def _stop_when_childless(template: TemplateProcess, reason: str) -> None:
    """The stop sequence, once the processes forked from ``template`` ended (bounded).

    A template reports its children's exit statuses: stopping it first would leave them
    unknown. Their own stop sequences are bounded, so this wait is too.
    """
    with anyio.move_on_after(CHILDLESS_TIMEOUT):
        await template.wait_childless()
    await template.stop(reason)


def forking_supported() -> bool:
    """Whether job processes can be forked from templates here (Linux: pidfds)."""
    return hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


def _imports(spec: ProcessSpec) -> tuple[str, ...]:
    modules = []
    for ref in (spec.entrypoint, spec.prewarm, spec.request_fnc, spec.session_end_fnc):
        module = ref.partition(":")[0]
        if module and module not in modules:
            modules.append(module)
    return tuple(modules)


def _key(spec: ProcessSpec, isolated: bool, prepare: bool) -> tuple[object, ...]:
    """What the template depends on: a change needs a new template."""
    if prepare:  # it runs prewarm: everything its job processes are initialised with
        return (isolated, initialize_message(spec), *_key(spec, isolated, False)[1:])
    return (
        isolated,
        spec.python,
        str(spec.cwd),
        tuple(sorted(spec.env.items())),
        _imports(spec),
        spec.log_level,
    )


def _base_environment() -> dict[str, str]:
    """The base template's environment: the supervisor's (each agent template replaces it).

    The SDK's warm-up runs there without its local models unless the supervisor's environment
    asks for them (``PRELOAD_VARIABLE``): the base loads them (``LOCAL_MODELS``) once a job of
    the fleet was seen using them, so a fleet that never does, does not carry them.
    """
    return {PRELOAD_VARIABLE: "0", **os.environ}
