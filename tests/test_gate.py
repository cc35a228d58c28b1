"""The account gate's parts one at a time (`SharedPause`, `CircuitBreaker`,
`AdaptiveConcurrency`, `RetryBudget`, `AdaptiveRate`), their composition in `FleetGate`, and
`OpenGate`. Their laws over whole fleets in virtual time are in test_fleet.py."""

from __future__ import annotations

import math
import pathlib
import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from strategies import EdgeRandom

from captchaflow.engine import Simulation
from captchaflow.policies import (
    AccountGate,
    AdaptiveConcurrency,
    AdaptiveRate,
    Admit,
    Bucket,
    CircuitBreaker,
    DocumentedPolicy,
    Failure,
    FailureRateBreaker,
    FixedInterval,
    FleetGate,
    Hold,
    OpenGate,
    PauseState,
    Refuse,
    RetryBudget,
    SharedPause,
    StartupWindow,
    TaskDurations,
    TimingGate,
    bucket_of_code,
)
from captchaflow.policies._gate import _settled, _unprobed
from captchaflow.transports import Endpoint
from captchaflow.transports.sim import (
    AccountSpec,
    FaultRates,
    Outage,
    Scenario,
    SimulatedAPI,
    TaskTypeSpec,
)

CREATE, POLL = Endpoint.CREATE_TASK, Endpoint.GET_TASK_RESULT


def failure(
    code: int | None,
    *,
    hint: float | None = None,
    bucket: Bucket | None = None,
    status: int | None = None,
    endpoint: Endpoint = CREATE,
) -> Failure:
    """A failure with `code` (bucket from the code unless given)."""
    chosen = bucket if bucket is not None else bucket_of_code(code or 0)
    return Failure(
        chosen, f"C{code}", "m", endpoint, code=code, retry_after=hint, http_status=status
    )


def filled(jobs: int | str, **settings: float) -> AdaptiveConcurrency:
    """An `AdaptiveConcurrency(**settings)` whose `jobs` (a count, or names) each hold a
    permit for a task that exists, its limit put back to the one given after their accepts."""
    slots = AdaptiveConcurrency(**settings)  # type: ignore[arg-type]
    for job in range(jobs) if isinstance(jobs, int) else jobs:
        assert slots.acquire(job) is None
        slots.observe(job, None, sent_at=0.0, now=0.0)
    slots.limit = settings.get("limit")
    return slots


# -- the parts ---------------------------------------------------------------------------


def test_pause_holds_every_request_until_the_hint() -> None:
    """A 16 with a 5 s hint holds creates and polls until then; the latest hint wins."""
    pause = SharedPause()
    assert pause.observe(CREATE, failure(16, hint=5), 10.0, random.Random(0))
    held = pause.hold("a", POLL, 12.0)
    assert isinstance(held, Hold) and held.until == 15.0 and held.cause is not None
    assert pause.hold("a", CREATE, 15.0) is None
    assert not pause.observe(CREATE, failure(16, hint=1), 11.0, random.Random(0))  # earlier


def test_pause_without_hint_is_a_shared_growing_backoff() -> None:
    """Without a hint, successive 21s pause for a jittered, growing, capped time."""
    pause = SharedPause(base=1.0, cap=8.0)
    rng = random.Random(3)
    ends = []
    for n in range(6):
        pause.observe(CREATE, failure(21), 100.0 * n, rng)
        ends.append(pause.until - 100.0 * n)
    assert all(0 <= e <= 8.0 for e in ends)
    pause.observe(CREATE, None, 1000.0, rng)
    assert pause.account.strikes == 0


def test_quota_pause_holds_new_tasks_only() -> None:
    """A 17 with a hint holds createTask, not polls of tasks already paid for."""
    pause = SharedPause()
    pause.observe(CREATE, failure(17, hint=3600), 0.0, random.Random(0))
    assert pause.hold("a", POLL, 1.0) is None
    assert isinstance(pause.hold("a", CREATE, 1.0), Hold)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_gateway_statuses_never_pause_the_account_by_themselves(status: int) -> None:
    """HTTP 429 and 5xx without an API code, even with Retry-After, are per-request noise:
    the shared pause ignores them (the FailureRateBreaker weighs them as evidence)."""
    pause = SharedPause()
    gateway = failure(None, bucket=Bucket.TRANSIENT_HTTP, status=status, hint=2)
    assert not pause.observe(CREATE, gateway, 0.0, random.Random(0))
    assert pause.hold("a", CREATE, 0.5) is None


def test_slot_and_malformed_failures_do_not_pause() -> None:
    """NO_SLOT_AVAILABLE and malformed replies are not account-wide pauses."""
    pause = SharedPause()
    assert not pause.observe(CREATE, failure(2, hint=5), 0.0, random.Random(0))
    malformed = failure(None, bucket=Bucket.MALFORMED)
    assert not pause.observe(CREATE, malformed, 0.0, random.Random(0))


def test_circuit_refuses_new_tasks_but_lets_paid_tasks_be_polled_after_zero_balance() -> None:
    """ZERO_BALANCE refuses createTask; polls of existing (paid) tasks still go."""
    circuit = CircuitBreaker()
    assert circuit.observe("a", failure(3), 1.0)
    refusal = circuit.refuse("b", CREATE, 2.0)
    assert isinstance(refusal, Refuse) and refusal.failure.code == 3
    assert circuit.refuse("b", POLL, 2.0) is None


@pytest.mark.parametrize("code", [1, 14, 15])
def test_circuit_refuses_everything_for_key_and_plan_errors(code: int) -> None:
    """A bad key or plan refuses polls too: the service would refuse them anyway."""
    circuit = CircuitBreaker()
    circuit.observe("a", failure(code), 1.0)
    assert isinstance(circuit.refuse("b", POLL, 2.0), Refuse)


def test_circuit_cooldown_lets_one_probe_through_and_success_closes() -> None:
    """After the cool-down one job probes; its success closes the circuit."""
    circuit = CircuitBreaker(cooldown=60)
    circuit.observe("a", failure(3), 0.0)
    assert isinstance(circuit.refuse("b", CREATE, 59.0), Refuse)
    assert circuit.refuse("probe", CREATE, 61.0) is None
    assert isinstance(circuit.refuse("other", CREATE, 61.0), Refuse)
    circuit.observe("probe", None, 62.0)
    assert not circuit.is_open


def test_concurrency_queues_and_hands_slots_on_in_order() -> None:
    """Beyond the limit jobs queue; a released slot goes to the first in the queue."""
    slots = AdaptiveConcurrency(limit=2)
    assert slots.acquire("a") is None and slots.acquire("b") is None
    assert isinstance(slots.acquire("c"), Hold) and isinstance(slots.acquire("d"), Hold)
    assert slots.release("a") == ["c"]
    assert slots.acquire("c") is None


def test_concurrency_is_unbounded_until_no_slot_then_caps_at_what_filled_the_service() -> None:
    """No limit until the service says NO_SLOT_AVAILABLE (every job gets a permit); then the
    limit is the tasks created and not finished, and grows by `increase` (0.5) per accepted
    task."""
    slots = AdaptiveConcurrency()
    for job in range(10):
        assert slots.acquire(job) is None
    for job in range(6):
        slots.observe(job, None, sent_at=0, now=0)
    assert slots.limit is None
    slots.observe(7, failure(2), sent_at=1, now=1)
    assert slots.limit == 6
    slots.observe(6, None, sent_at=2, now=2)
    assert slots.limit == 6.5
    steady = AdaptiveConcurrency(limit=6.0, increase=0.0)
    steady.observe("a", None, sent_at=2, now=2)
    assert steady.limit == 6.0


def test_concurrency_takes_back_permits_beyond_a_new_limit_from_jobs_without_a_task() -> None:
    """Permits taken while there was no limit go back (latest first) when one is set, from
    jobs whose task does not exist yet; those jobs queue again ahead of the others."""
    slots = AdaptiveConcurrency()
    for job in "abcdef":
        slots.acquire(job)
    slots.observe("a", None, sent_at=0, now=0)
    slots.observe("b", None, sent_at=0, now=0)
    revoked = slots.observe("c", failure(2), sent_at=0, now=0)
    assert slots.limit == 2 and revoked == ["f", "e", "d", "c"]
    assert list(slots.holders) == ["a", "b"] and list(slots.queue) == ["c", "d", "e", "f"]
    assert isinstance(slots.acquire("g"), Hold)


def test_retry_budget_waits_when_spent_and_refills() -> None:
    """Without tokens a retry waits for the floor rate to earn one."""
    budget = RetryBudget(ratio=0.5, floor_per_second=2.0, tokens=1.0, max_tokens=10)
    assert budget.hold(0.0) is None
    budget.spend(True, 0.0)
    held = budget.hold(0.0)
    assert isinstance(held, Hold) and held.until == pytest.approx(0.5)
    assert budget.hold(0.5) is None
    budget.spend(False, 0.5)
    assert budget.tokens == pytest.approx(1.5)


def test_rate_learns_from_a_rate_limit_and_paces() -> None:
    """After a 16 with ten requests accepted in the window, sends are spaced 1/rate apart."""
    rate = AdaptiveRate(window=1.0, safety=0.9)
    for n in range(10):
        rate.observe(None, sent_at=0.05 * n, now=0.05 * n + 0.01)
    rate.observe(failure(16, hint=1), sent_at=0.6, now=0.61)
    assert rate.rate == pytest.approx(9.0)
    assert rate.hold("a", 1.0, 0.0) is None
    held = rate.hold("b", 1.0, 0.0)
    assert isinstance(held, Hold) and held.until == pytest.approx(1.0 + 1 / 9)


def test_rate_learns_nothing_from_a_quiet_account() -> None:
    """A 16 after one accepted request teaches no rate (other clients share the key)."""
    rate = AdaptiveRate()
    rate.observe(None, sent_at=0.0, now=0.01)
    rate.observe(failure(16, hint=1), sent_at=0.5, now=0.51)
    assert rate.rate is None


def test_gate_wakes_every_live_job_when_the_circuit_opens() -> None:
    """A permanent error wakes every registered job so each fails at once."""
    gate = FleetGate()
    for job in "abc":
        gate.register(job, 0.0)
    gate.observe("a", CREATE, failure(1), sent_at=0.0, now=0.1)
    assert set(gate.wakeups()) == {"a", "b", "c"}
    assert gate.wakeups() == []
    assert isinstance(gate.admit("b", POLL, retry=False, now=0.2), Refuse)
    gate.reset()
    assert isinstance(gate.admit("b", POLL, retry=False, now=0.3), Admit)


