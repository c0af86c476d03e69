"""The protocol scenario suite, run against every server under test (the real livekit-server
and lksup's dev server): what one says, the other must say too."""

from __future__ import annotations

from typing import Any

import anyio
import jwt

from lksup.protocol.events import Accept, Decline, JobAssigned
from lksup.transport.dispatch import delete_dispatch
from tests.conftest import eventually
from tests.interop.harness import (
    ScriptedAgent,
    ServerUnderTest,
    Trace,
    agent_session,
    dispatch_until_offered,
    next_item,
)


async def job_runs_to_success(
    server: ServerUnderTest, monkeypatch: Any, trace: Trace | None = None
) -> None:
    """register -> CreateDispatch -> offer -> accept -> assignment (token claims) -> RUNNING
    -> SUCCESS."""
    agent = ScriptedAgent()
    async with agent_session(
        server, agent, name="scenario-success", trace=trace, monkeypatch=monkeypatch
    ) as session:
        await session.wait_registered()
        offer, room, _ = await dispatch_until_offered(server, agent, "scenario-success")
        assert offer.job.agent_name == "scenario-success"
        assert offer.job.room_name == room
        assignment: JobAssigned = await next_item(agent.assignments)
        assert assignment.job.id == offer.job.id
        assert assignment.url is None
        claims = jwt.decode(assignment.token, server.api_secret, algorithms=["HS256"])
        assert claims["sub"] == f"lksup-{offer.job.id}"
        assert claims["iss"] == server.api_key
        assert claims["kind"] == "agent"
        assert claims["video"]["room"] == room
        assert claims["video"]["roomJoin"] is True
        assert claims["video"]["agent"] is True
        assert claims["attributes"]["lk.agent_name"] == "scenario-success"
        assert claims["exp"] - claims["nbf"] <= 3600 + 60
        agent.end(offer.job.id)
        await eventually(
            lambda: offer.job.id not in session.machine.running_jobs, timeout=5, interval=0.01
        )
        # the connection is still healthy: a second job goes through
        second, _, _ = await dispatch_until_offered(server, agent, "scenario-success")
        await next_item(agent.assignments)
        agent.end(second.job.id, error="RuntimeError: boom")


async def decline_retries_elsewhere(server: ServerUnderTest, monkeypatch: Any) -> None:
    """available=false: the server tries the next worker of the same name."""
    declining, accepting = ScriptedAgent(), ScriptedAgent()
    declining.answer = lambda offer: Decline()
    async with (
        agent_session(server, declining, name="scenario-retry") as first,
        agent_session(server, accepting, name="scenario-retry") as second,
    ):
        await first.wait_registered()
        await second.wait_registered()
        for _ in range(5):  # the accepting worker may not be known to the server yet
            with anyio.move_on_after(4):
                _offer, room, _ = await dispatch_until_offered(server, accepting, "scenario-retry")
                assignment: JobAssigned = await next_item(accepting.assignments)
                assert assignment.job.room_name == room
                break
        else:
            raise AssertionError("the accepting worker never got the job")
        assert not first.machine.running_jobs


async def terminate_is_final(server: ServerUnderTest, monkeypatch: Any) -> None:
    """terminate=true: no assignment, and no other worker is tried."""
    agent = ScriptedAgent()
    agent.answer = lambda offer: Decline(terminate=True)
    async with agent_session(server, agent, name="scenario-terminate") as session:
        await session.wait_registered()
        rejected, _, _ = await dispatch_until_offered(server, agent, "scenario-terminate")
        # then a job that is accepted: its assignment arrives, the rejected one's never does
        agent.answer = lambda offer: Accept(f"lksup-{offer.job.id}")
        accepted, _, _ = await dispatch_until_offered(server, agent, "scenario-terminate")
        assignment: JobAssigned = await next_item(agent.assignments)
        assert assignment.job.id == accepted.job.id
        assert rejected.job.id not in session.machine.running_jobs
        agent.end(accepted.job.id)


async def delete_dispatch_terminates(server: ServerUnderTest, monkeypatch: Any) -> None:
    """DeleteDispatch sends a termination for the running job."""
    agent = ScriptedAgent()
    async with agent_session(server, agent, name="scenario-delete") as session:
        await session.wait_registered()
        offer, room, dispatch_id = await dispatch_until_offered(server, agent, "scenario-delete")
        await next_item(agent.assignments)
        await delete_dispatch(server.api, dispatch_id=dispatch_id, room=room)
        await eventually(lambda: offer.job.id in agent.terminated, timeout=10, interval=0.01)
        assert agent.terminated == [offer.job.id]


async def reconnects_after_server_restart(server: ServerUnderTest, monkeypatch: Any) -> None:
    """The server goes away: the connection backs off and re-registers when it is back."""
    assert server.stop is not None
    assert server.restart is not None
    agent = ScriptedAgent()
    async with agent_session(server, agent, name="scenario-restart") as session:
        first = await session.wait_registered()
        await server.stop()
        await eventually(lambda: session.machine.worker_id is None, timeout=10, interval=0.01)
        await server.restart()
        with anyio.fail_after(30):
            second = await session.wait_registered()
        assert second != first
        assert session.reconnects >= 1
        offer, _, _ = await dispatch_until_offered(server, agent, "scenario-restart")
        await next_item(agent.assignments)
        agent.end(offer.job.id)


SCENARIOS = [
    job_runs_to_success,
    decline_retries_elsewhere,
    terminate_is_final,
    delete_dispatch_terminates,
    reconnects_after_server_restart,
]
