"""The facade: `Engine` (async) and `solve` (sync) for solving tasks on one account."""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Literal, TypedDict, TypeVar, Unpack

import anyio
import anyio.from_thread
from anyio.streams.memory import MemoryObjectReceiveStream

from captchaflow.policies import (
    AccountGate,
    DocumentedPolicy,
    FixedInterval,
    FleetGate,
    PollSchedule,
    RetryPolicy,
)
from captchaflow.transports import DEFAULT_BASE_URL, ApiKey, HttpxTransport, JsonValue, Transport

from ._balance import BalanceQuery
from ._clock import Clock, SystemClock
from ._driver import GateWaker, MoveHook, drive_job, query_balance
from ._errors import InvalidTaskError
from ._job import DEFAULT_TIMEOUT, Job, check_timeout, validate_task
from .instrumentation import DEFAULT_HOOKS, Hook
from .journal._base import (
    AMBIGUOUS_CREATE,
    AmbiguousCreate,
    JobRecorder,
    Journal,
    outcome_of,
    resume_plan,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "Engine",
    "EngineOptions",
    "balance",
    "default_gate",
    "solve",
    "solve_many",
]


_T = TypeVar("_T")


def default_gate(rng: random.Random | None = None) -> FleetGate:
    """The account gate every `Engine` uses unless given one (and what `captchaflow demo`
    runs): a `FleetGate` with its default parts; `rng` seeds its jitter."""
    return FleetGate() if rng is None else FleetGate(rng=rng)


class EngineOptions(TypedDict, total=False):
    """The keyword arguments of `Engine` other than the key, which the sync facades `solve` and
    `solve_many` pass on to the engine they build; see `Engine` for what each one means."""

    base_url: str
    transport: Transport | None
    policy: RetryPolicy | None
    poll_schedule: PollSchedule | None
    timeout: float
    clock: Clock | None
    on_move: MoveHook | None
    hooks: Sequence[Hook] | None
    gate: AccountGate | None
    journal: Journal | None
    ambiguous: AmbiguousCreate


def _as_key(key: str | ApiKey) -> ApiKey:
    return key if isinstance(key, ApiKey) else ApiKey(key)


