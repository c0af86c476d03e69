from __future__ import annotations

from pathlib import Path

from lksup.fleet.loading import load_fleet
from lksup.fleet.schema import EnvRef, FileRef


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    return load_fleet(str(path), environ={})


def test_agent_secret_reference_replaces_the_shared_one(tmp_path: Path) -> None:
    """Regression: {env: A} under {file: B} was merged into an invalid {env, file} mapping."""
    path = tmp_path / "f.yaml"
    path.write_text(
        "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: m}\n"
        "livekit: {api_key: k, api_secret: {env: SHARED}}\n"
        "defaults:\n  env: {TOKEN: {env: DEFAULT_TOKEN}, KEEP: x}\n"
        "agents:\n"
        "  a:\n"
        "    entrypoint: m:f\n"
        "    livekit: {api_secret: {file: /run/secrets/a}}\n"
        "    env: {TOKEN: {file: /run/secrets/token}}\n"
        "  b: {entrypoint: 'm:f'}\n"
    )
    fleet = load_fleet(str(path), environ={}).fleet
    assert fleet.agents["a"].livekit.api_secret == FileRef(file="/run/secrets/a")
    assert fleet.agents["a"].livekit.api_key is not None
    assert fleet.agents["a"].env == {"TOKEN": FileRef(file="/run/secrets/token"), "KEEP": "x"}
    assert fleet.agents["b"].livekit.api_secret == EnvRef(env="SHARED")
    assert fleet.agents["b"].env["TOKEN"] == EnvRef(env="DEFAULT_TOKEN")


def test_request_policy_and_permissions_merge_key_by_key(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(
        "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: m}\n"
        "defaults:\n"
        "  request: {room: 'support-*', attributes: {a: '1'}}\n"
        "  permissions: {hidden: true}\n"
        "agents:\n"
        "  a:\n"
        "    entrypoint: m:f\n"
        "    request: {identity: 'cs-{job_id}', attributes: {b: '2'}}\n"
        "    permissions: {can_publish: false}\n"
    )
    agent = load_fleet(str(path), environ={}).fleet.agents["a"]
    assert agent.request.room == "support-*"
    assert agent.request.identity == "cs-{job_id}"
    assert agent.request.attributes == {"b": "2"}  # replaced whole, one level only
    assert agent.permissions.hidden is True
    assert agent.permissions.can_publish is False


def test_null_drain_timeout_means_the_supervisors(tmp_path: Path) -> None:
    """Regression: `drain_timeout: null` stayed None, so render was not idempotent."""
    path = tmp_path / "f.yaml"
    path.write_text(
        "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: m}\n"
        "supervisor: {drain_timeout: 5m}\n"
        "defaults: {drain_timeout: null}\n"
        "agents:\n  a: {entrypoint: 'm:f', drain_timeout: null}\n  b: {entrypoint: 'm:f'}\n"
    )
    fleet = load_fleet(str(path), environ={}).fleet
    assert fleet.agents["a"].drain_timeout == 300
    assert fleet.agents["b"].drain_timeout == 300
