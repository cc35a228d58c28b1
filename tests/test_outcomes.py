"""Outcome-level properties: what whole simulations do, over scenarios hypothesis draws (fault
mixes, limits, outages, quotas, arrival patterns), beside the part-level tests of the gate.

- every simulation ends, within a bounded number of gate decisions per job;
- on scenarios with only per-request noise, the default gate solves at least as many tasks
  as `OpenGate()`;
- the same seed gives the same run, byte for byte, whatever the memory layout.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Hashable
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captchaflow.engine import Simulation, SimulationReport, default_gate
from captchaflow.engine._demo import demo_scenario
from captchaflow.policies import (
    AccountGate,
    AdaptiveConcurrency,
    DocumentedPolicy,
    Failure,
    FailureRateBreaker,
    FleetGate,
    GateDecision,
    Hold,
    OpenGate,
    Refuse,
    RetryBudget,
    TaskDurations,
)
from captchaflow.transports import Endpoint
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

KEY = "sk-outcomes-SECRET"
TASK: dict[str, Any] = {"type": "ImageToTextTask", "body": "aGk="}
MAX_DECISIONS_PER_JOB = 400
"""A generous bound on gate decisions per job: a 120-s job polling every 2 s needs about 60."""


class DecisionLimitExceeded(Exception):
    """A simulation asked its gate more often than any terminating run can."""


@attrs.define
class CountingGate:
    """Wraps a gate and counts its `admit` decisions; raises past `limit`, so a run that
    would spin fails the test instead of hanging it."""

    inner: AccountGate
    limit: int
    decisions: int = 0

    def register(self, job: Hashable, now: float) -> None:
        self.inner.register(job, now)

    def standing(self, job: Hashable, endpoint: Endpoint, now: float) -> Refuse | Hold | None:
        return self.inner.standing(job, endpoint, now)

    def admit(self, job: Hashable, endpoint: Endpoint, *, retry: bool, now: float) -> GateDecision:
        self.decisions += 1
        if self.decisions > self.limit:
            raise DecisionLimitExceeded(self.decisions)
        return self.inner.admit(job, endpoint, retry=retry, now=now)

    def observe(
        self,
        job: Hashable,
        endpoint: Endpoint,
        failure: Failure | None,
        *,
        sent_at: float,
        now: float,
    ) -> None:
        self.inner.observe(job, endpoint, failure, sent_at=sent_at, now=now)

    def release(self, job: Hashable, now: float) -> None:
        self.inner.release(job, now)

    def wakeups(self) -> list[Hashable]:
        return self.inner.wakeups()


@st.composite
def noise(draw: st.DrawFn, most: float = 0.2) -> FaultRates:
    """Per-request noise only: gateway 429/5xx (with or without Retry-After), refused and
    lost requests, lost replies and mangled bodies, `most` in all at most."""
    kinds = ["refused", "timeout_before", "http_429", "http_5xx", "timeout_after", "non_json"]
    shares = draw(st.lists(st.floats(0, 1), min_size=len(kinds), max_size=len(kinds)))
    total = draw(st.floats(0, most))
    scale = total / sum(shares) if sum(shares) > 0 else 0.0
    rates = {kind: share * scale for kind, share in zip(kinds, shares, strict=True)}
    hint = draw(st.sampled_from([None, 1.0, 2.0]))
    return FaultRates(
        **rates, retry_after_header=hint, timeout_seconds=draw(st.sampled_from([2.0, 10.0]))
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Anything an account can go through: noise, limits, outages, quotas, a refused window."""
    account = AccountSpec(
        key=KEY,
        rate_limit=draw(st.sampled_from([None, 5, 20, 100])),
        slots=draw(st.sampled_from([None, 3, 20, 200])),
        balance=draw(st.sampled_from([None, 0.0, 0.01, 0.05])),
        daily_quota=draw(st.sampled_from([None, 10])),
        plan_quota=draw(st.sampled_from([None, 15])),
        plan_quota_resets_at=draw(st.sampled_from([None, 30.0])),
    )
    outages = draw(
        st.lists(
            st.builds(
                lambda start, length, hint: Outage(start=start, end=start + length, hint=hint),
                st.floats(0, 60),
                st.floats(0.5, 40),
                st.booleans(),
            ),
            max_size=2,
        )
    )
    windows = draw(
        st.lists(
            st.builds(
                lambda start, kind, endpoint: ScheduledFault(
                    start=start, end=start + 10, kind=kind, endpoint=endpoint
                ),
                st.floats(0, 60),
                st.sampled_from([FaultKind.REFUSED, FaultKind.HTTP_5XX, FaultKind.TIMEOUT_AFTER]),
                st.sampled_from([None, "/createTask"]),
            ),
            max_size=1,
        )
    )
    return Scenario(
        accounts=(account,),
        default_task=TaskTypeSpec(
            solve_seconds=draw(st.sampled_from([2.0, 10.0, 40.0])),
            unsolvable_rate=draw(st.sampled_from([0.0, 0.1])),
        ),
        outages=tuple(outages),
        scheduled_faults=tuple(windows),
        faults=draw(noise(most=0.5)),
        latency=draw(st.sampled_from([0.0, 0.05])),
    )


