"""A scriptable stub of the NoCaptcha task API on 127.0.0.1 (standard library only)."""

# Usage:
#     with StubAPI(create=[error(16, "RATE_LIMITED", retry_after=1), accepted(7)],
#                  result=[processing(), ready({"text": "abc"})]) as stub:
#         ... run the CLI with --base-url stub.base_url ...
#     assert len(stub.to("/createTask")) == 2
# Each endpoint answers its script's replies in order, repeating the last one forever; a
# callable script is called for every reply instead. Every request is recorded in order.

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "Reply",
    "Request",
    "StubAPI",
    "accepted",
    "error",
    "processing",
    "raw",
    "ready",
]


@dataclass(frozen=True)
class Reply:
    """One HTTP reply: status, headers and the raw body bytes."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """One request the stub received; `at` is `time.monotonic()` when it arrived."""

    endpoint: str
    json: Any
    raw: bytes
    headers: Mapping[str, str]
    at: float


Script = Sequence[Reply] | Callable[[Request], Reply]


def reply(payload: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    """A reply whose body is `payload` as JSON."""
    content = {"Content-Type": "application/json", **(headers or {})}
    return Reply(status, json.dumps(payload).encode(), content)


def raw(body: bytes | str, *, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    """A reply with an arbitrary (e.g. non-JSON) body."""
    data = body.encode() if isinstance(body, str) else body
    return Reply(status, data, dict(headers or {}))


def accepted(task_id: int | str = 123) -> Reply:
    """createTask success."""
    return reply({"taskId": task_id})


def processing() -> Reply:
    """getTaskResult: not solved yet."""
    return reply({"status": "processing"})


def ready(solution: Mapping[str, Any]) -> Reply:
    """getTaskResult: solved with `solution`."""
    return reply({"status": "ready", "solution": solution})


def error(
    code: int,
    msg: str,
    *,
    retry_after: float | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """An API failure body `{"code", "msg"[, "retryAfterSec"]}`."""
    payload: dict[str, Any] = {"code": code, "msg": msg}
    if retry_after is not None:
        payload["retryAfterSec"] = retry_after
    return reply(payload, status=status, headers=headers)


DEFAULT_CREATE = (accepted(),)
DEFAULT_RESULT = (ready({"text": "ok"}),)


class StubAPI:
    """A threaded HTTP server answering /createTask and /getTaskResult from scripts."""

    def __init__(
        self,
        *,
        create: Script = DEFAULT_CREATE,
        result: Script = DEFAULT_RESULT,
    ) -> None:
        self.requests: list[Request] = []
        self._scripts = {"/createTask": create, "/getTaskResult": result}
        self._served = {"/createTask": 0, "/getTaskResult": 0}
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        host, port = self._server.server_address[:2]
        self.base_url = f"http://{host}:{port}"

    def __enter__(self) -> StubAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def to(self, endpoint: str) -> list[Request]:
        """The requests received on `endpoint` ("/createTask" or "/getTaskResult")."""
        with self._lock:
            return [r for r in self.requests if r.endpoint == endpoint]

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            script = self._scripts.get(request.endpoint)
            if script is None:
                return raw("no such endpoint", status=404)
            if callable(script):
                return script(request)
            index = min(self._served[request.endpoint], len(script) - 1)
            self._served[request.endpoint] += 1
            return script[index]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                request = Request(self.path, parsed, body, dict(self.headers), at)
                answer = stub._answer(request)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                """Keep the test output quiet."""

        return Handler
