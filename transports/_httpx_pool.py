"""`ConnectionStack`: the connection pool under `HttpxTransport`'s `httpx.AsyncClient`.

httpcore's own pool (`httpcore.AsyncConnectionPool`) rescans every connection whenever a
request starts or ends, asking each idle one whether the server closed it (a `poll()` call
through anyio's socket attributes) and counting the idle ones once per idle one: O(n) per
request and O(n^2) in idle connections. With 100 connections that scan was 40% of the CPU
of a request (`python benchmarks/http_cost.py --profile engine+httpx`), and a hand-written httpx
client pays it too.

This pool keeps the idle connections on a stack. A request takes the most recently used
one (asking only it whether it is still good) and puts it back when its reply is closed;
each request also retires the oldest idle connection once its keep-alive has run out. That
is O(1) per request whatever the pool size. The connections are httpcore's own
(`httpcore.AsyncHTTPConnection`): connecting, TLS, HTTP/1.1, keep-alive and the `trace`
extension's events are unchanged, and httpcore's failures reach the client as the httpx
exceptions `httpx.AsyncHTTPTransport` maps them to.

The caller bounds how many requests run at once (`HttpxTransport`'s semaphore); the pool
opens a connection whenever none is idle, so it holds at most that many.
"""

from __future__ import annotations

import collections
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from typing import Final

import anyio
import httpcore
import httpx

__all__ = ["ConnectionStack"]

_HTTPX_ERRORS: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    # Subclasses first: the first match is taken (as httpx's own map_httpcore_exceptions).
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _as_httpx(exc: BaseException) -> httpx.TransportError | None:
    """The httpx exception for httpcore's `exc`; None if `exc` is not one of httpcore's."""
    for core, mapped in _HTTPX_ERRORS:
        if isinstance(exc, core):
            return mapped(str(exc))
    return None


class ConnectionStack(httpx.AsyncBaseTransport):
    """An httpx transport whose idle connections wait on a stack: O(1) per request.

    `verify` is httpx's (True: certifi's certificates; False; or an `ssl.SSLContext`), and
    nothing is read from the environment; idle connections are closed after
    `keepalive_expiry` seconds, httpx's default 5.
    """

    def __init__(self, *, verify: bool | ssl.SSLContext, keepalive_expiry: float = 5.0) -> None:
        self._ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        self._keepalive_expiry = keepalive_expiry
        self._idle: collections.deque[httpcore.AsyncHTTPConnection] = collections.deque()
        self._open: set[httpcore.AsyncHTTPConnection] = set()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` over an idle connection, or a new one if none is idle."""
        url = request.url
        outgoing = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        connection = await self._take(outgoing.url.origin)
        try:
            response = await connection.handle_async_request(outgoing)
        except BaseException as exc:
            await self._give_back(connection)
            mapped = _as_httpx(exc)
            if mapped is None:
                raise
            raise mapped from exc
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ReleasingStream(response.stream, self, connection),
            extensions=response.extensions,
        )

    async def _take(self, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        """The most recently used idle connection that is still good, else a new one."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if (
                connection.can_handle_request(origin)
                and connection.is_available()
                and not connection.has_expired()
            ):
                if idle and idle[0].has_expired():  # one per request keeps the stack fresh
                    await self._close(idle.popleft())
                return connection
            await self._close(connection)
        connection = httpcore.AsyncHTTPConnection(
            origin=origin, ssl_context=self._ssl_context, keepalive_expiry=self._keepalive_expiry
        )
        self._open.add(connection)
        return connection

    async def _give_back(self, connection: httpcore.AsyncHTTPConnection) -> None:
        """Keep `connection` for the next request if it is idle (and the pool open), else
        close it."""
        if connection.is_idle() and not self._closed:
            self._idle.append(connection)
        else:  # closed by httpcore (a failure, a reply not read whole) or unusable
            await self._close(connection)

    async def _close(self, connection: httpcore.AsyncHTTPConnection) -> None:
        self._open.discard(connection)
        with anyio.CancelScope(shield=True):
            await connection.aclose()

    async def aclose(self) -> None:
        """Close every connection, idle or not; one given back later is closed then."""
        self._closed = True
        self._idle.clear()
        while self._open:
            await self._close(next(iter(self._open)))


class _ReleasingStream(httpx.AsyncByteStream):
    """A reply's body: httpcore's stream, its failures as httpx's, and its connection given
    back to the pool once the reply is closed."""

    __slots__ = ("_body", "_connection", "_pool", "_released", "_stream")

    def __init__(
        self,
        stream: AsyncIterable[bytes],
        pool: ConnectionStack,
        connection: httpcore.AsyncHTTPConnection,
    ) -> None:
        self._stream = stream
        self._body: AsyncIterator[bytes] | None = None
        self._pool = pool
        self._connection = connection
        self._released = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        # An iterator object, not an async generator: one abandoned mid-body (a reply over
        # the cap) leaves no generator for trio's finalizer to warn about.
        self._body = self._stream.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        assert self._body is not None, "iterated before __aiter__"
        try:
            return await self._body.__anext__()
        except Exception as exc:  # StopAsyncIteration included: it maps to nothing
            mapped = _as_httpx(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        """Close httpcore's stream (which readies or closes the connection), then give the
        connection back to the pool."""
        try:
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                await aclose()
        except Exception as exc:
            mapped = _as_httpx(exc)
            if mapped is None:
                raise
            raise mapped from exc
        finally:
            if not self._released:
                self._released = True
                await self._pool._give_back(self._connection)
