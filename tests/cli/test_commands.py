"""The offline commands as a user runs them: exit codes, outputs, formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lksup.fleet.schema import json_schema
from tests.cli.helpers import run_cli
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "fleets").glob("*.yaml"))
BASE = """\
apiVersion: lksup/v1
kind: Fleet
metadata: {name: demo}
defaults:
  max_jobs: 4
agents:
  support:
    entrypoint: fleets.agents.support:entrypoint
    load_threshold: 0.6
  sales:
    entrypoint: fleets.agents.sales:entrypoint
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_examples_are_valid() -> None:
    assert {p.name for p in EXAMPLES} >= {"prod.yaml", "dev.yaml"}
    result = run_cli("validate", *map(str, EXAMPLES))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    for path in EXAMPLES:
        assert f"{path}: valid (3 agents: customer-service, sales, survey)" in result.stdout


def test_examples_import_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    env = {"LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": "s" * 32}
    result = run_cli("validate", "--check-imports", "fleets/prod.yaml", "fleets/dev.yaml", env=env)
    assert result.exit_code == 0, result.stderr


def test_import_check_never_imports_user_code_in_the_cli_process(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    agents = tmp_path / "marker_agent.py"
    agents.write_text(
        "import os, pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text(str(os.getpid()))\n"
        "async def entrypoint(ctx): pass\n"
    )
    fleet = _write(
        tmp_path,
        "f.yaml",
        "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: m}\nagents:\n"
        "  a: {entrypoint: 'marker_agent:entrypoint', working_dir: .}\n",
    )
    result = run_cli("validate", "--check-imports", str(fleet))
    assert result.exit_code == 0, result.stderr
    assert int(marker.read_text()) != __import__("os").getpid()
    assert "marker_agent" not in sys.modules


def test_import_check_reports_wrong_function_kinds(tmp_path: Path) -> None:
    (tmp_path / "kinds.py").write_text(
        "def entrypoint(ctx): pass\nasync def prewarm(proc): pass\nrequest = 3\n"
    )
    fleet = _write(
        tmp_path,
        "f.yaml",
        "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: m}\nagents:\n"
        "  a:\n"
        "    working_dir: .\n"
        "    entrypoint: kinds:entrypoint\n"
        "    prewarm: kinds:prewarm\n"
        "    request_fnc: kinds:request\n"
        "  b:\n"
        "    working_dir: .\n"
        "    entrypoint: kinds:missing\n",
    )
    result = run_cli("validate", "--check-imports", str(fleet))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{fleet}:7:17: agent 'a': entrypoint: kinds:entrypoint must be an async function (async def)",
        f"{fleet}:8:14: agent 'a': prewarm: kinds:prewarm must be a plain function (def), not async",
        f"{fleet}:9:18: agent 'a': request_fnc: kinds:request is not callable (it is int)",
        f"{fleet}:12:17: agent 'b': entrypoint: module 'kinds' has no attribute 'missing'",
    ]


def test_warnings_do_not_fail_validation_unless_strict(tmp_path: Path) -> None:
    fleet = _write(
        tmp_path,
        "w.yaml",
        BASE.replace("defaults:\n", "livekit: {api_key: k, api_secret: inline}\ndefaults:\n"),
    )
    lax = run_cli("validate", str(fleet))
    assert lax.exit_code == 0
    assert f"{fleet}:4:35: warning: livekit.api_secret is a literal value" in lax.stderr
    strict = run_cli("validate", "--strict", str(fleet))
    assert strict.exit_code == 1
    assert f"{fleet}:4:35: livekit.api_secret is a literal value" in strict.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run_cli("validate").exit_code == 2
    assert run_cli("validate", "--nope", "x.yaml").exit_code == 2
    assert run_cli("render", "x.yaml", "-o", "toml").exit_code == 2
    fleet = _write(tmp_path, "f.yaml", BASE)
    bad_set = run_cli("validate", "--set", "novalue", str(fleet))
    assert bad_set.exit_code == 2
    assert "--set expects key=value" in bad_set.stderr


def test_missing_file_is_reported_as_invalid(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}: no such file"


