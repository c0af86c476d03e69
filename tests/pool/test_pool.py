"""The warm pool with real job processes: sizing and refill, offers, job outcomes, crashes,
the stop sequence, backoff. Every wait is a handshake on the pool's own state changes."""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import anyio
import psutil
import pytest

from lksup.pool.pool import Histogram, RequestPolicy
from lksup.pool.process import ProcessState
from lksup.protocol.backoff import Backoff
from lksup.protocol.events import Accept, Decline, JobAssigned, OfferReceived
from tests.pool.helpers import Reporter, make_job, offer_and_run, running_pool, spec, wait_for

pytestmark = pytest.mark.anyio


async def test_keeps_the_warm_pool_at_its_target_and_refills_after_a_job(
    agent_dir: Path, launch: str
) -> None:
    async with running_pool(spec(agent_dir), num_idle=2, launch=launch) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 2)
        first_pids = {p.pid for p in pool.idle}
        reporter = Reporter()
        answer = await offer_and_run(pool, reporter, make_job("AJ_1"))
        assert answer == Accept("agent-AJ_1", "", "", {})
        assert reporter.ended == {"AJ_1": None}
        await wait_for(pool, lambda: len(pool.idle) == 2 and not pool.running)
        assert len(first_pids & {p.pid for p in pool.idle}) == 1  # one used up, one new
        assert pool.stats.spawned == 3


async def test_prewarm_userdata_is_visible_in_the_job(
    agent_dir: Path, launch: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lksup.job")
    async with running_pool(spec(agent_dir, env={"MODEL": "large"}), launch=launch) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 1)
        warm_pid = pool.idle[0].pid
        reporter = Reporter()
        await offer_and_run(pool, reporter, make_job("AJ_1"))
    (record,) = [r for r in caplog.records if "entrypoint AJ_1" in r.getMessage()]
    assert record.getMessage() == f"entrypoint AJ_1 model=loaded-large pid={warm_pid}"
    assert (record.agent, record.job_id, record.pid) == ("pool-agent", "AJ_1", warm_pid)  # type: ignore[attr-defined]


async def test_running_is_reported_only_after_the_entrypoint_started(agent_dir: Path) -> None:
    async with running_pool(spec(agent_dir)) as pool:
        reporter = Reporter()
        await offer_and_run(pool, reporter, make_job("AJ_1"))
        assert reporter.events == [("started", "AJ_1"), ("ended", "AJ_1")]
        assert pool.stats.start_latency.count == 1


