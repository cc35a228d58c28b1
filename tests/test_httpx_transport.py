"""`HttpxTransport` over real loopback sockets: replies, the size cap, timeouts, refusals,
redirects and TLS settings."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from captchaflow.transports import (
    ApiKey,
    ApiRequest,
    BadReply,
    HttpxTransport,
    InsecureTransportWarning,
    NotSent,
    SentNoReply,
    check_base_url,
)

KEY = ApiKey("sk-transport-SECRET")
REQUEST = ApiRequest.create_task(KEY, {"type": "ImageToTextTask", "body": "x"})

Responder = Callable[[bytes, socket.socket], None]


def http(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A raw HTTP/1.1 response with a Content-Length."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_request(sock: socket.socket) -> bytes:
    """Read one HTTP request (headers and Content-Length body) from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@contextmanager
def raw_server(respond: Responder) -> Iterator[str]:
    """Serve on 127.0.0.1; `respond(request_bytes, socket)` writes whatever it likes."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            respond(read_request(sock), sock)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.anyio
async def test_posts_json_with_key_and_returns_reply() -> None:
    """The request is a JSON POST to base_url + endpoint carrying clientKey; headers lower-cased."""
    seen: list[bytes] = []

    def respond(request: bytes, sock: socket.socket) -> None:
        seen.append(request)
        sock.sendall(http(200, b'{"taskId": 1}', {"Retry-After": "3"}))

    with raw_server(respond) as url:
        async with HttpxTransport(url + "/") as transport:
            reply = await transport.send(REQUEST)
    assert reply.status == 200
    assert reply.body == b'{"taskId": 1}'
    assert reply.headers["retry-after"] == "3"
    assert seen[0].startswith(b"POST /createTask HTTP/1.1")
    assert b'"clientKey":"sk-transport-SECRET"' in seen[0]
    assert b"content-type: application/json" in seen[0].lower()


@pytest.mark.anyio
async def test_oversized_declared_reply_refused() -> None:
    """A Content-Length above the cap raises BadReply without reading the body."""

    def respond(request: bytes, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000)

    with raw_server(respond) as url:
        async with HttpxTransport(url, max_reply_bytes=1024) as transport:
            with pytest.raises(BadReply, match="cap"):
                await transport.send(REQUEST)


@pytest.mark.anyio
async def test_oversized_chunked_reply_refused() -> None:
    """A chunked reply growing past the cap raises BadReply once it passes the cap."""

    def respond(request: bytes, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"y" * 4096
        try:
            for _ in range(100):
                sock.sendall(b"1000\r\n" + chunk + b"\r\n")
        except OSError:
            return

    with raw_server(respond) as url:
        async with HttpxTransport(url, max_reply_bytes=10_000) as transport:
            with pytest.raises(BadReply, match="cap"):
                await transport.send(REQUEST)


@pytest.mark.anyio
async def test_connection_refused_is_not_sent() -> None:
    """A refused connection raises NotSent (nothing reached the service)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    async with HttpxTransport(f"http://127.0.0.1:{port}") as transport:
        with pytest.raises(NotSent):
            await transport.send(REQUEST)


@pytest.mark.anyio
async def test_read_timeout_is_sent_no_reply() -> None:
    """A server that reads the request and never answers gives SentNoReply."""

    def respond(request: bytes, sock: socket.socket) -> None:
        time.sleep(1.0)

    with raw_server(respond) as url:
        async with HttpxTransport(url, read_timeout=0.2) as transport:
            with pytest.raises(SentNoReply):
                await transport.send(REQUEST)


@pytest.mark.anyio
async def test_overall_timeout_is_sent_no_reply() -> None:
    """`send(timeout=...)` bounds the whole exchange, even a slowly dripping reply."""

    def respond(request: bytes, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
        try:
            for _ in range(50):
                sock.sendall(b"x")
                time.sleep(0.05)
        except OSError:
            return

    with raw_server(respond) as url:
        async with HttpxTransport(url, read_timeout=5) as transport:
            started = time.monotonic()
            with pytest.raises(SentNoReply, match="no reply within"):
                await transport.send(REQUEST, timeout=0.3)
            assert time.monotonic() - started < 1.5


@pytest.mark.anyio
async def test_closed_without_reply_is_sent_no_reply() -> None:
    """A connection closed after the request, with no reply, gives SentNoReply."""

    def respond(request: bytes, sock: socket.socket) -> None:
        sock.close()

    with raw_server(respond) as url:
        async with HttpxTransport(url) as transport:
            with pytest.raises(SentNoReply):
                await transport.send(REQUEST)


@pytest.mark.anyio
async def test_no_time_left_is_not_sent() -> None:
    """A send with no time left raises NotSent without touching the network."""
    async with HttpxTransport("http://127.0.0.1:9") as transport:
        with pytest.raises(NotSent):
            await transport.send(REQUEST, timeout=0)


@pytest.mark.anyio
async def test_redirect_not_followed() -> None:
    """A 307 redirect is returned as a reply, not followed: the key goes nowhere else."""
    hits: list[bytes] = []

    def respond(request: bytes, sock: socket.socket) -> None:
        hits.append(request)
        sock.sendall(http(307, b"", {"Location": "http://127.0.0.1:9/steal"}))

    with raw_server(respond) as url:
        async with HttpxTransport(url) as transport:
            reply = await transport.send(REQUEST)
    assert reply.status == 307
    assert len(hits) == 1


def test_verify_false_warns() -> None:
    """Turning TLS verification off is possible but never silent."""
    with pytest.warns(InsecureTransportWarning):
        HttpxTransport("https://example.invalid", verify=False)


@pytest.mark.parametrize(
    "url", ["ftp://host", "not a url", "https://", "https://h/?q=1", "//host/x", ""]
)
def test_bad_base_url_rejected(url: str) -> None:
    """A base URL that is not absolute http(s) with a host raises ValueError."""
    with pytest.raises(ValueError, match="URL"):
        check_base_url(url)


def test_base_url_normalised() -> None:
    """A trailing slash is dropped; a path prefix is kept."""
    assert check_base_url("https://api.example.com/") == "https://api.example.com"
    assert check_base_url("http://127.0.0.1:8080/v1/") == "http://127.0.0.1:8080/v1"


def test_repr_has_no_key() -> None:
    """The transport's and the request's reprs never show the key."""
    assert "SECRET" not in repr(REQUEST)
    assert "SECRET" not in repr(HttpxTransport("https://api.example.com"))


@pytest.mark.parametrize("url", ["http://api.example.com", "http://192.0.2.10:8080"])
def test_plain_http_to_a_remote_host_warns(url: str) -> None:
    """http:// to anything but loopback warns that the key travels unencrypted."""
    with pytest.warns(InsecureTransportWarning, match="unencrypted"):
        HttpxTransport(url)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080", "http://localhost", "http://[::1]:9", "https://api.example.com"],
)
def test_loopback_or_https_does_not_warn(url: str) -> None:
    """Loopback http:// (tests, serve-sim) and https:// construct without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HttpxTransport(url)
