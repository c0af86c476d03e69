"""The example fleet's agents (fleets/agents) run for real in job processes and leave their
trace: a log line with their room and job id."""

from __future__ import annotations

import logging

import pytest

from lksup.pool.pool import RequestPolicy
from lksup.protocol.events import Accept, Decline, OfferReceived
from tests.conftest import ROOT
from tests.pool.helpers import Reporter, make_job, offer_and_run, running_pool, spec

pytestmark = [pytest.mark.anyio, pytest.mark.process]

FAST = {"HOLD_SECONDS": "0.05", "SURVEY_STEP_SECONDS": "0.01", "MODEL_NAME": "tiny"}


@pytest.mark.parametrize(
    ("module", "prewarm", "room", "trace"),
    [
        (
            "support",
            "fleets.agents.support:prewarm",
            "support-1",
            "support job started: room=support-1 job=AJ_1 agent=pool-agent model=tiny answers=2",
        ),
        ("sales", "", "sales-1", "sales job started: room=sales-1 job=AJ_1 metadata=''"),
        ("survey", "", "survey-1", "survey job done: room=survey-1 job=AJ_1"),
    ],
)
async def test_example_agent_runs(
    module: str, prewarm: str, room: str, trace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lksup.job")
    process_spec = spec(
        ROOT, entrypoint=f"fleets.agents.{module}:entrypoint", prewarm=prewarm, env=FAST
    )
    async with running_pool(process_spec) as pool:
        reporter = Reporter()
        await offer_and_run(pool, reporter, make_job("AJ_1", room=room))
        assert reporter.ended == {"AJ_1": None}
    assert trace in [r.getMessage() for r in caplog.records]


async def test_sales_request_function_picks_the_concierge_for_vip_rooms() -> None:
    process_spec = spec(
        ROOT,
        entrypoint="fleets.agents.sales:entrypoint",
        prewarm="",
        request_fnc="fleets.agents.sales:request",
        env=FAST,
    )
    async with running_pool(process_spec, policy=RequestPolicy(room="*")) as pool:
        vip = await pool.decide(OfferReceived(make_job("AJ_1", room="sales-vip-9")))
        assert vip == Accept("vip-AJ_1", "Concierge", "", {"tier": "vip"})
        pool.release("AJ_1")
        other = await pool.decide(OfferReceived(make_job("AJ_2", room="lobby")))
        assert other == Decline(terminate=True, reason="request function", cause="request_fnc")
