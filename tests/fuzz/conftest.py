"""Fuzz targets: what reads untrusted or hand-written input never fails any other way than
its documented error.

Each target mixes arbitrary input with mutations of valid input (bytes flipped, inserted,
deleted, cut short), which reach much deeper than random bytes alone. They run with the rest
of the suite, each bounded by ``FUZZ_EXAMPLES`` examples (environment ``LKSUP_FUZZ_EXAMPLES``,
default 300: a few seconds each; raise it for a longer run).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("LKSUP_FUZZ_EXAMPLES", "300"))

fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """One of ``seeds`` with a few random edits."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and at < len(data):
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[at:]
    return bytes(data)


def inputs(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, or a mutated seed."""
    return st.one_of(st.binary(max_size=512), mutated(seeds))
