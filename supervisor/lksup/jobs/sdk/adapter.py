"""The one module that uses livekit-agents' private names.

Supported window: **livekit-agents >= 1.6, < 1.9** (tested at 1.6.10 and 1.8.9; 1.6.8 is the
oldest that installs beside lksup's protobuf 7, through its OpenTelemetry pins). Everything
lksup needs from the SDK's job-side machinery goes through here, so a new SDK minor is one
module to read, not a hunt through the code base. Another version fails the agent at
initialisation with a message naming the window (``UnsupportedSdk``).

What is used, and why it is private:

* ``livekit.agents.ipc.job_proc_lazy_main._JobProc``: the SDK's own job runner. lksup drives it
  instead of reimplementing it, so a job behaves as under the SDK's worker: the job context
  variable behind ``get_job_context()``, the HTTP session context, log context fields, the
  primary ``AgentSession`` closed at the end, ``session_end_fnc``, report upload, the room
  disconnect and the shutdown callbacks with their reason, in the SDK's order. Its constructor
  changed in 1.4 (``session_end_fnc``) and 1.6 (``session_end_timeout``,
  ``simulation_end_fnc``): arguments are passed by name where the installed version has them.
* ``_JobProc.initialize(init_req, client)`` builds the SDK ``JobProcess``, imports the SDK's
  warm-up (``ipc/_preload``), detects the telemetry resource and runs prewarm, then keeps the
  client. lksup does the same steps in two halves: ``new_job_process`` and prewarm, which may
  run in an agent's template before it forks, then ``JobHost.adopt`` in the job process (the
  client, ``_InfClient``, the per-process resource detection), which sets the attributes
  ``initialize`` sets (``_client``, ``_inf_client``, ``_job_proc``).
  ``_JobProc.entrypoint(cch)`` is the job loop, fed through an ``aio.Chan`` of the SDK's
  ``ipc.proto`` messages (``StartJobRequest``, ``ShutdownRequest``, ``InferenceResponse``).
  It talks back through ``client.send``: ``InferenceRequest`` and ``Exiting(reason)`` matter
  here, the acknowledgements do not. ``Exiting`` comes just before the room is left, so
  awaiting inside ``send`` holds the disconnect until the job's outcome reached the server.
  lksup never speaks the SDK's wire format, whose shape changes between minors (7, 8 and 12
  fields in ``StartJobRequest``).
* ``_JobProc._job_task``: the job's task, to tell a job that could not start from one that did.
* ``inference_runner._InferenceRunner.registered_runners``: the runners the agent's imports
  registered (the turn detector...), reported to the supervisor so one shared inference process
  serves the fleet.
* ``livekit.rtc._ffi_client.FfiClient.instance``: started in an idle job process, so the
  first ``rtc.Room()`` of its job does not pay for it.
* ``inference.eot.transports._EOT`` and ``inference.vad._NativeVAD`` (1.8.2+): the local
  end-of-turn and VAD models' constructors, wrapped to notice a job using them, so the fleet's
  base template preloads them from then on (``track_local_models``).
* ``AgentServer``'s private attributes are not used to run jobs: the fleet names the functions.

Differences inside the window, handled here: ``RunningJobInfo`` gained the dispatch timestamps
in 1.8.2 (passed only where the dataclass has them); an empty shutdown reason became "parent
process shutdown" in 1.6.5 (lksup always passes one); from 1.8.2 ``initialize`` imports
``ipc/_preload``, which loads the local inference models unless
``LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE=0`` (honoured from 1.8.6; the supervisor sets it for
spawned job processes); before 1.8.2 a job cancelled because the supervisor went away skips
the SDK's cleanup (its shutdown sequence was not yet in a ``finally``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

__all__ = [
    "SUPPORTED_WINDOW",
    "JobHost",
    "UnsupportedSdk",
    "check_version",
    "installed_version",
    "local_models_used",
    "make_job_request",
    "new_channel",
    "new_job_process",
    "registered_runners",
    "start_rtc_runtime",
    "track_local_models",
]

logger = logging.getLogger("lksup.jobs")

SUPPORTED_WINDOW = ">=1.6,<1.9"
_LOWEST = (1, 6)
_BEYOND = (1, 9)


class UnsupportedSdk(Exception):
    """livekit-agents is missing or outside the supported window (the message says which)."""


def installed_version() -> str | None:
    """The installed livekit-agents version, or None when it is not installed."""
    try:
        return importlib.metadata.version("livekit-agents")
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, int] | None:
    match = re.match(r"^(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else None


def check_version(version: str | None) -> str:
    """``version`` when it is inside the window.

    Raises:
        UnsupportedSdk: not installed, or outside ``SUPPORTED_WINDOW``.
    """
    if version is None:
        raise UnsupportedSdk(
            "runtime livekit-agents needs the livekit-agents package, which is not installed "
            f"in this interpreter (supported: livekit-agents{SUPPORTED_WINDOW})"
        )
    release = _release(version)
    if release is None or not _LOWEST <= release < _BEYOND:
        raise UnsupportedSdk(
            f"livekit-agents {version} is outside the supported window "
            f"livekit-agents{SUPPORTED_WINDOW}; install a version inside it for this agent "
            "(or give the agent its own interpreter with `python:`)"
        )
    return version


def new_channel() -> Any:
    """An ``aio.Chan`` to feed the SDK's job loop (call inside the running event loop)."""
    from livekit.agents.utils import aio

    return aio.Chan()


