"""The wire: request and reply types, error codes, the `Transport` interface and its failures,
and the transports (`HttpxTransport`; `AiohttpTransport`, for asyncio, with the `aiohttp`
extra; `HandlerTransport`). The simulated service is a subpackage of its own, imported
explicitly: `captchaflow.transports.sim`.

This layer imports nothing from `captchaflow.policies` or `captchaflow.engine`."""

import typing

from captchaflow import _lazy

from ._base import (
    BadReply,
    CertificateRejected,
    HandlerTransport,
    NotSent,
    SentNoReply,
    Transport,
    TransportError,
)
from ._url import DEFAULT_BASE_URL, is_loopback
from ._wire import ApiKey, ApiReply, ApiRequest, Endpoint, ErrorCode, JsonValue, TaskId

if typing.TYPE_CHECKING:
    from ._aiohttp import AiohttpTransport
    from ._http import InsecureTransportWarning, check_base_url
    from ._httpx import HttpxTransport

# The HTTP transports load httpx, anyio and ssl (and aiohttp, an optional extra): imported
# on first use.
__getattr__, __dir__ = _lazy.lazy_exports(
    __name__,
    globals(),
    {
        "AiohttpTransport": "._aiohttp",
        "HttpxTransport": "._httpx",
        "InsecureTransportWarning": "._http",
        "check_base_url": "._http",
    },
)

__all__ = [
    "DEFAULT_BASE_URL",
    "AiohttpTransport",
    "ApiKey",
    "ApiReply",
    "ApiRequest",
    "BadReply",
    "CertificateRejected",
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
    "is_loopback",
]
