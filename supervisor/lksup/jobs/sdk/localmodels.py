"""Imported by a base template: load the SDK's local VAD and end-of-turn models, once.

The base template imports this module (``lksup.pool.zygote.LOCAL_MODELS``) once a job of the
fleet was seen using the models, so that every process forked from it shares their weights
instead of loading its own copy (about 110 MB each for the end-of-turn model). Before that, the
base runs the SDK's warm-up with ``LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE=0``: a fleet whose
agents never use them does not carry them.

A failure is logged at debug level only, as the SDK's own warm-up does: the first real use
reports a proper error.
"""

from __future__ import annotations

import importlib.util
import logging

logger = logging.getLogger("lksup.zygote")


def _load() -> None:
    if importlib.util.find_spec("livekit.local_inference") is None:
        return
    try:
        import livekit.local_inference as local

        local.init_vad()
        local.init_eot()
    except Exception:  # the first real use says what is wrong
        logger.debug("Cannot preload the local inference models.", exc_info=True)


_load()
