"""The buffers behind `lksup events` and `lksup logs`, and how events are derived."""

from __future__ import annotations

import logging
import threading

import anyio
import pytest

from lksup.daemon.journal import Event, EventRecorder, Journal, LogBuffer, RunningJob, Snapshot
from lksup.pool.ended import EndedJob

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_items_are_numbered_bounded_per_key_and_read_in_order() -> None:
    journal: Journal[tuple[str, int]] = Journal(3, key=lambda item: item[0])
    for index in range(5):
        journal.append(("chatty", index))
    journal.append(("quiet", 0))
    assert journal.last == 6
    # the chatty key kept its last 3; the quiet one was never pushed out
    assert journal.since(0) == [
        (3, ("chatty", 2)),
        (4, ("chatty", 3)),
        (5, ("chatty", 4)),
        (6, ("quiet", 0)),
    ]
    assert journal.since(4, key="chatty", only_key=True) == [(5, ("chatty", 4))]
    assert journal.since(0, lambda item: item[1] == 0) == [(6, ("quiet", 0))]


async def test_a_reader_waits_for_the_next_item_and_gives_up_in_time() -> None:
    journal: Journal[str] = Journal(10)
    with anyio.fail_after(5):
        assert await journal.after(0, 0.05) == []  # nothing came: empty, not an error
        async with anyio.create_task_group() as tg:
            found: list[tuple[int, str]] = []

            async def read() -> None:
                found.extend(await journal.after(0, 5))

            tg.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            journal.append("first")  # on the loop's thread: the reader wakes at once
        assert found == [(1, "first")]
        # appended from another thread (a logging call there) while a reader waits: the
        # reader wakes (through the loop's thread-safe call)
        later: list[tuple[int, str]] = []

        async def read_later() -> None:
            later.extend(await journal.after(1, 5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_later)
            await anyio.wait_all_tasks_blocked()
            thread = threading.Thread(target=journal.append, args=("second",))
            thread.start()
            await anyio.to_thread.run_sync(thread.join)
        assert later == [(2, "second")]


def ended(job_id: str, room: str, error: str | None, reason: str = "") -> EndedJob:
    kind = "memory" if error and "memory" in error else None
    return EndedJob(job_id, room, 1, error, reason, 0.0, 1.0, kind, worker_id="AW_1")


def snapshot(state: str = "running", **changes: object) -> Snapshot:
    fields: dict[str, object] = {
        "state": state,
        "message": "",
        "worker_id": "AW_1",
        "restarts": 0,
        "drained": False,
        "running": {},
        "ended": {},
    }
    fields.update(changes)
    return Snapshot(**fields)  # type: ignore[arg-type]


def test_events_are_the_differences_between_observations() -> None:
    journal: Journal[Event] = Journal(100)
    recorder = EventRecorder(journal, clock=lambda: 1_700_000_000.0)
    recorder.observe({"sales": snapshot("starting", worker_id=None)})
    recorder.observe({"sales": snapshot("starting", worker_id=None)})  # nothing new
    recorder.observe({"sales": snapshot(running={"AJ_1": RunningJob("room-1", False, "AW_1")})})
    recorder.observe({"sales": snapshot(running={"AJ_1": RunningJob("room-1", True, "AW_1")})})
    recorder.observe(
        {
            "sales": snapshot(
                "backoff",
                message="crashed 3 times",
                restarts=1,
                drained=True,
                ended={
                    "AJ_1": ended("AJ_1", "room-1", "memory limit exceeded (300 MB > 120 MB)"),
                    "AJ_2": ended("AJ_2", "room-2", None, reason="user ended"),
                },
            )
        }
    )
    recorder.observe({})
    seen = [(e.type, e.reason, e.agent, e.job_id, e.message) for _, e in journal.since(0)]
    assert seen == [
        ("Normal", "AgentAdded", "sales", None, "agent sales added (starting)"),
        ("Normal", "StateChanged", "sales", None, "starting -> running"),
        ("Normal", "Registered", "sales", None, "registered as AW_1"),
        ("Normal", "JobAssigned", "sales", "AJ_1", "job assigned (room room-1)"),
        ("Normal", "JobStarted", "sales", "AJ_1", "job started (room room-1)"),
        ("Warning", "StateChanged", "sales", None, "running -> backoff: crashed 3 times"),
        ("Warning", "Restarted", "sales", None, "worker restarted (1 so far): crashed 3 times"),
        ("Normal", "Drained", "sales", None, "by an operator"),
        (
            "Warning",
            "MemoryKill",
            "sales",
            "AJ_1",
            "job failed (room room-1): memory limit exceeded (300 MB > 120 MB)",
        ),
        ("Normal", "JobSucceeded", "sales", "AJ_2", "job succeeded (room room-2): user ended"),
        ("Normal", "AgentRemoved", "sales", None, "agent sales removed"),
    ]
    # job events name their room and the worker given the job, as fields of their own
    jobs = [e for _, e in journal.since(0) if e.job_id is not None]
    assert [(e.room, e.worker_id) for e in jobs] == [
        ("room-1", "AW_1"),
        ("room-1", "AW_1"),
        ("room-1", "AW_1"),
        ("room-2", "AW_1"),
    ]
    document = journal.since(0)[0][1].document(1)
    assert document["time"] == "2023-11-14T22:13:20.000+00:00"
    assert document["seq"] == 1


async def test_log_records_are_kept_per_agent_with_their_fields() -> None:
    buffer = LogBuffer()
    log = logging.getLogger("test.journal")
    log.addHandler(buffer)
    log.setLevel(logging.INFO)
    try:
        log.info("hello %s", "there", extra={"agent": "sales", "job_id": "AJ_1"})
        log.info("supervisor line")
        log.warning("other", extra={"agent": "survey", "fields": {"customer_id": "c-7"}})
    finally:
        log.removeHandler(buffer)
    sales = await buffer.read(0, agent="sales")
    assert [(r["msg"], r["job_id"]) for _, r in sales] == [("hello there", "AJ_1")]
    (survey,) = await buffer.read(0, agent="survey")
    assert survey[1]["customer_id"] == "c-7"  # a job's own extra fields are kept
    assert [r["msg"] for _, r in await buffer.read(0)] == [
        "hello there",
        "supervisor line",
        "other",
    ]
    assert await buffer.read(0, job_id="AJ_2") == []
    assert await buffer.read(0, since=survey[1]["created"] + 1) == []