def test_open_gate_admits_everything() -> None:
    """OpenGate is coordination switched off."""
    gate = OpenGate()
    gate.observe("a", CREATE, failure(1), sent_at=0, now=0)
    assert gate.admit("a", CREATE, retry=True, now=0) == Admit()
    assert gate.standing("a", CREATE, 0) is None


# -- SharedPause, exactly ----------------------------------------------------------------


def test_pause_backoff_without_hint_doubles_from_base_to_cap_and_resets_on_success() -> None:
    """The n-th unhinted pause since the last success lasts at most `min(cap, base * 2 **
    (n - 1))`: 1, 2, 4, 8, then the cap; a success starts again from `base`, and wakes the
    jobs that waited for a probe."""
    pause = SharedPause(base=1.0, cap=10.0)
    lengths = []
    for n in range(6):
        assert pause.observe(CREATE, failure(21), 100.0 * n, EdgeRandom(high=True))
        lengths.append(pause.until - 100.0 * n)
    assert lengths == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert pause.observe(CREATE, None, 1000.0, EdgeRandom(high=True))  # wakes the waiting
    assert not pause.observe(CREATE, None, 1001.0, EdgeRandom(high=True))
    assert pause.observe(CREATE, failure(21), 2000.0, EdgeRandom(high=True))
    assert pause.until == 2001.0


def test_pause_ignores_failures_that_do_not_pause() -> None:
    """A failure that is not account-wide (here 2, 12 and 1) neither extends the pause nor
    wakes anyone."""
    gate = FleetGate(rng=EdgeRandom(high=True))
    gate.register("a", 0.0)
    for code in (2, 12, 1):
        assert not SharedPause().observe(CREATE, failure(code), 0.0, EdgeRandom(high=True))
    gate.observe("a", POLL, failure(12), sent_at=0.0, now=0.1)
    assert gate.wakeups() == []


def test_pause_reason_names_the_code() -> None:
    """A pause's reason names the failure and its code; without a code, just its name."""
    pause = SharedPause()
    pause.observe(CREATE, failure(16, hint=5), 0.0, EdgeRandom(high=True))
    held = pause.hold("a", CREATE, 1.0)
    assert held is not None and held.reason == "account paused: C16 (16)"
    breaker = FailureRateBreaker(min_calls=1)
    gateway = failure(None, bucket=Bucket.TRANSIENT_HTTP, status=503, hint=5)
    breaker.observe("a", CREATE, gateway, 0.0, EdgeRandom(high=True))
    held = breaker.hold("a", CREATE, 1.0)
    assert held is not None and held.reason == "/createTask seems down: CNone"


# -- CircuitBreaker, exactly -------------------------------------------------------------


def test_circuit_reports_opening_only_once() -> None:
    """`observe` says True only when the circuit opens: not for a success, not for a
    transient failure, not for a second permanent error while open."""
    circuit = CircuitBreaker()
    assert not circuit.observe("a", None, 0.0)
    assert not circuit.observe("a", failure(21), 0.0)
    assert circuit.observe("a", failure(3), 1.0)
    assert not circuit.observe("b", failure(3), 2.0)
    assert circuit.is_open


def test_circuit_admit_takes_the_probe_but_standing_does_not() -> None:
    """After the cool-down the first job `admit` lets through is the probe and the next is
    refused; asking for the standing verdict takes no probe."""
    gate = FleetGate(circuit=CircuitBreaker(cooldown=10.0))
    gate.observe("a", CREATE, failure(3), sent_at=0.0, now=0.0)
    assert gate.standing("x", CREATE, 11.0) is None
    assert gate.circuit is not None and gate.circuit.probe is None
    assert gate.admit("probe", CREATE, retry=False, now=11.0) == Admit()
    assert isinstance(gate.admit("other", CREATE, retry=False, now=11.0), Refuse)


# -- AdaptiveConcurrency, exactly --------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: AdaptiveConcurrency(limit=100.0, decrease=0.5, cooldown=5.0),
        lambda: AdaptiveConcurrency(limit=100.0, decrease=0.5),
    ],
    ids=["5", "default"],
)
def test_concurrency_decreases_at_once_then_once_per_cooldown(
    make: Callable[[], AdaptiveConcurrency],
) -> None:
    """The first NO_SLOT_AVAILABLE decreases the limit at any time (even at t = 0); the next
    only once `cooldown` seconds (5 by default) have passed, counting exactly `cooldown` as
    passed."""
    slots = make()
    for job in range(100):
        slots.acquire(job)
        slots.observe(job, None, sent_at=0.0, now=0.0)
    slots.limit = 100.0  # as built, before the accepts grew it
    slots.observe("x", failure(2), sent_at=0.0, now=0.0)
    assert slots.limit == 50.0
    slots.observe("x", failure(2), sent_at=4.0, now=4.9)
    assert slots.limit == 50.0
    slots.observe("x", failure(2), sent_at=5.0, now=5.0)
    assert slots.limit == 25.0


def test_concurrency_ignores_refusals_of_requests_sent_before_the_last_decrease() -> None:
    """Once per round, as TCP: a NO_SLOT_AVAILABLE for a request sent before the last
    decrease says nothing about the limit since, however late it arrives."""
    slots = filled(100, limit=100.0, decrease=0.5, cooldown=0.0)
    slots.observe("x", failure(2), sent_at=10.0, now=10.0)
    assert slots.limit == 50.0
    slots.observe("y", failure(2), sent_at=9.9, now=20.0)
    assert slots.limit == 50.0
    for job in range(96):  # most tasks have finished since: a stale refusal still says nothing
        slots.release(job)
    slots.observe("z", failure(2), sent_at=9.8, now=21.0)
    assert slots.limit == 50.0


def test_gate_release_passes_the_task_slot_on() -> None:
    """A finished job's task slot wakes the first job queued for one."""
    gate = FleetGate(concurrency=AdaptiveConcurrency(limit=1.0))
    assert gate.admit("a", CREATE, retry=False, now=0.0) == Admit()
    assert isinstance(gate.admit("b", CREATE, retry=False, now=0.0), Hold)
    gate.release("a", 1.0)
    assert gate.wakeups() == ["b"]
    assert gate.admit("b", CREATE, retry=False, now=1.0) == Admit()


# -- RetryBudget, exactly ----------------------------------------------------------------


def test_retry_budget_defaults_earn_a_fifth_per_first_attempt_and_count_from_zero() -> None:
    """By default each first attempt earns 0.2 of a retry, and the counters start at 0."""
    budget = RetryBudget(floor_per_second=0.0)
    start = budget.tokens
    for _ in range(5):
        budget.spend(False, 0.0)
    budget.spend(True, 0.0)
    assert budget.tokens == pytest.approx(start + 5 * 0.2 - 1.0)
    assert (budget.first_attempts, budget.retries) == (5, 1)


def test_gate_spends_the_budget_on_retries_only() -> None:
    """With the budget spent, a retry is held and a first attempt still goes."""
    gate = FleetGate(budget=RetryBudget(tokens=0.0, floor_per_second=0.0), concurrency=None)
    assert isinstance(gate.admit("a", POLL, retry=True, now=0.0), Hold)
    assert gate.admit("a", POLL, retry=False, now=0.0) == Admit()


# -- AdaptiveRate, exactly ---------------------------------------------------------------


def accept(rate: AdaptiveRate, count: int, *, start: float = 0.0, step: float = 0.1) -> None:
    """Tell `rate` of `count` accepted requests, sent (and answered) `step` s apart from
    `start`."""
    for n in range(count):
        rate.observe(None, sent_at=start + step * n, now=start + step * n)


def paced_rate(**fields: float) -> AdaptiveRate:
    """A rate already learned: 10/s, ceiling 10/s, last changed at t = 0."""
    return AdaptiveRate(**({"window": 1.0, "increase": 0.5, "headroom": 2.0} | fields))


def test_rate_grows_once_per_window_while_requests_wait() -> None:
    """Under demand (a request was paced within the last window), after a window the rate
    grows by `increase` and the ceiling by `increase / 100`; exactly one window counts."""
    rate = paced_rate(rate=10.0, ceiling=10.0, last_change=0.0, last_paced=0.5)
    rate.hold("a", 1.0, 0.0)
    assert rate.ceiling == pytest.approx(10.0 * 1.005)
    assert rate.rate == pytest.approx(15.0)
    assert rate.last_change == 1.0


def test_rate_growth_is_capped_by_headroom_over_the_ceiling() -> None:
    """The rate never grows past `headroom` times the ceiling."""
    rate = AdaptiveRate(
        window=1.0, increase=0.5, headroom=1.1, rate=10.0, ceiling=10.0, last_paced=0.5
    )
    rate.hold("a", 1.0, 0.0)
    assert rate.rate == pytest.approx(10.0 * 1.005 * 1.1)


@pytest.mark.parametrize(
    ("now", "last_paced"),
    [
        (0.9, 0.5),  # less than a window since the last change
        (2.0, 1.0),  # the last paced request exactly a window ago: no demand now
        (5.0, -100.0),  # an idle account
    ],
)
def test_rate_does_not_grow_without_demand_or_within_a_window(
    now: float, last_paced: float
) -> None:
    """No growth within a window of the last change, nor without a request paced in the
    last window (an idle account must not drift to an untried rate)."""
    rate = paced_rate(rate=10.0, ceiling=10.0, last_change=0.0, last_paced=last_paced)
    rate.hold("a", now, 0.0)
    assert (rate.rate, rate.ceiling) == (10.0, 10.0)


def test_rate_without_ceiling_does_not_grow() -> None:
    """A rate set by hand without a ceiling stays as it is."""
    rate = AdaptiveRate(window=1.0, rate=10.0, last_paced=0.5)
    rate.hold("a", 1.0, 0.0)
    assert (rate.rate, rate.ceiling) == (10.0, None)


def test_rate_reservation_in_the_past_is_admitted() -> None:
    """A job that comes back after its reserved send time goes at once."""
    rate = AdaptiveRate(rate=1.0)
    assert rate.hold("a", 0.0, 0.0) is None
    held = rate.hold("b", 0.0, 0.0)
    assert isinstance(held, Hold) and held.until == 1.0
    assert rate.hold("b", 1.5, 0.0) is None
    assert "b" not in rate.reservations


def test_rate_only_falls_on_a_new_rate_limit() -> None:
    """A later rate limit that measures a higher rate leaves the paced rate as it was."""
    rate = AdaptiveRate(window=1.0, safety=1.0, min_evidence=1)
    accept(rate, 5)
    rate.observe(failure(16), sent_at=0.5, now=0.5)
    assert rate.rate == 5.0
    accept(rate, 10, start=10.0, step=0.05)
    rate.observe(failure(16), sent_at=10.5, now=10.5)
    assert rate.rate == 5.0