class Engine:
    """Solves tasks on one account.

    - `key`: the account key (a `str` or an `ApiKey`); it is never shown anywhere.
    - `transport`: how requests travel; by default an `HttpxTransport` to `base_url`, which
      the engine then owns and closes. A transport you pass in stays yours to close.
    - `policy`, `poll_schedule`: defaults for every task (the provider's documented strategy
      and a 2-second poll); each call may override them.
    - `timeout`: the default deadline of each task, in seconds from its start.
    - `clock`: where time comes from (`SystemClock` by default).
    - `on_move`: called with the live job for every state change of every job (the older
      form of `hooks`, kept; none by default).
    - `hooks`: instrumentation (`captchaflow.engine.instrumentation`): each gets a frozen
      record of every move and every request; by default `DEFAULT_HOOKS`, one DEBUG log
      record each; `()` for none.
    - `gate`: how the jobs of this engine (one account) coordinate; by default a
      `FleetGate` (shared pause, circuit breaker, adaptive concurrency, retry budget,
      adaptive rate); `OpenGate()` turns coordination off.
    - `journal`: where `run_recorded` records each job (a `Journal`: `SqliteJournal`,
      `MemoryJournal`), so that a restarted process resumes jobs instead of paying for
      them twice; `ambiguous`: what a restart does with a job whose createTask was in flight
      when the previous run died (`AmbiguousCreate.RECREATE` by default). The engine does
      not close a journal you pass in.
    """

    def __init__(
        self,
        key: str | ApiKey,
        *,
        base_url: str = DEFAULT_BASE_URL,
        transport: Transport | None = None,
        policy: RetryPolicy | None = None,
        poll_schedule: PollSchedule | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Clock | None = None,
        on_move: MoveHook | None = None,
        hooks: Sequence[Hook] | None = None,
        gate: AccountGate | None = None,
        journal: Journal | None = None,
        ambiguous: AmbiguousCreate = AmbiguousCreate.RECREATE,
    ) -> None:
        check_timeout(timeout)
        self._key = _as_key(key)
        self._owns_transport = transport is None
        self.transport: Transport = transport if transport is not None else HttpxTransport(base_url)
        self.policy: RetryPolicy = policy if policy is not None else DocumentedPolicy()
        self.poll_schedule: PollSchedule = (
            poll_schedule if poll_schedule is not None else FixedInterval()
        )
        self.timeout = timeout
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.on_move = on_move
        self.hooks: tuple[Hook, ...] = DEFAULT_HOOKS if hooks is None else tuple(hooks)
        self.gate: AccountGate = gate if gate is not None else default_gate()
        self.journal = journal
        self.ambiguous = AmbiguousCreate(ambiguous)
        self._waker = GateWaker()

    def job(
        self,
        task: Mapping[str, JsonValue],
        *,
        timeout: float | None = None,
        policy: RetryPolicy | None = None,
        poll_schedule: PollSchedule | None = None,
    ) -> Job:
        """A new, not yet started job for `task` with this engine's defaults (for custom
        drivers). Raises `InvalidTaskError` for a task that is not a proper JSON object."""
        if timeout is not None:
            check_timeout(timeout)
        return Job(
            task,
            key=self._key,
            policy=policy if policy is not None else self.policy,
            schedule=poll_schedule if poll_schedule is not None else self.poll_schedule,
            now=self.clock.now(),
            timeout=timeout if timeout is not None else self.timeout,
            gate=self.gate,
        )

    async def run(
        self,
        task: Mapping[str, JsonValue],
        *,
        timeout: float | None = None,
        policy: RetryPolicy | None = None,
        poll_schedule: PollSchedule | None = None,
    ) -> Job:
        """Drive one task to a terminal state and return its finished `Job` (which holds the
        solution or the error, and the history). Raises only `InvalidTaskError`."""
        job = self.job(task, timeout=timeout, policy=policy, poll_schedule=poll_schedule)
        return await self._drive(job)

    async def run_recorded(
        self,
        job_id: str,
        task: Mapping[str, JsonValue],
        *,
        timeout: float | None = None,
        policy: RetryPolicy | None = None,
        poll_schedule: PollSchedule | None = None,
        started: Callable[[Job], object] | None = None,
    ) -> Job:
        """Drive `task` to a terminal state as job `job_id` of the engine's journal, and
        return the finished `Job`. What an earlier run journalled under `job_id` for the same
        task is picked up, never paid for again: a solution is returned as recorded, a task
        that was created is polled (no createTask), a createTask in doubt follows
        `ambiguous`; a failed job runs afresh. Raises `InvalidTaskError` for a bad task,
        `JournalError` (`JournalConflictError`: `job_id` is journalled with another task in
        flight) when the journal cannot be used, and `ValueError` without a journal.
        `started`, if given, is called with the job before it sends anything (so a caller
        cancelled meanwhile still has the job, which ends `cancelled`)."""
        journal = self.journal
        if journal is None:
            raise ValueError("run_recorded needs an engine with a journal")
        job = self.job(task, timeout=timeout, policy=policy, poll_schedule=poll_schedule)
        entry = await journal.add(job_id, job.task)
        if started is not None:
            started(job)
        now = self.clock.now()
        plan = resume_plan(entry, self.ambiguous)
        if plan.solution is not None:
            job.restore_solution(plan.task_id, plan.solution, now)
            return job
        if plan.fail:
            job.fail_unsent(
                now,
                AMBIGUOUS_CREATE,
                "a createTask of an earlier run was in flight when it stopped; not sent again "
                "(ambiguous creates fail)",
            )
            await journal.finished(job_id, outcome_of(job))
            return job
        if plan.task_id is not None:
            job.resume(plan.task_id, now)
        return await self._drive(job, JobRecorder(journal, job_id, plan.task_id))

    @contextlib.asynccontextmanager
    async def solve_many(
        self,
        tasks: Iterable[Mapping[str, JsonValue]],
        *,
        max_in_flight: int = 100,
        timeout: float | None = None,
        policy: RetryPolicy | None = None,
        poll_schedule: PollSchedule | None = None,
    ) -> AsyncIterator[MemoryObjectReceiveStream[Job]]:
        """Run every task, at most `max_in_flight` at a time; the stream yields each
        finished `Job` as it finishes::

            async with engine.solve_many(tasks) as finished:
                async for job in finished:
                    print(job.solution or job.error)

        Every task is validated before anything is sent (`InvalidTaskError` names the
        first bad one). Each task's deadline runs from when it starts. Leaving the block
        early cancels the jobs still running (each ends `cancelled`).
        """
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
        if timeout is not None:
            check_timeout(timeout)
        batch = list(tasks)
        for index, task in enumerate(batch):
            try:
                validate_task(task)
            except InvalidTaskError as exc:
                raise InvalidTaskError(f"task {index}: {exc.message}") from None
        send, receive = anyio.create_memory_object_stream[Job](max_buffer_size=len(batch) or 1)
        limiter = anyio.CapacityLimiter(max_in_flight)

        async def one(task: Mapping[str, JsonValue], token: object) -> None:
            try:
                job = self.job(task, timeout=timeout, policy=policy, poll_schedule=poll_schedule)
                await self._drive(job)
                send.send_nowait(job)
            finally:
                limiter.release_on_behalf_of(token)

        async def feed() -> None:
            async with send, anyio.create_task_group() as runners:
                for task in batch:
                    token = object()  # the task's own place among the max_in_flight
                    await limiter.acquire_on_behalf_of(token)
                    runners.start_soon(one, task, token)

        async with anyio.create_task_group() as group:
            group.start_soon(feed)
            try:
                async with receive:
                    yield receive
            finally:
                group.cancel_scope.cancel()

    async def solve(
        self,
        task: Mapping[str, JsonValue],
        *,
        timeout: float | None = None,
        policy: RetryPolicy | None = None,
        poll_schedule: PollSchedule | None = None,
    ) -> Mapping[str, JsonValue]:
        """Solve one task and return the solution exactly as the API sent it, or raise the
        `CaptchaflowError` subclass that says why not."""
        job = await self.run(task, timeout=timeout, policy=policy, poll_schedule=poll_schedule)
        return job.result()

    async def balance(self, *, timeout: float | None = None) -> float:
        """The account's remaining credit, through getBalance, retried as the engine's
        retry policy says (hints honoured) until `timeout` (default: the engine's); raises
        the `CaptchaflowError` subclass that says why not (e.g. `PermanentError` for a key
        that does not exist). The request goes around the account gate: the jobs never
        wait for it."""
        if timeout is not None:
            check_timeout(timeout)
        query = BalanceQuery(
            self._key,
            policy=self.policy,
            now=self.clock.now(),
            timeout=timeout if timeout is not None else self.timeout,
        )
        return await query_balance(query, self.transport, self.clock, hooks=self.hooks)

    async def _drive(self, job: Job, recorder: JobRecorder | None = None) -> Job:
        """Drive `job` (one of this engine's) with the engine's transport, clock and hooks,
        recording it with `recorder` if given."""
        return await drive_job(
            job,
            self.transport,
            self.clock,
            on_move=self.on_move,
            hooks=self.hooks,
            waker=self._waker,
            recorder=recorder,
        )

    def wake(self, jobs: Iterable[Hashable]) -> None:
        """Re-run at once those of `jobs` this engine's driver has waiting: for a gate
        changed from outside the jobs (a sync task), pass it the gate's `wakeups()`."""
        self._waker.wake(jobs)

    async def aclose(self) -> None:
        """Close the transport if the engine created it."""
        if self._owns_transport:
            await self.transport.aclose()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"Engine(transport={self.transport!r}, policy={self.policy!r}, timeout={self.timeout})"
        )


