"""The daemon's log beyond stdout: the applied ``supervisor.log_file``, and ``lksup logs``.

Logging is configured in one place (``lksup.logs``); this module only adds and removes
handlers on the root logger while the daemon runs, and removes each one it added.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
from collections.abc import Iterator
from pathlib import Path

from lksup.daemon.supervisor import Supervisor
from lksup.logs import JsonFormatter

log = logging.getLogger("lksup.daemon")


async def follow(supervisor: Supervisor) -> None:
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
def kept(handler: logging.Handler) -> Iterator[None]:
    """Every record also goes to ``handler`` (the daemon's ``LogBuffer``) while it runs."""
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
