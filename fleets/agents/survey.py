"""survey: asks a fixed list of questions, one per second of the job, then ends the job."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lksup import JobContext

log = logging.getLogger("fleets.survey")

QUESTIONS = (
    "How satisfied are you with our service?",
    "Would you recommend us to a friend?",
    "Anything we could do better?",
)


async def entrypoint(ctx: JobContext) -> None:
    """Walk through the questions (SURVEY_STEP_SECONDS apart) and end the job."""
    step = float(os.environ.get("SURVEY_STEP_SECONDS", "1"))
    log.info("survey job started: room=%s job=%s", ctx.room_name, ctx.job.id)
    for number, question in enumerate(QUESTIONS, start=1):
        log.info("survey %s asks %d/%d: %s", ctx.job.id, number, len(QUESTIONS), question)
        await asyncio.sleep(step)
    log.info("survey job done: room=%s job=%s", ctx.room_name, ctx.job.id)
