"""The child's outbound channel: ordered frames from any thread, log forwarding and dropping."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from lksup.jobs import ipc
from lksup.jobs.channel import MAX_LOG_TEXT, ForwardingHandler, Outbox
from lksup.jobs.framing import FrameDecoder


class Sink:
    def __init__(self) -> None:
        self.sent: list[ipc.ChildMessage] = []
        self.room = True
        self.writer_ident: int | None = None

    def has_log_room(self) -> bool:
        return self.room

    def send(self, msg: ipc.ChildMessage) -> None:
        self.sent.append(msg)


@pytest.fixture
def forwarded() -> Iterator[tuple[logging.Logger, Sink, ForwardingHandler]]:
    sink = Sink()
    handler = ForwardingHandler(sink)
    log = logging.getLogger("tests.jobs.channel")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, sink, handler
    log.removeHandler(handler)
    log.propagate = True


def test_records_are_formatted_and_forwarded(
    forwarded: tuple[logging.Logger, Sink, ForwardingHandler],
) -> None:
    log, sink, _ = forwarded
    log.debug("hello %s", "world")
    try:
        raise KeyError("k")
    except KeyError:
        log.exception("failed")
    log.info("stack", stack_info=True)
    hello, failed, stack = sink.sent
    assert isinstance(hello, ipc.LogRecord)
    assert (hello.level, hello.logger, hello.message, hello.exc_text) == (
        logging.DEBUG,
        "tests.jobs.channel",
        "hello world",
        "",
    )
    assert hello.created > 0
    assert isinstance(failed, ipc.LogRecord)
    assert failed.exc_text.startswith("Traceback")
    assert failed.exc_text.endswith("KeyError: 'k'")
    assert isinstance(stack, ipc.LogRecord)
    assert stack.exc_text.startswith("Stack (most recent call last):")


def test_overlong_text_is_cut(forwarded: tuple[logging.Logger, Sink, ForwardingHandler]) -> None:
    log, sink, _ = forwarded
    log.info("x" * (MAX_LOG_TEXT + 10))
    (record,) = sink.sent
    assert isinstance(record, ipc.LogRecord)
    assert record.message == "x" * MAX_LOG_TEXT + "... [10 characters cut]"


def test_records_beyond_the_backlog_are_dropped_and_counted(
    forwarded: tuple[logging.Logger, Sink, ForwardingHandler],
) -> None:
    log, sink, handler = forwarded
    sink.room = False
    for i in range(3):
        log.info("lost %d", i)
    assert (sink.sent, handler.dropped) == ([], 3)
    sink.room = True
    log.info("kept")
    assert [(r.level, r.message) for r in sink.sent if isinstance(r, ipc.LogRecord)] == [
        (logging.WARNING, "3 log records were dropped (IPC backlog full)."),
        (logging.INFO, "kept"),
    ]
    assert handler.dropped == 0


def test_the_writer_thread_never_feeds_itself(
    forwarded: tuple[logging.Logger, Sink, ForwardingHandler],
) -> None:
    log, sink, _ = forwarded
    sink.writer_ident = threading.get_ident()
    log.warning("from the writer")
    assert sink.sent == []


def test_outbox_keeps_each_senders_order_and_flushes_on_close() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        outbox = Outbox(ours)

        def sender(base: int) -> None:
            for i in range(200):
                outbox.send(ipc.Pong(sent_at_ns=base + i))

        threads = [threading.Thread(target=sender, args=(base,)) for base in (0, 1000, 2000, 3000)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        theirs.settimeout(5)
        decoder = FrameDecoder()
        received: list[int] = []
        while len(received) < 800:
            for payload in decoder.feed(theirs.recv(65536)):
                msg = ipc.decode(payload)
                assert isinstance(msg, ipc.Pong)
                received.append(msg.sent_at_ns)
        assert outbox.close(timeout=5)
        for base in (0, 1000, 2000, 3000):
            assert [n for n in received if base <= n < base + 1000] == list(range(base, base + 200))


def test_outbox_reports_a_vanished_peer() -> None:
    ours, theirs = socket.socketpair()
    theirs.close()
    with ours:
        outbox = Outbox(ours)
        outbox.send(ipc.Pong(sent_at_ns=1))
        assert outbox.close(timeout=5) is False
        assert outbox.broken
