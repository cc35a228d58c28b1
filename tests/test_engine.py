"""The async driver and the facades, under asyncio and trio, in virtual time."""

from __future__ import annotations

import inspect
import logging
import pathlib
import subprocess
import sys
import time
import typing
from collections.abc import Callable

import anyio
import pytest

from captchaflow.engine import (
    ConnectionFailedError,
    DeadlineExceededError,
    Engine,
    EngineOptions,
    InvalidTaskError,
    Job,
    Move,
    NoReplyError,
    PermanentError,
    PolicyError,
    TaskState,
    VirtualClock,
    _driver,
    drive_job,
    solve,
)
from captchaflow.engine._driver import SEND_GRACE
from captchaflow.policies import DocumentedPolicy, FixedInterval, NoRetry, OpenGate
from captchaflow.transports import (
    AiohttpTransport,
    ApiKey,
    ApiReply,
    ApiRequest,
    Endpoint,
    HandlerTransport,
    HttpxTransport,
    NotSent,
    SentNoReply,
)

TASK = {"type": "ImageToTextTask", "body": "aGk="}


def scripted(
    create: list[ApiReply | Exception], poll: list[ApiReply | Exception]
) -> Callable[[ApiRequest], ApiReply]:
    """A handler answering createTask and getTaskResult from two scripts (last one repeats)."""
    scripts = {Endpoint.CREATE_TASK: list(create), Endpoint.GET_TASK_RESULT: list(poll)}

    def handler(request: ApiRequest) -> ApiReply:
        script = scripts[request.endpoint]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler


OK_CREATE = ApiReply.json({"taskId": 9})
PROCESSING = ApiReply.json({"status": "processing"})
READY = ApiReply.json({"status": "ready", "solution": {"text": "xyz"}})


@pytest.mark.anyio
async def test_async_solve_with_rate_limit_in_virtual_time(secret_key: str) -> None:
    """A rate-limited poll waits its hint in virtual time, then the solution is returned."""
    clock = VirtualClock()
    handler = scripted(
        [OK_CREATE],
        [
            ApiReply.json({"code": 16, "msg": "RATE_LIMITED", "retryAfterSec": 30}),
            PROCESSING,
            READY,
        ],
    )
    async with Engine(secret_key, transport=HandlerTransport(handler), clock=clock) as engine:
        assert await engine.solve(TASK) == {"text": "xyz"}
    assert clock.now() == pytest.approx(2 + 30 + 2)


@pytest.mark.anyio
async def test_async_permanent_error_raises_with_history(secret_key: str) -> None:
    """ZERO_BALANCE raises PermanentError after one request, carrying the history."""
    transport = HandlerTransport(
        scripted([ApiReply.json({"code": 3, "msg": "ZERO_BALANCE"})], [READY])
    )
    engine = Engine(secret_key, transport=transport, clock=VirtualClock())
    with pytest.raises(PermanentError) as caught:
        await engine.solve(TASK)
    assert caught.value.name == "ZERO_BALANCE" and caught.value.code == 3
    assert [m.dest for m in caught.value.history] == ["failed"]
    assert transport.requests_sent == 1


@pytest.mark.anyio
async def test_run_returns_finished_job(secret_key: str) -> None:
    """`Engine.run` returns the finished job with its history instead of raising."""
    transport = HandlerTransport(scripted([NotSent("refused")], [READY]))
    engine = Engine(secret_key, transport=transport, clock=VirtualClock(), policy=NoRetry())
    job = await engine.run(TASK)
    assert job.state == TaskState.FAILED
    assert isinstance(job.error, ConnectionFailedError)


@pytest.mark.anyio
async def test_a_transport_bug_fails_the_job_at_once_naming_the_transport(
    secret_key: str,
) -> None:
    """A transport raising something no network raises (RuntimeError, KeyError: a bug) fails
    the job at once with PolicyError naming the transport, even with a policy that would
    retry: resending could bill a createTask twice, and a bug does not heal."""
    for bug in (RuntimeError("oops"), KeyError("reply")):
        transport = HandlerTransport(scripted([bug], [READY]))
        engine = Engine(secret_key, transport=transport, clock=VirtualClock())
        job = await engine.run(TASK)
        assert isinstance(job.error, PolicyError) and "HandlerTransport" in str(job.error)
        assert job.requests_sent == 1


@pytest.mark.anyio
async def test_a_raw_network_error_from_a_transport_is_sent_no_reply(secret_key: str) -> None:
    """An OSError a transport lets through unwrapped is a network failure: sent, no reply."""
    transport = HandlerTransport(scripted([ConnectionResetError("reset")], [READY]))
    engine = Engine(secret_key, transport=transport, clock=VirtualClock(), policy=NoRetry())
    with pytest.raises(NoReplyError, match="reset"):
        await engine.solve(TASK)


