"""Progress is guaranteed by the job, whatever its parts answer: every wait moves time forward
by at least `MIN_WAIT`, poll delays are numbers of at least `MIN_POLL_DELAY`, and a gate that
stalls a job fails it with `PolicyError`. Each test drives the simulation or the async driver
with a hostile part and checks that the run ends."""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable
from typing import Any

import anyio
import pytest

from captchaflow.engine import (
    MAX_HOLDS_AT_ONE_TIME,
    MIN_WAIT,
    Job,
    JobStateError,
    PolicyError,
    Processing,
    Simulation,
    VirtualClock,
)
from captchaflow.engine import _job as job_module
from captchaflow.engine._driver import drive_job
from captchaflow.policies import (
    MIN_POLL_DELAY,
    Decision,
    Failure,
    FixedInterval,
    GateDecision,
    Hold,
    OpenGate,
    RetryAfter,
    RetryContext,
)
from captchaflow.transports import ApiKey, Endpoint
from captchaflow.transports.sim import (
    AccountSpec,
    FaultRates,
    Scenario,
    SimulatedAPI,
    SimulatedTransport,
    TaskTypeSpec,
)

KEY = "sk-progress-SECRET"
TASK: dict[str, Any] = {"type": "ImageToTextTask", "body": "aGk="}
QUICK = Scenario(
    accounts=(AccountSpec(key=KEY),),
    default_task=TaskTypeSpec(solve_seconds=2.0, solve_spread=0.0),
    latency=0.0,
)


class TooManyAdmits(Exception):
    """Raised by a hostile gate once it has been asked more often than any sane run needs."""


class StallingGate(OpenGate):
    """Answers `Hold(until=now + step)` to every request (`step` 0: a hold that never ends),
    and optionally wakes every job it holds; raises after `limit` answers, so a spinning
    run fails the test instead of hanging it."""

    __slots__ = ("asked", "limit", "step", "wake_all", "woken")

    def __init__(self, step: float = 0.0, *, wake_all: bool = False, limit: int = 200_000):
        self.step, self.wake_all, self.limit = step, wake_all, limit
        self.asked = 0
        self.woken: list[Hashable] = []

    def admit(self, job: Hashable, endpoint: Endpoint, *, retry: bool, now: float) -> GateDecision:
        """Hold, always."""
        self.asked += 1
        if self.asked > self.limit:
            raise TooManyAdmits(self.asked)
        if self.wake_all:
            self.woken.append(job)
            return Hold(None, "stalling until woken")
        return Hold(now + self.step, "stalling")

    def wakeups(self) -> list[Hashable]:
        """Every job held since the last call."""
        woken, self.woken = self.woken, []
        return woken


class ZeroPoll:
    """A poll schedule answering `value` before every poll."""

    def __init__(self, value: object) -> None:
        self.value = value

    def delay_before_poll(self, poll: int) -> float:
        """The configured answer, whatever it is."""
        return self.value  # type: ignore[return-value]


class RetryAtOnce:
    """Retries everything after `delay` seconds, forever."""

    def __init__(self, delay: object = 0.0) -> None:
        self.delay = delay

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        """Retry, always."""
        return RetryAfter(self.delay)  # type: ignore[arg-type]


def simulate(timeout: float = 30.0, scenario: Scenario = QUICK, **options: Any) -> Job:
    """One job through a `Simulation` of `scenario`; return it, finished."""
    if "schedule" in options:
        options["poll_schedule"] = options.pop("schedule")
    simulation = Simulation(SimulatedAPI(scenario, seed=1), key=KEY, timeout=timeout, **options)
    job = simulation.submit(TASK)
    simulation.run()
    assert job.finished
    return job


def drive_virtual(timeout: float = 30.0, scenario: Scenario = QUICK, **parts: Any) -> Job:
    """One job through the async driver on a virtual clock; return it, finished."""
    clock = VirtualClock()
    gate = parts.pop("gate", None)
    job = Job(
        TASK,
        key=ApiKey(KEY),
        policy=parts.pop("policy", RetryAtOnce(1.0)),
        schedule=parts.pop("schedule", FixedInterval()),
        now=clock.now(),
        timeout=timeout,
        gate=gate,
    )
    transport = SimulatedTransport(SimulatedAPI(scenario, seed=1), clock)
    anyio.run(lambda: drive_job(job, transport, clock, on_move=None))
    assert job.finished
    return job


