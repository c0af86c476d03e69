"""A real job process answering offers with the agent's request function."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lksup.jobs import ipc

from .harness import initialize, job_wire, spawn, write_agent

pytestmark = [pytest.mark.anyio, pytest.mark.process]

AGENT = """
    async def request(req):
        room = req.job.room.name
        if room.startswith("vip-"):
            await req.accept(identity=f"vip-{req.job.id}", name="Concierge", attributes={"tier": "vip"})
        elif room == "defaults":
            await req.accept()
        elif room == "reject":
            await req.reject()
        elif room == "keep-offering":
            await req.reject(terminate=False)
        elif room == "raise":
            raise ValueError(f"cannot serve {room}")
        elif room == "raise-after-accept":
            await req.accept()
            raise ValueError("too late")
        # "silent": returns without answering

    async def entrypoint(ctx):
        assert (ctx.participant_identity, ctx.participant_name) == ("vip-AJ_1", "Concierge")
"""


def offer(room: str) -> ipc.OfferRequest:
    return ipc.OfferRequest(
        job=job_wire(room=room),
        default_identity="agent-AJ_1",
        default_name="Support",
        default_metadata="{}",
        default_attributes={"team": "cs", "tier": "std"},
    )


async def test_request_function_answers_then_the_same_process_runs_the_job(tmp_path: Path) -> None:
    write_agent(tmp_path, AGENT)
    async with spawn(tmp_path) as child:
        await child.ready(initialize(request_fnc="agent:request"))
        expected = {
            "vip-1": ipc.OfferAnswer(
                accept=True,
                identity="vip-AJ_1",
                name="Concierge",
                metadata="{}",
                attributes={"team": "cs", "tier": "vip"},
            ),
            "defaults": ipc.OfferAnswer(
                accept=True,
                identity="agent-AJ_1",
                name="Support",
                metadata="{}",
                attributes={"team": "cs", "tier": "std"},
            ),
            "reject": ipc.OfferAnswer(accept=False, terminate=True),
            "keep-offering": ipc.OfferAnswer(accept=False, terminate=False),
            "silent": ipc.OfferAnswer(accept=False, terminate=False),
            "raise": ipc.OfferAnswer(
                accept=False, terminate=False, error="ValueError: cannot serve raise"
            ),
            "raise-after-accept": ipc.OfferAnswer(
                accept=True,
                identity="agent-AJ_1",
                name="Support",
                metadata="{}",
                attributes={"team": "cs", "tier": "std"},
            ),
        }
        expected = {room: dataclasses.replace(a, job_id="AJ_1") for room, a in expected.items()}
        for room, answer in expected.items():
            await child.send(offer(room))
            assert await child.expect(ipc.OfferAnswer) == answer, room
        # the answer to "raise-after-accept" left before the function raised: wait for its log
        await child.wait_log(
            lambda r: r.message == "Request function failed after answering job AJ_1."
        )
        messages = child.log_messages()
        assert "Request function did not answer job AJ_1; declining it." in messages
        assert "Request function failed; declining job AJ_1." in messages
        failure = next(
            r for r in child.logs if r.message == "Request function failed; declining job AJ_1."
        )
        assert "ValueError: cannot serve raise" in failure.exc_text
        # the process stays idle after offers and takes the job it was reserved for
        start = ipc.StartJob(
            job=job_wire(room="vip-1"),
            url="ws://lk",
            token="t",
            participant_identity="vip-AJ_1",
            participant_name="Concierge",
        )
        await child.send(start)
        await child.expect(ipc.JobStarted)
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="entrypoint returned"
        )
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_without_a_request_function_offers_get_the_defaults(tmp_path: Path) -> None:
    write_agent(tmp_path, "async def entrypoint(ctx): pass\n")
    async with spawn(tmp_path) as child:
        await child.ready()
        await child.send(offer("any"))
        answer = await child.expect(ipc.OfferAnswer)
        assert answer == ipc.OfferAnswer(
            accept=True,
            identity="agent-AJ_1",
            name="Support",
            metadata="{}",
            attributes={"team": "cs", "tier": "std"},
            job_id="AJ_1",
        )
        await child.send(ipc.OfferRequest(job=b"\xff\xff"))
        undecodable = await child.expect(ipc.OfferAnswer)
        assert not undecodable.accept
        assert undecodable.error.startswith("undecodable job")
        await child.send(ipc.Shutdown(reason="idle"))
        assert await child.wait_exit() == ipc.ExitCode.OK
