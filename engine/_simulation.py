"""The discrete-event simulation driver: many jobs against a `SimulatedAPI` in virtual time.

Theory of operation. There is no event loop and no sleeping: a heap of (time, sequence,
job, outcome) events is processed in time order. Processing an event feeds the job the
outcome it carries (if any) and asks it for its next action: a `Wait` becomes an event at
its end, a `Send` is handed to the simulated service at the current virtual time and becomes
an event carrying the classified result, `latency` later. Ties are broken by insertion
order, so a run is a pure function of the scenario, the seed, the tasks and the policies:
the same inputs give identical histories, request logs and results.

With `max_in_flight=N` the simulation is a pool of N workers: a task whose arrival time has
come waits in a FIFO queue (by arrival time, then submission order) while N jobs are live,
and its `Job` is created only when a worker takes it, so its deadline counts from then.
Arrivals are events of their own in the same heap (epoch `_ARRIVAL`); a worker is freed when
its job first reports `Finished`, and the next queued task starts at that same instant.

What a run does not pay for, since a large one is all it does: the cyclic garbage collector is
paused while `run()` runs (a run makes no reference cycles, and the collector's passes over
every live job took a tenth of a 100,000-job run), and a reply the simulated service has sent
before (the same endpoint, status, body and retry hint: "processing", an error code) is not
parsed again when it classified as processing or as a failure: it gets that outcome again,
the same frozen object, which is what `classify` would answer (it reads nothing else).
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import math
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final, TypeAlias

import attrs

from captchaflow.policies import (
    AccountGate,
    DocumentedPolicy,
    Failure,
    FixedInterval,
    PollSchedule,
    RetryPolicy,
)
from captchaflow.transports import (
    ApiKey,
    ApiReply,
    ApiRequest,
    Endpoint,
    JsonValue,
    TransportError,
)
from captchaflow.transports.sim import RequestFate, SimulatedAPI

from ._classify import Outcome, Processing, classify
from ._driver import MoveHook, report_moves
from ._engine import DEFAULT_TIMEOUT
from ._job import Finished, Job, Wait, check_timeout, validate_task
from .instrumentation import Hook, emit, request_record

__all__ = ["ExchangeHook", "Simulation", "SimulationReport"]

_EPOCH = 1_700_000_000.0
_ARRIVAL = -2
"""The epoch of an arrival event: its index is the task's submission index, not a job's."""

ExchangeHook: TypeAlias = Callable[[Job, ApiRequest, float, float, Outcome], None]
"""Called for every request a job sends: (job, request, sent_at, seen_at, outcome)."""

_REPLY: Final = RequestFate.REPLY
_MAX_REMEMBERED: Final = 4096
"""Classified replies a run remembers at most (then it forgets them all and starts again)."""


@attrs.frozen
class SimulationReport:
    """What a finished simulation did: every job, the service's counters, and timings."""

    jobs: Sequence[Job]
    api: SimulatedAPI
    finished_at: Mapping[int, float]
    """Virtual time at which each job (by index) reached its terminal state."""
    end: float
    """Virtual time of the last event."""
    submitted_at: Mapping[int, float] = attrs.field(factory=dict)
    """Arrival time (the `at` given to `submit`) of each job, by index. Without a pool it is
    the job's `started_at`; with one, a task may wait for a worker after it arrives. A job
    missing here counts from its `started_at`."""

    def states(self) -> Counter[str]:
        """Jobs by final state."""
        return Counter(job.state for job in self.jobs)

    def errors(self) -> Counter[str]:
        """Failed or cancelled jobs by error name."""
        return Counter(job.error.name for job in self.jobs if job.error is not None)

    def time_to_solution(self) -> list[float]:
        """Seconds from arrival (`submitted_at`) to solution, for each solved job, sorted:
        time spent queued for a worker counts."""
        arrived = self.submitted_at
        return sorted(
            self.finished_at[i] - arrived.get(i, job.started_at)
            for i, job in enumerate(self.jobs)
            if job.solution is not None
        )

    def retries(self) -> int:
        """Waits after failures (`defer` moves) across all jobs."""
        return sum(move.trigger == "defer" for job in self.jobs for move in job.history)

    def percentile(self, fraction: float) -> float | None:
        """The `fraction` quantile (0 to 1, linear interpolation) of time to solution (from
        arrival, as `time_to_solution`), or None if nothing was solved."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
        times = self.time_to_solution()
        if not times:
            return None
        position = fraction * (len(times) - 1)
        low = math.floor(position)
        high = min(low + 1, len(times) - 1)
        return times[low] + (times[high] - times[low]) * (position - low)


class Simulation:
    """Runs jobs on one account of `api` in virtual time.

    With a `gate` (e.g. `FleetGate()`), the jobs coordinate as one account: jobs the gate
    wakes are re-run at once. `submit()` adds a task (at a virtual time, with optional
    per-task timeout and policy); `run()` processes every event and returns a
    `SimulationReport`. Policies given here are shared by the jobs that do not bring their
    own; a seeded policy makes the run reproducible.

    `max_in_flight` (None, or an int >= 1) makes it a worker pool, as
    `Engine.solve_many(max_in_flight=...)` runs one: at most that many jobs are live at once,
    an arrived task waits (first come, first served) for a job to finish, and its `Job`, so
    its deadline, starts only when a worker takes it. Time to solution still counts from the
    arrival (`SimulationReport.submitted_at`).

    `hooks` (none by default, which keeps runs fast) get a `MoveRecord` for every move and
    a `RequestRecord` for every request (sent at the virtual time it left, its latency the
    simulated one), as the async driver's do; `on_move` is called with the live job for
    every move.
    """

    def __init__(
        self,
        api: SimulatedAPI,
        *,
        key: str | ApiKey,
        policy: RetryPolicy | None = None,
        poll_schedule: PollSchedule | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_move: MoveHook | None = None,
        on_exchange: ExchangeHook | None = None,
        gate: AccountGate | None = None,
        max_in_flight: int | None = None,
        hooks: Sequence[Hook] = (),
    ) -> None:
        if max_in_flight is not None and (
            isinstance(max_in_flight, bool)
            or not isinstance(max_in_flight, int)
            or max_in_flight < 1
        ):
            raise ValueError(f"max_in_flight must be None or an int >= 1, got {max_in_flight!r}")
        self.api = api
        self.key = key if isinstance(key, ApiKey) else ApiKey(key)
        self.policy: RetryPolicy = policy if policy is not None else DocumentedPolicy()
        self.poll_schedule: PollSchedule = (
            poll_schedule if poll_schedule is not None else FixedInterval()
        )
        self.timeout = timeout
        self.on_move = on_move
        self.on_exchange = on_exchange
        self.hooks = tuple(hooks)
        self.gate = gate
        self.max_in_flight = max_in_flight
        self.jobs: list[Job] = []
        """The jobs, in submission order once `run()` has returned (with a pool, in the order
        workers took them while it runs)."""
        self.submitted_at: list[float] = []
        """Each task's arrival time, in submission order."""
        # with a pool: each submitted task, waiting for its job (by submission index)
        self._tasks: list[tuple[Mapping[str, JsonValue], float | None, RetryPolicy | None]] = []
        # a heap of (time, sequence, job index, outcome to feed or None, timer epoch or -1)
        self._events: list[Event] = []
        self._epochs: list[int] = []
        self._index: dict[int, int] = {}
        self._sequence = itertools.count()

    def submit(
        self,
        task: Mapping[str, JsonValue],
        *,
        at: float = 0.0,
        timeout: float | None = None,
        policy: RetryPolicy | None = None,
    ) -> Job | None:
        """Add a task arriving at virtual time `at`.

        Without a pool, its job starts at `at` and is returned (not yet run). With
        `max_in_flight`, the job does not exist until a worker takes the task (its deadline
        counts from then), so nothing is returned: the job is `report.jobs[i]`, `i` being
        the number of tasks submitted before this one. Either way an invalid task or timeout
        raises here (`InvalidTaskError`, `ValueError`).
        """
        index = len(self.submitted_at)
        self.submitted_at.append(at)
        if self.max_in_flight is None:
            job = self._new_job(task, at, timeout, policy)
            self._timer(at, len(self.jobs) - 1)
            return job
        validate_task(task)
        if timeout is not None:
            check_timeout(timeout)
        self._tasks.append((task, timeout, policy))
        heapq.heappush(self._events, (at, next(self._sequence), index, None, _ARRIVAL))
        return None

    def _new_job(
        self,
        task: Mapping[str, JsonValue],
        now: float,
        timeout: float | None,
        policy: RetryPolicy | None,
    ) -> Job:
        """Create a job starting at `now` and give it the next index (no timer yet)."""
        job = Job(
            task,
            key=self.key,
            policy=policy if policy is not None else self.policy,
            schedule=self.poll_schedule,
            now=now,
            timeout=timeout if timeout is not None else self.timeout,
            gate=self.gate,
        )
        self._index[id(job)] = len(self.jobs)
        self.jobs.append(job)
        self._epochs.append(0)
        return job

    def _timer(self, at: float, index: int) -> None:
        """Wake job `index` at `at`; any earlier timer of it is void from now on."""
        self._epochs[index] += 1
        heapq.heappush(self._events, (at, next(self._sequence), index, None, self._epochs[index]))

    def run(self) -> SimulationReport:
        """Process every event until all jobs are finished (with a pool, until every
        submitted task has had its job and it has finished). The cyclic garbage collector is
        paused meanwhile (as it was before is how it is left: garbage cycles that hooks or
        policies make are collected after the run)."""
        with gc_paused():
            return self._run()

    def _run(self) -> SimulationReport:
        events, jobs, api, on_move = self._events, self.jobs, self.api, self.on_move
        on_exchange, gate, epochs, hooks = self.on_exchange, self.gate, self._epochs, self.hooks
        sequence, push = self._sequence, heapq.heappush
        remembered: dict[tuple[Endpoint, int, bytes, str | None], Outcome] = {}
        watching = on_move is not None or bool(hooks)
        pooled = self.max_in_flight is not None
        free = self.max_in_flight or 0  # idle workers
        queued: deque[int] = deque()  # arrived tasks waiting for a worker (submission index)
        origin: list[int] = []  # with a pool: each job's submission index
        in_flight: set[int] = set()
        finished_at: dict[int, float] = {}
        now = 0.0
        # The events queued before the run (every task's arrival or start, a hundred thousand
        # of them in a large run) are taken in order from a sorted list, and only the events
        # the run adds go through the heap: each step of the heap is then a step through the
        # events of the jobs in flight, not through every task still to come.
        backlog = deque(sorted(events))
        events.clear()
        try:
            for now, _, index, outcome, epoch in _in_order(backlog, events):
                if epoch >= 0:
                    if epoch != epochs[index] or index in in_flight:
                        continue  # a timer made void by a later wake-up
                elif epoch == _ARRIVAL:
                    queued.append(index)
                    if free:
                        free = self._start(queued, origin, now, free)
                    continue
                job = jobs[index]
                reported = len(job.history) if watching else 0
                if outcome is not None:
                    in_flight.discard(index)
                    job.feed(outcome, now)
                action = job.next_action(now)
                if watching and len(job.history) > reported:
                    until = action.until if isinstance(action, Wait) else None
                    report_moves(job, job.history[reported:], on_move, hooks, until)
                if isinstance(action, Wait):
                    epochs[index] += 1
                    push(events, (action.until, next(sequence), index, None, epochs[index]))
                elif isinstance(action, Finished):
                    if index not in finished_at:
                        finished_at[index] = now
                        if pooled:
                            free = self._start(queued, origin, now, free + 1)
                else:
                    request = action.request
                    exchange = api.handle(request, now)
                    result: ApiReply | TransportError | None = exchange.reply
                    delay = exchange.latency
                    if result is None or exchange.fate is not _REPLY or delay > job.deadline - now:
                        delay, result = exchange.seen_by_client(job.deadline - now)
                    outcome = _classified(remembered, request.endpoint, result, now, job.key)
                    in_flight.add(index)
                    push(events, (now + delay, next(sequence), index, outcome, -1))
                    if on_exchange is not None:
                        on_exchange(job, request, now, now + delay, outcome)
                    if hooks:
                        emit(
                            hooks,
                            request_record(job, request.endpoint, now, now + delay, outcome),
                            job.key,
                        )
                if gate is not None:
                    for woken in gate.wakeups():
                        other = self._index.get(id(woken))
                        # A job submitted for later is not live yet: its own start timer runs it.
                        if (
                            other is not None
                            and other not in in_flight
                            and other not in finished_at
                            and jobs[other].started_at <= now
                        ):
                            self._timer(now, other)
        except BaseException:
            events.extend(backlog)  # what is left stays queued, as it was
            heapq.heapify(events)
            raise
        if pooled:
            # back to submission order: job i is the i-th task submitted
            by_task = sorted(range(len(jobs)), key=origin.__getitem__)
            finished_at = {origin[slot]: finished_at[slot] for slot in by_task}
            jobs[:] = [jobs[slot] for slot in by_task]
            epochs[:] = [epochs[slot] for slot in by_task]
            self._index = {id(job): i for i, job in enumerate(jobs)}
        submitted = dict(enumerate(self.submitted_at))
        return SimulationReport(jobs, api, finished_at, now, submitted)

    def _start(self, queued: deque[int], origin: list[int], now: float, free: int) -> int:
        """Give up to `free` workers the longest-waiting queued tasks, starting their jobs
        at `now`; return how many workers are left idle."""
        while free and queued:
            task_index = queued.popleft()
            task, timeout, policy = self._tasks[task_index]
            self._new_job(task, now, timeout, policy)
            origin.append(task_index)
            self._timer(now, len(self.jobs) - 1)
            free -= 1
        return free


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused for the block, and left as it was found (jobs and
    the simulated service make no reference cycles, so nothing piles up meanwhile)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


