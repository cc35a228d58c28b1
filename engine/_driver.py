"""The async driver: runs a sans-IO job to the end over a transport, under asyncio or trio."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeAlias

import anyio

from captchaflow.transports import (
    ApiReply,
    ApiRequest,
    Endpoint,
    SentNoReply,
    Transport,
    TransportError,
)

from ._balance import BalanceQuery
from ._classify import Outcome, classify
from ._clock import Clock, SystemClock
from ._fsm import Move
from ._job import Finished, Job, Wait
from .instrumentation import (
    DEFAULT_HOOKS,
    Hook,
    MoveRecord,
    RequestRecord,
    emit,
    move_record,
    request_record,
)
from .instrumentation._hooks import listening
from .journal._base import JobRecorder

__all__ = [
    "SEND_GRACE",
    "GateWaker",
    "MoveHook",
    "drive_job",
    "log_move",
    "query_balance",
    "report_moves",
]

MoveHook: TypeAlias = Callable[[Job, Move], None]
"""Called once for every move of every job, in order, with the live job (the older form of
instrumentation, kept: a `Hook` gets frozen records instead, and requests too)."""


def log_move(job: Job, move: Move) -> None:
    """One DEBUG record for `move` on the `captchaflow` logger, as the default hooks log it
    (a `MoveHook`, kept for callers that used it; the engine logs through its hooks)."""
    for hook in DEFAULT_HOOKS:
        hook.on_move(move_record(job, move))


def report_moves(
    job: Job,
    moves: Sequence[Move],
    on_move: MoveHook | None,
    hooks: Sequence[Hook],
    until: float | None,
) -> None:
    """Tell `on_move` and `hooks` about `moves`, new entries of `job`'s history, in order;
    `until`: when the job's next action is due (its `Wait`), if it waits."""
    if hooks and not listening(hooks, MoveRecord):
        hooks = ()
    if on_move is None and not hooks:
        return
    for move in moves:
        if on_move is not None:
            on_move(job, move)
        if hooks:
            emit(hooks, move_record(job, move, until), job.key)


class GateWaker:
    """Lets an account gate cut a sleeping job's wait short (jobs of one engine share one).

    A job with a gate waits for its timer *or* a wake-up, whichever comes first; after
    every step the driver hands the gate's `wakeups()` to `wake()`.
    """

    __slots__ = ("_alarms",)

    def __init__(self) -> None:
        self._alarms: dict[int, Callable[[], object]] = {}
        """What wakes each waiting job (by `id`)."""

    async def wait(self, job: Job, until: float, clock: Clock) -> None:
        """Return at `until` on `clock`, or as soon as `job` is woken."""
        if type(clock) is SystemClock:
            # The common case, made cheap: a plain sleep that a wake-up cancels. (A timeout
            # around an event would deliver a cancellation at every wait's end.)
            with anyio.CancelScope() as scope:
                self._alarms[id(job)] = scope.cancel
                try:
                    await clock.sleep_until(until)
                finally:
                    self._alarms.pop(id(job), None)
            return
        event = anyio.Event()
        self._alarms[id(job)] = event.set
        try:
            async with anyio.create_task_group() as group:

                async def timer() -> None:
                    await clock.sleep_until(until)
                    group.cancel_scope.cancel()

                async def alarm() -> None:
                    await event.wait()
                    group.cancel_scope.cancel()

                group.start_soon(timer)
                group.start_soon(alarm)
        finally:
            self._alarms.pop(id(job), None)

    def wake(self, jobs: Iterable[Hashable]) -> None:
        """Wake every job of `jobs` that is waiting."""
        for job in jobs:
            alarm = self._alarms.get(id(job))
            if alarm is not None:
                alarm()


async def drive_job(
    job: Job,
    transport: Transport,
    clock: Clock,
    *,
    on_move: MoveHook | None = None,
    hooks: Sequence[Hook] | None = None,
    waker: GateWaker | None = None,
    recorder: JobRecorder | None = None,
) -> Job:
    """Run `job` until it is finished and return it.

    Each request is bounded by the time left before the job's deadline. If the caller
    cancels (an anyio cancel scope, a KeyboardInterrupt), the job is moved to `cancelled`
    before the cancellation propagates, so no job is ever left live by a dead driver. With
    a gate, jobs of one account share `waker`, so the gate can wake sleeping jobs.

    `hooks` (by default `DEFAULT_HOOKS`: DEBUG log records) get a `MoveRecord` for every
    move and a `RequestRecord` for every request, in order; `on_move`, if given, is called
    with the live job for every move as well.

    With a `recorder`, the job's progress goes to its journal: a createTask is recorded
    before it leaves, the `taskId` it brings back before any further request, and the
    outcome at the end (see `JobRecorder`).
    """
    hooks = DEFAULT_HOOKS if hooks is None else tuple(hooks)
    gate = job.gate
    if gate is not None and waker is None:
        waker = GateWaker()
    reported = 0

    def report(until: float | None = None) -> None:
        nonlocal reported
        if reported < len(job.history):
            report_moves(job, job.history[reported:], on_move, hooks, until)
            reported = len(job.history)

    try:
        while True:
            now = clock.now()
            action = job.next_action(now)
            # The moves a reply caused are reported with the next action, which says how
            # long a `defer` waits.
            report(action.until if isinstance(action, Wait) else None)
            if isinstance(action, Finished):
                break
            if isinstance(action, Wait):
                if waker is not None:
                    await waker.wait(job, action.until, clock)
                else:
                    await clock.sleep_until(action.until)
            elif recorder is not None and action.request.endpoint is Endpoint.CREATE_TASK:
                # Journalled, a createTask is not cut off by a cancellation (an interrupted
                # run): its reply, and the taskId in it, is awaited and journalled, so only a
                # killed process leaves a createTask in doubt. The send is bounded as ever.
                with anyio.CancelScope(shield=True):
                    await recorder.before_send(action.request)
                    outcome = await _send_and_feed(
                        job, action.request, transport, clock, now, hooks
                    )
                    await recorder.after_reply(job, action.request.endpoint, outcome)
            else:
                await _send_and_feed(job, action.request, transport, clock, now, hooks)
            if gate is not None and waker is not None:
                waker.wake(gate.wakeups())
    except BaseException:
        job.cancel(clock.now(), "the driver was cancelled")
        raise
    finally:
        report()
        if recorder is not None:
            with anyio.CancelScope(shield=True):  # the outcome is written even when cancelled
                await recorder.at_end(job)
        if gate is not None and waker is not None:
            waker.wake(gate.wakeups())  # a finished job may free a slot for another
    return job


