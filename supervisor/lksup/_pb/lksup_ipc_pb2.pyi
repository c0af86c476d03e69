from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Initialize(_message.Message):
    __slots__ = ("agent_name", "entrypoint", "prewarm", "request_fnc", "log_level", "shutdown_grace", "runtime", "session_end_fnc", "max_jobs")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    PREWARM_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FNC_FIELD_NUMBER: _ClassVar[int]
    LOG_LEVEL_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_GRACE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    SESSION_END_FNC_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    entrypoint: str
    prewarm: str
    request_fnc: str
    log_level: str
    shutdown_grace: float
    runtime: str
    session_end_fnc: str
    max_jobs: int
    def __init__(self, agent_name: _Optional[str] = ..., entrypoint: _Optional[str] = ..., prewarm: _Optional[str] = ..., request_fnc: _Optional[str] = ..., log_level: _Optional[str] = ..., shutdown_grace: _Optional[float] = ..., runtime: _Optional[str] = ..., session_end_fnc: _Optional[str] = ..., max_jobs: _Optional[int] = ...) -> None: ...

class StartInference(_message.Message):
    __slots__ = ("runners", "log_level")
    RUNNERS_FIELD_NUMBER: _ClassVar[int]
    LOG_LEVEL_FIELD_NUMBER: _ClassVar[int]
    runners: _containers.RepeatedScalarFieldContainer[str]
    log_level: str
    def __init__(self, runners: _Optional[_Iterable[str]] = ..., log_level: _Optional[str] = ...) -> None: ...

class ZygoteStart(_message.Message):
    __slots__ = ("preload", "imports", "log_level", "agent_name", "prepare")
    PRELOAD_FIELD_NUMBER: _ClassVar[int]
    IMPORTS_FIELD_NUMBER: _ClassVar[int]
    LOG_LEVEL_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    preload: _containers.RepeatedScalarFieldContainer[str]
    imports: _containers.RepeatedScalarFieldContainer[str]
    log_level: str
    agent_name: str
    prepare: bytes
    def __init__(self, preload: _Optional[_Iterable[str]] = ..., imports: _Optional[_Iterable[str]] = ..., log_level: _Optional[str] = ..., agent_name: _Optional[str] = ..., prepare: _Optional[bytes] = ...) -> None: ...

class ForkTemplate(_message.Message):
    __slots__ = ("request_id", "agent_name", "env", "cwd", "imports", "log_level", "prepare")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    IMPORTS_FIELD_NUMBER: _ClassVar[int]
    LOG_LEVEL_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    agent_name: str
    env: _containers.ScalarMap[str, str]
    cwd: str
    imports: _containers.RepeatedScalarFieldContainer[str]
    log_level: str
    prepare: bytes
    def __init__(self, request_id: _Optional[str] = ..., agent_name: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., imports: _Optional[_Iterable[str]] = ..., log_level: _Optional[str] = ..., prepare: _Optional[bytes] = ...) -> None: ...

