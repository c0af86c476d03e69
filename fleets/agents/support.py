"""customer-service: answers support rooms. Prewarm loads its canned answers once per process."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lksup import JobContext, JobProcess

log = logging.getLogger("fleets.support")

ANSWERS = {
    "hours": "We are open 8:00-20:00, Monday to Saturday.",
    "refund": "Refunds are processed within 5 working days.",
}


def prewarm(proc: JobProcess) -> None:
    """Load the answer book once per process, before any job (stands in for a model)."""
    proc.userdata["answers"] = dict(ANSWERS)
    proc.userdata["model"] = os.environ.get("MODEL_NAME", "small")


async def entrypoint(ctx: JobContext) -> None:
    """Greet the room, then stay until the job is ended (or HOLD_SECONDS elapse)."""
    answers = ctx.proc.userdata.get("answers", {})
    log.info(
        "support job started: room=%s job=%s agent=%s model=%s answers=%d",
        ctx.room_name,
        ctx.job.id,
        ctx.agent_name,
        ctx.proc.userdata.get("model"),
        len(answers),
    )
    hold = float(os.environ.get("HOLD_SECONDS", "5"))
    try:
        await asyncio.wait_for(ctx.wait_for_shutdown(), timeout=hold)
    except TimeoutError:
        log.info("support job done: room=%s job=%s", ctx.room_name, ctx.job.id)
