from __future__ import annotations

from collections.abc import Mapping

from click.testing import CliRunner, Result

from lksup.cli import main


def run_cli(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    """Run the lksup CLI in-process; stdout and stderr are kept apart."""
    runner = CliRunner()
    return runner.invoke(main, list(args), env=dict(env or {}), catch_exceptions=False)
