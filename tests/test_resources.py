"""Resource bounds over real loopback sockets: the reply-size cap holds without reading a
reply whole, sockets stay within the pool limit under 1,000 concurrent jobs, and cancelling
jobs mid-flight leaves no job live, no task running and no connection open; compressed
replies cannot outgrow the cap in memory, requests beyond the pool wait outside the HTTP
library, and a request timed out in that wait is reported as not sent. Each holds for every
HTTP transport (`transport_kinds`)."""

from __future__ import annotations

import contextlib
import gzip
import logging
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import httpx
import pytest
from raw_api import ConnectionLog, Hold, RawAPI, Send, Step, Stream, http_reply, json_reply
from transport_kinds import TransportType

from captchaflow.engine import Engine, Job, JobCancelledError, Move
from captchaflow.policies import FixedInterval
from captchaflow.transports import (
    AiohttpTransport,
    ApiKey,
    ApiRequest,
    BadReply,
    HttpxTransport,
    NotSent,
    TransportError,
)
from captchaflow.transports.sim import (
    AccountSpec,
    Scenario,
    SimulatedAPI,
    SimulatorServer,
    TaskTypeSpec,
)

pytestmark = pytest.mark.filterwarnings(
    # As pyproject's filter for httpx's: a reply abandoned mid-body leaves httpcore's body
    # generator to trio's finalizer, which warns.
    "ignore:Async generator 'httpcore.*was garbage collected:ResourceWarning"
)

KEY = "sk-test-7f3c9a1e-DO-NOT-LEAK"
TASK = {"type": "ImageToTextTask", "body": "aGVsbG8="}
REQUEST = ApiRequest.create_task(ApiKey(KEY), TASK)
CAP = 1 << 20
"""The transports' default `max_reply_bytes`."""
HUGE = 100_000_000
BLOCK = b"x" * 65536