@pytest.mark.parametrize(
    ("mode", "error", "kind"),
    [
        ("", None, None),
        ("raise", "RuntimeError: boom", "exception"),
        ("exit3", "job process exited with code 3", "exit_code"),
        ("segv", "job process killed by signal SIGSEGV", "signal"),
        ("sigkill", "job process killed by signal SIGKILL", "signal"),
    ],
)
async def test_job_outcomes_and_crash_reasons(
    agent_dir: Path,
    launch: str,
    mode: str,
    error: str | None,
    kind: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lksup.job")
    async with running_pool(spec(agent_dir), num_idle=1, launch=launch) as pool:
        reporter = Reporter()
        await offer_and_run(pool, reporter, make_job("AJ_1", metadata=mode))
        assert reporter.ended == {"AJ_1": error}
        assert pool.stats.failures == ({kind: 1} if kind else {})  # metrics count by kind
        if mode == "raise":  # the job's traceback: a field of its own, not inside the message
            (failed,) = [r for r in caplog.records if getattr(r, "traceback", None)]
            assert failed.traceback.startswith("Traceback")  # type: ignore[attr-defined]
            assert failed.traceback.endswith("RuntimeError: boom")  # type: ignore[attr-defined]
            assert "Traceback" not in failed.getMessage()
        # the pool refills, and the next job is unaffected
        await wait_for(pool, lambda: len(pool.idle) == 1)
        await offer_and_run(pool, reporter, make_job("AJ_2"))
        assert reporter.ended["AJ_2"] is None


async def test_termination_runs_shutdown_callbacks_and_succeeds(
    agent_dir: Path, launch: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lksup.job")
    async with running_pool(spec(agent_dir), launch=launch) as pool:
        reporter = Reporter()
        job = make_job("AJ_1", metadata="hold")
        await pool.decide(OfferReceived(job))
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run_job, JobAssigned(job, token="jwt"), reporter)
            await wait_for(pool, lambda: "AJ_1" in pool.running and reporter.started == ["AJ_1"])
            pool.terminate("AJ_1")
        assert reporter.ended == {"AJ_1": None}
    messages = [r.getMessage() for r in caplog.records]
    assert "shutdown callback: terminated by the server" in messages


async def test_closing_the_pool_gives_running_jobs_the_stop_sequence(
    agent_dir: Path, launch: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: aclose cancelled the task group holding the processes, which SIGKILLed
    them at once: a job at a drain deadline never saw its shutdown callbacks."""
    caplog.set_level(logging.INFO, logger="lksup.job")
    async with running_pool(spec(agent_dir), launch=launch) as pool:
        reporter = Reporter()
        job = make_job("AJ_1", metadata="hold")
        await pool.decide(OfferReceived(job))
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run_job, JobAssigned(job, token="jwt"), reporter)
            await wait_for(pool, lambda: "AJ_1" in pool.running and reporter.started == ["AJ_1"])
            with anyio.fail_after(15):
                await pool.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert "shutdown callback: supervisor stopping" in messages


async def test_stop_sequence_escalates_to_sigkill(
    agent_dir: Path, launch: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lksup.pool")
    async with running_pool(
        spec(agent_dir, shutdown_timeout=0.3, term_grace=0.3), launch=launch
    ) as pool:
        reporter = Reporter()
        job = make_job("AJ_1", metadata="stubborn")
        await pool.decide(OfferReceived(job))
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run_job, JobAssigned(job, token="jwt"), reporter)
            await wait_for(pool, lambda: reporter.started == ["AJ_1"])
            process = pool.running["AJ_1"]
            with anyio.fail_after(10):
                pool.terminate("AJ_1")
        assert process.exit_code == -9
        assert reporter.ended == {"AJ_1": "job process killed by signal SIGKILL"}
    messages = [r.getMessage() for r in caplog.records]
    assert f"Job process {process.pid} did not stop in 0.3s; sending SIGTERM." in messages
    assert f"Job process {process.pid} ignored SIGTERM; killing it." in messages


async def test_request_function_accepts_rejects_and_times_out(agent_dir: Path, launch: str) -> None:
    process_spec = spec(agent_dir, request_fnc="pool_test_agent:request")
    async with running_pool(process_spec, num_idle=1, launch=launch) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 1)
        yes = await pool.decide(OfferReceived(make_job("AJ_1", room="yes-1")))
        assert yes == Accept("chosen-AJ_1", "Chosen", "", {"k": "v"})
        assert set(pool.reserved) == {"AJ_1"}
        assert pool.idle == []  # no refill while the job's start is pending (it would slow it)
        pool.release("AJ_1")  # no assignment came: the process is warm again
        assert len(pool.idle) == 1
        no = await pool.decide(OfferReceived(make_job("AJ_2", room="no-1")))
        assert no == Decline(terminate=True, reason="request function", cause="request_fnc")
        assert "AJ_2" not in pool.reserved
        # a hanging request function: the session's budget cuts it, and the process goes back
        with anyio.move_on_after(0.5):
            await pool.decide(OfferReceived(make_job("AJ_3", room="slow-1")))
        pool.release("AJ_3")
        assert "AJ_3" not in pool.reserved


async def test_declarative_policy_filters_rooms_and_fills_templates(agent_dir: Path) -> None:
    policy = RequestPolicy(room="support-*", identity="cs-{job_id}", name="{agent_name} in {room}")
    async with running_pool(spec(agent_dir), policy=policy) as pool:
        other = await pool.decide(OfferReceived(make_job("AJ_1", room="sales-1")))
        assert other == Decline(reason="room 'sales-1' does not match 'support-*'", cause="room")
        mine = await pool.decide(OfferReceived(make_job("AJ_2", room="support-7")))
        assert mine == Accept("cs-AJ_2", "pool-agent in support-7", "", {})


async def test_released_reservation_returns_the_process(agent_dir: Path) -> None:
    async with running_pool(spec(agent_dir), num_idle=1) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 1)
        pid = pool.idle[0].pid
        await pool.decide(OfferReceived(make_job("AJ_1")))
        assert pool.reserved["AJ_1"].pid == pid
        pool.release("AJ_1")
        assert pool.idle[0].pid == pid
        assert pool.idle[0].state is ProcessState.READY


async def test_offer_without_a_warm_process_starts_one_on_demand(agent_dir: Path) -> None:
    async with running_pool(spec(agent_dir), num_idle=0) as pool:
        assert pool.idle == []
        reporter = Reporter()
        answer = await offer_and_run(pool, reporter, make_job("AJ_1"))
        assert isinstance(answer, Accept)
        assert reporter.ended == {"AJ_1": None}


async def test_once_starts_succeed_an_offer_is_accepted_while_its_process_starts(
    agent_dir: Path, launch: str
) -> None:
    """With no warm process, the first offer waits for its process (a start may fail); once
    starts have succeeded, an offer is answered at once and its process starts meanwhile, so
    the start overlaps the assignment's round trip; the job then runs in that process."""
    async with running_pool(spec(agent_dir), num_idle=0, launch=launch) as pool:
        reporter = Reporter()
        first = await pool.decide(OfferReceived(make_job("AJ_1")))
        assert isinstance(first, Accept)
        assert "AJ_1" in pool.reserved  # its process was started before the answer
        await pool.run_job(JobAssigned(make_job("AJ_1"), token="jwt"), reporter)
        second = await pool.decide(OfferReceived(make_job("AJ_2")))
        assert second == Accept("agent-AJ_2", "", "", {})
        assert "AJ_2" in pool.early  # answered before its process is ready
        assert "AJ_2" not in pool.reserved
        await pool.run_job(JobAssigned(make_job("AJ_2"), token="jwt"), reporter)
        assert reporter.ended == {"AJ_1": None, "AJ_2": None}
        assert pool.early == {}
        # an offer released before its assignment leaves the process it started warm
        await pool.decide(OfferReceived(make_job("AJ_3")))
        assert "AJ_3" in pool.early
        pool.release("AJ_3")
        await wait_for(pool, lambda: len(pool.idle) == 1)
        assert pool.idle[0].state is ProcessState.READY
        assert pool.reserved == {}


async def test_a_request_function_is_never_answered_before_its_process_runs_it(
    agent_dir: Path,
) -> None:
    async with running_pool(
        spec(agent_dir, request_fnc="pool_test_agent:request"), num_idle=0
    ) as pool:
        reporter = Reporter()
        await offer_and_run(pool, reporter, make_job("AJ_1", room="yes-1"))
        answer = await pool.decide(OfferReceived(make_job("AJ_2", room="yes-2")))
        assert isinstance(answer, Accept)
        assert answer.identity == "chosen-AJ_2"  # the request function's own answer
        assert pool.early == {}
        pool.release("AJ_2")


async def test_failing_prewarm_puts_the_agent_in_backoff(agent_dir: Path, launch: str) -> None:
    failing = spec(agent_dir, env={"FAIL_PREWARM": "1"})
    backoff = Backoff(initial_delay=0.2, factor=2, max_delay=1, jitter=0)
    async with running_pool(failing, backoff=backoff, launch=launch) as pool:
        await wait_for(pool, lambda: pool.consecutive_failures >= 2)
        assert pool.in_backoff or pool.starting
        assert pool.last_failure is not None
        assert "prewarm pool_test_agent:prewarm failed: RuntimeError: no model available" in (
            pool.last_failure
        )
        answer = await pool.decide(OfferReceived(make_job("AJ_1")))
        assert isinstance(answer, Decline)
        # another agent's pool is unaffected
        async with running_pool(spec(agent_dir), num_idle=1) as healthy:
            await wait_for(healthy, lambda: len(healthy.idle) == 1)


async def test_a_flood_of_output_never_blocks_a_job(
    agent_dir: Path, launch: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lksup.job")
    async with running_pool(spec(agent_dir), launch=launch) as pool:
        reporter = Reporter()
        with anyio.fail_after(60):
            await offer_and_run(pool, reporter, make_job("AJ_1", metadata="flood"))
        assert reporter.ended == {"AJ_1": None}
    out = [r for r in caplog.records if getattr(r, "stream", None) == "stdout"]
    err = [r for r in caplog.records if getattr(r, "stream", None) == "stderr"]
    assert len(out) == 20000
    assert len(err) == 20000
    assert out[-1].getMessage().startswith("out line 19999 ")
    assert err[0].levelno == logging.WARNING
    assert all(r.job_id == "AJ_1" for r in out[:10])  # type: ignore[attr-defined]


async def test_children_run_in_their_own_session(agent_dir: Path, launch: str) -> None:
    async with running_pool(spec(agent_dir), launch=launch) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 1)
        child = psutil.Process(pool.idle[0].pid)
        assert os.getsid(child.pid) == child.pid != os.getsid(0)


async def test_an_unresponsive_job_process_is_killed_and_reported(
    agent_dir: Path, launch: str
) -> None:
    process_spec = spec(agent_dir, ping_interval=0.05, ping_timeout=0.5)
    async with running_pool(process_spec, launch=launch) as pool:
        reporter = Reporter()
        with anyio.fail_after(20):  # "stubborn" blocks its event loop: no pong ever comes
            await offer_and_run(pool, reporter, make_job("AJ_1", metadata="stubborn"))
        assert reporter.ended == {"AJ_1": "job process unresponsive"}
        assert pool.stats.failures == {"unresponsive": 1}


async def test_initialisations_are_capped_fleet_wide(agent_dir: Path) -> None:
    """With a cap of 1, no two processes of any agent initialise at the same time."""
    limiter = anyio.CapacityLimiter(1)
    async with (
        running_pool(spec(agent_dir), num_idle=2, init_limiter=limiter) as first,
        running_pool(
            spec(agent_dir, agent_name="other"), num_idle=1, init_limiter=limiter
        ) as second,
    ):
        await wait_for(first, lambda: len(first.idle) == 2)
        await wait_for(second, lambda: len(second.idle) == 1)
        spans = sorted((p.started_at, p.ready_at or 0.0) for p in [*first.idle, *second.idle])
    for (_, ready), (next_start, _) in itertools.pairwise(spans):
        assert ready <= next_start, f"initialisations overlapped: {spans}"


def test_the_latency_histogram_is_bounded_and_cumulative() -> None:
    histogram = Histogram()
    for value in (0.0005, 0.001, 0.003, 7.0):
        histogram.observe(value)
    buckets = dict(histogram.cumulative())
    assert buckets["0.001"] == 2  # <= 0.001, as Prometheus counts
    assert buckets["0.005"] == 3
    assert buckets["2.5"] == 3
    assert buckets["+Inf"] == 4
    other = Histogram()
    other.observe(0.002)
    histogram.add(other)
    assert dict(histogram.cumulative())["+Inf"] == histogram.count == 5
    assert histogram.total == pytest.approx(7.0065)
    assert len(histogram.counts) == len(histogram.bounds) + 1  # whatever it saw