def solve(
    task: Mapping[str, JsonValue],
    *,
    key: str | ApiKey,
    backend: Literal["asyncio", "trio"] = "asyncio",
    **options: Unpack[EngineOptions],
) -> Mapping[str, JsonValue]:
    """Solve one task synchronously (runs its own event loop); `options` are `Engine`'s.

    Returns the solution or raises a `CaptchaflowError` subclass. Must not be called from
    inside a running event loop: use `Engine.solve` there.
    """
    return _on_own_loop(key, backend, options, lambda engine: engine.solve(task))


def balance(
    *,
    key: str | ApiKey,
    backend: Literal["asyncio", "trio"] = "asyncio",
    **options: Unpack[EngineOptions],
) -> float:
    """The account's balance, synchronously (runs its own event loop); `options` are
    `Engine`'s. Raises a `CaptchaflowError` subclass when it cannot be had. Must not be
    called from inside a running event loop: use `Engine.balance` there."""
    return _on_own_loop(key, backend, options, lambda engine: engine.balance())


def _on_own_loop(
    key: str | ApiKey,
    backend: Literal["asyncio", "trio"],
    options: EngineOptions,
    call: Callable[[Engine], Awaitable[_T]],
) -> _T:
    """`call` on an `Engine(key, **options)`, in an event loop of its own (closed after)."""

    async def run() -> _T:
        async with Engine(key, **options) as engine:
            return await call(engine)

    return anyio.run(run, backend=backend)


def solve_many(
    tasks: Iterable[Mapping[str, JsonValue]],
    *,
    key: str | ApiKey,
    max_in_flight: int = 100,
    backend: Literal["asyncio", "trio"] = "asyncio",
    **options: Unpack[EngineOptions],
) -> Iterator[Job]:
    """Run many tasks synchronously; yield each finished `Job` as it finishes; `options` are
    `Engine`'s.

    The engine runs in a background event loop; stopping the iteration early (or an
    exception in the loop body) cancels the jobs still running. See `Engine.solve_many`.
    """
    with anyio.from_thread.start_blocking_portal(backend) as portal:
        engine = portal.call(functools.partial(_make_engine, key, options))
        try:
            batch = portal.wrap_async_context_manager(
                engine.solve_many(tasks, max_in_flight=max_in_flight)
            )
            finished = batch.__enter__()
            try:
                while True:
                    try:
                        job = portal.call(finished.receive)
                    except anyio.EndOfStream:
                        return
                    yield job
            finally:
                # Leave the batch as a loop that stopped: its jobs are cancelled in the
                # event loop. Whatever stopped the caller (a KeyboardInterrupt, a break, an
                # exception in the loop body) is not thrown into the event loop, which would
                # stop the loop under the cleanup; it is re-raised here, plain, afterwards.
                batch.__exit__(None, None, None)
        finally:
            portal.call(engine.aclose)


async def _make_engine(key: str | ApiKey, options: EngineOptions) -> Engine:
    # Built inside the portal's event loop, which the engine's transport then belongs to.
    return Engine(key, **options)
