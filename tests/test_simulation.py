"""The discrete-event simulation driver: many jobs against the simulated service in virtual
time, its determinism, and the report's helpers."""

from __future__ import annotations

import gc
import itertools
import random
from collections import Counter
from typing import Any

import pytest

from captchaflow.engine import (
    TERMINAL_STATES,
    InvalidTaskError,
    Job,
    Move,
    MoveHook,
    PermanentError,
    RetriesExhaustedError,
    Simulation,
    SimulationReport,
    UnsolvableError,
)
from captchaflow.policies import DocumentedPolicy, FixedDelay, FixedInterval, FleetGate, NoRetry
from captchaflow.transports.sim import (
    AccountSpec,
    FaultKind,
    FaultRates,
    Outage,
    Scenario,
    ScheduledFault,
    SimulatedAPI,
    TaskTypeSpec,
)

KEY = "sk-simulation-5e1d-SECRET"
TASK: dict[str, Any] = {"type": "ImageToTextTask", "body": "aGk="}
DAY = 86_400.0

FLAKY = Scenario(
    accounts=(AccountSpec(key=KEY, rate_limit=30, rate_window=1.0, slots=40),),
    default_task=TaskTypeSpec(unsolvable_rate=0.2),
    outages=(Outage(start=30.0, end=45.0),),
    faults=FaultRates(
        refused=0.03,
        timeout_before=0.02,
        http_429=0.03,
        http_5xx=0.03,
        timeout_after=0.02,
        non_json=0.02,
        truncated=0.02,
        wrong_shape=0.02,
        slow=0.05,
        retry_after_header=2.0,
        timeout_seconds=10.0,
    ),
)
"""A service with every kind of trouble: faults, unsolvable tasks, rate limits, an outage."""


def run_flaky(seed: int, jobs: int = 100, **simulation: Any) -> SimulationReport:
    """Run `jobs` jobs on `FLAKY`, service and policy seeded with `seed`."""
    api = SimulatedAPI(FLAKY, seed=seed)
    sim = Simulation(api, key=KEY, policy=DocumentedPolicy(rng=random.Random(seed)), **simulation)
    for i in range(jobs):
        sim.submit(TASK, at=i * 0.25)
    return sim.run()


def test_thousand_jobs_on_a_healthy_service_all_ready() -> None:
    """1,000 jobs on a healthy scenario all end `ready`, each with its task's solution."""
    api = SimulatedAPI(Scenario(accounts=(AccountSpec(key=KEY),)), seed=7, keep_log=False)
    sim = Simulation(api, key=KEY, policy=DocumentedPolicy(rng=random.Random(7)))
    for i in range(1000):
        sim.submit(TASK, at=i * 0.05)
    report = sim.run()
    assert report.states() == Counter({"ready": 1000})
    assert report.errors() == Counter()
    assert report.retries() == 0
    assert api.stats.tasks_created == 1000
    assert api.stats.solutions_delivered == 1000
    solutions: dict[object, Any] = {task.task_id: task.solution for task in api.tasks.values()}
    assert all(job.solution == solutions[job.task_id] for job in report.jobs)
    # default tasks take 4..12 s; polls every 2 s; 0.05 s each way
    times = report.time_to_solution()
    assert len(times) == 1000
    assert times[0] >= 4.0
    assert times[-1] <= 12.0 + 2.0 + 0.1 + 1e-9
    assert report.end == max(report.finished_at.values())


def test_same_seed_gives_identical_runs() -> None:
    """Same seeds and a fault mix: identical job histories, results and `api.stats`."""
    first, second = run_flaky(3), run_flaky(3)
    assert [job.history for job in first.jobs] == [job.history for job in second.jobs]
    assert [job.solution for job in first.jobs] == [job.solution for job in second.jobs]
    assert first.errors() == second.errors()
    assert first.finished_at == second.finished_at
    assert first.api.stats == second.api.stats
    assert first.api.log == second.api.log
    # the mix really was exercised
    assert first.retries() > 30
    outcomes = " ".join(first.api.stats.outcomes)
    for label in ("refused", "lost_request", "lost_reply", "code:12", "code:21", "http:429"):
        assert label in outcomes


