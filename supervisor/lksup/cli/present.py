"""What the daemon's answers look like on a terminal: plans, status tables, events, log lines.

Pure functions of the control API's documents, so the words and columns are tested without a
daemon (tests/cli/test_present.py). Ages are measured from a ``now`` the caller passes (the
commands pass the wall clock once per screen), never read here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lksup.fleet.durations import format_duration
from lksup.pool.ended import ENDED_FOR
from lksup.reconcile import render as plan_render

if TYPE_CHECKING:
    from lksup.control.api import (
        AgentStatus,
        FleetStatus,
        InferenceStatus,
        StatusList,
        TemplateStatus,
    )


def plan_text(plan: Mapping[str, Any], *, colour: bool) -> str:
    """The daemon's plan as ``lksup diff`` prints a plan, then what only an apply knows."""
    values = plan_render.changes_from_json(plan.get("values"))
    text = plan_render.to_text(plan_render.from_json(plan), colour=colour, values=values)
    summary, _, rest = text.partition("\n")
    if plan.get("dryRun"):
        summary = summary.removesuffix(".") + " (dry run: nothing changed)."
    lines = [summary + ("\n" + rest if rest else "")]
    renamed = plan.get("fleetRenamed")
    if renamed:
        old, new = renamed["from"], renamed["to"]
        lines.append(f"  fleet {old!r} -> {new!r} (replaces the running fleet)")
    lines.extend(
        f"  {name}: the apply changes it, so its drain override is cleared"
        for name in plan.get("overridesCleared", [])
    )
    lines.extend(
        f"  {name}: a secret it references changed: replaced"
        for name in plan.get("secretsChanged", [])
    )
    if plan.get("revision"):
        lines.append(f"applied revision {plan['revision']}")
    return "\n".join(lines)


def age(since: str | None, now: datetime) -> str:
    """How long ago the ISO time ``since`` was (``-`` when unknown).

    Seconds are dropped once it is an hour or more (``3h2m``), as kubectl's AGE does.
    """
    if not since:
        return "-"
    seconds = max(0.0, (now - datetime.fromisoformat(since)).total_seconds())
    if seconds >= 3600:
        seconds = seconds // 60 * 60
    return format_duration(seconds)


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """The rows as lines of left-aligned columns two spaces apart, trailing blanks trimmed."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def fleet_lines(fleet: FleetStatus, now: datetime) -> str:
    """``fleet NAME revision R from SOURCE``, and the last failed re-apply when there is one."""
    line = f"fleet {fleet.name}"
    if fleet.revision:
        line += f", revision {fleet.revision}"
    if fleet.source:
        line += f", from {fleet.source}"
    if fleet.watching:
        line += " (watched for changes)"
    if fleet.last_error:
        line += f"\nlast re-apply failed {age(fleet.last_error_at, now)} ago, nothing changed: "
        line += fleet.last_error
    return line


def template_table(items: Sequence[TemplateStatus]) -> str:
    """The process templates (``status -o wide``): one row each, the fleet-wide base first."""
    header = ["TEMPLATE", "PID", "FORKS", "MEM"]
    rows = [
        [
            item.agent or "(base)",
            str(item.pid or "-"),
            str(item.children),
            f"{item.memory_mb:.0f}Mi",
        ]
        for item in items
    ]
    return "\n".join(columns([header, *rows]))


def inference_table(items: Sequence[InferenceStatus]) -> str:
    """The inference processes, named by their runners."""
    header = ["INFERENCE", "STATE", "PID", "MEM", "RESTARTS", "MESSAGE"]
    rows = [
        [
            ",".join(r.split(":")[-1] for r in item.runners),
            item.state,
            str(item.pid or "-"),
            f"{item.memory_mb:.0f}Mi",
            str(item.restarts),
            item.message or "-",
        ]
        for item in items
    ]
    return "\n".join(columns([header, *rows]))


def recent_failure(item: AgentStatus, now: datetime) -> str:
    """``last failure 2m ago: <why>`` while a failure is recent (the MESSAGE column).

    A job that failed, or a job process that did not start.
    """
    if not item.last_failure:
        return ""
    return f"last failure {age(item.last_failure_at, now)} ago: {item.last_failure}"


def status_table(
    items: Sequence[AgentStatus], *, wide: bool, show_jobs: bool, now: datetime
) -> str:
    """One row per agent (``wide``: with its worker id); ``show_jobs``: then each one's jobs."""
    header = [
        "AGENT",
        "STATE",
        "READY",
        "JOBS",
        "IDLE",
        "LOAD/THR",
        "MEM",
        "RESTARTS",
        "AGE",
        "SYNC",
        "MESSAGE",
    ]
    if wide:
        header[-1:-1] = ["WORKER_ID"]
    rows = []
    for item in items:
        row = [
            item.name,
            item.state,
            "1/1" if item.ready else "0/1",
            str(item.jobs),
            f"{item.idle}/{item.idle_target}",
            f"{item.load:.2f}/{item.threshold:.2f}",
            f"{item.memory_mb:.0f}Mi",
            str(item.restarts),
            age(item.started_at, now),
            item.sync,
            item.message or recent_failure(item, now) or "-",
        ]
        if wide:
            row[-1:-1] = [item.worker_id or "-"]
        rows.append(row)
    lines = columns([header, *rows])
    if show_jobs:
        for item in items:
            lines.append("")
            lines.extend(_job_lines(item, now))
    return "\n".join(lines)


def _job_lines(item: AgentStatus, now: datetime) -> list[str]:
    running = [job for job in item.jobs_detail if job.ended_at is None]
    ended = [job for job in item.jobs_detail if job.ended_at is not None]
    lines = [f"{item.name}: {len(running)} job(s)"]
    lines.extend(
        f"  {job.job_id}  room={job.room}  pid={job.pid}  {job.state}  "
        f"age={age(job.started_at, now)}  mem={job.memory_mb:.0f}Mi"
        for job in running
    )
    if ended:
        lines.append(f"{item.name}: ended in the last {ENDED_FOR / 60:.0f} minutes")
        lines.extend(
            f"  {job.job_id}  room={job.room}  pid={job.pid}  {job.state}  "
            f"{age(job.ended_at, now)} ago: {job.reason or '-'}"
            for job in reversed(ended)
        )
    return lines


def status_view(
    result: StatusList, *, wide: bool, show_jobs: bool, show_templates: bool, now: datetime
) -> str:
    """The agents' table, then the inference processes, templates and fleet when there are."""
    parts = [status_table(result.items, wide=wide, show_jobs=show_jobs, now=now)]
    if result.inference:
        parts.append(inference_table(result.inference))
    if show_templates and result.templates:
        parts.append(template_table(result.templates))
    if result.fleet is not None:
        parts.append(fleet_lines(result.fleet, now))
    return "\n\n".join(parts)


def event_line(item: Mapping[str, Any]) -> str:
    """One event: time, type, reason, ``agent/job`` (``-`` for the fleet's), message."""
    where = "/".join(x for x in (item.get("agent"), item.get("job_id")) if x) or "-"
    return f"{item['time']}  {item['type']:<7}  {item['reason']:<13}  {where}  {item['message']}"


def log_lines(item: Mapping[str, Any]) -> list[str]:
    """One log record: ``TS LEVEL [agent job pid] message``, then its traceback if any."""
    tags = " ".join(str(item[k]) for k in ("agent", "job_id", "pid") if item.get(k))
    lines = [f"{item['ts']} {item['level']:<7} " + (f"[{tags}] " if tags else "") + item["msg"]]
    lines.extend(extra for extra in (item.get("traceback"), item.get("exc")) if extra)
    return lines