def test_rate_lets_a_request_going_first_take_the_earliest_yielding_send_time() -> None:
    """A request asked to go `first` takes the earliest send time reserved by one that was
    not; that one moves to the end of the queue, and no two requests share a send time."""
    rate = AdaptiveRate(rate=1.0)
    assert rate.hold("poll-a", 0.0, 0.0) is None  # goes now
    assert rate.hold("poll-b", 0.0, 0.0) == Hold(1.0, "paced to the account's request rate")
    assert rate.hold("poll-c", 0.0, 0.0) == Hold(2.0, "paced to the account's request rate")
    held = rate.hold("create", 0.0, 0.0, first=True)
    assert isinstance(held, Hold) and held.until == 1.0
    assert rate.reservations == {"poll-b": 3.0, "poll-c": 2.0, "create": 1.0}
    # poll-b comes back at its old time and waits for its new one.
    assert rate.hold("poll-b", 1.0, 0.0) == Hold(3.0, "paced to the account's request rate")
    # A second request going first does not take the first one's time.
    second = rate.hold("create-2", 0.0, 0.0, first=True)
    assert isinstance(second, Hold) and second.until == 2.0
    assert sorted(rate.reservations.values()) == [1.0, 2.0, 3.0, 4.0]


def test_rate_without_first_keeps_the_order_of_asking() -> None:
    """Mutant check for the test above: without `first`, a request queues behind the rest."""
    rate = AdaptiveRate(rate=1.0)
    for job in ("poll-a", "poll-b", "poll-c"):
        rate.hold(job, 0.0, 0.0)
    held = rate.hold("create", 0.0, 0.0)
    assert isinstance(held, Hold) and held.until == 3.0


def test_creates_go_before_polls_only_once_task_slots_are_bounded() -> None:
    """Through the FleetGate: a createTask overtakes queued polls only after a
    NO_SLOT_AVAILABLE set a concurrency limit (slots are what bounds the account); before
    that every request keeps its place."""

    def paced_gate() -> FleetGate:
        gate = FleetGate(startup=None, rate=AdaptiveRate(rate=1.0))
        for job in ("p1", "p2", "p3"):
            gate.register(job, 0.0)
            gate.admit(job, POLL, retry=False, now=0.0)
        gate.register("c", 0.0)
        return gate

    unbounded = paced_gate()
    held = unbounded.admit("c", CREATE, retry=False, now=0.0)
    assert isinstance(held, Hold) and held.until == 3.0
    bounded = paced_gate()
    assert bounded.concurrency is not None
    bounded.concurrency.limit = 10.0
    held = bounded.admit("c", CREATE, retry=False, now=0.0)
    assert isinstance(held, Hold) and held.until == 1.0


# -- FleetGate, as a whole ---------------------------------------------------------------


def test_standing_is_the_pause_when_the_circuit_is_closed() -> None:
    """With a closed circuit, the standing verdict is the account's pause."""
    gate = FleetGate()
    gate.observe("a", CREATE, failure(16, hint=5), sent_at=0.0, now=0.0)
    held = gate.standing("b", POLL, 1.0)
    assert isinstance(held, Hold) and held.until == 5.0


def test_fleet_gate_repr_shows_its_parts_not_its_jobs() -> None:
    """The repr shows configuration and learned state, not the jobs it tracks."""
    gate = FleetGate()
    gate.register("job-in-repr", 0.0)
    gate.observe("job-in-repr", CREATE, failure(1), sent_at=0.0, now=0.0)
    assert "job-in-repr" not in repr(gate)


@pytest.mark.parametrize("gate", [OpenGate(), FleetGate()], ids=["OpenGate", "FleetGate"])
def test_gates_take_the_protocol_arguments_by_name(gate: OpenGate | FleetGate) -> None:
    """Every gate method can be called with the protocol's argument names, and `observe`'s
    times are keyword-only (so `sent_at` and `now` cannot be swapped by position)."""
    gate.register(job="a", now=0.0)
    gate.standing(job="a", endpoint=CREATE, now=0.0)
    gate.admit(job="a", endpoint=CREATE, retry=False, now=0.0)
    gate.observe(job="a", endpoint=CREATE, failure=None, sent_at=0.0, now=0.1)
    gate.release(job="a", now=0.2)
    with pytest.raises(TypeError):
        gate.observe("a", CREATE, None, 0.0, 0.1)  # type: ignore[misc]


@pytest.mark.parametrize("origin", [0.0, -9.5])
def test_rate_learned_on_an_idle_account_does_not_grow(origin: float) -> None:
    """A rate learned from a rate limit stays put while nothing waits for it, from the very
    first window on (no request has been paced yet), wherever the clock starts (-9.5: the
    first hold comes at t = 0.5, just after the clock passes 0)."""
    rate = AdaptiveRate(window=1.0, safety=1.0, min_evidence=1)
    accept(rate, 5, start=origin)
    rate.observe(failure(16), sent_at=origin + 0.5, now=origin + 0.5)
    assert rate.hold("a", origin + 10.0, origin) is None
    assert (rate.rate, rate.ceiling) == (5.0, 5.0)


@pytest.mark.parametrize(
    "part",
    [SharedPause, CircuitBreaker, AdaptiveConcurrency, RetryBudget, AdaptiveRate, FleetGate],
)
def test_gate_parts_take_keywords_only(part: type[object]) -> None:
    """Every part is configured by keyword, so a new field never shifts a positional one."""
    with pytest.raises(TypeError):
        part(1.0)


def test_concurrency_below_one_still_lets_one_task_through() -> None:
    """A limit under 1 (a configuration, or decreases) still allows one task in flight, so
    the account can never deadlock."""
    slots = AdaptiveConcurrency(limit=0.5, min_limit=0.5)
    assert slots.acquire("a") is None
    assert isinstance(slots.acquire("b"), Hold)
    assert slots.release("a") == ["b"]


def test_concurrency_holds_new_tasks_while_over_a_decreased_limit() -> None:
    """After a decrease leaves more tasks in flight than the limit, new tasks wait."""
    slots = filled("abcde", limit=5.0, decrease=0.5, cooldown=0.0)
    slots.observe("x", failure(2), sent_at=0.0, now=0.0)
    assert slots.limit == 2.5
    assert isinstance(slots.acquire("f"), Hold)


def test_concurrency_release_wakes_only_as_many_as_slots_freed() -> None:
    """One finished task frees one slot: only the first queued job is woken."""
    slots = AdaptiveConcurrency(limit=1.0)
    assert slots.acquire("a") is None
    assert isinstance(slots.acquire("b"), Hold) and isinstance(slots.acquire("c"), Hold)
    assert slots.release("a") == ["b"]


def test_polls_never_wait_for_a_task_slot() -> None:
    """Task slots bound createTask only: a poll goes even when every slot is taken."""
    gate = FleetGate(concurrency=AdaptiveConcurrency(limit=1.0))
    assert gate.admit("a", CREATE, retry=False, now=0.0) == Admit()
    assert gate.admit("b", POLL, retry=False, now=0.0) == Admit()


def test_retry_budget_defaults_cap_the_tokens_at_one_hundred() -> None:
    """However long the account idles, the budget saves at most `max_tokens` (100)."""
    budget = RetryBudget()
    assert budget.hold(-50.0) is None
    assert budget.tokens == 10.0  # the floor rate accrues from the first use on
    assert budget.hold(1e6) is None
    assert budget.tokens == 100.0


def test_rate_learns_nothing_from_gateway_429s() -> None:
    """An HTTP 429 without an API code is not the account's limit (a proxy, a gateway):
    only RATE_LIMITED teaches the rate, and the 429 does not count as accepted."""
    rate = AdaptiveRate(window=1.0, safety=1.0, min_evidence=5)
    accept(rate, 5)
    too_many = failure(None, bucket=Bucket.TRANSIENT_HTTP, status=429, hint=2)
    rate.observe(too_many, sent_at=0.5, now=0.5)
    assert rate.rate is None and len(rate.accepted) == 5


def test_part_observe_times_are_keyword_only() -> None:
    """`sent_at` and `now` are keyword-only, so they cannot be swapped by position."""
    rate = AdaptiveRate()
    rate.observe(None, sent_at=0.0, now=0.1)
    with pytest.raises(TypeError):
        rate.observe(None, 0.0, 0.1)  # type: ignore[misc]
    slots = AdaptiveConcurrency()
    slots.observe("a", None, sent_at=0.0, now=0.1)
    with pytest.raises(TypeError):
        slots.observe("a", None, 0.0, 0.1)  # type: ignore[misc]


def gate_script(origin: float, *, pause: bool) -> list[object]:
    """Drive a FleetGate (with or without its pause part) through admissions, a rate limit
    without a hint, paced requests, retries, an outage and a permanent error, all at
    `origin` + t; return every decision with its times made relative to `origin`."""
    gate = FleetGate(
        rng=random.Random(5),
        budget=RetryBudget(tokens=3.0, floor_per_second=1.0),
        pause=SharedPause() if pause else None,
    )
    decisions: list[object] = []

    def admit(job: str, endpoint: Endpoint, t: float, *, retry: bool = False) -> None:
        decision = gate.admit(job, endpoint, retry=retry, now=origin + t)
        if isinstance(decision, Hold) and decision.until is not None:
            # rounded: shifting by a large origin costs float precision, not meaning
            decision = Hold(round(decision.until - origin, 6), decision.reason, decision.cause)
        decisions.append(decision)

    for n in range(12):
        gate.register(n, origin)
        admit(str(n), CREATE, 0.01 * n)
        gate.observe(str(n), CREATE, None, sent_at=origin + 0.01 * n, now=origin + 0.01 * n)
    gate.observe("0", POLL, failure(16), sent_at=origin + 0.2, now=origin + 0.2)
    admit("0", POLL, 0.5)
    for n in range(14):
        admit(str(n), POLL, 1.1 + 0.02 * n, retry=n % 2 == 0)
    gate.observe("1", POLL, failure(21, hint=3), sent_at=origin + 8, now=origin + 8)
    admit("1", POLL, 9.0)
    admit("1", POLL, 11.5)
    gate.observe("2", CREATE, failure(1), sent_at=origin + 12, now=origin + 12)
    admit("3", CREATE, 12.5)
    return decisions