def test_different_seed_gives_a_different_run() -> None:
    """Another seed gives other histories."""
    first, second = run_flaky(3, jobs=30), run_flaky(4, jobs=30)
    assert [job.history for job in first.jobs] != [job.history for job in second.jobs]


def test_zero_balance_after_n_fails_the_rest_after_one_request() -> None:
    """Balance for N tasks: N solved, the rest ZERO_BALANCE after one request each."""
    api = SimulatedAPI(Scenario(accounts=(AccountSpec(key=KEY, balance=5.0, price=1.0),)))
    sim = Simulation(api, key=KEY)
    jobs = [sim.submit(TASK) for _ in range(8)]
    late = sim.submit(TASK, at=100.0)
    report = sim.run()
    assert report.states() == Counter({"ready": 5, "failed": 4})
    assert report.errors() == Counter({"ZERO_BALANCE": 4})
    assert api.stats.tasks_created == 5
    for index, job in enumerate([*jobs[5:], late], start=5):
        assert isinstance(job.error, PermanentError)
        assert job.error.code == 3
        assert job.requests_sent == 1
        assert [move.trigger for move in job.history] == ["fail"]
        assert report.finished_at[index] == pytest.approx(job.started_at + 0.05)
    assert api.stats.outcomes["/createTask code:3"] == 4


def test_day_long_daily_quota_hint_fails_jobs_at_once() -> None:
    """A day-long 17 hint fails the job as the reply arrives; next day works."""
    sc = Scenario(accounts=(AccountSpec(key=KEY, daily_quota=1),), latency=0.05)
    api = SimulatedAPI(sc)
    sim = Simulation(api, key=KEY)
    first = sim.submit(TASK, at=0.0)
    blocked = sim.submit(TASK, at=10.0)
    next_day = sim.submit(TASK, at=DAY + 1.0)
    report = sim.run()
    assert first.state == "ready"
    assert next_day.state == "ready"
    assert blocked.state == "failed"
    assert isinstance(blocked.error, RetriesExhaustedError)
    assert blocked.error.name == "DAILY_LIMIT_EXCEEDED"
    assert blocked.error.code == 17
    assert blocked.error.failure is not None
    assert blocked.error.failure.retry_after == DAY - 10.0
    assert blocked.requests_sent == 1
    assert report.finished_at[1] == pytest.approx(10.05)
    assert blocked.history[-1].at == pytest.approx(10.05)


def hand_checked_run() -> tuple[SimulationReport, list[Job]]:
    """Three jobs whose every step can be worked out by hand (latency 0.5 s, 5 s tasks,
    polls every 2 s):

    - A at 0: created at 0 (solved at 5), accepted 0.5, polls 2.5 (processing) and 5.0
      (ready), done 5.5;
    - B at 10: gateway 5xx, reply at 10.5, retried after 1 s at 11.5 (solved at 16.5),
      accepted 12.0, polls 14.0 and 16.5, done 17.0;
    - C at 20 (unsolvable, 1 s, no retries): accepted 20.5, poll 22.5 answers 12, failed 23.0.
    """
    sc = Scenario(
        accounts=(AccountSpec(key=KEY),),
        task_types={
            "Hopeless": TaskTypeSpec(
                solve_seconds=1.0, solve_spread=0.0, min_solve_seconds=0.0, unsolvable_rate=1.0
            )
        },
        default_task=TaskTypeSpec(solve_seconds=5.0, solve_spread=0.0, min_solve_seconds=0.0),
        scheduled_faults=(
            ScheduledFault(start=10.0, end=10.1, kind=FaultKind.HTTP_5XX, endpoint="/createTask"),
        ),
        latency=0.5,
    )
    api = SimulatedAPI(sc)
    sim = Simulation(
        api, key=KEY, policy=FixedDelay(delay=1.0), poll_schedule=FixedInterval(interval=2.0)
    )
    jobs = [
        sim.submit(TASK, at=0.0),
        sim.submit(TASK, at=10.0),
        sim.submit({"type": "Hopeless"}, at=20.0, policy=NoRetry()),
    ]
    return sim.run(), jobs