def test_gate_holding_until_now_forever_fails_the_job_in_the_simulation() -> None:
    """A gate that answers Hold(until=now) forever ends the simulation: the job fails with
    PolicyError naming the gate after its second such hold."""
    gate = StallingGate(0.0)
    job = simulate(gate=gate)
    assert isinstance(job.error, PolicyError)
    assert "StallingGate" in str(job.error) and "twice" in str(job.error)
    assert gate.asked == 2


def test_gate_holding_until_now_forever_fails_the_job_in_the_async_driver() -> None:
    """The same gate under the async driver on a virtual clock: the driver returns."""
    job = drive_virtual(gate=StallingGate(0.0))
    assert isinstance(job.error, PolicyError) and "StallingGate" in str(job.error)


def test_tiny_holds_still_move_time_by_the_least_step() -> None:
    """A gate holding for 1e-12 s at a time: every wait lasts at least MIN_WAIT, so the job
    reaches its deadline within timeout / MIN_WAIT holds."""
    gate = StallingGate(1e-12)
    job = simulate(timeout=1.0, gate=gate)
    assert job.error is not None and job.error.name == "DEADLINE_EXCEEDED"
    assert gate.asked <= 1.0 / MIN_WAIT + 1


def test_gate_waking_and_holding_at_one_instant_fails_the_job() -> None:
    """A gate that wakes every job it holds (so the driver re-runs it at once, at the same
    time) fails the job after MAX_HOLDS_AT_ONE_TIME holds."""
    gate = StallingGate(wake_all=True)
    job = simulate(gate=gate)
    assert isinstance(job.error, PolicyError) and "one instant" in str(job.error)
    assert gate.asked == MAX_HOLDS_AT_ONE_TIME


@pytest.mark.parametrize("answer", [0, 0.0, 1e-9, MIN_POLL_DELAY / 2, -1.0, math.nan, math.inf])
@pytest.mark.parametrize("driver", [simulate, drive_virtual])
def test_poll_schedule_below_the_floor_fails_the_job(answer: float, driver: Any) -> None:
    """A poll schedule answering 0, a tiny delay, a negative, NaN or infinity fails the job
    with PolicyError naming the schedule, in the simulation and in the async driver."""
    job = driver(schedule=ZeroPoll(answer))
    assert isinstance(job.error, PolicyError)
    assert "ZeroPoll" in str(job.error) and str(MIN_POLL_DELAY) in str(job.error)
    # Asked before the createTask (could its first poll come by the deadline?): nothing
    # was sent, so nothing was paid.
    assert job.requests_sent == 0


@pytest.mark.parametrize("answer", ["2", b"2", True, None, [2]])
def test_poll_schedule_answers_that_are_not_numbers_are_refused(answer: object) -> None:
    """Strings, bytes, booleans and other non-numbers are refused, not coerced."""
    job = simulate(schedule=ZeroPoll(answer))
    assert isinstance(job.error, PolicyError) and "ZeroPoll" in str(job.error)


def test_poll_schedule_at_the_floor_is_accepted() -> None:
    """MIN_POLL_DELAY itself is a valid answer (the floor is inclusive)."""
    job = simulate(schedule=ZeroPoll(MIN_POLL_DELAY))
    assert job.solution is not None


def test_built_in_schedules_refuse_delays_below_the_floor() -> None:
    """FixedInterval cannot be built with a delay under the floor, or with a bool."""
    with pytest.raises(ValueError, match="interval"):
        FixedInterval(interval=MIN_POLL_DELAY / 2)
    with pytest.raises(TypeError, match="interval"):
        FixedInterval(interval=True)


ALWAYS_5XX = Scenario(
    accounts=(AccountSpec(key=KEY),),
    faults=FaultRates(http_5xx=1.0),
    latency=0.0,
)


