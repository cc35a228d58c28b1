"""`HttpxTransport`: the real network, through one `httpx.AsyncClient` over a pool of httpcore
connections that costs O(1) per request (`ConnectionStack`)."""

from __future__ import annotations

import contextlib
import ssl
from typing import Any, Final

import anyio
import httpx

from ._base import BadReply, NotSent, SentNoReply
from ._http import (
    DEFAULT_MAX_CONNECTIONS,
    InsecureTransportWarning,
    check_base_url,
    check_settings,
    connect_failure,
    join_headers,
    say,
)
from ._url import DEFAULT_BASE_URL, is_loopback
from ._wire import ApiKey, ApiReply, ApiRequest, Endpoint

__all__ = [
    "DEFAULT_BASE_URL",
    "HttpxTransport",
    "InsecureTransportWarning",
    "check_base_url",
    "is_loopback",
]

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.LocalProtocolError)
_CONNECTING: Final = ("connection.connect_tcp.started", "connection.start_tls.started")
_SENDING_SUFFIX: Final = ".send_request_headers.started"  # http11. or http2.


class HttpxTransport:
    """Sends requests over HTTP(S) with explicit timeouts, a reply-size cap and no redirects.

    - `connect_timeout` and `read_timeout` bound each phase; `send(timeout=...)` also bounds
      the whole exchange.
    - A reply body longer than `max_reply_bytes` is refused after reading at most that many
      bytes (plus one chunk), and raises `BadReply`.
    - TLS verification is on; `verify=False` works but warns `InsecureTransportWarning`. A
      certificate that fails verification raises `CertificateRejected` (not retried).
    - Redirects are never followed: a POST carrying the key goes only where it was aimed.
    - A failure before the first byte of the request was written (refused, unresolvable
      host, connect or TLS handshake cut short by `connect_timeout` or by `timeout`) is
      `NotSent`; one after it is `SentNoReply`.
    - At most `max_connections` requests are in flight and as many sockets open (see
      `DEFAULT_MAX_CONNECTIONS` for the default's figures); a request beyond them waits in
      the transport, and one whose deadline passes there is `NotSent`. Finding a pooled
      connection costs O(1) whatever the pool size (`ConnectionStack`).
    - Nothing is read from the environment: no proxy, no certificate bundle.
    """

    SENDS_END_BY_TIMEOUT: Final = True
    """Every send ends by its `timeout`: one deadline covers the whole exchange (see
    `Transport`)."""

    __slots__ = ("_client", "_host", "_max_reply_bytes", "_slots", "_urls", "base_url")

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
        # Parsed once: httpx would parse the URL string of every request again.
        self._urls = {endpoint: httpx.URL(self.base_url + endpoint.value) for endpoint in Endpoint}
        # Requests beyond the pool wait here, so the pool holds at most max_connections
        # connections; and a wait cut short here was not sent.
        self._slots = anyio.Semaphore(max_connections)
        # Imported here, as httpx imports httpcore: only a transport built needs it.
        from ._httpx_pool import ConnectionStack

        self._client = httpx.AsyncClient(
            # The client's own headers: a request that brings none skips httpx's merge.
            headers={
                "content-type": "application/json",
                "accept": "application/json",
                "accept-encoding": "identity",
            },
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            transport=ConnectionStack(verify=verify),
            follow_redirects=False,
            trust_env=False,
        )

    async def send(self, request: ApiRequest, *, timeout: float | None = None) -> ApiReply:
        """POST the request and return the reply, or raise a `TransportError`: `NotSent`
        when no byte of the request can have left, `SentNoReply` when it may have."""
        if timeout is not None and timeout <= 0:
            raise NotSent("no time left to send the request")
        acquired = False
        progress = _Progress()
        with anyio.move_on_after(timeout) as scope:
            try:
                async with self._slots:
                    acquired = True
                    return await self._exchange(request, progress)
            except BaseException:  # the deadline, a cancellation from outside, a failure
                await progress.release()
                raise
        assert scope.cancelled_caught
        if not acquired:
            raise NotSent(f"no connection free within {timeout:.3g}s")
        if progress.unsent:
            raise NotSent(f"could not connect to {self._host} within {timeout:.3g}s")
        raise SentNoReply(f"no reply within {timeout:.3g}s")

    async def _exchange(self, request: ApiRequest, progress: _Progress) -> ApiReply:
        client = self._client
        try:
            outgoing = client.build_request(
                "POST",
                self._urls[request.endpoint],
                content=request.body(),
                extensions={"trace": progress.trace},
            )
            response = await client.send(outgoing, stream=True)
            try:
                headers = join_headers(response.headers.multi_items())
                body = await self._read_capped(response, headers, request.key)
            finally:
                await response.aclose()
            return ApiReply(response.status_code, body, headers)
        except httpx.DecodingError as exc:
            raise BadReply(say(request.key, "undecodable reply body", exc)) from None
        except (httpx.HTTPError, OSError) as exc:
            if isinstance(exc, _NOT_SENT) or progress.unsent:
                raise connect_failure(self._host, request.key, exc) from None
            raise SentNoReply(say(request.key, type(exc).__name__, exc)) from None

    async def _read_capped(
        self, response: httpx.Response, headers: dict[str, str], key: ApiKey
    ) -> bytes:
        cap, status = self._max_reply_bytes, response.status_code
        encoding = headers.get("content-encoding")
        if encoding is not None:  # decoding would inflate past the cap unseen
            encoding = key.redact(encoding).strip().lower()
            if encoding not in ("", "identity"):
                raise BadReply(f"unrequested content-encoding {encoding!r}", status=status)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise BadReply(f"reply of {declared} bytes exceeds the {cap}-byte cap", status=status)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > cap:
                raise BadReply(f"reply exceeds the {cap}-byte cap", status=status)
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()

    async def __aenter__(self) -> HttpxTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"HttpxTransport({self.base_url!r})"


class _Progress:
    """How far one exchange got, from httpcore's trace events: `unsent` is True only when
    the exchange was seen opening a connection and not yet seen writing the request (no
    event at all proves nothing, so it is then False: the safe answer is "may be sent")."""

    __slots__ = ("_handshaking", "connecting", "sending")

    def __init__(self) -> None:
        self.connecting = False
        self.sending = False
        self._handshaking: Any = None
        """The TCP stream while its TLS handshake runs: httpcore does not own it yet."""

    @property
    def unsent(self) -> bool:
        """True while the request certainly has not started going out."""
        return self.connecting and not self.sending

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's `trace` extension: notes connecting and the first write of the request."""
        if self.sending:  # nothing after it changes the answer
            return
        if event in _CONNECTING:
            self.connecting = True
        elif event == "connection.connect_tcp.complete":
            self._handshaking = info.get("return_value")
        elif event == "connection.start_tls.complete":  # httpcore owns the TLS stream now
            self._handshaking = None
        elif event == "connection.start_tls.failed" and isinstance(
            info.get("exception"), Exception
        ):
            self._handshaking = None  # httpcore closed it (it does for all but cancellation)
        elif event.endswith(_SENDING_SUFFIX):
            self.sending = True

    async def release(self) -> None:
        """Close the TCP connection of a TLS handshake that was cancelled (by the deadline or
        from outside): httpcore closes it on any failure but a cancellation, which would leave
        the socket open until the garbage collector finds it. Otherwise does nothing."""
        stream, self._handshaking = self._handshaking, None
        if stream is None or not hasattr(stream, "aclose"):
            return
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await stream.aclose()  # a half-open socket: nothing more to do if closing fails
