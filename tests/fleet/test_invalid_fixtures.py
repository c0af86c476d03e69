"""Each failure class has a fixture under tests/fixtures/invalid whose first comment lines say
which arguments to pass (``# args:``) and the exact diagnostic expected (``# expect:``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from tests.conftest import FIXTURES

CASES = sorted((FIXTURES / "invalid").glob("*.yaml"))


def _header(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}: "):
            return line.removeprefix(f"# {key}: ")
    return ""


def test_every_failure_class_has_a_fixture() -> None:
    names = {p.stem for p in CASES}
    required = {
        "yaml_syntax",
        "duplicate_agent",
        "unknown_field",
        "wrong_type",
        "threshold_out_of_range",
        "bad_duration",
        "bad_entrypoint",
        "undefined_template_variable",
        "missing_secret_env",
        "import_error",
    }
    assert required <= names


@pytest.mark.parametrize("fixture", CASES, ids=[p.stem for p in CASES])
def test_invalid_fixture_reports_exact_position_and_message(fixture: Path) -> None:
    expected = _header(fixture, "expect")
    assert expected, f"{fixture.name} has no '# expect:' line"
    args = _header(fixture, "args").split()
    result = run_cli("validate", *args, str(fixture), env={"LKSUP_TEST_UNSET_SECRET": None})
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"{fixture}:{expected}" in result.stderr.splitlines()


def test_json_output_carries_the_same_diagnostic() -> None:
    fixture = FIXTURES / "invalid" / "unknown_field.yaml"
    result = run_cli("validate", "-o", "json", str(fixture))
    assert result.exit_code == 1
    import json

    report = json.loads(result.stdout)
    assert report["kind"] == "ValidationReport"
    assert report["valid"] is False
    (diagnostic,) = report["files"][0]["diagnostics"]
    assert diagnostic == {
        "file": str(fixture),
        "line": 8,
        "col": 5,
        "severity": "error",
        "message": "unknown field 'load_treshold' in agents.sales (did you mean 'load_threshold'?)",
    }


def test_all_errors_of_a_file_are_reported_in_one_run(tmp_path: Path) -> None:
    fleet = tmp_path / "many.yaml"
    fleet.write_text(
        "apiVersion: lksup/v1\n"
        "kind: Fleet\n"
        "metadata: {name: many}\n"
        "agents:\n"
        "  a:\n"
        "    entrypoint: nope\n"
        "    load_threshold: 7\n"
        "  b:\n"
        "    entrypoint: m:f\n"
        "    worker_type: participant\n"
    )
    result = run_cli("validate", str(fleet))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        f"{fleet}:6:17",
        f"{fleet}:7:21",
        f"{fleet}:10:18",
    ]
    assert lines[2].endswith("agents.b.worker_type: Input should be 'room' or 'publisher'")
