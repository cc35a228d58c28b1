"""Fleet coordination: the account gate's laws in virtual time, and many tasks at once through
the async and sync APIs (the gate's parts one by one: test_gate.py)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from captchaflow.engine import (
    Engine,
    InvalidTaskError,
    Job,
    Outcome,
    PermanentError,
    Simulation,
    TaskState,
    solve_many,
)
from captchaflow.policies import (
    AdaptivePoll,
    Bucket,
    DocumentedPolicy,
    Failure,
    FixedInterval,
    FleetGate,
    Hold,
    RetryBudget,
    SharedPause,
)
from captchaflow.transports import ApiReply, ApiRequest, Endpoint, HandlerTransport
from captchaflow.transports.sim import (
    AccountSpec,
    FaultRates,
    Outage,
    PlanState,
    Scenario,
    SimulatedAPI,
    TaskTypeSpec,
)

CREATE, POLL = Endpoint.CREATE_TASK, Endpoint.GET_TASK_RESULT
KEY = "sk-fleet-key"
TASK = {"type": "ImageToTextTask", "body": "aGk="}


# -- laws in virtual time ----------------------------------------------------------------


@attrs.frozen
class World:
    """A fleet run to check."""

    scenario: Scenario
    seed: int
    jobs: int
    timeout: float


@st.composite
def worlds(draw: st.DrawFn) -> World:
    """Accounts under pressure: rate limits, slots, outages, balances, plans, 5xx."""
    account = AccountSpec(
        key=KEY,
        rate_limit=draw(st.none() | st.integers(1, 10)),
        slots=draw(st.none() | st.integers(1, 8)),
        balance=draw(st.none() | st.sampled_from([0.0, 0.002, 0.005])),
        plan=draw(st.sampled_from([PlanState.ACTIVE] * 6 + list(PlanState))),
        daily_quota=draw(st.none() | st.integers(1, 10)),
    )
    start = draw(st.floats(0, 30))
    outages = (
        (Outage(start=start, end=start + draw(st.floats(0, 20)), hint=draw(st.booleans())),)
        if draw(st.booleans())
        else ()
    )
    faults = FaultRates(
        http_5xx=draw(st.sampled_from([0.0, 0.05, 0.2])),
        retry_after_header=draw(st.none() | st.floats(0, 5)),
        timeout_seconds=2.0,
    )
    scenario = Scenario(
        accounts=(account,),
        outages=outages,
        faults=faults,
        latency=0.05,
        default_task=TaskTypeSpec(
            solve_seconds=draw(st.floats(0.5, 10)),
            solve_spread=1.0,
            unsolvable_rate=draw(st.sampled_from([0.0, 0.2])),
        ),
    )
    return World(
        scenario, draw(st.integers(0, 999)), draw(st.integers(1, 25)), draw(st.floats(5, 120))
    )


@attrs.define
class FleetRun:
    """What a fleet run did: every request with its send time and outcome."""

    world: World
    gate: FleetGate
    jobs: list[Job]
    sent: list[tuple[Job, ApiRequest, float, float, Outcome]]
    finished_at: dict[int, float]


def run_fleet(world: World, gate: FleetGate | None = None) -> FleetRun:
    """Run the world's jobs behind one gate in virtual time."""
    gate = gate if gate is not None else FleetGate(rng=random.Random(world.seed))
    sent: list[tuple[Job, ApiRequest, float, float, Outcome]] = []
    simulation = Simulation(
        SimulatedAPI(world.scenario, seed=world.seed, keep_log=False),
        key=KEY,
        policy=DocumentedPolicy(rng=random.Random(world.seed)),
        poll_schedule=FixedInterval(interval=1.0),
        timeout=world.timeout,
        gate=gate,
        on_exchange=lambda *record: sent.append(record),
    )
    arrivals = random.Random(world.seed)
    for _ in range(world.jobs):
        simulation.submit(TASK, at=arrivals.uniform(0, 10))
    report = simulation.run()
    return FleetRun(
        world,
        gate,
        list(report.jobs),
        sent,
        {id(job): report.finished_at[i] for i, job in enumerate(report.jobs)},
    )


def check_pauses(result: FleetRun) -> None:
    """No request goes while the account is paused by a hinted 16/21/429/5xx reply (17/18:
    no createTask), counting from when the reply was seen."""
    windows: list[tuple[float, float, bool]] = []
    for _, _, _, seen, outcome in result.sent:
        hinted = isinstance(outcome, Failure) and outcome.retry_after is not None
        if hinted and SharedPause().pausing(outcome):
            assert isinstance(outcome, Failure) and outcome.retry_after is not None
            windows.append((seen, seen + outcome.retry_after, outcome.code in (17, 18)))
    for _, request, sent_at, _, _ in result.sent:
        for start, end, quota in windows:
            if quota and request.endpoint is not CREATE:
                continue
            assert not start < sent_at < end - 1e-9, (request.endpoint, sent_at, start, end)


