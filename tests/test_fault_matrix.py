"""The fault matrix (`specs/fault-matrix.json`), checked cell by cell, end to end.

In each cell the first request to the cell's phase (`createTask` or `getTaskResult`) meets
the cell's fault, served byte by byte by a scripted raw-socket server on 127.0.0.1
(`raw_api.RawAPI`), and every later request succeeds, so "retried, then solved" is
observable. The client is the real thing: `Engine` over each HTTP transport
(`HttpxTransport`, `AiohttpTransport`: `transport_kinds`), with the default retry policy
(`DocumentedPolicy`, seeded, given the cell's `policy` options: the `-no-resend` cells opt
out of resending a createTask that may have been billed) and account gate, and a 50 ms
poll. A refused connection is a port that is bound but not listening, and starts listening
once the engine has decided to retry.

Every cell of a transport and event loop runs at once in one anyio task group (a
module-scoped fixture, run for httpx under asyncio and under trio, and for aiohttp under
asyncio); each parametrized test then holds one cell's record to its row of the table.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import pathlib
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import transport_kinds
from raw_api import Arrival, Drop, Hold, RawAPI, Send, Step, Stream, http_reply, json_reply
from transport_kinds import TransportType

from captchaflow.engine import Engine, Job, Move, log_move
from captchaflow.policies import DocumentedPolicy, FixedInterval
from captchaflow.transports import ErrorCode

pytestmark = pytest.mark.filterwarnings(
    # As pyproject's filter for httpx's: a reply abandoned mid-body (over the cap, past the
    # deadline) leaves httpcore's body generator to trio's finalizer, which warns.
    "ignore:Async generator 'httpcore.*was garbage collected:ResourceWarning"
)

ROOT = pathlib.Path(__file__).parents[1]
SPEC = json.loads((ROOT / "specs" / "fault-matrix.json").read_text())
CELLS: list[dict[str, Any]] = SPEC["cells"]
CODE_SPEC = json.loads((ROOT / "specs" / "error-codes.json").read_text())["codes"]

KEY = "sk-test-7f3c9a1e-DO-NOT-LEAK"
TASK = {"type": "ImageToTextTask", "body": "aGVsbG8="}
TASK_ID = 7
SOLUTION = {"text": "w9h5k"}
CREATE = "/createTask"

READ_TIMEOUT = 1.0
MAX_REPLY_BYTES = 64 << 10
HOLD_SECONDS = 5.0
"""How long a held connection stays silent: far beyond the client's read timeout."""
SLACK = 0.5
"""Scheduling slack allowed past a job's deadline (a busy event loop wakes late)."""
TLS = ssl.create_default_context()
"""Verification stays on; one shared context spares each of the clients loading the CA
bundle anew (about 80 ms of CPU each). The servers speak plain HTTP on loopback."""

# -- the faults, as bytes on the wire -----------------------------------------------------


def success(endpoint: str) -> Step:
    """The healthy answer on `endpoint`."""
    if endpoint == CREATE:
        return Send(json_reply({"taskId": TASK_ID}))
    return Send(json_reply({"status": "ready", "solution": SOLUTION}))


def head(extra: str) -> bytes:
    """A 200 response head with `extra` framing lines."""
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}\r\n\r\n".encode()