@pytest.mark.parametrize("pause", [True, False], ids=["with-pause", "without-pause"])
@pytest.mark.parametrize("origin", [-1e6, -5.0, 1e9])
def test_gate_depends_only_on_time_differences(origin: float, pause: bool) -> None:
    """The clock contract says only differences matter: the same calls shifted by any
    origin, negative included, get the same decisions (the gate once held everything until
    t = 0 and froze its retry budget while the clock read below 0)."""
    assert gate_script(origin, pause=pause) == gate_script(0.0, pause=pause)


def test_retry_budget_slow_floor_still_says_when() -> None:
    """A floor under one token a second still gives a spent budget's retry a time to come
    back (never an open-ended hold): at 0.5 tokens/s, 2 s for a whole token."""
    budget = RetryBudget(tokens=0.0, floor_per_second=0.5)
    held = budget.hold(0.0)
    assert isinstance(held, Hold) and held.until == 2.0
    held = RetryBudget(tokens=0.5, floor_per_second=0.5).hold(0.0)
    assert isinstance(held, Hold) and held.until == 1.0  # half a token to go
    assert RetryBudget(tokens=0.0, floor_per_second=0.0).hold(0.0) == Hold(
        None, "retry budget spent"
    )


def test_pause_jitter_is_equal_jitter() -> None:
    """Equal jitter: an unhinted pause lasts at least half its ceiling (so a shared pause is
    never nothing at all), and then one probe goes first."""
    pause = SharedPause()
    pause.observe(CREATE, failure(21), 7.0, EdgeRandom(high=False))
    assert pause.until == 7.5
    assert pause.account.probing and pause.hold("a", POLL, 7.5) is None
    pause.claim("a", POLL, 7.5)
    held = pause.hold("b", CREATE, 7.6)
    assert isinstance(held, Hold) and held.until is None and "probe" in held.reason


def test_quota_pause_keeps_the_latest_end_and_reports_extensions() -> None:
    """A quota reply extends the new-task pause (and says so); a shorter one later does not
    shorten it, and the same end again is no extension."""
    pause = SharedPause()
    rng = EdgeRandom(high=True)
    assert pause.observe(CREATE, failure(17, hint=3600), 0.0, rng)
    assert not pause.observe(CREATE, failure(17, hint=1), 1.0, rng)
    assert not pause.observe(CREATE, failure(18, hint=3599), 1.0, rng)  # the same end
    assert pause.quota.until == 3600.0
    assert pause.quota.cause is not None and pause.quota.cause.code == 17
    assert pause.observe(CREATE, failure(16, hint=5), 0.0, rng)
    assert not pause.observe(CREATE, failure(16, hint=4), 1.0, rng)  # the same end, 5.0


def test_concurrency_release_wakes_as_many_as_slots_are_free() -> None:
    """With 4 slots, 3 still held, one job waits for the one free slot."""
    slots = AdaptiveConcurrency(limit=4.0)
    for job in "abcd":
        slots.acquire(job)
    for job in "efg":
        slots.acquire(job)
    assert slots.release("a") == ["e"]


def test_concurrency_release_over_the_limit_wakes_nobody() -> None:
    """While more tasks are in flight than a decreased limit, a release frees no slot."""
    slots = filled("abcd", limit=4.0, decrease=0.5, cooldown=0.0)
    slots.acquire("e")
    slots.acquire("f")
    slots.observe("e", failure(2), sent_at=0.0, now=0.0)
    assert slots.limit == 2.0
    assert slots.release("a") == []


def test_gate_task_slot_is_kept_on_success_and_freed_on_a_failed_create() -> None:
    """An accepted createTask keeps its slot (the task is in flight); a refused one frees it
    for the next job; polls do not touch the slots or the limit."""
    gate = FleetGate(concurrency=AdaptiveConcurrency(limit=1.0))
    assert gate.admit("a", CREATE, retry=False, now=0.0) == Admit()
    assert isinstance(gate.admit("b", CREATE, retry=False, now=0.0), Hold)
    gate.observe("a", CREATE, None, sent_at=0.0, now=0.1)
    assert gate.wakeups() == []
    assert gate.concurrency is not None and gate.concurrency.limit == 1.5
    gate.observe("a", POLL, None, sent_at=0.2, now=0.3)
    assert gate.concurrency.limit == 1.5
    gate.observe("a", CREATE, failure(2), sent_at=0.4, now=0.5)
    assert gate.wakeups() == ["b"]


def test_rate_never_goes_below_min_rate() -> None:
    """A rate measured over a long window is floored at `min_rate` (0.1/s by default)."""
    rate = AdaptiveRate(window=100.0, safety=1.0)
    accept(rate, 5, step=1.0)
    rate.observe(failure(16), sent_at=5.0, now=5.0)
    assert (rate.ceiling, rate.rate) == (0.1, 0.1)


@pytest.mark.parametrize(
    "make", [AdaptiveRate, lambda: AdaptiveRate(window=1.0, min_evidence=5)], ids=["default", "5"]
)
def test_rate_learns_from_exactly_min_evidence_requests(make: Callable[[], AdaptiveRate]) -> None:
    """`min_evidence` (5 by default) accepted requests in the window are enough to learn; one
    fewer is not."""
    for accepted, learns in ((5, True), (4, False)):
        rate = make()
        accept(rate, accepted)
        rate.observe(failure(16), sent_at=0.5, now=0.5)
        assert (rate.rate is not None) is learns


def test_rate_grows_after_more_than_a_window_too() -> None:
    """Growth is due once at least a window has passed, not only exactly one."""
    rate = paced_rate(rate=10.0, ceiling=10.0, last_change=0.0, last_paced=1.0)
    rate.hold("a", 1.5, 0.0)
    assert rate.rate == pytest.approx(15.0)


def test_rate_measures_only_the_last_window() -> None:
    """Requests accepted before the last window do not count toward the ceiling."""
    rate = AdaptiveRate(window=1.0, safety=1.0)
    for start in (0.0, 10.0):
        accept(rate, 5, start=start)
    rate.observe(failure(16), sent_at=10.5, now=10.5)
    assert rate.ceiling == 5.0


@pytest.mark.parametrize("code", [2, 21, 12])
def test_rate_learns_only_from_rate_limits(code: int) -> None:
    """Other failures (no slot, outage, unsolvable) teach no rate."""
    rate = AdaptiveRate()
    accept(rate, 10, step=0.05)
    rate.observe(failure(code, hint=1), sent_at=0.5, now=0.5)
    assert rate.rate is None


def test_gate_learns_the_rate_and_restarts_pacing_after_a_pause() -> None:
    """Through the gate: a 16 teaches the rate, and the pause it starts drops reservations
    handed out before it, so released jobs do not all go at once."""
    gate = FleetGate()
    for n in range(10):
        gate.observe(str(n), POLL, None, sent_at=0.05 * n, now=0.05 * n)
    gate.observe("x", POLL, failure(16, hint=2), sent_at=0.5, now=0.5)
    assert gate.rate is not None and gate.rate.rate is not None
    assert gate.rate.next_free >= 2.5
    gate.rate.reservations["late"] = 9.0
    gate.observe("x", POLL, failure(16, hint=5), sent_at=0.6, now=0.6)
    assert gate.rate.reservations == {}


def test_gate_without_rate_or_pause_parts_still_works() -> None:
    """Every part may be None: a 16 with no rate part, pacing with no pause part."""
    no_rate = FleetGate(rate=None)
    no_rate.observe("a", POLL, failure(16, hint=1), sent_at=0.0, now=0.0)
    assert isinstance(no_rate.admit("a", POLL, retry=False, now=0.5), Hold)
    no_pause = FleetGate(pause=None, rate=AdaptiveRate(rate=10.0))
    assert no_pause.admit("a", CREATE, retry=False, now=0.5) == Admit()


def test_circuit_probe_flag_is_keyword_only() -> None:
    """`probe` must be named, so `refuse(job, endpoint, now, False)` cannot slip through."""
    with pytest.raises(TypeError):
        CircuitBreaker().refuse("a", CREATE, 0.0, False)  # type: ignore[misc]


def test_pause_backoff_exponent_stops_at_32_doublings() -> None:
    """With no cap, the unhinted pause stops doubling at `base * 2 ** 32` (no overflow)."""
    pause = SharedPause(base=1.0, cap=math.inf)
    for _ in range(40):
        pause.observe(CREATE, failure(21), 0.0, EdgeRandom(high=True))
    assert pause.until == 2.0**32


def test_concurrency_no_slot_caps_the_limit_below_the_tasks_in_flight() -> None:
    """After NO_SLOT_AVAILABLE the limit is at most the tasks created and not finished (the
    service was full with them), and never below `min_limit` (1 by default)."""
    slots = filled(6, limit=16.0, decrease=0.9)
    slots.acquire("x")
    slots.observe("x", failure(2), sent_at=0.0, now=0.0)
    assert slots.limit == 6.0
    alone = AdaptiveConcurrency(limit=16.0)
    alone.acquire("a")
    alone.observe("a", failure(2), sent_at=0.0, now=0.0)
    assert alone.limit == 1.0


@pytest.mark.parametrize("code", [21, 10, 3])
def test_concurrency_ignores_other_create_failures(code: int) -> None:
    """Only NO_SLOT_AVAILABLE lowers the task-slot limit."""
    slots = AdaptiveConcurrency(limit=8.0)
    slots.acquire("a")
    slots.observe("a", failure(code), sent_at=0.0, now=0.0)
    assert slots.limit == 8.0


def test_rate_window_is_measured_back_from_now() -> None:
    """The window is the `window` seconds before the rate limit, not whole seconds."""
    rate = AdaptiveRate(window=1.0, safety=1.0)
    accept(rate, 5, start=0.5)
    rate.observe(failure(16), sent_at=1.45, now=1.45)
    assert rate.ceiling == 5.0


def test_fleet_gates_compare_by_their_parts_not_their_random_state() -> None:
    """Two default gates are equal whatever their generators."""
    assert FleetGate(rng=random.Random(1)) == FleetGate(rng=random.Random(2))


README = (pathlib.Path(__file__).parents[1] / "README.md").read_text("utf-8")
PART_DEFAULTS: dict[type[object], dict[str, object]] = {
    StartupWindow: {"requests": 32, "seconds": 2.0},
    SharedPause: {"base": 1.0, "cap": 30.0},
    CircuitBreaker: {"cooldown": None},
    FailureRateBreaker: {
        "window": 10.0,
        "min_calls": 20,
        "threshold": 0.5,
        "base": 1.0,
        "cap": 30.0,
    },
    AdaptiveConcurrency: {
        "limit": None,
        "min_limit": 1.0,
        "max_limit": 10_000.0,
        "increase": 0.5,
        "decrease": 0.9,
        "cooldown": 5.0,
    },
    RetryBudget: {"ratio": 0.2, "floor_per_second": 10.0, "max_tokens": 100.0, "tokens": 10.0},
    AdaptiveRate: {
        "window": 1.0,
        "safety": 0.9,
        "increase": 0.05,
        "headroom": 0.95,
        "min_rate": 0.1,
        "min_evidence": 5,
    },
}


