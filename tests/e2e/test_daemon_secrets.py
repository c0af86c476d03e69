"""No secret value ever appears in what a running daemon shows: its log, the CLI against it, its
read-only listener, its state directory (the applied fleet aside) and its error messages.

Distinctive canary values are planted everywhere a secret can come from while ``lksup run``
runs: an agent ``env`` value from ``{env: NAME}`` and from ``{file: PATH}``, an agent's
``livekit.api_secret`` from ``{file: PATH}`` and as a literal (both wrong on purpose, so those
connections fail with HTTP 401 and the failure is reported), the ``{file:}`` secrets rotated to
second canaries and picked up by SIGHUP, an entrypoint that raises with its secret environment
in the exception message, an agent module that raises with it at import time, invalid secret
syntax, and a wrong API secret given to ``lksup dispatch``. The scenario runs once (a
module fixture, the daemon stopped at its end); each test then searches one kind of output, so
a leak fails the test of the output it leaked to, with where it was seen and the line.

A template value given with ``lksup apply --set`` is configuration, not a secret: a plain
``env`` value is shown by ``render``, ``diff`` and ``apply`` like any other field (secrets are
written as ``{env: ...}``, ``{file: ...}`` or a literal in a secret field). The scenario still
applies one, to check that SIGHUP renders with it again and that the state keeps it (0600).
"""

from __future__ import annotations

import json
import secrets
import signal
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import FIXTURES, ROOT, free_port
from tests.e2e.test_daemon import Daemon, daemon, descendants, gone

pytestmark = [pytest.mark.e2e]

ENV_NAME = "LKSUP_E2E_CANARY_TOKEN"
FLEET = """\
{% set token = values.token | default("no-token") %}
apiVersion: lksup/v1
kind: Fleet
metadata: {name: secrets}
supervisor:
  drain_timeout: 30s
defaults:
  load: jobs
  max_jobs: 2
  num_idle_processes: 1
  initialize_process_timeout: 20s
agents:
  holder:
    entrypoint: fleets.agents.survey:entrypoint
    env:
      FROM_ENV: {env: @ENV_NAME@}
      FROM_FILE: {file: @ENV_FILE@}
      TEMPLATED: "{{ token }}"
  raiser:
    entrypoint: canary_raiser:entrypoint
    working_dir: @TMP@
    env:
      API_TOKEN: {env: @ENV_NAME@}
      FILE_TOKEN: {file: @ENV_FILE@}
  rejected:
    entrypoint: fleets.agents.survey:entrypoint
    num_idle_processes: 0
    livekit:
      api_key: devkey
      api_secret: {file: @LK_FILE@}
  literal:
    entrypoint: fleets.agents.survey:entrypoint
    num_idle_processes: 0
    livekit:
      api_key: devkey
      api_secret: @LITERAL@
"""
RAISER = """\
import os


async def entrypoint(ctx):
    raise RuntimeError(
        f"cannot reach the CRM with token {os.environ['API_TOKEN']} "
        f"and key {os.environ['FILE_TOKEN']}"
    )
"""
LEAKY_AGENT = """\
  leaky:
    entrypoint: fixture_agents.leaky:entrypoint
    working_dir: @FIXTURES@
    env:
      API_TOKEN: {env: @ENV_NAME@}
"""
REFUSED = "HTTP 401: the server refused the API key or secret"


def canary(kind: str) -> str:
    return f"canary-{kind}-{secrets.token_hex(8)}"


KINDS = (
    "env",  # agent env {env: NAME}
    "file",  # agent env {file: PATH}
    "file-rotated",  # the same file after rotation (SIGHUP)
    "lk-file",  # livekit.api_secret {file: PATH} (refused: HTTP 401)
    "lk-file-rotated",  # the same file after rotation (SIGHUP)
    "literal",  # livekit.api_secret as a literal (refused: HTTP 401)
    "template",  # `lksup apply --set token=...`, used in an agent's env
    "invalid",  # inside invalid secret syntax given to `lksup apply`
    "dispatch",  # a wrong LIVEKIT_API_SECRET given to `lksup dispatch`
)


#: Planted like the others, but configuration rather than a secret (see the module docstring).
NOT_SECRET = frozenset({"template"})


