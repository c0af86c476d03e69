"""Durations as users write them: seconds as a number, or a number with a unit.

Accepted: ``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"30m"``, ``"1h"``, and sums of those
written without spaces or with spaces (``"1h30m"``, ``"1m 30s"``). Everything is normalized to
float seconds, which is what every ``*_timeout`` in lksup is.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

# exact decimal arithmetic, so "9ms" == 0.009 and "2.01h" == 7236 (no binary rounding error)
_UNITS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
HINT = "use seconds (30) or a number with a unit: ms, s, m, h, d (500ms, 30s, 30m, 1h30m)"


def parse_duration(value: object) -> float:
    """Parse a duration into float seconds.

    Raises:
        ValueError: the value is not a duration; the message says what is accepted.
    """
    if isinstance(value, bool):
        raise ValueError(f"a duration is expected, not a boolean; {HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise ValueError(f"a duration is expected; {HINT}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"a duration must be finite; {HINT}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _parse_text(text: str) -> float:
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    pos, total = 0, Decimal(0)
    while pos < len(stripped):
        match = _PART.match(stripped, pos)
        if not match:
            raise ValueError(f"invalid duration {text!r}; {HINT}")
        total += Decimal(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r}; {HINT}")
    return float(total)


def format_duration(seconds: float) -> str:
    """A short human form (``1h30m``, ``45s``, ``500ms``) for messages and tables."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    rest = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            count, rest = divmod(rest, size)
            parts.append(f"{count}{unit}")
    return "".join(parts)