@st.composite
def arrivals(draw: st.DrawFn) -> list[float]:
    """When tasks arrive: all at once, steadily, or in bursts."""
    count = draw(st.integers(1, 40))
    pattern = draw(st.sampled_from(["at-once", "steady", "bursts"]))
    if pattern == "at-once":
        return [0.0] * count
    if pattern == "steady":
        gap = draw(st.floats(0.05, 3.0))
        return [n * gap for n in range(count)]
    return [float(10 * (n % 3)) for n in range(count)]


def simulate(
    scenario: Scenario, times: list[float], gate: AccountGate, seed: int
) -> SimulationReport:
    """Run one job per arrival time on `scenario` through `gate`, seeded."""
    simulation = Simulation(
        SimulatedAPI(scenario, seed=seed, keep_log=False),
        key=KEY,
        policy=DocumentedPolicy(rng=random.Random(seed)),
        gate=gate,
    )
    for at in times:
        simulation.submit(TASK, at=at)
    return simulation.run()


GATES = {
    "default": lambda seed: default_gate(random.Random(seed)),
    "with a retry budget": lambda seed: FleetGate(
        rng=random.Random(seed), budget=RetryBudget(floor_per_second=3.0)
    ),
    "without pacing": lambda seed: FleetGate(rng=random.Random(seed), rate=None),
}


@settings(max_examples=120)
@given(scenarios(), arrivals(), st.integers(0, 2**16), st.sampled_from(sorted(GATES)))
def test_every_simulation_ends_within_bounded_steps(
    scenario: Scenario, times: list[float], seed: int, gate_name: str
) -> None:
    """Whatever the scenario, a simulation through the default gate (or one with a retry
    budget, or without pacing) ends, every job in a terminal state, after at most
    MAX_DECISIONS_PER_JOB gate decisions per job."""
    gate = CountingGate(GATES[gate_name](seed), MAX_DECISIONS_PER_JOB * len(times))
    report = simulate(scenario, times, gate, seed)
    assert all(job.finished for job in report.jobs)
    assert len(report.finished_at) == len(times)


@settings(max_examples=30)
@given(noise(), arrivals(), st.integers(0, 2**16))
def test_default_gate_solves_as_many_as_no_gate_under_noise(
    faults: FaultRates, times: list[float], seed: int
) -> None:
    """On scenarios with only per-request noise, the default gate solves at least as many
    tasks as OpenGate on the same seed (it stays out of the way of isolated noise)."""
    scenario = Scenario(accounts=(AccountSpec(key=KEY),), faults=faults)
    gated = simulate(scenario, times, default_gate(random.Random(seed)), seed)
    open_ = simulate(scenario, times, OpenGate(), seed)
    assert gated.states()["ready"] >= open_.states()["ready"]


def test_mutant_gate_pausing_on_isolated_noise_is_caught() -> None:
    """Mutant check: a breaker that trips on one gateway error (no minimum of calls, no
    threshold) and pauses for minutes makes jobs fail that OpenGate solves under 1.5%
    noise, which the property forbids."""
    hasty = FleetGate(
        rng=random.Random(1),
        breaker=FailureRateBreaker(min_calls=1, threshold=0.01, base=240, cap=240),
    )
    scenario = Scenario(
        accounts=(AccountSpec(key=KEY),), faults=FaultRates(http_5xx=0.01, http_429=0.005)
    )
    times = [n * 0.1 for n in range(300)]
    gated = simulate(scenario, times, hasty, 1)
    open_ = simulate(scenario, times, OpenGate(), 1)
    assert gated.states()["ready"] < open_.states()["ready"]


def _history(report: SimulationReport) -> list[tuple[Any, ...]]:
    """Every job's full history and final state, and the service's counters."""
    jobs = [
        (job.state, job.task_id, job.requests_sent, [tuple(move) for move in job.history])
        for job in report.jobs
    ]
    stats = report.api.stats
    return [*jobs, (sorted(stats.requests.items()), sorted(stats.outcomes.items()), report.end)]


def _demo_run(seed: int) -> SimulationReport:
    scenario = attrs.evolve(
        demo_scenario(),
        accounts=(AccountSpec(key=KEY, rate_limit=40, slots=30),),
        outages=(Outage(start=10.0, end=25.0, hint=False),),
    )
    times = [random.Random(seed).uniform(0, 20) for _ in range(300)]
    return simulate(scenario, times, default_gate(random.Random(seed)), seed)