@dataclass
class Canaries:
    """Every planted value, and every line one was seen in (by kind of output)."""

    values: dict[str, str] = field(default_factory=lambda: {k: canary(k) for k in KINDS})
    leaks: dict[str, list[str]] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)

    def label(self, text: str) -> str:
        """``text`` with every canary replaced by its kind (for naming a command line)."""
        for kind, value in self.values.items():
            text = text.replace(value, f"<{kind} canary>")
        return text

    def scan(self, output: str, where: str, text: str) -> None:
        """Record every line of ``text`` (seen in ``where``) that holds a canary."""
        self.checked[output] = self.checked.get(output, 0) + 1
        found = self.leaks.setdefault(output, [])
        for number, line in enumerate(text.splitlines(), start=1):
            for kind, value in self.values.items():
                if kind not in NOT_SECRET and value in line:
                    found.append(f"{self.label(where)}, line {number}: the {kind} canary: {line!r}")

    def assert_clean(self, *outputs: str) -> None:
        for output in outputs:
            assert self.checked.get(output), f"no {output} output was searched"
        leaked = [line for output in outputs for line in self.leaks.get(output, [])]
        assert not leaked, "secret values leaked:\n" + "\n".join(leaked)


def kind_of(args: tuple[str, ...]) -> str:
    """The kind of output a command's is: status, apply, diff, or another command's."""
    return args[0] if args[0] in ("status", "apply", "diff") else "commands"


async def cli(
    c: Canaries, d: Daemon, *args: str, output: str | None = None
) -> tuple[int, str, str]:
    """``lksup ARGS`` against the daemon, its output scanned."""
    code, out, err = await d.cli(*args)
    kind = output or kind_of(args)
    c.scan(kind, f"`lksup {' '.join(args)}` stdout (exit {code})", out)
    c.scan(kind, f"`lksup {' '.join(args)}` stderr (exit {code})", err)
    return code, out, err


async def status(c: Canaries, d: Daemon) -> dict[str, dict[str, Any]]:
    """Every form of ``lksup status`` (all scanned); the agents from ``-o json``."""
    for args in ((), ("-o", "wide"), ("--jobs",), ("-o", "wide", "--jobs")):
        code, _, err = await cli(c, d, "status", *args)
        assert code == 0, err
    code, out, err = await cli(c, d, "status", "-o", "json")
    assert code == 0, err
    return {item["name"]: item for item in json.loads(out)["items"]}


async def until_status(
    c: Canaries,
    d: Daemon,
    done: Callable[[dict[str, dict[str, Any]]], bool],
    what: str,
    timeout: float = 60,
) -> dict[str, dict[str, Any]]:
    """Status (every form scanned each time), read again at each event until ``done(agents)``
    holds."""
    agents: dict[str, dict[str, Any]] = {}

    async def read() -> dict[str, dict[str, Any]]:
        nonlocal agents
        agents = await status(c, d)
        return agents

    try:
        return await d.until_read(read, done, timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}: {agents}") from None


def running(agent: dict[str, Any], restarts: int) -> bool:
    return bool(agent["ready"]) and agent["restarts"] == restarts and agent["sync"] == "synced"


def refused(agent: dict[str, Any]) -> bool:
    return REFUSED in agent["message"] and not agent["ready"]


async def scrape(c: Canaries, base: str, client: httpx.AsyncClient) -> None:
    for path in ("/status", "/metrics", "/readyz", "/readyz/rejected", "/livez"):
        answer = await client.get(base + path)
        assert answer.status_code in (200, 503), path
        c.scan("listener", f"GET {path} (HTTP {answer.status_code})", answer.text)
    status = (await client.get(base + "/status")).json()
    assert {item["name"] for item in status["items"]} == {"holder", "raiser", "rejected", "literal"}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Canaries:
    """Run the daemon through every secret source (see the module docstring), then stop it."""
    c = Canaries()
    tmp_path = tmp_path_factory.mktemp("secrets")
    with pytest.MonkeyPatch.context() as monkeypatch:
        # the daemon gets the {env:} secret (it also runs apply's import checks)
        monkeypatch.setenv(ENV_NAME, c.values["env"])
        anyio.run(run_scenario, c, tmp_path, backend="asyncio")
    return c


