"""The HTTP transports over real loopback sockets: replies, the size cap, timeouts, refusals,
redirects and TLS settings (against a TLS server whose self-signed certificate is made with
`openssl` at test time).

Every test that takes `transport_type` runs against each transport (`transport_kinds`):
`HttpxTransport` under asyncio and trio, `AiohttpTransport` under asyncio, so both keep the
same promises."""

from __future__ import annotations

import contextlib
import gzip
import pathlib
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import anyio
import pytest
from transport_kinds import TransportType

from captchaflow.engine import Engine, HttpStatusError, PolicyError
from captchaflow.engine.cli import exit_code_for
from captchaflow.transports import (
    DEFAULT_BASE_URL,
    AiohttpTransport,
    ApiKey,
    ApiRequest,
    BadReply,
    CertificateRejected,
    InsecureTransportWarning,
    NotSent,
    SentNoReply,
    check_base_url,
)

pytestmark = pytest.mark.filterwarnings(
    # As in test_resources and test_fault_matrix: a reply abandoned mid-body (over the cap)
    # leaves httpcore's body generator to trio's finalizer, which warns (the connection
    # itself is closed). Which generator is collected last, httpx's (ignored in pyproject)
    # or httpcore's, varies from run to run.
    "ignore:Async generator 'httpcore.*was garbage collected:ResourceWarning"
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


@contextlib.contextmanager
def raw_server(respond: Responder) -> Iterator[str]:
    """Serve on 127.0.0.1; `respond(request_bytes, socket)` writes whatever it likes."""
    with tcp_server(lambda sock: respond(read_request(sock), sock)) as url:
        yield url


@contextlib.contextmanager
def tcp_server(handle: Callable[[socket.socket], None]) -> Iterator[str]:
    """Serve on 127.0.0.1; `handle(socket)` is given each accepted connection as it is."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            handle(self.request)

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
async def test_posts_json_with_key_and_returns_reply(transport_type: TransportType) -> None:
    """The request is a JSON POST to base_url + endpoint carrying clientKey; headers lower-cased."""
    seen: list[bytes] = []

    def respond(request: bytes, sock: socket.socket) -> None:
        seen.append(request)
        sock.sendall(http(200, b'{"taskId": 1}', {"Retry-After": "3"}))

    with raw_server(respond) as url:
        async with transport_type(url + "/") as transport:
            reply = await transport.send(REQUEST)
    assert reply.status == 200
    assert reply.body == b'{"taskId": 1}'
    assert reply.headers["retry-after"] == "3"
    assert seen[0].startswith(b"POST /createTask HTTP/1.1")
    assert b'"clientKey":"sk-transport-SECRET"' in seen[0]
    assert b"content-type: application/json" in seen[0].lower()


@pytest.mark.anyio
async def test_oversized_declared_reply_refused(transport_type: TransportType) -> None:
    """A Content-Length above the cap raises BadReply without reading the body."""

    def respond(request: bytes, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000)

    with raw_server(respond) as url:
        async with transport_type(url, max_reply_bytes=1024) as transport:
            with pytest.raises(BadReply, match="cap"):
                await transport.send(REQUEST)


@pytest.mark.anyio
async def test_oversized_chunked_reply_refused(transport_type: TransportType) -> None:
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
        async with transport_type(url, max_reply_bytes=10_000) as transport:
            with pytest.raises(BadReply, match="cap"):
                await transport.send(REQUEST)


@pytest.mark.anyio
async def test_connection_refused_is_not_sent(transport_type: TransportType) -> None:
    """A refused connection raises NotSent (nothing reached the service)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    async with transport_type(f"http://127.0.0.1:{port}") as transport:
        with pytest.raises(NotSent):
            await transport.send(REQUEST)


@pytest.mark.anyio
async def test_read_timeout_is_sent_no_reply(transport_type: TransportType) -> None:
    """A server that reads the request and never answers gives SentNoReply."""

    def respond(request: bytes, sock: socket.socket) -> None:
        time.sleep(1.0)

    with raw_server(respond) as url:
        async with transport_type(url, read_timeout=0.2) as transport:
            with pytest.raises(SentNoReply):
                await transport.send(REQUEST)


@pytest.mark.anyio
async def test_overall_timeout_is_sent_no_reply(transport_type: TransportType) -> None:
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
        async with transport_type(url, read_timeout=5) as transport:
            started = time.monotonic()
            with pytest.raises(SentNoReply, match="no reply within"):
                await transport.send(REQUEST, timeout=0.3)
            assert time.monotonic() - started < 1.5


@pytest.mark.anyio
async def test_closed_without_reply_is_sent_no_reply(transport_type: TransportType) -> None:
    """A connection closed after the request, with no reply, gives SentNoReply."""

    def respond(request: bytes, sock: socket.socket) -> None:
        sock.close()

    with raw_server(respond) as url:
        async with transport_type(url) as transport:
            with pytest.raises(SentNoReply):
                await transport.send(REQUEST)


@pytest.mark.anyio
async def test_no_time_left_is_not_sent(transport_type: TransportType) -> None:
    """A send with no time left raises NotSent without touching the network."""
    async with transport_type("http://127.0.0.1:9") as transport:
        with pytest.raises(NotSent):
            await transport.send(REQUEST, timeout=0)


@pytest.mark.anyio
async def test_redirect_not_followed(transport_type: TransportType) -> None:
    """A 307 redirect is returned as a reply, not followed: the key goes nowhere else."""
    hits: list[bytes] = []

    def respond(request: bytes, sock: socket.socket) -> None:
        hits.append(request)
        sock.sendall(http(307, b"", {"Location": "http://127.0.0.1:9/steal"}))

    with raw_server(respond) as url:
        async with transport_type(url) as transport:
            reply = await transport.send(REQUEST)
    assert reply.status == 307
    assert len(hits) == 1


def test_verify_false_warns(transport_type: TransportType) -> None:
    """Turning TLS verification off is possible but never silent."""
    with pytest.warns(InsecureTransportWarning):
        transport_type("https://example.invalid", verify=False)


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


def test_repr_has_no_key(transport_type: TransportType) -> None:
    """The transport's and the request's reprs never show the key."""
    assert "SECRET" not in repr(REQUEST)
    assert "SECRET" not in repr(transport_type("https://api.example.com"))


@pytest.mark.parametrize("url", ["http://api.example.com", "http://192.0.2.10:8080"])
def test_plain_http_to_a_remote_host_warns(url: str, transport_type: TransportType) -> None:
    """http:// to anything but loopback warns that the key travels unencrypted."""
    with pytest.warns(InsecureTransportWarning, match="unencrypted"):
        transport_type(url)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080", "http://localhost", "http://[::1]:9", "https://api.example.com"],
)
def test_loopback_or_https_does_not_warn(url: str, transport_type: TransportType) -> None:
    """Loopback http:// (tests, serve-sim) and https:// construct without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        transport_type(url)


@pytest.mark.anyio
async def test_compressed_reply_is_refused_with_its_status(transport_type: TransportType) -> None:
    """A gzip-encoded reply (a proxy compressing what passes) is refused as BadReply, which
    keeps the 200 it came with: a createTask answered so may have been billed."""

    def respond(request: bytes, sock: socket.socket) -> None:
        body = gzip.compress(b'{"taskId": 7}')
        sock.sendall(http(200, body, {"Content-Encoding": "gzip"}))

    with raw_server(respond) as url:
        async with transport_type(url) as transport:
            with pytest.raises(BadReply, match="content-encoding 'gzip'") as caught:
                await transport.send(REQUEST)
    assert caught.value.status == 200


@pytest.mark.anyio
async def test_key_echoed_in_a_header_is_redacted_before_it_is_quoted(
    transport_type: TransportType,
) -> None:
    """A key echoed as the Content-Encoding is redacted before the transport lower-cases
    and quotes it: neither the key nor its lower-case form is in the failure."""

    key = ApiKey("hdr-Echoed-KEY-4f1c")  # not a suite-wide secret: httpcore's own debug
    # log records the reply's headers, so this key shows in the captured log (see README)

    def respond(request: bytes, sock: socket.socket) -> None:
        sock.sendall(http(200, b"{}", {"Content-Encoding": key.reveal()}))

    with raw_server(respond) as url:
        async with transport_type(url) as transport:
            with pytest.raises(BadReply) as caught:
                await transport.send(ApiRequest.create_task(key, {"type": "T"}))
    assert "echoed-key" not in caught.value.message.lower()
    assert caught.value.message == "unrequested content-encoding '***'"


# -- TLS and the connect phase ----------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed certificate for 127.0.0.1 and its private key, made by `openssl`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@contextlib.contextmanager
def tls_server(
    certificate: tuple[pathlib.Path, pathlib.Path], handshakes: list[bool]
) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 presenting the self-signed `certificate`; it answers
    createTask with taskId 7, and records in `handshakes` whether each TLS handshake
    succeeded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)

    def handle(sock: socket.socket) -> None:
        try:
            tls = context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError):
            handshakes.append(False)
            return
        handshakes.append(True)
        with tls:
            read_request(tls)
            tls.sendall(http(200, b'{"taskId": 7}', {"Content-Type": "application/json"}))

    with tcp_server(handle) as url:
        yield url.replace("http://", "https://")


@pytest.mark.anyio
async def test_untrusted_certificate_is_rejected_not_unsent(
    certificate: tuple[pathlib.Path, pathlib.Path],
    transport_type: TransportType,
) -> None:
    """A certificate that fails verification raises CertificateRejected (a NotSent that no
    retry can cure), naming the host and the reason; trusting it makes the same server work,
    so the rejection is the certificate's, and so does turning verification off (warned)."""
    handshakes: list[bool] = []
    with tls_server(certificate, handshakes) as url:
        async with transport_type(url) as transport:
            with pytest.raises(CertificateRejected) as caught:
                await transport.send(REQUEST)
        trusted = ssl.create_default_context(cafile=str(certificate[0]))
        async with transport_type(url, verify=trusted) as transport:
            reply = await transport.send(REQUEST)
        with pytest.warns(InsecureTransportWarning, match="verification is off"):
            unverified = transport_type(url, verify=False)
        async with unverified:
            assert (await unverified.send(REQUEST)).body == b'{"taskId": 7}'
    assert isinstance(caught.value, NotSent)
    message = caught.value.message
    assert "TLS certificate of 127.0.0.1 failed verification" in message
    assert "self-signed" in message or "self signed" in message
    assert reply.status == 200 and reply.body == b'{"taskId": 7}'
    assert handshakes == [False, True, True]


