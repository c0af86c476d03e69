"""Samples of job-process memory, host/cgroup CPU and host/cgroup memory (psutil and cgroup files).

Everything here blocks (psutil reads ``/proc``; PSS walks the target's page tables, which takes
milliseconds for a large process), so the monitor calls it through ``anyio.to_thread``; the
readers keep no event-loop state and are safe to call from a worker thread.

**Job memory** is PSS where the OS gives it (``memory_full_info()``: proportional set size,
shared pages divided among their sharers, so the sum over processes is the real physical
use), else USS (private pages), else RSS, the SDK's order. A process that has exited, turned
zombie or cannot be read is left out of the sweep rather than failing it.

**CPU** is the busy share of the CPUs this process may use, in [0, 1], between two reads:
under a cgroup quota the cgroup's CPU time over wall time times the quota (``CgroupCpuReader``,
wall time is the ``now`` the caller passes), otherwise the busy share of all host CPUs from
``psutil.cpu_times()`` deltas (``HostCpuReader``; the deltas are our own, so another caller of
``psutil.cpu_percent()`` cannot disturb them). The first read of a reader only sets its
baseline and returns ``None``.

**Memory share** (the ``memory`` load signal) is used/total of the host, or working set over
limit of the cgroup when it has a memory limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import anyio.to_thread
import psutil

from lksup.monitors.cgroup import (
    CGROUP_ROOT,
    PROC_SELF_CGROUP,
    CpuLimit,
    MemoryLimit,
    find_cpu_limit,
    find_memory_limit,
)
from lksup.monitors.memory_policy import MIB

MemoryKind = Literal["pss", "uss", "rss"]

#: A cgroup CPU-time delta may exceed the ideal maximum by this factor (timer jitter) before
#: it is discarded as torn (some hypervisors serve an inconsistent per-CPU sum).
_TORN_SLACK = 1.10


@dataclass(frozen=True, slots=True)
class MemorySample:
    """The memory of one process at one sweep."""

    pid: int
    bytes: int
    kind: MemoryKind

    @property
    def mb(self) -> float:
        """The figure in MB (MiB)."""
        return self.bytes / MIB


def _sample_one(pid: int) -> MemorySample | None:
    try:
        process = psutil.Process(pid)
        try:
            full = process.memory_full_info()
        except psutil.AccessDenied:
            # PSS/USS need ptrace-level access to the target; RSS is world-readable.
            rss = process.memory_info().rss
            return MemorySample(pid, rss, "rss") if rss else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return None
    for kind in ("pss", "uss", "rss"):
        value = int(getattr(full, kind, 0) or 0)
        if value:
            return MemorySample(pid, value, kind)
    return None


def sample_memory(pids: Iterable[int]) -> dict[int, MemorySample]:
    """Sample the memory of every process in ``pids`` in one sweep (blocking).

    Args:
        pids: the job processes to sample.

    Returns:
        A sample per process that could be read; processes that vanished, are zombies or
        cannot be read are absent.
    """
    samples: dict[int, MemorySample] = {}
    for pid in pids:
        sample = _sample_one(pid)
        if sample is not None:
            samples[pid] = sample
    return samples


async def sample_memory_async(pids: Iterable[int]) -> dict[int, MemorySample]:
    """:func:`sample_memory` in a worker thread, so the event loop keeps running."""
    pid_list = list(pids)
    return await anyio.to_thread.run_sync(sample_memory, pid_list)


# --- CPU -------------------------------------------------------------------------------------


class CpuReader(Protocol):
    """A source of CPU share; the monitor calls ``read`` from a worker thread."""

    def read(self, now: float) -> float | None:
        """The CPU share in [0, 1] since the previous read.

        Args:
            now: the time of this read on the monitor's clock (seconds).

        Returns:
            The share, or ``None`` when there is nothing to report yet (the first read, or a
            delta that cannot be trusted).
        """
        ...


class HostCpuReader:
    """Busy share of all host CPUs, from ``psutil.cpu_times()`` deltas."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    @staticmethod
    def _busy_total() -> tuple[float, float]:
        times = psutil.cpu_times()
        total = sum(times)
        # Linux counts guest time inside user/nice too; psutil subtracts it the same way.
        total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
        idle = times.idle + getattr(times, "iowait", 0.0)
        return total - idle, total

    def read(self, now: float) -> float | None:
        """See :meth:`CpuReader.read` (``now`` is not needed: the counters carry their time)."""
        busy, total = self._busy_total()
        last, self._last = self._last, (busy, total)
        if last is None or total <= last[1]:
            return None
        return min(1.0, max(0.0, (busy - last[0]) / (total - last[1])))


class CgroupCpuReader:
    """CPU time of a cgroup over wall time times its quota (livekit-agents' cgroup monitor)."""

    def __init__(self, limit: CpuLimit, *, host_cpus: int | None = None) -> None:
        self.limit = limit
        self._host_cpus = host_cpus or psutil.cpu_count() or 1
        self._last: tuple[float, float] | None = None

    def read(self, now: float) -> float | None:
        """See :meth:`CpuReader.read`."""
        usage = self.limit.read_usage()
        last, self._last = self._last, (now, usage)
        if last is None or now <= last[0]:
            return None
        elapsed, used = now - last[0], usage - last[1]
        if not 0 <= used <= elapsed * self._host_cpus * _TORN_SLACK:
            return None
        return min(1.0, used / (elapsed * self.limit.cpus))


def detect_cpu_reader(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> CpuReader:
    """A cgroup reader when this process runs under a CPU quota, else a host reader."""
    limit = find_cpu_limit(root, proc_cgroup)
    return HostCpuReader() if limit is None else CgroupCpuReader(limit)


# --- memory share ----------------------------------------------------------------------------


class MemoryShareReader(Protocol):
    """A source of the ``memory`` load signal; called from a worker thread."""

    def read(self) -> float:
        """The used share of the memory this process may use, in [0, 1]."""
        ...


class HostMemoryReader:
    """Used share of the host's RAM: (total - available) / total, psutil's ``percent``."""

    def read(self) -> float:
        """See :meth:`MemoryShareReader.read`."""
        memory = psutil.virtual_memory()
        return min(1.0, max(0.0, (memory.total - memory.available) / memory.total))


class CgroupMemoryReader:
    """Working set of a cgroup over its memory limit."""

    def __init__(self, limit: MemoryLimit) -> None:
        self.limit = limit

    def read(self) -> float:
        """See :meth:`MemoryShareReader.read`."""
        return min(1.0, self.limit.read_usage() / self.limit.limit_bytes)


def detect_memory_share_reader(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> MemoryShareReader:
    """A cgroup reader when this process runs under a memory limit, else a host reader."""
    limit = find_memory_limit(root, proc_cgroup, host_total=psutil.virtual_memory().total)
    return HostMemoryReader() if limit is None else CgroupMemoryReader(limit)