async def run_scenario(c: Canaries, tmp_path: Path) -> None:
    v = c.values
    env_file, lk_file = tmp_path / "env-secret", tmp_path / "lk-secret"
    env_file.write_text(v["file"] + "\n")
    lk_file.write_text(v["lk-file"] + "\n")
    (tmp_path / "canary_raiser.py").write_text(RAISER)
    text = (
        FLEET.replace("@ENV_NAME@", ENV_NAME)
        .replace("@ENV_FILE@", str(env_file))
        .replace("@LK_FILE@", str(lk_file))
        .replace("@LITERAL@", v["literal"])
        .replace("@TMP@", str(tmp_path))
    )
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(text)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    async with (
        daemon(str(fleet), "--http", f"127.0.0.1:{port}") as d,
        httpx.AsyncClient() as client,
    ):
        await d.connected()
        # started: holder and raiser run; rejected and literal are refused (HTTP 401), and
        # status says so without the secret
        agents = await until_status(
            c,
            d,
            lambda a: (
                len(a) == 4
                and running(a["holder"], 0)
                and running(a["raiser"], 0)
                and refused(a["rejected"])
                and refused(a["literal"])
            ),
            "holder and raiser ready, rejected and literal refused",
        )
        assert agents["rejected"]["state"] != "running"
        await d.wait_log(REFUSED)
        await scrape(c, base, client)

        # a template value given to apply, in an agent's environment: the plan, three ways
        code, out, err = await cli(
            c, d, "apply", str(fleet), "--set", f"token={v['template']}", "--dry-run"
        )
        assert code == 0, out + err
        assert "dry run: nothing changed" in out
        assert "1 to replace" in out
        code, out, err = await cli(
            c, d, "apply", str(fleet), "--set", f"token={v['template']}", "--dry-run", "-o", "json"
        )
        assert code == 0, out + err
        assert json.loads(out)["dryRun"] is True
        code, out, err = await cli(c, d, "apply", str(fleet), "--set", f"token={v['template']}")
        assert code == 0, out + err
        assert "1 to replace" in out
        await until_status(
            c, d, lambda a: running(a["holder"], 1), "holder replaced with the template value"
        )
        code, out, err = await cli(
            c, d, "apply", str(fleet), "--set", f"token={v['template']}", "-o", "json"
        )
        assert code == 0, out + err
        plan = json.loads(out)
        assert plan["summary"]["unchanged"] == 4
        assert plan["secretsChanged"] == []

        # diff against the daemon: the same values (nothing to do), other values (changes)
        code, out, err = await cli(c, d, "diff", str(fleet), "--set", f"token={v['template']}")
        assert code == 0, out + err
        code, out, err = await cli(c, d, "diff", str(fleet))
        assert code == 1, out + err
        assert "env.TEMPLATED" in out
        code, out, err = await cli(c, d, "diff", str(fleet), "-o", "json")
        assert code == 1, out + err
        rotated = tmp_path / "rotated-literal.yaml"
        rotated.write_text(text.replace(v["literal"], v["literal"] + "-2"))
        code, out, err = await cli(
            c, d, "diff", str(rotated), "--set", f"token={v['template']}", "-o", "json"
        )
        assert code == 1, out + err
        assert "literal" in out

        # a job on the agent whose entrypoint raises with its secrets in the message
        code, out, err = await cli(c, d, "dispatch", "raiser", "--room", "canary-room")
        assert code == 0, out + err
        await d.wait_log("RuntimeError")
        failure = await d.wait_log("cannot reach the CRM with token")
        await until_status(c, d, lambda a: a["raiser"]["jobs"] == 0, "the raiser's job ended")
        await scrape(c, base, client)

        # a wrong API secret given to the CLI itself (its error names no value)
        result = await anyio.run_process(
            [sys.executable, "-m", "lksup", "dispatch", "holder", "--room", "r"],
            env={**d.env(), "LIVEKIT_API_SECRET": v["dispatch"]},
            cwd=ROOT,
            check=False,
        )
        c.scan("errors", "`lksup dispatch` with a wrong secret: stdout", result.stdout.decode())
        c.scan("errors", "`lksup dispatch` with a wrong secret: stderr", result.stderr.decode())
        assert result.returncode != 0
        assert "401" in result.stderr.decode()

        # error messages: invalid secret syntax, and a module that raises at import time with
        # its secret environment in the message (apply's import check refuses it)
        invalid = tmp_path / "invalid.yaml"
        invalid.write_text(
            text.replace(f"api_secret: {v['literal']}", f"api_secret: {{nope: {v['invalid']}}}")
        )
        code, out, err = await cli(c, d, "apply", str(invalid), output="errors")
        assert code == 1, out + err
        assert f"{invalid}:" in err
        leaky = tmp_path / "leaky.yaml"
        leaky_agent = LEAKY_AGENT.replace("@FIXTURES@", str(FIXTURES)).replace(
            "@ENV_NAME@", ENV_NAME
        )
        leaky.write_text(text + leaky_agent)
        code, out, err = await cli(
            c, d, "apply", str(leaky), "--set", f"token={v['template']}", output="errors"
        )
        assert code == 1, out + err
        assert "cannot start with token ****" in err  # the import error, its secret masked

        # SIGHUP with an agent whose import fails: the check's output is logged, nothing changes
        fleet.write_text(text + leaky_agent)
        mark = await d.last_seq("logs")
        d.process.send_signal(signal.SIGHUP)
        await d.wait_log("does not pass its checks", after=mark)
        await d.wait_log("cannot start with token ****", after=mark)

        # rotate both {file:} secrets to second canaries; SIGHUP re-reads them and replaces
        # the agents that use them (the template value it was applied with is kept)
        fleet.write_text(text)
        env_file.write_text(v["file-rotated"] + "\n")
        lk_file.write_text(v["lk-file-rotated"] + "\n")
        d.process.send_signal(signal.SIGHUP)
        line = (await d.wait_log("SIGHUP: re-applied"))["msg"]
        assert "replaced for a changed secret" in line
        for agent in ("holder", "raiser", "rejected"):
            assert agent in line.split("replaced for a changed secret")[1]
        await until_status(
            c,
            d,
            lambda a: (
                running(a["holder"], 2)
                and running(a["raiser"], 1)
                and a["rejected"]["restarts"] == 1
                and refused(a["rejected"])
                and refused(a["literal"])
            ),
            "the rotated agents replaced",
        )
        # the rotated secret is in use: the raiser's next failure carries it (if unredacted)
        code, out, err = await cli(c, d, "dispatch", "raiser", "--room", "canary-room-2")
        assert code == 0, out + err
        await d.wait_log("cannot reach the CRM with token", after=failure["seq"])
        await until_status(c, d, lambda a: a["raiser"]["jobs"] == 0, "the second job ended")
        code, out, err = await cli(c, d, "diff", str(fleet), "--set", f"token={v['template']}")
        assert code == 0, out + err
        await scrape(c, base, client)

        children = descendants(d.process.pid)
        d.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            assert await d.process.wait() == 0
        await gone(children, 10)

        log_text = d.log.read_text()
        c.scan("log", f"daemon log {d.log}", log_text)
        assert "Entrypoint of job" in log_text  # the failures were reported, not hidden
        assert REFUSED in log_text

        # the state directory: the applied fleet may hold secrets (0600); nothing else may
        state_dir = d.state_dir
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
        applied = state_dir / "applied.json"
        assert stat.S_IMODE(applied.stat().st_mode) == 0o600
        assert json.loads(applied.read_text())["values"] == {"token": v["template"]}
        found = sorted(state_dir.rglob("*"))
        c.scan("state", f"listing of {state_dir}", "\n".join(str(p) for p in found))
        for path in found:
            if path.is_file() and path != applied:
                c.scan("state", f"state file {path}", path.read_bytes().decode(errors="replace"))
        # nothing else in the scratch directory either (the control socket aside)
        for path in sorted(d.socket.parent.rglob("*")):
            if path.is_file() and path != d.log and state_dir not in path.parents:
                c.scan("state", f"file {path}", path.read_bytes().decode(errors="replace"))