@pytest.mark.anyio
async def test_engine_fails_at_once_on_an_untrusted_certificate(
    certificate: tuple[pathlib.Path, pathlib.Path],
    transport_type: TransportType,
) -> None:
    """Through the engine, a rejected certificate fails the job on the first attempt with
    HttpStatusError TLS_CERTIFICATE_REJECTED (exit status 6), instead of being retried."""
    handshakes: list[bool] = []
    with tls_server(certificate, handshakes) as url:
        started = time.monotonic()
        async with transport_type(url) as transport:
            engine = Engine(KEY, transport=transport, timeout=20)
            job = await engine.run({"type": "ImageToTextTask", "body": "x"})
        elapsed = time.monotonic() - started
    assert isinstance(job.error, HttpStatusError)
    assert job.error.name == "TLS_CERTIFICATE_REJECTED"
    assert exit_code_for(job.error) == 6
    assert "not retried" in job.error.message
    assert handshakes == [False]
    assert elapsed < 5  # the first retry alone would wait at least 1 s; six take over 15 s


@contextlib.contextmanager
def silent_tls_peer() -> Iterator[tuple[str, threading.Event]]:
    """An https:// URL whose server accepts, reads the ClientHello and never answers; the
    event is set once the client hangs up."""
    closed = threading.Event()

    def silent(sock: socket.socket) -> None:
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
            closed.set()

    with tcp_server(silent) as url:
        yield url.replace("http://", "https://"), closed