def registered_runners() -> tuple[str, ...]:
    """``module:qualname`` of every inference runner registered so far, sorted."""
    from livekit.agents.inference_runner import _InferenceRunner

    runners = _InferenceRunner.registered_runners.values()
    return tuple(sorted(f"{cls.__module__}:{cls.__qualname__}" for cls in runners))


def new_job_process(*, http_proxy: str | None, thread: bool = False) -> Any:
    """The SDK ``JobProcess`` that prewarm fills, after the SDK's warm-up (as ``initialize``).

    It holds no state of the process it was made in (its ``pid`` is read when asked), so one
    made and prewarmed in a template serves every process forked from it. ``thread``: a job
    host's (``job_executor: thread``), shared by the jobs of its threads; the SDK then adds a
    job's log fields only to the records of that job.
    """
    from livekit.agents.job import JobExecutorType, JobProcess

    executor = JobExecutorType.THREAD if thread else JobExecutorType.PROCESS
    kwargs: dict[str, Any] = {"executor_type": executor, "http_proxy": http_proxy}
    if "user_arguments" in inspect.signature(JobProcess).parameters:
        kwargs["user_arguments"] = None
    proc = JobProcess(**kwargs)
    if importlib.util.find_spec("livekit.agents.ipc._preload") is not None:  # 1.8.2+
        importlib.import_module("livekit.agents.ipc._preload")
    return proc


#: Where a job constructs the SDK's local models: (module, constructor's name, model).
_LOCAL_MODEL_SITES = (
    ("livekit.agents.inference.eot.transports", "_EOT", "eot"),
    ("livekit.agents.inference.vad", "_NativeVAD", "vad"),
)
_local_models_used: set[str] = set()


def track_local_models() -> None:
    """Notice when a job constructs one of the SDK's local models; ``local_models_used`` says.

    The models are the end-of-turn model and the VAD of ``livekit.agents.inference``. Call
    after the SDK was imported; done in a template, it holds in every process forked from it.
    Versions without these models (before 1.8.2) track nothing.
    """
    for module_name, attribute, model in _LOCAL_MODEL_SITES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        original = getattr(module, attribute, None)
        if original is None or getattr(original, "_lksup_model", None):
            continue

        def constructor(*args: Any, _made: Any = original, _model: str = model, **kw: Any) -> Any:
            _local_models_used.add(_model)
            return _made(*args, **kw)

        constructor._lksup_model = model  # type: ignore[attr-defined]
        setattr(module, attribute, constructor)


def local_models_used() -> tuple[str, ...]:
    """The local models (``"eot"``, ``"vad"``) constructed in this process so far, sorted."""
    return tuple(sorted(_local_models_used))


def start_rtc_runtime() -> None:
    """Start livekit-rtc's native runtime (``FfiClient.instance``, its threads) now.

    The first ``rtc.Room()`` of a process starts it otherwise, inside the job's start (about
    2 ms; the SDK's worker pays it there). For an idle job process only: a job process never
    forks, so these threads are harmless there; a template must never call this.
    """
    from livekit.rtc._ffi_client import FfiClient

    FfiClient.instance  # noqa: B018  (a class property that starts the runtime)


@functools.cache
def _fields(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls).parameters)


def make_job_request(
    job: Any,
    *,
    on_accept: Callable[[str, str, str, Mapping[str, str]], Coroutine[None, None, None]],
    on_reject: Callable[[bool], Coroutine[None, None, None]],
) -> Any:
    """The SDK's ``JobRequest`` for an offer; answers arrive as plain values."""
    from livekit.agents import JobRequest

    async def accepted(arguments: Any) -> None:
        attributes = getattr(arguments, "attributes", None) or {}
        await on_accept(arguments.identity, arguments.name, arguments.metadata, attributes)

    return JobRequest(job=job, on_reject=on_reject, on_accept=accepted)