Event: TypeAlias = tuple[float, int, int, Outcome | None, int]
"""(virtual time, sequence, job or task index, outcome to feed or None, timer epoch or -1)."""


def _in_order(backlog: deque[Event], heap: list[Event]) -> Iterator[Event]:
    """Every event of `backlog` (sorted) and of `heap` (a `heapq` heap, which may grow while
    this runs) once, in (time, sequence) order, as one heap of them all would give them."""
    pop = heapq.heappop
    while backlog:
        if heap and heap[0] < backlog[0]:
            yield pop(heap)
        else:
            yield backlog.popleft()
    while heap:
        yield pop(heap)


def _classified(
    remembered: dict[tuple[Endpoint, int, bytes, str | None], Outcome],
    endpoint: Endpoint,
    result: ApiReply | TransportError,
    now: float,
    key: ApiKey,
) -> Outcome:
    """`classify(endpoint, result, ...)` as the simulation's clock and `key` have it,
    remembering in `remembered` what a reply classified as when the outcome is `Processing`
    or a `Failure` (frozen objects that can be handed out again; a task id or a solution
    cannot) and nothing but the endpoint, the status, the body and a retry hint in seconds
    could have changed it."""
    if not isinstance(result, ApiReply):
        return classify(endpoint, result, wall_time=_EPOCH + now, secret=key)
    hint = result.headers.get("retry-after")
    if hint is not None and not hint.strip().isdigit():
        # an HTTP-date (or garbage) is read against the clock: classified every time
        return classify(endpoint, result, wall_time=_EPOCH + now, secret=key)
    seen = (endpoint, result.status, result.body, hint)
    outcome = remembered.get(seen)
    if outcome is None:
        outcome = classify(endpoint, result, wall_time=_EPOCH + now, secret=key)
        if isinstance(outcome, Processing | Failure):
            if len(remembered) >= _MAX_REMEMBERED:
                remembered.clear()
            remembered[seen] = outcome
    return outcome
