"""lksup: a declarative supervisor for fleets of LiveKit agent workers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
