"""The async driver: runs a sans-IO job to the end over a transport, under asyncio or trio."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable
from typing import TypeAlias

import anyio

from captchaflow.transports import ApiReply, ApiRequest, SentNoReply, Transport, TransportError

from ._balance import BalanceQuery
from ._classify import classify
from ._clock import Clock
from ._fsm import Move
from ._job import Finished, Job, Wait

__all__ = ["SEND_GRACE", "MoveHook", "Waker", "drive", "log_move", "query_balance"]

MoveHook: TypeAlias = Callable[[Job, Move], None]
"""Called once for every move of every job, in order (for logging, metrics, tracing)."""

logger = logging.getLogger("captchaflow")


def log_move(job: Job, move: Move) -> None:
    """The default hook: one DEBUG record per move on the `captchaflow` logger."""
    logger.debug(
        "task %s: %s -> %s [%s] %s",
        job.key.redact(str(job.task_id)) if job.task_id is not None else "-",
        move.source,
        move.dest,
        move.trigger,
        move.cause,
    )


class Waker:
    """Lets an account gate cut a sleeping job's wait short (jobs of one engine share one).

    A job with a gate waits for its timer *or* a wake-up, whichever comes first; after
    every step the driver hands the gate's `wakeups()` to `wake()`.
    """

    __slots__ = ("_events",)

    def __init__(self) -> None:
        self._events: dict[int, anyio.Event] = {}

    async def wait(self, job: Job, until: float, clock: Clock) -> None:
        """Return at `until` on `clock`, or as soon as `job` is woken."""
        event = self._events[id(job)] = anyio.Event()
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
            self._events.pop(id(job), None)

    def wake(self, jobs: Iterable[Hashable]) -> None:
        """Wake every job of `jobs` that is waiting."""
        for job in jobs:
            event = self._events.get(id(job))
            if event is not None:
                event.set()


async def drive(
    job: Job,
    transport: Transport,
    clock: Clock,
    *,
    on_move: MoveHook | None = log_move,
    waker: Waker | None = None,
) -> Job:
    """Run `job` until it is finished and return it.

    Each request is bounded by the time left before the job's deadline. If the caller
    cancels (an anyio cancel scope, a KeyboardInterrupt), the job is moved to `cancelled`
    before the cancellation propagates, so no job is ever left live by a dead driver. With
    a gate, jobs of one account share `waker`, so the gate can wake sleeping jobs.
    """
    gate = job.gate
    if gate is not None and waker is None:
        waker = Waker()
    reported = 0

    def report() -> None:
        nonlocal reported
        if on_move is not None:
            for move in job.history[reported:]:
                on_move(job, move)
        reported = len(job.history)

    try:
        while True:
            now = clock.now()
            action = job.next_action(now)
            report()
            if isinstance(action, Finished):
                break
            if isinstance(action, Wait):
                if waker is not None:
                    await waker.wait(job, action.until, clock)
                else:
                    await clock.sleep_until(action.until)
            else:
                request = action.request
                reply = await _send(transport, request, job.deadline - now)
                if isinstance(reply, TransportBug):
                    job.feed_bug(clock.now(), reply.reason)
                else:
                    outcome = classify(
                        request.endpoint, reply, wall_time=clock.wall(), secret=job.key
                    )
                    job.feed(outcome, clock.now())
                report()
            if gate is not None and waker is not None:
                waker.wake(gate.wakeups())
    except BaseException:
        job.cancel(clock.now(), "the driver was cancelled")
        raise
    finally:
        report()
        if gate is not None and waker is not None:
            waker.wake(gate.wakeups())  # a finished job may free a slot for another
    return job


async def query_balance(query: BalanceQuery, transport: Transport, clock: Clock) -> float:
    """Run `query` until it is finished; return the balance or raise its error. Each
    request is bounded by the time left before the query's deadline, as a job's are."""
    while True:
        now = clock.now()
        action = query.next_action(now)
        if isinstance(action, Finished):
            break
        if isinstance(action, Wait):
            await clock.sleep_until(action.until)
            continue
        request = action.request
        reply = await _send(transport, request, query.deadline - now)
        if isinstance(reply, TransportBug):
            query.fail_bug(reply.reason)
        else:
            outcome = classify(request.endpoint, reply, wall_time=clock.wall(), secret=query.key)
            query.feed(outcome, clock.now())
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


async def _send(
    transport: Transport, request: ApiRequest, timeout: float
) -> ApiReply | TransportError | TransportBug:
    """Send through `transport`, bounded by `timeout` (plus `SEND_GRACE`) of real time
    whatever the transport does; typed failures and wrapped network errors are outcomes,
    anything else a bug of the transport."""
    name = type(transport).__name__
    try:
        with anyio.move_on_after(max(timeout, 0.0) + SEND_GRACE):
            return await transport.send(request, timeout=timeout)
        return SentNoReply(f"{name} did not answer within the deadline; the driver cut it off")
    except TransportError as exc:
        return exc
    except OSError as exc:  # a network error the transport let through unwrapped
        return SentNoReply(f"{name} raised {type(exc).__name__}: {exc}")
    except Exception as exc:
        return TransportBug(f"transport {name} raised {exc!r} (a bug, not a network failure)")