def as_call(part: type[object], settings: dict[str, object]) -> str:
    """`Part(name=value, ...)` as README.md writes it (numbers in their shortest form)."""
    shown = (
        f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in settings.items()
    )
    return f"`{part.__name__}({', '.join(shown)})`"


@pytest.mark.parametrize("part", PART_DEFAULTS, ids=lambda part: part.__name__)
def test_gate_part_defaults_are_the_documented_ones(part: type[object]) -> None:
    """Every setting of every gate part defaults to the value README.md states for it."""
    made = part()
    settings = PART_DEFAULTS[part]
    assert {name: getattr(made, name) for name in settings} == settings
    assert as_call(part, settings) in README


def test_circuit_stays_open_when_a_job_other_than_the_probe_succeeds() -> None:
    """Only the probe's success closes the circuit (a poll of a paid task proves nothing)."""
    circuit = CircuitBreaker(cooldown=10.0)
    circuit.observe("a", failure(3), 0.0)
    assert circuit.refuse("probe", CREATE, 11.0) is None
    circuit.observe("other", None, 12.0)
    assert circuit.is_open


def test_retry_budget_refills_by_the_time_since_its_last_update() -> None:
    """Tokens accrue at the floor rate for the time since the budget was last updated."""
    budget = RetryBudget(tokens=0.0, floor_per_second=10.0)
    budget.hold(100.0)
    budget.hold(100.05)
    assert budget.tokens == pytest.approx(0.5)


def test_rate_window_keeps_a_request_exactly_a_window_old() -> None:
    """A request sent exactly `window` seconds before the rate limit still counts."""
    rate = AdaptiveRate(window=1.0, safety=1.0)
    accept(rate, 5)
    rate.observe(failure(16), sent_at=1.0, now=1.0)
    assert rate.ceiling == 5.0


def test_rate_ceiling_is_requests_per_second_over_longer_windows() -> None:
    """Over a 2 s window, 5 accepted requests are a ceiling of 2.5/s."""
    rate = AdaptiveRate(window=2.0, safety=1.0)
    accept(rate, 5)
    rate.observe(failure(16), sent_at=0.5, now=0.5)
    assert rate.ceiling == 2.5


def test_rate_never_falls_below_what_the_account_accepted() -> None:
    """A later rate limit that measures fewer accepted requests (other clients on the key, a
    quiet spell) does not lower the rate below the most the account took in one window."""
    rate = AdaptiveRate(window=1.0, safety=1.0, min_evidence=1)
    accept(rate, 8)
    rate.observe(failure(16), sent_at=0.8, now=0.8)
    assert rate.rate == 8.0
    accept(rate, 3, start=10.0)
    rate.observe(failure(16), sent_at=10.5, now=10.5)
    assert rate.rate == 8.0 and rate.peak == 8


def test_rate_falls_to_a_lower_measurement_when_the_learned_rate_was_higher() -> None:
    """A preset rate above what the account is seen to accept falls to the measurement."""
    rate = AdaptiveRate(window=1.0, safety=1.0, min_evidence=1, rate=50.0, ceiling=50.0)
    accept(rate, 3, start=10.0)
    rate.observe(failure(16), sent_at=10.5, now=10.5)
    assert rate.rate == 3.0


def test_fleet_gate_repr_leaves_out_its_generator() -> None:
    """The repr shows the parts, not the random generator's state."""
    assert "Random" not in repr(FleetGate())


def test_gate_release_drops_the_jobs_reservation() -> None:
    """A finished job's reserved send time is dropped; with no rate part release still works."""
    gate = FleetGate(rate=AdaptiveRate(rate=1.0), concurrency=None)
    assert gate.admit("a", POLL, retry=False, now=0.0) == Admit()
    assert isinstance(gate.admit("b", POLL, retry=False, now=0.0), Hold)
    gate.release("b", 0.5)
    assert gate.rate is not None and "b" not in gate.rate.reservations
    FleetGate(rate=None).release("a", 0.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ratio", -0.1),
        ("floor_per_second", -1.0),
        ("floor_per_second", math.nan),
        ("max_tokens", 0.5),
    ],
)
def test_retry_budget_rejects_bad_settings(field: str, value: float) -> None:
    """A negative ratio or floor, a NaN, or room for less than one token is a ValueError
    naming the field (a negative floor used to schedule retries in the past)."""
    with pytest.raises(ValueError, match=field):
        RetryBudget(**{field: value})


def test_account_gate_protocol_is_checkable_at_run_time() -> None:
    """`isinstance(x, AccountGate)` works, so a runtime can check a gate it is handed: both
    built-in gates pass, an unrelated object does not."""
    assert isinstance(FleetGate(), AccountGate) and isinstance(OpenGate(), AccountGate)
    assert not isinstance(object(), AccountGate)


def test_quota_pause_ends_exactly_at_its_hint() -> None:
    """New tasks wait until the quota pause's end, and may go at that very moment (as they
    may at the end of an account pause)."""
    pause = SharedPause()
    pause.observe(CREATE, failure(17, hint=10), 0.0, EdgeRandom(high=False))
    assert isinstance(pause.hold("a", CREATE, 9.99), Hold)
    assert pause.hold("a", CREATE, 10.0) is None


def test_retry_budget_accepts_its_boundary_settings() -> None:
    """No earning, no floor and room for exactly one token are valid settings (the smallest
    the validation allows)."""
    budget = RetryBudget(ratio=0.0, floor_per_second=0.0, max_tokens=1.0)
    assert (budget.ratio, budget.floor_per_second, budget.max_tokens) == (0.0, 0.0, 1.0)


def test_retry_budget_ignores_a_reading_older_than_its_last_update() -> None:
    """A clock reading earlier than the budget's last update (a runtime passing a stale time)
    neither drains nor refills it, and does not move its update time back."""
    budget = RetryBudget(tokens=5.0)
    assert budget.hold(10.0) is None
    assert budget.hold(4.0) is None
    assert (budget.tokens, budget.updated) == (5.0, 10.0)


def test_rate_window_slides_with_steady_traffic() -> None:
    """With requests accepted all along, the oldest leave the window as time moves on: at a
    rate limit at 2.1 s only the four sent in [1.1, 2.1] are in it (the ceiling is still the
    six the account took in one window before)."""
    rate = AdaptiveRate(window=1.0, safety=1.0, min_evidence=1)
    accept(rate, 10, step=0.2)
    rate.observe(failure(16), sent_at=2.1, now=2.1)
    assert len(rate.accepted) == 4 and rate.peak == 6
    assert rate.ceiling == 6.0


@pytest.mark.parametrize("bucket", [b for b in Bucket if b is not Bucket.PERMANENT])
def test_circuit_opens_only_on_permanent_errors(bucket: Bucket) -> None:
    """A bad request, an unsolvable task, an HTTP or network failure or a malformed reply says
    nothing about the account: the circuit stays closed."""
    circuit = CircuitBreaker()
    assert not circuit.observe("a", failure(None, bucket=bucket), 0.0)
    assert not circuit.is_open


@pytest.mark.parametrize("origin", [0.0, 1e6])
def test_preset_rate_first_grows_a_window_after_its_first_use(origin: float) -> None:
    """A rate given at construction (`AdaptiveRate(rate=10)`) is paced from the first request,
    and its growth windows count from that request, wherever the clock starts: no growth
    0.7 s after it, growth under demand 1 s after it."""
    rate = AdaptiveRate(rate=10.0, ceiling=10.0, increase=0.5, headroom=2.0)
    assert rate.hold("a", origin + 0.5, origin) is None
    held = rate.hold("b", origin + 0.5, origin)
    assert isinstance(held, Hold) and held.until == pytest.approx(origin + 0.6)
    assert rate.hold("c", origin + 1.2, origin) is None  # 0.7 s after the first use: no growth
    assert rate.rate == 10.0
    assert isinstance(rate.hold("d", origin + 1.2, origin), Hold)  # paced: there is demand
    rate.hold("e", origin + 1.5, origin)  # a window after the first use: growth is due
    assert rate.rate == pytest.approx(15.0)


@pytest.mark.parametrize("status", [408, 425])
def test_request_timeout_and_too_early_do_not_pause(status: int) -> None:
    """HTTP 408 and 425 are transient for the request that got them, but say nothing about
    the account's load: unlike 429 and 5xx they pause nobody."""
    failed = failure(None, bucket=Bucket.TRANSIENT_HTTP, status=status, hint=2)
    assert not SharedPause().observe(CREATE, failed, 0.0, random.Random(0))


def test_circuit_probe_goes_exactly_when_the_cooldown_ends() -> None:
    """The cool-down is `cooldown` seconds: the probe may go at that very moment."""
    circuit = CircuitBreaker(cooldown=10.0)
    circuit.observe("a", failure(3), 5.0)
    assert isinstance(circuit.refuse("b", CREATE, 14.99), Refuse)
    assert circuit.refuse("b", CREATE, 15.0) is None


def test_rate_growth_never_lowers_the_rate() -> None:
    """A rate above `headroom` times the ceiling (safety set above headroom) is kept when
    growth is due, not cut down to the headroom."""
    rate = paced_rate(rate=10.0, ceiling=10.0, last_change=0.0, last_paced=0.5, headroom=0.5)
    rate.hold("a", 1.0, 0.0)
    assert rate.ceiling == pytest.approx(10.05)
    assert rate.rate == 10.0


def test_circuit_built_open_without_a_time_has_served_its_cooldown() -> None:
    """A circuit built open (`failure=`) without `opened_at` counts as opened long ago: its
    cool-down is over, whatever the clock reads; with `opened_at` it waits from then."""
    for now in (-100.0, 0.0, 5.0):
        assert CircuitBreaker(cooldown=10.0, failure=failure(3)).refuse("x", CREATE, now) is None
    told = CircuitBreaker(cooldown=10.0, failure=failure(3), opened_at=0.0)
    assert isinstance(told.refuse("x", CREATE, 5.0), Refuse)


def test_circuit_probe_is_recognised_by_equality() -> None:
    """Jobs are any hashable identity: the probe's success closes the circuit when the key
    it reports with is equal to the probe's, even if it is another object."""
    circuit = CircuitBreaker(cooldown=10.0)
    circuit.observe(("job", 1000), failure(3), 0.0)
    probe = ("job", int("1000"))
    assert circuit.refuse(probe, CREATE, 10.0) is None
    circuit.observe(("job", int("1000")), None, 11.0)
    assert not circuit.is_open