class HangingTransport:
    """A transport whose send never returns (and ignores its timeout)."""

    async def send(self, request: ApiRequest, *, timeout: float | None = None) -> ApiReply:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Nothing to close."""


@pytest.mark.anyio
async def test_a_hanging_transport_cannot_hold_a_job_past_its_deadline(secret_key: str) -> None:
    """With the system clock and a 1.5-s deadline, a transport that never answers is cut off
    by the driver at the deadline (plus SEND_GRACE) as sent-no-reply, and the job ends."""
    # Polls every 0.5 s, so that a task created now could still be polled by the deadline.
    engine = Engine(
        secret_key,
        transport=HangingTransport(),
        timeout=1.5,
        poll_schedule=FixedInterval(interval=0.5),
    )
    started = time.monotonic()
    job = await engine.run(TASK)
    elapsed = time.monotonic() - started
    assert job.finished and job.error is not None
    assert 1.4 <= elapsed <= 1.5 + SEND_GRACE + 2.0  # slack for a loaded machine
    assert any("cut it off" in move.cause for move in job.history) or isinstance(
        job.error, NoReplyError | DeadlineExceededError
    )


class ClaimsToEndByTimeout(HangingTransport):
    """A hanging transport whose class says its sends end by their timeout."""

    SENDS_END_BY_TIMEOUT = True


class InheritsTheClaim(ClaimsToEndByTimeout):
    """A subclass, which may have changed `send`: the claim is its parent's, not its own."""


@pytest.mark.anyio
async def test_the_driver_trusts_only_a_transport_class_s_own_claim(secret_key: str) -> None:
    """A transport class that itself sets SENDS_END_BY_TIMEOUT is sent through without the
    driver's cut-off (the HTTP transports do, to save its CPU); one that only inherits the
    claim is still cut off SEND_GRACE after its timeout."""
    request = ApiRequest.create_task(ApiKey(secret_key), TASK)
    with anyio.move_on_after(SEND_GRACE + 1.0) as outer:
        await _driver._send(ClaimsToEndByTimeout(), request, 0.1)
    assert outer.cancelled_caught  # trusted: nothing but the test's own scope ended it
    started = time.monotonic()
    with anyio.fail_after(SEND_GRACE + 3.0):
        result = await _driver._send(InheritsTheClaim(), request, 0.1)
    assert isinstance(result, SentNoReply) and "cut it off" in result.message
    assert time.monotonic() - started >= 0.1 + SEND_GRACE - 0.05


def test_the_http_transports_claim_to_end_their_sends_by_timeout() -> None:
    """Both HTTP transports declare the claim in their own class (their transport tests
    hold them to it: a trickled reply ends at the deadline)."""
    for kind in (HttpxTransport, AiohttpTransport):
        assert kind.__dict__.get("SENDS_END_BY_TIMEOUT") is True


@pytest.mark.anyio
async def test_cancellation_moves_job_to_cancelled(secret_key: str) -> None:
    """Cancelling the driver's scope leaves the job cancelled, not live."""
    engine = Engine(
        secret_key,
        transport=HandlerTransport(scripted([OK_CREATE], [PROCESSING])),
        poll_schedule=FixedInterval(interval=0.01),
    )
    job = engine.job(TASK, timeout=60)
    with anyio.move_on_after(0.05):
        await drive_job(job, engine.transport, engine.clock)
    assert job.state == TaskState.CANCELLED
    assert job.history[-1].trigger == "cancel"


@pytest.mark.anyio
async def test_on_move_hook_sees_every_move_once(secret_key: str) -> None:
    """The hook is called once per history entry, in order."""
    seen: list[Move] = []
    engine = Engine(
        secret_key,
        transport=HandlerTransport(scripted([OK_CREATE], [PROCESSING, READY])),
        clock=VirtualClock(),
        on_move=lambda job, move: seen.append(move),
    )
    job = await engine.run(TASK)
    assert seen == job.history
    assert len(seen) == 2


