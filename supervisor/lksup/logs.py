"""Logging, configured in one place.

The daemon logs to stdout (what containers and journald collect): JSON lines when stdout is
not a terminal, readable lines on a terminal. Records about an agent,
a job or a process carry ``agent``, ``job_id`` and ``pid`` (set through ``extra=``); they appear
as fields in JSON and as a prefix on a TTY. Wall-clock timestamps are for display only.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

_FIELDS = ("agent", "job_id", "room", "worker_id", "pid", "stream", "source_logger", "traceback")


_EXCEPTIONS = logging.Formatter()


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """A record as the JSON formatter writes it, plus ``created`` (wall-clock seconds).

    The fields: ts, level, logger, msg, the bound fields, a job's own fields, ``exc``.
    """
    data: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "created": record.created,
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for name in _FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            data[name] = value
    extra = getattr(record, "fields", None)  # a job's own fields never replace ours
    if isinstance(extra, dict):
        for name, value in extra.items():
            data.setdefault(name, value)
    if record.exc_info:
        data["exc"] = _EXCEPTIONS.formatException(record.exc_info)
    return data


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg and the bound fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        data = record_fields(record)
        del data["created"]
        return json.dumps(data, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS level [agent job pid] message``."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a readable line."""
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        tags = [
            str(getattr(record, n)) for n in ("agent", "job_id", "pid") if getattr(record, n, None)
        ]
        prefix = f"[{' '.join(tags)}] " if tags else ""
        text = f"{stamp} {record.levelname.lower():<7} {prefix}{record.getMessage()}"
        traceback = getattr(record, "traceback", None)
        if traceback:  # a job process's, forwarded
            text += "\n" + str(traceback)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(
    *, fmt: str | None = None, level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Configure the root logger once.

    Args:
        fmt: json, console, or None: json unless ``stream`` is a terminal.
        level: the root level.
        stream: where records go; stdout when None.
    """
    stream = stream or sys.stdout
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("websockets", "asyncio", "h11", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