def test_retry_budget_never_starts_above_its_cap() -> None:
    """Starting tokens above `max_tokens` are cut to it, so a budget of one token allows one
    retry, then waits."""
    budget = RetryBudget(max_tokens=1.0, floor_per_second=0.0)
    assert budget.tokens == 1.0
    assert budget.hold(0.0) is None
    budget.spend(True, 0.0)
    assert isinstance(budget.hold(0.0), Hold)


# -- FailureRateBreaker and probing --------------------------------------------------------

GATEWAY = failure(None, bucket=Bucket.TRANSIENT_HTTP, status=502)


def feed(breaker: FailureRateBreaker, pattern: str, *, start: float = 0.0) -> bool:
    """Feed one reply per character ("x": gateway failure, ".": success), 0.01 s apart, to
    createTask; return whether the last one tripped the breaker."""
    for n, mark in enumerate(pattern):
        breaker.observe(n, CREATE, GATEWAY if mark == "x" else None, start + n / 100, EdgeRandom())
    return CREATE in breaker.pauses and breaker.pauses[CREATE].active(start + len(pattern) / 100)


def test_breaker_needs_the_minimum_number_of_calls() -> None:
    """Nineteen failures in a row are not evidence enough (min_calls 20); the twentieth is."""
    breaker = FailureRateBreaker()
    assert not feed(breaker, "x" * 19)
    assert feed(FailureRateBreaker(), "x" * 20)


def test_breaker_trips_at_the_threshold_not_below() -> None:
    """Half of the window failing trips it (threshold 0.5, inclusive); 9 of 20 does not."""
    assert feed(FailureRateBreaker(), "." * 10 + "x" * 10)
    assert not feed(FailureRateBreaker(), "." * 11 + "x" * 9)


def test_breaker_window_forgets_old_calls() -> None:
    """Failures older than `window` seconds no longer count."""
    breaker = FailureRateBreaker(window=1.0, min_calls=4)
    feed(breaker, "xxx")
    breaker.observe("a", CREATE, None, 5.0, EdgeRandom())
    breaker.observe("b", CREATE, GATEWAY, 5.01, EdgeRandom())
    assert CREATE not in breaker.pauses


def test_breaker_never_trips_on_fifteen_percent_noise() -> None:
    """10,000 replies with 15% random gateway errors, 100 a second, never trip it."""
    breaker = FailureRateBreaker()
    noise = random.Random(7)
    for n in range(10_000):
        reply = GATEWAY if noise.random() < 0.15 else None
        breaker.observe(n, CREATE, reply, n / 100, noise)
    assert CREATE not in breaker.pauses


def test_breaker_counts_api_answers_as_successes() -> None:
    """An API error (16, 2, 12, a permanent one) is the service answering: not noise."""
    breaker = FailureRateBreaker(min_calls=4)
    for n, code in enumerate([16, 2, 12, 3, 21]):
        breaker.observe(n, CREATE, failure(code), n / 10, EdgeRandom())
    assert CREATE not in breaker.pauses


def test_breaker_pauses_one_endpoint_only() -> None:
    """createTask being down holds creates, not polls of tasks that exist."""
    breaker = FailureRateBreaker()
    feed(breaker, "x" * 20)
    assert isinstance(breaker.hold("a", CREATE, 0.2), Hold)
    assert breaker.hold("a", POLL, 0.2) is None


def test_breaker_probes_after_the_pause_and_the_probe_decides() -> None:
    """After the pause one job probes, the others wait to be woken; the probe's failure
    pauses again for longer, its success closes the breaker and wakes everyone."""
    gate = FleetGate(rng=EdgeRandom(high=True), rate=None)
    for job in "pqr":
        gate.register(job, 0.0)
    for n in range(20):
        gate.observe(n, CREATE, GATEWAY, sent_at=n / 100, now=n / 100)
    assert gate.breaker is not None
    pause = gate.breaker.pauses[CREATE]
    assert pause.until == pytest.approx(0.19 + 1.0)  # the first backoff: base 1
    standing = gate.standing("p", CREATE, 0.5)
    assert isinstance(standing, Hold) and standing.until == pause.until
    assert standing.cause == GATEWAY
    assert gate.admit("p", CREATE, retry=False, now=1.2) == Admit()
    held = gate.admit("q", CREATE, retry=False, now=1.2)
    assert isinstance(held, Hold) and held.until is None
    gate.observe("p", CREATE, GATEWAY, sent_at=1.2, now=1.3)
    assert gate.wakeups() == ["p", "q", "r"]
    assert pause.until == pytest.approx(1.3 + 2.0) and pause.strikes == 2
    assert isinstance(gate.admit("q", CREATE, retry=False, now=2.0), Hold)
    assert gate.admit("q", CREATE, retry=False, now=3.3) == Admit()
    gate.observe("r", CREATE, None, sent_at=1.0, now=3.35)  # sent before: not the probe
    assert pause.probing
    gate.observe("q", CREATE, None, sent_at=3.3, now=3.4)
    assert not pause.active(3.4) and pause.strikes == 0
    assert gate.wakeups() == ["p", "q", "r"]
    assert gate.admit("r", CREATE, retry=False, now=3.5) == Admit()


def test_breaker_pause_honours_the_longest_retry_after_in_the_window() -> None:
    """Gateway replies with Retry-After: the pause lasts at least the longest hint seen."""
    breaker = FailureRateBreaker()
    hinted = failure(None, bucket=Bucket.TRANSIENT_HTTP, status=429, hint=20)
    for n in range(20):
        breaker.observe(n, CREATE, hinted if n == 3 else GATEWAY, n / 100, EdgeRandom())
    assert breaker.pauses[CREATE].until >= 0.19 + 20


def test_a_gone_probe_frees_its_place() -> None:
    """A probe whose job finishes before its reply (cancelled) hands the probe on."""
    gate = FleetGate(rng=EdgeRandom(high=True), rate=None)
    for job in "pq":
        gate.register(job, 0.0)
    gate.observe("x", CREATE, failure(21), sent_at=0.0, now=0.0)  # unhinted: pause, probe
    assert gate.admit("p", POLL, retry=False, now=5.0) == Admit()
    assert isinstance(gate.admit("q", POLL, retry=False, now=5.0), Hold)
    gate.wakeups()
    gate.release("p", 5.1)
    assert gate.wakeups() == ["q"]
    assert gate.admit("q", POLL, retry=False, now=5.2) == Admit()


def test_hinted_pause_needs_no_probe() -> None:
    """With the API's own hint, every job goes when it has passed: no probe first."""
    gate = FleetGate(rate=None)
    gate.observe("x", CREATE, failure(21, hint=3), sent_at=0.0, now=0.0)
    assert isinstance(gate.admit("a", POLL, retry=False, now=2.0), Hold)
    assert gate.admit("a", POLL, retry=False, now=3.0) == Admit()
    assert gate.admit("b", POLL, retry=False, now=3.0) == Admit()


def test_breaker_rejects_a_threshold_outside_zero_to_one() -> None:
    """The threshold is a share of calls: (0, 1]."""
    for bad in (0.0, 1.5, math.nan):
        with pytest.raises(ValueError, match="threshold"):
            FailureRateBreaker(threshold=bad)


@pytest.mark.parametrize("tokens", [0.9999999999999716, 0.9999999999999998])
def test_retry_budget_a_rounding_error_short_of_a_token_has_one(tokens: float) -> None:
    """A balance a float rounding error short of one token admits (it used to answer a hold
    until now, forever, and the simulation spun)."""
    budget = RetryBudget(tokens=tokens)
    assert budget.hold(5.0) is None
    assert budget.hold(5.0) is None


def test_retry_budget_holds_always_end_in_the_future() -> None:
    """Fourteen retries at t = 0 on a slow floor: every hold ends strictly after now."""
    budget = RetryBudget(floor_per_second=3.0)
    now = 0.0
    for _ in range(14):
        held = budget.hold(now)
        if held is not None:
            assert held.until is not None and held.until > now
            now = held.until
        budget.spend(True, now)


def test_default_gate_is_inert_on_a_healthy_account() -> None:
    """Before any signal, the default gate admits every request at once, like OpenGate."""
    gate = FleetGate()
    for n in range(1000):
        gate.register(n, 0.0)
        assert gate.admit(n, CREATE, retry=False, now=0.0) == Admit()
        gate.observe(n, CREATE, None, sent_at=0.0, now=0.05)
        assert gate.admit(n, POLL, retry=True, now=0.1) == Admit()
    assert gate.wakeups() == []


# -- StartupWindow -------------------------------------------------------------------------


def test_startup_window_holds_a_burst_until_the_first_reply() -> None:
    """Before the account has answered, 32 requests go and the 33rd waits (until 2 s after
    the first, or a reply); the first reply opens the window for good and wakes everyone."""
    gate = FleetGate(rate=None)
    for n in range(40):
        gate.register(n, 0.0)
    decisions = [gate.admit(n, CREATE, retry=False, now=0.0) for n in range(40)]
    assert decisions[:32] == [Admit()] * 32
    assert all(d == Hold(2.0, "waiting for the account's first reply") for d in decisions[32:])
    gate.observe(0, CREATE, None, sent_at=0.0, now=0.05)
    assert gate.wakeups() == list(range(40))
    assert all(gate.admit(n, CREATE, retry=False, now=0.06) == Admit() for n in range(32, 40))


def test_startup_window_opens_by_itself_after_its_seconds() -> None:
    """If no reply comes (the first requests hang), the window opens `seconds` after the
    first request, exactly then."""
    window = StartupWindow(requests=1, seconds=2.0)
    assert window.hold(5.0) is None
    window.spend(5.0)
    assert window.hold(6.99) == Hold(7.0, "waiting for the account's first reply")
    assert window.hold(7.0) is None and window.opened


def test_startup_window_says_nothing_when_nobody_waited() -> None:
    """The first reply of a quiet start-up (fewer than `requests` sent) wakes nobody."""
    window = StartupWindow()
    window.spend(0.0)
    assert not window.observe()
    assert window.opened and not window.observe()


# -- found in review: liveness of permits and probes ---------------------------------------

NO_SLOT = failure(2)


def learned(jobs: str) -> AdaptiveConcurrency:
    """`filled(jobs)` after the service refused a task: the limit is the tasks of `jobs`."""
    slots = filled(jobs)
    slots.observe("refused", failure(2), sent_at=0.0, now=0.0)
    assert slots.limit == len(jobs)
    return slots


