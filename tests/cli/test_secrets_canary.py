"""No secret value ever appears in any output of any command.

Canary secrets are planted everywhere a secret can come from (environment references, file
references, literal values, template expansion, an agent's environment, the message of an
exception raised by user code at import time, invalid input) and every command's stdout and
stderr are searched for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from tests.conftest import FIXTURES

CANARIES = {
    "env": "canary-env-7f3a9c1e2b",
    "file": "canary-file-41d0e8aa77",
    "literal": "canary-literal-c0ffee1234",
    "token": "canary-token-9e8d7c6b5a",
    "template": "canary-template-5566778899",
    "invalid": "canary-invalid-0a0b0c0d0e",
}

FLEET = """\
apiVersion: lksup/v1
kind: Fleet
metadata: {{name: canary}}
livekit:
  url: wss://lk.example.com/base
  api_key: devkey
  api_secret: {{env: LK_SECRET}}
agents:
  from-file:
    entrypoint: fixture_agents.good:entrypoint
    working_dir: {fixtures}
    livekit: {{api_secret: {{file: {secret_file}}}}}
  literal:
    entrypoint: fixture_agents.good:entrypoint
    working_dir: {fixtures}
    livekit: {{api_secret: {literal}}}
  templated:
    entrypoint: fixture_agents.good:entrypoint
    working_dir: {fixtures}
    livekit: {{api_secret: "{{{{ env.TEMPLATED }}}}"}}
  leaky:
    entrypoint: fixture_agents.leaky:entrypoint
    working_dir: {fixtures}
    env: {{API_TOKEN: {{env: TOKEN}}}}
"""


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    secret_file = tmp_path / "secret"
    secret_file.write_text(CANARIES["file"] + "\n")
    text = FLEET.format(fixtures=FIXTURES, secret_file=secret_file, literal=CANARIES["literal"])
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(text)
    changed = tmp_path / "changed.yaml"
    changed.write_text(text.replace(CANARIES["literal"], CANARIES["literal"] + "-rotated"))
    env = {
        "LK_SECRET": CANARIES["env"],
        "TOKEN": CANARIES["token"],
        "TEMPLATED": CANARIES["template"],
    }
    return fleet, changed, env


def _assert_clean(output: str) -> None:
    for kind, value in CANARIES.items():
        assert value not in output, f"the {kind} secret leaked"


def test_no_command_prints_a_secret(planted: tuple[Path, Path, dict[str, str]]) -> None:
    fleet, changed, env = planted
    invocations = [
        ["validate", str(fleet)],
        ["validate", "--strict", str(fleet)],
        ["validate", "--check-imports", str(fleet)],
        ["validate", "--check-imports", "-o", "json", str(fleet)],
        ["render", str(fleet)],
        ["render", "-o", "json", str(fleet)],
        ["diff", str(changed), "--against", str(fleet)],
        ["diff", str(changed), "--against", str(fleet), "-o", "json"],
        ["schema"],
    ]
    outcomes = []
    for args in invocations:
        result = run_cli(*args, env=env)
        _assert_clean(result.stdout + result.stderr)
        outcomes.append(result)
    # the commands did run and did see the secrets
    imports = outcomes[2]
    assert imports.exit_code == 1
    assert "cannot start with token ****" in imports.stderr
    diff = outcomes[6]
    assert diff.exit_code == 1
    assert "livekit.api_secret: {redacted: sha256:" in diff.stdout
    render = outcomes[4]
    assert "{env: LK_SECRET}" in render.stdout or "env: LK_SECRET" in render.stdout
    assert "redacted: sha256:" in render.stdout


@pytest.mark.parametrize(
    "value",
    [
        "[{canary}]",
        "{{env: LK_SECRET, note: {canary}}}",
        "{{nope: {canary}}}",
        "{canary}: [",
    ],
)
def test_invalid_secret_values_are_not_echoed(tmp_path: Path, value: str) -> None:
    fleet = tmp_path / "bad.yaml"
    fleet.write_text(
        "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: bad}\n"
        "livekit:\n  api_key: k\n  api_secret: " + value.format(canary=CANARIES["invalid"]) + "\n"
        "agents:\n  a: {entrypoint: 'm:f'}\n"
    )
    for args in (
        ["validate", str(fleet)],
        ["render", str(fleet)],
        ["validate", "-o", "json", str(fleet)],
    ):
        result = run_cli(*args)
        assert result.exit_code == 1
        assert f"{fleet}:6:" in result.stderr
        _assert_clean(result.stdout + result.stderr)
