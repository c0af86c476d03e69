"""The job-start rehearsal a template runs before it forks, and the idle walk of a job process."""

from __future__ import annotations

import logging
import os

import anyio
import pytest

from lksup.jobs import rehearsal


def open_descriptors() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_the_rehearsal_runs_a_job_and_leaves_no_thread_descriptor_or_log_behind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(rehearsal, "_done", False)
    anyio.run(rehearsal._rehearsal, backend="asyncio")  # it completes (rehearse hides errors)
    threads, descriptors = len(os.listdir("/proc/self/task")), open_descriptors()
    caplog.clear()
    rehearsal.rehearse()
    rehearsal.rehearse()  # once per process
    assert len(os.listdir("/proc/self/task")) == threads
    assert open_descriptors() == descriptors
    assert caplog.records == []
    assert logging.root.manager.disable == logging.NOTSET  # logging is as it was


@pytest.mark.anyio
async def test_the_idle_walk_logs_nothing_and_starts_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    threads = len(os.listdir("/proc/self/task"))
    await rehearsal.walk()
    assert caplog.records == []
    assert len(os.listdir("/proc/self/task")) == threads
