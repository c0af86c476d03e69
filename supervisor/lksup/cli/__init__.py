"""The ``lksup`` command line.

Commands are thin: parse, call one library function, print, and map the outcome to an exit
code.

Exit codes (shared by every command): 0 success / valid / no changes; 1 invalid or (for
``diff``) changes found; 2 usage error or, for ``diff``, an error; 3 and 4 are reserved for
``status`` (not ready / unknown), following LSB.
"""

from __future__ import annotations

from lksup.cli import (  # each registers its commands on ``main``
    agents,
    daemon,
    dev,
    dispatch,
    fleet,
    journal,
    migrate,
)
from lksup.cli.common import main
from lksup.cli.fleet import rendered_document

__all__ = [
    "agents",
    "daemon",
    "dev",
    "dispatch",
    "fleet",
    "journal",
    "main",
    "migrate",
    "rendered_document",
]
