"""The coordinated drain of a stopping daemon: every agent at once, against one deadline.

The first SIGTERM or SIGINT drains every agent against the fleet's ``supervisor.drain_timeout``
(none without a fleet: the stop sequence at once), tells systemd, logs its progress, and then
runs the stop sequence on whatever is left. Whether every job finished decides the exit status
(``daemon.main``).
"""

from __future__ import annotations

import logging

import anyio

from lksup.daemon.notify import SystemdReporter
from lksup.daemon.supervisor import Supervisor
from lksup.fleet.durations import format_duration

log = logging.getLogger("lksup.daemon")

#: The longest a drain goes without a progress line in the log.
PROGRESS_INTERVAL = 10.0


async def drain_and_stop(supervisor: Supervisor, systemd: SystemdReporter) -> bool:
    """Drain everything, then stop what is left; whether every job finished in time."""
    fleet = supervisor.fleet
    timeout = fleet.supervisor.drain_timeout if fleet is not None else 0.0
    deadline = anyio.current_time() + timeout if timeout else None
    systemd.drain_started(supervisor.running_jobs(), timeout)
    finished = False
    async with anyio.create_task_group() as tg:
        tg.start_soon(log_progress, supervisor, deadline)
        finished = await supervisor.drain_all(timeout or None)
        tg.cancel_scope.cancel()
    if finished:
        log.info("drained: every job finished")
    else:
        log.warning("drain deadline reached: the remaining jobs were stopped")
    await supervisor.stop_all()
    return finished


async def log_progress(supervisor: Supervisor, deadline: float | None) -> None:
    """Log the drain's progress: at once, on each change, at least every PROGRESS_INTERVAL.

    The line reads "draining: 3 jobs left on 2 agents, deadline in 29m12s". Job counts are
    looked at on each change the supervisor is told of (a job that ends is one), not polled.
    """
    last: tuple[int, int] | None = None
    logged_at = 0.0
    while True:
        changed = supervisor.change_event()  # before reading: no change slips in between
        now = anyio.current_time()
        jobs = supervisor.jobs_by_agent()
        counts = (sum(jobs.values()), sum(1 for count in jobs.values() if count))
        if counts != last or now - logged_at >= PROGRESS_INTERVAL:
            total, agents = counts
            left = (
                f", deadline in {format_duration(max(0.0, deadline - now))}"
                if deadline is not None
                else ", no deadline"
            )
            log.info(
                "draining: %d job%s left on %d agent%s%s",
                total,
                "" if total == 1 else "s",
                agents,
                "" if agents == 1 else "s",
                left,
            )
            last, logged_at = counts, now
        with anyio.move_on_after(logged_at + PROGRESS_INTERVAL - anyio.current_time()):
            await changed.wait()
