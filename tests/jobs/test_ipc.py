"""IPC messages: every message round-trips; decoding garbage raises IpcError only."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lksup._pb import lksup_ipc_pb2 as pb
from lksup.jobs import ipc
from lksup.jobs.framing import FrameDecoder, FrameTooLarge

text = st.text(max_size=40)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
floats = st.floats(allow_nan=False)
attributes = st.dictionaries(text, text, max_size=4)

messages: st.SearchStrategy[ipc.Message] = st.one_of(
    st.builds(
        ipc.Initialize,
        agent_name=text,
        entrypoint=text,
        prewarm=text,
        request_fnc=text,
        log_level=text,
        shutdown_grace=floats,
        runtime=text,
        session_end_fnc=text,
        max_jobs=int32,
    ),
    st.builds(
        ipc.OfferRequest,
        job=st.binary(max_size=64),
        default_identity=text,
        default_name=text,
        default_metadata=text,
        default_attributes=attributes,
    ),
    st.builds(
        ipc.StartJob,
        job=st.binary(max_size=64),
        url=text,
        token=text,
        participant_identity=text,
        participant_name=text,
        participant_metadata=text,
        participant_attributes=attributes,
        worker_id=text,
        received_at=floats,
        accepted_at=floats,
        assigned_at=floats,
        launched_at=floats,
    ),
    st.builds(
        ipc.InferenceResponse,
        request_id=text,
        data=st.binary(max_size=64),
        has_data=st.booleans(),
        error=text,
    ),
    st.builds(ipc.InferenceRequest, request_id=text, method=text, data=st.binary(max_size=64)),
    st.builds(ipc.Shutdown, reason=text, job_id=text),
    st.builds(
        ipc.ZygoteStart,
        preload=st.lists(text, max_size=3).map(tuple),
        imports=st.lists(text, max_size=3).map(tuple),
        log_level=text,
        agent_name=text,
    ),
    st.builds(
        ipc.ForkTemplate,
        request_id=text,
        agent_name=text,
        env=attributes,
        cwd=text,
        imports=st.lists(text, max_size=3).map(tuple),
        log_level=text,
    ),
    st.builds(ipc.ForkJob, request_id=text),
    st.builds(ipc.OutcomeReported, job_id=text),
    st.builds(ipc.JobOutcome, job_id=text, error=text, reason=text),
    st.builds(
        ipc.ZygoteReady,
        pid=int32,
        error=text,
        init_seconds=floats,
        plugins=st.lists(text, max_size=3).map(tuple),
        preload_failed=st.lists(text, max_size=3).map(tuple),
    ),
    st.builds(ipc.Forked, request_id=text, pid=int32, error=text),
    st.builds(ipc.Exited, pid=int32, returncode=int32),
    st.builds(ipc.StartInference, runners=st.lists(text, max_size=3).map(tuple), log_level=text),
    st.builds(ipc.Ping, sent_at_ns=int64),
    st.builds(
        ipc.Ready,
        pid=int32,
        error=text,
        init_seconds=floats,
        sdk_version=text,
        inference_runners=st.lists(text, max_size=3).map(tuple),
    ),
    st.builds(
        ipc.OfferAnswer,
        accept=st.booleans(),
        terminate=st.booleans(),
        identity=text,
        name=text,
        metadata=text,
        attributes=attributes,
        error=text,
    ),
    st.builds(ipc.JobStarted, job_id=text),
    st.builds(ipc.JobEnded, job_id=text, error=text, reason=text),
    st.builds(ipc.Pong, sent_at_ns=int64),
    st.builds(
        ipc.LogRecord,
        level=int32,
        logger=text,
        message=text,
        created=floats,
        exc_text=text,
        fields=attributes,
    ),
)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_clean(v) for v in value)
    return value


@given(msg=messages)
def test_round_trip_through_a_frame(msg: ipc.Message) -> None:
    frame = ipc.encode(msg)
    (payload,) = FrameDecoder().feed(frame)
    assert payload == ipc.encode_payload(msg)
    decoded = ipc.decode(payload)
    expected = type(msg)(**{k: _clean(v) for k, v in vars(msg).items()})
    assert decoded == expected
    assert type(decoded) is type(msg)


@given(payload=st.binary(max_size=200))
def test_garbage_raises_ipc_error_only(payload: bytes) -> None:
    try:
        msg = ipc.decode(payload)
    except ipc.IpcError:
        return
    assert isinstance(msg, ipc.Message)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "no known message"),
        (b"\xf2\x01\x00", "no known message"),  # field 30: a message from a newer schema
        (b"\x0a\x05\x12\xff", "undecodable"),
    ],
)
def test_documented_decode_errors(payload: bytes, match: str) -> None:
    with pytest.raises(ipc.IpcError, match=match):
        ipc.decode(payload)


def test_wire_form_is_the_schema_envelope() -> None:
    frame = ipc.encode(ipc.Ping(sent_at_ns=42))
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    envelope = pb.Envelope.FromString(frame[4:])
    assert envelope.WhichOneof("message") == "ping"
    assert envelope.ping.sent_at_ns == 42


def test_job_bytes_pass_through_untouched() -> None:
    wire = bytes(range(256))
    msg = ipc.decode(ipc.encode_payload(ipc.StartJob(job=wire, url="ws://h", token="t")))
    assert isinstance(msg, ipc.StartJob)
    assert msg.job == wire


def test_unencodable_text_is_sent_escaped() -> None:
    msg = ipc.decode(ipc.encode_payload(ipc.LogRecord(level=20, logger="x", message="a\udcffb")))
    assert isinstance(msg, ipc.LogRecord)
    assert msg.message == "a\\udcffb"


def test_local_misuse_raises() -> None:
    with pytest.raises(ValueError, match="out of range"):
        ipc.encode(ipc.Ready(pid=2**40))
    with pytest.raises(FrameTooLarge):
        ipc.encode(ipc.JobEnded(job_id="j", error="x" * 100), max_size=50)


def test_exit_codes_are_stable() -> None:
    assert [(c.name, int(c)) for c in ipc.ExitCode] == [
        ("OK", 0),
        ("USAGE", 64),
        ("RUNTIME_MISSING", 69),
        ("PROTOCOL", 76),
        ("INIT_FAILED", 78),
    ]
