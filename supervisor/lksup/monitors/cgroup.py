"""The supervisor's cgroup CPU and memory limits (v1 and v2), found and read from /sys/fs/cgroup.

In a container the host's CPU and memory figures are the wrong denominator: a pod limited to
2 CPUs on a 64-core node is saturated at 3 % host CPU. livekit-agents therefore measures CPU
against the cgroup quota when there is one (``lka/utils/hw/cpu.py``); lksup does the same for
CPU and, for the ``memory`` load signal, against the cgroup memory limit.

Where the files are:

- **v2** (``cgroup.controllers`` at the root of the mount): the process's cgroup is the
  ``0::/path`` line of ``/proc/self/cgroup``; limits are ``cpu.max`` (``"QUOTA PERIOD"``, or
  ``"max PERIOD"`` for no limit) and ``memory.max`` (bytes, or ``"max"``); usage is
  ``usage_usec`` in ``cpu.stat`` and ``memory.current``.
- **v1** (one mount per controller: ``cpu``, ``cpuacct``, ``memory``, or ``cpu,cpuacct``):
  ``cpu.cfs_quota_us`` (``-1``: no limit) over ``cpu.cfs_period_us``; usage ``cpuacct.usage``
  (nanoseconds); ``memory.limit_in_bytes`` (a huge number, larger than the host, means no
  limit) and ``memory.usage_in_bytes``.

The process's own cgroup directory is searched first, then its ancestors up to the mount, and
the nearest one that sets a limit is used (a limit set on a parent, such as a systemd slice,
binds too). When the path from ``/proc/self/cgroup`` does not exist under the mount (a
container whose cgroup namespace is the host's), the search starts at the mount itself, which
is then the container's own cgroup. Memory usage is the working set, usage minus
``inactive_file`` page cache, as the kubelet counts it, so a file-heavy host does not look full.

Parsing is in pure functions (tested on strings); the rest reads small files once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


# --- parsing (pure) --------------------------------------------------------------------------


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map each controller of ``/proc/self/cgroup`` to its cgroup path; v2's key is ``""``."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a v2 ``cpu.max`` (``"150000 100000"`` -> 1.5); ``None`` for ``max``."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    period = int(fields[1]) if len(fields) > 1 else 100_000
    quota = int(fields[0])
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_limit(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; ``None`` for ``-1``."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def parse_cpu_stat_usage(text: str) -> float:
    """CPU seconds used, from the ``usage_usec`` line of a v2 ``cpu.stat``.

    Raises:
        ValueError: the file has no ``usage_usec`` line.
    """
    value = parse_stat_value(text, "usage_usec")
    if value is None:
        raise ValueError("cpu.stat has no usage_usec line")
    return value / 1_000_000


def parse_cpuacct_usage(text: str) -> float:
    """CPU seconds used, from a v1 ``cpuacct.usage`` (nanoseconds)."""
    return int(text.strip()) / 1_000_000_000


def parse_memory_limit(text: str, *, host_total: int) -> int | None:
    """A memory limit in bytes; ``None`` for ``max`` or a value no smaller than the host's RAM.

    cgroup v1 writes "no limit" as a page-rounded ``2**63 - 1``; any limit at least as large
    as the host's memory does not bind either.
    """
    value = text.strip()
    if value == "max":
        return None
    limit = int(value)
    return limit if 0 < limit < host_total else None


def parse_stat_value(text: str, key: str) -> int | None:
    """The integer after ``key`` in a ``KEY VALUE`` file (``cpu.stat``, ``memory.stat``)."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == key:
            return int(fields[1])
    return None


