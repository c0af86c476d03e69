"""Import an agent's functions inside the job process, and describe failures in one line.

Only the job process imports user code (DESIGN.md §3.1). References have the fleet's shape,
``module.path:attribute.path``, and are checked as ``lksup validate --check-imports`` checks
them (``lksup.fleet.importcheck``): the entrypoint and the request function must be async, a
prewarm function must not be.

Error texts are what the supervisor shows in status and reports upstream, so they are short,
single-purpose and stable: ``<ExcType>: <message>``, plus `` (at file:line)`` for import and
prewarm failures. The location is the innermost frame under the working directory (else the
innermost one outside lksup and importlib), relative to the working directory. Texts are cut
to ``MAX_ERROR_TEXT`` characters.
"""

from __future__ import annotations

import importlib
import inspect
import os
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lksup.jobs.context import JobContext, JobProcess, JobRequest
from lksup.jobs.ipc import Initialize

__all__ = [
    "MAX_ERROR_TEXT",
    "AgentFunctions",
    "LoadError",
    "describe_exception",
    "load_agent",
    "run_prewarm",
]

MAX_ERROR_TEXT = 2000
_LKSUP_DIR = str(Path(__file__).resolve().parent.parent)


class LoadError(Exception):
    """The agent cannot be loaded or prepared; the message is ``Ready.error``."""


@dataclass(frozen=True)
class AgentFunctions:
    """The user functions a job process runs."""

    entrypoint: Callable[[JobContext], Awaitable[None]]
    prewarm: Callable[[JobProcess], object] | None = None
    request_fnc: Callable[[JobRequest], Awaitable[None]] | None = None
    session_end_fnc: Callable[[Any], Awaitable[None]] | None = None


def _relative(filename: str) -> str:
    cwd = os.getcwd()
    return filename[len(cwd) + 1 :] if filename.startswith(cwd + os.sep) else filename


def _location(exc: BaseException) -> str | None:
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_relative(exc.filename)}:{exc.lineno}"
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in frame.filename and not frame.filename.startswith(_LKSUP_DIR)
    ]
    cwd = os.getcwd() + os.sep
    mine = [frame for frame in frames if frame.filename.startswith(cwd)]
    candidates = mine or frames
    if not candidates:
        return None
    return f"{_relative(candidates[-1].filename)}:{candidates[-1].lineno}"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 3] + "..."


def describe_exception(exc: BaseException, *, with_location: bool = False) -> str:
    """``<ExcType>: <message>``, with `` (at file:line)`` when asked and known."""
    message = str(exc)
    if isinstance(exc, SyntaxError):
        message = exc.msg
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    where = _location(exc) if with_location else None
    return _cut(f"{text} (at {where})" if where else text)


def _is_async(obj: Any) -> bool:
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(
        getattr(obj, "__call__", None)  # noqa: B004 - callable objects with an async __call__
    )


def _resolve(ref: str, *, field: str, want_async: bool) -> Any:
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise LoadError(f"{field} {ref!r} must have the shape module.path:attribute")
    try:
        obj: Any = importlib.import_module(module_name)
    except BaseException as exc:  # user code: SystemExit and friends are failures too
        detail = describe_exception(exc, with_location=True)
        raise LoadError(_cut(f"cannot import module {module_name!r}: {detail}")) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LoadError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise LoadError(f"{field} {ref} is not callable (it is {type(obj).__name__})")
    if want_async and not _is_async(obj):
        raise LoadError(f"{field} {ref} must be an async function (async def)")
    if not want_async and _is_async(obj):
        raise LoadError(f"{field} {ref} must be a plain function (def), not async")
    return obj


def load_agent(init: Initialize) -> AgentFunctions:
    """Import the functions ``init`` names (the working directory is on ``sys.path``).

    Raises:
        LoadError: a module cannot be imported, an attribute is missing or has the wrong shape.
    """
    entrypoint = _resolve(init.entrypoint, field="entrypoint", want_async=True)
    prewarm = _resolve(init.prewarm, field="prewarm", want_async=False) if init.prewarm else None
    request_fnc = (
        _resolve(init.request_fnc, field="request_fnc", want_async=True)
        if init.request_fnc
        else None
    )
    session_end_fnc = (
        _resolve(init.session_end_fnc, field="session_end_fnc", want_async=True)
        if init.session_end_fnc
        else None
    )
    return AgentFunctions(
        entrypoint=entrypoint,
        prewarm=prewarm,
        request_fnc=request_fnc,
        session_end_fnc=session_end_fnc,
    )


def run_prewarm(functions: AgentFunctions, proc: JobProcess, *, ref: str) -> None:
    """Run the prewarm function, if any, in the calling thread.

    Raises:
        LoadError: prewarm raised (anything, ``SystemExit`` included).
    """
    if functions.prewarm is None:
        return
    try:
        functions.prewarm(proc)
    except BaseException as exc:  # user code: SystemExit and friends are failures too
        detail = describe_exception(exc, with_location=True)
        raise LoadError(_cut(f"prewarm {ref} failed: {detail}")) from None
