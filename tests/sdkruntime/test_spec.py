"""How a livekit-agents agent's job processes are started (``build_spec``): the connection is
exported for ``ctx.api`` and masked, and local model preloading is off unless the agent says."""

from __future__ import annotations

from pathlib import Path

import pytest

from lksup.daemon.resolve import Environment, build_spec
from lksup.fleet.schema import Agent

URL = "wss://lk.example.com"
KEY = "APIk3yForTests"
SECRET = "s3cret-value-for-the-spec-test"


def agent(**options: object) -> Agent:
    return Agent.model_validate({"entrypoint": "agent:entrypoint", **options})


@pytest.fixture
def env(tmp_path: Path) -> Environment:
    return Environment(
        environ={"PATH": "/usr/bin", "HOME": "/home/agent"},
        base_dir=tmp_path,
        default_url=URL,
        default_api_key=KEY,
        default_api_secret=SECRET,
    )


def test_sdk_job_processes_get_the_connection_masked_and_no_model_preload(
    env: Environment,
) -> None:
    spec = build_spec("greeter", agent(runtime="livekit-agents"), env)
    assert spec.runtime == "livekit-agents"
    assert {k: v for k, v in spec.env.items() if k not in ("PATH", "HOME")} == {
        "LIVEKIT_URL": URL,
        "LIVEKIT_API_KEY": KEY,
        "LIVEKIT_API_SECRET": SECRET,
        "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "0",
    }
    assert {KEY, SECRET} <= spec.secrets


def test_the_agent_env_decides_model_preloading(env: Environment) -> None:
    options = {"runtime": "livekit-agents", "env": {"LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "1"}}
    spec = build_spec("greeter", agent(**options), env)
    assert spec.env["LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE"] == "1"


def test_the_agent_connection_is_the_one_exported(env: Environment, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("agent-own-secret-0123456789")
    connection = {
        "url": "ws://other:7880",
        "api_key": "OtherKey",
        "api_secret": {"file": "secret.txt"},
    }
    spec = build_spec("greeter", agent(runtime="livekit-agents", livekit=connection), env)
    assert (spec.env["LIVEKIT_URL"], spec.env["LIVEKIT_API_KEY"]) == ("ws://other:7880", "OtherKey")
    assert spec.env["LIVEKIT_API_SECRET"] == "agent-own-secret-0123456789"
    assert {"OtherKey", "agent-own-secret-0123456789"} <= spec.secrets


def test_lksup_agents_get_no_connection_in_their_environment(env: Environment) -> None:
    spec = build_spec("support", agent(), env)
    assert spec.runtime == "lksup"
    assert dict(spec.env) == {"PATH": "/usr/bin", "HOME": "/home/agent"}
    assert SECRET not in spec.secrets
