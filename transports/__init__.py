"""The wire: request and reply types, error codes, the `Transport` interface and its failures,
the httpx transport, and the simulated service with its scenarios and its HTTP server.

This layer imports nothing from `captchaflow.policies` or `captchaflow.engine`."""

from ._base import (
    BadReply,
    CertificateRejected,
    HandlerTransport,
    NotSent,
    SentNoReply,
    Transport,
    TransportError,
)
from ._httpx import (
    DEFAULT_BASE_URL,
    HttpxTransport,
    InsecureTransportWarning,
    check_base_url,
    is_loopback,
)
from ._scenario import (
    AccountSpec,
    FaultKind,
    FaultRates,
    Outage,
    PlanState,
    Scenario,
    ScenarioError,
    ScheduledFault,
    TaskTypeSpec,
)
from ._sim import (
    Exchange,
    Fate,
    SimRequest,
    SimStats,
    SimTask,
    SimulatedAPI,
    SimulatedClock,
    SimulatedTransport,
)
from ._sim_server import SimulatorServer, serve_simulator, simulator_in_thread
from ._wire import ApiKey, ApiReply, ApiRequest, Endpoint, ErrorCode, JsonValue, TaskId

__all__ = [
    "DEFAULT_BASE_URL",
    "AccountSpec",
    "ApiKey",
    "ApiReply",
    "ApiRequest",
    "BadReply",
    "CertificateRejected",
    "Endpoint",
    "ErrorCode",
    "Exchange",
    "Fate",
    "FaultKind",
    "FaultRates",
    "HandlerTransport",
    "HttpxTransport",
    "InsecureTransportWarning",
    "JsonValue",
    "NotSent",
    "Outage",
    "PlanState",
    "Scenario",
    "ScenarioError",
    "ScheduledFault",
    "SentNoReply",
    "SimRequest",
    "SimStats",
    "SimTask",
    "SimulatedAPI",
    "SimulatedClock",
    "SimulatedTransport",
    "SimulatorServer",
    "TaskId",
    "TaskTypeSpec",
    "Transport",
    "TransportError",
    "check_base_url",
    "is_loopback",
    "serve_simulator",
    "simulator_in_thread",
]
