"""The status documents of a running fleet, built from snapshots at the moment of the call.

What status *says* of an agent (STATE, READY, MESSAGE, SYNC, the conditions' facts) is
``daemon.status``'s; this module puts it in the control API's shapes (``AgentStatus`` with its
job rows, memory and conditions; the templates and inference processes) and gives the event
recorder its per-agent ``Snapshot``. Never cached, never blocked by a drain.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

import anyio

from lksup.control.api import AgentStatus, Condition, InferenceStatus, JobRow, TemplateStatus
from lksup.daemon.journal import RunningJob, Snapshot
from lksup.daemon.status import AgentSnapshot, Derived, RuntimeSnapshot, derive
from lksup.daemon.supervisor import AgentSlot, Supervisor
from lksup.pool.ended import ENDED_FOR, EndedJob
from lksup.pool.pool import recent

__all__ = [
    "agent_status",
    "inference_status",
    "journal_snapshot",
    "live_runtimes",
    "template_status",
    "wall",
]


def wall(monotonic_at: float | None) -> str | None:
    """An RFC 3339 wall-clock time for a monotonic one (display only)."""
    if monotonic_at is None:
        return None
    wall = time.time() - (anyio.current_time() - monotonic_at)
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")


def _ended_status(ended: EndedJob) -> JobRow:
    """A job that ended, as a ``status --jobs`` row."""
    return JobRow(
        job_id=ended.job_id,
        room=ended.room,
        pid=ended.pid,
        state="succeeded" if ended.error is None else "failed",
        started_at=wall(ended.started_at),
        ended_at=wall(ended.ended_at),
        reason=ended.error or ended.reason,
    )


def _later_failure(latest: EndedJob | None, ended: list[EndedJob]) -> EndedJob | None:
    """The later of ``latest`` and the last failed job of ``ended``."""
    failed = [job for job in ended if job.error is not None]
    if failed and (latest is None or failed[-1].ended_at > latest.ended_at):
        return failed[-1]
    return latest


def live_runtimes(slot: AgentSlot, view: AgentSnapshot) -> list[RuntimeSnapshot]:
    """Every runtime of the agent still running, the current one first.

    Jobs and memory count every runtime the agent has: old ones finishing their jobs
    during a replace or a removal are still the agent's.
    """
    found = [view.runtime] if view.runtime is not None and not view.runtime.done else []
    others = [r for r in slot.runtimes() if r is not slot.runtime and not r.done]
    return found + [runtime.snapshot() for runtime in others]


def agent_status(supervisor: Supervisor, slot: AgentSlot) -> AgentStatus:
    """One agent's row (its conditions observed now)."""
    monitor = supervisor.monitor
    view = supervisor.snapshot(slot)
    derived = derive(view)
    jobs: list[JobRow] = []
    memory = 0.0
    fields: dict[str, Any] = {}
    latest: EndedJob | None = None  # the agent's latest failed job, over all its runtimes
    for live in live_runtimes(slot, view):
        for pid in live.pids:
            sample = monitor.sample(pid)
            if sample is not None:
                memory += sample.mb
        for job in live.running:
            sample = monitor.sample(job.pid) if job.pid is not None else None
            jobs.append(
                JobRow(
                    job_id=job.job_id,
                    room=job.room,
                    pid=job.pid,
                    state=job.process_state,
                    started_at=wall(job.started_at),
                    memory_mb=round(sample.mb, 1) if sample else 0.0,
                )
            )
        ended_jobs = recent(live.ended)
        jobs.extend(_ended_status(ended) for ended in ended_jobs)
        latest = _later_failure(latest, ended_jobs)
    retired = recent(slot.retired_ended)  # jobs of runtimes that ended (a restart)
    jobs.extend(_ended_status(ended) for ended in retired)
    latest = _later_failure(latest, retired)
    failure: tuple[str, float] | None = None
    if latest is not None:
        failure = (latest.error or "", latest.ended_at)
    runtime = view.runtime
    inits = [slot.retired_init_failure, runtime.last_init_failure if runtime else None]
    for init in inits:
        if init is None or anyio.current_time() - init[1] > ENDED_FOR:
            continue
        if failure is None or init[1] > failure[1]:
            failure = (f"a job process did not start: {init[0]}", init[1])
    if failure is not None:
        fields["last_failure"], fields["last_failure_at"] = failure[0], wall(failure[1])
    fields["jobs"] = slot.running_jobs()
    if runtime is not None:
        fields |= {
            "sdk_version": ", ".join(sorted(runtime.sdk_versions)) or None,
            "registered": runtime.registered,
            "worker_id": runtime.worker_id,
            "idle": runtime.idle,
            "idle_target": runtime.idle_target,
            "load": round(runtime.load, 3),
            "draining": runtime.draining,
        }
    conditions = slot.conditions.observe(derived.facts, time.time())
    return AgentStatus(
        name=slot.name,
        state=derived.state.value,
        ready=derived.ready,
        threshold=slot.agent.load_threshold,
        memory_mb=round(memory, 1),
        restarts=slot.restarts,
        started_at=wall(slot.started_at),
        sync=derived.sync.value,
        message=derived.message,
        conditions=[
            Condition(
                type=c.type,
                status="True" if c.status else "False",
                reason=c.reason,
                message=c.message,
                lastTransitionTime=datetime.fromtimestamp(c.last_transition, UTC).isoformat(
                    timespec="seconds"
                ),
            )
            for c in conditions
        ],
        jobs_detail=jobs,
        **fields,
    )


def journal_snapshot(slot: AgentSlot, view: AgentSnapshot, derived: Derived) -> Snapshot:
    """What the event recorder compares from one observation to the next."""
    ended = {job.job_id: job for job in slot.retired_ended}
    running: dict[str, RunningJob] = {}
    for live in live_runtimes(slot, view):
        for job in live.running:
            running[job.job_id] = RunningJob(job.room, job.entered, live.worker_id)
        ended.update((job.job_id, job) for job in live.ended)
    return Snapshot(
        state=derived.state.value,
        message=derived.message,
        worker_id=view.runtime.worker_id if view.runtime is not None else None,
        restarts=slot.restarts,
        drained=slot.override_drained,
        running=running,
        ended=ended,
    )


def template_status(supervisor: Supervisor) -> list[TemplateStatus]:
    """The templates job processes are forked from: bases first, then agents'."""
    zygotes = supervisor.zygotes
    if zygotes is None:
        return []
    rows = []
    for base, template in zygotes.live():
        pid = template.pid if template.alive else None
        sample = supervisor.monitor.sample(pid) if pid is not None else None
        rows.append(
            TemplateStatus(
                agent=None if base else template.spec.agent_name,
                pid=pid,
                children=len(template.children),
                memory_mb=round(sample.mb, 1) if sample else 0.0,
                python=template.spec.python,
                preload=list(zygotes.preload) if base else [],
            )
        )
    return rows


def inference_status(supervisor: Supervisor) -> list[InferenceStatus]:
    """The fleet's inference processes."""
    rows = []
    for group in supervisor.inference.groups.values():
        process = group.process
        pid = process.pid if process is not None and process.alive else None
        sample = supervisor.monitor.sample(pid) if pid is not None else None
        if group.ready:
            state: Literal["starting", "running", "backoff"] = "running"
        else:
            state = "backoff" if group.last_error else "starting"
        rows.append(
            InferenceStatus(
                runners=list(group.runners),
                state=state,
                pid=pid,
                memory_mb=round(sample.mb, 1) if sample else 0.0,
                restarts=group.restarts,
                message=group.last_error or "",
                python=group.python,
            )
        )
    return rows
