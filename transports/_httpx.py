"""`HttpxTransport`: the real network, through one pooled `httpx.AsyncClient`."""

from __future__ import annotations

import contextlib
import socket
import ssl
import warnings
from typing import Any, Final, TypeVar

import anyio
import httpx

from ._base import BadReply, CertificateRejected, NotSent, SentNoReply
from ._url import DEFAULT_BASE_URL, is_loopback
from ._wire import ApiKey, ApiReply, ApiRequest

__all__ = [
    "DEFAULT_BASE_URL",
    "HttpxTransport",
    "InsecureTransportWarning",
    "check_base_url",
    "is_loopback",
]

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.LocalProtocolError)
_E = TypeVar("_E", bound=BaseException)
_CONNECTING: Final = ("connection.connect_tcp.started", "connection.start_tls.started")
_SENDING_SUFFIX: Final = ".send_request_headers.started"  # http11. or http2.


_URL_SHAPE = "the base URL must look like https://host[:port][/path]"


def check_base_url(base_url: str) -> str:
    """Return `base_url` normalised (no trailing slash) if it is an absolute http(s) URL
    with a host, no user name or password, a port in 1..65535 if it has one, no query or
    fragment and no whitespace or control character; raise `ValueError` saying why not
    otherwise. The message never repeats the URL: it may hold a password."""
    if not isinstance(base_url, str) or not base_url.isprintable() or " " in base_url:
        raise ValueError(f"{_URL_SHAPE}, without spaces or control characters")
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL:
        raise ValueError(f"not a URL: {_URL_SHAPE}") from None
    if url.userinfo:
        # httpx would send it as Basic auth, and every repr and log would show the password.
        raise ValueError("the base URL must not hold a user name or password")
    if url.port is not None and not 1 <= url.port <= 65_535:
        raise ValueError("the base URL's port must be in 1..65535")
    if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
        raise ValueError(_URL_SHAPE)
    return str(url).rstrip("/")


class InsecureTransportWarning(UserWarning):
    """Warned when a transport is set up to send the key where others could read it."""


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
    """

    __slots__ = ("_client", "_host", "_max_reply_bytes", "_slots", "base_url")

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        max_reply_bytes: int = 1 << 20,
        max_connections: int = 100,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        self.base_url = check_base_url(base_url)
        host = self._host = httpx.URL(self.base_url).host
        if self.base_url.startswith("http://") and not is_loopback(host):
            warnings.warn(
                f"plain http:// to {host}: the API key travels unencrypted; use https://",
                InsecureTransportWarning,
                stacklevel=2,
            )
        if max_reply_bytes < 1:
            raise ValueError("max_reply_bytes must be positive")
        if verify is False:
            warnings.warn(
                "TLS verification is off: the API key can be read by anyone on the path",
                InsecureTransportWarning,
                stacklevel=2,
            )
        self._max_reply_bytes = max_reply_bytes
        # Requests beyond the pool wait here, in O(1), not in httpcore's queue (rescanned
        # on every change: O(n^2) for n waiting); and a wait cut short here was not sent.
        self._slots = anyio.Semaphore(max_connections)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            verify=verify,
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
        url = self.base_url + request.endpoint.value
        try:
            async with self._client.stream(
                "POST",
                url,
                content=request.body(),
                headers={
                    "content-type": "application/json",
                    "accept": "application/json",
                    "accept-encoding": "identity",
                },
                extensions={"trace": progress.trace},
            ) as response:
                body = await self._read_capped(response, request.key)
                return ApiReply(response.status_code, body, dict(response.headers))
        except httpx.DecodingError as exc:
            raise BadReply(_say(request.key, "undecodable reply body", exc)) from None
        except (httpx.HTTPError, OSError) as exc:
            raise self._failure(request.key, exc, progress) from None

    def _failure(self, key: ApiKey, exc: Exception, progress: _Progress) -> NotSent | SentNoReply:
        """The typed failure for `exc`, raised by httpx (or the OS) during an exchange."""
        if isinstance(exc, _NOT_SENT) or progress.unsent:
            certificate = _cause(exc, ssl.SSLCertVerificationError)
            if certificate is not None:
                reason = certificate.verify_message or str(certificate)
                return CertificateRejected(
                    f"the TLS certificate of {self._host} failed verification ({reason}): "
                    "check the base URL and the trusted certificates (verify=); not retried"
                )
            unresolved = _cause(exc, socket.gaierror)
            if unresolved is not None:
                return NotSent(
                    f"cannot resolve host {self._host} ({unresolved.strerror or unresolved}): "
                    "check the base URL and this machine's DNS and network"
                )
            return NotSent(_say(key, type(exc).__name__, exc))
        return SentNoReply(_say(key, type(exc).__name__, exc))

    async def _read_capped(self, response: httpx.Response, key: ApiKey) -> bytes:
        cap, status = self._max_reply_bytes, response.status_code
        raw_encoding = response.headers.get("content-encoding", "identity")
        encoding = key.redact(raw_encoding).strip().lower()
        if encoding not in ("", "identity"):  # decoding would inflate past the cap unseen
            raise BadReply(f"unrequested content-encoding {encoding!r}", status=status)
        declared = response.headers.get("content-length", "")
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


def _cause(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of type `kind` in `exc`'s chain of causes and contexts."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _say(key: ApiKey, what: str, exc: Exception) -> str:
    """`what: exc`, with the key redacted from the exception's text (which may quote the
    server's bytes) before anything else touches it."""
    return f"{what}: {key.redact(str(exc))}"
