"""The words and columns of the daemon's answers, without a daemon."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lksup.cli import present
from lksup.control.api import (
    AgentStatus,
    FleetStatus,
    InferenceStatus,
    StatusList,
    TemplateStatus,
)
from tests.control.conftest import FakeApp

NOW = datetime(2025, 1, 2, 12, 0, 0, tzinfo=UTC)


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250ms"),
        (45, "45s"),
        (125, "2m5s"),
        (3 * 3600 + 125, "3h2m"),
        (3600, "1h"),
        (3600 + 5, "1h"),
        (86400 + 3 * 3600 + 59, "1d3h"),
        (-5, "0ms"),  # a clock a little ahead of ours
    ],
)
def test_age_drops_seconds_from_an_hour_on(seconds: float, text: str) -> None:
    assert present.age(ago(seconds), NOW) == text


def test_age_of_nothing_is_a_dash() -> None:
    assert present.age(None, NOW) == "-"


def test_columns_are_padded_to_the_widest_cell_and_trimmed() -> None:
    assert present.columns([["A", "BB", "C"], ["long", "x", ""]]) == [
        "A     BB  C",
        "long  x",
    ]


def agents() -> list[AgentStatus]:
    """The control tests' two agents: alpha runs a job (and one ended), beta failed lately."""
    alpha, beta = FakeApp().agents
    running = alpha.jobs_detail[0].model_copy(update={"started_at": ago(95)})
    ended = running.model_copy(
        update={"job_id": "AJ_2", "room": "r2", "pid": 77, "state": "failed", "memory_mb": 0}
        | {"started_at": ago(200), "ended_at": ago(130), "reason": "boom"}
    )
    return [
        alpha.model_copy(
            update={"started_at": ago(3 * 3600 + 125), "jobs_detail": [running, ended]}
        ),
        beta.model_copy(
            update={"message": "", "last_failure": "exit 1", "last_failure_at": ago(65)}
        ),
    ]


def test_status_table_has_a_row_per_agent_and_a_recent_failure_as_message() -> None:
    table = present.status_table(agents(), wide=False, show_jobs=False, now=NOW)
    assert table.splitlines() == [
        "AGENT  STATE    READY  JOBS  IDLE  LOAD/THR   MEM    RESTARTS  AGE   SYNC    MESSAGE",
        "alpha  running  1/1    1     2/2   0.25/0.70  120Mi  0         3h2m  synced  -",
        "beta   backoff  0/1    0     0/0   0.00/1.00  0Mi    0         -     synced  "
        "last failure 1m5s ago: exit 1",
    ]


def test_wide_adds_the_worker_id_before_the_message() -> None:
    header, alpha, beta = present.status_table(
        agents(), wide=True, show_jobs=False, now=NOW
    ).splitlines()
    assert header.split()[-2:] == ["WORKER_ID", "MESSAGE"]
    assert alpha.split()[-2:] == ["AW_1", "-"]
    assert beta.split()[-8:-6] == ["synced", "-"]


def test_show_jobs_lists_running_then_recently_ended_jobs_per_agent() -> None:
    table = present.status_table(agents(), wide=False, show_jobs=True, now=NOW)
    assert table.split("\n\n", 1)[1].splitlines() == [
        "alpha: 1 job(s)",
        "  AJ_1  room=room-1  pid=4242  running  age=1m35s  mem=80Mi",
        "alpha: ended in the last 10 minutes",
        "  AJ_2  room=r2  pid=77  failed  2m10s ago: boom",
        "",
        "beta: 0 job(s)",
    ]


def test_an_agent_message_wins_over_its_recent_failure() -> None:
    item = AgentStatus(name="a", state="backoff", message="exit 1 in prewarm", last_failure="x")
    assert present.status_table([item], wide=False, show_jobs=False, now=NOW).endswith(
        "exit 1 in prewarm"
    )
    assert present.recent_failure(AgentStatus(name="a", state="running"), NOW) == ""


