"""The state directory: the last applied fleet, so a restarted daemon resumes it.

The applied fleet is stored as JSON (the normalized fleet with literal secrets kept: the daemon
needs them to run, so the file is private): written to a temporary file in the same directory
with mode 0600, fsynced, then renamed over the old one, so a crash never leaves a half-written
state. The directory is created 0700. Along with the fleet: its revision (the SHA-256 of its
canonical JSON, first 12 hex digits), where it came from, and when it was applied (wall clock,
for display only).

A running daemon holds an exclusive ``flock`` on ``lock`` in the directory for its whole life
(``lock``), so a second daemon given the same directory refuses to start instead of
overwriting the first one's applied fleet; the lock file names the holder's pid.

Default location: ``$LKSUP_STATE_DIR``, else ``/var/lib/lksup`` as root, else
``$XDG_STATE_HOME/lksup`` (``~/.local/state/lksup``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lksup.fleet.normalize import REVEAL
from lksup.fleet.schema import Fleet

STATE_FILE = "applied.json"
LOCK_FILE = "lock"
#: The livekit.plugins.* modules agent templates imported, preloaded by the base template.
PLUGINS_FILE = "plugins.json"


class StateDirInUse(Exception):
    """Another daemon holds the state directory (the message names it and its pid)."""


@contextlib.contextmanager
def lock(state_dir: Path) -> Iterator[None]:
    """Hold the state directory for this daemon while the block runs (created 0700).

    Raises:
        StateDirInUse: another process holds it.
        OSError: the directory or its lock file cannot be created.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise StateDirInUse(
                f"another lksup daemon (pid {holder}) uses the state directory {state_dir}; "
                "stop it, or give this one its own --state-dir (and --socket)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def default_state_dir(environ: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """Where the daemon keeps its state."""
    env = os.environ if environ is None else environ
    if env.get("LKSUP_STATE_DIR"):
        return Path(env["LKSUP_STATE_DIR"])
    if (os.getuid() if uid is None else uid) == 0:
        return Path("/var/lib/lksup")
    base = env.get("XDG_STATE_HOME") or str(
        Path(env.get("HOME", "~")).expanduser() / ".local" / "state"
    )
    return Path(base) / "lksup"


def fleet_document(fleet: Fleet) -> dict[str, Any]:
    """The normalized fleet as JSON data, secrets kept (for the daemon's own use only)."""
    data: dict[str, Any] = fleet.model_dump(
        mode="json", by_alias=True, context=REVEAL, exclude={"livekit", "defaults"}
    )
    return data


def revision(fleet: Fleet) -> str:
    """A short content hash of the normalized fleet."""
    canonical = json.dumps(fleet_document(fleet), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class AppliedFleet:
    """What was applied last."""

    fleet: Fleet
    revision: str
    source: str | None
    applied_at: str  # RFC 3339
    values: dict[str, Any] = field(default_factory=dict)  # the template values of ``source``


def save(
    state_dir: Path,
    fleet: Fleet,
    *,
    source: str | None,
    values: dict[str, Any] | None = None,
) -> AppliedFleet:
    """Persist the applied fleet atomically (0600 in a 0700 directory)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    applied = AppliedFleet(
        fleet=fleet,
        revision=revision(fleet),
        source=source,
        applied_at=datetime.now(UTC).isoformat(timespec="seconds"),
        values=dict(values or {}),
    )
    payload = {
        "revision": applied.revision,
        "source": source,
        "values": applied.values,
        "applied_at": applied.applied_at,
        "fleet": fleet_document(fleet),
    }
    _write(state_dir, STATE_FILE, payload)
    return applied


def _write(state_dir: Path, name: str, payload: object) -> None:
    """Replace ``state_dir/name`` with ``payload`` as JSON, atomically, 0600."""
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=f".{name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            json.dump(payload, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, state_dir / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_learned_plugins(state_dir: Path, modules: list[str]) -> None:
    """Keep the plugins agent templates were seen importing (the base preloads them)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(state_dir, PLUGINS_FILE, {"plugins": sorted(modules)})


def load_learned_plugins(state_dir: Path) -> list[str]:
    """The learned plugins; none when the file is missing or unreadable (they are relearned)."""
    try:
        payload = json.loads((state_dir / PLUGINS_FILE).read_text(encoding="utf-8"))
        modules = payload["plugins"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [m for m in modules if isinstance(m, str) and m.startswith("livekit.plugins.")]


def load(state_dir: Path) -> AppliedFleet | None:
    """The last applied fleet, or None when nothing was applied yet.

    Raises:
        ValueError: the state file is unreadable or not a fleet (the message says which file).
    """
    path = state_dir / STATE_FILE
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the applied fleet: {exc}") from None
    try:
        fleet = Fleet.model_validate(payload["fleet"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not an applied fleet: {exc}") from None
    return AppliedFleet(
        fleet,
        payload.get("revision") or revision(fleet),
        payload.get("source"),
        payload.get("applied_at", ""),
        dict(payload.get("values") or {}),
    )
