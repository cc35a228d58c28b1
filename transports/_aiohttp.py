"""`AiohttpTransport`: the real network through one pooled `aiohttp.ClientSession`, for
asyncio (aiohttp is the optional extra `captchaflow[aiohttp]`).

It keeps `HttpxTransport`'s promises, held to them by the same tests (tests/test_transports.py,
tests/test_resources.py and the fault matrix run against both): the same typed failures, size
cap, timeouts, redirects, TLS and proxy behaviour. It costs less CPU per request: aiohttp
parses HTTP in C (a third of httpx's CPU per request in `benchmarks/http_cost.py`)."""

from __future__ import annotations

import asyncio
import contextvars
import ssl
from typing import Final

import httpx

try:
    import aiohttp
except ImportError:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "AiohttpTransport needs aiohttp, which is not installed: "
        "pip install 'captchaflow[aiohttp]' (or use HttpxTransport, the default)"
    ) from None

from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from ._base import BadReply, NotSent, SentNoReply
from ._http import (
    DEFAULT_MAX_CONNECTIONS,
    check_settings,
    connect_failure,
    join_headers,
    say,
)
from ._url import DEFAULT_BASE_URL
from ._wire import ApiKey, ApiReply, ApiRequest, Endpoint

__all__ = ["AiohttpTransport"]

_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "Accept-Encoding": "identity",
}
_KEEPALIVE_SECONDS = 5.0
"""How long an idle connection is kept: httpx's default keep-alive expiry, so both
transports hold sockets alike."""


