"""The `Transport` interface, its typed failures, and a transport built from one handler.

A transport moves one `ApiRequest` to the service and brings back one `ApiReply`. When it
cannot, it raises exactly one of three failures, which tell the engine what the service may
have seen:

- `NotSent`: the request never left (connection refused, DNS failure, connect timeout, or
  the deadline cut the connect short). Safe to send again; nothing was created or billed.
  Its subclass `CertificateRejected` says sending again cannot help: the server's TLS
  certificate failed verification, a configuration error the engine fails on at once.
- `SentNoReply`: the request may have reached the service, but no complete reply came back
  (read timeout, connection reset). For createTask this is *ambiguous*: the task may exist
  and be billed.
- `BadReply`: the service answered with something that is not a usable HTTP reply (too
  large, an encoding we did not ask for, broken framing). Its `status` is the reply's HTTP
  status when one was read: a createTask answered 2xx may have created (and billed) a task.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from ._wire import ApiReply, ApiRequest

__all__ = [
    "BadReply",
    "CertificateRejected",
    "HandlerTransport",
    "NotSent",
    "SentNoReply",
    "Transport",
    "TransportError",
]


class TransportError(Exception):
    """Base of the failures a transport may raise; `sent` says whether the request may have
    reached the service."""

    sent: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotSent(TransportError):
    """The request certainly did not reach the service."""

    sent = False


class CertificateRejected(NotSent):
    """The server's TLS certificate failed verification: nothing was sent, and sending
    again cannot succeed until the base URL or the trusted certificates change."""


class SentNoReply(TransportError):
    """The request may have reached the service, and no complete reply arrived."""


class BadReply(TransportError):
    """The service answered, but not with a usable reply (oversized, wrongly encoded or
    broken framing); `status` is the reply's HTTP status if it was read, else None."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@runtime_checkable
class Transport(Protocol):
    """Moves requests to the service. Implementations raise only `TransportError`s.

    `timeout` bounds the whole exchange in seconds when given; a transport that cannot tell
    whether the request left when the time runs out raises `SentNoReply`.

    The engine's driver cuts off a send still running `SEND_GRACE` after its timeout. A
    transport class that sets `SENDS_END_BY_TIMEOUT = True` itself (not inherited) promises
    that every send ends by its `timeout` on its own, and is spared that cut-off (both HTTP
    transports do, and their tests hold them to it).
    """

    async def send(self, request: ApiRequest, *, timeout: float | None = None) -> ApiReply:
        """Send `request` and return the service's reply."""
        ...

    async def aclose(self) -> None:
        """Release connections and other resources; the transport is unusable afterwards."""
        ...


Handler = Callable[[ApiRequest], ApiReply | Awaitable[ApiReply]]


class HandlerTransport:
    """A transport that answers every request by calling `handler(request)`.

    The handler may be a plain or an async function, return an `ApiReply`, or raise a
    `TransportError` to simulate a network failure. Useful for tests and for embedding a
    service model in-process.
    """

    __slots__ = ("_handler", "requests_sent")

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests_sent = 0

    async def send(self, request: ApiRequest, *, timeout: float | None = None) -> ApiReply:
        """Return what the handler returns for `request`."""
        self.requests_sent += 1
        reply = self._handler(request)
        if inspect.isawaitable(reply):
            reply = await reply
        return reply

    async def aclose(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"HandlerTransport({self._handler!r})"
