"""Child side of ``validate --check-imports``: import an agent's functions in a fresh process.

Run as ``python -m lksup.fleet.importcheck`` with the agent's interpreter, environment and
working directory; reads ``{"checks": [{"field", "ref", "kind"}], "runtime": ...}`` as JSON on
stdin and writes one JSON result on stdout: ``{"results": [{"field", "ok", "error"}],
"sdk_version": ..., "sdk_error": ...}`` (the livekit-agents version and, outside the supported
window, why it cannot run; for ``runtime: livekit-agents`` only). Anything the imported code prints
goes to stderr, so it cannot corrupt the result. The CLI never imports user code itself.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

#: lksup's own files never locate a user's import error.
_LKSUP_DIR = str(Path(__file__).resolve().parent.parent)


def check(ref: str, kind: str) -> str | None:
    """Import ``module:attr`` and check its shape; the error text, or None when it is fine."""
    module_name, _, attr_path = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except BaseException as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        where = next(
            (
                f"{_relative(f.filename)}:{f.lineno}"
                for f in reversed(frames)
                if "importlib" not in f.filename and not f.filename.startswith(_LKSUP_DIR)
            ),
            None,
        )
        text = f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        return f"{text} (at {where})" if where else text
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return f"module {module_name!r} has no attribute {attr_path!r}"
    if not callable(obj):
        return f"{ref} is not callable (it is {type(obj).__name__})"
    is_async = inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(
        getattr(obj, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )
    if kind == "async" and not is_async:
        return f"{ref} must be an async function (async def)"
    if kind == "sync" and is_async:
        return f"{ref} must be a plain function (def), not async"
    return None


def _relative(filename: str) -> str:
    """A path relative to the working directory when it is inside it (stable messages)."""
    cwd = os.getcwd()
    if filename.startswith(cwd + os.sep):
        return filename[len(cwd) + 1 :]
    return filename


def main() -> int:
    """Read checks from stdin, write results to the real stdout."""
    results_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever user code prints goes to stderr
    sys.stdout = sys.stderr
    sys.path.insert(0, os.getcwd())
    request = json.load(sys.stdin)
    sdk: dict[str, str | None] = {"sdk_version": None, "sdk_error": None}
    if request.get("runtime") == "livekit-agents":
        from lksup.jobs.sdk import adapter

        sdk["sdk_version"] = adapter.installed_version()
        try:
            adapter.check_version(sdk["sdk_version"])
        except adapter.UnsupportedSdk as exc:
            sdk["sdk_error"] = str(exc)
    results = []
    for item in request["checks"]:
        error = check(item["ref"], item["kind"])
        results.append({"field": item["field"], "ok": error is None, "error": error})
    json.dump({"results": results, **sdk}, results_out)
    results_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