class AiohttpTransport:
    """Sends requests over HTTP(S) through aiohttp, on asyncio only, with explicit timeouts,
    a reply-size cap and no redirects: every promise of `HttpxTransport`, at less CPU.

    - `connect_timeout` bounds the TCP connect and TLS handshake, `read_timeout` each read;
      `send(timeout=...)` also bounds the whole exchange.
    - A reply body longer than `max_reply_bytes` is refused after reading at most that many
      bytes (plus one chunk), and raises `BadReply`; so is a compressed one.
    - TLS verification is on, with the trusted certificates `HttpxTransport` uses;
      `verify=False` works but warns `InsecureTransportWarning`, as does plain http:// to a
      host that is not loopback. A certificate that fails verification raises
      `CertificateRejected` (not retried).
    - Redirects are never followed, and no proxy or other setting is taken from the
      environment.
    - At most `max_connections` requests are in flight and as many sockets open; a request
      beyond them waits in the transport, and one whose deadline passes there is `NotSent`.
    - A failure before the connection it needed was open (refused, unresolvable host,
      connect or TLS handshake cut short by `connect_timeout` or by `timeout`) is
      `NotSent`; one after it `SentNoReply`.

    The session is opened on the first `send`, in the running event loop, which the
    transport then belongs to; under trio `send` raises `RuntimeError` (use
    `HttpxTransport`).
    """

    SENDS_END_BY_TIMEOUT: Final = True
    """Every send ends by its `timeout`: one deadline covers the whole exchange (see
    `Transport`)."""

    __slots__ = (
        "_connect_timeout",
        "_host",
        "_loop",
        "_max_connections",
        "_max_reply_bytes",
        "_read_timeout",
        "_session",
        "_slots",
        "_urls",
        "_verify",
        "base_url",
    )

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        max_reply_bytes: int = 1 << 20,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        self.base_url, self._host = check_settings(
            base_url,
            verify=verify,
            max_reply_bytes=max_reply_bytes,
            max_connections=max_connections,
        )
        self._max_reply_bytes = max_reply_bytes
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._verify = verify
        self._urls = {endpoint: self.base_url + endpoint.value for endpoint in Endpoint}
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None

    def _open(self) -> aiohttp.ClientSession:
        """The session, opened in the running event loop the first time."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "AiohttpTransport runs on asyncio only: use HttpxTransport under trio"
            ) from None
        if self._session is None:
            context = self._verify
            if not isinstance(context, ssl.SSLContext):  # as httpx builds it: certifi's CAs
                context = httpx.create_ssl_context(verify=context, trust_env=False)
            self._session = aiohttp.ClientSession(
                connector=_Connector(
                    limit=self._max_connections,
                    ssl=context,
                    keepalive_timeout=_KEEPALIVE_SECONDS,
                    resolver=aiohttp.ThreadedResolver(),  # the system's, as httpx's
                ),
                headers=_HEADERS,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._connect_timeout, sock_read=self._read_timeout
                ),
                auto_decompress=False,
                trust_env=False,
            )
            self._loop = loop
            # Requests beyond the pool wait here: a wait cut short here was not sent.
            self._slots = asyncio.Semaphore(self._max_connections)
        elif loop is not self._loop:
            raise RuntimeError("an AiohttpTransport is used in the event loop it first sent in")
        return self._session

    async def send(self, request: ApiRequest, *, timeout: float | None = None) -> ApiReply:
        """POST the request and return the reply, or raise a `TransportError`: `NotSent`
        when no byte of the request can have left, `SentNoReply` when it may have."""
        if timeout is not None and timeout <= 0:
            raise NotSent("no time left to send the request")
        session = self._open()
        slots = self._slots
        assert slots is not None  # opened with the session
        progress = _Progress()
        acquired = False
        deadline = asyncio.timeout(timeout)
        token = _PROGRESS.set(progress)
        try:
            async with deadline, slots:
                acquired = True
                return await self._exchange(session, request, progress)
        except TimeoutError as exc:
            if not deadline.expired():  # aiohttp's own: connect_timeout or read_timeout
                if progress.unsent:
                    raise connect_failure(self._host, request.key, exc) from None
                raise SentNoReply(say(request.key, type(exc).__name__, exc)) from None
            if not acquired:
                raise NotSent(f"no connection free within {timeout:.3g}s") from None
            if progress.unsent:
                raise NotSent(f"could not connect to {self._host} within {timeout:.3g}s") from None
            raise SentNoReply(f"no reply within {timeout:.3g}s") from None
        finally:
            _PROGRESS.reset(token)

    async def _exchange(
        self, session: aiohttp.ClientSession, request: ApiRequest, progress: _Progress
    ) -> ApiReply:
        try:
            async with session.post(
                self._urls[request.endpoint],
                data=request.body(),
                allow_redirects=False,
            ) as response:
                headers = join_headers(list(response.headers.items()))
                try:
                    body = await self._read_capped(response, headers, request.key)
                except BadReply:
                    response.close()  # not read whole: the connection cannot be reused
                    raise
                return ApiReply(response.status, body, headers)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise connect_failure(self._host, request.key, exc.certificate_error) from None
        except aiohttp.ClientConnectorError as exc:  # DNS and other TLS failures included
            raise connect_failure(self._host, request.key, exc) from None
        except TimeoutError:
            raise  # send() knows whose
        except (aiohttp.ClientError, OSError) as exc:
            if progress.unsent:
                raise connect_failure(self._host, request.key, exc) from None
            raise SentNoReply(say(request.key, type(exc).__name__, exc)) from None

    async def _read_capped(
        self, response: aiohttp.ClientResponse, headers: dict[str, str], key: ApiKey
    ) -> bytes:
        cap, status = self._max_reply_bytes, response.status
        encoding = headers.get("content-encoding")
        if encoding is not None:  # decoding would inflate past the cap unseen
            encoding = key.redact(encoding).strip().lower()
            if encoding not in ("", "identity"):
                raise BadReply(f"unrequested content-encoding {encoding!r}", status=status)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise BadReply(f"reply of {declared} bytes exceeds the {cap}-byte cap", status=status)
        content = response.content
        chunks: list[bytes] = []
        size = 0
        while chunk := await content.readany():
            size += len(chunk)
            if size > cap:
                raise BadReply(f"reply exceeds the {cap}-byte cap", status=status)
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()  # and a later send fails: the session is closed

    async def __aenter__(self) -> AiohttpTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AiohttpTransport({self.base_url!r})"


class _Progress:
    """How far one exchange got: `unsent` is True while the request waits for its
    connection (a pooled one, or a new one being connected, TLS included), before any byte
    of it can have been written."""

    __slots__ = ("unsent",)

    def __init__(self) -> None:
        self.unsent = False


_PROGRESS: contextvars.ContextVar[_Progress] = contextvars.ContextVar("captchaflow_progress")
"""The exchange the running task is sending: aiohttp connects in the caller's task."""


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, telling the exchange under way when it has its connection.

    (aiohttp's trace signals would tell as much, at several times the CPU per request.)"""

    async def connect(
        self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        """aiohttp's `connect`, with the exchange's `unsent` true while it runs."""
        progress = _PROGRESS.get(None)
        if progress is None:  # not one of ours (no such caller today): nothing to note
            return await super().connect(req, traces, timeout)
        progress.unsent = True
        connection = await super().connect(req, traces, timeout)
        progress.unsent = False
        return connection
