"""Day-two operations through the real `lksup` CLI against a real `lksup run` daemon: status
(--check, --jobs, -o wide), reload, drain and undrain, apply (dry run, JSON, prune, import
check, update in place), the signals an operator sends, and the fleet's own HTTP listener.

Every wait follows something an operator can see: the daemon's events and log records as
`lksup events -w` and `lksup logs -f` stream them, and status read again at each event; only
what nothing announces (a warm pool, a memory sweep, the process table, a file a child writes)
is looked at again until it holds."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
import yaml

from tests.conftest import ROOT, eventually, free_port
from tests.e2e.test_daemon import Daemon, daemon, descendants, gone, write_fleet

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

AGENTS = ("customer-service", "sales", "survey")
HEADER = [
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
DEV_FLEET = (ROOT / "fleets" / "dev.yaml").read_text()
SALES_REQUEST = "    request_fnc: fleets.agents.sales:request\n"
EMPTY_FLEET = "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: dev}\nagents: {}\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fleet_file(directory: Path, name: str, text: str) -> Path:
    """A fleet file in ``directory``; its agents import ``fleets.agents.*`` from the daemon's and
    the CLI's working directory (the repository root: no agent sets ``working_dir``)."""
    path = directory / name
    path.write_text(text)
    return path


def with_sales_threshold(text: str, threshold: float) -> str:
    assert SALES_REQUEST in text
    return text.replace(SALES_REQUEST, f"{SALES_REQUEST}    load_threshold: {threshold}\n")


async def items(d: Daemon, *args: str) -> list[dict[str, Any]]:
    """``lksup status [ARGS] -o json``: the agents, by name order."""
    code, out, err = await d.cli("status", *args, "-o", "json")
    assert code == 0, err
    document = json.loads(out)
    assert document["kind"] == "StatusList"
    found: list[dict[str, Any]] = document["items"]
    return found


async def by_name(d: Daemon) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in await items(d)}


async def until_warm(d: Daemon, timeout: float = 30) -> dict[str, dict[str, Any]]:
    """Every agent ready with its idle pool at its target (so the process set is settled).

    A process that turns warm is marked by no event: status is read again until it holds.
    """

    async def warm() -> dict[str, dict[str, Any]] | None:
        agents = await d.agents()
        settled = agents and all(
            a["ready"] and a["idle_target"] > 0 and a["idle"] == a["idle_target"]
            for a in agents.values()
        )
        return agents if settled else None

    return await eventually(warm, timeout=timeout)