def test_report_helpers_on_a_hand_checked_run() -> None:
    """The report helpers match a timeline worked out by hand."""
    report, (a, b, c) = hand_checked_run()
    assert [(m.at, m.trigger) for m in a.history] == [(0.5, "accept"), (5.5, "solve")]
    assert [(m.at, m.trigger) for m in b.history] == [
        (10.5, "defer"),
        (11.5, "retry_submit"),
        (12.0, "accept"),
        (17.0, "solve"),
    ]
    assert [(m.at, m.trigger) for m in c.history] == [(20.5, "accept"), (23.0, "fail")]
    assert (a.polls, b.polls, c.polls) == (2, 2, 1)
    assert isinstance(c.error, UnsolvableError)
    assert report.states() == Counter({"ready": 2, "failed": 1})
    assert report.errors() == Counter({"ERROR_CAPTCHA_UNSOLVABLE": 1})
    assert report.time_to_solution() == [5.5, 7.0]
    assert report.percentile(0.5) == pytest.approx(6.25)
    assert report.percentile(0.9) == pytest.approx(6.85)
    assert report.percentile(0.01) == pytest.approx(5.515)
    assert report.retries() == 1
    assert report.finished_at == {0: 5.5, 1: 17.0, 2: 23.0}
    assert report.end == 23.0
    assert report.api.stats.tasks_created == 3


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 5.5), (1.0, 7.0)])
def test_percentile_extremes_are_min_and_max(fraction: float, expected: float) -> None:
    """`percentile(0)` is the fastest time to solution and `percentile(1)` the slowest."""
    report, _ = hand_checked_run()
    assert report.percentile(fraction) == pytest.approx(expected)


def test_percentile_with_one_or_no_solution() -> None:
    """One solved job: every percentile is its time; none solved: None."""
    api = SimulatedAPI(Scenario(accounts=(AccountSpec(key=KEY),), latency=0.5))
    sim = Simulation(api, key=KEY, poll_schedule=FixedInterval(interval=2.0))
    sim.submit({"type": "T"}, at=3.0)
    report = sim.run()
    (only,) = report.time_to_solution()
    assert report.percentile(0.5) == only
    assert report.percentile(0.99) == only

    empty = SimulatedAPI(Scenario(accounts=(AccountSpec(key=KEY, balance=0.0),)))
    sim = Simulation(empty, key=KEY)
    sim.submit(TASK)
    report = sim.run()
    assert report.time_to_solution() == []
    assert report.percentile(0.5) is None
    assert report.retries() == 0


def test_on_move_hook_sees_every_move_once_in_time_order() -> None:
    """`on_move` sees every move once, in job order and in virtual-time order."""
    seen: list[tuple[Job, Move]] = []
    report = run_flaky(9, jobs=40, on_move=lambda job, move: seen.append((job, move)))
    assert len(seen) == sum(len(job.history) for job in report.jobs)
    for job in report.jobs:
        assert [move for owner, move in seen if owner is job] == job.history
    times = [move.at for _, move in seen]
    assert times == sorted(times)
    assert any(move.trigger == "defer" for _, move in seen)


def test_finished_at_is_the_last_move() -> None:
    """Each job's `finished_at` is the time of its terminal move."""
    report = run_flaky(5, jobs=40)
    assert len(report.finished_at) == len(report.jobs)
    for index, job in enumerate(report.jobs):
        assert job.finished
        assert report.finished_at[index] == job.history[-1].at
        assert job.history[-1].dest in ("ready", "failed")


# -- the worker pool (max_in_flight) -------------------------------------------------------

