"""Read a livekit-agents ``WorkerOptions`` or ``AgentServer`` for ``lksup init --from``.

Run as ``python -m lksup.jobs.sdk.introspect MODULE:ATTR`` in the agent's working directory,
which goes first on ``sys.path``. It imports the module (the CLI never imports user code), reads
the object and prints exactly one JSON document on stdout, whatever happens:

    {"ok": true, "kind": "WorkerOptions" | "AgentServer", "sdk_version": "1.8.9",
     "agent_name": "...", "options": {NAME: VALUE, ...}}
    {"ok": false, "error": {"kind": "import" | "reference" | "sdk", "message": "...",
     "file": "agent.py" | null, "line": 12 | null}}

Exit status 0 with the first, 1 with the second (2 for a bad command line). ``kind`` of an
error: ``import`` the module cannot be imported, ``reference`` the attribute is missing or is
not a WorkerOptions/AgentServer, ``sdk`` the SDK keeps its options where lksup cannot read them.

``options`` holds, under ``WorkerOptions``' names (``AgentServer``'s ``setup_fnc`` is
``prewarm_fnc``; its ``rtc_session`` hooks are ``on_session_end``/``on_simulation_end``), every
option whose value differs from the SDK's default, and always ``entrypoint_fnc``:

* numbers, strings, booleans, lists as they are (``inf`` as JSON ``Infinity``); an option with
  dev/prod defaults (``ServerEnvOption``) by its production value, as lksup runs in production;
* enums by lower-case name (``room``, ``thread``); ``permissions`` as a mapping, with track
  sources by lower-case name (``microphone``);
* functions as ``{"function": "module.qualname", "ref": "module:attr" | null, "problem": text |
  null}``: ``ref`` only when importing ``module`` and following ``attr`` gives this very object
  back (no closure, lambda or rebound name);
* anything else as ``{"type": "TypeName"}``.

Secrets never leave this process: ``api_key``/``api_secret`` are ``{"secret": true}``, and an
``http_proxy`` URL is ``{"url": ..., "credentials": bool}`` with any user and password removed.
The variables the SDK falls back on (``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ...) are removed from
the environment before the import, so what is read is what the module itself sets (a ``.env``
file the module loads counts as the module's). Anything the module prints goes to stderr.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: What the SDK reads from the environment when the code does not say: removed before import.
FROM_ENVIRONMENT = (
    "LIVEKIT_URL",
    "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET",
    "LIVEKIT_AGENT_NAME",
    "LIVEKIT_AGENT_NAME_OVERRIDE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
)
_SECRETS = frozenset({"api_key", "api_secret"})
_OPTION_CLASSES = ("WorkerOptions", "ServerOptions", "AgentServer")
_LKSUP_DIR = str(Path(__file__).resolve().parent.parent.parent)


class ReadError(Exception):
    """The object cannot be read; ``kind`` is import, reference or sdk."""

    def __init__(
        self, kind: str, message: str, *, file: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(message)
        self.kind, self.message, self.file, self.line = kind, message, file, line

    def document(self) -> dict[str, Any]:
        """The error as the JSON document's ``error`` member."""
        return {"kind": self.kind, "message": self.message, "file": self.file, "line": self.line}


# --- finding the object ------------------------------------------------------------------------


def _relative(filename: str) -> str:
    cwd = os.getcwd()
    return filename[len(cwd) + 1 :] if filename.startswith(cwd + os.sep) else filename