def test_same_seed_same_run_whatever_the_memory_layout() -> None:
    """A seeded simulation run twice in one process, with different allocations between the
    runs (so object ids and hashes differ), gives identical histories for every job."""
    first = _history(_demo_run(3))
    ballast = [object() for _ in range(50_000)]  # shift where the second run's objects live
    gc.collect()
    second = _history(_demo_run(3))
    del ballast
    assert first == second
    assert any(move[3] == "hold" for job in first[:-1] for move in job[3])  # the gate acted


def test_mutant_wake_order_outside_the_seed_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant check for the test above: a gate that wakes jobs in an order the seed does not
    fix (here shuffled by the unseeded global generator, as a set ordered by memory address
    would) gives two different runs."""
    real = FleetGate.wakeups

    def shuffled(self: FleetGate) -> list[Hashable]:
        woken = real(self)
        random.shuffle(woken)
        return woken

    monkeypatch.setattr(FleetGate, "wakeups", shuffled)
    state = random.getstate()
    try:
        random.seed(1)
        first = _history(_demo_run(3))
        random.seed(2)
        assert _history(_demo_run(3)) != first
    finally:
        random.setstate(state)


SCARCE_SEEDS = (1, 2, 3, 4)


def _scarce_short_timeout(
    gate: AccountGate, seed: int, *, per_second: float = 10.0, timeout: float = 30.0
) -> tuple[int, int]:
    """300 tasks at 10 a second on an account of 5 slots (8 +- 3-s solves), each with a
    30-s timeout (or as given): (tasks solved, tasks the service created and billed)."""
    scenario = Scenario(
        accounts=(AccountSpec(key=KEY, slots=5),),
        default_task=TaskTypeSpec(solve_seconds=8.0, solve_spread=3.0),
    )
    api = SimulatedAPI(scenario, seed=seed, keep_log=False)
    simulation = Simulation(api, key=KEY, timeout=timeout, gate=gate)
    for n in range(300):
        simulation.submit(TASK, at=n / per_second)
    return simulation.run().states()["ready"], api.stats.tasks_created


def _scarce_totals(make_gate: Any, **load: float) -> tuple[int, int]:
    runs = [_scarce_short_timeout(make_gate(seed), seed, **load) for seed in SCARCE_SEEDS]
    return sum(solved for solved, _ in runs), sum(billed for _, billed in runs)


STEADY = {"per_second": 1.0, "timeout": 60.0}


def test_default_gate_on_scarce_slots_under_a_steady_load_solves_as_many_as_no_gate() -> None:
    """Slots scarce for good (a task a second, 0.6 a second fit): the default gate solves
    at least as many tasks as OpenGate, whose jobs retake a freed slot at once by asking
    without pause. The gate's probes (one createTask beyond the limit at a time) take a
    slot the service freed before a poll tells the gate; without them it solves fewer
    (the mutant check below)."""
    solved, _ = _scarce_totals(lambda seed: default_gate(random.Random(seed)), **STEADY)
    open_solved, _ = _scarce_totals(lambda seed: OpenGate(), **STEADY)
    assert solved >= open_solved


def test_mutant_a_gate_without_probes_is_caught() -> None:
    """Mutant check: with `probe_every=None` the test above fails."""
    solved, _ = _scarce_totals(
        lambda seed: FleetGate(
            rng=random.Random(seed), concurrency=AdaptiveConcurrency(probe_every=None)
        ),
        **STEADY,
    )
    open_solved, _ = _scarce_totals(lambda seed: OpenGate(), **STEADY)
    assert solved < open_solved


def test_default_gate_on_scarce_slots_and_a_short_timeout_solves_near_no_gate() -> None:
    """Far more tasks than slots, and a timeout a few solves long: the default gate solves
    at least 80% of what OpenGate solves (it was 64%, see the mutant check below) and pays
    for at most one task in ten it never delivers. (OpenGate still solves more here: its
    jobs retake a slot the instant the service frees it; the gate learns of it at the next
    poll or probe. The README says so.)"""
    solved, billed = _scarce_totals(lambda seed: default_gate(random.Random(seed)))
    open_solved, _ = _scarce_totals(lambda seed: OpenGate())
    assert solved >= 0.8 * open_solved
    assert billed - solved <= 0.1 * billed


def test_mutant_task_durations_that_wait_for_twenty_samples_are_caught() -> None:
    """Mutant check: with `min_samples=20` (the old default) the gate has no estimate of
    how long a task holds a slot before most jobs here are over, so every freed slot goes to
    the job closest to its deadline, which pays for a task it never sees: the test above
    fails."""
    solved, _ = _scarce_totals(
        lambda seed: FleetGate(rng=random.Random(seed), durations=TaskDurations(min_samples=20))
    )
    open_solved, _ = _scarce_totals(lambda seed: OpenGate())
    assert solved < 0.8 * open_solved