@pytest.mark.anyio
async def test_deadline_during_the_tls_handshake_is_not_sent(transport_type: TransportType) -> None:
    """A deadline that cuts the connect short (here: a server that accepts and never
    answers the TLS handshake), long before connect_timeout, is NotSent: no byte of the
    request left. The half-open connection is closed at once, not left to the collector."""
    with silent_tls_peer() as (url, closed):
        async with transport_type(url, connect_timeout=10) as transport:
            started = time.monotonic()
            with pytest.raises(NotSent, match=r"could not connect to 127\.0\.0\.1 within"):
                await transport.send(REQUEST, timeout=0.3)
            assert time.monotonic() - started < 1.5
            assert await anyio.to_thread.run_sync(closed.wait, 3.0)


@pytest.mark.anyio
async def test_cancelled_tls_handshake_closes_its_connection(transport_type: TransportType) -> None:
    """A send cancelled from outside during the TLS handshake closes the half-open
    connection at once (httpcore leaves it to the garbage collector)."""
    with silent_tls_peer() as (url, closed):
        async with transport_type(url, connect_timeout=10) as transport:
            with anyio.move_on_after(0.3) as scope:
                await transport.send(REQUEST)
            assert scope.cancelled_caught
            assert await anyio.to_thread.run_sync(closed.wait, 3.0)


