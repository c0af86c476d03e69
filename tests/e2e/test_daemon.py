"""`lksup run` as an operator runs it: a real daemon process with the embedded dev server, the
example dev fleet, the CLI against its control socket, and signals."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil
import pytest

from tests.conftest import ROOT, eventually, free_port
from tests.daemon_waits import DaemonWaits

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

DEV_SECRET = "secret-for-local-development-only"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class LiveKit:
    """A LiveKit server the fleet itself points at, instead of the embedded dev server."""

    url: str
    api_key: str
    api_secret: str


@dataclass
class Daemon(DaemonWaits):
    process: anyio.abc.Process
    socket: Path
    state_dir: Path
    url: str
    log: Path
    api_key: str = "devkey"
    api_secret: str = DEV_SECRET

    def env(self) -> dict[str, str]:
        """The operator's environment: this daemon's socket and its LiveKit server."""
        return {
            **os.environ,
            "LKSUP_SOCKET": str(self.socket),
            "LIVEKIT_URL": self.url,
            "LIVEKIT_API_KEY": self.api_key,
            "LIVEKIT_API_SECRET": self.api_secret,
        }

    async def cli(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> tuple[int, str, str]:
        """The CLI run as an operator would; ``env`` is added to the operator's environment."""
        result = await anyio.run_process(
            [sys.executable, "-m", "lksup", *args],
            env={**self.env(), **(env or {})},
            cwd=cwd,
            check=False,
        )
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    async def wait_ready(self, count: int, timeout: float = 60) -> None:
        await self.until(
            lambda agents: len(agents) == count and all(a["ready"] for a in agents.values()),
            timeout,
        )


@asynccontextmanager
async def daemon(
    *args: str,
    state_dir: Path | None = None,
    fd_limit: int | None = None,
    soft_fd_limit: int | None = None,
    env: dict[str, str] | None = None,
    livekit: LiveKit | None = None,
) -> AsyncIterator[Daemon]:
    """``lksup run ARGS`` with a dev server; ``env`` is added to the daemon's environment only.

    With ``livekit``, no dev server: the fleet's own ``livekit`` section points at that
    server, and the operator's environment (``Daemon.env``, ``lksup dispatch``) names it.
    """
    scratch = Path(tempfile.mkdtemp(dir="/tmp", prefix="lksup-e2e-"))
    port = free_port()
    state = state_dir or scratch / "state"
    log = scratch / "daemon.log"
    env = {
        **os.environ,
        **(env or {}),
        "LKSUP_SOCKET": str(scratch / "ctl.sock"),
        "LKSUP_STATE_DIR": str(state),
    }
    command = [sys.executable, "-m", "lksup", "run", *args]
    if livekit is None:
        command += ["--dev-server", f"127.0.0.1:{port}"]
    if fd_limit is not None:  # the shell sets the limit, then becomes the daemon
        command = ["sh", "-c", f'ulimit -n {fd_limit} && exec "$@"', "sh", *command]
    elif soft_fd_limit is not None:  # the soft limit only: the hard one stays
        command = ["sh", "-c", f'ulimit -S -n {soft_fd_limit} && exec "$@"', "sh", *command]
    with log.open("wb") as sink:
        process = await anyio.open_process(
            command,
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=sink,
        )
    server = livekit or LiveKit(f"ws://127.0.0.1:{port}", "devkey", DEV_SECRET)
    d = Daemon(
        process, scratch / "ctl.sock", state, server.url, log, server.api_key, server.api_secret
    )
    try:
        yield d
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            await process.wait()
            await process.aclose()


def write_fleet(directory: Path, name: str, body: str) -> Path:
    """``directory/fleet.yaml``: a fleet called ``name`` whose sections are ``body``."""
    fleet = directory / "fleet.yaml"
    fleet.write_text(f"apiVersion: lksup/v1\nkind: Fleet\nmetadata: {{name: {name}}}\n{body}")
    return fleet


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def gone(pids: list[int], timeout: float) -> None:
    """Until none of ``pids`` runs (an exit is seen only in the process table)."""
    await eventually(lambda: not any(map(_running, pids)), timeout=timeout, interval=0.02)


@dataclass
class SystemdSocket:
    """systemd's end of ``NOTIFY_SOCKET``: the datagrams queue here until read."""

    path: Path
    receiver: socket.socket

    def received(self) -> list[str]:
        """Every notification sent so far, oldest first."""
        said = []
        with contextlib.suppress(BlockingIOError):
            while True:
                said.append(self.receiver.recv(4096).decode())
        return said


@pytest.fixture
def systemd() -> Iterator[SystemdSocket]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="lksup-notify-")) / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.setblocking(False)
        yield SystemdSocket(path, receiver)
    path.unlink()
    path.parent.rmdir()


