"""`SimulatorServer`: one `SimulatedAPI` served over real HTTP/1.1 sockets (`serve-sim`).

Theory of operation. Each accepted connection gets an `h11.Connection`, a sans-IO HTTP/1.1
parser; this module owns the socket (an anyio stream) and moves bytes between the two, so
it can do what an ASGI server cannot: hang up without a reply, or hold a connection silent.
A complete request is handed to `SimulatedAPI.handle_http(path, body, now)`, where `now` is
real monotonic time since the server started (the simulation clock starts at 0), and the
`SimulatedExchange` it returns is acted out on the socket:

- `RequestFate.REPLY`: wait `latency` seconds, then send the reply's status, headers and body;
- `RequestFate.TIMEOUT`: hold the connection `latency` seconds, then close it without a byte;
- `RequestFate.REFUSED`: close the connection at once without a byte. Over HTTP the request has
  already been sent by then, so a client sees a dropped connection with no reply (httpx:
  `RemoteProtocolError`), not a refused connect.

Only POSTs reach the model (which answers 404 itself for paths other than the three
endpoints). The server answers on its own, never consulting the model: 405 to another method
on an endpoint, 404 to another method elsewhere, 400 to malformed HTTP, 431 to a request
head over `max_header_bytes`, 413 to a body over `max_body_bytes`; those error replies close
the connection. Otherwise connections are kept alive, and one idle (or trickling a request)
for `idle_timeout` seconds is closed.
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import ipaddress
import logging
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Final

import anyio
import anyio.abc
import anyio.from_thread
import h11

from ._api import RequestFate, SimulatedAPI

__all__ = ["SimulatorServer", "serve_simulator", "simulator_in_thread"]

ENDPOINTS: Final = frozenset({"/createTask", "/getTaskResult", "/getBalance"})
_SERVER_NAME: Final = "captchaflow-serve-sim"
_TEXT: Final = {"content-type": "text/plain; charset=utf-8"}
_FRAMING: Final = frozenset({"content-length", "transfer-encoding", "connection"})
_CHUNK: Final = 65_536
_LINGER_SECONDS: Final = 2.0
"""After an error reply, how long the request's unread rest is drained before closing (so
the client reads the reply instead of a reset)."""

_log = logging.getLogger(__name__)


class _RequestRefused(Exception):
    """A request the server answers itself with `status`, then closes the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SimulatorServer:
    """Serves one `SimulatedAPI` over HTTP/1.1 on `host`:`port` (port 0: any free port).

    An async context manager (asyncio or trio): on entry the socket listens (or `OSError`
    is raised), `base_url` is set and the simulation clock starts at 0; inside the block
    requests are served concurrently; on exit every connection is closed. Requests are
    bounded: bodies to `max_body_bytes` (413), request heads to `max_header_bytes` (431).
    The model is only ever called from the event loop's thread.
    """

    __slots__ = (
        "_exit_stack",
        "_port",
        "_started",
        "api",
        "connections_accepted",
        "connections_open",
        "connections_peak",
        "host",
        "idle_timeout",
        "max_body_bytes",
        "max_header_bytes",
        "port",
    )

    def __init__(
        self,
        api: SimulatedAPI | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = 1 << 20,
        max_header_bytes: int = 16 << 10,
        idle_timeout: float = 60.0,
    ) -> None:
        if max_body_bytes < 0 or max_header_bytes < 1 or not idle_timeout > 0:
            raise ValueError(
                "max_body_bytes must be >= 0, max_header_bytes >= 1 and idle_timeout > 0"
            )
        self.api = api if api is not None else SimulatedAPI()
        self.host = host
        self.port = port
        """The port asked for; `base_url` holds the one bound."""
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.idle_timeout = idle_timeout
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._started = 0.0
        self._port: int | None = None
        # Connection counters, for tests of client resource bounds: accepted in all, open
        # now (accepted and not yet closed by this server), and the most open at once.
        self.connections_accepted = 0
        self.connections_open = 0
        self.connections_peak = 0

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT` of the listening socket (a wildcard host is shown as the
        loopback address of its family, which a local client can reach)."""
        if self._port is None:
            raise RuntimeError("the server is not running")
        return _base_url(self.host, self._port)

    def now(self) -> float:
        """The simulation clock: seconds since the server started listening."""
        return time.monotonic() - self._started

    async def __aenter__(self) -> SimulatorServer:
        if self._exit_stack is not None:
            raise RuntimeError("the server is already running")
        async with contextlib.AsyncExitStack() as stack:
            listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
            stack.push_async_callback(listener.aclose)
            tasks = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tasks.cancel_scope.cancel)
            self._port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610
            self._started = time.monotonic()
            tasks.start_soon(listener.serve, self._serve_connection)
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._exit_stack, self._port = self._exit_stack, None, None
        if stack is not None:
            # Not handed the block's exception: the task group would wrap it in a group.
            await stack.aclose()

    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        self.connections_accepted += 1
        self.connections_open += 1
        self.connections_peak = max(self.connections_peak, self.connections_open)
        try:
            await self._serve_stream(stream)
        finally:
            self.connections_open -= 1

    async def _serve_stream(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            connection = _Connection(self, stream)
            try:
                await connection.run()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
                pass  # the client went away
            except Exception:  # a bug here or in the model: a 500, on this connection only
                _log.exception("serve-sim: internal error")
                with contextlib.suppress(Exception):
                    await connection.refuse(500, "internal error in the simulated API")

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not running"
        return f"SimulatorServer({where}, seed={self.api.seed})"


class _Connection:
    """One client connection: h11 parses it, the model decides, this acts it out."""

    __slots__ = ("_h11", "_server", "_stream")

    def __init__(self, server: SimulatorServer, stream: anyio.abc.SocketStream) -> None:
        self._server = server
        self._stream = stream
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_header_bytes)

    async def run(self) -> None:
        """Serve requests until either side closes the connection."""
        while True:
            request: tuple[h11.Request, bytes] | None = None
            try:
                with anyio.move_on_after(self._server.idle_timeout):
                    request = await self._receive_request()
            except h11.RemoteProtocolError as exc:
                await self.refuse(exc.error_status_hint, f"bad request: {exc}")
                return
            except _RequestRefused as exc:
                await self.refuse(exc.status, exc.message)
                return
            if request is None or not await self._answer(*request):
                return
            self._h11.start_next_cycle()

    async def _receive_request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its whole body; `None` when the client closed first."""
        head = await self._next_event()
        if not isinstance(head, h11.Request):
            return None
        # h11 bounds only a head still incomplete; one that arrived whole is measured here.
        head_size = (
            len(head.method)
            + len(head.target)
            + sum(len(name) + len(value) + 4 for name, value in head.headers)
        )
        if head_size > self._server.max_header_bytes:
            raise _RequestRefused(431, "request header fields too large")
        limit = self._server.max_body_bytes
        for name, value in head.headers:
            if name == b"content-length" and int(value) > limit:
                raise _RequestRefused(413, f"request body over {limit} bytes")
        if self._h11.they_are_waiting_for_100_continue:
            await self._send(
                h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            )
        chunks: list[bytes] = []
        size = 0
        while isinstance(event := await self._next_event(), h11.Data):
            size += len(event.data)
            if size > limit:
                raise _RequestRefused(413, f"request body over {limit} bytes")
            chunks.append(event.data)
        return (head, b"".join(chunks)) if isinstance(event, h11.EndOfMessage) else None

    async def _next_event(self) -> h11.Event:
        while (event := self._h11.next_event()) is h11.NEED_DATA:
            try:
                data = await self._stream.receive(_CHUNK)
            except anyio.EndOfStream:
                data = b""
            self._h11.receive_data(data)
        if not isinstance(event, h11.Event):  # PAUSED: only if read before replying
            raise h11.LocalProtocolError("a request was read before the last one was answered")
        return event

    async def _answer(self, request: h11.Request, body: bytes) -> bool:
        """Answer one request; return whether the connection may carry another."""
        path = request.target.partition(b"?")[0].decode("ascii", "replace")
        head_only = request.method == b"HEAD"
        if request.method != b"POST":
            if path in ENDPOINTS:
                headers = {**_TEXT, "allow": "POST"}
                await self._reply(405, headers, b"method not allowed: use POST\n", head_only)
            else:
                await self._reply(404, _TEXT, b"not found\n", head_only)
            return self._reusable()
        server = self._server
        exchange = server.api.handle_http(path, body, server.now())
        _log.debug("serve-sim: %s %s", path, exchange.label)
        if exchange.fate is RequestFate.REFUSED:
            return False
        await anyio.sleep(exchange.latency)
        if exchange.fate is RequestFate.TIMEOUT or exchange.reply is None:
            return False
        reply = exchange.reply
        await self._reply(reply.status, reply.headers, reply.body)
        return self._reusable()

    def _reusable(self) -> bool:
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    async def _reply(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        head_only: bool = False,
        *,
        close: bool = False,
    ) -> None:
        fields = [(name, value) for name, value in headers.items() if name not in _FRAMING]
        fields += [
            ("content-length", str(len(body))),
            ("date", email.utils.formatdate(usegmt=True)),
            ("server", _SERVER_NAME),
        ]
        if close:
            fields.append(("connection", "close"))
        data = self._h11.send(
            h11.Response(status_code=status, headers=fields, reason=_reason(status))
        )
        if body and not head_only:
            data += self._h11.send(h11.Data(data=body))
        data += self._h11.send(h11.EndOfMessage())
        await self._stream.send(data)  # one write: the reply leaves whole, or not at all

    async def refuse(self, status: int, message: str) -> None:
        """Answer `status` (if a reply can still be sent) and wind the connection down."""
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._reply(status, _TEXT, f"{message}\n".encode(), close=True)
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._stream.send_eof()
        with anyio.move_on_after(_LINGER_SECONDS):
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    await self._stream.receive(_CHUNK)

    async def _send(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data:
            await self._stream.send(data)


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _base_url(host: str, port: int) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{port}"
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"http://[{address}]:{port}" if address.version == 6 else f"http://{address}:{port}"


def serve_simulator(
    api: SimulatedAPI | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[SimulatorServer], object] | None = None,
) -> None:
    """Serve `api` (default: `SimulatedAPI()`) until SIGINT or SIGTERM, then return normally.

    `on_ready(server)` is called once the socket listens (`server.base_url` is set). Raises
    `OSError` if it cannot listen. Runs its own asyncio loop; call it from the main thread.
    """

    async def run() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with SimulatorServer(api, host=host, port=port) as server:
                if on_ready is not None:
                    on_ready(server)
                async for _signal in signals:
                    return

    anyio.run(run, backend="asyncio")


@contextlib.contextmanager
def simulator_in_thread(
    api: SimulatedAPI | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[SimulatorServer]:
    """Run a `SimulatorServer` on an asyncio loop in a background thread for the duration of
    the `with` block, and yield it (listening, `base_url` set): for synchronous clients and
    tests. On exit the server is shut down and the thread joined. Do not touch `api` from
    the block while requests are in flight: the model is not thread-safe."""
    with (
        anyio.from_thread.start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(SimulatorServer(api, host=host, port=port)) as server,
    ):
        yield server
