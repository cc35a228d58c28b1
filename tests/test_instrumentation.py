"""Instrumentation: frozen records of every move and request, handed to hooks by the drivers,
and the built-in hooks (logging, JSON lines, Prometheus, OpenTelemetry) with the real
libraries."""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from stub_api import StubAPI, accepted, error, processing, ready
from test_cli import KEY, TASK_JSON, solve

from captchaflow.engine import Engine, Job, Simulation, VirtualClock, balance, log_move
from captchaflow.engine import solve as solve_sync
from captchaflow.engine.instrumentation import (
    DEFAULT_HOOKS,
    RECORD_ATTRIBUTE,
    JsonLogFormatter,
    LoggingHook,
    MoveRecord,
    OpenTelemetryHook,
    PrometheusHook,
    RequestRecord,
    move_record,
)
from captchaflow.policies import DocumentedPolicy, FixedInterval, OpenGate
from captchaflow.transports import ApiKey, ApiReply, ApiRequest, Endpoint, HandlerTransport
from captchaflow.transports.sim import AccountSpec, Scenario, SimulatedAPI

TASK = {"type": "ImageToTextTask", "body": "aGk="}
Record = MoveRecord | RequestRecord

RATE_LIMITED = ApiReply.json({"code": 16, "msg": "RATE_LIMITED", "retryAfterSec": 0})
ACCEPTED = ApiReply.json({"taskId": 9})
PROCESSING = ApiReply.json({"status": "processing"})
READY = ApiReply.json({"status": "ready", "solution": {"text": "xyz"}})
BAD_KEY = ApiReply.json({"code": 1, "msg": "KEY_DOES_NOT_EXIST"})