STEADY = Scenario(
    accounts=(AccountSpec(key=KEY),),
    default_task=TaskTypeSpec(solve_seconds=5.0, solve_spread=0.0, min_solve_seconds=0.0),
    latency=0.5,
)
"""Every task is accepted 0.5 s after it starts, solved 5 s after creation and, with 2-s
polls, done 5.5 s after it starts."""


def steady_run(
    max_in_flight: int | None, arrivals: list[float], **simulation: Any
) -> SimulationReport:
    """Run one task per arrival time on `STEADY` (2-s polls) and return the report."""
    sim = Simulation(
        SimulatedAPI(STEADY),
        key=KEY,
        poll_schedule=FixedInterval(interval=2.0),
        max_in_flight=max_in_flight,
        **simulation,
    )
    for at in arrivals:
        sim.submit(TASK, at=at)
    return sim.run()


def most_live(report: SimulationReport) -> int:
    """The most jobs live at one instant: each is live from its start until it finishes
    (half-open, so a worker freed at t and taken again at t counts once)."""
    edges = sorted(
        [(report.finished_at[i], -1) for i in range(len(report.jobs))]
        + [(job.started_at, +1) for job in report.jobs]
    )
    live = most = 0
    for _, step in edges:
        live += step
        most = max(most, live)
    return most


def pooled_flaky(max_in_flight: int | None, seen: list[tuple[Job, Move]]) -> SimulationReport:
    """120 tasks arriving 4 a second on `FLAKY` (every kind of fault, an outage, 20%
    unsolvable), `seen` collecting every move."""
    api = SimulatedAPI(FLAKY, seed=11, keep_log=False)
    sim = Simulation(
        api,
        key=KEY,
        policy=DocumentedPolicy(rng=random.Random(11)),
        on_move=lambda job, move: seen.append((job, move)),
        max_in_flight=max_in_flight,
    )
    for i in range(120):
        sim.submit(TASK, at=i * 0.25)
    return sim.run()


def live_at_each_move(seen: list[tuple[Job, Move]]) -> int:
    """The most jobs live as the `on_move` hook saw them: from a job's first move to its
    terminal one (a job moves only while live, so this never overcounts)."""
    live: dict[int, None] = {}  # by id: counted, never iterated
    most = 0
    for job, move in seen:
        if move.dest in TERMINAL_STATES:
            live.pop(id(job), None)
        else:
            live[id(job)] = None
            most = max(most, len(live))
    return most


def test_pool_never_has_more_live_jobs_than_workers() -> None:
    """With `max_in_flight=8` on a faulty service no more than 8 jobs are ever live, by the
    jobs' start and finish times and by what the `on_move` hook sees; every task still gets
    a job that finishes, and the pool is used to the full."""
    seen: list[tuple[Job, Move]] = []
    report = pooled_flaky(8, seen)
    assert len(report.jobs) == 120
    assert len(report.finished_at) == 120
    assert all(job.finished for job in report.jobs)
    assert most_live(report) == 8
    assert live_at_each_move(seen) <= 8
    assert len(seen) == sum(len(job.history) for job in report.jobs)
    # no job moves before it starts or after it finishes
    for index, job in enumerate(report.jobs):
        assert all(job.started_at <= m.at <= report.finished_at[index] for m in job.history)


def test_without_a_pool_the_same_run_exceeds_the_bound() -> None:
    """Mutant check: the live-count assertions above fail without the pool on the same
    scenario (so they do test the pool)."""
    seen: list[tuple[Job, Move]] = []
    report = pooled_flaky(None, seen)
    assert most_live(report) > 8
    assert live_at_each_move(seen) > 8