async def test_dev_fleet_runs_takes_jobs_and_drains_on_sigterm(systemd: SystemdSocket) -> None:
    env = {"NOTIFY_SOCKET": str(systemd.path)}
    async with daemon("fleets/dev.yaml", "--set", "hold_seconds=5", env=env) as d:
        await d.wait_ready(3)
        code, out, err = await d.cli("status")
        assert code == 0, err
        assert out.splitlines()[0].split()[:3] == ["AGENT", "STATE", "READY"]
        for agent in ("customer-service", "sales", "survey"):
            code, out, err = await d.cli("dispatch", agent, "--room", f"{agent}-room")
            assert code == 0, err
        for agent in ("customer-service", "sales", "survey"):  # each runs its job (held 5 s)
            await d.wait_event("JobStarted", agent=agent, timeout=20)  # when SIGTERM comes
        d.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            assert await d.process.wait() == 0
        text = d.log.read_text()
        # one fleet-wide deadline, progress in the log, and the end of the drain
        assert re.search(r"draining: 3 jobs left on 3 agents, deadline in \d+m", text), text
        assert "drained: every job finished" in text
        # stdout is not a terminal: JSON lines, job records carry agent, job_id and pid
        records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        started = [r for r in records if "survey job started" in r["msg"]]
        assert started
        assert started[0]["agent"] == "survey"
        assert started[0]["job_id"].startswith("AJ_")
        assert isinstance(started[0]["pid"], int)
        # each dispatch ran the right agent's entrypoint, and every job finished in the drain
        assert "support job started: room=customer-service-room" in text
        assert "sales job started: room=sales-room" in text
        assert "survey job started: room=survey-room" in text
        assert "support job done: room=customer-service-room" in text
        assert "survey job done: room=survey-room" in text
        # idle processes the drain stopped are not reported as having exited on their own
        assert "idle job process" not in text
    # under systemd: READY=1 once every agent registered, then STOPPING=1 and the drain's
    # timeout + 30 s when SIGTERM drains (the periodic STATUS= and, while draining, 15 s more
    # with each: tests/daemon/test_notify.py)
    periodic = ("STATUS=", "EXTEND_TIMEOUT_USEC=15000000")
    assert [m for m in systemd.received() if not m.startswith(periodic)] == [
        "READY=1\nSTATUS=3 agent(s) registered",
        "STOPPING=1\nSTATUS=draining 3 job(s)",
        "EXTEND_TIMEOUT_USEC=90000000",
    ]


async def test_second_sigterm_forces_exit_and_kill_leaves_no_children() -> None:
    async with daemon("fleets/dev.yaml", "--set", "hold_seconds=120") as d:
        await d.wait_ready(3)
        code, _, err = await d.cli("dispatch", "sales", "--room", "sales-long")
        assert code == 0, err
        await d.wait_event("JobStarted", agent="sales", timeout=20)
        children = descendants(d.process.pid)
        d.process.send_signal(signal.SIGTERM)
        await d.wait_log("draining:", timeout=10)
        d.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(2):
            assert await d.process.wait() == 1
        await gone(children, 2)


async def test_sigusr1_logs_every_task_await_chain() -> None:
    async with daemon("fleets/dev.yaml") as d:
        await d.wait_ready(3)
        d.process.send_signal(signal.SIGUSR1)
        record = await d.wait_log("SIGUSR1: what the supervisor is doing now", timeout=10)
        text = record["msg"]
        assert "Thread 'MainThread'" in text
        # where each agent's task is suspended, not just the event loop's select()
        assert "Task 'lksup.daemon.slot.AgentSlot._guard' (pending)" in text
        assert "in wait_finished" in text
        d.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await d.process.wait() == 0


def as_nobody(capability: str) -> list[str]:
    """Run as uid/gid 65534 with one capability (inherited through exec as an ambient one)."""
    return [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        f"--inh-caps=+{capability}",
        f"--ambient-caps=+{capability}",
    ]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="acting as a second user needs root and setpriv (util-linux)",
)
async def test_the_control_socket_refuses_another_user() -> None:
    """A real second uid. With CAP_DAC_OVERRIDE the socket's file mode cannot stop it, so the
    refusal is the daemon's own SO_PEERCRED check; without it the 0600 socket stops it first."""
    async with daemon("fleets/dev.yaml") as d:
        await d.wait_ready(3)
        command = [sys.executable, "-m", "lksup", "status"]
        past_the_mode = await anyio.run_process(
            [*as_nobody("dac_override"), *command], env=d.env(), cwd=ROOT, check=False
        )
        assert past_the_mode.returncode == 1
        assert "uid 65534 may not use this control socket" in past_the_mode.stderr.decode()
        assert "peer uid 65534 is not allowed" in d.log.read_text()
        stopped_by_mode = await anyio.run_process(
            [*as_nobody("dac_read_search"), *command], env=d.env(), cwd=ROOT, check=False
        )
        assert stopped_by_mode.returncode == 4
        assert "permission denied on" in stopped_by_mode.stderr.decode()
        code, out, _ = await d.cli("status")  # its own user still gets in
        assert code == 0
        assert "customer-service" in out


async def test_sigkill_leaves_no_job_process() -> None:
    async with daemon("fleets/dev.yaml") as d:
        await d.wait_ready(3)
        children = descendants(d.process.pid)
        assert children
        d.process.send_signal(signal.SIGKILL)
        await d.process.wait()
        await gone(children, 2)


async def test_restart_without_a_file_resumes_the_last_applied_fleet(tmp_path: Path) -> None:
    """What resumes is what `lksup apply` applied last, not the file `run` started with."""
    changed = tmp_path / "changed.yaml"
    changed.write_text(
        (ROOT / "fleets" / "dev.yaml")
        .read_text()
        .replace('("sales", "sales"), ', "")
        .replace("max_jobs: 4", "max_jobs: 3\n  load_threshold: 0.5")
    )
    async with daemon("fleets/dev.yaml") as first:
        await first.wait_ready(3)
        code, out, err = await first.cli("apply", str(changed), "--wait")
        assert code == 0, out + err
        assert "1 to drain and remove" in out
        state_dir = first.state_dir
        first.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await first.process.wait() == 0
    async with daemon(state_dir=state_dir) as second:
        await second.wait_ready(2)
        code, out, _ = await second.cli("status", "-o", "json")
        assert code == 0
        items = {item["name"]: item for item in json.loads(out)["items"]}
        assert sorted(items) == ["customer-service", "survey"]
        assert {item["threshold"] for item in items.values()} == {0.5}
        code, out, err = await second.cli("diff", str(changed))
        assert code == 0, out + err