class Recorder:
    """A hook that keeps every record it is given, in order."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def on_move(self, record: MoveRecord) -> None:
        """Keep the move."""
        self.records.append(record)

    def on_request(self, record: RequestRecord) -> None:
        """Keep the request."""
        self.records.append(record)

    def moves(self) -> list[MoveRecord]:
        """The move records, in order."""
        return [r for r in self.records if isinstance(r, MoveRecord)]

    def requests(self) -> list[RequestRecord]:
        """The request records, in order."""
        return [r for r in self.records if isinstance(r, RequestRecord)]


class Broken:
    """A hook that raises on every record (quoting the key, which must not be shown)."""

    def on_move(self, record: MoveRecord) -> None:
        """Fail."""
        raise RuntimeError("on_move broke")

    def on_request(self, record: RequestRecord) -> None:
        """Fail (a job's first record is its first request)."""
        raise RuntimeError(f"on_request broke ({KEY})")


def scripted(
    create: list[ApiReply], poll: list[ApiReply], clock: VirtualClock | None = None
) -> HandlerTransport:
    """A transport answering each endpoint from its script (the last reply repeats); each
    request takes 0.25 s of `clock`, if given."""
    scripts = {Endpoint.CREATE_TASK: list(create), Endpoint.GET_TASK_RESULT: list(poll)}

    def handler(request: ApiRequest) -> ApiReply:
        if clock is not None:
            clock.advance(0.25)
        script = scripts[request.endpoint]
        return script.pop(0) if len(script) > 1 else script[0]

    return HandlerTransport(handler)


def engine(transport: HandlerTransport, clock: VirtualClock, **options: Any) -> Engine:
    """An engine on `transport` in virtual time, without a gate, with a seeded policy."""
    return Engine(
        KEY,
        transport=transport,
        clock=clock,
        gate=OpenGate(),
        policy=DocumentedPolicy(rng=random.Random(0)),
        **options,
    )


def new_job(now: float = 0.0) -> Job:
    """A job on the test key, not yet started."""
    key = ApiKey(KEY)
    return Job(
        TASK, key=key, policy=DocumentedPolicy(), schedule=FixedInterval(), now=now, timeout=60
    )


def record_text(record: Record) -> str:
    """Every field of `record`, as JSON."""
    return json.dumps(attrs.asdict(record))


# -- the records -------------------------------------------------------------------------


def test_records_are_frozen() -> None:
    """A record is a frozen copy: it cannot be changed, and changing the job changes none."""
    job = new_job(now=5.0)
    job.cancel(7.5)
    record = move_record(job, job.history[0])
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        record.cause = "changed"  # type: ignore[misc]
    assert (record.at, record.elapsed, record.delay, record.task_id) == (7.5, 2.5, None, None)
    assert record.job == f"job-{job.serial}"
    job.task_id = 9
    assert record.job == f"job-{job.serial}" and job.name == "task 9"


def test_job_names_are_readable_and_never_hold_the_key() -> None:
    """`job-<serial>` before a task id (serials count up), `task <id>` after, redacted."""
    first, second = new_job(), new_job()
    assert second.serial == first.serial + 1
    assert first.name == f"job-{first.serial}"
    first.task_id = f"t-{KEY}"
    assert first.name == "task t-***"


@pytest.mark.anyio
async def test_no_record_holds_the_key_even_when_the_server_echoes_it() -> None:
    """The server quotes the key in an error message and in the task id: no record (nor
    the log line made of it) holds it."""
    recorder = Recorder()
    echo = ApiReply.json({"code": 16, "msg": f"slow down {KEY}", "retryAfterSec": 0})
    odd = ApiReply.json({"code": 99, "msg": KEY})
    transport = scripted([echo, ApiReply.json({"taskId": f"t-{KEY}"})], [PROCESSING, odd])
    job = await engine(transport, VirtualClock(), hooks=[recorder], timeout=30).run(TASK)
    assert job.state == "failed"
    assert {r.outcome for r in recorder.requests()} >= {"RATE_LIMITED", "accepted"}
    assert any(r.task_id == "t-***" for r in recorder.records)
    for record in recorder.records:
        assert KEY not in record_text(record), record


# -- the drivers ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_driver_reports_every_move_and_request_in_order() -> None:
    """One MoveRecord per history entry, one RequestRecord per request, as they happen:
    a request's record comes before the moves its reply caused; a `defer` carries its
    delay; names change from `job-N` to the task once it has an id."""
    recorder = Recorder()
    clock = VirtualClock()
    transport = scripted([RATE_LIMITED, ACCEPTED], [PROCESSING, READY], clock)
    job = await engine(transport, clock, hooks=[recorder]).run(TASK)
    assert job.state == "ready"
    kinds = [
        (r.kind, r.endpoint if isinstance(r, RequestRecord) else r.trigger)
        for r in recorder.records
    ]
    assert kinds == [
        ("request", "/createTask"),
        ("move", "defer"),
        ("move", "retry_submit"),
        ("request", "/createTask"),
        ("move", "accept"),
        ("request", "/getTaskResult"),
        ("request", "/getTaskResult"),
        ("move", "solve"),
    ]
    moves = recorder.moves()
    assert [(m.at, m.source, m.dest, m.trigger, m.cause) for m in moves] == job.history
    requests = recorder.requests()
    assert len(requests) == job.requests_sent == transport.requests_sent
    assert [r.outcome for r in requests] == ["RATE_LIMITED", "accepted", "processing", "ready"]
    assert [r.attempt for r in requests] == [0, 1, 0, 0]
    assert all(r.latency == pytest.approx(0.25) for r in requests)
    assert requests[0].code == 16 and requests[1].code is None
    defer, retry = moves[0], moves[1]
    assert defer.delay is not None and defer.delay > 0
    assert retry.at == pytest.approx(defer.at + defer.delay)
    assert retry.delay is None and moves[-1].delay is None
    name = f"job-{job.serial}"
    assert [r.job for r in recorder.records] == [name] * 4 + ["task 9"] * 4
    assert {r.serial for r in recorder.records} == {job.serial}
    assert moves[-1].elapsed == pytest.approx(moves[-1].at - job.started_at)


@pytest.mark.anyio
async def test_a_raising_hook_breaks_no_job_and_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook that raises on every record: the jobs still finish, the other hooks still
    get every record, and one WARNING says so (without the key it raised with)."""
    caplog.set_level(logging.DEBUG, logger="captchaflow")
    broken, recorder = Broken(), Recorder()
    clock = VirtualClock()
    for _ in range(2):
        transport = scripted([ACCEPTED], [READY])
        job = await engine(transport, clock, hooks=[broken, recorder]).run(TASK)
        assert job.solution == {"text": "xyz"}
    assert len(recorder.moves()) == 4 and len(recorder.requests()) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "Broken" in warnings[0] and "***" in warnings[0] and KEY not in warnings[0]


@pytest.mark.anyio
async def test_on_move_and_hooks_both_work() -> None:
    """The older `on_move` callback still sees every move, next to the hooks."""
    seen: list[tuple[Job, Any]] = []
    recorder = Recorder()
    transport = scripted([ACCEPTED], [READY])
    job = await engine(
        transport, VirtualClock(), hooks=[recorder], on_move=lambda j, m: seen.append((j, m))
    ).run(TASK)
    assert [move for _, move in seen] == job.history
    assert len(recorder.moves()) == len(job.history)


@pytest.mark.anyio
async def test_no_hooks_no_log_records(caplog: pytest.LogCaptureFixture) -> None:
    """`hooks=()` turns the default logging off."""
    caplog.set_level(logging.DEBUG, logger="captchaflow")
    await engine(scripted([ACCEPTED], [READY]), VirtualClock(), hooks=()).run(TASK)
    assert not [r for r in caplog.records if r.name.startswith("captchaflow")]


@pytest.mark.anyio
async def test_balance_queries_report_their_requests() -> None:
    """`Engine.balance` hands each getBalance request to the hooks, as job `balance`."""
    recorder = Recorder()
    replies = iter([RATE_LIMITED, ApiReply.json({"balance": 12.5})])
    transport = HandlerTransport(lambda request: next(replies))
    amount = await engine(transport, VirtualClock(), hooks=[recorder]).balance()
    assert amount == 12.5
    requests = recorder.requests()
    assert [(r.job, r.serial, r.endpoint) for r in requests] == [
        ("balance", None, "/getBalance")
    ] * 2
    assert [r.outcome for r in requests] == ["RATE_LIMITED", "balance"]
    assert not recorder.moves()


def test_sync_facades_pass_hooks_on() -> None:
    """`solve` and `balance` (and so `solve_many`, through `EngineOptions`) take `hooks`."""
    recorder = Recorder()
    solution = solve_sync(
        TASK,
        key=KEY,
        transport=scripted([ACCEPTED], [READY]),
        poll_schedule=FixedInterval(interval=0.01),
        gate=OpenGate(),
        hooks=[recorder],
    )
    assert solution == {"text": "xyz"}
    assert [r.kind for r in recorder.records] == ["request", "move", "request", "move"]
    transport = HandlerTransport(lambda request: ApiReply.json({"balance": 3}))
    assert balance(key=KEY, transport=transport, hooks=[recorder]) == 3
    assert recorder.records[-1].endpoint == "/getBalance"  # type: ignore[union-attr]


def test_simulation_hands_records_to_its_hooks() -> None:
    """The simulation gives its hooks one record per move and per request, in virtual time;
    without hooks (the default) it runs as before."""
    recorder = Recorder()
    api = SimulatedAPI(Scenario(accounts=(AccountSpec(key=KEY),)), seed=3)
    sim = Simulation(api, key=KEY, hooks=[recorder])
    for i in range(20):
        sim.submit(TASK, at=i * 0.5)
    report = sim.run()
    assert len(recorder.moves()) == sum(len(job.history) for job in report.jobs)
    assert len(recorder.requests()) == sum(job.requests_sent for job in report.jobs)
    for job in report.jobs:
        mine = [r for r in recorder.moves() if r.serial == job.serial]
        assert [(m.at, m.source, m.dest, m.trigger, m.cause) for m in mine] == job.history
    assert Simulation(api, key=KEY).hooks == ()


# -- logging -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_logging_hook_writes_the_move_lines_and_request_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The default hooks: a DEBUG line per move on `captchaflow` (the same text `log_move`
    gives) and one per request on `captchaflow.requests`."""
    caplog.set_level(logging.DEBUG, logger="captchaflow")
    transport = scripted([RATE_LIMITED, ACCEPTED], [READY])
    job = await engine(transport, VirtualClock()).run(TASK)
    moves = [r for r in caplog.records if r.name == "captchaflow"]
    requests = [r for r in caplog.records if r.name == "captchaflow.requests"]
    assert {r.levelno for r in moves + requests} == {logging.DEBUG}
    name = f"job-{job.serial}"
    texts = [r.getMessage() for r in moves]
    assert texts[0].startswith(f"{name}: submitted -> backoff [defer] RATE_LIMITED (16) on ")
    assert texts[1:] == [
        f"{name}: backoff -> submitted [retry_submit] wait over",
        "task 9: submitted -> polling [accept] task 9 accepted",
        "task 9: polling -> ready [solve] solved after 1 poll",
    ]
    assert [r.getMessage() for r in requests] == [
        f"{name}: /createTask -> RATE_LIMITED (16) in 0.000s",
        f"{name}: /createTask -> accepted in 0.000s",
        "task 9: /getTaskResult -> ready in 0.000s",
    ]
    assert all(isinstance(getattr(r, RECORD_ATTRIBUTE), MoveRecord) for r in moves)
    caplog.clear()
    for move in job.history:
        log_move(job, move)
    assert [r.getMessage() for r in caplog.records][-2:] == texts[-2:]
    assert isinstance(DEFAULT_HOOKS[0], LoggingHook)


def test_json_formatter_gives_one_parseable_object_per_line() -> None:
    """Each log record is one line of JSON with the record's fields and `event`; a record
    no hook logged keeps its message."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("test_instrumentation.json")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        hook = LoggingHook(logger)
        job = new_job()
        job.cancel(1.0, "stop\nnow \x1b[2J")
        move = move_record(job, job.history[0])
        hook.on_move(move)
        hook.on_request(REQUEST)
        logger.warning("plain")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and all(line.isascii() and line.isprintable() for line in lines)
    first, second, third = (json.loads(line) for line in lines)
    assert first["event"] == "move" and first["level"] == "DEBUG"
    assert {k: first[k] for k in attrs.asdict(move)} == attrs.asdict(move)
    assert second["event"] == "request" and second["logger"] == "test_instrumentation.json.requests"
    assert (second["outcome"], second["latency"], second["code"]) == ("HTTP_503", 0.5, None)
    assert third == {**third, "message": "plain", "level": "WARNING"} and "event" not in third


REQUEST = RequestRecord(
    job="task 9",
    serial=1,
    endpoint="/getTaskResult",
    attempt=0,
    sent_at=1.0,
    latency=0.5,
    outcome="HTTP_503",
    code=None,
    task_id="9",
)


# -- Prometheus ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_prometheus_hook_counts_requests_and_times_solutions() -> None:
    """Requests by endpoint and outcome, their latency, time to solution, jobs by state."""
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)
    clock = VirtualClock()
    solved = await engine(
        scripted([RATE_LIMITED, ACCEPTED], [PROCESSING, READY], clock), clock, hooks=[hook]
    ).run(TASK)
    failed = await engine(
        scripted([BAD_KEY], [READY], clock), clock, hooks=[PrometheusHook(registry)]
    ).run(TASK)
    assert (solved.state, failed.state) == ("ready", "failed")

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    requests = "captchaflow_requests_total"
    assert value(requests, endpoint="/createTask", outcome="RATE_LIMITED") == 1
    assert value(requests, endpoint="/createTask", outcome="accepted") == 1
    assert value(requests, endpoint="/createTask", outcome="KEY_DOES_NOT_EXIST") == 1
    assert value(requests, endpoint="/getTaskResult", outcome="processing") == 1
    assert value(requests, endpoint="/getTaskResult", outcome="ready") == 1
    latency = "captchaflow_request_latency_seconds"
    assert value(f"{latency}_count", endpoint="/getTaskResult") == 2
    assert value(f"{latency}_sum", endpoint="/getTaskResult") == pytest.approx(0.5)
    assert value(f"{latency}_count", endpoint="/createTask") == 3
    elapsed = solved.history[-1].at - solved.started_at
    assert value("captchaflow_time_to_solution_seconds_count") == 1
    assert value("captchaflow_time_to_solution_seconds_sum") == pytest.approx(elapsed)
    assert value("captchaflow_jobs_total", state="ready") == 1
    assert value("captchaflow_jobs_total", state="failed") == 1
    assert value("captchaflow_jobs_total", state="cancelled") is None


# -- OpenTelemetry -------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[tuple[OpenTelemetryHook, InMemorySpanExporter]]:
    """An OpenTelemetryHook on an SDK tracer provider whose spans are kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OpenTelemetryHook(provider.get_tracer("test")), exporter
    provider.shutdown()


@pytest.mark.anyio
async def test_opentelemetry_hook_gives_a_span_per_job_and_an_event_per_move(
    spans: tuple[OpenTelemetryHook, InMemorySpanExporter],
) -> None:
    """Each job is one finished span with one event per move (the record's fields as
    attributes); a failed job's span has status ERROR, a solved one's does not."""
    hook, exporter = spans
    clock = VirtualClock()
    solved = await engine(scripted([RATE_LIMITED, ACCEPTED], [READY]), clock, hooks=[hook]).run(
        TASK
    )
    failed = await engine(scripted([BAD_KEY], [READY]), clock, hooks=[hook]).run(TASK)
    finished = exporter.get_finished_spans()
    assert len(finished) == 2
    by_serial = {span.attributes["captchaflow.serial"]: span for span in finished}  # type: ignore[index]
    for job in (solved, failed):
        span = by_serial[job.serial]
        assert span.name == "captchaflow.job"
        assert [event.name for event in span.events] == [move.trigger for move in job.history]
        for event, move in zip(span.events, job.history, strict=True):
            assert event.attributes is not None
            assert event.attributes["captchaflow.source"] == move.source
            assert event.attributes["captchaflow.dest"] == move.dest
            assert event.attributes["captchaflow.cause"] == move.cause
        assert span.attributes is not None and span.attributes["captchaflow.state"] == job.state
    assert by_serial[failed.serial].status.status_code is StatusCode.ERROR
    assert by_serial[solved.serial].status.status_code is StatusCode.UNSET
    assert by_serial[solved.serial].attributes["captchaflow.task_id"] == "9"  # type: ignore[index]


# -- the command line ----------------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text`, parsed as one JSON object each."""
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    ("flags", "events"),
    [(["-v"], ["move", "move"]), (["-vv"], ["request", "move", "request", "move"])],
)
def test_cli_log_format_json_prints_json_lines(flags: list[str], events: list[str]) -> None:
    """`solve --log-format json -v` prints one JSON object per move on stderr (`-vv`: per
    request too), the solution alone on stdout."""
    with StubAPI(create=[accepted(4242)], result=[ready({"text": "ok"})]) as stub:
        run = solve(stub, "--task", TASK_JSON, "--log-format", "json", *flags)
    assert run.code == 0 and json.loads(run.out) == {"text": "ok"}
    lines = json_lines(run.err)
    assert [line["event"] for line in lines] == events
    moves = [line for line in lines if line["event"] == "move"]
    assert [(m["source"], m["dest"], m["job"]) for m in moves] == [
        ("submitted", "polling", "task 4242"),
        ("polling", "ready", "task 4242"),
    ]
    if "-vv" in flags:
        assert [(r["job"], r["endpoint"]) for r in lines if r["event"] == "request"] == [
            ("job-1", "/createTask"),
            ("task 4242", "/getTaskResult"),
        ]


def test_cli_text_log_names_a_job_before_its_task_id() -> None:
    """`-v` text lines name a job without a task id `job-1`; `-vv` adds request lines."""
    limited = error(16, "RATE_LIMITED", retry_after=0)
    with StubAPI(create=[limited, accepted(4242)], result=[processing(), ready({})]) as stub:
        run = solve(stub, "--task", TASK_JSON, "-vv")
    assert run.code == 0
    assert (
        run.err_lines[0]
        == "captchaflow: job-1: /createTask -> RATE_LIMITED (16) in "
        + (run.err_lines[0].rsplit(" in ", 1)[1])
    )
    assert run.err_lines[1].startswith("captchaflow: job-1: submitted -> backoff [defer]")
    assert any(line.startswith("captchaflow: task 4242: /getTaskResult") for line in run.err_lines)