def search_dirs(mount: Path, cgroup_path: str) -> list[Path]:
    """The existing directories from ``mount/cgroup_path`` up to ``mount``, nearest first."""
    parts = [p for p in cgroup_path.split("/") if p]
    found = [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [d for d in found if d.is_dir()]


# --- limits ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuLimit:
    """A cgroup CPU quota and the file that counts the cgroup's CPU time."""

    version: Literal[1, 2]
    cpus: float
    usage_file: Path

    def read_usage(self) -> float:
        """CPU seconds used by the cgroup so far (monotonic; blocking file read)."""
        text = self.usage_file.read_text()
        return parse_cpu_stat_usage(text) if self.version == 2 else parse_cpuacct_usage(text)


@dataclass(frozen=True)
class MemoryLimit:
    """A cgroup memory limit and the directory whose usage counts against it."""

    version: Literal[1, 2]
    limit_bytes: int
    directory: Path

    def read_usage(self) -> int:
        """The cgroup's working set in bytes: usage minus inactive page cache (blocking)."""
        if self.version == 2:
            usage = int((self.directory / "memory.current").read_text())
            key = "inactive_file"
        else:
            usage = int((self.directory / "memory.usage_in_bytes").read_text())
            key = "total_inactive_file"
        stat = self.directory / "memory.stat"
        inactive = parse_stat_value(stat.read_text(), key) if stat.is_file() else None
        return max(0, usage - (inactive or 0))


def _own_paths(proc_cgroup: Path) -> dict[str, str]:
    try:
        return parse_proc_cgroup(proc_cgroup.read_text())
    except OSError:
        return {}


def _is_v2(root: Path) -> bool:
    return (root / "cgroup.controllers").is_file()


def _v1_mount(root: Path, *names: str) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def find_cpu_limit(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> CpuLimit | None:
    """The CPU quota this process runs under, or ``None`` when there is none."""
    own = _own_paths(proc_cgroup)
    if _is_v2(root):
        for directory in search_dirs(root, own.get("", "/")):
            cpu_max, stat = directory / "cpu.max", directory / "cpu.stat"
            if cpu_max.is_file() and stat.is_file():
                cpus = parse_cpu_max(cpu_max.read_text())
                if cpus is not None:
                    return CpuLimit(2, cpus, stat)
        return None
    cpu_mount = _v1_mount(root, "cpu", "cpu,cpuacct", "cpuacct,cpu")
    acct_mount = _v1_mount(root, "cpuacct", "cpu,cpuacct", "cpuacct,cpu")
    if cpu_mount is None or acct_mount is None:
        return None
    for directory in search_dirs(cpu_mount, own.get("cpu", "/")):
        quota, period = directory / "cpu.cfs_quota_us", directory / "cpu.cfs_period_us"
        if not (quota.is_file() and period.is_file()):
            continue
        cpus = parse_cfs_limit(quota.read_text(), period.read_text())
        if cpus is None:
            continue
        # The same cgroup in the cpuacct hierarchy (usually the same mount), else its root.
        relative = directory.relative_to(cpu_mount)
        for usage_dir in (acct_mount / relative, acct_mount):
            if (usage_dir / "cpuacct.usage").is_file():
                return CpuLimit(1, cpus, usage_dir / "cpuacct.usage")
        return None
    return None


def find_memory_limit(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP, *, host_total: int
) -> MemoryLimit | None:
    """The memory limit this process runs under, or ``None`` when there is none.

    Args:
        root: the cgroup mount root.
        proc_cgroup: the process's ``/proc/self/cgroup``.
        host_total: the host's RAM in bytes; a limit at least this large does not bind.
    """
    own = _own_paths(proc_cgroup)
    if _is_v2(root):
        mount, path, limit_name, version = root, own.get("", "/"), "memory.max", 2
    else:
        v1 = _v1_mount(root, "memory")
        if v1 is None:
            return None
        mount, path, limit_name, version = v1, own.get("memory", "/"), "memory.limit_in_bytes", 1
    for directory in search_dirs(mount, path):
        limit_file = directory / limit_name
        if limit_file.is_file():
            limit = parse_memory_limit(limit_file.read_text(), host_total=host_total)
            if limit is not None:
                return MemoryLimit(2 if version == 2 else 1, limit, directory)
    return None