@pytest.mark.anyio
async def test_deadline_after_the_request_left_is_still_sent_no_reply(
    transport_type: TransportType,
) -> None:
    """The same deadline once the request has been written (a plain-HTTP server that reads
    it and says nothing) is SentNoReply: the service may have acted on it."""

    def hold(request: bytes, sock: socket.socket) -> None:
        time.sleep(2.0)

    with raw_server(hold) as url:
        async with transport_type(url, read_timeout=10) as transport:
            with pytest.raises(SentNoReply, match="no reply within"):
                await transport.send(REQUEST, timeout=0.3)


@pytest.mark.anyio
async def test_unresolvable_default_host_says_so(
    monkeypatch: pytest.MonkeyPatch, transport_type: TransportType
) -> None:
    """When the default URL's host cannot be resolved (no DNS, offline), the failure is
    NotSent and its message says the host cannot be resolved, for the CLI to print."""

    def no_dns(host: object, *args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    async with transport_type() as transport:
        assert transport.base_url == DEFAULT_BASE_URL
        with pytest.raises(NotSent) as caught:
            await transport.send(REQUEST, timeout=5)
    assert not isinstance(caught.value, CertificateRejected)  # this one may heal: retried
    assert caught.value.message.startswith(
        "cannot resolve host api.nocaptchaai.com (Name or service not known)"
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://user:sk-pw-2f9a@api.example",
        "https://sk-pw-2f9a@api.example",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0",
        "http://api .example",
        "http://api.example/\x1b[2J",
    ],
)
def test_base_url_with_credentials_bad_port_or_spaces_is_refused(
    url: str, transport_type: TransportType
) -> None:
    """Such a base URL is refused when the transport (or an Engine) is built, and the
    error does not repeat it (it may hold a password)."""
    shape = "base URL|not a URL"
    with pytest.raises(ValueError, match=shape) as caught:
        transport_type(url)
    assert "sk-pw-2f9a" not in str(caught.value) and url not in str(caught.value)
    with pytest.raises(ValueError, match=shape):
        Engine("k", base_url=url)


# -- what both transports must agree on beyond the failures ----------------------------------


@pytest.mark.anyio
async def test_request_headers_and_repeated_reply_headers(transport_type: TransportType) -> None:
    """Each transport asks for JSON, uncompressed, and hands back a header sent twice once,
    its values joined with ", " (as httpx joins them), so classification sees the same
    reply whichever carried it."""
    seen: list[bytes] = []

    def respond(request: bytes, sock: socket.socket) -> None:
        seen.append(request)
        head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Seen: a\r\nx-seen: b\r\nDate: d\r\n\r\n"
        sock.sendall(head.encode() + b"{}")

    with raw_server(respond) as url:
        async with transport_type(url) as transport:
            reply = await transport.send(REQUEST)
    assert reply.headers == {"content-length": "2", "x-seen": "a, b", "date": "d"}
    request_head = seen[0].split(b"\r\n\r\n")[0].lower()
    for line in (b"accept: application/json", b"accept-encoding: identity"):
        assert line in request_head.split(b"\r\n")