async def test_a_bad_apply_changes_nothing_and_unknown_agents_exit_4(tmp_path: Path) -> None:
    async with daemon("fleets/dev.yaml") as d:
        await d.wait_ready(3)
        workers = {
            i["name"]: i["worker_id"]
            for i in json.loads((await d.cli("status", "-o", "json"))[1])["items"]
        }
        bad = tmp_path / "bad.yaml"
        bad.write_text(
            (ROOT / "fleets" / "dev.yaml").read_text().replace("max_jobs: 4", "max_jobs: 0")
        )
        code, _, err = await d.cli("apply", str(bad))
        assert code == 1
        assert "max_jobs" in err
        # nothing was applied: the same workers, and the daemon still runs fleets/dev.yaml
        code, out, _ = await d.cli("status", "-o", "json")
        assert code == 0
        assert {i["name"]: i["worker_id"] for i in json.loads(out)["items"]} == workers
        code, out, err = await d.cli("diff", "fleets/dev.yaml")
        assert code == 0, out + err
        code, _, err = await d.cli("status", "nobody")
        assert code == 4
        code, _, _ = await d.cli("status", "--check")
        assert code == 0
        code, out, err = await d.cli("drain", "sales")
        assert code == 0, err
        code, out, _ = await d.cli("status", "sales")
        assert "override" in out
        # the others keep accepting: a dispatch to survey runs
        code, _, err = await d.cli("dispatch", "survey", "--room", "survey-while-sales-drained")
        assert code == 0, err
        await d.wait_log("survey job started: room=survey-while-sales-drained", timeout=20)
        code, out, _ = await d.cli("status", "sales", "-o", "json")
        (sales,) = json.loads(out)["items"]
        conditions = {c["type"]: c for c in sales["conditions"]}
        assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
            "False",
            "Draining",
        )
        assert (conditions["Synced"]["status"], conditions["Synced"]["reason"]) == (
            "False",
            "Override",
        )
        assert datetime.fromisoformat(conditions["Ready"]["lastTransitionTime"]).tzinfo


async def test_status_without_a_daemon_exits_4() -> None:
    scratch = Path(tempfile.mkdtemp(dir="/tmp", prefix="lksup-e2e-"))
    env = {**os.environ, "LKSUP_SOCKET": str(scratch / "none.sock")}
    result = await anyio.run_process(
        [sys.executable, "-m", "lksup", "status"], env=env, check=False
    )
    assert result.returncode == 4


async def test_startup_refusals_say_why_in_one_line(tmp_path: Path) -> None:
    """An invalid fleet, another daemon on the socket, a port in use: one clear line, exit 1,
    no traceback, and nothing left behind."""

    async def run(*args: str, socket: Path) -> tuple[int, str]:
        env = {**os.environ, "LKSUP_SOCKET": str(socket), "LKSUP_STATE_DIR": str(tmp_path / "s")}
        with anyio.fail_after(30):
            result = await anyio.run_process(
                [sys.executable, "-m", "lksup", "run", *args], env=env, cwd=ROOT, check=False
            )
        return result.returncode, result.stderr.decode()

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "fleets" / "dev.yaml").read_text().replace("max_jobs: 4", "max_jobs: 0", 1)
    )
    code, err = await run(str(bad), socket=tmp_path / "a.sock")
    assert code == 1
    assert "bad.yaml:" in err
    assert "max_jobs" in err
    assert "Traceback" not in err
    assert not (tmp_path / "a.sock").exists()  # refused before anything started

    async with daemon("fleets/dev.yaml") as d:
        await d.wait_ready(3)
        code, err = await run(socket=d.socket)
        assert code == 1
        assert f"lksup: error: another lksup daemon is running on {d.socket}" in err
        assert "Traceback" not in err
        port = d.url.rsplit(":", 1)[1]
        code, err = await run("--dev-server", f"127.0.0.1:{port}", socket=tmp_path / "b.sock")
        assert code == 1
        assert f"cannot start the dev server on 127.0.0.1:{port}: Address already in use" in err
        assert "Traceback" not in err
        assert (await d.cli("status"))[0] == 0  # the running daemon never noticed


async def test_the_state_dir_is_one_daemons_and_a_failed_start_changes_nothing(
    tmp_path: Path,
) -> None:
    """Regression: two daemons with one --state-dir both ran and overwrote each other's applied
    fleet; a daemon that could not bind its --http port had already applied and persisted."""

    async def run(*args: str) -> tuple[int, str]:
        command = [sys.executable, "-m", "lksup", "run", *args, "--socket", str(tmp_path / "b")]
        with anyio.fail_after(30):
            result = await anyio.run_process(command, cwd=ROOT, check=False)
        return result.returncode, (result.stdout + result.stderr).decode()

    async with daemon("fleets/dev.yaml") as d:
        await d.wait_ready(3)
        applied = (d.state_dir / "applied.json").read_text()
        code, err = await run("fleets/dev.yaml", "--state-dir", str(d.state_dir))
        assert code == 1
        assert (
            f"cannot start: another lksup daemon (pid {d.process.pid}) uses the state directory "
            f"{d.state_dir}" in err
        )
        assert "Traceback" not in err
        assert (d.state_dir / "applied.json").read_text() == applied
        assert (await d.cli("status"))[0] == 0  # the running daemon never noticed
        busy = free_port()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", busy))
            taken.listen()
            d.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await d.process.wait()
            applied = (d.state_dir / "applied.json").read_text()
            changed = tmp_path / "changed.yaml"
            changed.write_text(
                (ROOT / "fleets" / "dev.yaml").read_text().replace("max_jobs: 4", "max_jobs: 3")
            )
            code, output = await run(
                str(changed),
                "--state-dir",
                str(d.state_dir),
                "--http",
                f"127.0.0.1:{busy}",
                "--dev-server",
                f"127.0.0.1:{free_port()}",
            )
        assert code == 1
        assert f"cannot listen on 127.0.0.1:{busy}" in output
        assert "Traceback" not in output
        assert (d.state_dir / "applied.json").read_text() == applied  # nothing persisted
        assert "registered as" not in output  # no agent was started