@pytest.mark.parametrize("driver", [simulate, drive_virtual])
def test_retrying_at_once_forever_on_a_zero_latency_service_ends(driver: Any) -> None:
    """A policy that retries after 0 s forever, against a service that answers 5xx in no
    time: each retry waits MIN_WAIT, so the job ends at its deadline."""
    job = driver(timeout=2.0, scenario=ALWAYS_5XX, policy=RetryAtOnce(0.0))
    assert job.error is not None and job.solution is None
    retries = [move for move in job.history if move.trigger == "defer"]
    times = [move.at for move in retries]
    assert all(b - a >= MIN_WAIT - 1e-12 for a, b in itertools.pairwise(times))
    assert len(retries) <= 2.0 / MIN_WAIT + 1


@pytest.mark.parametrize("delay", [True, "1", None])
def test_retry_delays_that_are_not_numbers_fail_the_job(delay: object) -> None:
    """A RetryAfter built with a bool (or a string, which attrs refuses) fails the job with
    PolicyError naming the policy instead of being coerced."""
    job = simulate(scenario=ALWAYS_5XX, policy=RetryAtOnce(delay))
    assert isinstance(job.error, PolicyError) and "RetryAtOnce" in str(job.error)


def test_mutant_without_the_progress_rules_spins() -> None:
    """Mutant check: with the least step at 0 and the stall check removed, the gate that
    holds until now keeps the simulation at one instant (it would spin forever; the gate's
    answer limit stops it, by raising, which fails the job)."""
    patch = pytest.MonkeyPatch()
    patch.setattr(job_module, "MIN_WAIT", 0.0)
    patch.setattr(job_module.Job, "_stalled", lambda self, decision, now: False)
    gate = StallingGate(0.0, limit=10_000)
    try:
        job = simulate(gate=gate)
    finally:
        patch.undo()
    assert gate.asked > 10_000  # the run only ended because the gate itself gave up
    assert isinstance(job.error, PolicyError) and "TooManyAdmits" in str(job.error)


class GarbageGate(StallingGate):
    """Answers `answer` to every admission, or raises it if it is an exception."""

    __slots__ = ("answer",)

    def __init__(self, answer: object) -> None:
        super().__init__()
        self.answer = answer

    def admit(self, job: Hashable, endpoint: Endpoint, *, retry: bool, now: float) -> GateDecision:
        """The configured answer."""
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer  # type: ignore[return-value]


@pytest.mark.parametrize(
    "answer",
    [None, "admit", Hold(math.nan, "nan"), Hold("soon", "str"), KeyError("bug")],  # type: ignore[arg-type]
    ids=["none", "str", "nan-hold", "str-hold", "raises"],
)
@pytest.mark.parametrize("driver", [simulate, drive_virtual])
def test_a_gate_answering_garbage_or_raising_fails_the_job(answer: object, driver: Any) -> None:
    """A gate that raises or answers anything but Admit, Hold (with a number or None) or
    Refuse fails the job with PolicyError naming the gate; nothing is sent."""
    job = driver(gate=GarbageGate(answer))
    assert isinstance(job.error, PolicyError) and "GarbageGate.admit" in str(job.error)
    assert job.requests_sent == 0


@pytest.mark.parametrize("delay", [-1.0, math.nan, math.inf])
def test_a_forged_retry_decision_fails_the_job(delay: float) -> None:
    """A RetryAfter forged past its constructor with a negative, NaN or infinite delay is
    caught by the job itself (PolicyError), not waited on."""
    forged = object.__new__(RetryAfter)
    object.__setattr__(forged, "delay", delay)
    object.__setattr__(forged, "reason", "forged")

    class Forger:
        def decide(self, failure: Failure, context: RetryContext) -> Decision:
            return forged

    job = simulate(scenario=ALWAYS_5XX, policy=Forger())
    assert isinstance(job.error, PolicyError) and "Forger" in str(job.error)


def test_time_running_backwards_is_refused() -> None:
    """A driver that feeds a job a time before one it already gave gets JobStateError."""
    job = Job(
        TASK,
        key=ApiKey(KEY),
        policy=RetryAtOnce(),
        schedule=FixedInterval(),
        now=10.0,
        timeout=30.0,
    )
    with pytest.raises(JobStateError, match="backwards"):
        job.next_action(9.0)
    assert job.next_action(10.0) is not None
    with pytest.raises(JobStateError, match="backwards"):
        job.feed(Processing(), 9.5)
