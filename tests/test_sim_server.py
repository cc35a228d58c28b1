"""The simulated API served over real HTTP on 127.0.0.1 (`SimulatorServer`, `serve-sim`)."""

from __future__ import annotations

import contextlib
import json
import pathlib
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import captchaflow.transports.sim as sim_package
from captchaflow.engine import Engine, PermanentError, cli
from captchaflow.policies import FixedInterval
from captchaflow.transports import ApiKey, ApiRequest, ErrorCode, HttpxTransport, SentNoReply
from captchaflow.transports.sim import (
    AccountSpec,
    FaultKind,
    FaultRates,
    Outage,
    PlanState,
    Scenario,
    ScheduledFault,
    SimulatedAPI,
    SimulatorServer,
    TaskTypeSpec,
    simulator_in_thread,
)

ROOT = pathlib.Path(__file__).parents[1]
KEY = "sim-server-test-key"
TASK = {"type": "ImageToTextTask", "body": "aGVsbG8="}
QUICK_TASK = TaskTypeSpec(solve_seconds=0.3, solve_spread=0.0, min_solve_seconds=0.0)
QUICK = Scenario(accounts=(AccountSpec(key=KEY),), default_task=QUICK_TASK, latency=0.0)
FOREVER = 1e9


def faulty(kind: FaultKind, **rates: float) -> Scenario:
    """`QUICK`, with every request suffering `kind`."""
    return Scenario(
        accounts=(AccountSpec(key=KEY),),
        latency=0.0,
        faults=FaultRates(**rates),
        scheduled_faults=(ScheduledFault(start=0, end=FOREVER, kind=kind),),
    )


@contextlib.asynccontextmanager
async def served(
    scenario: Scenario, *, timeout: float = 5.0
) -> AsyncIterator[tuple[SimulatorServer, httpx.AsyncClient]]:
    """A simulator serving `scenario` on 127.0.0.1, and an httpx client pointed at it."""
    async with (
        SimulatorServer(SimulatedAPI(scenario)) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=timeout) as client,
    ):
        yield server, client


def body(**fields: Any) -> bytes:
    """A JSON request body carrying `KEY` as `clientKey` (unless overridden)."""
    return json.dumps({"clientKey": KEY, **fields}).encode()


# -- the engine and httpx against the served simulator ------------------------------------


@pytest.mark.anyio
async def test_engine_solves_a_task_over_http() -> None:
    """The engine's own HttpxTransport drives a task to the simulator's solution over HTTP,
    polling while it is processing (a 1-s solve against 0.2-s polls: a loaded machine's
    slow createTask reply cannot skip the processing replies)."""
    one_second = Scenario(
        accounts=QUICK.accounts,
        default_task=TaskTypeSpec(solve_seconds=1.0, solve_spread=0.0, min_solve_seconds=0.0),
        latency=0.0,
    )
    api = SimulatedAPI(one_second, seed=3)
    async with SimulatorServer(api) as server:
        engine = Engine(KEY, base_url=server.base_url, poll_schedule=FixedInterval(interval=0.2))
        async with engine:
            solution = await engine.solve(TASK, timeout=10)
    assert solution == api.tasks[1].solution
    assert api.stats.tasks_created == 1
    assert api.stats.solutions_delivered == 1
    assert api.stats.outcomes["/getTaskResult processing"] >= 1


@pytest.mark.anyio
async def test_engine_wrong_key_is_permanent_code_1() -> None:
    """A key the simulator does not know fails the engine with KEY_DOES_NOT_EXIST (1)."""
    async with (
        SimulatorServer(SimulatedAPI(QUICK)) as server,
        Engine("not-the-key", base_url=server.base_url) as engine,
    ):
        with pytest.raises(PermanentError) as caught:
            await engine.solve(TASK, timeout=10)
    assert caught.value.code == ErrorCode.KEY_DOES_NOT_EXIST


