"""What every HTTP transport shares: the base-URL check, the warnings about sending the key
where others could read it, and the texts of their failures. The URL is parsed by httpx (a
dependency of every install), so this module loads httpx; it does no I/O."""

from __future__ import annotations

import socket
import ssl
import warnings
from typing import Final, TypeVar

import httpx

from ._base import CertificateRejected, NotSent
from ._url import is_loopback
from ._wire import ApiKey

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "InsecureTransportWarning",
    "check_base_url",
    "connect_failure",
    "join_headers",
    "say",
    "warn_if_insecure",
]

_E = TypeVar("_E", bound=BaseException)

DEFAULT_MAX_CONNECTIONS: Final = 100
"""The HTTP transports' pool: at most this many requests in flight and sockets open.

Measured with `benchmarks/http_cost.py` (1,000 tasks, 100 in flight, this 2-core machine): with
replies 50 ms late (`--latency 0.05`), a pool of 10 holds the engine to 170-180 requests/s
over either transport, 30 to about 530, and 100 reaches 570 over httpx (CPU-bound) and
1,470 over aiohttp; with no latency, CPU per request differs between pools of 10, 30 and
100 by less than the run-to-run noise (httpx 1.0-1.2 ms, aiohttp 0.38-0.48 ms), since both
pools find a connection in O(1). So the pool matches `Engine.solve_many`'s 100 in flight."""
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


def warn_if_insecure(base_url: str, host: str, verify: object, *, stacklevel: int) -> None:
    """Warn `InsecureTransportWarning` for plain http:// to a host that is not loopback,
    and for TLS verification turned off (`verify is False`)."""
    if base_url.startswith("http://") and not is_loopback(host):
        warnings.warn(
            f"plain http:// to {host}: the API key travels unencrypted; use https://",
            InsecureTransportWarning,
            stacklevel=stacklevel + 1,
        )
    if verify is False:
        warnings.warn(
            "TLS verification is off: the API key can be read by anyone on the path",
            InsecureTransportWarning,
            stacklevel=stacklevel + 1,
        )


def check_settings(
    base_url: str, *, verify: object, max_reply_bytes: int, max_connections: int
) -> tuple[str, str]:
    """What every HTTP transport checks when built: the base URL (see `check_base_url`),
    an insecure setup warned of (see `warn_if_insecure`, for the transport's caller), and a
    positive reply cap and pool size (else `ValueError`). Returns the URL and its host."""
    url = check_base_url(base_url)
    host = httpx.URL(url).host
    warn_if_insecure(url, host, verify, stacklevel=3)
    if max_reply_bytes < 1:
        raise ValueError("max_reply_bytes must be positive")
    if max_connections < 1:
        raise ValueError("max_connections must be positive")
    return url, host


def connect_failure(host: str, key: ApiKey, exc: BaseException) -> NotSent:
    """The `NotSent` for `exc`, which stopped a request before it left: `CertificateRejected`
    naming OpenSSL's reason if the certificate failed verification, a "cannot resolve host"
    text if DNS failed, else the exception's own text (the key redacted)."""
    certificate = _cause(exc, ssl.SSLCertVerificationError)
    if certificate is not None:
        reason = certificate.verify_message or str(certificate)
        return CertificateRejected(
            f"the TLS certificate of {host} failed verification ({reason}): "
            "check the base URL and the trusted certificates (verify=); not retried"
        )
    unresolved = _cause(exc, socket.gaierror)
    if unresolved is not None:
        return NotSent(
            f"cannot resolve host {host} ({unresolved.strerror or unresolved}): "
            "check the base URL and this machine's DNS and network"
        )
    return NotSent(say(key, type(exc).__name__, exc))


def join_headers(raw: list[tuple[str, str]]) -> dict[str, str]:
    """Header names (lower-cased) to values, a repeated header's values joined with ", "
    as httpx joins them."""
    headers: dict[str, str] = {}
    for name, value in raw:
        name = name.lower()
        seen = headers.get(name)
        headers[name] = value if seen is None else f"{seen}, {value}"
    return headers


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


def say(key: ApiKey, what: str, exc: BaseException) -> str:
    """`what: exc`, with the key redacted from the exception's text (which may quote the
    server's bytes) before anything else touches it."""
    return f"{what}: {key.redact(str(exc))}"