async def test_diff_apply_in_place_prune_all_simulate_and_sighup(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    original = (ROOT / "fleets" / "dev.yaml").read_text()
    fleet.write_text(original)  # its agents import fleets.agents.* from the daemon's cwd
    async with daemon(str(fleet)) as d:
        await d.wait_ready(3)
        code, out, err = await d.cli("diff", str(fleet))
        assert code == 0, out + err  # what the daemon runs is what the file says
        changed = tmp_path / "changed.yaml"
        changed.write_text(original.replace("max_jobs: 4", "max_jobs: 3"))
        code, out, _ = await d.cli("diff", str(changed))
        assert code == 1
        assert "update-in-place" in out
        code, out, err = await d.cli("apply", str(changed), "--wait", "--timeout", "30s")
        assert code == 0, err
        assert "3 to update in place" in out
        code, out, _ = await d.cli("status", "-o", "json")
        assert '"restarts": 0' in out  # in place: nothing restarted
        empty = tmp_path / "empty.yaml"
        empty.write_text("apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: dev}\nagents: {}\n")
        code, _, err = await d.cli("apply", str(empty))
        assert code == 1
        assert "--prune-all" in err
        code, out, err = await d.cli("simulate", "sales", "--room", "sales-sim")
        assert code == 0, err
        # the sales agent takes it and its entrypoint logs the room
        await d.wait_log("room=sales-sim", agent="sales", timeout=20)
        # a template value given to apply (HOLD_SECONDS in every agent's env: a replace)
        code, out, err = await d.cli(
            "apply", str(changed), "--set", "hold_seconds=9", "--wait", "--timeout", "60s"
        )
        assert code == 0, err
        assert "3 to replace" in out
        assert "template value hold_seconds: (unset) -> 9" in out  # why the agents are replaced
        # SIGHUP re-applies the last applied source (changed.yaml), re-rendered with the values
        # it was applied with: only the file's own change shows
        changed.write_text(original.replace("max_jobs: 4", "max_jobs: 2"))
        d.process.send_signal(signal.SIGHUP)
        line = (await d.wait_log("SIGHUP: re-applied", timeout=20))["msg"]
        assert "3 to update in place" in line
        assert "replace" not in line.replace("0 to replace", "")
        code, out, _ = await d.cli("diff", str(changed), "--set", "hold_seconds=9")
        assert code == 0, out
        assert "template value" not in out
        code, out, _ = await d.cli("diff", str(changed), "--set", "hold_seconds=20")
        assert code == 1, out
        assert "template value hold_seconds: 9 -> 20" in out
        # regression: a fleet of another name replaced the running one without a word
        renamed = tmp_path / "renamed.yaml"
        renamed.write_text(changed.read_text().replace("name: dev", "name: prod"))
        code, out, err = await d.cli("apply", str(renamed), "--set", "hold_seconds=9")
        assert code == 1
        assert "the running fleet is 'dev' and this file is fleet 'prod'" in err
        assert "pass --replace-fleet" in err
        code, out, err = await d.cli("apply", str(renamed), "--set", "hold_seconds=9", "--dry-run")
        assert code == 0, err
        assert "fleet 'dev' -> 'prod' (replaces the running fleet)" in out
        code, out, err = await d.cli(
            "apply", str(renamed), "--set", "hold_seconds=9", "--replace-fleet"
        )
        assert code == 0, err
        assert "fleet 'dev' -> 'prod'" in out


async def test_health_readiness_status_and_metrics_over_http() -> None:
    import httpx

    port = free_port()
    async with daemon("fleets/dev.yaml", "--http", f"127.0.0.1:{port}") as d:
        await d.wait_ready(3)
        base = f"http://127.0.0.1:{port}"
        # regression: a request the listener could not parse used to crash the whole daemon
        for junk in (
            b"\x00\xff garbage\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        ):
            async with await anyio.connect_tcp("127.0.0.1", port) as raw:
                await raw.send(junk)
        async with httpx.AsyncClient() as client:
            assert (await client.get(base + "/livez")).status_code == 200
            assert (await client.get(base + "/livez")).text == "ok\n"  # keep-alive reuse
            ready = await client.get(base + "/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"ready": True, "not_ready": []}
            assert (await client.get(base + "/readyz/nobody")).status_code == 404
            status = (await client.get(base + "/status")).json()
            assert status["kind"] == "StatusList"
            code, _, err = await d.cli("drain", "sales")
            assert code == 0, err
            await d.wait_event("Drained", agent="sales", timeout=20)
            assert (await client.get(base + "/readyz/sales")).status_code == 503
            assert (await client.get(base + "/readyz")).json()["not_ready"] == ["sales"]
            code, _, err = await d.cli("dispatch", "survey", "--room", "survey-m")
            assert code == 0, err
            await d.wait_event("JobSucceeded", agent="survey", timeout=30)
            text = (await client.get(base + "/metrics")).text
            assert 'lksup_jobs_total{agent="survey",outcome="success"} 1.0' in text
            assert 'lksup_offers_total{agent="survey",answer="accepted"} 1.0' in text
            assert 'lksup_agent_draining{agent="sales"} 1.0' in text
            assert 'lksup_agent_state{agent="survey",state="running"} 1.0' in text
            assert 'lksup_agent_state{agent="survey",state="failed"} 0.0' in text
            assert 'lksup_agent_restarts_total{agent="survey"} 0.0' in text
            assert 'lksup_job_failures_total{agent="survey",kind="exception"} 0.0' in text
            assert 'lksup_offers_declined_total{agent="survey",cause="full"} 0.0' in text
            assert re.search(r'lksup_build_info\{livekit_protocol="[^"]+",python="3', text)
            assert re.search(r"^process_resident_memory_bytes [0-9.e+]+$", text, re.M)
            assert 'lksup_job_start_seconds_count{agent="survey"} 1.0' in text
            # one series per agent for every gauge, with the live values
            for agent in ("customer-service", "sales", "survey"):
                assert f'lksup_agent_ready{{agent="{agent}"}} ' in text
                assert f'lksup_reconnects_total{{agent="{agent}"}} 0.0' in text
            assert 'lksup_agent_ready{agent="sales"} 0.0' in text  # drained
            assert 'lksup_agent_ready{agent="survey"} 1.0' in text
            assert 'lksup_agent_jobs{agent="survey"} 0.0' in text
            assert 'lksup_agent_idle_processes{agent="survey"} 1.0' in text
            assert re.search(r'lksup_agent_load\{agent="survey"\} [0-9.]+', text)
            pattern = re.compile(r'lksup_agent_memory_bytes\{agent="survey"\} ([0-9.e+]+)')

            async def measured() -> bool:  # its warm process, once a memory sweep measured it
                memory = pattern.search((await client.get(base + "/metrics")).text)
                assert memory
                return float(memory.group(1)) > 1e6

            await eventually(measured, timeout=20, interval=0.2)  # sweeps announce nothing


async def test_the_daemon_raises_its_soft_descriptor_limit_to_the_hard_one() -> None:
    """Regression: a daemon started under the common soft limit of 1,024 kept it, and ran out
    of descriptors long before the hard limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard > 256  # the host allows more than the soft limit the daemon starts with
    async with daemon("fleets/dev.yaml", soft_fd_limit=256) as d:
        await d.wait_ready(3)
        assert psutil.Process(d.process.pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)


async def test_a_flood_of_idle_connections_to_the_listener_never_kills_the_daemon() -> None:
    """Regression: with a low descriptor limit, idle connections to /metrics made accept()
    fail with EMFILE out of the listener, and the daemon exited. The listener serves a bounded
    number of clients and sheds the idle ones while every slot is taken."""
    import httpx

    port = free_port()
    async with daemon("fleets/dev.yaml", "--http", f"127.0.0.1:{port}", fd_limit=128) as d:
        await d.wait_ready(3)
        idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(200)]
        try:
            code, _, err = await d.cli("status")  # the control socket still answers
            assert code == 0, err
            async with httpx.AsyncClient() as client:
                # served behind the flood: idle connections are shed after 1 s each round
                # (waiting out their 10 s request timeouts would take 40 s)
                with anyio.fail_after(10):
                    live = await client.get(f"http://127.0.0.1:{port}/livez", timeout=10)
                assert live.status_code == 200
            assert d.process.returncode is None
        finally:
            for stream in idle:
                await stream.aclose()
        async with httpx.AsyncClient() as client:
            with anyio.fail_after(30):  # once they are gone the listener serves as before
                assert (await client.get(f"http://127.0.0.1:{port}/livez")).status_code == 200
        assert d.process.returncode is None
        d.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await d.process.wait() == 0


async def test_drain_wait_reports_jobs_left_until_drained() -> None:
    async with daemon("fleets/dev.yaml", "--set", "hold_seconds=2") as d:
        await d.wait_ready(3)
        code, _, err = await d.cli("dispatch", "sales", "--room", "sales-drain")
        assert code == 0, err
        await d.wait_event("JobStarted", agent="sales", timeout=20)
        code, out, err = await d.cli("drain", "sales", "--wait", "--timeout", "30s")
        assert code == 0, err
        assert "1 job(s) left" in out
        assert out.rstrip().endswith("drained")
        code, out, _ = await d.cli("status", "sales")
        assert "drained" in out
        assert "override" in out


async def test_replace_while_a_job_runs_then_remove(tmp_path: Path) -> None:
    original = (ROOT / "fleets" / "dev.yaml").read_text()
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(original)
    # a survey job asks its three questions 2 s apart: it still runs after the apply below
    # that removes its agent, a CLI process and an import check (seconds on a busy host)
    async with daemon(str(fleet), "--set", "hold_seconds=8", env={"SURVEY_STEP_SECONDS": "2"}) as d:
        await d.wait_ready(3)
        code, _, err = await d.cli("dispatch", "customer-service", "--room", "cs-old")
        assert code == 0, err
        await d.wait_log("support job started: room=cs-old", timeout=20)
        # change customer-service's entrypoint (to the survey module's): a replace
        replaced = tmp_path / "replaced.yaml"
        replaced.write_text(
            original.replace('("customer-service", "support")', '("customer-service", "survey")')
        )
        code, out, err = await d.cli("apply", str(replaced), "--set", "hold_seconds=8")
        assert code == 0, err
        assert "1 to replace" in out
        assert "entrypoint: fleets.agents.support:entrypoint -> fleets.agents.survey" in out
        # a new offer while the old worker still runs its job goes to the new entrypoint, once
        # the new worker is registered and warm and the old one drains (a hand-over no event
        # marks: the agent's state is the new worker's)
        await d.wait_event("Restarted", agent="customer-service", timeout=30)

        async def handed_over() -> bool:
            message: str = (await d.agents())["customer-service"]["message"]
            return message == "1 old worker(s) draining"

        await eventually(handed_over, timeout=30)
        code, _, err = await d.cli("dispatch", "customer-service", "--room", "cs-new")
        assert code == 0, err
        await d.wait_log("survey job started: room=cs-new", timeout=30)
        code, out, _ = await d.cli("status", "customer-service", "-o", "json")
        # that was during the replace: the old worker is still draining its job
        assert "1 old worker(s) draining" in json.loads(out)["items"][0]["message"]
        # the job on the old worker completes, undisturbed
        await d.wait_log("support job done: room=cs-old", timeout=30)
        # remove an agent with a job running: drained (the job finishes), then gone
        code, _, err = await d.cli("dispatch", "survey", "--room", "survey-last")
        assert code == 0, err
        await d.wait_log("survey job started: room=survey-last", timeout=20)
        removed = tmp_path / "removed.yaml"
        removed.write_text(
            replaced.read_text()
            .replace('("survey", "survey")', "")
            .replace('("sales", "sales"), ', '("sales", "sales")')
        )
        code, out, err = await d.cli("apply", str(removed), "--set", "hold_seconds=8")
        assert code == 0, err
        assert "1 to drain and remove" in out
        assert (await d.agents())["survey"]["state"] == "draining"
        await d.wait_event("AgentRemoved", agent="survey", timeout=30)
        assert "survey" not in (await d.cli("status"))[1]
        assert "survey job done: room=survey-last" in d.log.read_text()
        d.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await d.process.wait() == 0


async def test_dev_mode_has_no_threshold_and_no_idle_processes() -> None:
    async with daemon("fleets/dev.yaml", "--dev") as d:
        await d.until(
            lambda agents: len(agents) == 3 and all(a["registered"] for a in agents.values()),
            timeout=60,
        )
        code, out, _ = await d.cli("status", "-o", "json")
        assert code == 0
        assert out.count('"threshold": 1.0') == 3
        assert out.count('"idle_target": 0') == 3
        code, _, err = await d.cli("dispatch", "survey", "--room", "survey-dev")
        assert code == 0, err
        # no warm process: one starts on demand
        await d.wait_log("survey job started: room=survey-dev", timeout=30)
        assert '"level": "debug"' in d.log.read_text()
        # the development defaults hold for an apply too, and only at run time: the fleet as
        # written is what is persisted and compared
        code, out, err = await d.cli("apply", "fleets/dev.yaml")
        assert code == 0, err
        assert "3 unchanged" in out
        code, out, err = await d.cli("diff", "fleets/dev.yaml")
        assert code == 0, out + err
        code, out, _ = await d.cli("status", "-o", "json")
        assert out.count('"threshold": 1.0') == 3
        persisted = json.loads((d.state_dir / "applied.json").read_text())
        agents = persisted["fleet"]["agents"]
        assert {a["load_threshold"] for a in agents.values()} == {0.7}  # as written
        assert {a["num_idle_processes"] for a in agents.values()} != {0}


async def test_job_processes_never_see_or_print_the_connection_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: job processes inherited the variable behind the connection's api_secret, and
    a job that printed it put the secret in the log unmasked."""
    secret = DEV_SECRET  # what the embedded dev server accepts
    monkeypatch.setenv("LK_TEST_SECRET", secret)
    (tmp_path / "leaky_agent.py").write_text(
        "import os\n"
        "async def entrypoint(ctx):\n"
        "    print('inherited:', os.environ.get('LK_TEST_SECRET'))\n"
        "    print('copied:', os.environ.get('PLAIN_COPY'))\n"
    )
    fleet = write_fleet(
        tmp_path,
        "leaky",
        "livekit: {api_key: devkey, api_secret: {env: LK_TEST_SECRET}}\n"
        f"defaults: {{working_dir: {tmp_path}, load: jobs, max_jobs: 10}}\n"
        "agents:\n"
        "  plain:\n"
        "    entrypoint: leaky_agent:entrypoint\n"
        f"    env: {{PLAIN_COPY: {secret}}}\n"
        "  named:\n"
        "    entrypoint: leaky_agent:entrypoint\n"
        "    env: {LK_TEST_SECRET: {env: LK_TEST_SECRET}}\n",
    )
    async with daemon(str(fleet)) as d:
        await d.wait_ready(2)
        for agent in ("plain", "named"):
            code, _, err = await d.cli("dispatch", agent, "--room", f"{agent}-room")
            assert code == 0, err
        first = await d.wait_log("copied:", timeout=30)
        await d.wait_log("copied:", after=first["seq"], timeout=30)
        log = d.log.read_text()
    lines = {
        json.loads(line)["agent"]: json.loads(line)["msg"]
        for line in log.splitlines()
        if "inherited:" in line
    }
    assert lines == {"plain": "inherited: None", "named": "inherited: ****"}
    assert log.count("copied: ****") == 1  # any fleet connection secret is masked
    assert secret not in log


async def test_every_job_end_is_logged_with_where_it_ran_how_it_ended_and_how_long(
    tmp_path: Path,
) -> None:
    """Regression: a job whose process exited with a code left only "assigned job ..." in the
    supervisor's log; the reason reached the server and a counter, nothing an operator reads."""
    (tmp_path / "ending_agent.py").write_text(
        "import os\n"
        "async def entrypoint(ctx):\n"
        "    if ctx.job.metadata == 'exit3':\n"
        "        os._exit(3)\n"
    )
    fleet = write_fleet(
        tmp_path,
        "ending",
        f"defaults: {{working_dir: {tmp_path}, load: jobs, max_jobs: 10}}\n"
        "agents:\n  ending: {entrypoint: ending_agent:entrypoint}\n",
    )
    async with daemon(str(fleet)) as d:
        await d.wait_ready(1)
        for room, metadata in (("fine-room", ""), ("crash-room", "exit3")):
            code, _, err = await d.cli("dispatch", "ending", "--room", room, "--metadata", metadata)
            assert code == 0, err
        first = await d.follow("logs", lambda record: "outcome" in record, timeout=30)
        await d.follow("logs", lambda record: "outcome" in record, after=first["seq"])
        ends = {
            record["room"]: record
            for record in map(json.loads, d.log.read_text().splitlines())
            if "outcome" in record
        }
        # status keeps the failure, and --jobs the ended jobs, for a while
        code, out, err = await d.cli("status")
        assert code == 0, err
        assert "last failure " in out
        assert " ago: job process exited with code 3" in out
        code, out, err = await d.cli("status", "-o", "json")
        (item,) = json.loads(out)["items"]
        assert item["last_failure"] == "job process exited with code 3"
        assert item["last_failure_at"].endswith("+00:00")
        code, out, err = await d.cli("status", "--jobs")
        assert code == 0, err
        assert "ending: 0 job(s)" in out
        assert "ending: ended in the last 10 minutes" in out
        crash_id, fine_id = ends["crash-room"]["job_id"], ends["fine-room"]["job_id"]
        assert re.search(
            rf"{crash_id}  room=crash-room  pid=\d+  failed  \S+ ago: job process exited with code 3",
            out,
        ), out
        assert re.search(rf"{fine_id}  room=fine-room  pid=\d+  succeeded  \S+ ago: ", out), out
        # regression: a restart of the agent forgot them (they lived in its old runtime)
        code, _, err = await d.cli("reload", "ending")
        assert code == 0, err
        # the old worker's idle process is stopped: it is retired
        await d.wait_log("Shutting down while idle: agent replaced.", timeout=60)
        code, out, err = await d.cli("status", "--jobs")
        assert code == 0, err
        assert crash_id in out
        assert fine_id in out
        assert " ago: job process exited with code 3" in (await d.cli("status"))[1]
    fine, crash = ends["fine-room"], ends["crash-room"]
    assert fine["outcome"] == "succeeded"
    assert fine["level"] == "info"
    assert crash["outcome"] == "failed"
    assert crash["level"] == "warning"
    assert crash["error"] == "job process exited with code 3"
    for record in (fine, crash):
        assert record["agent"] == "ending"
        assert record["job_id"].startswith("AJ_")
        assert isinstance(record["pid"], int)
        assert record["duration_s"] >= 0
        assert record["msg"].startswith(f"agent ending job {record['job_id']} (room ")


async def test_a_bad_duration_is_a_usage_error_before_anything_is_sent() -> None:
    """Regression: `apply --wait --timeout 1zz` applied the fleet, then raised a traceback;
    `drain sales --wait --timeout 3x` drained, then did the same."""
    async with daemon("fleets/dev.yaml") as d:
        await d.wait_ready(3)
        applied = (d.state_dir / "applied.json").read_text()
        for command in (
            ("apply", "fleets/dev.yaml", "--set", "hold_seconds=9", "--wait", "--timeout", "1zz"),
            ("drain", "sales", "--wait", "--timeout", "3x"),
        ):
            code, out, err = await d.cli(*command)
            assert code == 2, out + err
            assert "Invalid value for '--timeout'" in err
            assert "is not a duration" in err
            assert "Traceback" not in err
        code, out, _ = await d.cli("status", "-o", "json")
        assert out.count('"draining": false') == 3  # nothing was drained
        assert (d.state_dir / "applied.json").read_text() == applied  # nothing was applied


async def test_dev_mode_runs_the_agents_code_as_it_is_when_each_job_starts(
    tmp_path: Path,
) -> None:
    code_file = tmp_path / "edited_agent.py"
    agent = "async def entrypoint(ctx):\n    print('edited agent VERSION')\n"
    code_file.write_text(agent.replace("VERSION", "v1"))
    fleet = write_fleet(
        tmp_path,
        "dev-edit",
        # load by jobs: a busy CPU (the spawns themselves) never makes the server drop one
        f"defaults: {{working_dir: {tmp_path}, load: jobs, max_jobs: 10}}\n"
        "agents:\n  edited: {entrypoint: edited_agent:entrypoint}\n",
    )
    async with daemon(str(fleet), "--dev") as d:
        await d.wait_ready(1)
        for version, room in (("v1", "edit-1"), ("v2", "edit-2")):
            if version == "v2":  # the edit, between two jobs
                code_file.write_text(agent.replace("VERSION", version))
            code, _, err = await d.cli("dispatch", "edited", "--room", room)
            assert code == 0, err
            await d.wait_log(f"edited agent {version}", timeout=30)


async def test_a_flood_of_idle_control_connections_never_kills_the_daemon() -> None:
    """Regression: with a low descriptor limit, idle connections to the control socket took
    every descriptor; the memory sweep then failed with EMFILE and the daemon stopped. The
    control socket serves a bounded number of clients; the rest wait in the backlog. While
    every slot is taken, connections that send nothing are shed after 1 s, so the CLI behind
    the flood is answered in seconds (it took three 10 s request timeouts, near the CLI's own
    30 s timeout)."""
    async with daemon("fleets/dev.yaml", fd_limit=128) as d:
        await d.wait_ready(3)
        idle: list[socket.socket] = []
        try:
            for _ in range(300):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                idle.append(sock)
                with contextlib.suppress(BlockingIOError):  # the backlog is full: refused
                    sock.connect(str(d.socket))
            # answered once shedding frees a slot; the memory sweeps of the warm processes
            # ran with the flood on meanwhile
            with anyio.fail_after(10):
                code, out, err = await d.cli("status")
            assert code == 0, err
            assert "customer-service" in out
            assert d.process.returncode is None
        finally:
            for sock in idle:
                sock.close()
        code, _, err = await d.cli("status")
        assert code == 0, err
    assert "Traceback" not in d.log.read_text()


async def test_sigterm_before_registration_never_says_every_agent_is_registered(
    tmp_path: Path,
) -> None:
    """Regression: on SIGTERM the drain counted an agent that never registered as drained, and
    the daemon logged "every agent is registered" (and sent systemd READY=1) on its way out."""
    fleet = write_fleet(
        tmp_path,
        "unreachable",
        "agents:\n"
        "  lonely:\n    entrypoint: fleets.agents.survey:entrypoint\n"
        f"    livekit: {{url: 'ws://127.0.0.1:{free_port()}'}}\n",
    )
    async with daemon(str(fleet)) as d:
        await d.until(lambda agents: "lonely" in agents)
        d.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await d.process.wait() == 0
    text = d.log.read_text()
    assert "drained: every job finished" in text
    assert "every agent is registered" not in text


async def test_apply_checks_imports_and_references_where_the_daemon_runs(tmp_path: Path) -> None:
    """Regression: apply checked imports and {env: ...} references in the operator's shell
    and directory: a variable set only for the daemon made apply refuse, and a fleet that
    passed in the operator's directory then failed in every agent."""
    base = (ROOT / "fleets" / "dev.yaml").read_text()
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(base.replace('HOLD_SECONDS: "{{ hold }}"', "TOKEN: {env: ONLY_FOR_DAEMON}"))
    async with daemon(str(fleet), env={"ONLY_FOR_DAEMON": "daemon-token"}) as d:
        await d.wait_ready(3)
        assert "ONLY_FOR_DAEMON" not in d.env()
        changed = tmp_path / "changed.yaml"
        changed.write_text(fleet.read_text().replace("max_jobs: 4", "max_jobs: 3"))
        code, out, err = await d.cli("apply", str(changed))  # the daemon has the variable
        assert code == 0, err
        assert "3 to update in place" in out
        theirs = tmp_path / "theirs.yaml"
        theirs.write_text(changed.read_text().replace("ONLY_FOR_DAEMON", "ONLY_FOR_OPERATOR"))
        code, out, err = await d.cli(
            "apply", str(theirs), env={"ONLY_FOR_OPERATOR": "x"}, cwd=tmp_path
        )
        assert code == 1, out
        assert "does not pass its checks where the supervisor runs; nothing changed" in err
        assert "ONLY_FOR_OPERATOR" in err
        code, _, err = await d.cli("diff", str(changed))
        assert code == 0, err  # still the fleet applied before


async def test_status_keeps_a_job_process_that_did_not_start_and_when(tmp_path: Path) -> None:
    """Regression: a prewarm that failed showed in MESSAGE only while the pool backed off,
    without its time; once a process started again it was gone."""
    (tmp_path / "flaky_agent.py").write_text(
        "import pathlib\n"
        "def prewarm(proc):\n"
        "    marker = pathlib.Path('failed-once')\n"
        "    if not marker.exists():\n"
        "        marker.touch()\n"
        "        raise RuntimeError('model download failed')\n"
        "async def entrypoint(ctx):\n"
        "    pass\n"
    )
    fleet = write_fleet(
        tmp_path,
        "flaky",
        # one process at a time: the first fails (and marks it), the next starts
        f"defaults: {{working_dir: {tmp_path}, prewarm_in: process, num_idle_processes: 1}}\n"
        "agents:\n  flaky: {entrypoint: flaky_agent:entrypoint, prewarm: flaky_agent:prewarm}\n",
    )
    async with daemon(str(fleet)) as d:
        await d.connected()

        async def warm() -> dict[str, Any] | None:  # a warm process is marked by no event
            item = (await d.agents()).get("flaky")
            return item if item and item["ready"] and item["idle"] == 1 else None

        # registered at once; warm after one failed start
        item = await eventually(warm, timeout=60)
        assert item["last_failure"].startswith("a job process did not start: ")
        assert "model download failed" in item["last_failure"]
        assert item["last_failure_at"].endswith("+00:00")
        code, out, err = await d.cli("status")
        assert code == 0, err
        assert "last failure " in out


async def test_run_starts_the_fleet_while_one_agent_cannot_import(tmp_path: Path) -> None:
    """Regression: the start-up apply ran apply's import checks, so every agent waited for all
    of them (ten heavy agents registered after 12 s instead of at once), and one agent that
    could not import kept the whole fleet from starting. At start each agent reports its own
    failure; the others run."""
    fleet = write_fleet(
        tmp_path,
        "partly-broken",
        f"defaults: {{working_dir: {ROOT}}}\n"
        "agents:\n"
        "  fine: {entrypoint: fleets.agents.survey:entrypoint}\n"
        "  broken: {entrypoint: no_such_agent_module:entrypoint}\n",
    )
    async with daemon(str(fleet)) as d:

        def reported(agents: dict[str, dict[str, Any]]) -> bool:
            failure = (agents.get("broken") or {}).get("last_failure") or ""
            return (
                bool((agents.get("fine") or {}).get("ready")) and "no_such_agent_module" in failure
            )

        items = await d.until(reported, timeout=60)
        assert items["broken"]["ready"] is False