@pytest.mark.anyio
async def test_wrong_key_is_code_1_on_every_endpoint() -> None:
    """A wrong, missing or non-string clientKey is answered with code 1 on each endpoint."""
    async with served(QUICK) as (_, client):
        for path, fields in [
            ("/createTask", {"task": TASK}),
            ("/getTaskResult", {"taskId": 1}),
            ("/getBalance", {}),
        ]:
            for key in ("wrong-key", None, 7):
                payload = fields if key is None else {"clientKey": key, **fields}
                reply = await client.post(path, json=payload)
                assert reply.status_code == 200
                assert reply.json()["code"] == ErrorCode.KEY_DOES_NOT_EXIST, (path, key)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/createTask", b"not json"),
        ("/createTask", b"[1, 2]"),
        ("/createTask", b'"a string"'),
        ("/createTask", b""),
        ("/createTask", b"\xff\xfe\x00garbage"),
        ("/createTask", body()),
        ("/createTask", body(task="ImageToTextTask")),
        ("/createTask", body(task={"body": "no type"})),
        ("/getTaskResult", b"{"),
        ("/getTaskResult", body()),
        ("/getTaskResult", body(taskId=12345)),
        ("/getBalance", b"nope"),
    ],
)
async def test_bad_bodies_are_code_10(path: str, content: bytes) -> None:
    """A body that is not a JSON object, or lacks `task`/`taskId`, is answered with code 10."""
    async with served(QUICK) as (_, client):
        reply = await client.post(path, content=content)
    assert reply.status_code == 200
    assert reply.json() == {"code": 10, "msg": "ERROR_BAD_PARAMETERS"}


@pytest.mark.anyio
async def test_refused_closes_the_connection_without_a_reply() -> None:
    """A REFUSED fate drops the connection at once: no response, a connection error."""
    async with served(faulty(FaultKind.REFUSED)) as (server, client):
        started = time.monotonic()
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.post("/createTask", content=body(task=TASK))
        assert time.monotonic() - started < 1.0
        async with HttpxTransport(server.base_url, read_timeout=5) as transport:
            with pytest.raises(SentNoReply):  # over HTTP the request had left already
                await transport.send(ApiRequest.create_task(ApiKey(KEY), TASK))
        assert server.api.stats.tasks_created == 0


@pytest.mark.anyio
async def test_timeout_holds_the_connection_silent() -> None:
    """A TIMEOUT fate sends nothing: a client with less patience times out, and the server
    hangs up without a reply once the fault's `timeout_seconds` have passed."""
    scenario = faulty(FaultKind.TIMEOUT_AFTER, timeout_seconds=0.6)
    async with served(scenario, timeout=0.2) as (server, client):
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/createTask", content=body(task=TASK))
        assert 0.2 <= time.monotonic() - started < 0.6
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            started = time.monotonic()
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/getBalance", content=body())
            assert 0.6 <= time.monotonic() - started < 2.0
        async with HttpxTransport(server.base_url) as transport:
            with pytest.raises(SentNoReply):
                await transport.send(ApiRequest.create_task(ApiKey(KEY), TASK), timeout=0.2)
        # The service acted on both lost createTasks: billed, never seen by the client.
        assert server.api.stats.tasks_billed_unseen == 2


@pytest.mark.anyio
async def test_slow_reply_is_really_slow() -> None:
    """A SLOW fate delivers the reply, `slow_seconds` late on the wall clock."""
    scenario = faulty(FaultKind.SLOW, slow_seconds=0.4)
    async with served(scenario) as (_, client):
        started = time.monotonic()
        reply = await client.post("/getBalance", content=body())
        assert time.monotonic() - started >= 0.4
    assert reply.json() == {"balance": -1}


@pytest.mark.anyio
async def test_requests_share_a_kept_alive_connection() -> None:
    """Consecutive requests from a pooled client travel over one kept-alive connection."""
    ports = set()
    async with served(QUICK) as (_, client):
        for _ in range(5):
            reply = await client.post("/getBalance", content=body())
            assert reply.status_code == 200
            ports.add(reply.extensions["network_stream"].get_extra_info("client_addr")[1])
    assert len(ports) == 1


# -- HTTP-level behaviour (a server thread, plain sockets) ---------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    """One healthy simulator served from a background thread for the HTTP-level tests."""
    with simulator_in_thread(SimulatedAPI(QUICK)) as running:
        yield running


def raw_exchange(server: SimulatorServer, data: bytes) -> bytes:
    """Send `data` on a fresh socket and return everything received until the server closes."""
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_only_post_on_the_three_endpoints(server: SimulatorServer) -> None:
    """Another method on an endpoint is 405 (Allow: POST); other paths are 404."""
    with httpx.Client(base_url=server.base_url) as client:
        for path in ("/createTask", "/getTaskResult", "/getBalance"):
            reply = client.get(path)
            assert (reply.status_code, reply.headers["allow"]) == (405, "POST")
            assert client.put(path, content=body()).status_code == 405
        assert client.get("/").status_code == 404
        assert client.post("/createTask/extra", content=body(task=TASK)).status_code == 404
        assert client.post("/nope", content=b"x").status_code == 404
        assert client.head("/getBalance").status_code == 405
        # The query string is not part of the path.
        assert "balance" in client.post("/getBalance?x=1", content=body()).json()


