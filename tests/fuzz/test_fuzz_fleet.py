"""Fuzz: the fleet loader (template, YAML, schema, normalization) on hand-written files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from lksup.errors import FleetError
from lksup.fleet.loading import load_fleet
from tests.conftest import FIXTURES, ROOT
from tests.fuzz.conftest import fuzz, mutated

SEEDS = [
    path.read_bytes()
    for path in sorted([*(ROOT / "fleets").glob("*.yaml"), *(FIXTURES / "invalid").glob("*.yaml")])
]


@fuzz
@given(
    text=st.one_of(
        st.text(max_size=300),
        mutated(SEEDS).map(lambda data: data.decode("utf-8", "replace")),
    )
)
def test_any_fleet_file_loads_or_says_where_and_why(text: str) -> None:
    """An invalid file is a FleetError with file:line:col diagnostics, never a traceback."""
    fd, name = tempfile.mkstemp(suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        error: FleetError | None = None
        try:
            load_fleet(name, environ={})
        except FleetError as exc:
            error = exc
        if error is not None:
            assert error.diagnostics
            for diagnostic in error.diagnostics:
                assert diagnostic.file == name
                assert diagnostic.line >= 1
                assert diagnostic.message
    finally:
        Path(name).unlink()
