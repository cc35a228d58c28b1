"""A raw-socket HTTP/1.1 server on 127.0.0.1 whose replies are scripted byte by byte.

For the faults an HTTP library will not produce on purpose: a connection dropped or held
silent after the request, a body cut short or trickled, 100 MB pushed at the client, a
port that refuses connections and later accepts them. Standard library only; one thread
accepts, one thread serves each connection, and every connection carries one request.

Usage:
    def script(endpoint: str, index: int) -> Step:   # index: nth request to endpoint
        return Send(json_reply({"taskId": 7})) if endpoint == "/createTask" else Hold(5)

    with RawAPI(script) as server:
        ... point a client at server.base_url ...
    server.arrivals    # every request, in order, with its arrival time
    server.connections # what each connection did (bytes sent, whether the peer hung up)
"""

from __future__ import annotations

import email.utils
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "Arrival",
    "Drop",
    "Hold",
    "RawAPI",
    "Send",
    "Stream",
    "Step",
    "http_reply",
    "json_reply",
]


@dataclass(frozen=True)
class Send:
    """Send `data` (a whole HTTP response, or anything else), then close."""

    data: bytes


@dataclass(frozen=True)
class Hold:
    """Say nothing for `seconds` (or until the server stops), then close."""

    seconds: float


@dataclass(frozen=True)
class Drop:
    """Close the connection at once, without a byte of reply."""


@dataclass(frozen=True)
class Stream:
    """Send `head`, then `chunk` up to `count` times, `pause` seconds apart, stopping as soon
    as the peer hangs up (or the server stops); then close."""

    head: bytes
    chunk: bytes
    count: int
    pause: float = 0.0


Step: TypeAlias = Send | Hold | Drop | Stream
Script: TypeAlias = Callable[[str, int], Step]


@dataclass(frozen=True)
class Arrival:
    """One request: its path, `time.monotonic()` when it was read whole, its JSON body."""

    endpoint: str
    at: float
    json: Any


@dataclass
class ConnectionLog:
    """What happened on one accepted connection."""

    opened: float
    closed: float | None = None
    bytes_sent: int = 0
    peer_hung_up: bool = False
    """A send failed because the client had closed the connection."""


def http_reply(
    status: int,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    *,
    now: float | None = None,
    retry_after_date: float | None = None,
) -> bytes:
    """A whole HTTP/1.1 response with Content-Length, `Connection: close` and a `Date` of
    `now` (default: the current time); `retry_after_date=s` adds a `Retry-After` HTTP-date
    `s` seconds after that same `Date` (both whole seconds, so the hint is exactly `s`)."""
    moment = time.time() if now is None else now
    lines = [
        f"HTTP/1.1 {status} Scripted",
        f"Date: {email.utils.formatdate(moment, usegmt=True)}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after_date is not None:
        later = email.utils.formatdate(int(moment) + retry_after_date, usegmt=True)
        lines.append(f"Retry-After: {later}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_reply(
    payload: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> bytes:
    """`http_reply` with `payload` as a JSON body."""
    content = {"Content-Type": "application/json", **(headers or {})}
    return http_reply(status, json.dumps(payload).encode(), content)


class RawAPI:
    """Serves `script(endpoint, index)` on 127.0.0.1; see the module docstring.

    With `listening=False` the port is bound but not listening, so connections to it are
    refused until `listen()`; `unlisten()` makes it refuse again (same port).
    """

    def __init__(self, script: Script, *, listening: bool = True) -> None:
        self._script = script
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._sock = self._bind(0)
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._listening = False
        self._want_listening = listening
        self._served: dict[str, int] = {}
        self._threads: list[threading.Thread] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self.arrivals: list[Arrival] = []
        self.connections: list[ConnectionLog] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    # -- control ---------------------------------------------------------------------------

    def __enter__(self) -> RawAPI:
        self._acceptor.start()
        self._settle()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._wake()
        self._acceptor.join(timeout=5)
        self._sock.close()
        self._wake_r.close()
        self._wake_w.close()
        for thread in list(self._threads):
            thread.join(timeout=5)

    def listen(self) -> None:
        """Start accepting connections (returns once the port listens)."""
        with self._lock:
            self._want_listening = True
        self._wake()
        self._settle()

    def unlisten(self) -> None:
        """Stop accepting: the port stays bound, and connecting to it is refused."""
        with self._lock:
            self._want_listening = False
        self._wake()
        self._settle()

    def to(self, endpoint: str) -> list[Arrival]:
        """The requests that arrived on `endpoint`."""
        with self._lock:
            return [arrival for arrival in self.arrivals if arrival.endpoint == endpoint]

    def open_connections(self) -> int:
        """Accepted connections not yet closed by this server."""
        with self._lock:
            return sum(log.closed is None for log in self.connections)

    def _wake(self) -> None:
        """Make the accepting thread look at its instructions now."""
        self._wake_w.send(b"!")

    def _settle(self) -> None:
        with self._lock:
            if not self._lock.wait_for(lambda: self._listening == self._want_listening, 5):
                raise RuntimeError("the raw server did not change its listening state")

    # -- the threads -----------------------------------------------------------------------

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._want_listening != self._listening:
                    if self._want_listening:
                        self._sock.listen(128)
                    else:  # a listening socket cannot stop listening: bind a fresh one
                        self._sock.close()
                        self._sock = self._bind(self.port)
                    self._listening = self._want_listening
                    self._lock.notify_all()
                listening, sock = self._listening, self._sock
            poller = select.poll()  # not select(): no limit on descriptor numbers
            poller.register(self._wake_r, select.POLLIN)
            if listening:
                poller.register(sock, select.POLLIN)
            ready = {fd for fd, _ in poller.poll(1000)}
            if self._wake_r.fileno() in ready:
                self._wake_r.recv(64)
            if not listening or sock.fileno() not in ready:
                continue
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            log = ConnectionLog(opened=time.monotonic())
            with self._lock:
                self.connections.append(log)
            thread = threading.Thread(target=self._serve, args=(conn, log), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, log: ConnectionLog) -> None:
        conn.settimeout(10)
        try:
            request = _read_request(conn)
            if request is None:
                return
            endpoint, body = request
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            with self._lock:
                index = self._served.get(endpoint, 0)
                self._served[endpoint] = index + 1
                self.arrivals.append(Arrival(endpoint, time.monotonic(), parsed))
            self._act(self._script(endpoint, index), conn, log)
        except OSError:
            log.peer_hung_up = True
        finally:
            conn.close()
            with self._lock:
                log.closed = time.monotonic()

    def _act(self, step: Step, conn: socket.socket, log: ConnectionLog) -> None:
        if isinstance(step, Send):
            conn.sendall(step.data)
            log.bytes_sent += len(step.data)
        elif isinstance(step, Hold):
            self._stop.wait(step.seconds)
        elif isinstance(step, Stream):
            conn.sendall(step.head)
            for _ in range(step.count):
                if self._stop.is_set():
                    return
                conn.sendall(step.chunk)  # OSError once the peer has hung up
                log.bytes_sent += len(step.chunk)
                if step.pause:
                    self._stop.wait(step.pause)


def _read_request(conn: socket.socket) -> tuple[str, bytes] | None:
    """The path and body of one request, or None if the client closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    path = lines[0].split(b" ")[1].decode("ascii", "replace")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return path, body
