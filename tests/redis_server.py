"""Redis for the tests: a real `redis-server` on loopback, started by the tests themselves.

`.ci/run` installs the Debian package and starts one server, whose URL it exports as
`CAPTCHAFLOW_REDIS_URL`; outside CI the session starts its own from `redis-server` on the
PATH. Tests that stop and restart Redis (Redis going away mid-run) start a private server
with `RedisServer`. Without a `redis-server` binary the Redis tests are skipped, saying how
to get one. Each test gets its own key namespace (`redis_namespace`), so no test sees
another's keys and nothing needs flushing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

URL_ENV = "CAPTCHAFLOW_REDIS_URL"
NO_REDIS = (
    "no Redis to test against: redis-server is not on the PATH (install it: apt-get install "
    f"redis-server) and {URL_ENV} is not set"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private `redis-server` on 127.0.0.1 (no persistence), which a test may stop and
    start again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip(NO_REDIS)
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="captchaflow-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.skip(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def ping(port: int, host: str = "127.0.0.1") -> bool:
    """True if a Redis answers PING on `host:port`."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a Redis for the session: CI's, or one started here."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_namespace() -> str:
    """A key namespace no other test uses."""
    return f"cftest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop and start again."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()