def check_circuit(result: FleetRun) -> None:
    """After a permanent error is seen, no createTask goes on the key (and after 1, 14 or
    15 nothing at all)."""
    opened = [
        (seen, o.code)
        for _, _, _, seen, o in result.sent
        if isinstance(o, Failure) and o.bucket is Bucket.PERMANENT
    ]
    if not opened:
        return
    first, code = min(opened)
    for _, request, sent_at, _, _ in result.sent:
        if sent_at > first:
            assert request.endpoint is not CREATE or False, f"createTask after {code}"
            assert code == 3, f"{request.endpoint.value} after {code}"


def check_terminal(result: FleetRun) -> None:
    """Every job ends in a terminal state within its deadline plus one poll interval."""
    for job in result.jobs:
        assert job.finished
        assert result.finished_at[id(job)] <= job.deadline + 1.0 + 1e-9


def check_budget(result: FleetRun) -> None:
    """Retries never exceed the budget's share: initial tokens, plus `ratio` per first
    attempt, plus the floor rate over the time elapsed."""
    budget = result.gate.budget
    assert budget is not None
    elapsed = max((sent for *_, sent, _, _ in result.sent), default=0.0)
    allowed = 10.0 + budget.ratio * budget.first_attempts + budget.floor_per_second * elapsed
    assert budget.retries <= allowed + 1e-9


FLEET_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FLEET_SETTINGS
@given(worlds())
def test_law_paused_account_sends_nothing(world: World) -> None:
    """While the account is paused, no job of it sends (for any world)."""
    check_pauses(run_fleet(world))


@FLEET_SETTINGS
@given(worlds())
def test_law_open_circuit_sends_nothing(world: World) -> None:
    """After a permanent account error, no new task is created on the key."""
    check_circuit(run_fleet(world))


@FLEET_SETTINGS
@given(worlds())
def test_law_every_job_terminates_by_its_deadline(world: World) -> None:
    """With the gate on, every job still ends, within its deadline plus one interval."""
    check_terminal(run_fleet(world))


@FLEET_SETTINGS
@given(worlds())
def test_law_retries_stay_within_the_budget(world: World) -> None:
    """The retry budget (off by default; given here) never lets retries exceed its share of
    the traffic."""
    check_budget(run_fleet(world, FleetGate(rng=random.Random(world.seed), budget=RetryBudget())))


MUTANT = settings(
    max_examples=300,
    phases=[Phase.generate],
    database=None,
    derandomize=True,
    deadline=None,
    verbosity=Verbosity.quiet,
    suppress_health_check=list(HealthCheck),
)


def caught(check: Callable[[FleetRun], None], make_gate: Callable[[World], FleetGate]) -> bool:
    """Whether `check` fails on some world when the gate is `make_gate(world)`."""

    @MUTANT
    @given(worlds())
    def prop(world: World) -> None:
        check(run_fleet(world, make_gate(world)))

    try:
        prop()
    except AssertionError:
        return True
    return False


def test_mutant_gate_without_pause_is_caught() -> None:
    """A gate with no shared pause lets other jobs send during a pause."""
    assert caught(check_pauses, lambda w: FleetGate(pause=None, rng=random.Random(w.seed)))


def test_mutant_gate_without_circuit_is_caught() -> None:
    """A gate with no circuit breaker keeps creating tasks after ZERO_BALANCE."""
    assert caught(check_circuit, lambda w: FleetGate(circuit=None, rng=random.Random(w.seed)))


class Leaky(RetryBudget):
    """Broken: records retries but never pays for them."""

    def spend(self, retry: bool, now: float) -> None:
        """Count, but do not spend."""
        if retry:
            self.retries += 1
        else:
            self.first_attempts += 1

    def hold(self, now: float) -> Hold | None:
        """Never holds."""
        return None


def test_mutant_leaky_budget_is_caught() -> None:
    """A budget that never charges retries breaks the share bound."""
    assert caught(
        check_budget,
        lambda w: FleetGate(
            budget=Leaky(ratio=0.0, floor_per_second=0.0), rng=random.Random(w.seed)
        ),
    )