def test_pool_takes_tasks_first_come_first_served() -> None:
    """One worker takes the tasks by arrival time, ties in submission order, each as the
    previous job finishes; `report.jobs[i]` is the i-th task submitted, and `submit`
    returns no job."""
    arrivals = [3.0, 0.0, 1.0, 0.0, 1.0, 2.0]
    sim = Simulation(
        SimulatedAPI(STEADY), key=KEY, poll_schedule=FixedInterval(interval=2.0), max_in_flight=1
    )
    assert [sim.submit(TASK, at=at) for at in arrivals] == [None] * len(arrivals)
    report = sim.run()
    order = sorted(range(len(arrivals)), key=lambda i: report.jobs[i].started_at)
    assert order == [1, 3, 2, 4, 5, 0]
    assert order == sorted(range(len(arrivals)), key=lambda i: (arrivals[i], i))
    starts = [report.jobs[i].started_at for i in order]
    assert starts == pytest.approx([0.0, 5.5, 11.0, 16.5, 22.0, 27.5])
    for previous, following in itertools.pairwise(order):
        assert report.jobs[following].started_at == report.finished_at[previous]
    assert report.submitted_at == dict(enumerate(arrivals))
    assert report.jobs == sim.jobs


def test_pool_starts_a_task_on_arrival_when_a_worker_is_idle() -> None:
    """An idle worker takes a task the moment it arrives, not later."""
    report = steady_run(2, [0.0, 20.0, 21.0, 22.0])
    assert [job.started_at for job in report.jobs] == pytest.approx([0.0, 20.0, 21.0, 25.5])


def test_pool_deadline_counts_from_start_time_to_solution_from_arrival() -> None:
    """Three tasks at t=0, one worker, timeout 8 s: each job's deadline is 8 s after a
    worker took it (so all three are solved although the last is done at 16.5 s), while
    time to solution counts from the arrival, queueing included."""
    report = steady_run(1, [0.0, 0.0, 0.0], timeout=8.0)
    assert report.states() == Counter({"ready": 3})
    assert [job.started_at for job in report.jobs] == pytest.approx([0.0, 5.5, 11.0])
    assert [job.deadline for job in report.jobs] == pytest.approx([8.0, 13.5, 19.0])
    assert report.finished_at == pytest.approx({0: 5.5, 1: 11.0, 2: 16.5})
    assert report.submitted_at == {0: 0.0, 1: 0.0, 2: 0.0}
    assert report.time_to_solution() == pytest.approx([5.5, 11.0, 16.5])
    assert report.percentile(1.0) == pytest.approx(16.5)
    # the per-task timeout given to submit also counts from the start
    sim = Simulation(
        SimulatedAPI(STEADY), key=KEY, poll_schedule=FixedInterval(interval=2.0), max_in_flight=1
    )
    sim.submit(TASK)
    sim.submit(TASK, timeout=3.0)
    report = sim.run()
    assert report.jobs[1].started_at == pytest.approx(5.5)
    assert report.jobs[1].deadline == pytest.approx(8.5)
    assert report.jobs[1].state == "failed"
    assert report.finished_at[1] == pytest.approx(8.5)


def test_without_a_pool_time_to_solution_is_unchanged() -> None:
    """Without a pool every job starts on arrival: `submitted_at` is each job's
    `started_at`, and `submit` returns the job."""
    sim = Simulation(SimulatedAPI(STEADY), key=KEY, poll_schedule=FixedInterval(interval=2.0))
    jobs = [sim.submit(TASK, at=at) for at in (0.0, 0.0, 4.0)]
    report = sim.run()
    assert jobs == report.jobs
    assert report.submitted_at == {i: job.started_at for i, job in enumerate(report.jobs)}
    assert report.time_to_solution() == pytest.approx([5.5, 5.5, 5.5])
    # a report built without `submitted_at` counts from each job's start, as before
    bare = SimulationReport(report.jobs, report.api, report.finished_at, report.end)
    assert bare.time_to_solution() == report.time_to_solution()