def test_fleet_lines_name_the_revision_source_and_last_failed_reapply() -> None:
    fleet = FleetStatus(
        name="prod",
        revision="abc",
        source="/x.yaml",
        watching=True,
        last_error="bad",
        last_error_at=ago(10),
    )
    assert present.fleet_lines(fleet, NOW) == (
        "fleet prod, revision abc, from /x.yaml (watched for changes)\n"
        "last re-apply failed 10s ago, nothing changed: bad"
    )
    assert present.fleet_lines(FleetStatus(name="prod"), NOW) == "fleet prod"


def test_status_view_adds_inference_templates_and_fleet_in_that_order() -> None:
    result = StatusList(
        items=agents()[:1],
        inference=[InferenceStatus(runners=["a:b:turn"], state="running", pid=5, memory_mb=33.3)],
        templates=[TemplateStatus(pid=9, children=2, memory_mb=44), TemplateStatus(agent="alpha")],
        fleet=FleetStatus(name="prod"),
    )
    view = present.status_view(result, wide=False, show_jobs=False, show_templates=True, now=NOW)
    assert view.split("\n\n")[1:] == [
        "INFERENCE  STATE    PID  MEM   RESTARTS  MESSAGE\nturn       running  5    33Mi  0         -",
        "TEMPLATE  PID  FORKS  MEM\n(base)    9    2      44Mi\nalpha     -    0      0Mi",
        "fleet prod",
    ]
    without = present.status_view(
        result, wide=False, show_jobs=False, show_templates=False, now=NOW
    )
    assert "TEMPLATE" not in without


def plan(**extra: Any) -> dict[str, Any]:
    return {
        "agents": [{"name": "alpha", "action": "create", "changes": []}],
        **extra,
    }


def test_plan_text_reads_as_diff_then_what_only_an_apply_knows() -> None:
    text = present.plan_text(
        plan(
            values=[{"path": "region", "old": "eu", "new": "us"}],
            fleetRenamed={"from": "a", "to": "b"},
            overridesCleared=["beta"],
            secretsChanged=["alpha"],
            revision="r1",
        ),
        colour=False,
    )
    assert text.splitlines() == [
        "Plan: 1 to create, 0 to update in place, 0 to replace, 0 to drain and remove, "
        "0 unchanged.",
        "",
        "  + create            alpha",
        "  template value region: eu -> us",
        "  fleet 'a' -> 'b' (replaces the running fleet)",
        "  beta: the apply changes it, so its drain override is cleared",
        "  alpha: a secret it references changed: replaced",
        "applied revision r1",
    ]


def test_a_dry_run_plan_says_so_in_its_summary() -> None:
    text = present.plan_text(plan(dryRun=True), colour=False)
    assert text.splitlines() == [
        "Plan: 1 to create, 0 to update in place, 0 to replace, 0 to drain and remove, "
        "0 unchanged (dry run: nothing changed).",
        "",
        "  + create            alpha",
    ]


def test_event_line_places_the_agent_and_job_or_a_dash() -> None:
    event = {"time": "T", "type": "Normal", "reason": "Applied", "message": "hello"}
    assert present.event_line(event) == "T  Normal   Applied        -  hello"
    event |= {"agent": "alpha", "job_id": "AJ_1"}
    assert present.event_line(event) == "T  Normal   Applied        alpha/AJ_1  hello"


def test_log_lines_tag_the_record_and_follow_it_with_its_traceback() -> None:
    record = {"ts": "t1", "level": "info", "agent": "alpha", "pid": 3, "msg": "hi"}
    assert present.log_lines(record) == ["t1 info    [alpha 3] hi"]
    record = {"ts": "t2", "level": "error", "msg": "x", "traceback": "TB", "exc": "EXC"}
    assert present.log_lines(record) == ["t2 error   x", "TB", "EXC"]