def test_zero_balance_fails_waiting_jobs_without_requests() -> None:
    """After ZERO_BALANCE, later jobs fail with it without sending anything."""
    world = World(Scenario(accounts=(AccountSpec(key=KEY, balance=0.003),)), 1, 20, 60)
    result = run_fleet(world)
    failed = [job for job in result.jobs if job.state == TaskState.FAILED]
    assert len(failed) == 17
    assert all(isinstance(job.error, PermanentError) for job in failed)
    creates = [r for r in result.sent if r[1].endpoint is CREATE]
    assert len(creates) <= 4
    assert any(
        m.trigger == "fail" and "circuit open" in m.cause for job in failed for m in job.history
    )


def test_adaptive_poll_learns_the_first_wait() -> None:
    """After ten solved tasks the first poll waits about the 10th percentile."""
    schedule = AdaptivePoll(interval=2.0)
    assert schedule.delay_before_poll(1) == 2.0
    for seconds in range(10, 30, 2):
        schedule.observe_solved(float(seconds))
    assert schedule.delay_before_poll(1) == 12.0
    assert schedule.delay_before_poll(2) == 2.0


# -- many tasks at once ------------------------------------------------------------------


def counting_handler(stats: dict[str, int]) -> Callable[[ApiRequest], Any]:
    """A service that solves every task on its second poll, tracking tasks in flight."""
    polls: dict[int, int] = {}

    async def handler(request: ApiRequest) -> ApiReply:
        await anyio.sleep(0.001)
        if request.endpoint is CREATE:
            stats["created"] += 1
            stats["in_flight"] += 1
            stats["peak"] = max(stats["peak"], stats["in_flight"])
            task_id = stats["created"]
            polls[task_id] = 0
            return ApiReply.json({"taskId": task_id})
        task_id = request.params["taskId"]
        polls[task_id] += 1
        if polls[task_id] < 2:
            return ApiReply.json({"status": "processing"})
        stats["in_flight"] -= 1
        return ApiReply.json({"status": "ready", "solution": {"text": str(task_id)}})

    return handler


@pytest.mark.anyio
async def test_solve_many_yields_every_job_as_it_finishes_within_the_bound() -> None:
    """Every task comes back once, solved, and no more than max_in_flight run at once."""
    stats = {"created": 0, "in_flight": 0, "peak": 0}
    engine = Engine(
        KEY,
        transport=HandlerTransport(counting_handler(stats)),
        poll_schedule=FixedInterval(interval=0.01),
    )
    seen = []
    async with engine.solve_many([dict(TASK, n=i) for i in range(60)], max_in_flight=7) as done:
        async for job in done:
            seen.append(job)
    assert len(seen) == 60 and len({id(job) for job in seen}) == 60
    assert all(job.state == TaskState.READY for job in seen)
    assert stats["peak"] <= 7


@pytest.mark.anyio
async def test_leaving_solve_many_early_cancels_the_rest() -> None:
    """Breaking out of the stream cancels the jobs still running; none is left live."""
    stats = {"created": 0, "in_flight": 0, "peak": 0}
    engine = Engine(
        KEY,
        transport=HandlerTransport(counting_handler(stats)),
        poll_schedule=FixedInterval(interval=0.05),
    )
    async with engine.solve_many([TASK] * 20, max_in_flight=5) as done:
        first = await done.receive()
    assert first.state == TaskState.READY
    assert stats["created"] <= 20


@pytest.mark.anyio
async def test_solve_many_rejects_a_bad_task_before_sending_anything() -> None:
    """An invalid task anywhere in the batch raises InvalidTaskError naming its index."""
    transport = HandlerTransport(counting_handler({"created": 0, "in_flight": 0, "peak": 0}))
    engine = Engine(KEY, transport=transport)
    with pytest.raises(InvalidTaskError, match="task 2"):
        async with engine.solve_many([TASK, TASK, {"no": "type"}]):
            pass
    assert transport.requests_sent == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_solve_many_yields_jobs(backend: str) -> None:
    """The sync helper yields finished jobs as they finish, on either backend."""
    stats = {"created": 0, "in_flight": 0, "peak": 0}
    started = time.monotonic()
    jobs = list(
        solve_many(
            [TASK] * 12,
            key=KEY,
            transport=HandlerTransport(counting_handler(stats)),
            poll_schedule=FixedInterval(interval=0.01),
            max_in_flight=4,
            backend=backend,
        )
    )  # type: ignore[arg-type]
    assert len(jobs) == 12 and all(job.solution is not None for job in jobs)
    assert stats["peak"] <= 4
    assert time.monotonic() - started < 10