class _Client:
    """What ``_JobProc`` expects of ``_ProcClient``: an async ``send`` of SDK messages."""

    def __init__(self, host: JobHost) -> None:
        self._host = host

    async def send(self, msg: Any) -> None:
        await self._host._from_sdk(msg)


class JobHost:
    """One SDK ``_JobProc`` driven from lksup's job process.

    Args:
        entrypoint: the entrypoint as ``_JobProc`` should call it (lksup wraps the user's).
        on_inference: called with ``(request_id, method, data)`` for each inference request.
        thread: one of a job host's jobs (``JobExecutorType.THREAD``, as the SDK's thread
            executor runs them), on the event loop of its own thread.
    """

    @staticmethod
    def check() -> None:
        """Import what a ``JobHost`` needs (raises what a broken installation raises)."""
        from livekit.agents.ipc import job_proc_lazy_main, proto  # noqa: F401
        from livekit.agents.ipc.job_proc_lazy_main import _InfClient, _JobProc  # noqa: F401

    def __init__(
        self,
        *,
        entrypoint: Callable[[Any], Awaitable[None]],
        on_inference: Callable[[str, str, bytes], None],
        on_exiting: Callable[[str], Awaitable[None]] | None = None,
        session_end: Callable[[Any], Awaitable[None]] | None = None,
        thread: bool = False,
    ) -> None:
        from livekit.agents.ipc import job_proc_lazy_main, proto

        self._proto = proto
        self._on_inference = on_inference
        self._on_exiting = on_exiting
        self.exit_reason = ""
        kwargs: dict[str, Any] = {}
        parameters = inspect.signature(job_proc_lazy_main._JobProc.__init__).parameters
        if "session_end_timeout" in parameters:
            kwargs["session_end_timeout"] = 60.0
        if "user_arguments" in parameters:
            kwargs["user_arguments"] = None
        from livekit.agents.job import JobExecutorType

        self._proc = job_proc_lazy_main._JobProc(
            _no_prewarm,  # prewarm ran on ``new_job_process``'s result
            entrypoint,
            session_end,
            executor_type=JobExecutorType.THREAD if thread else JobExecutorType.PROCESS,
            **kwargs,
        )

    def adopt(self, job_proc: Any) -> None:
        """Take the ``JobProcess`` that ``new_job_process`` made and prewarm filled.

        Made here or in the template this process was forked from. This is what
        ``_JobProc.initialize`` does besides prewarm.
        """
        from livekit.agents.ipc.job_proc_lazy_main import _InfClient

        client: Any = _Client(self)  # duck-typed: only ``send`` is used
        self._proc._client = client
        self._proc._inf_client = _InfClient(client)
        self._proc._job_proc = job_proc
        traces = importlib.import_module("livekit.agents.telemetry.traces")
        resource = getattr(traces, "_resource", None)  # 1.8.2+: detected once per process
        if resource is not None:
            resource({})

    async def run(self, channel: Any) -> None:
        """The SDK's job loop; returns when the job ended or the process was shut down idle."""
        await self._proc.entrypoint(channel)

    def start_job(
        self,
        channel: Any,
        *,
        job: Any,
        url: str,
        token: str,
        worker_id: str,
        identity: str,
        name: str,
        metadata: str,
        attributes: Mapping[str, str],
        timeline: Mapping[str, float],
    ) -> None:
        """Queue the job for the SDK's loop (``StartJobRequest``)."""
        from livekit.agents.job import JobAcceptArguments, RunningJobInfo

        accept: dict[str, Any] = {"name": name, "identity": identity, "metadata": metadata}
        if "attributes" in _fields(JobAcceptArguments):
            accept["attributes"] = dict(attributes)
        info_fields = _fields(RunningJobInfo)
        info: dict[str, Any] = {
            "accept_arguments": JobAcceptArguments(**accept),
            "job": job,
            "url": url,
            "token": token,
            "worker_id": worker_id,
            "fake_job": False,
        }
        info.update({k: v for k, v in timeline.items() if k in info_fields})
        request = self._proto.StartJobRequest()
        request.running_job = RunningJobInfo(**{k: v for k, v in info.items() if k in info_fields})
        channel.send_nowait(request)

    def shutdown(self, channel: Any, reason: str) -> None:
        """Ask the SDK's loop to end the job (or to exit when idle)."""
        channel.send_nowait(self._proto.ShutdownRequest(reason=reason))

    def inference_answer(
        self, channel: Any, request_id: str, data: bytes | None, error: str
    ) -> None:
        """Hand an inference result to the job that asked for it."""
        channel.send_nowait(
            self._proto.InferenceResponse(request_id=request_id, data=data, error=error)
        )

    def job_failure(self) -> BaseException | None:
        """The exception that ended the job's task itself (not the entrypoint's), if any."""
        task = self._proc._job_task
        if task is None or not task.done() or task.cancelled():
            return None
        exc: BaseException | None = task.exception()
        return exc

    @property
    def has_job(self) -> bool:
        """Whether a job was started."""
        return bool(self._proc.has_running_job)

    async def _from_sdk(self, msg: Any) -> None:
        # never raises: an exception in ``send`` would abort the SDK's shutdown sequence
        try:
            if isinstance(msg, self._proto.InferenceRequest):
                self._on_inference(msg.request_id, msg.method, msg.data)
            elif isinstance(msg, self._proto.Exiting):
                # sent just before the room is left: the outcome goes to the server first
                self.exit_reason = msg.reason
                if self._on_exiting is not None:
                    await self._on_exiting(msg.reason)
        except Exception:
            logger.exception("Cannot relay %s from livekit-agents.", type(msg).__name__)


