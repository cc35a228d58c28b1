"""The wire: request and reply types, error codes, the `Transport` interface and its failures,
and the httpx transport. This layer imports nothing from `captchaflow.policies` or
`captchaflow.engine`."""

from ._base import BadReply, HandlerTransport, NotSent, SentNoReply, Transport, TransportError
from ._httpx import DEFAULT_BASE_URL, HttpxTransport, InsecureTransportWarning, check_base_url
from ._wire import ApiKey, ApiReply, ApiRequest, Endpoint, ErrorCode, JsonValue, TaskId

__all__ = [
    "DEFAULT_BASE_URL",
    "ApiKey",
    "ApiReply",
    "ApiRequest",
    "BadReply",
    "Endpoint",
    "ErrorCode",
    "HandlerTransport",
    "HttpxTransport",
    "InsecureTransportWarning",
    "JsonValue",
    "NotSent",
    "SentNoReply",
    "TaskId",
    "Transport",
    "TransportError",
    "check_base_url",
]