@pytest.mark.anyio
async def test_proxies_named_by_the_environment_are_not_used(
    monkeypatch: pytest.MonkeyPatch, transport_type: TransportType
) -> None:
    """HTTP_PROXY, HTTPS_PROXY and ALL_PROXY (any case) are ignored: the request carrying
    the key goes straight to the base URL, never through a proxy the environment names."""
    proxied: list[bytes] = []

    def proxy(request: bytes, sock: socket.socket) -> None:
        proxied.append(request)
        sock.sendall(http(502, b"proxy"))

    def respond(request: bytes, sock: socket.socket) -> None:
        sock.sendall(http(200, b'{"taskId": 1}'))

    with raw_server(proxy) as proxy_url, raw_server(respond) as url:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy_url)
            monkeypatch.setenv(name.lower(), proxy_url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        async with transport_type(url) as transport:
            reply = await transport.send(REQUEST)
    assert reply.status == 200
    assert not proxied


def test_aiohttp_transport_under_trio_says_it_needs_asyncio() -> None:
    """Under trio, AiohttpTransport fails at once, saying it runs on asyncio only; through
    the engine the job fails on its first request (a transport bug: never retried)."""

    async def main() -> None:
        async with AiohttpTransport("http://127.0.0.1:9") as transport:
            with pytest.raises(RuntimeError, match="asyncio only: use HttpxTransport"):
                await transport.send(REQUEST)
            job = await Engine(KEY, transport=transport, timeout=20).run({"type": "T"})
        assert isinstance(job.error, PolicyError)
        assert "asyncio only" in job.error.message
        assert job.requests_sent == 1

    anyio.run(main, backend="trio")


def test_aiohttp_transport_belongs_to_one_event_loop() -> None:
    """An AiohttpTransport that sent in one event loop refuses to send in another (its
    connections belong to the first) with a RuntimeError saying so."""
    transport = AiohttpTransport("http://127.0.0.1:9")

    async def send() -> None:
        with contextlib.suppress(NotSent):  # nothing listens: refused
            await transport.send(REQUEST, timeout=5)

    async def send_and_close() -> None:
        await send()
        await transport.aclose()

    anyio.run(send_and_close)
    with pytest.raises(RuntimeError, match="event loop it first sent in"):
        anyio.run(send)


def test_aiohttp_transport_without_aiohttp_says_how_to_install_it() -> None:
    """Without aiohttp installed, the transports package and HttpxTransport still import,
    and asking for AiohttpTransport raises ImportError naming the extra to install."""
    code = (
        "import sys\n"
        "sys.modules['aiohttp'] = None  # as if it were not installed\n"
        "from captchaflow.transports import HttpxTransport\n"
        "from captchaflow.transports import AiohttpTransport\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: AiohttpTransport needs aiohttp, which is not installed")
    assert "pip install 'captchaflow[aiohttp]'" in last


@pytest.mark.anyio
async def test_sequential_requests_reuse_one_connection(transport_type: TransportType) -> None:
    """Requests one after another travel over one kept-alive connection; one that the
    server closed while it was idle is replaced, without a failure."""
    connections: list[socket.socket] = []
    closed = threading.Event()

    def serve(sock: socket.socket) -> None:
        connections.append(sock)
        served = 0
        while read_request(sock):
            served += 1
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n" + b'{"taskId": 1}')
            if len(connections) == 1 and served == 3:
                sock.close()  # the server ends it while it is idle
                closed.set()
                return

    with tcp_server(serve) as url:
        async with transport_type(url) as transport:
            for _ in range(3):
                assert (await transport.send(REQUEST)).status == 200
            assert await anyio.to_thread.run_sync(closed.wait, 3.0)
            await anyio.sleep(0.2)  # the hang-up reaches the client
            for _ in range(3):
                assert (await transport.send(REQUEST)).status == 200
    assert len(connections) == 2