def _no_prewarm(_proc: Any) -> None:
    pass


def sdk_module_version() -> str:
    """``livekit.agents.__version__`` (imports the SDK)."""
    module = importlib.import_module("livekit.agents")
    return str(getattr(module, "__version__", "") or installed_version() or "")


# --- AgentServer options (lksup init --from) ---
#
# ``lksup init --from module:server`` writes a fleet file from an ``AgentServer``. The server
# keeps its constructor's options in private attributes (``_<name>``; ``multiprocessing_context``
# in ``_mp_ctx_str``), and what ``@server.rtc_session`` registered (entrypoint, request
# function, agent name, job type, session-end hooks) too. Only the reading happens here;
# ``lksup.jobs.sdk.introspect`` turns the values into JSON.

#: A constructor option's private attribute, where it is not ``_<name>``.
_SERVER_OPTION_ATTRS = {"multiprocessing_context": "_mp_ctx_str"}
#: What ``rtc_session`` registered, under ``WorkerOptions``' names -> (attribute, its argument).
_SESSION_ATTRS = {
    "entrypoint_fnc": ("_entrypoint_fnc", "func"),
    "request_fnc": ("_request_fnc", "on_request"),
    "agent_name": ("_agent_name", "agent_name"),
    "worker_type": ("_server_type", "type"),
    "on_session_end": ("_session_end_fnc", "on_session_end"),
    "on_simulation_end": ("_simulation_end_fnc", "on_simulation_end"),
}


def agent_server_options(server: Any) -> dict[str, tuple[object, object]]:
    """Every option of an ``AgentServer`` as ``(value, SDK default)``.

    Constructor options keep their names (``setup_fnc``, ``load_fnc``...); what
    ``rtc_session`` registered is named as in ``WorkerOptions`` (``entrypoint_fnc``,
    ``request_fnc``, ``agent_name``, ``worker_type``) plus ``on_session_end`` and
    ``on_simulation_end``. An option the installed version does not have is left out.

    Raises:
        UnsupportedSdk: the server keeps an option where this window's versions do not.
    """
    options: dict[str, tuple[object, object]] = {}
    constructor = inspect.signature(type(server).__init__).parameters
    for name, parameter in constructor.items():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        attribute = _SERVER_OPTION_ATTRS.get(name, f"_{name}")
        if not hasattr(server, attribute):
            raise UnsupportedSdk(
                f"cannot read AgentServer option {name!r} (no {attribute}) in this "
                f"livekit-agents version; supported: livekit-agents{SUPPORTED_WINDOW}"
            )
        options[name] = (getattr(server, attribute), parameter.default)
    session = inspect.signature(server.rtc_session).parameters
    for name, (attribute, argument) in _SESSION_ATTRS.items():
        if argument != "func" and argument not in session:
            continue  # a hook this version does not have
        if not hasattr(server, attribute):
            raise UnsupportedSdk(
                f"cannot read the AgentServer's rtc_session ({attribute}) in this "
                f"livekit-agents version; supported: livekit-agents{SUPPORTED_WINDOW}"
            )
        default = None if argument == "func" else session[argument].default
        options[name] = (getattr(server, attribute), default)
    return options
