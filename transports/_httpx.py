"""`HttpxTransport`: the real network, through one pooled `httpx.AsyncClient`."""

from __future__ import annotations

import ipaddress
import ssl
import warnings
from typing import Final

import anyio
import httpx

from ._base import BadReply, NotSent, SentNoReply
from ._wire import ApiReply, ApiRequest

__all__ = [
    "DEFAULT_BASE_URL",
    "HttpxTransport",
    "InsecureTransportWarning",
    "check_base_url",
    "is_loopback",
]

DEFAULT_BASE_URL: Final = "https://api.nocaptchaai.com"

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.LocalProtocolError)


def check_base_url(base_url: str) -> str:
    """Return `base_url` normalised (no trailing slash) if it is an absolute http(s) URL
    with a host and no query or fragment; raise `ValueError` saying why not otherwise."""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"not a URL: {base_url!r} ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
        raise ValueError(
            f"the base URL must look like https://host[:port][/path], got {base_url!r}"
        )
    return str(url).rstrip("/")


def is_loopback(host: str) -> bool:
    """True for `localhost` and addresses in 127.0.0.0/8 or ::1."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class InsecureTransportWarning(UserWarning):
    """Warned when a transport is set up to send the key where others could read it."""


class HttpxTransport:
    """Sends requests over HTTP(S) with explicit timeouts, a reply-size cap and no redirects.

    - `connect_timeout` and `read_timeout` bound each phase; `send(timeout=...)` also bounds
      the whole exchange.
    - A reply body longer than `max_reply_bytes` is refused after reading at most that many
      bytes (plus one chunk), and raises `BadReply`.
    - TLS verification is on; `verify=False` works but warns `InsecureTransportWarning`.
    - Redirects are never followed: a POST carrying the key goes only where it was aimed.
    """

    __slots__ = ("_client", "_max_reply_bytes", "_slots", "base_url")

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
        host = httpx.URL(self.base_url).host
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
        """POST the request and return the reply, or raise a `TransportError`."""
        if timeout is not None and timeout <= 0:
            raise NotSent("no time left to send the request")
        acquired = False
        with anyio.move_on_after(timeout) as scope:
            async with self._slots:
                acquired = True
                return await self._exchange(request)
        assert scope.cancelled_caught
        if not acquired:
            raise NotSent(f"no connection free within {timeout:.3g}s")
        raise SentNoReply(f"no reply within {timeout:.3g}s")

    async def _exchange(self, request: ApiRequest) -> ApiReply:
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
            ) as response:
                body = await self._read_capped(response)
                return ApiReply(response.status_code, body, dict(response.headers))
        except _NOT_SENT as exc:
            raise NotSent(f"{type(exc).__name__}: {exc}") from None
        except httpx.DecodingError as exc:
            raise BadReply(f"undecodable reply body: {exc}") from None
        except (httpx.HTTPError, OSError) as exc:
            raise SentNoReply(f"{type(exc).__name__}: {exc}") from None

    async def _read_capped(self, response: httpx.Response) -> bytes:
        cap = self._max_reply_bytes
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):  # decoding would inflate past the cap unseen
            raise BadReply(f"unrequested content-encoding {encoding!r}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise BadReply(f"reply of {declared} bytes exceeds the {cap}-byte cap")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > cap:
                raise BadReply(f"reply exceeds the {cap}-byte cap")
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
