"""sales: only VIP rooms get the concierge; the request function decides, in the job process."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lksup import JobContext, JobRequest

log = logging.getLogger("fleets.sales")


async def request(req: JobRequest) -> None:
    """Accept every sales room; VIP rooms get the concierge identity and a tier attribute."""
    room = req.job.room.name
    if room.startswith("sales-vip-"):
        await req.accept(identity=f"vip-{req.job.id}", name="Concierge", attributes={"tier": "vip"})
    elif room.startswith("sales-"):
        await req.accept(name="Sales")
    else:
        await req.reject()


async def entrypoint(ctx: JobContext) -> None:
    """Log the pitch, then hold the room for HOLD_SECONDS or until the job ends."""
    log.info(
        "sales job started: room=%s job=%s metadata=%r", ctx.room_name, ctx.job.id, ctx.job.metadata
    )
    ctx.add_shutdown_callback(_goodbye)
    hold = float(os.environ.get("HOLD_SECONDS", "5"))
    try:
        await asyncio.wait_for(ctx.wait_for_shutdown(), timeout=hold)
    except TimeoutError:
        ctx.shutdown("pitch delivered")


async def _goodbye(reason: str) -> None:
    log.info("sales job ending: %s", reason)