def _location(exc: BaseException) -> tuple[str | None, int | None]:
    """The user's frame where ``exc`` was raised: under the working directory if any."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return _relative(exc.filename), exc.lineno
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in frame.filename and not frame.filename.startswith(_LKSUP_DIR)
    ]
    cwd = os.getcwd() + os.sep
    candidates = [f for f in frames if f.filename.startswith(cwd)] or frames
    if not candidates:
        return None, None
    return _relative(candidates[-1].filename), candidates[-1].lineno


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except BaseException as exc:  # user code: SystemExit and KeyboardInterrupt are failures too
        file, line = _location(exc)
        message = f"{type(exc).__name__}: {exc.msg if isinstance(exc, SyntaxError) else exc}"
        if isinstance(exc, SystemExit):
            message = (
                f"the module exited while being imported (SystemExit: {exc.code}); is "
                '`cli.run_app(...)` called outside `if __name__ == "__main__":`?'
            )
        elif isinstance(exc, KeyError) and exc.args and exc.args[0] in FROM_ENVIRONMENT:
            message += (
                f" (lksup init reads the module without ${exc.args[0]}, so that the fleet gets"
                " what the module itself sets; read it with os.environ.get() there)"
            )
        raise ReadError(
            "import", f"cannot import {module_name!r}: {message}", file=file, line=line
        ) from None


def _main_only(module: Any, attr: str) -> ReadError | None:
    """A hint when the options are built only under ``if __name__ == "__main__":``."""
    try:
        source_file = module.__file__
        tree = ast.parse(Path(source_file).read_text(encoding="utf-8"))
    except (AttributeError, TypeError, OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if not (isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)):
            continue
        for call in ast.walk(node):
            if not isinstance(call, ast.Call):
                continue
            func = call.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in _OPTION_CLASSES:
                return ReadError(
                    "reference",
                    f'the {name} is built only under `if __name__ == "__main__":`, which does '
                    f"not run when the module is imported; build it at module level "
                    f"(`{attr} = {name}(...)`), keep `cli.run_app({attr})` under "
                    f'`if __name__ == "__main__":`, and run lksup init again',
                    file=_relative(source_file),
                    line=call.lineno,
                )
    return None


def find(ref: str) -> Any:
    """Import ``module:attr.path`` and return the object (``ReadError`` says what is wrong)."""
    module_name, _, attr_path = ref.partition(":")
    module = _import(module_name)
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            hint = _main_only(module, attr_path)
            if hint is not None:
                raise hint from None
            found = sorted(name for name, value in vars(module).items() if _kind(value) is not None)
            also = f"; it has {', '.join(found)}" if found else ""
            raise ReadError(
                "reference",
                f"module {module_name!r} has no attribute {attr_path!r}{also}",
                file=_relative(getattr(module, "__file__", None) or module_name),
            ) from None
    return obj


def _kind(obj: object) -> str | None:
    """WorkerOptions, AgentServer or None (the SDK is imported by the module already)."""
    agents = sys.modules.get("livekit.agents")
    if agents is None:
        return None
    options_class = getattr(agents, "WorkerOptions", None)
    server_class = getattr(agents, "AgentServer", None)
    if isinstance(options_class, type) and isinstance(obj, options_class):
        return "WorkerOptions"
    if isinstance(server_class, type) and isinstance(obj, server_class):
        return "AgentServer"
    return None


# --- values -> JSON ----------------------------------------------------------------------------


def describe_function(fn: object) -> dict[str, Any]:
    """A function as ``{"function", "ref", "problem"}``: ``ref`` only when it imports back."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        label = type(fn).__name__
        return {
            "function": label,
            "ref": None,
            "problem": f"it is a {label} object, not a function defined with def at module level",
        }
    label = f"{module}.{qualname}"
    problem = None
    if "<lambda>" in qualname:
        problem = "it is a lambda; define it with def at module level"
    elif "<locals>" in qualname:
        problem = (
            "it is defined inside another function (a closure); define it at module level so "
            "that it can be imported as module:attribute"
        )
    elif module == "__main__":
        problem = "it is defined in __main__, which cannot be imported by name"
    else:
        try:
            found: Any = importlib.import_module(module)
            for part in qualname.split("."):
                found = getattr(found, part)
        except Exception as exc:  # user code runs if that module was not imported yet
            problem = f"{module}:{qualname} cannot be imported back ({type(exc).__name__}: {exc})"
        else:
            if found is not fn and found != fn:
                problem = (
                    f"{module}:{qualname} is another object (the name was rebound, or a "
                    "decorator replaced the function)"
                )
    ref = None if problem else f"{module}:{qualname}"
    return {"function": label, "ref": ref, "problem": problem}


