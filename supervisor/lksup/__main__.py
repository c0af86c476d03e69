"""``python -m lksup`` runs the command-line interface."""

from __future__ import annotations

from lksup.cli import main

main()