async def _send_and_feed(
    job: Job,
    request: ApiRequest,
    transport: Transport,
    clock: Clock,
    now: float,
    hooks: Sequence[Hook],
) -> Outcome | None:
    """Send `job`'s `request` and feed the job what came back; return the outcome (None: the
    transport failed as no network does, and the job failed for it)."""
    outcome, bug, received = await _exchange(job, request, transport, clock, now, hooks)
    if outcome is None:
        job.feed_bug(received, bug)
    else:
        job.feed(outcome, received)
    return outcome


async def query_balance(
    query: BalanceQuery,
    transport: Transport,
    clock: Clock,
    *,
    hooks: Sequence[Hook] | None = None,
) -> float:
    """Run `query` until it is finished; return the balance or raise its error. Each
    request is bounded by the time left before the query's deadline, as a job's are, and
    `hooks` (by default `DEFAULT_HOOKS`) get a `RequestRecord` for each (job `"balance"`)."""
    hooks = DEFAULT_HOOKS if hooks is None else tuple(hooks)
    while True:
        now = clock.now()
        action = query.next_action(now)
        if isinstance(action, Finished):
            break
        if isinstance(action, Wait):
            await clock.sleep_until(action.until)
            continue
        outcome, bug, received = await _exchange(
            query, action.request, transport, clock, now, hooks
        )
        if outcome is None:
            query.fail_bug(bug)
        else:
            query.feed(outcome, received)
    if query.error is not None:
        raise query.error
    assert query.balance is not None  # finished without an error
    return query.balance


SEND_GRACE = 0.5
"""Seconds a transport gets past the job's deadline to report its own timeout before the
driver cuts the send off (`SentNoReply`): no transport can hold a job past its deadline."""


class TransportBug:
    """A transport raised something that is not a network failure: a bug, not a fault."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


async def _exchange(
    caller: Job | BalanceQuery,
    request: ApiRequest,
    transport: Transport,
    clock: Clock,
    now: float,
    hooks: Sequence[Hook],
) -> tuple[Outcome | None, str, float]:
    """Send `caller`'s `request` at `now` (bounded by the time left before its deadline),
    classify what came back and tell `hooks`: `(outcome, "", when it came)`, or
    `(None, reason, when)` if the transport failed in a way no network does. The caller
    is fed nothing yet, so the record names it as it was when it sent."""
    reply = await _send(transport, request, caller.deadline - now)
    received = clock.now()
    if isinstance(reply, TransportBug):
        outcome, bug = None, reply.reason
    else:
        outcome = classify(request.endpoint, reply, wall_time=clock.wall(), secret=caller.key)
        bug = ""
    if hooks and listening(hooks, RequestRecord):
        emit(hooks, request_record(caller, request.endpoint, now, received, outcome), caller.key)
    return outcome, bug, received


async def _send(
    transport: Transport, request: ApiRequest, timeout: float
) -> ApiReply | TransportError | TransportBug:
    """Send through `transport`, bounded by `timeout` (plus `SEND_GRACE`) of real time
    whatever the transport does; typed failures and wrapped network errors are outcomes,
    anything else a bug of the transport. A transport whose own class declares
    `SENDS_END_BY_TIMEOUT` (see `Transport`) bounds its sends itself and is not wrapped: the
    wrapping scope is a tenth of the CPU the engine spends on a request."""
    kind = type(transport)
    name = kind.__name__
    try:
        if kind.__dict__.get("SENDS_END_BY_TIMEOUT") is True:  # not a subclass's: it may hang
            return await transport.send(request, timeout=timeout)
        with anyio.move_on_after(max(timeout, 0.0) + SEND_GRACE):
            return await transport.send(request, timeout=timeout)
        return SentNoReply(f"{name} did not answer within the deadline; the driver cut it off")
    except TransportError as exc:
        return exc
    except OSError as exc:  # a network error the transport let through unwrapped
        return SentNoReply(f"{name} raised {type(exc).__name__}: {exc}")
    except Exception as exc:
        return TransportBug(f"transport {name} raised {exc!r} (a bug, not a network failure)")