def test_concurrency_probes_once_at_a_time_beyond_a_learned_limit_while_jobs_wait() -> None:
    """While jobs wait, one createTask at a time goes beyond the limit; the first waiting
    job sends it, the last keeps the time; a refused probe teaches the limit nothing and
    doubles the wait before the next; an accepted one lets the next go at once."""
    slots = learned("ab")
    assert slots.acquire("c", 1.0) is None  # first and last waiting: the probe is due
    assert slots.probing == "c" and "c" in slots.holders
    assert slots.acquire("d", 1.0) == Hold(None, "waiting for a task slot")  # one at a time
    slots.observe("c", failure(2), sent_at=1.0, now=1.1)
    slots.release("c", 1.1)
    assert slots.limit == 2 and slots.probing is None  # refused beyond the limit: no news
    assert slots.acquire("d", 1.2) == Hold(1.6, "waiting for a task slot")  # 0.25 s doubled
    assert slots.acquire("e", 1.3) == Hold(1.6, "waiting for a task slot")  # e keeps time now
    assert slots.acquire("e", 1.6) == Hold(None, "waiting for a task slot")
    assert slots.probing == "d" and list(slots.queue) == ["e"]  # the first took the permit
    assert slots.acquire("d", 1.6) is None
    slots.observe("d", None, sent_at=1.6, now=1.7)
    assert "d" in slots.created and slots.probing is None
    assert slots.acquire("e", 1.7) is None  # accepted: the next probe may go at once
    assert slots.probing == "e"


def test_refused_probes_back_off_up_to_the_cap() -> None:
    slots = learned("a")
    gaps = []
    for n in range(5):
        job, now = f"p{n}", 10.0 * n
        assert slots.acquire(job, now) is None
        slots.observe(job, failure(2), sent_at=now, now=now)
        slots.release(job, now)
        gaps.append(slots.next_probe - now)
    assert gaps == [0.5, 1.0, 1.0, 1.0, 1.0]  # 0.25 doubled, then the 1-s cap


@pytest.mark.parametrize("slots", [filled("ab", limit=2.0), learned("ab")], ids=["given", "off"])
def test_no_probe_under_a_limit_given_and_never_refused_or_with_probes_off(
    slots: AdaptiveConcurrency,
) -> None:
    if slots.last_decrease > -math.inf:
        slots.probe_every = None
    for now in (1.0, 2.0, 3.0):
        assert slots.acquire("c", now) == Hold(None, "waiting for a task slot")
    assert slots.probing is None


def refused_third(registered: str, admitted: str, **parts: Any) -> FleetGate:
    """A gate of task slots alone (and `parts`) with the jobs `registered`, of which
    `admitted` were let send a createTask at 0: A's and B's were accepted, Y's refused
    NO_SLOT_AVAILABLE (the limit is learned)."""
    gate = FleetGate(startup=None, pause=None, breaker=None, circuit=None, rate=None, **parts)
    for job in registered:
        gate.register(job, 0.0)
    for job in admitted:
        assert gate.admit(job, CREATE, retry=False, now=0.0) == Admit()
    gate.observe("A", CREATE, None, sent_at=0.0, now=0.1)
    gate.observe("B", CREATE, None, sent_at=0.0, now=0.1)
    gate.observe("Y", CREATE, NO_SLOT, sent_at=0.0, now=0.2)
    return gate


def test_fleet_gate_wakes_the_first_waiting_job_for_a_probe_and_the_last_after_it() -> None:
    """The last job's timed hold takes the probe's permit for the first, which the gate
    wakes; the probe's reply wakes the last, to keep the time for the next."""
    gate = refused_third("ABYCD", "ABY")
    gate.release("Y", 0.2)
    assert gate.admit("C", CREATE, retry=False, now=0.3) == Admit()  # the first probe
    gate.observe("C", CREATE, NO_SLOT, sent_at=0.3, now=0.4)
    gate.release("C", 0.4)
    gate.wakeups()
    held = gate.admit("D", CREATE, retry=False, now=0.5)
    assert isinstance(held, Hold) and held.until == pytest.approx(0.9)
    gate.register("E", 0.6)
    assert isinstance(gate.admit("E", CREATE, retry=False, now=0.6), Hold)
    assert gate.admit("E", CREATE, retry=False, now=0.9) == Hold(None, "waiting for a task slot")
    assert gate.wakeups() == ["D"]  # E kept the time; D, first, takes the probe
    assert gate.admit("D", CREATE, retry=False, now=0.9) == Admit()
    gate.observe("D", CREATE, NO_SLOT, sent_at=0.9, now=1.0)
    assert "E" in gate.wakeups()


def test_a_probe_permit_given_up_unsent_passes_the_timekeeping_on() -> None:
    """The job a probe's permit was taken for ends without sending (it failed, was
    cancelled): the last waiting job is woken, so the probes go on."""
    slots = learned("ab")
    assert slots.acquire("c", 1.0) is None
    assert slots.acquire("d", 1.0) == Hold(None, "waiting for a task slot")
    assert slots.release("c", 2.0) == ["d"]
    assert slots.acquire("d", 2.0) is None and slots.probing == "d"


def test_a_create_in_flight_keeps_its_permit_and_counts_once_accepted() -> None:
    """A NO_SLOT that sets the limit does not take back the permit of a job whose createTask
    is in flight (the service may have made its task): the limit counts it, its acceptance
    is counted, and a freed slot wakes the job really waiting for one. (Without probes,
    which would send W beyond the limit: see the probe tests.)"""
    gate = refused_third("ABXYW", "ABXY", concurrency=AdaptiveConcurrency(probe_every=None))
    slots = gate.concurrency
    assert slots is not None and slots.limit == 3 and "X" in slots.holders
    gate.observe("X", CREATE, None, sent_at=0.0, now=0.3)
    assert list(slots.created) == ["A", "B", "X"] and "X" not in slots.queue
    assert isinstance(gate.admit("W", CREATE, retry=False, now=0.4), Hold)
    gate.wakeups()
    gate.release("A", 5.0)
    assert "W" in gate.wakeups()


def test_a_probe_that_meets_noise_gives_its_slot_up() -> None:
    """After an unhinted 21 the probe's reply is a gateway 504: the probe slot is freed and
    every job woken, so the others do not wait out the probe's own backoff."""
    gate = FleetGate(rng=EdgeRandom(high=True), rate=None, startup=None)
    for job in "pq":
        gate.register(job, 0.0)
    gate.observe("x", CREATE, failure(21), sent_at=0.0, now=0.0)
    assert gate.admit("p", CREATE, retry=False, now=2.0) == Admit()
    assert isinstance(gate.admit("q", POLL, retry=False, now=2.0), Hold)
    gate.wakeups()
    gate.observe("p", CREATE, GATEWAY, sent_at=2.0, now=2.1)
    assert gate.wakeups() == ["p", "q"]
    assert gate.admit("q", POLL, retry=False, now=2.2) == Admit()  # q is the probe now


def test_circuit_probe_is_taken_only_by_a_job_that_sends_and_freed_on_release() -> None:
    """A cooled circuit's probe slot goes to a job admitted by every part (not one held for
    a task slot), and a probe that finishes without a reply hands the slot on."""
    gate = FleetGate(
        circuit=CircuitBreaker(cooldown=5.0),
        concurrency=AdaptiveConcurrency(limit=1.0),
        startup=None,
        rate=None,
    )
    for job in "HPQ":
        gate.register(job, 0.0)
    assert gate.admit("H", CREATE, retry=False, now=0.0) == Admit()  # holds the one slot
    gate.observe("x", CREATE, failure(3), sent_at=0.0, now=0.0)
    assert isinstance(gate.admit("P", CREATE, retry=False, now=10.0), Hold)  # no slot for it
    assert gate.circuit is not None and gate.circuit.probe is None
    gate.release("H", 11.0)
    assert gate.admit("P", CREATE, retry=False, now=11.0) == Admit()
    assert gate.circuit.probe == "P"
    gate.release("P", 12.0)
    assert gate.circuit.probe is None and "Q" in gate.wakeups()
    assert gate.admit("Q", CREATE, retry=False, now=12.0) == Admit()


def test_startup_window_never_fails_a_job_with_a_short_deadline() -> None:
    """A burst of 40 jobs with 1.5-s deadlines: those beyond the window wait for the first
    reply (0.05 s later) instead of failing at once because the window's 2-s bound passes
    their deadline; every one is solved, as with no gate."""
    scenario = Scenario(
        accounts=(AccountSpec(key="k"),),
        latency=0.05,
        default_task=TaskTypeSpec(solve_seconds=0.5, solve_spread=0, min_solve_seconds=0.1),
    )
    simulation = Simulation(
        SimulatedAPI(scenario, seed=1),
        key="k",
        gate=FleetGate(rng=random.Random(0)),
        poll_schedule=FixedInterval(interval=0.2),
    )
    for _ in range(40):
        simulation.submit({"type": "t"}, at=0.0, timeout=1.5)
    assert simulation.run().states() == {"ready": 40}


# -- task durations ------------------------------------------------------------------------


def test_task_durations_know_nothing_until_min_samples_then_give_the_quantile() -> None:
    durations = TaskDurations(quantile=0.9, min_samples=10)
    for job in range(9):
        durations.start(job, 0.0)
        durations.finish(job, float(job + 1))
    assert durations.estimate() is None  # nine samples: not enough
    durations.start(9, 0.0)
    durations.finish(9, 10.0)
    assert durations.estimate() == 10.0  # the 0.9 quantile of 1..10 s


def test_task_durations_count_only_jobs_whose_task_was_accepted() -> None:
    durations = TaskDurations(min_samples=1)
    durations.finish("never-created", 50.0)
    assert durations.estimate() is None
    durations.start("created", 10.0)
    durations.start("created", 12.0)  # a second acceptance (a resubmit) keeps the first
    durations.finish("created", 18.0)
    assert durations.estimate() == 8.0
    assert durations.started == {}


def test_task_durations_remember_the_last_memory_tasks_and_follow_a_change() -> None:
    """Memory is bounded, and once the tasks change the estimate follows within a refresh
    (memory / 16 new durations)."""
    durations = TaskDurations(quantile=0.5, memory=32, min_samples=4)
    for job in range(32):
        durations.start(job, 0.0)
        durations.finish(job, 5.0)
    assert durations.estimate() == 5.0
    for job in range(32, 64):
        durations.start(job, 0.0)
        durations.finish(job, 30.0)
    assert len(durations.recent) == 32
    assert durations.estimate() == 30.0


@pytest.mark.parametrize("quantile", [-0.1, 1.5, math.nan])
def test_task_durations_refuse_a_quantile_outside_zero_to_one(quantile: float) -> None:
    with pytest.raises(ValueError, match="quantile"):
        TaskDurations(quantile=quantile)


