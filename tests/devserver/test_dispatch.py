"""Dispatch: offers, assignment, retries, the gate, the budget, job ends and terminations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import jwt
import pytest
from livekit.protocol import agent

from lksup.devserver import DevServer

from .helpers import SECRET, WAIT, Worker, running_server, worker

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def workers(server: DevServer, count: int, agent_name: str) -> AsyncIterator[list[Worker]]:
    async with worker(server) as first:
        if count == 1:
            await first.register(agent_name)
            yield [first]
            return
        async with workers(server, count - 1, agent_name) as rest:
            await first.register(agent_name)
            yield [first, *rest]


async def first_offer(pool: list[Worker]) -> tuple[Worker, agent.AvailabilityRequest]:
    """Wait for the one worker of ``pool`` that gets an offer."""
    found: list[tuple[Worker, agent.AvailabilityRequest]] = []
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:

            async def watch(w: Worker) -> None:
                message = await w.ws.recv()
                assert isinstance(message, bytes)
                found.append((w, agent.ServerMessage.FromString(message).availability))
                tg.cancel_scope.cancel()

            for w in pool:
                tg.start_soon(watch, w)
    assert len(found) == 1
    return found[0]


async def test_offer_accept_assignment() -> None:
    async with running_server() as server, worker(server) as w:
        await w.register("assist")
        created = await server.create_dispatch("room-1", "assist", "hello", attributes={"k": "v"})
        assert created.id.startswith("AD_")
        assert list(created.state.jobs) == []
        offer = (await w.expect("availability")).availability
        job = offer.job
        assert job.id.startswith("AJ_")
        assert not offer.resuming
        assert (job.type, job.room.name, job.agent_name, job.metadata, job.dispatch_id) == (
            agent.JT_ROOM,
            "room-1",
            "assist",
            "hello",
            created.id,
        )
        assert dict(job.attributes) == {"k": "v"}
        assert job.room.sid.startswith("RM_")
        assert (job.state.status, job.state.worker_id) == (agent.JS_RUNNING, w.worker_id)
        assert job.state.started_at == job.state.updated_at > 0
        await w.answer(
            job.id,
            identity="agent-1",
            name="Assistant",
            metadata="md",
            attributes={"lk.agent_name": "spoofed", "x": "y"},
        )
        assignment = (await w.expect("assignment")).assignment
        assert not assignment.HasField("url")
        assert assignment.job.state.participant_identity == "agent-1"
        claims = jwt.decode(assignment.token, SECRET, algorithms=["HS256"])
        assert claims["exp"] - claims["nbf"] == 3600
        del claims["exp"], claims["nbf"]
        assert claims == {
            "iss": "devkey",
            "sub": "agent-1",
            "name": "Assistant",
            "kind": "agent",
            "metadata": "md",
            "attributes": {"lk.agent_name": "assist", "x": "y"},
            "video": {
                "roomJoin": True,
                "room": "room-1",
                "canPublish": True,
                "canSubscribe": True,
                "canPublishData": True,
                "canUpdateOwnMetadata": True,
                "agent": True,
                "canSubscribeMetrics": False,
            },
        }
        with anyio.fail_after(WAIT):
            settled = await server.wait_dispatch_settled(created.id)
        (listed,) = settled.state.jobs
        assert (listed.id, listed.state.status, listed.state.participant_identity) == (
            job.id,
            agent.JS_RUNNING,
            "agent-1",
        )
        assert server.workers()[0].running_jobs == (job.id,)
        # ListDispatch keeps the state of assignment time, even after the job ended.
        await w.update_job(job.id, agent.JS_SUCCESS)
        assert await w.sync() == []
        assert server.workers()[0].running_jobs == ()
        (dispatched,) = [d for d in server.list_dispatch("room-1") if d.id == created.id]
        assert dispatched.state.jobs[0].state.status == agent.JS_RUNNING


async def test_not_available_retries_another_worker() -> None:
    async with running_server() as server, workers(server, 2, "pool") as pool:
        created = await server.create_dispatch("room-r", "pool")
        first, offer = await first_offer(pool)
        await first.answer(offer.job.id, available=False)
        (second,) = [w for w in pool if w is not first]
        retry = (await second.expect("availability")).availability
        assert retry.job.id == offer.job.id
        assert retry.job.state.worker_id == second.worker_id
        await second.answer(retry.job.id, identity="agent-r")
        await second.expect("assignment")
        with anyio.fail_after(WAIT):
            settled = await server.wait_dispatch_settled(created.id)
        assert [j.state.worker_id for j in settled.state.jobs] == [second.worker_id]
        assert await first.sync() == []  # tried once only


async def test_not_available_everywhere_drops_the_job() -> None:
    async with running_server() as server, workers(server, 2, "pool") as pool:
        created = await server.create_dispatch("room-n", "pool")
        for _ in pool:
            w, offer = await first_offer(pool)
            await w.answer(offer.job.id, available=False)
        with anyio.fail_after(WAIT):
            settled = await server.wait_dispatch_settled(created.id)
        assert list(settled.state.jobs) == []


async def test_terminate_stops_without_assignment_or_retry() -> None:
    async with running_server() as server, workers(server, 2, "t") as pool:
        created = await server.create_dispatch("room-t", "t")
        w, offer = await first_offer(pool)
        await w.answer(offer.job.id, available=True, terminate=True)
        with anyio.fail_after(WAIT):
            settled = await server.wait_dispatch_settled(created.id)
        (job,) = settled.state.jobs
        assert job.state.status == agent.JS_SUCCESS
        assert job.state.ended_at > 0
        for each in pool:
            assert await each.sync() == []  # no assignment, no retry
        assert all(info.running_jobs == () for info in server.workers())


@pytest.mark.parametrize(
    ("loads", "statuses"),
    [
        ((0.7, 0.7), (None, None)),
        ((0.7, 0.95), (None, None)),
        ((0.0, 0.0), (agent.WS_FULL, agent.WS_FULL)),
        ((0.9, 0.0), (None, agent.WS_FULL)),
    ],
)
async def test_affinity_gate_blocks_every_offer(
    loads: tuple[float, float], statuses: tuple[int | None, int | None]
) -> None:
    async with running_server() as server, workers(server, 2, "busy") as pool:
        for w, load, status in zip(pool, loads, statuses, strict=True):
            await w.update(load, status)
        created = await server.create_dispatch("room-busy", "busy")
        with anyio.fail_after(WAIT):
            settled = await server.wait_dispatch_settled(created.id)
        assert list(settled.state.jobs) == []
        for w in pool:
            assert await w.sync() == []


async def test_gate_open_when_one_worker_is_below_target_load() -> None:
    async with running_server() as server, workers(server, 2, "mixed") as pool:
        await pool[0].update(0.95)
        await pool[1].update(0.69)
        await server.create_dispatch("room-m", "mixed")
        # The gate opens on the sum; inside, the 1 - load weights still allow either.
        await first_offer(pool)


async def test_unanswered_offer_is_dropped_after_the_budget() -> None:
    async with running_server(dispatch_timeout=0.3) as server, worker(server) as w:
        await w.register("slow")
        start = anyio.current_time()
        created = await server.create_dispatch("room-slow", "slow")
        offer = (await w.expect("availability")).availability
        with anyio.fail_after(WAIT):
            settled = await server.wait_dispatch_settled(created.id)
        elapsed = anyio.current_time() - start
        assert 0.3 <= elapsed < 0.3 + WAIT / 2
        assert list(settled.state.jobs) == []
        await w.answer(offer.job.id, identity="late")  # late: logged and ignored
        assert await w.sync() == []
        assert server.workers()[0].running_jobs == ()


async def test_timeout_is_not_retried_on_another_worker() -> None:
    async with running_server(dispatch_timeout=0.3) as server, workers(server, 2, "b") as pool:
        created = await server.create_dispatch("room-b", "b")
        first, _ = await first_offer(pool)  # never answered
        with anyio.fail_after(WAIT):
            settled = await server.wait_dispatch_settled(created.id)
        assert list(settled.state.jobs) == []
        (second,) = [w for w in pool if w is not first]
        assert await second.sync() == []


async def test_worker_closing_during_offer_means_retry() -> None:
    async with running_server() as server, worker(server) as stay:
        await stay.register("c")
        await stay.update(0.0, agent.WS_FULL)  # not a candidate for the first pick
        async with worker(server) as leave:
            await leave.register("c")
            await server.create_dispatch("room-c", "c")
            offer = (await leave.expect("availability")).availability
            await stay.update(0.0, agent.WS_AVAILABLE)  # candidates are re-read on every pick
        retry = (await stay.expect("availability")).availability
        assert retry.job.id == offer.job.id
        assert retry.job.state.worker_id == stay.worker_id


async def test_update_job_ends_the_job_so_delete_sends_nothing() -> None:
    async with running_server() as server, worker(server) as w:
        await w.register("u")
        created = await server.create_dispatch("room-u", "u")
        offer = (await w.expect("availability")).availability
        await w.answer(offer.job.id, identity="agent-u")
        await w.expect("assignment")
        await w.update_job(offer.job.id, agent.JS_RUNNING)
        assert await w.sync() == []
        assert server.workers()[0].running_jobs == (offer.job.id,)
        await w.update_job(offer.job.id, agent.JS_FAILED, "boom")
        assert await w.sync() == []
        assert server.workers()[0].running_jobs == ()
        await server.delete_dispatch("room-u", created.id)
        with anyio.fail_after(WAIT):
            settled = await server.wait_dispatch_settled(created.id)
        assert settled.state.jobs[0].state.status == agent.JS_RUNNING  # as assigned
        assert await w.sync() == []


async def test_delete_dispatch_sends_termination_once() -> None:
    async with running_server() as server, worker(server) as w:
        await w.register("d")
        created = await server.create_dispatch("room-d", "d")
        offer = (await w.expect("availability")).availability
        await w.answer(offer.job.id, identity="agent-d")
        await w.expect("assignment")
        deleted = await server.delete_dispatch("room-d", created.id)
        assert deleted.id == created.id
        assert created.id not in {d.id for d in server.list_dispatch("room-d")}
        termination = (await w.expect("termination")).termination
        assert termination.job_id == offer.job.id
        with anyio.fail_after(WAIT):
            settled = await server.wait_dispatch_settled(created.id)
        assert settled.state.jobs[0].state.status == agent.JS_SUCCESS
        assert server.workers()[0].running_jobs == ()
        await w.update_job(offer.job.id, agent.JS_FAILED)  # ignored: already ended
        assert await w.sync() == []


async def test_dropped_worker_is_forgotten_and_its_jobs_orphaned() -> None:
    async with running_server() as server:
        async with worker(server) as w:
            await w.register("gone")
            created = await server.create_dispatch("room-g", "gone")
            offer = (await w.expect("availability")).availability
            await w.answer(offer.job.id, identity="agent-g")
            await w.expect("assignment")
        with anyio.fail_after(WAIT):
            await server.wait_workers(lambda infos: infos == [])
        await server.delete_dispatch("room-g", created.id)  # nobody to terminate; no error
        with anyio.fail_after(WAIT):
            settled = await server.wait_dispatch_settled(created.id)
        assert settled.state.jobs[0].state.status == agent.JS_RUNNING
        async with worker(server) as again:
            await again.register("gone")
            assert again.worker_id != offer.job.state.worker_id
            assert await again.sync() == []


async def test_no_queueing_for_workers_that_register_later() -> None:
    async with running_server() as server:
        created = await server.create_dispatch("room-q", "late")
        with anyio.fail_after(WAIT):
            settled = await server.wait_dispatch_settled(created.id)
        assert list(settled.state.jobs) == []
        async with worker(server) as w:
            await w.register("late")
            assert await w.sync() == []


async def test_pools_are_keyed_by_name_type_and_deployment() -> None:
    async with (
        running_server() as server,
        worker(server) as publisher,
        worker(server) as other_deploy,
        worker(server) as right,
    ):
        await publisher.register("k", job_type=agent.JT_PUBLISHER)
        await other_deploy.register("k", deployment="staging")
        await right.register("k", deployment="prod")
        await server.create_dispatch("room-k", "k", deployment="prod")
        offer = (await right.expect("availability")).availability
        assert offer.job.deployment == "prod"
        assert await publisher.sync() == []
        assert await other_deploy.sync() == []


async def test_create_dispatch_auto_creates_room_with_unnamed_dispatch() -> None:
    async with running_server() as server, worker(server) as unnamed, worker(server) as named:
        await unnamed.register("")
        await named.register("n")
        created = await server.create_dispatch("room-auto", "n")
        default = (await unnamed.expect("availability")).availability
        explicit = (await named.expect("availability")).availability
        assert (default.job.agent_name, explicit.job.agent_name) == ("", "n")
        assert default.job.room.sid == explicit.job.room.sid
        dispatches = server.list_dispatch("room-auto")
        assert {d.agent_name for d in dispatches} == {"", "n"}
        assert created.id in {d.id for d in dispatches}
