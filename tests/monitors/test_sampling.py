from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from lksup.monitors.memory_policy import MIB
from lksup.monitors.sampling import (
    HostCpuReader,
    HostMemoryReader,
    MemorySample,
    detect_cpu_reader,
    detect_memory_share_reader,
    sample_memory,
    sample_memory_async,
)
from tests.monitors.helpers import allocating_child

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PSS is Linux-only")


@linux_only
def test_sample_memory_of_the_test_process_is_pss() -> None:
    """PSS where the OS gives it: our own process is always readable."""
    samples = sample_memory([os.getpid()])
    sample = samples[os.getpid()]
    assert sample.kind == "pss"
    assert 1 * MIB < sample.bytes < 8 * 1024 * MIB
    assert sample.mb == sample.bytes / MIB


def test_vanished_processes_are_left_out() -> None:
    assert sample_memory([2**31 - 1]) == {}


@linux_only
def test_zombies_are_left_out() -> None:
    """A child that exited but is not reaped yet has no memory to report."""
    with subprocess.Popen([sys.executable, "-c", "pass"]) as child:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, still a zombie
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
        assert sample_memory([child.pid, os.getpid()]).keys() == {os.getpid()}


def test_inaccessible_pss_falls_back_to_rss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without access to a process's page maps (another user's), RSS is reported."""

    def denied(self: psutil.Process) -> object:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "memory_full_info", denied)
    sample = sample_memory([os.getpid()])[os.getpid()]
    assert sample.kind == "rss"
    assert sample.bytes > 1 * MIB


def test_uss_when_there_is_no_pss(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and Windows give USS but no PSS."""

    class Full:
        uss = 7 * MIB
        rss = 9 * MIB

    monkeypatch.setattr(psutil.Process, "memory_full_info", lambda self: Full())
    assert sample_memory([os.getpid()])[os.getpid()] == MemorySample(os.getpid(), 7 * MIB, "uss")


@linux_only
@pytest.mark.anyio
async def test_pss_of_a_child_grows_past_a_threshold() -> None:
    """A child that allocates 120 MB shows it in its PSS, read off the event loop."""
    async with allocating_child() as child:
        await child.allocate(0)
        before = (await sample_memory_async([child.pid]))[child.pid]
        assert before.kind == "pss"
        assert before.bytes < 100 * MIB
        await child.allocate(120)
        after = (await sample_memory_async([child.pid]))[child.pid]
        assert after.kind == "pss"
        assert after.bytes > 100 * MIB
        assert after.bytes - before.bytes >= 110 * MIB


def test_host_cpu_share_is_a_fraction() -> None:
    """The first read is a baseline; the next is the busy share in [0, 1]."""
    reader = HostCpuReader()
    assert reader.read(0.0) is None
    start = time.process_time()
    while time.process_time() - start < 0.05:  # spend CPU so the counters move
        pass
    share = reader.read(1.0)
    assert share is not None
    assert 0.0 < share <= 1.0


def test_detected_readers_give_fractions() -> None:
    """On this host (whatever its cgroups), the detected readers answer in [0, 1]."""
    cpu = detect_cpu_reader()
    cpu.read(time.monotonic())
    start = time.process_time()
    while time.process_time() - start < 0.05:
        pass
    share = cpu.read(time.monotonic())
    assert share is None or 0.0 <= share <= 1.0
    assert 0.0 < detect_memory_share_reader().read() <= 1.0
    assert 0.0 < HostMemoryReader().read() <= 1.0
