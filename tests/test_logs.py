"""Daemon logs: JSON lines with the bound fields when stdout is not a terminal, readable lines
on one."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from lksup.logs import setup_logging


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_when_the_stream_is_not_a_terminal() -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    logging.getLogger("lksup.test").info(
        "job %s started", "J1", extra={"agent": "sales", "job_id": "J1", "pid": 4242}
    )
    record = json.loads(out.getvalue())
    assert record["msg"] == "job J1 started"
    assert record["level"] == "info"
    assert (record["agent"], record["job_id"], record["pid"]) == ("sales", "J1", 4242)
    assert record["ts"].endswith("+00:00")  # RFC 3339, UTC


def test_readable_lines_on_a_terminal_with_the_fields_as_a_prefix() -> None:
    out = Terminal()
    setup_logging(stream=out)
    logging.getLogger("lksup.test").warning("slow", extra={"agent": "sales", "pid": 7})
    line = out.getvalue().strip()
    assert "warning [sales 7] slow" in line
    assert not line.startswith("{")


def test_the_format_can_be_forced_either_way() -> None:
    out = Terminal()
    setup_logging(fmt="json", stream=out)
    logging.getLogger("lksup.test").info("x")
    assert json.loads(out.getvalue())["msg"] == "x"
    plain = io.StringIO()
    setup_logging(fmt="console", stream=plain)
    logging.getLogger("lksup.test").info("y")
    assert plain.getvalue().strip().endswith("info    y")