def test_values_files_and_set_feed_the_template(tmp_path: Path) -> None:
    fleet = _write(
        tmp_path,
        "t.yaml",
        BASE.replace("name: demo", "name: demo-{{ values.region }}").replace(
            "max_jobs: 4", "max_jobs: {{ values.jobs }}"
        ),
    )
    values = _write(tmp_path, "v.yaml", "region: eu\njobs: 2\n")
    result = run_cli("render", str(fleet), "--values", str(values), "--set", "jobs=7", "-o", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["metadata"]["name"] == "demo-eu"
    assert document["agents"]["sales"]["max_jobs"] == 7


def test_render_is_normalized_yaml(tmp_path: Path) -> None:
    fleet = _write(tmp_path, "f.yaml", BASE + "supervisor: {drain_timeout: 30m}\n")
    result = run_cli("render", str(fleet))
    assert result.exit_code == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert "defaults" not in document
    support = document["agents"]["support"]
    assert next(iter(support)) == "entrypoint"
    assert support["max_jobs"] == 4  # merged from defaults
    assert support["drain_timeout"] == 1800  # the supervisor's, in seconds
    assert support["load_threshold"] == 0.6
    assert document["agents"]["sales"]["load_threshold"] == 0.7  # SDK production default
    again = _write(tmp_path, "again.yaml", result.stdout)
    assert run_cli("render", str(again)).stdout == result.stdout


def test_schema_command_matches_committed_schema() -> None:
    result = run_cli("schema")
    assert result.exit_code == 0
    committed = json.loads((ROOT / "schemas" / "fleet.schema.json").read_text())
    assert json.loads(result.stdout) == committed == json_schema(), (
        "schemas/fleet.schema.json is stale: run `lksup schema > schemas/fleet.schema.json`"
    )


def test_schema_documents_fields_and_defaults() -> None:
    agent = json_schema()["$defs"]["Agent"]
    assert agent["required"] == ["entrypoint"]
    threshold = agent["properties"]["load_threshold"]
    assert threshold["default"] == 0.7
    assert "full" in threshold["description"]
    assert agent["additionalProperties"] is False


def test_diff_exit_codes_and_plan(tmp_path: Path) -> None:
    old = _write(tmp_path, "old.yaml", BASE)
    same = run_cli("diff", str(old), "--against", str(old))
    assert same.exit_code == 0
    assert same.stdout.startswith("Plan: 0 to create, 0 to update in place, 0 to replace")

    new = _write(
        tmp_path,
        "new.yaml",
        BASE.replace("load_threshold: 0.6", "load_threshold: 0.5").replace(
            "fleets.agents.sales:entrypoint", "fleets.agents.survey:entrypoint"
        )
        + "  survey:\n    entrypoint: fleets.agents.survey:entrypoint\n",
    )
    changed = run_cli("diff", str(new), "--against", str(old))
    assert changed.exit_code == 1
    assert changed.stdout.splitlines() == [
        "Plan: 1 to create, 1 to update in place, 1 to replace, 0 to drain and remove, 0 unchanged.",
        "",
        "  ~ replace           sales",
        "      entrypoint: fleets.agents.sales:entrypoint -> fleets.agents.survey:entrypoint  (needs replace)",
        "  ~ update-in-place   support",
        "      load_threshold: 0.6 -> 0.5",
        "  + create            survey",
    ]
    removed = run_cli("diff", str(old), "--against", str(new), "-o", "json")
    plan = json.loads(removed.stdout)
    assert removed.exit_code == 1
    assert plan["kind"] == "Plan"
    assert {a["name"]: a["action"] for a in plan["agents"]} == {
        "sales": "replace",
        "support": "update-in-place",
        "survey": "drain-and-remove",
    }


def test_diff_ignores_cosmetic_changes(tmp_path: Path) -> None:
    old = _write(tmp_path, "old.yaml", BASE)
    cosmetic = _write(
        tmp_path,
        "cosmetic.yaml",
        "# reordered, defaults spelled out, other units\n"
        "kind: Fleet\napiVersion: lksup/v1\nmetadata: {name: demo}\n"
        "supervisor: {drain_timeout: 1h}\n"
        "agents:\n"
        "  sales: {entrypoint: 'fleets.agents.sales:entrypoint', max_jobs: 4, load: ' cpu '}\n"
        "  support:\n"
        "    load_threshold: 0.60\n"
        "    worker_type: room\n"
        "    max_jobs: 4\n"
        "    entrypoint: fleets.agents.support:entrypoint\n",
    )
    result = run_cli("diff", str(cosmetic), "--against", str(old))
    assert result.exit_code == 0, result.stdout


def test_diff_on_an_invalid_file_exits_2(tmp_path: Path) -> None:
    old = _write(tmp_path, "old.yaml", BASE)
    bad = _write(tmp_path, "bad.yaml", BASE.replace("0.6", "six"))
    result = run_cli("diff", str(bad), "--against", str(old))
    assert result.exit_code == 2
    assert f"{bad}:9:21:" in result.stderr


def test_colour_only_on_a_tty_without_no_color(tmp_path: Path) -> None:
    old = _write(tmp_path, "old.yaml", BASE)
    new = _write(tmp_path, "new.yaml", BASE.replace("0.6", "0.5"))
    piped = run_cli("diff", str(new), "--against", str(old))
    assert "\x1b[" not in piped.stdout
    script = (
        "import pty, os, sys\n"
        "pid, fd = pty.fork()\n"
        "if pid == 0:\n"
        f"    os.execv(sys.executable, [sys.executable, '-m', 'lksup', 'diff', {str(new)!r}, "
        f"'--against', {str(old)!r}])\n"
        "out = b''\n"
        "while True:\n"
        "    try:\n"
        "        chunk = os.read(fd, 4096)\n"
        "    except OSError:\n"
        "        break\n"
        "    if not chunk:\n"
        "        break\n"
        "    out += chunk\n"
        "os.waitpid(pid, 0)\n"
        "sys.stdout.write(repr(out))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "NO_COLOR"}
    tty = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert "\\x1b[33m" in tty.stdout
    env["NO_COLOR"] = "1"
    plain = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert "\\x1b[" not in plain.stdout


def test_every_command_has_help_with_an_example() -> None:
    for command in ("validate", "render", "schema", "diff"):
        result = run_cli(command, "--help")
        assert result.exit_code == 0
        assert "lksup " + command in result.stdout
        assert "Example" in result.stdout


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lksup", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("lksup, version ")


@pytest.mark.parametrize(
    ("option", "value"),
    [("--http", "nonsense"), ("--http", "127.0.0.1:70000"), ("--dev-server", ":7880")],
)
def test_run_checks_its_addresses_before_starting_anything(
    tmp_path: Path, option: str, value: str
) -> None:
    """Regression: `run --http nonsense` failed with a traceback after the agents started."""
    result = run_cli(
        "run", option, value, "--socket", str(tmp_path / "s.sock"), "--state-dir", str(tmp_path)
    )
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.stderr
    assert "HOST:PORT" in result.stderr
    assert not (tmp_path / "s.sock").exists()


STOPPING = BASE.replace("defaults:\n", "supervisor: {drain_timeout: 5m}\ndefaults:\n").replace(
    "    load_threshold: 0.6\n", "    load_threshold: 0.6\n    shutdown_process_timeout: 30s\n"
)


def test_stop_budget_adds_the_drain_and_the_slowest_stop_sequence(tmp_path: Path) -> None:
    fleet = _write(tmp_path, "fleet.yaml", STOPPING)
    text = run_cli("stop-budget", str(fleet))
    assert text.exit_code == 0, text.stderr
    assert "347 s = drain_timeout 300 s + shutdown_process_timeout 30 s (agent 'support')" in (
        text.stdout
    )
    seconds = run_cli("stop-budget", str(fleet), "-o", "seconds")
    assert seconds.stdout == "347\n"
    document = json.loads(run_cli("stop-budget", str(fleet), "-o", "json").stdout)
    assert document["kind"] == "StopBudget"
    assert document["seconds"] == 347
    assert document["slowestAgent"] == "support"


def test_stop_budget_of_a_drain_without_deadline_fails(tmp_path: Path) -> None:
    forever = _write(
        tmp_path, "fleet.yaml", STOPPING.replace("drain_timeout: 5m", "drain_timeout: 0")
    )
    result = run_cli("stop-budget", str(forever), "-o", "seconds")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "unbounded: supervisor.drain_timeout is 0" in result.stderr


def test_validate_fails_when_the_stop_timeout_is_shorter_than_the_budget(tmp_path: Path) -> None:
    fleet = _write(tmp_path, "fleet.yaml", STOPPING)
    short = run_cli("validate", str(fleet), "--stop-timeout", "5m")
    assert short.exit_code == 1
    line = STOPPING.splitlines().index("supervisor: {drain_timeout: 5m}") + 1
    assert f"{fleet}:{line}:" in short.stderr
    assert "longer than the stop timeout of 300 s" in short.stderr
    assert "at least 347 s" in short.stderr
    assert run_cli("validate", str(fleet), "--stop-timeout", "347").exit_code == 0
    report = json.loads(run_cli("validate", str(fleet), "-o", "json").stdout)
    assert report["files"][0]["stopBudgetSeconds"] == 347
    forever = _write(
        tmp_path, "forever.yaml", STOPPING.replace("drain_timeout: 5m", "drain_timeout: 0")
    )
    unbounded = run_cli("validate", str(forever), "--stop-timeout", "10m")
    assert unbounded.exit_code == 1
    assert "set supervisor.drain_timeout to at most 553 s" in unbounded.stderr
    assert run_cli("validate", str(fleet), "--stop-timeout", "soon").exit_code == 2


LKSUP = str(Path(sys.executable).parent / "lksup")  # the installed command the scripts call


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_call_back_the_cli(shell: str) -> None:
    script = run_cli("completion", shell)
    assert script.exit_code == 0
    assert f"_LKSUP_COMPLETE={shell}_" in script.stdout.replace("_source", "_complete")


def test_bash_completion_completes_commands_and_options() -> None:
    def complete(words: str) -> list[str]:
        result = subprocess.run(
            [LKSUP],
            env={
                **os.environ,
                "_LKSUP_COMPLETE": "bash_complete",
                "COMP_WORDS": words,
                "COMP_CWORD": str(len(words.split()) - 1),
            },
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.splitlines()

    assert complete("lksup dr") == ["plain,drain"]
    assert "plain,--stop-timeout" in complete("lksup validate --st")