def gated_flaky_simulation(
    max_in_flight: int | None = None, on_move: MoveHook | None = None
) -> Simulation:
    """80 tasks submitted on `FLAKY` behind a seeded `FleetGate`, with request log."""
    sim = Simulation(
        SimulatedAPI(FLAKY, seed=5, keep_log=True),
        key=KEY,
        policy=DocumentedPolicy(rng=random.Random(5)),
        gate=FleetGate(rng=random.Random(5)),
        max_in_flight=max_in_flight,
        on_move=on_move,
    )
    for i in range(80):
        sim.submit(TASK, at=i * 0.3)
    return sim


def gated_flaky(max_in_flight: int | None) -> SimulationReport:
    """`gated_flaky_simulation(max_in_flight)`, run."""
    return gated_flaky_simulation(max_in_flight).run()


@pytest.mark.parametrize("max_in_flight", [None, 10])
def test_gated_runs_are_deterministic(max_in_flight: int | None) -> None:
    """With a `FleetGate` (pooled or not) on a faulty service every job finishes, and the
    same seed gives the same run, even with other objects allocated in between (so the
    jobs' ids differ)."""
    first = gated_flaky(max_in_flight)
    ballast = [object() for _ in range(20_000)]
    second = gated_flaky(max_in_flight)
    del ballast
    assert len(first.finished_at) == 80
    if max_in_flight is not None:
        assert most_live(first) <= max_in_flight
    assert [job.history for job in first.jobs] == [job.history for job in second.jobs]
    assert first.finished_at == second.finished_at
    assert first.api.log == second.api.log
    assert any(move.trigger == "hold" for job in first.jobs for move in job.history)


@pytest.mark.parametrize("bad", [0, -3, True, False, 1.5, "4"])
def test_max_in_flight_must_be_none_or_a_positive_int(bad: Any) -> None:
    """`max_in_flight` is None or an int >= 1; bools, floats, strings, 0 and below are
    refused with a ValueError naming the value."""
    with pytest.raises(ValueError, match="max_in_flight must be None or an int >= 1"):
        Simulation(SimulatedAPI(STEADY), key=KEY, max_in_flight=bad)


def test_pool_refuses_bad_tasks_and_timeouts_at_submit() -> None:
    """With a pool, a bad task or timeout is refused by `submit`, not later inside `run`."""
    sim = Simulation(SimulatedAPI(STEADY), key=KEY, max_in_flight=1)
    with pytest.raises(InvalidTaskError):
        sim.submit({"body": "no type"})
    with pytest.raises(ValueError, match="timeout"):
        sim.submit(TASK, timeout=0.0)
    assert Simulation(SimulatedAPI(STEADY), key=KEY, max_in_flight=1).max_in_flight == 1


# -- what a run does not pay for ---------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_a_run_pauses_the_garbage_collector_and_leaves_it_as_it_was(enabled: bool) -> None:
    """While `run()` runs, the cyclic garbage collector is off; afterwards it is as it was
    before (on or off), also when a hook raised out of the run."""
    paused: list[bool] = []
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        sim = Simulation(
            SimulatedAPI(STEADY), key=KEY, on_move=lambda job, move: paused.append(gc.isenabled())
        )
        sim.submit(TASK)
        sim.run()
        assert paused and not any(paused)
        assert gc.isenabled() is enabled

        def explode(job: Job, move: Move) -> None:
            raise RuntimeError("a hook failed")

        failing = Simulation(SimulatedAPI(STEADY), key=KEY, on_move=explode)
        failing.submit(TASK)
        with pytest.raises(RuntimeError, match="a hook failed"):
            failing.run()
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


def test_a_run_leaves_no_garbage_cycles_behind_as_it_goes() -> None:
    """What pausing the collector rests on: jobs run through faults, retries, resubmits, an
    outage and a gate make no garbage that only the cyclic collector could free (a full
    collection every 25 moves finds none), so nothing piles up while it is paused."""
    found: list[int] = []
    moves = itertools.count()

    def collect(job: Job, move: Move) -> None:
        if next(moves) % 25 == 0:
            found.append(gc.collect())

    sim = gated_flaky_simulation(on_move=collect)
    gc.collect()
    report = sim.run()
    assert report.retries() > 30 and sum(job.resubmits for job in report.jobs) > 0
    assert len(found) > 10 and sum(found) == 0