async def wait_until(condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Return once `condition()` holds (polled: it may change in another thread); fail
    after `timeout` seconds."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"still not so after {timeout} s")


def only_connection(server: RawAPI) -> ConnectionLog:
    """The one connection `server` accepted."""
    assert len(server.connections) == 1
    return server.connections[0]


# -- (a) the reply-size cap ---------------------------------------------------------------


def huge_reply(framing: str) -> Step:
    """A 100 MB reply, declared as such or chunked without a declared length."""
    if framing == "chunked":
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        return Stream(head, b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK), HUGE // len(BLOCK))
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE
    return Stream(head, BLOCK, HUGE // len(BLOCK))


@pytest.mark.anyio
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_oversized_reply_is_refused_without_reading_it_whole(
    framing: str, transport_type: TransportType
) -> None:
    """A 100 MB reply raises BadReply at once, and the client hangs up long before the
    server could send it all."""
    with RawAPI(lambda endpoint, index: huge_reply(framing)) as server:
        async with transport_type(server.base_url) as transport:
            started = time.monotonic()
            with pytest.raises(BadReply, match="cap"):
                await transport.send(REQUEST)
            elapsed = time.monotonic() - started
        await wait_until(lambda: server.open_connections() == 0)
    log = only_connection(server)
    assert elapsed < 2.0
    assert log.peer_hung_up
    # What left is what the kernel buffered (a few MB on loopback), not the 100 MB.
    assert log.bytes_sent < HUGE // 5, f"the server got {log.bytes_sent} bytes out"


@pytest.mark.anyio
async def test_compressed_reply_cannot_outgrow_the_cap_in_memory(
    transport_type: TransportType,
) -> None:
    """A gzip bomb smaller than the cap is refused without inflating it past a few caps."""
    bomb = gzip.compress(b"\0" * (64 << 20))
    assert len(bomb) < CAP
    reply = http_reply(200, bomb, {"Content-Encoding": "gzip", "Content-Type": "application/json"})
    with RawAPI(lambda endpoint, index: Send(reply)) as server:
        async with transport_type(server.base_url) as transport:
            tracemalloc.start()
            try:
                with pytest.raises(BadReply):
                    await transport.send(REQUEST)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert peak < 8 * CAP, f"peak {peak / 2**20:.0f} MiB for a {len(bomb)}-byte reply"


# -- (b) the pool bounds the sockets ------------------------------------------------------

LIBRARY_ENTRIES: dict[TransportType, tuple[type, str]] = {
    HttpxTransport: (httpx.AsyncClient, "send"),
    AiohttpTransport: (aiohttp.ClientSession, "_request"),
}
"""Where each transport's request enters its HTTP library (and holds a connection)."""

QUICK = Scenario(
    accounts=(AccountSpec(key=KEY),),
    default_task=TaskTypeSpec(solve_seconds=0.2, solve_spread=0.1, min_solve_seconds=0.05),
    latency=0.0,
)


@pytest.mark.anyio
@pytest.mark.timeout(300)  # 15-40 s here; a loaded CI machine gets room
async def test_thousand_concurrent_jobs_use_at_most_the_pool_of_sockets(
    caplog: pytest.LogCaptureFixture, transport_type: TransportType
) -> None:
    """1,000 jobs at once over a transport with max_connections=10 all solve, and the
    server never sees more than 10 connections open at once."""
    for name in ("httpx", "httpcore"):  # thousands of DEBUG records say nothing here
        caplog.set_level(logging.WARNING, logger=name)
    api = SimulatedAPI(QUICK, seed=11)
    jobs: list[Job] = []
    async with SimulatorServer(api) as server:
        transport = transport_type(server.base_url, max_connections=10)
        async with transport:
            engine = Engine(
                KEY,
                transport=transport,
                poll_schedule=FixedInterval(interval=0.05),
                on_move=None,
            )

            async def one() -> None:
                jobs.append(await engine.run(TASK))

            with anyio.fail_after(240):
                async with anyio.create_task_group() as group:
                    for _ in range(1000):
                        group.start_soon(one)
        peak = server.connections_peak
    assert len(jobs) == 1000
    assert all(job.state == "ready" for job in jobs), {job.state for job in jobs}
    assert api.stats.tasks_created == 1000
    assert 1 <= peak <= 10, f"{peak} connections open at once"


@pytest.mark.anyio
async def test_requests_beyond_the_pool_wait_outside_the_library(
    monkeypatch: pytest.MonkeyPatch, transport_type: TransportType
) -> None:
    """200 requests at once over 10 connections all get their reply, with at most 10 of
    them inside the HTTP library at any moment (the rest wait outside, at O(1) cost each)."""
    inside = peak = 0
    library, entry = LIBRARY_ENTRIES[transport_type]
    real = getattr(library, entry)

    async def counting(self: object, *args: Any, **kwargs: Any) -> Any:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        try:
            return await real(self, *args, **kwargs)
        finally:
            inside -= 1

    monkeypatch.setattr(library, entry, counting)
    statuses: list[int] = []

    async def one(transport: HttpxTransport | AiohttpTransport) -> None:
        statuses.append((await transport.send(REQUEST)).status)

    async with (
        SimulatorServer(SimulatedAPI(QUICK)) as server,
        transport_type(server.base_url, max_connections=10) as transport,
        anyio.create_task_group() as group,
    ):
        for _ in range(200):
            group.start_soon(one, transport)
    assert statuses == [200] * 200
    assert 1 <= peak <= 10, f"{peak} requests were inside the library at once"


@pytest.mark.anyio
async def test_request_timing_out_in_the_pool_queue_is_not_sent(
    transport_type: TransportType,
) -> None:
    """A request that runs out of time waiting for the only pooled connection raises
    NotSent, and indeed never reaches the server."""

    def script(endpoint: str, index: int) -> Step:
        return Hold(3.0) if index == 0 else Send(json_reply({"taskId": 1}))

    with RawAPI(script) as server:
        transport = transport_type(server.base_url, max_connections=1, read_timeout=5.0)
        async with transport, anyio.create_task_group() as group:
            group.start_soon(silenced, transport.send(REQUEST, timeout=1.0))  # holds the pool
            await wait_until(lambda: len(server.arrivals) == 1)
            with pytest.raises(NotSent):
                await transport.send(REQUEST, timeout=0.3)
    assert len(server.arrivals) == 1


async def silenced(request: Awaitable[object]) -> None:
    """Await `request`, ignoring the transport failure it ends in."""
    with contextlib.suppress(TransportError):
        await request


# -- (c) cancellation leaks nothing -------------------------------------------------------

SLOW = Scenario(
    accounts=(AccountSpec(key=KEY),),
    default_task=TaskTypeSpec(solve_seconds=30.0, solve_spread=0.0, min_solve_seconds=30.0),
    latency=0.05,
)


@pytest.mark.anyio
async def test_cancelling_jobs_mid_flight_leaves_nothing_behind(
    transport_type: TransportType,
) -> None:
    """Jobs cancelled by a cancel scope mid-flight all end `cancelled`, none of their tasks
    survives the scope, and once the transport is closed the server sees every connection
    closed."""
    jobs: dict[int, Job] = {}

    def collect(job: Job, move: Move) -> None:
        jobs[id(job)] = job

    async with SimulatorServer(SimulatedAPI(SLOW, seed=2)) as server:
        transport = transport_type(server.base_url, max_connections=20)
        try:
            engine = Engine(
                KEY,
                transport=transport,
                poll_schedule=FixedInterval(interval=0.05),
                on_move=collect,
            )
            finished: list[Job] = []

            async def one() -> None:
                finished.append(await engine.run(TASK))

            with anyio.move_on_after(0.6) as scope:
                async with anyio.create_task_group() as group:
                    for _ in range(50):
                        group.start_soon(one)
            assert scope.cancelled_caught
            survivors = [t for t in anyio.get_running_tasks() if t.name.endswith(".one")]
            assert not survivors
            assert not finished  # every run was cut short
            assert len(jobs) == 50
            assert all(job.state == "cancelled" for job in jobs.values())
            assert all(isinstance(job.error, JobCancelledError) for job in jobs.values())
            assert any(job.task_id is not None for job in jobs.values())  # some were polling
            assert server.connections_open > 0  # kept alive until the pool is closed
        finally:
            await transport.aclose()
        await wait_until(lambda: server.connections_open == 0)
        serving = [t for t in anyio.get_running_tasks() if "_serve_connection" in t.name]
        assert not serving