def test_body_size_is_bounded(server: SimulatorServer) -> None:
    """A body over 1 MiB is refused with 413, declared or chunked; 1 MiB itself is served."""
    big = b"x" * ((1 << 20) + 1)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        assert client.post("/createTask", content=big).status_code == 413
        assert client.post("/createTask", content=iter([big[:4096], big])).status_code == 413
        padded = body(task=TASK).ljust(1 << 20)
        assert "taskId" in client.post("/createTask", content=padded).json()


def test_header_size_is_bounded(server: SimulatorServer) -> None:
    """A request head over 16 KiB is refused with 431, whole or trickled."""
    with httpx.Client(base_url=server.base_url) as client:
        reply = client.post("/getBalance", content=body(), headers={"x-pad": "a" * 20_000})
    assert reply.status_code == 431
    head = b"POST /getBalance HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 70_000
    assert raw_exchange(server, head).startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize(
    "data",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /getBalance HTTP/1.1\r\n\r\n",  # no Host header
        b"POST /getBalance HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n",
        b"POST /getBalance HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ],
)
def test_bad_http_is_400(server: SimulatorServer, data: bytes) -> None:
    """Malformed HTTP is answered 400 and the connection closed, without a traceback."""
    reply = raw_exchange(server, data)
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert b"connection: close" in reply.lower()


def test_expect_100_continue_and_pipelining(server: SimulatorServer) -> None:
    """`Expect: 100-continue` gets a 100 first; two requests sent at once get two replies."""
    payload = body()
    head = b"POST /getBalance HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(payload)
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(payload)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b'{"balance": -1}')
    closing = head + b"Connection: close\r\n\r\n" + payload
    replies = raw_exchange(server, head + b"\r\n" + payload + closing)
    assert replies.count(b"HTTP/1.1 200 OK") == 2


# -- the served simulator against specs/openapi.json --------------------------------------

SPEC = json.loads((ROOT / "specs" / "openapi.json").read_text())
REGISTRY = Registry().with_resource(
    "urn:openapi", Resource.from_contents(SPEC, default_specification=DRAFT202012)
)