def records(d: Daemon) -> list[dict[str, Any]]:
    """The daemon's JSON log lines (it logs JSON when stdout is not a terminal)."""
    found = []
    for line in d.log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def table(out: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (by agent) of a status table; MESSAGE is '-' when empty."""
    lines = out.splitlines()
    rows: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line.strip():
            break  # --jobs sections follow a blank line
        cells = line.split()
        rows[cells[0]] = cells
    return lines[0].split(), rows


def identity(agents: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    """What a change that touches no process leaves alone, per agent."""
    return {
        name: (a["worker_id"], a["restarts"], a["started_at"], a["registered"])
        for name, a in agents.items()
    }


async def test_status_check_jobs_wide_reload_drain_undrain_and_sigquit() -> None:
    async with daemon("fleets/dev.yaml", "--set", "hold_seconds=60") as d:
        await d.wait_ready(3)
        before = await until_warm(d)

        # the table: exactly the documented columns, one row per agent
        code, out, err = await d.cli("status")
        assert code == 0, err
        header, rows = table(out)
        assert header == HEADER
        assert sorted(rows) == list(AGENTS)
        assert all(rows[name][1:3] == ["running", "1/1"] for name in AGENTS)
        # -o wide: every table column and more, with each agent's worker id
        code, out, err = await d.cli("status", "-o", "wide")
        assert code == 0, err
        wide_header, wide_rows = table(out)
        assert len(wide_header) > len(HEADER)
        assert [c for c in wide_header if c in HEADER] == HEADER
        for name in AGENTS:
            assert len(wide_rows[name]) > len(rows[name])
            assert before[name]["worker_id"] in wide_rows[name]
        # and the templates the job processes were forked from: one shared base, one per agent
        (section,) = [
            part.splitlines() for part in out.split("\n\n") if part.startswith("TEMPLATE")
        ]
        assert section[0].split() == ["TEMPLATE", "PID", "FORKS", "MEM"]
        assert out.rstrip().splitlines()[-1].startswith("fleet dev, revision ")  # last
        templates = {line.split()[0]: line.split() for line in section[1:]}
        assert sorted(templates) == sorted(["(base)", *AGENTS])
        assert templates["(base)"][2] == "3"  # the agents' templates
        assert all(int(templates[name][2]) >= 1 for name in AGENTS)  # their warm processes
        code, _, err = await d.cli("status", "--check")
        assert code == 0, err

        # reload: a new worker registers with the server, the old one goes, RESTARTS is 1
        old = before["sales"]["worker_id"]
        code, out, err = await d.cli("reload", "sales")
        assert code == 0, err
        assert "reloading sales" in out
        sales = (
            await d.until(
                lambda agents: (
                    agents["sales"]["restarts"] == 1
                    and agents["sales"]["ready"]
                    and agents["sales"]["worker_id"] not in (None, old)
                ),
                timeout=40,
            )
        )["sales"]
        new = sales["worker_id"]
        await d.wait_log(f"Worker {new} registered (agent 'sales').", timeout=20)
        await d.wait_log(f"Worker {old} closed", timeout=30)
        code, out, err = await d.cli("status")
        assert code == 0, err
        rows = table(out)[1]
        assert rows["sales"][HEADER.index("RESTARTS")] == "1"
        assert rows["sales"][HEADER.index("READY")] == "1/1"
        after = await by_name(d)
        for name in ("customer-service", "survey"):  # the others were not touched
            assert identity({name: after[name]}) == identity({name: before[name]})

        # a job on the reloaded agent: --jobs shows job, room, pid, state, age and memory
        code, _, err = await d.cli("dispatch", "sales", "--room", "sales-jobs")
        assert code == 0, err
        await d.wait_event("JobStarted", agent="sales", timeout=20)
        pattern = re.compile(
            r"^\s+(?P<job>AJ_\S+)\s+room=sales-jobs\s+pid=(?P<pid>\d+)\s+(?P<state>\S+)\s+"
            r"age=(?P<age>\S+)\s+mem=(?P<mem>\d+)Mi$",
            re.MULTILINE,
        )

        async def measured() -> tuple[str, re.Match[str]] | None:
            code, out, err = await d.cli("status", "--jobs")
            assert code == 0, err
            match = pattern.search(out)
            assert match is not None, out
            return (out, match) if int(match["mem"]) > 0 else None

        # the memory sweep fills in the job's memory (a sweep announces nothing)
        out, match = await eventually(measured, timeout=20, interval=0.2)
        assert "sales: 1 job(s)" in out
        assert "customer-service: 0 job(s)" in out
        assert match["state"] == "running"
        assert re.fullmatch(r"[0-9.]+(ms|s|m)([0-9.]+s)?", match["age"]), match["age"]
        pid = int(match["pid"])
        assert pid in descendants(d.process.pid)  # a real job process of this daemon
        started = [r for r in records(d) if "sales job started: room=sales-jobs" in r["msg"]]
        assert [r.get("pid") for r in started] == [pid]
        await d.wait_log(f"Job {match['job']} assigned to worker {new}.", timeout=20)

        # drain one agent: --check says 3 for the fleet and for it, 0 for the others
        code, out, err = await d.cli("drain", "sales")
        assert code == 0, err
        assert "draining sales (1 job(s) running)" in out
        code, out, _ = await d.cli("status", "--check")
        assert code == 3
        assert table(out)[1]["sales"][HEADER.index("READY")] == "0/1"  # still prints the table
        assert (await d.cli("status", "sales", "--check"))[0] == 3
        assert (await d.cli("status", "survey", "--check"))[0] == 0

        # drain --all, then undrain each: every agent is ready again
        code, out, err = await d.cli("drain", "--all")
        assert code == 0, err
        assert "draining customer-service, sales, survey" in out
        agents = await by_name(d)
        assert not any(a["ready"] for a in agents.values())
        assert all(a["sync"] == "override" for a in agents.values())
        for name in AGENTS:
            code, out, err = await d.cli("undrain", name)
            assert code == 0, err
            assert f"{name} takes jobs again" in out
        await d.wait_ready(3, timeout=20)
        code, out, err = await d.cli("status", "--check")
        assert code == 0, out + err
        agents = await by_name(d)
        assert all(a["sync"] == "synced" and not a["draining"] for a in agents.values())
        assert agents["sales"]["jobs"] == 1  # drain and undrain did not touch the running job

        # SIGQUIT with that job still running: no drain, exit 1 at once, nothing left behind
        children = descendants(d.process.pid)
        assert pid in children
        d.process.send_signal(signal.SIGQUIT)
        with anyio.fail_after(2):
            assert await d.process.wait() == 1
        await gone(children, 2)
        assert "sales job done" not in d.log.read_text()


async def test_apply_dry_run_json_update_in_place_import_check_and_prune(tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "fleet.yaml", DEV_FLEET)
    async with daemon(str(fleet)) as d:
        await d.wait_ready(3)
        before = await until_warm(d)
        processes = set(descendants(d.process.pid))
        assert len(processes) >= 3  # one warm process per agent at least
        assert before["sales"]["threshold"] == pytest.approx(0.7)

        threshold = fleet_file(tmp_path, "threshold.yaml", with_sales_threshold(DEV_FLEET, 0.5))
        # --dry-run: the plan, and nothing changes
        code, out, err = await d.cli("apply", str(threshold), "--dry-run")
        assert code == 0, err
        assert "1 to update in place" in out
        assert "dry run: nothing changed" in out
        assert re.search(r"update-in-place\s+sales", out), out
        assert "load_threshold: 0.7 -> 0.5" in out
        assert (await d.cli("diff", str(threshold)))[0] == 1  # still the old fleet applied
        assert (await by_name(d))["sales"]["threshold"] == pytest.approx(0.7)

        # -o json: the plan as JSON; a threshold is updated in place, no process changes
        code, out, err = await d.cli("apply", str(threshold), "-o", "json")
        assert code == 0, err
        plan = json.loads(out)
        assert plan["kind"] == "Plan"
        assert plan["summary"]["update-in-place"] == 1
        assert plan["summary"]["unchanged"] == 2
        actions = {a["name"]: a["action"] for a in plan["agents"]}
        assert actions["sales"] == "update-in-place"
        assert not plan.get("dryRun")
        # in effect when apply answers
        assert (await d.agents())["sales"]["threshold"] == pytest.approx(0.5)
        code, out, err = await d.cli("status", "sales")
        assert code == 0, err
        assert table(out)[1]["sales"][HEADER.index("LOAD/THR")].endswith("/0.50")
        after = await by_name(d)
        assert identity(after) == identity(before)
        assert set(descendants(d.process.pid)) == processes
        assert (await d.cli("diff", str(threshold)))[0] == 0

        # an entrypoint that cannot be imported: refused before the daemon sees it
        broken = fleet_file(
            tmp_path,
            "broken.yaml",
            with_sales_threshold(DEV_FLEET, 0.5).replace(
                "entrypoint: fleets.agents.{{ module }}:entrypoint",
                "entrypoint: {{ 'no_such_module' if module == 'sales' "
                "else 'fleets.agents.' ~ module }}:entrypoint",
            ),
        )
        code, out, err = await d.cli("apply", str(broken))
        assert code == 1, out + err
        assert "no_such_module" in err
        assert "'sales'" in err
        assert "entrypoint" in err
        assert "Plan:" not in out
        assert identity(await by_name(d)) == identity(before)
        assert set(descendants(d.process.pid)) == processes
        assert (await d.cli("diff", str(threshold)))[0] == 0  # the applied fleet is unchanged

        # removing every agent needs --prune-all
        empty = fleet_file(tmp_path, "empty.yaml", EMPTY_FLEET)
        code, out, err = await d.cli("apply", str(empty))
        assert code == 1, out + err
        assert "--prune-all" in err
        assert identity(await by_name(d)) == identity(before)
        code, out, err = await d.cli("apply", str(empty), "--prune-all")
        assert code == 0, err
        assert "3 to drain and remove" in out
        await d.until(lambda agents: not agents)
        assert await items(d) == []
        await gone(list(processes), 30)  # the removed agents' processes stopped
        d.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await d.process.wait() == 0


async def test_sighup_with_an_invalid_file_changes_nothing_then_sigint_drains(
    tmp_path: Path,
) -> None:
    fleet = fleet_file(tmp_path, "fleet.yaml", DEV_FLEET)
    saved = fleet_file(tmp_path, "saved.yaml", DEV_FLEET)
    async with daemon(str(fleet), "--set", "hold_seconds=2") as d:
        await d.wait_ready(3)
        before = await until_warm(d)
        processes = set(descendants(d.process.pid))

        fleet.write_text(DEV_FLEET.replace("max_jobs: 4", "max_jobs: 0"))
        d.process.send_signal(signal.SIGHUP)
        error = await d.wait_log("SIGHUP", level="error", timeout=20)
        assert "max_jobs" in error["msg"]
        assert d.process.returncode is None  # still running
        assert identity(await by_name(d)) == identity(before)
        assert set(descendants(d.process.pid)) == processes
        code, out, err = await d.cli("diff", str(saved), "--set", "hold_seconds=2")
        assert code == 0, out + err  # the applied fleet is the one before the SIGHUP
        code, _, err = await d.cli("status", "--check")
        assert code == 0, err

        # a file that would remove every agent, then one whose entrypoint cannot be imported:
        # each is refused with a logged error, the daemon keeps running, nothing changes
        for text, says in (
            (
                "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: dev}\nagents: {}\n",
                "--prune-all",
            ),
            (
                DEV_FLEET.replace("fleets.agents.{{ module }}:entrypoint", "no_such_module:go"),
                "no_such_module",
            ),
        ):
            fleet.write_text(text)
            d.process.send_signal(signal.SIGHUP)
            error = await d.wait_log("SIGHUP", level="error", after=error["seq"], timeout=30)
            assert says in error["msg"]
            assert d.process.returncode is None
            assert identity(await by_name(d)) == identity(before)
        code, out, err = await d.cli("diff", str(saved), "--set", "hold_seconds=2")
        assert code == 0, out + err

        # SIGINT first: a drain like SIGTERM's; the running job finishes and the exit is 0
        code, _, err = await d.cli("dispatch", "survey", "--room", "survey-sigint")
        assert code == 0, err
        await d.wait_log("survey job started: room=survey-sigint", timeout=20)
        children = descendants(d.process.pid)
        d.process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            assert await d.process.wait() == 0
        text = d.log.read_text()
        assert "draining:" in text
        assert "survey job done: room=survey-sigint" in text
        await gone(children, 2)


async def test_a_stop_signal_never_waits_for_a_sighup_import_check(tmp_path: Path) -> None:
    """Regression: SIGHUP's checks ran inline in the signal loop, so a SIGQUIT sent while an
    agent module took a minute to import was handled only after it."""
    marker = tmp_path / "importing"
    (tmp_path / "slow_import_agent.py").write_text(
        f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(60)\n"
        "async def entrypoint(ctx):\n    pass\n"
    )
    fleet = fleet_file(tmp_path, "fleet.yaml", DEV_FLEET)
    async with daemon(str(fleet)) as d:
        await d.wait_ready(3)
        children = descendants(d.process.pid)
        fleet.write_text(
            DEV_FLEET + f"  slow:\n    entrypoint: slow_import_agent:entrypoint\n"
            f"    working_dir: {tmp_path}\n"
        )
        d.process.send_signal(signal.SIGHUP)
        # the import check has started: its child touches the file, and says nothing else
        await eventually(marker.exists, timeout=30)
        d.process.send_signal(signal.SIGQUIT)
        with anyio.fail_after(5):
            assert await d.process.wait() == 1
        await gone(children, 2)
        # the import check (run in the agent's working_dir) was killed too, not orphaned
        checkers = [
            proc.pid for proc in psutil.process_iter(["cwd"]) if proc.info["cwd"] == str(tmp_path)
        ]
        await gone(checkers, 2)


async def test_drain_deadline_stops_held_jobs_and_exits_1(tmp_path: Path) -> None:
    assert "drain_timeout: 1m" in DEV_FLEET
    fleet = fleet_file(
        tmp_path, "fleet.yaml", DEV_FLEET.replace("drain_timeout: 1m", "drain_timeout: 1")
    )
    async with daemon(str(fleet), "--set", "hold_seconds=120") as d:
        await d.wait_ready(3)
        code, _, err = await d.cli("dispatch", "sales", "--room", "sales-deadline")
        assert code == 0, err
        await d.wait_event("JobStarted", agent="sales", timeout=20)
        children = descendants(d.process.pid)
        started = time.monotonic()
        d.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            assert await d.process.wait() == 1
        assert time.monotonic() - started >= 0.9  # it drained until the deadline first
        await gone(children, 2)
        text = d.log.read_text()
        assert "draining:" in text
        assert "drain deadline reached" in text


async def test_status_answers_during_a_sigterm_drain_and_shows_draining() -> None:
    # held long enough that both jobs still run after the status calls below, each a CLI
    # process of its own (seconds on a busy host): support holds HOLD_SECONDS, survey asks its
    # three questions SURVEY_STEP_SECONDS apart (regression: 1 s apart, it had ended)
    async with daemon(
        "fleets/dev.yaml", "--set", "hold_seconds=25", env={"SURVEY_STEP_SECONDS": "8"}
    ) as d:
        await d.wait_ready(3)
        for agent, room in (("customer-service", "cs-drain"), ("survey", "survey-drain")):
            code, _, err = await d.cli("dispatch", agent, "--room", room)
            assert code == 0, err
        await d.wait_event("JobStarted", agent="customer-service", timeout=20)
        await d.wait_event("JobStarted", agent="survey", timeout=20)
        d.process.send_signal(signal.SIGTERM)
        agents = await d.until(  # status answers, well before the held jobs end
            lambda agents: all(
                agents[name]["state"] == "draining" for name in ("customer-service", "survey")
            ),
            timeout=8,
        )
        busy = (agents["customer-service"], agents["survey"])
        assert all(a["jobs"] == 1 and not a["ready"] for a in busy)
        code, out, err = await d.cli("status")
        assert code == 0, err
        rows = table(out)[1]
        assert rows["customer-service"][1] == rows["survey"][1] == "draining"
        children = descendants(d.process.pid)
        with anyio.fail_after(60):
            assert await d.process.wait() == 0
        text = d.log.read_text()
        assert "support job done: room=cs-drain" in text
        assert "survey job done: room=survey-drain" in text
        await gone(children, 2)


async def test_supervisor_http_in_the_fleet_file_starts_the_listener(tmp_path: Path) -> None:
    import httpx

    port = free_port()
    fleet = fleet_file(
        tmp_path,
        "fleet.yaml",
        DEV_FLEET.replace(
            "supervisor:\n  drain_timeout: 1m\n",
            f"supervisor:\n  drain_timeout: 1m\n  http: 127.0.0.1:{port}\n",
        ),
    )
    assert f"http: 127.0.0.1:{port}" in fleet.read_text()
    async with daemon(str(fleet)) as d:  # no --http: the fleet's supervisor.http
        await d.wait_ready(3)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            live = await client.get(base + "/livez")
            assert live.status_code == 200
            assert live.text == "ok\n"
            ready = await client.get(base + "/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"ready": True, "not_ready": []}
            # an apply that moves supervisor.http moves the listener at once
            moved = free_port()
            code, out, err = await d.cli(
                "apply",
                str(
                    fleet_file(
                        tmp_path,
                        "moved.yaml",
                        fleet.read_text().replace(
                            f"http: 127.0.0.1:{port}", f"http: 127.0.0.1:{moved}"
                        ),
                    )
                ),
            )
            assert code == 0, out + err
            await d.wait_log(f"http://127.0.0.1:{moved}", timeout=10)  # it listens
            answer = await client.get(f"http://127.0.0.1:{moved}/livez")
            assert answer.status_code == 200
            with pytest.raises(httpx.ConnectError):
                await client.get(base + "/livez")
        d.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await d.process.wait() == 0


def kubelet_update(directory: Path, version: int, text: str) -> None:
    """Update a mounted ConfigMap as the kubelet does: the file is ``fleet.yaml`` ->
    ``..data/fleet.yaml``; a new timestamped directory is written, ``..data`` is swapped to it
    with a rename, and the old directory is deleted."""
    fresh = directory / f"..2026_11_30_{version:02d}"
    fresh.mkdir()
    (fresh / "fleet.yaml").write_text(text)
    old = (directory / "..data").resolve() if (directory / "..data").exists() else None
    (directory / "..data_tmp").symlink_to(fresh.name)
    (directory / "..data_tmp").rename(directory / "..data")
    if not (directory / "fleet.yaml").is_symlink():
        (directory / "fleet.yaml").symlink_to("..data/fleet.yaml")
    if old is not None:
        for child in old.iterdir():
            child.unlink()
        old.rmdir()


async def fleet_status(d: Daemon) -> dict[str, Any]:
    code, out, err = await d.cli("status", "-o", "json")
    assert code == 0, err
    fleet: dict[str, Any] = json.loads(out)["fleet"]
    return fleet


async def test_run_watch_applies_configmap_updates_and_refuses_a_broken_one(
    tmp_path: Path,
) -> None:
    """Regression: the fleet path was resolved through its symlinks, so after a ConfigMap
    update the daemon re-read a deleted directory ("no such file") on SIGHUP."""
    mount = tmp_path / "config"
    mount.mkdir()
    kubelet_update(mount, 1, DEV_FLEET)
    fleet = mount / "fleet.yaml"
    async with daemon(str(fleet), "--watch") as d:
        await d.wait_ready(3)
        first = await fleet_status(d)
        assert first["source"] == str(fleet)  # the link, not today's target
        assert first["watching"] is True
        assert first["name"] == "dev"
        assert first["last_error"] is None
        code, out, _ = await d.cli("status")
        assert f"fleet dev, revision {first['revision']}, from {fleet} (watched" in out

        mark = await d.last_seq("events")
        kubelet_update(mount, 2, DEV_FLEET.replace("max_jobs: 4", "max_jobs: 3"))
        applied = await d.wait_event("Applied", after=mark, timeout=30)
        now = await fleet_status(d)
        assert now["revision"] != first["revision"]
        assert now["last_error"] is None
        code, out, err = await d.cli("diff", str(fleet))
        assert code == 0, out + err  # the daemon runs what the new file says

        broken = DEV_FLEET.replace("max_jobs: 4", "max_jobs: many")
        line = broken.splitlines().index("  max_jobs: many") + 1
        kubelet_update(mount, 3, broken)
        refused = await d.wait_event("ApplyFailed", after=applied["seq"], timeout=30)
        assert str(fleet) in refused["message"]
        failed = await fleet_status(d)
        assert failed["revision"] == now["revision"]  # nothing changed
        assert failed["last_error"].startswith(f"watch: {fleet} does not pass its checks")
        assert f"fleet.yaml:{line}:" in failed["last_error"]
        code, out, _ = await d.cli("status")
        assert "last re-apply failed" in out
        assert "max_jobs" in out
        code, _, err = await d.cli("status", "--check")
        assert code == 0, err  # the agents keep running the fleet before it

        kubelet_update(mount, 4, DEV_FLEET.replace("max_jobs: 4", "max_jobs: 2"))
        await d.wait_event("Applied", after=refused["seq"], timeout=30)
        fixed = await fleet_status(d)
        assert fixed["revision"] != now["revision"]
        assert fixed["last_error"] is None
        assert sum("watch: re-applied" in str(r.get("msg")) for r in records(d)) == 2
        d.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await d.process.wait() == 0


async def test_version_typos_missing_daemon_yaml_watch_stream_and_render_applied(
    tmp_path: Path,
) -> None:
    fleet = fleet_file(tmp_path, "fleet.yaml", DEV_FLEET)
    async with daemon(str(fleet)) as d:
        await d.wait_ready(3)
        # version: the client, the daemon (its pid and socket), and each agent's runtime
        code, out, err = await d.cli("version")
        assert code == 0, err
        assert re.match(r"client: lksup \S+, livekit-protocol \d", out)
        assert f"(pid {d.process.pid}, {d.socket})" in out
        assert "agent sales: lksup runtime" in out
        document = json.loads((await d.cli("version", "-o", "json"))[1])
        assert document["daemon"]["lksup"] == document["client"]["lksup"]
        assert document["daemon"]["livekitProtocol"] == document["client"]["livekitProtocol"]
        # shell completion of agent names asks the daemon
        completed = await anyio.run_process(
            [str(Path(sys.executable).parent / "lksup")],
            env={
                **d.env(),
                "_LKSUP_COMPLETE": "bash_complete",
                "COMP_WORDS": "lksup drain s",
                "COMP_CWORD": "2",
            },
        )
        assert completed.stdout.decode().splitlines() == ["plain,sales", "plain,survey"]
        # an agent name with a typo: exit 4, with the names it may have meant
        code, _, err = await d.cli("drain", "salez")
        assert code == 4
        assert "no agent named 'salez'; did you mean 'sales'?" in err
        code, _, err = await d.cli("status", "survy")
        assert code == 4
        assert "did you mean 'survey'?" in err
        # no daemon: the socket it tried, and how to point elsewhere
        elsewhere = str(tmp_path / "nobody.sock")
        code, out, err = await d.cli("version", "--socket", elsewhere)
        assert code == 4
        assert out.startswith("client: lksup ")  # the client's own line still
        assert elsewhere in err
        code, _, err = await d.cli("status", env={"LKSUP_SOCKET": elsewhere})
        assert code == 4
        assert f"no lksup daemon is listening on {elsewhere}" in err
        assert "--socket PATH or LKSUP_SOCKET=PATH" in err
        # status as YAML, and as a stream of JSON lines
        code, out, err = await d.cli("status", "-o", "yaml")
        assert code == 0, err
        assert yaml.safe_load(out)["kind"] == "StatusList"
        command = [sys.executable, "-m", "lksup", "status", "-w", "-o", "json"]
        stream = await anyio.open_process(command, env=d.env(), cwd=ROOT)
        try:
            assert stream.stdout is not None
            buffered = b""
            with anyio.fail_after(20):
                while b"\n" not in buffered:
                    buffered += await stream.stdout.receive()
            first = json.loads(buffered.split(b"\n")[0])  # one document per line
            assert sorted(item["name"] for item in first["items"]) == list(AGENTS)
        finally:
            stream.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                await stream.wait()
            await stream.aclose()
        # dispatch --wait: which worker took the job; or why none did, with the local agents
        code, out, err = await d.cli("dispatch", "survey", "--room", "survey-waited", "--wait")
        assert code == 0, err
        # this host's supervisor runs survey: it says which of its workers took the job
        assert re.search(
            r"job AJ_\w+ assigned to worker AW_\w+ \(agent 'survey' on this host\): \w+", out
        ), out
        # the job's own log line carries where it runs
        started = await d.wait_log("survey job started: room=survey-waited", timeout=20)
        assert started["room"] == "survey-waited"
        assert started["worker_id"].startswith("AW_")
        code, out, err = await d.cli(
            "dispatch", "salez", "--room", "sales-typo", "--wait", "--timeout", "1s"
        )
        assert code == 1
        assert "no worker took the job of dispatch AD_" in err
        assert "has no agent 'salez'; did you mean 'sales'?" in err
        # the applied fleet, as render prints a file: the two compare equal
        code, applied, err = await d.cli("render", "--applied")
        assert code == 0, err
        assert applied.startswith("# applied revision ")
        code, rendered, err = await d.cli("render", str(fleet))
        assert code == 0, err
        assert yaml.safe_load(applied) == yaml.safe_load(rendered)
        code, _, err = await d.cli("render", "--applied", str(fleet))
        assert code == 2
        assert "--applied takes no FLEET" in err


async def test_events_and_logs_through_the_cli() -> None:
    async with daemon("fleets/dev.yaml", "--set", "hold_seconds=1") as d:
        await d.wait_ready(3)
        # events -w as a JSON-lines stream, started before anything below happens
        command = [sys.executable, "-m", "lksup", "events", "-w", "-o", "json"]
        stream = await anyio.open_process(command, env=d.env(), cwd=ROOT)
        try:
            code, out, err = await d.cli("dispatch", "survey", "--room", "survey-ev", "--wait")
            assert code == 0, err
            job_id = re.search(r"job (AJ_\w+) assigned", out).group(1)  # type: ignore[union-attr]
            seen: list[dict[str, Any]] = []
            buffered = b""
            assert stream.stdout is not None
            with anyio.fail_after(30):  # the job starts and ends (held 1 s)
                while not any(e["reason"] == "JobSucceeded" for e in seen):
                    buffered += await stream.stdout.receive()
                    *lines, rest = buffered.split(b"\n")
                    buffered = rest
                    seen.extend(json.loads(line) for line in lines if line)
        finally:
            stream.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                await stream.wait()
            await stream.aclose()
        reasons = [(e["reason"], e["agent"], e["job_id"]) for e in seen if e["job_id"] == job_id]
        assert reasons == [
            ("JobAssigned", "survey", job_id),
            ("JobStarted", "survey", job_id),
            ("JobSucceeded", "survey", job_id),
        ]
        # the kept events: the apply at start and every agent's registration
        code, out, err = await d.cli("events", "-o", "json")
        assert code == 0, err
        kept = json.loads(out)["items"]
        assert kept[0]["reason"] == "Applied"
        assert {e["agent"] for e in kept if e["reason"] == "Registered"} == set(AGENTS)
        code, out, err = await d.cli("events", "survey")
        assert code == 0, err
        assert f"JobSucceeded   survey/{job_id}  job succeeded (room survey-ev)" in out
        code, out, err = await d.cli("events", "--job", job_id, "-o", "json")
        assert [e["reason"] for e in json.loads(out)["items"]] == [r for r, _, _ in reasons]
        code, out, err = await d.cli("events", "--since", "1h", "-o", "json")
        assert len(json.loads(out)["items"]) == len(kept)
        code, out, err = await d.cli("events", "--since", "1ms", "-o", "json")
        assert len(json.loads(out)["items"]) < len(kept)  # not the start's
        code, out, err = await d.cli("events", "survy")
        assert code == 4
        assert "did you mean 'survey'?" in err
        # logs: the job's own lines, as text and as JSON records with their fields
        code, out, err = await d.cli("logs", "--job", job_id)
        assert code == 0, err
        assert "survey job started: room=survey-ev" in out
        assert f"[survey {job_id} " in out
        code, out, err = await d.cli("logs", "survey", "--job", job_id, "-o", "json")
        assert code == 0, err
        records = [json.loads(line) for line in out.splitlines()]
        assert records
        assert all(r["agent"] == "survey" and r["job_id"] == job_id for r in records)
        started = [r for r in records if "survey job started" in r["msg"]]
        assert started[0]["room"] == "survey-ev"
        code, out, _ = await d.cli("logs", "sales", "-o", "json")
        every = out.splitlines()
        assert every
        code, out, _ = await d.cli("logs", "sales", "--tail", "1", "-o", "json")
        assert out.splitlines() == every[-1:]
        code, out, _ = await d.cli("logs", "sales", "--since", "1h", "-o", "json")
        assert out.splitlines() == every
        code, out, _ = await d.cli("logs", "sales", "--since", "1ms", "-o", "json")
        assert len(out.splitlines()) < len(every)
        # logs -f: a record logged after it started comes through
        command = [sys.executable, "-m", "lksup", "logs", "sales", "-f", "--tail", "1"]
        follower = await anyio.open_process(command, env=d.env(), cwd=ROOT)
        try:
            assert follower.stdout is not None
            text = b""
            with anyio.fail_after(30):  # its first read is done: it prints the latest record
                while b"\n" not in text:
                    text += await follower.stdout.receive()
            assert b"agent sales drained" not in text  # not yet: the drain comes next
            code, _, err = await d.cli("drain", "sales")
            assert code == 0, err
            with anyio.fail_after(30):
                while b"agent sales drained" not in text:
                    text += await follower.stdout.receive()
        finally:
            follower.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                await follower.wait()
            await follower.aclose()


async def test_reload_runs_the_agents_new_code(tmp_path: Path) -> None:
    """Regression: a reload forked the new worker's processes from the agent's template,
    which had imported the old code, so an edit outside --dev never ran."""
    module = tmp_path / "versioned_agent.py"
    module.write_text(
        "import asyncio\nVERSION = 1\nasync def entrypoint(ctx):\n"
        "    print('running version', VERSION)\n"
        "    await asyncio.sleep(2)  # held: dispatch --wait sees the job in the room's list\n"
    )
    fleet = write_fleet(
        tmp_path,
        "versions",
        f"defaults: {{working_dir: {tmp_path}, num_idle_processes: 1, load: jobs, max_jobs: 10}}\n"
        "agents:\n"
        "  versioned:\n"
        "    entrypoint: versioned_agent:entrypoint\n",
    )
    async with daemon(str(fleet)) as d:
        await d.wait_ready(1)
        code, _, err = await d.cli("dispatch", "versioned", "--room", "v1", "--wait")
        assert code == 0, err
        await d.wait_log("running version 1", timeout=20)
        module.write_text(module.read_text().replace("VERSION = 1", "VERSION = 2"))
        code, _, err = await d.cli("reload", "versioned")
        assert code == 0, err
        await d.until(  # the new worker is the one registered
            lambda agents: agents["versioned"]["restarts"] == 1 and agents["versioned"]["ready"]
        )
        code, _, err = await d.cli("dispatch", "versioned", "--room", "v2", "--wait")
        assert code == 0, err
        await d.wait_log("running version 2", timeout=20)


async def test_log_file_and_log_level(tmp_path: Path) -> None:
    text = DEV_FLEET.replace(
        "supervisor:\n", "supervisor:\n  log_file: {path: logs/lksup.log, max_mb: 1, backups: 2}\n"
    )
    assert "log_file" in text
    fleet = fleet_file(tmp_path, "fleet.yaml", text)
    async with daemon(str(fleet)) as d:
        await d.wait_ready(3)
        written = tmp_path / "logs" / "lksup.log"  # relative to the fleet file
        # the file is the subject (the records before it was opened are not in it)
        await eventually(
            lambda: written.exists() and "registered as" in written.read_text(), timeout=10
        )
        lines = [json.loads(line) for line in written.read_text().splitlines()]
        assert {"ts", "level", "msg"} <= set(lines[0])
        # an apply without it: the file is left alone from then on
        code, _, err = await d.cli("apply", str(fleet_file(tmp_path, "plain.yaml", DEV_FLEET)))
        assert code == 0, err
        size = written.stat().st_size
        mark = await d.last_seq("logs")
        code, _, err = await d.cli("reload", "sales")
        assert code == 0, err
        # the new worker registered: logged, but not to the file
        await d.wait_log("agent sales registered as", after=mark, timeout=30)
        assert written.stat().st_size == size
    async with daemon("fleets/dev.yaml", "--log-level", "warning") as quiet:
        await quiet.wait_ready(3)
        code, _, err = await quiet.cli("drain", "sales", "--wait")
        assert code == 0, err
        assert "registered as" not in quiet.log.read_text()  # info records are not logged