def test_the_daemon_log_holds_no_secret(scenario: Canaries) -> None:
    """stdout and stderr of `lksup run`: its own lines, the dev server's, the job processes'
    (an entrypoint's exception), the HTTP 401s, the SIGHUP checks and the rotations."""
    scenario.assert_clean("log")


def test_status_holds_no_secret(scenario: Canaries) -> None:
    """`lksup status` as a table, -o wide, -o json and --jobs, at every step."""
    scenario.assert_clean("status")


def test_apply_output_holds_no_secret(scenario: Canaries) -> None:
    """`lksup apply` against the daemon: text, -o json, --dry-run, with --set."""
    scenario.assert_clean("apply")


def test_diff_output_holds_no_secret(scenario: Canaries) -> None:
    """`lksup diff` against the daemon, text and -o json."""
    scenario.assert_clean("diff")


def test_the_listener_serves_no_secret(scenario: Canaries) -> None:
    """/status, /metrics, /readyz and /livez of the read-only listener."""
    scenario.assert_clean("listener")


def test_the_state_directory_holds_no_secret_but_in_the_private_applied_fleet(
    scenario: Canaries,
) -> None:
    """Only applied.json (0600, in a 0700 directory) may hold secrets; checked in the scenario."""
    scenario.assert_clean("state")


def test_error_messages_hold_no_secret(scenario: Canaries) -> None:
    """`lksup apply` refusing invalid secret syntax and a module that raises at import time
    with its secrets in the message, `lksup dispatch` refused for a wrong API secret, and the
    other commands' output (the daemon's own error messages are in its log)."""
    scenario.assert_clean("errors", "commands")