class ForkJob(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class OutcomeReported(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class OfferRequest(_message.Message):
    __slots__ = ("job", "default_identity", "default_name", "default_metadata", "default_attributes")
    class DefaultAttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_METADATA_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    job: bytes
    default_identity: str
    default_name: str
    default_metadata: str
    default_attributes: _containers.ScalarMap[str, str]
    def __init__(self, job: _Optional[bytes] = ..., default_identity: _Optional[str] = ..., default_name: _Optional[str] = ..., default_metadata: _Optional[str] = ..., default_attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AwaitJob(_message.Message):
    __slots__ = ("job_id", "poll_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    POLL_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    poll_s: float
    def __init__(self, job_id: _Optional[str] = ..., poll_s: _Optional[float] = ...) -> None: ...

class StartJob(_message.Message):
    __slots__ = ("job", "url", "token", "participant_identity", "participant_name", "participant_metadata", "participant_attributes", "worker_id", "received_at", "accepted_at", "assigned_at", "launched_at")
    class ParticipantAttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_NAME_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_METADATA_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_AT_FIELD_NUMBER: _ClassVar[int]
    LAUNCHED_AT_FIELD_NUMBER: _ClassVar[int]
    job: bytes
    url: str
    token: str
    participant_identity: str
    participant_name: str
    participant_metadata: str
    participant_attributes: _containers.ScalarMap[str, str]
    worker_id: str
    received_at: float
    accepted_at: float
    assigned_at: float
    launched_at: float
    def __init__(self, job: _Optional[bytes] = ..., url: _Optional[str] = ..., token: _Optional[str] = ..., participant_identity: _Optional[str] = ..., participant_name: _Optional[str] = ..., participant_metadata: _Optional[str] = ..., participant_attributes: _Optional[_Mapping[str, str]] = ..., worker_id: _Optional[str] = ..., received_at: _Optional[float] = ..., accepted_at: _Optional[float] = ..., assigned_at: _Optional[float] = ..., launched_at: _Optional[float] = ...) -> None: ...

class InferenceResponse(_message.Message):
    __slots__ = ("request_id", "data", "has_data", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HAS_DATA_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    data: bytes
    has_data: bool
    error: str
    def __init__(self, request_id: _Optional[str] = ..., data: _Optional[bytes] = ..., has_data: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("reason", "job_id")
    REASON_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    reason: str
    job_id: str
    def __init__(self, reason: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("sent_at_ns",)
    SENT_AT_NS_FIELD_NUMBER: _ClassVar[int]
    sent_at_ns: int
    def __init__(self, sent_at_ns: _Optional[int] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ("pid", "error", "init_seconds", "sdk_version", "inference_runners")
    PID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_RUNNERS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    error: str
    init_seconds: float
    sdk_version: str
    inference_runners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pid: _Optional[int] = ..., error: _Optional[str] = ..., init_seconds: _Optional[float] = ..., sdk_version: _Optional[str] = ..., inference_runners: _Optional[_Iterable[str]] = ...) -> None: ...

class OfferAnswer(_message.Message):
    __slots__ = ("accept", "terminate", "identity", "name", "metadata", "attributes", "error", "job_id")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    TERMINATE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    accept: bool
    terminate: bool
    identity: str
    name: str
    metadata: str
    attributes: _containers.ScalarMap[str, str]
    error: str
    job_id: str
    def __init__(self, accept: _Optional[bool] = ..., terminate: _Optional[bool] = ..., identity: _Optional[str] = ..., name: _Optional[str] = ..., metadata: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., error: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class JobStarted(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobEnded(_message.Message):
    __slots__ = ("job_id", "error", "reason", "local_models")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LOCAL_MODELS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    error: str
    reason: str
    local_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., error: _Optional[str] = ..., reason: _Optional[str] = ..., local_models: _Optional[_Iterable[str]] = ...) -> None: ...

class JobOutcome(_message.Message):
    __slots__ = ("job_id", "error", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    error: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., error: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("sent_at_ns",)
    SENT_AT_NS_FIELD_NUMBER: _ClassVar[int]
    sent_at_ns: int
    def __init__(self, sent_at_ns: _Optional[int] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("level", "logger", "message", "created", "exc_text", "fields", "job_id")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LOGGER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXC_TEXT_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    level: int
    logger: str
    message: str
    created: float
    exc_text: str
    fields: _containers.ScalarMap[str, str]
    job_id: str
    def __init__(self, level: _Optional[int] = ..., logger: _Optional[str] = ..., message: _Optional[str] = ..., created: _Optional[float] = ..., exc_text: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ..., job_id: _Optional[str] = ...) -> None: ...

class InferenceRequest(_message.Message):
    __slots__ = ("request_id", "method", "data")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    method: str
    data: bytes
    def __init__(self, request_id: _Optional[str] = ..., method: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ZygoteReady(_message.Message):
    __slots__ = ("pid", "error", "init_seconds", "plugins", "preload_failed", "prepared", "unforkable")
    PID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    PRELOAD_FAILED_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    UNFORKABLE_FIELD_NUMBER: _ClassVar[int]
    pid: int
    error: str
    init_seconds: float
    plugins: _containers.RepeatedScalarFieldContainer[str]
    preload_failed: _containers.RepeatedScalarFieldContainer[str]
    prepared: bool
    unforkable: str
    def __init__(self, pid: _Optional[int] = ..., error: _Optional[str] = ..., init_seconds: _Optional[float] = ..., plugins: _Optional[_Iterable[str]] = ..., preload_failed: _Optional[_Iterable[str]] = ..., prepared: _Optional[bool] = ..., unforkable: _Optional[str] = ...) -> None: ...

class Forked(_message.Message):
    __slots__ = ("request_id", "pid", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    pid: int
    error: str
    def __init__(self, request_id: _Optional[str] = ..., pid: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class Exited(_message.Message):
    __slots__ = ("pid", "returncode")
    PID_FIELD_NUMBER: _ClassVar[int]
    RETURNCODE_FIELD_NUMBER: _ClassVar[int]
    pid: int
    returncode: int
    def __init__(self, pid: _Optional[int] = ..., returncode: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("initialize", "offer_request", "start_job", "shutdown", "ping", "inference_response", "start_inference", "zygote_start", "fork_template", "fork_job", "outcome_reported", "await_job", "ready", "offer_answer", "job_started", "job_ended", "pong", "log", "inference_request", "zygote_ready", "forked", "exited", "job_outcome")
    INITIALIZE_FIELD_NUMBER: _ClassVar[int]
    OFFER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    START_JOB_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    START_INFERENCE_FIELD_NUMBER: _ClassVar[int]
    ZYGOTE_START_FIELD_NUMBER: _ClassVar[int]
    FORK_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    FORK_JOB_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_REPORTED_FIELD_NUMBER: _ClassVar[int]
    AWAIT_JOB_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    OFFER_ANSWER_FIELD_NUMBER: _ClassVar[int]
    JOB_STARTED_FIELD_NUMBER: _ClassVar[int]
    JOB_ENDED_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ZYGOTE_READY_FIELD_NUMBER: _ClassVar[int]
    FORKED_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    JOB_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    initialize: Initialize
    offer_request: OfferRequest
    start_job: StartJob
    shutdown: Shutdown
    ping: Ping
    inference_response: InferenceResponse
    start_inference: StartInference
    zygote_start: ZygoteStart
    fork_template: ForkTemplate
    fork_job: ForkJob
    outcome_reported: OutcomeReported
    await_job: AwaitJob
    ready: Ready
    offer_answer: OfferAnswer
    job_started: JobStarted
    job_ended: JobEnded
    pong: Pong
    log: LogRecord
    inference_request: InferenceRequest
    zygote_ready: ZygoteReady
    forked: Forked
    exited: Exited
    job_outcome: JobOutcome
    def __init__(self, initialize: _Optional[_Union[Initialize, _Mapping]] = ..., offer_request: _Optional[_Union[OfferRequest, _Mapping]] = ..., start_job: _Optional[_Union[StartJob, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., inference_response: _Optional[_Union[InferenceResponse, _Mapping]] = ..., start_inference: _Optional[_Union[StartInference, _Mapping]] = ..., zygote_start: _Optional[_Union[ZygoteStart, _Mapping]] = ..., fork_template: _Optional[_Union[ForkTemplate, _Mapping]] = ..., fork_job: _Optional[_Union[ForkJob, _Mapping]] = ..., outcome_reported: _Optional[_Union[OutcomeReported, _Mapping]] = ..., await_job: _Optional[_Union[AwaitJob, _Mapping]] = ..., ready: _Optional[_Union[Ready, _Mapping]] = ..., offer_answer: _Optional[_Union[OfferAnswer, _Mapping]] = ..., job_started: _Optional[_Union[JobStarted, _Mapping]] = ..., job_ended: _Optional[_Union[JobEnded, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., log: _Optional[_Union[LogRecord, _Mapping]] = ..., inference_request: _Optional[_Union[InferenceRequest, _Mapping]] = ..., zygote_ready: _Optional[_Union[ZygoteReady, _Mapping]] = ..., forked: _Optional[_Union[Forked, _Mapping]] = ..., exited: _Optional[_Union[Exited, _Mapping]] = ..., job_outcome: _Optional[_Union[JobOutcome, _Mapping]] = ...) -> None: ...