def fault_step(fault: dict[str, Any]) -> Step:
    """What the server does to the first request of the cell's phase."""
    kind = fault["kind"]
    if kind == "api_error":
        payload = {key: fault[key] for key in ("code", "msg", "retryAfterSec") if key in fault}
        return Send(json_reply(payload))
    if kind == "timeout":
        return Hold(HOLD_SECONDS)
    if kind == "dropped":
        return Drop()
    if kind == "http_status":
        status, how = fault["status"], fault["retry_after"]
        page = f"<html><body><h1>{status}</h1>gateway error</body></html>".encode()
        headers = {"Content-Type": "text/html"}
        if how == "seconds":
            headers["Retry-After"] = str(fault.get("seconds", 1))
        return Send(
            http_reply(status, page, headers, retry_after_date=1 if how == "date" else None)
        )
    if kind == "body":
        body, headers = fault["body"].encode(), {"Content-Type": fault["content_type"]}
        if "encoding" in fault:  # as a proxy that compresses whatever passes would
            assert fault["encoding"] == "gzip"
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        return Send(http_reply(200, body, headers))
    if kind == "huge_body":
        size, block = fault["bytes"], b"x" * 65536
        if fault["framing"] == "chunked":
            framed = b"%x\r\n%s\r\n" % (len(block), block)
            return Stream(head("Transfer-Encoding: chunked"), framed, size // len(block))
        return Stream(head(f"Content-Length: {size}"), block, size // len(block))
    if kind == "short_body":
        return Send(head("Content-Length: 100\r\nConnection: close") + b'{"taskId":')
    if kind == "slow_body":
        return Stream(head("Content-Length: 1000"), b" ", 1000, pause=0.05)
    raise AssertionError(f"unknown fault kind {kind!r}")


def server_for(cell: dict[str, Any]) -> RawAPI:
    """A server that inflicts the cell's fault once, at its phase, and then behaves."""
    endpoint = "/" + cell["phase"]
    fault = cell["fault"]
    refused = fault["kind"] == "refused"
    step = None if refused else fault_step(fault)

    def script(path: str, index: int) -> Step:
        if step is not None and path == endpoint and index == 0:
            return step
        return success(path)

    return RawAPI(script, listening=not (refused and endpoint == CREATE))


# -- running every cell at once -----------------------------------------------------------


@dataclass
class Record:
    """What one cell did: the finished job (or what the run raised) and the server's log."""

    job: Job | None = None
    raised: BaseException | None = None
    elapsed: float = 0.0
    arrivals: list[Arrival] = field(default_factory=list)

    def requests(self) -> dict[str, int]:
        """Requests that reached the server, per endpoint (named as in the table)."""
        return {
            name: sum(a.endpoint == "/" + name for a in self.arrivals)
            for name in ("createTask", "getTaskResult")
        }


def engine_for(cell: dict[str, Any], server: RawAPI, transport_type: TransportType) -> Engine:
    """The client of one cell: an engine over its own transport to the cell's server.

    A refused cell's hook makes the port refuse exactly one request: the cell's first
    request at its phase (after createTask was accepted, for a refused poll); the port
    listens again as soon as the engine has decided to retry."""
    refused = cell["fault"]["kind"] == "refused"
    refused_poll = refused and cell["phase"] == "getTaskResult"

    def on_move(job: Job, move: Move) -> None:
        log_move(job, move)
        if refused_poll and move.trigger == "accept":
            server.unlisten()
        elif refused and move.trigger == "defer":
            server.listen()

    transport = transport_type(
        server.base_url,
        connect_timeout=2.0,
        read_timeout=READ_TIMEOUT,
        max_reply_bytes=MAX_REPLY_BYTES,
        verify=TLS,
    )
    return Engine(
        KEY,
        transport=transport,
        policy=DocumentedPolicy(rng=random.Random(0), **cell.get("policy", {})),
        poll_schedule=FixedInterval(interval=0.05),
        timeout=cell["timeout"],
        on_move=on_move,
    )


async def run_cell(engine: Engine, record: Record) -> None:
    """Drive one task through the cell's fault and fill in `record`."""
    started = time.monotonic()
    try:
        record.job = await engine.run(TASK)
    except Exception as exc:  # recorded, so one broken cell does not hide the rest
        record.raised = exc
    finally:
        record.elapsed = time.monotonic() - started
        await engine.transport.aclose()


def run_matrix(transport_type: TransportType, backend: str) -> dict[str, Record]:
    """Run every cell concurrently over `transport_type` under `backend`; return each
    cell's record by name.

    Servers and clients are all set up before the first request: building an httpx client
    takes milliseconds of CPU (its TLS context), which would otherwise stall the cells
    already in flight."""
    records = {cell["name"]: Record() for cell in CELLS}

    async def run_all(engines: dict[str, Engine]) -> None:
        with anyio.fail_after(45):
            async with anyio.create_task_group() as group:
                for name, engine in engines.items():
                    group.start_soon(run_cell, engine, records[name])

    with contextlib.ExitStack() as stack:
        servers = {cell["name"]: stack.enter_context(server_for(cell)) for cell in CELLS}
        engines = {
            cell["name"]: engine_for(cell, servers[cell["name"]], transport_type) for cell in CELLS
        }
        anyio.run(run_all, engines, backend=backend)
    for name, server in servers.items():
        records[name].arrivals = list(server.arrivals)
    return records


@pytest.fixture(
    scope="module",
    params=transport_kinds.pairs(),
    ids=[f"{name}-{loop}" for name, loop in transport_kinds.pairs()],
)
def matrix(request: pytest.FixtureRequest) -> dict[str, Record]:
    """Every cell's record, over one transport under one event loop."""
    name, loop = request.param
    return run_matrix(transport_kinds.TRANSPORTS[name], loop)


# -- the checks ---------------------------------------------------------------------------


def billed(cell: dict[str, Any], record: Record) -> int:
    """Tasks the server created: createTasks it answered with a taskId, plus the faulted
    one if the fault struck after the server acted."""
    creates = record.requests()["createTask"]
    fault = cell["fault"]
    if cell["phase"] != "createTask" or fault["kind"] == "refused":
        return creates
    return creates - 1 + int(fault.get("server_acted", False))


def wait_after_failure(cell: dict[str, Any], record: Record) -> float:
    """Seconds, at the server, between the failing request and the request after it."""
    times = sorted(arrival.at for arrival in record.arrivals)
    failing = next(a.at for a in record.arrivals if a.endpoint == "/" + cell["phase"])
    return times[times.index(failing) + 1] - failing


@pytest.mark.parametrize("cell", CELLS, ids=[cell["name"] for cell in CELLS])
def test_cell(cell: dict[str, Any], matrix: dict[str, Record]) -> None:
    """The cell's fault is classified, retried or not, waited on and ends as its row says."""
    record, expect = matrix[cell["name"]], cell["expect"]
    assert record.raised is None, f"the run raised {record.raised!r}"
    job = record.job
    assert job is not None and job.finished
    failure = job.last_failure
    assert failure is not None
    moves = [move.trigger for move in job.history]
    assert moves.count("defer") + moves.count("fail") == 1, f"not exactly one failure: {moves}"
    seen = {
        "bucket": failure.bucket.value,
        "name": failure.name,
        "code": failure.code,
        "retry_after": failure.retry_after,
        "retried": "defer" in moves,
        "outcome": "solved"
        if job.solution is not None
        else {"error": type(job.error).__name__, "name": getattr(job.error, "name", None)},
        "requests": record.requests(),
        "billed": billed(cell, record),
        "may_have_billed": failure.may_have_billed,
    }
    assert seen == {key: expect[key] for key in seen}
    if job.solution is not None:
        assert job.solution == SOLUTION
    if expect["min_wait"] is not None:
        assert wait_after_failure(cell, record) >= expect["min_wait"]
    if expect["max_seconds"] is not None:
        failing = next(a.at for a in record.arrivals if a.endpoint == "/" + cell["phase"])
        assert job.history[-1].at - failing <= expect["max_seconds"]
    assert record.elapsed <= cell["timeout"] + SLACK
    assert all(arrival.json["clientKey"] == KEY for arrival in record.arrivals)
    texts = [repr(job), str(job.error), *(repr(move) for move in job.history)]
    assert not any(KEY in text for text in texts)


# -- the table itself ---------------------------------------------------------------------

PHASES = ("createTask", "getTaskResult")
CODES = (1, 2, 3, 10, 12, 14, 15, 16, 17, 18, 21, 99)
DAY = 86400
HTTP_STATUSES = (429, 500, 502, 503, 504)
OTHER_FAULTS = (
    "refused",
    "timeout-before-acting",
    "timeout-after-acting",
    "dropped",
    "http-429-retry-after-past-deadline",
    "empty-body",
    "non-json",
    "truncated-json",
    "json-array",
    "code-numeric-string",
    "code-word-string",
    "huge-body-content-length",
    "huge-body-chunked",
    "body-cut-short",
    "very-slow-body",
)
CREATE_ONLY_FAULTS = (
    "null-task-id-after-acting",
    "html-page-after-acting",
    "gzip-json-after-acting",
)
"""createTask answered 2xx with a reply that cannot be used, after the server created the
task: possibly billed, so resent by default and given up on with the opt-out."""
NO_RESEND_FAULTS = (*CREATE_ONLY_FAULTS, "timeout-after-acting", "refused")
"""createTask faults also run with `resend_ambiguous_create=False` (the `-no-resend` cells)."""


def code_name(code: int) -> str:
    """The documented name of `code`, or CODE_<n> for an undocumented one."""
    return ErrorCode(code).name if code in set(ErrorCode) else f"CODE_{code}"


def required_cells() -> set[str]:
    """Every cell the matrix must have."""
    tags = set(OTHER_FAULTS)
    for code in CODES:
        tags |= {f"code-{code}-{code_name(code)}-no-hint", f"code-{code}-{code_name(code)}-hint"}
    tags |= {f"code-{code}-{code_name(code)}-hint-past-deadline" for code in (17, 18)}
    for status in HTTP_STATUSES:
        for how in ("no-retry-after", "retry-after-seconds", "retry-after-date"):
            tags.add(f"http-{status}-{how}")
    names = {f"{phase}-{tag}" for phase in PHASES for tag in tags}
    names |= {f"createTask-{tag}" for tag in CREATE_ONLY_FAULTS}
    return names | {f"createTask-{tag}-no-resend" for tag in NO_RESEND_FAULTS}


def name_of(cell: dict[str, Any]) -> str:
    """The name a cell must have, derived from its phase and its fault."""
    fault = cell["fault"]
    kind = fault["kind"]
    if kind == "api_error":
        hint = fault.get("retryAfterSec")
        how = {None: "no-hint", 1: "hint", DAY: "hint-past-deadline"}[hint]
        tag = f"code-{fault['code']}-{code_name(fault['code'])}-{how}"
    elif kind == "http_status":
        how = fault["retry_after"]
        if how is None:
            suffix = "no-retry-after"
        elif fault.get("seconds", 1) == DAY:
            suffix = "retry-after-past-deadline"
        else:
            suffix = f"retry-after-{how}"
        tag = f"http-{fault['status']}-{suffix}"
    elif kind == "timeout":
        tag = "timeout-after-acting" if fault["server_acted"] else "timeout-before-acting"
    elif kind == "body":
        tag = fault["what"]
        assert tag.endswith("-after-acting") == fault.get("server_acted", False), tag
    elif kind == "huge_body":
        tag = f"huge-body-{fault['framing']}"
    else:
        tag = {
            "refused": "refused",
            "dropped": "dropped",
            "short_body": "body-cut-short",
            "slow_body": "very-slow-body",
        }[kind]
    if cell.get("policy", {}).get("resend_ambiguous_create") is False:
        tag += "-no-resend"
    return f"{cell['phase']}-{tag}"


def test_table_covers_exactly_the_required_cells() -> None:
    """The table has every required cell once, each named after its phase and fault."""
    names = [cell["name"] for cell in CELLS]
    assert len(names) == len(set(names))
    assert [name_of(cell) for cell in CELLS] == names
    assert set(names) == required_cells()
    for cell in CELLS:
        if cell["fault"]["kind"] != "refused":
            fault_step(cell["fault"])  # the harness knows how to inflict it
        expect = cell["expect"]
        hinted_retry = expect["retried"] and expect["retry_after"] is not None
        assert (expect["min_wait"] is not None) == hinted_retry, cell["name"]
        assert expect["retried"] == (expect["outcome"] == "solved"), cell["name"]
        assert set(cell.get("policy", {})) <= {"resend_ambiguous_create"}, cell["name"]
        if expect["may_have_billed"] and cell.get("policy"):  # the opt-out gives up on it
            assert not expect["retried"], cell["name"]


def test_table_states_the_setup_the_cells_run_with() -> None:
    """The table's stated transport settings are the ones the cells use."""
    transport = SPEC["setup"]["transport"]
    assert f"read_timeout={READ_TIMEOUT}" in transport
    assert f"max_reply_bytes={MAX_REPLY_BYTES}" in transport
    assert "connect_timeout=2.0" in transport


def test_table_agrees_with_the_error_code_spec() -> None:
    """Each documented code's cells carry the bucket and name of specs/error-codes.json."""
    spec = {row["code"]: (row["bucket"], row["name"]) for row in CODE_SPEC}
    for cell in CELLS:
        fault, expect = cell["fault"], cell["expect"]
        if fault["kind"] == "api_error" and fault["code"] in spec:
            assert (expect["bucket"], expect["name"]) == spec[fault["code"]], cell["name"]