def test_a_reply_sent_again_is_classified_once_and_as_classify_would() -> None:
    """A reply the service sends again (the same endpoint, status, body and retry hint in
    seconds) gets the outcome `classify` gave it, when that is `Processing` or a failure;
    a task id, a solution and a reply whose hint is a date (read against the clock) are
    classified every time."""
    from captchaflow.engine import Accepted, Processing, Solved, classify
    from captchaflow.engine._simulation import _EPOCH, _classified
    from captchaflow.policies import Failure
    from captchaflow.transports import ApiKey, ApiReply, Endpoint, NotSent

    key = ApiKey(KEY)
    remembered: dict[Any, Any] = {}
    poll, create = Endpoint.GET_TASK_RESULT, Endpoint.CREATE_TASK
    headers = {"content-type": "application/json"}
    processing = ApiReply.json({"status": "processing"}, headers=headers)
    limited = ApiReply.json({"code": 16, "msg": "RATE_LIMITED", "retryAfterSec": 3})
    gateway = ApiReply(503, b"<html>503</html>", {"Retry-After": "2"})
    # a date an hour and a half after the simulation's epoch (its clock's 0)
    dated = ApiReply(503, b"<html>503</html>", {"Retry-After": "Tue, 14 Nov 2023 23:43:20 GMT"})
    for now in (1.0, 2.0):
        for endpoint, reply in ((poll, processing), (create, limited), (poll, gateway)):
            outcome = _classified(remembered, endpoint, reply, now, key)
            assert outcome == classify(endpoint, reply, wall_time=_EPOCH + now, secret=key)
            assert isinstance(outcome, Processing | Failure)
            if now == 2.0:  # the same object as the first time
                assert (
                    outcome
                    is remembered[
                        endpoint, reply.status, reply.body, reply.headers.get("retry-after")
                    ]
                )
    assert len(remembered) == 3
    early = _classified(remembered, poll, dated, 0.0, key)
    late = _classified(remembered, poll, dated, 100.0, key)
    assert isinstance(early, Failure) and isinstance(late, Failure)
    assert (early.retry_after, late.retry_after) == (5400.0, 5300.0)  # read against the clock
    accepted = _classified(remembered, create, ApiReply.json({"taskId": 7}), 1.0, key)
    solved = _classified(
        remembered, poll, ApiReply.json({"status": "ready", "solution": {}}), 1.0, key
    )
    refused = _classified(remembered, create, NotSent("refused"), 1.0, key)
    assert (accepted, solved) == (Accepted(7), Solved({}))
    assert isinstance(refused, Failure) and len(remembered) == 3


def test_events_come_out_as_one_heap_would_give_them() -> None:
    """A run takes its events in (time, sequence) order, as one heap of them all would give
    them: those queued before it (from a sorted list) and those it adds meanwhile (at the
    current time, later, or before it, as a hook's `submit` may), each once."""
    import heapq
    from collections import deque
    from collections.abc import Iterator

    from captchaflow.engine._simulation import _in_order

    rng = random.Random(4)
    for _ in range(300):
        order = itertools.count()

        def event(at: float, order: Iterator[int] = order) -> tuple[float, int, int, None, int]:
            return (at, next(order), 0, None, -1)

        queued = [event(rng.random() * 10.0) for _ in range(rng.randrange(0, 30))]
        reference = list(queued)
        heapq.heapify(reference)
        added: list[tuple[float, int, int, None, int]] = []
        taken = _in_order(deque(sorted(queued)), added)
        for got in taken:
            assert got == heapq.heappop(reference)
            for _ in range(rng.choice([0, 0, 1, 2])):
                now = got[0]
                new = event(rng.choice([now, now + rng.random(), now + 5 * rng.random(), 0.0]))
                heapq.heappush(added, new)
                heapq.heappush(reference, new)
            if next(order) > 200:
                break
        else:
            assert not reference