def _track_source(value: object) -> object:
    try:
        from livekit.protocol import models

        return str(models.TrackSource.Name(int(value))).lower()  # type: ignore[call-overload]
    except (ImportError, ValueError, TypeError):
        return value


def to_json(name: str, value: object) -> Any:
    """One option value as JSON (see the module docstring); secrets become ``{"secret": true}``."""
    if name in _SECRETS:
        return {"secret": True}
    if name == "http_proxy" and isinstance(value, str):
        parts = urlsplit(value)
        if parts.username is None and parts.password is None:
            return {"url": value, "credentials": False}
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return {"url": urlunsplit(parts._replace(netloc=netloc)), "credentials": True}
    if hasattr(value, "prod_default") and hasattr(value, "dev_default"):  # ServerEnvOption
        return to_json(name, value.prod_default)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if name == "permissions" and dataclasses.is_dataclass(value) and not isinstance(value, type):
        permissions = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        sources = permissions.get("can_publish_sources") or []
        permissions["can_publish_sources"] = [_track_source(s) for s in sources]
        return permissions
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    if callable(value):
        return describe_function(value)
    return {"type": type(value).__name__}


def _empty(value: object) -> bool:
    return value is None or value == "" or value == [] or type(value).__name__ == "NotGiven"


def _differs(value: object, default: object) -> bool:
    if _empty(value) and _empty(default):
        return False
    return bool(value != default)


def _worker_options(options: Any) -> dict[str, tuple[object, object]]:
    """WorkerOptions' fields as ``(value, default)``; public, so read here."""
    read: dict[str, tuple[object, object]] = {}
    for field in dataclasses.fields(options):
        if field.default is not dataclasses.MISSING:
            default: object = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None  # required (entrypoint_fnc)
        read[field.name] = (getattr(options, field.name), default)
    return read


def read(obj: Any, ref: str) -> dict[str, Any]:
    """The JSON document for a WorkerOptions or AgentServer (``ReadError`` otherwise)."""
    kind = _kind(obj)
    if kind is None:
        raise ReadError(
            "reference",
            f"{ref} is a {type(obj).__name__}, not a livekit-agents WorkerOptions or AgentServer",
        )
    if kind == "WorkerOptions":
        values = _worker_options(obj)
    else:
        from lksup.jobs.sdk import adapter

        try:
            values = adapter.agent_server_options(obj)
        except adapter.UnsupportedSdk as exc:
            raise ReadError("sdk", str(exc)) from None
        if "setup_fnc" in values:
            values["prewarm_fnc"] = values.pop("setup_fnc")
    agent_name, _ = values.pop("agent_name", ("", ""))
    options = {
        name: to_json(name, value)
        for name, (value, default) in values.items()
        if name == "entrypoint_fnc" or _differs(value, default)
    }
    agents = sys.modules["livekit.agents"]
    return {
        "ok": True,
        "kind": kind,
        "sdk_version": str(getattr(agents, "__version__", "")),
        "agent_name": agent_name or "",
        "options": options,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the JSON document for ``argv[0]`` (MODULE:ATTR) on the real stdout."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or ":" not in args[0]:
        sys.stderr.write("usage: python -m lksup.jobs.sdk.introspect MODULE:ATTR\n")
        return 2
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever the module prints goes to stderr
    sys.stdout = sys.stderr
    sys.argv = sys.argv[:1]  # a module that parses the command line sees none
    for name in FROM_ENVIRONMENT:
        os.environ.pop(name, None)
    sys.path.insert(0, os.getcwd())
    try:
        document = read(find(args[0]), args[0])
    except ReadError as exc:
        document = {"ok": False, "error": exc.document()}
    json.dump(document, out)
    out.write("\n")
    out.close()
    return 0 if document["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