def test_fleet_gate_times_tasks_from_acceptance_to_release_and_says_so_once_slots_are_scarce() -> (
    None
):
    """The estimate is offered only once the service said NO_SLOT_AVAILABLE (slots bounded):
    on an account with room, a job's chances are no business of the gate's."""
    gate = FleetGate(durations=TaskDurations(min_samples=2, quantile=1.0))
    assert isinstance(gate, TimingGate)
    for job, (accepted, ended) in enumerate([(1.0, 9.0), (2.0, 14.0)]):
        gate.register(job, 0.0)
        gate.observe(job, CREATE, None, sent_at=accepted - 0.1, now=accepted)
        gate.release(job, ended)
    assert gate.expected_task_seconds() is None  # known, but slots are not scarce
    gate.register("refused", 15.0)
    gate.observe("refused", CREATE, failure(2), sent_at=15.0, now=15.1)
    assert gate.concurrency is not None and gate.concurrency.limit is not None
    assert gate.expected_task_seconds() == 12.0
    assert FleetGate(durations=None).expected_task_seconds() is None


def test_a_task_left_running_keeps_its_slot_until_it_is_expected_done() -> None:
    """A job that gives up while its task still solves leaves that task filling a slot: it
    holds a permit until then, a job waiting is held until then (not forever), and a
    refusal meanwhile counts it in what filled the service."""
    slots = filled(["a", "b"], limit=2.0)
    slots.linger("a", 10.0)
    slots.release("a", 1.0)
    held = slots.acquire("c", 2.0)
    assert held == Hold(10.0, "waiting for a task slot")
    assert slots.acquire("c", 10.0) is None  # expected done: its permit is free
    refused = filled(["a", "b"], limit=2.0)
    refused.linger("a", 10.0)
    refused.release("a", 1.0)
    refused.observe("d", failure(2), sent_at=2.0, now=2.1)
    # The decrease (2 x 0.9), not a clamp to the one task the gate would otherwise count.
    assert refused.limit == pytest.approx(1.8)


def test_linger_ignores_jobs_without_a_task() -> None:
    slots = AdaptiveConcurrency(limit=1.0)
    assert slots.acquire("waiting") is None  # a permit, no task yet
    slots.linger("waiting", 50.0)
    slots.release("waiting", 1.0)
    assert slots.acquire("next", 1.0) is None


def test_fleet_gate_keeps_a_slot_for_a_task_its_job_left_running() -> None:
    gate = FleetGate(startup=None, durations=TaskDurations(min_samples=1, quantile=1.0))
    gate.register("done", 0.0)
    gate.observe("done", CREATE, None, sent_at=0.0, now=0.1)
    gate.release("done", 8.1)  # an 8-s task: the estimate
    gate.register("gave-up", 10.0)
    gate.observe("gave-up", CREATE, None, sent_at=10.0, now=10.1)
    gate.task_left_running("gave-up", 12.0)
    gate.release("gave-up", 12.0)
    assert gate.concurrency is not None
    assert gate.concurrency.lingering == {"gave-up": pytest.approx(18.1)}


def test_on_a_starved_account_jobs_giving_up_do_not_teach_the_gate_fewer_slots() -> None:
    """Outcome: 5 slots, 10 tasks a second, a 30-s timeout: many jobs give up with their
    task still solving. Their tasks still fill slots; counted, the learned limit stays at
    the account's 5 (uncounted, refusals taught it 1 or 2)."""
    gate = FleetGate(rng=random.Random(3))
    api = SimulatedAPI(
        Scenario(
            accounts=(AccountSpec(key="k" * 12, slots=5),),
            default_task=TaskTypeSpec(solve_seconds=8.0, solve_spread=3.0),
            latency=0.05,
        ),
        seed=3,
        keep_log=False,
    )
    simulation = Simulation(api, key="k" * 12, timeout=30.0, gate=gate)
    for index in range(300):
        simulation.submit({"type": "ImageToTextTask", "body": "aGk="}, at=index / 10)
    simulation.run()
    assert gate.concurrency is not None and gate.concurrency.limit is not None
    assert gate.concurrency.limit >= 5


# -- the fast paths of `FleetGate`, pinned to the parts' own methods -----------------------


class _PauseState(PauseState):
    """A `PauseState` that `FleetGate` does not recognise as the built-in one: it asks its
    methods instead of reading its fields inline."""


def _pause_states() -> list[PauseState]:
    return [
        PauseState(until=until, probing=probing, probe=probe, strikes=strikes)
        for until in (-math.inf, 0.0, 1.0, 2.0, math.inf)
        for probing in (False, True)
        for probe in (None, "a", "b")
        for strikes in (0, 1)
    ]


@pytest.mark.parametrize("now", [-1.0, 0.0, 0.5, 1.0, 3.0])
def test_the_inlined_pause_checks_answer_what_the_methods_answer(now: float) -> None:
    """`FleetGate.admit` and `observe` read a built-in `PauseState`'s fields instead of
    calling `active`, `_unprobed` and `_settled` (their inlined copies); each copy is the
    same test, and the helpers mean what their names say: `claim` leaves an unprobed pause
    as it is, `succeed` a settled one (and returns False)."""
    for state in _pause_states():
        assert state.active(now) == (now < state.until or state.probing)  # admit's copy
        assert _unprobed(state) == (not state.probing)  # admit's copy: `account.probing`
        assert _settled(state) == (  # observe's copy
            not (state.strikes or state.probing or state.probe is not None)
        )
        for job in ("a", "c"):
            claimed = attrs.evolve(state)
            claimed.claim(job, now)
            if _unprobed(state):
                assert claimed == state
        succeeded = attrs.evolve(state)
        if _settled(state):
            assert succeeded.succeed() is False and succeeded == state
        assert not _unprobed(_PauseState(probing=False)) and not _settled(_PauseState())


def _asks_every_part() -> FleetGate:
    """The default gate with every part a subclass of the built-in: `FleetGate`'s fast
    paths (`type(part) is ...`) never apply, so it calls every part's methods."""

    class Pause(SharedPause):
        pass

    class Breaker(FailureRateBreaker):
        pass

    class Circuit(CircuitBreaker):
        pass

    class Startup(StartupWindow):
        pass

    class Rate(AdaptiveRate):
        pass

    return FleetGate(
        pause=Pause(account=_PauseState(), quota=_PauseState()),
        breaker=Breaker(),
        circuit=Circuit(),
        startup=Startup(),
        rate=Rate(),
        rng=random.Random(5),
    )


_SCENARIOS = {
    "rate limited, outage, noise": Scenario(
        accounts=(AccountSpec(key="k" * 12, rate_limit=8),),
        outages=(Outage(start=4.0, end=9.0, hint=False),),
        faults=FaultRates(http_5xx=0.2, timeout_after=0.05, http_429=0.05),
        default_task=TaskTypeSpec(solve_seconds=4.0, solve_spread=2.0),
    ),
    "slots and quotas": Scenario(
        accounts=(AccountSpec(key="k" * 12, slots=6, plan_quota=25),),
        default_task=TaskTypeSpec(solve_seconds=6.0, solve_spread=3.0, unsolvable_rate=0.1),
    ),
    "an outage with a hint": Scenario(
        accounts=(AccountSpec(key="k" * 12),),
        outages=(Outage(start=1.0, end=6.0, hint=True),),
        faults=FaultRates(http_5xx=0.1),
    ),
    "a failing endpoint": Scenario(
        accounts=(AccountSpec(key="k" * 12, rate_limit=8),),
        outages=(Outage(start=2.0, end=9.0, hint=False),),
        faults=FaultRates(http_5xx=0.4),
    ),
}


@pytest.mark.parametrize("name", sorted(_SCENARIOS))
def test_the_fleet_gates_fast_paths_decide_what_its_parts_decide(name: str) -> None:
    """Pins every inlined copy in `FleetGate.standing`, `admit`, `observe` and `release`
    (the checks that skip a built-in part whose method would do nothing): the same fleet
    under the default gate and under one whose parts are subclasses, which asks each part
    every time, makes the same moves at the same times, request for request."""
    histories = []
    for gate in (FleetGate(rng=random.Random(5)), _asks_every_part()):
        api = SimulatedAPI(_SCENARIOS[name], seed=4, keep_log=False)
        policy = DocumentedPolicy(rng=random.Random(6))
        simulation = Simulation(api, key="k" * 12, policy=policy, timeout=40.0, gate=gate)
        for index in range(120):
            simulation.submit({"type": "ImageToTextTask", "body": "aGk="}, at=index / 20)
        report = simulation.run()
        histories.append([(job.requests_sent, job.history) for job in report.jobs])
    assert histories[0] == histories[1]
    assert len({move.trigger for _, history in histories[0] for move in history}) >= 4


@pytest.mark.parametrize("seed", range(12))
def test_the_fleet_gates_fast_paths_answer_what_its_parts_answer(seed: int) -> None:
    """The same pin, request by request: random questions and replies (account pauses with
    and without a hint, quota pauses, noise, a permanent error, successes) put to the
    default gate and to one that asks every part get the same answers and wake-ups."""
    rng = random.Random(seed)
    replies = [
        None,
        None,
        None,
        failure(21),
        failure(16, hint=0.5),
        failure(16),
        failure(18),
        failure(None, bucket=Bucket.TRANSIENT_HTTP, status=503),
        failure(None, bucket=Bucket.TRANSIENT_HTTP, status=503, endpoint=POLL),
        failure(1) if seed % 3 == 0 else None,
    ]
    gates = (FleetGate(rng=random.Random(seed)), _asks_every_part())
    gates[1].rng = random.Random(seed)
    jobs = "abcdefgh"
    for job in jobs:
        for gate in gates:
            gate.register(job, 0.0)
    now = 0.0
    for _ in range(400):
        now += rng.choice((0.0, 0.05, 0.3, 1.5))
        job, endpoint = rng.choice(jobs), rng.choice((CREATE, POLL))
        op = rng.randrange(5)
        reply = rng.choice(replies)
        answers = []
        for gate in gates:
            if op == 0:
                answers.append(gate.standing(job, endpoint, now))
            elif op in (1, 2):
                answers.append(gate.admit(job, endpoint, retry=op == 2, now=now))
            elif op == 3:
                gate.observe(job, endpoint, reply, sent_at=now - 0.05, now=now)
            else:
                gate.release(job, now)
                gate.register(job, now)
            answers.append(gate.wakeups())
        assert answers[: len(answers) // 2] == answers[len(answers) // 2 :]