@pytest.mark.anyio
async def test_default_hook_logs_moves_without_key(
    secret_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The default hook logs one DEBUG record per move, never with the key."""
    caplog.set_level(logging.DEBUG, logger="captchaflow")
    engine = Engine(
        secret_key,
        transport=HandlerTransport(scripted([OK_CREATE], [READY])),
        clock=VirtualClock(),
    )
    await engine.solve(TASK)
    messages = [r.getMessage() for r in caplog.records if r.name == "captchaflow"]
    assert messages == [
        "task 9: submitted -> polling [accept] task 9 accepted",
        "task 9: polling -> ready [solve] solved after 1 poll",
    ]
    assert all(secret_key not in m for m in messages)


@pytest.mark.anyio
async def test_per_call_overrides(secret_key: str) -> None:
    """Per-call timeout, policy and poll schedule override the engine's defaults."""
    clock = VirtualClock()
    engine = Engine(
        secret_key,
        transport=HandlerTransport(scripted([OK_CREATE], [PROCESSING])),
        clock=clock,
        timeout=500,
    )
    job = await engine.run(TASK, timeout=7, poll_schedule=FixedInterval(interval=1))
    assert job.state == TaskState.FAILED
    assert clock.now() == pytest.approx(7)
    assert job.polls == 6


@pytest.mark.anyio
async def test_invalid_task_raises_before_sending(secret_key: str) -> None:
    """An invalid task raises InvalidTaskError and sends nothing."""
    transport = HandlerTransport(scripted([OK_CREATE], [READY]))
    engine = Engine(secret_key, transport=transport, clock=VirtualClock())
    with pytest.raises(InvalidTaskError):
        await engine.solve({"body": "no type"})
    assert transport.requests_sent == 0


def test_sync_solve(secret_key: str) -> None:
    """The sync facade solves a task (real clock; first poll after a short interval)."""
    solution = solve(
        TASK,
        key=secret_key,
        transport=HandlerTransport(scripted([OK_CREATE], [READY])),
        poll_schedule=FixedInterval(interval=0.01),
    )
    assert solution == {"text": "xyz"}


def test_sync_solve_under_trio(secret_key: str) -> None:
    """The sync facade runs on trio too."""
    solution = solve(
        TASK,
        key=secret_key,
        transport=HandlerTransport(scripted([OK_CREATE], [READY])),
        poll_schedule=FixedInterval(interval=0.01),
        backend="trio",
    )
    assert solution == {"text": "xyz"}


def test_engine_options_name_every_engine_keyword() -> None:
    """`EngineOptions` (what the sync facades pass on) names exactly `Engine`'s keyword
    arguments, with the same annotations: the facades cannot drift from the engine."""
    params = inspect.signature(Engine.__init__).parameters.values()
    hints = typing.get_type_hints(Engine.__init__)
    keywords = {p.name: hints[p.name] for p in params if p.kind is p.KEYWORD_ONLY}
    assert typing.get_type_hints(EngineOptions) == keywords


def test_sync_solve_passes_engine_options_on(secret_key: str) -> None:
    """Every `Engine` option reaches the engine the sync facade builds (here `gate` and
    `on_move`), and an unknown one is a TypeError, not ignored."""
    moves: list[Move] = []

    def record(job: Job, move: Move) -> None:
        moves.append(move)

    solution = solve(
        TASK,
        key=secret_key,
        transport=HandlerTransport(scripted([OK_CREATE], [READY])),
        poll_schedule=FixedInterval(interval=0.01),
        gate=OpenGate(),
        on_move=record,
    )
    assert solution == {"text": "xyz"}
    assert [m.trigger for m in moves] == ["accept", "solve"]
    with pytest.raises(TypeError, match="colour"):
        solve(TASK, key=secret_key, colour="blue")  # type: ignore[call-arg]


def test_sync_solve_raises_typed_error(secret_key: str) -> None:
    """The sync facade raises the job's typed error."""
    with pytest.raises(PermanentError, match="KEY_DOES_NOT_EXIST"):
        solve(
            TASK,
            key=secret_key,
            transport=HandlerTransport(scripted([ApiReply.json({"code": 1})], [READY])),
            policy=DocumentedPolicy(),
        )


@pytest.mark.parametrize("timeout", [0, -5, float("nan"), float("inf")])
def test_engine_rejects_bad_timeout(secret_key: str, timeout: float) -> None:
    """An engine timeout that is not positive and finite raises ValueError."""
    with pytest.raises(ValueError, match="timeout"):
        Engine(
            secret_key, transport=HandlerTransport(scripted([OK_CREATE], [READY])), timeout=timeout
        )


def test_engine_repr_hides_key(secret_key: str) -> None:
    """Neither the engine's repr nor its job's shows the key."""
    engine = Engine(secret_key, transport=HandlerTransport(scripted([OK_CREATE], [READY])))
    job = engine.job(TASK)
    for text in (repr(engine), repr(job), repr(job.key), str(job.key), f"{job.key}"):
        assert secret_key not in text


CTRL_C_SCRIPT = """
import os, signal, sys, threading
import anyio
from captchaflow.engine import solve_many
from captchaflow.transports import ApiReply, Endpoint, HandlerTransport

cancelled = []

async def slow(request):
    await anyio.sleep(0.2)
    if request.endpoint is Endpoint.CREATE_TASK:
        return ApiReply.json({"taskId": 1})
    return ApiReply.json({"status": "processing"})

def watch(job, move):
    if move.trigger == "cancel":
        cancelled.append(job)

threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    tasks = [{"type": "ImageToTextTask"}] * 5
    for job in solve_many(
        tasks, key="sk-ctrl-c-test-key", transport=HandlerTransport(slow), on_move=watch,
        backend=sys.argv[1],
    ):
        print("finished", job.state)
except KeyboardInterrupt:
    print(f"KeyboardInterrupt after {len(cancelled)} jobs were cancelled", flush=True)
    sys.exit(42)
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_in_the_sync_solve_many_loop_is_a_plain_keyboard_interrupt(
    backend: str, tmp_path: pathlib.Path
) -> None:
    """A real SIGINT while a sync `for job in solve_many(...)` loop waits reaches the caller
    as a plain KeyboardInterrupt, after the in-flight jobs were cancelled, with no traceback
    (it used to end in `RuntimeError: This portal is not running`)."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 42, proc.stderr
    assert "KeyboardInterrupt after 5 jobs were cancelled" in proc.stdout
    assert "Traceback" not in proc.stderr