def pointer(*parts: str) -> str:
    """A JSON pointer to `parts` (escaped)."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def spec_validator(*parts: str) -> Draft202012Validator:
    """A validator for the schema at `parts` in the OpenAPI document."""
    return Draft202012Validator({"$ref": "urn:openapi#" + pointer(*parts)}, registry=REGISTRY)


def response_validator(path: str, status: int) -> Draft202012Validator:
    """The schema of the JSON reply to POST `path` with `status`; fails if the spec has none."""
    responses = SPEC["paths"][path]["post"]["responses"]
    assert str(status) in responses, f"the spec has no {status} reply for {path}"
    parts = ("paths", path, "post", "responses", str(status), "content", "application/json")
    return spec_validator(*parts, "schema")


def account(**fields: Any) -> Scenario:
    """A scenario with one account (`KEY`, `fields`), quick tasks and no latency."""
    unsolvable = TaskTypeSpec(solve_seconds=0, solve_spread=0, min_solve_seconds=0,
                              unsolvable_rate=1.0)  # fmt: skip
    return Scenario(
        accounts=(AccountSpec(key=KEY, **fields),),
        default_task=QUICK_TASK,
        task_types={"Unsolvable": unsolvable},
        latency=0.0,
    )


CREATE = ("/createTask", body(task=TASK))
POLL_1 = ("/getTaskResult", body(taskId=1))
BALANCE = ("/getBalance", body())
ALL_THREE = [CREATE, POLL_1, BALANCE]
# Each scenario, with the requests sent to it in order (`None`: wait for the solve time).
BATCHES: dict[str, tuple[Scenario, Sequence[tuple[str, bytes] | None]]] = {
    "healthy": (
        account(balance=10.0),
        [
            CREATE,
            POLL_1,
            BALANCE,
            ("/createTask", body(clientKey="wrong", task=TASK)),
            ("/createTask", json.dumps({"task": TASK}).encode()),
            ("/getTaskResult", body(clientKey=None, taskId=1)),
            ("/getBalance", body(clientKey="wrong")),
            ("/createTask", b"not json"),
            ("/createTask", b"[]"),
            ("/createTask", body()),
            ("/createTask", body(task={"no": "type"})),
            ("/getTaskResult", body()),
            ("/getTaskResult", body(taskId=99)),
            ("/getTaskResult", body(taskId="1")),
            ("/getBalance", b"\x00"),
            ("/createTask", body(task={"type": "Unsolvable"})),
            ("/getTaskResult", body(taskId=2)),
            None,
            POLL_1,
            POLL_1,
        ],
    ),
    "rate limit": (account(rate_limit=1, rate_window=60), [*ALL_THREE, CREATE]),
    "zero balance": (account(balance=0.0), [CREATE, BALANCE, POLL_1]),
    "plan expired": (account(plan=PlanState.EXPIRED), ALL_THREE),
    "plan inactive": (account(plan=PlanState.INACTIVE), ALL_THREE),
    "outage": (
        Scenario(accounts=(AccountSpec(key=KEY),), outages=(Outage(start=0, end=3600),)),
        ALL_THREE,
    ),
    "outage without hint": (
        Scenario(
            accounts=(AccountSpec(key=KEY),), outages=(Outage(start=0, end=3600, hint=False),)
        ),
        ALL_THREE,
    ),
    "no slot": (  # tasks take 0.5 s or more, so the second create finds the slot busy
        Scenario(accounts=(AccountSpec(key=KEY, slots=1),), latency=0.0),
        [CREATE, CREATE, POLL_1],
    ),
    "daily quota": (account(daily_quota=1), [CREATE, CREATE]),
    "plan quota": (account(plan_quota=1, plan_quota_resets_at=600), [CREATE, CREATE]),
    "plan quota, no reset": (account(plan_quota=1), [CREATE, CREATE]),
}


def run_batch(
    scenario: Scenario, requests: Sequence[tuple[str, bytes] | None]
) -> list[tuple[str, httpx.Response]]:
    """Serve `scenario` and send it `requests` over one client; return every reply."""
    replies = []
    with (
        simulator_in_thread(SimulatedAPI(scenario, seed=5)) as running,
        httpx.Client(base_url=running.base_url, timeout=5) as client,
    ):
        for request in requests:
            if request is None:
                time.sleep(QUICK_TASK.solve_seconds + 0.05)
                continue
            path, content = request
            replies.append((path, client.post(path, content=content)))
    return replies


def test_served_replies_validate_against_openapi() -> None:
    """Every reply of every endpoint, in scenarios that cover every documented code and each
    success shape, has a status and a JSON body that specs/openapi.json allows."""
    codes: set[int] = set()
    shapes: set[str] = set()
    for name, (scenario, requests) in BATCHES.items():
        for path, reply in run_batch(scenario, requests):
            payload = reply.json()
            errors = list(response_validator(path, reply.status_code).iter_errors(payload))
            assert not errors, (name, path, payload, [e.message for e in errors])
            if "code" in payload:
                codes.add(payload["code"])
                shapes.add("error+hint" if "retryAfterSec" in payload else "error")
            else:
                shapes.add(f"{path} {payload.get('status', '')}".strip())
    assert codes == {int(code) for code in ErrorCode}
    enum = SPEC["components"]["schemas"]["ErrorCode"]["enum"]
    assert sorted(enum) == sorted(codes)
    assert shapes == {
        "/createTask",
        "/getTaskResult processing",
        "/getTaskResult ready",
        "/getBalance",
        "error",
        "error+hint",
    }


def test_openapi_schemas_are_valid_and_strict() -> None:
    """The spec's schemas are valid JSON Schema 2020-12, reject wrong shapes, and accept the
    requests the engine itself sends."""
    for schema in SPEC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    create = response_validator("/createTask", 200)
    assert not create.is_valid({"taskId": 1, "extra": True})
    assert not create.is_valid({"code": 99, "msg": "NOT_DOCUMENTED"})
    assert not create.is_valid({"code": 16, "msg": "RATE_LIMITED", "retryAfterSec": 1.5})
    assert not response_validator("/getTaskResult", 200).is_valid({"status": "ready"})
    assert not response_validator("/getBalance", 200).is_valid({"balance": "12"})
    key = ApiKey(KEY)
    for request, path in [
        (ApiRequest.create_task(key, TASK), "/createTask"),
        (ApiRequest.get_task_result(key, 7), "/getTaskResult"),
        (ApiRequest.get_task_result(key, "a-string-id"), "/getTaskResult"),
    ]:
        parts = ("paths", path, "post", "requestBody", "content", "application/json", "schema")
        spec_validator(*parts).validate(json.loads(request.body()))


# -- the serve-sim command (in-process: the failures return before serving) ----------------


def run_main(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `captchaflow ARGV` in-process; return the exit status, stdout and stderr."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def scenario_file(tmp_path: pathlib.Path, name: str, text: str | bytes) -> str:
    """Write a scenario file and return its path."""
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "70000"], "--port"),
        (["--port", "http"], "--port"),
        (["--solve-seconds", "-1"], "--solve-seconds"),
        (["--solve-seconds", "nan"], "--solve-seconds"),
        (["--solve-seconds", "0"], "--solve-seconds"),
        (["--seed", "x"], "--seed"),
        (["--key", ""], "--key"),
        (["--key", " padded "], "--key"),
        (["--scenario", "/nonexistent/scenario.json"], "cannot read --scenario"),
        (["--bogus"], "unrecognized"),
        (["--host", "192.0.2.1"], "cannot listen"),  # TEST-NET-1: not an address of ours
    ],
)
def test_serve_sim_usage_errors(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad serve-sim options fail with exit 2 and one line on stderr, before serving."""
    code, out, err = run_main(["serve-sim", *args], capsys)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.json", "{not json", "not valid json"),
        ("bad.toml", "accounts = [", "not valid toml"),
        ("list.json", "[1, 2]", "object/table"),
        ("extra.json", '{"acounts": []}', "acounts"),
        ("value.toml", "[[accounts]]\nkey = 'k'\nslots = 0\n", "slots"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "--scenario"),
        ("binary.json", b"\xff\xfe\xfa", "--scenario"),
        ("dupe.json", '{"accounts": [{"key": "a"}, {"key": "b"}]}', "share a key"),
    ],
)
def test_serve_sim_invalid_scenario(
    tmp_path: pathlib.Path,
    name: str,
    text: str | bytes,
    needle: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unreadable or invalid scenario file fails with exit 2 and one line on stderr."""
    argv = ["serve-sim", "--scenario", scenario_file(tmp_path, name, text)]
    if name == "dupe.json":
        argv += ["--key", "b"]
    code, out, err = run_main(argv, capsys)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and needle in err.lower(), err


def test_serve_sim_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    """A port another socket listens on fails with exit 2 and one line on stderr."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_main(["serve-sim", "--port", str(port)], capsys)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and "cannot listen" in err and str(port) in err


class FakeServer:
    """Stands in for a listening `SimulatorServer` in the CLI glue tests."""

    base_url = "http://192.0.2.1:8080"


def test_serve_sim_prints_the_url_first_and_warns_off_loopback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    """The base URL is stdout's first line; a non-loopback --host adds one warning line; the
    flags override the scenario file's first key and default solve time."""
    seen: dict[str, Any] = {}

    def fake_serve(api: SimulatedAPI, *, host: str, port: int, on_ready: Any) -> None:
        seen.update(api=api, host=host, port=port)
        on_ready(FakeServer())

    # The command imports the simulator when it runs: patch it where it is imported from.
    monkeypatch.setattr(sim_package, "serve_simulator", fake_serve)
    toml = '[[accounts]]\nkey = "file-key"\n[[accounts]]\nkey = "other"\n'
    toml += "[default_task]\nsolve_seconds = 9.0\nsolve_spread = 4.0\nmin_solve_seconds = 2.0\n"
    path = scenario_file(tmp_path, "s.toml", toml)
    argv = ["serve-sim", "--host", "192.0.2.1", "--port", "8080", "--key", "k2", "--seed", "4"]
    code, out, err = run_main([*argv, "--scenario", path, "--solve-seconds", "2"], capsys)
    assert (code, out) == (0, "http://192.0.2.1:8080\n")
    assert len(err.splitlines()) == 1 and "not a loopback address" in err
    api = seen["api"]
    assert (seen["host"], seen["port"], api.seed, api.keep_log) == ("192.0.2.1", 8080, 4, False)
    assert [a.key for a in api.scenario.accounts] == ["k2", "other"]
    assert api.scenario.default_task == TaskTypeSpec(
        solve_seconds=2.0, solve_spread=1.0, min_solve_seconds=1.0
    )
    for host in ("127.0.0.1", "localhost", "::1", "127.8.9.10"):
        assert run_main(["serve-sim", "--host", host], capsys)[2] == ""
    assert seen["api"].scenario.default_task.solve_seconds == 5.0  # no file: 5 s
