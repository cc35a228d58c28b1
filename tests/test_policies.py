"""Retry policies and poll schedules: the documented strategy, the backoff built-ins, their
validators, and the laws every built-in keeps (never retry permanent failures, never wait past
the deadline, never wait less than the server's hint, bounded attempts, seeded determinism)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from strategies import (
    BACKOFF_CLASSES,
    EdgeRandom,
    PolicyRecipe,
    contexts,
    failures,
    policy_recipes,
)

from captchaflow.policies import (
    CODE_TABLE,
    MIN_POLL_DELAY,
    NEVER_RETRIED,
    AdaptivePoll,
    BackoffPolicy,
    Bucket,
    DecorrelatedJitter,
    DocumentedPolicy,
    EqualJitter,
    Exponential,
    Failure,
    FixedDelay,
    FixedInterval,
    FullJitter,
    GiveUp,
    NoRetry,
    PollSchedule,
    Resubmit,
    RetryAfter,
    RetryContext,
    RetryPolicy,
    bucket_of_code,
)
from captchaflow.transports import Endpoint, ErrorCode

CREATE, RESULT = Endpoint.CREATE_TASK, Endpoint.GET_TASK_RESULT
RETRIED_BUCKETS = [
    Bucket.RETRYABLE,
    Bucket.TRANSIENT_HTTP,
    Bucket.MALFORMED,
    Bucket.NOT_SENT,
    Bucket.AMBIGUOUS,
]
SEEDS = range(40)


def ctx(
    attempt: int = 1,
    resubmits: int = 0,
    now: float = 1000.0,
    time_left: float = 1e9,
    previous_delay: float | None = None,
) -> RetryContext:
    """A context `time_left` seconds before the deadline."""
    return RetryContext(
        attempt=attempt,
        resubmits=resubmits,
        now=now,
        deadline=now + time_left,
        previous_delay=previous_delay,
    )


def fail(
    bucket: Bucket,
    endpoint: Endpoint = RESULT,
    retry_after: float | None = None,
    code: int | None = None,
) -> Failure:
    """A failure in `bucket`."""
    return Failure(bucket, bucket.name, "", endpoint, code=code, retry_after=retry_after)


def api_fail(code: int, endpoint: Endpoint = RESULT) -> Failure:
    """The failure classification makes of documented `code`."""
    return Failure(bucket_of_code(code), ErrorCode(code).name, "", endpoint, code=code)


def delay_of(decision: object) -> float:
    """The delay of a RetryAfter (anything else fails the test)."""
    assert isinstance(decision, RetryAfter), decision
    return decision.delay


# --- DocumentedPolicy --------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5])
def test_documented_backoff_window(attempt: int) -> None:
    """Without a hint, attempt n waits in [min(2**(n-1), 30), that + 1)."""
    low = min(2 ** (attempt - 1), 30)
    for seed in SEEDS:
        policy = DocumentedPolicy(rng=random.Random(seed))
        assert low <= delay_of(policy.decide(fail(Bucket.RETRYABLE), ctx(attempt))) < low + 1


@given(seed=st.integers(), attempt=st.integers(min_value=1, max_value=5))
def test_documented_backoff_window_any_seed(seed: int, attempt: int) -> None:
    """Invariant: for any seed, attempt n waits in [min(2**(n-1), 30), that + 1)."""
    low = min(2 ** (attempt - 1), 30)
    policy = DocumentedPolicy(rng=random.Random(seed))
    assert low <= delay_of(policy.decide(fail(Bucket.RETRYABLE), ctx(attempt))) < low + 1


@pytest.mark.parametrize("attempt", [6, 7, 10, 65, 1000])
def test_documented_backoff_is_capped_at_30(attempt: int) -> None:
    """Late attempts wait in [30, 31): the exponential is capped at 30 s, without overflow."""
    policy = DocumentedPolicy(max_attempts=10**6, rng=random.Random(attempt))
    assert 30 <= delay_of(policy.decide(fail(Bucket.RETRYABLE), ctx(attempt))) < 31


def test_documented_jitter_actually_varies() -> None:
    """The jitter is random: different seeds give different delays for the same attempt."""
    delays = {
        delay_of(DocumentedPolicy(rng=random.Random(s)).decide(fail(Bucket.RETRYABLE), ctx()))
        for s in SEEDS
    }
    assert len(delays) > 1


@pytest.mark.parametrize("hint", [0.0, 0.25, 7.5, 45.0, 3600.0])
def test_documented_waits_exactly_the_hint(hint: float) -> None:
    """With a server hint, the wait is exactly the hint (above or below the backoff)."""
    policy = DocumentedPolicy(rng=random.Random(1))
    for attempt in (1, 3, 5):
        decision = policy.decide(fail(Bucket.RETRYABLE, retry_after=hint), ctx(attempt))
        assert delay_of(decision) == hint


def test_documented_gives_up_at_attempt_6() -> None:
    """Attempt 5 is retried; attempt 6 (the default max_attempts) gives up, hint or not."""
    policy = DocumentedPolicy(rng=random.Random(0))
    assert policy.max_attempts == 6
    for hint in (None, 1.0):
        failure = fail(Bucket.RETRYABLE, retry_after=hint)
        assert isinstance(policy.decide(failure, ctx(attempt=5)), RetryAfter)
        assert isinstance(policy.decide(failure, ctx(attempt=6)), GiveUp)
        assert isinstance(policy.decide(failure, ctx(attempt=7)), GiveUp)


@pytest.mark.parametrize(
    "failure",
    [
        api_fail(1),
        api_fail(3),
        api_fail(14),
        api_fail(15),
        api_fail(10),
        fail(Bucket.UNKNOWN_CODE, code=99),
        fail(Bucket.UNEXPECTED_HTTP),
        api_fail(1, CREATE),
        fail(Bucket.UNEXPECTED_HTTP, CREATE, retry_after=1.0),
    ],
    ids=lambda f: f"{f.name}-{f.endpoint.name}",
)
def test_documented_never_retries_hopeless_failures(failure: Failure) -> None:
    """Permanent (1, 3, 14, 15), bad request (10), unknown code, unexpected HTTP: GiveUp at once."""
    assert isinstance(DocumentedPolicy().decide(failure, ctx(attempt=1)), GiveUp)


def test_code_table_buckets_are_the_documented_ones() -> None:
    """Codes 1, 3, 14, 15 are permanent, 10 bad request, 12 unsolvable, the rest retryable."""
    by_bucket: dict[Bucket, set[int]] = {}
    for code, info in CODE_TABLE.items():
        by_bucket.setdefault(info.bucket, set()).add(code)
    assert by_bucket == {
        Bucket.PERMANENT: {1, 3, 14, 15},
        Bucket.BAD_REQUEST: {10},
        Bucket.UNSOLVABLE: {12},
        Bucket.RETRYABLE: {2, 16, 17, 18, 21},
    }
    assert bucket_of_code(99) is Bucket.UNKNOWN_CODE


def test_documented_resubmits_unsolvable_three_times() -> None:
    """Unsolvable (12) is resubmitted while resubmits < 3, then given up."""
    policy = DocumentedPolicy()
    for resubmits in (0, 1, 2):
        decision = policy.decide(api_fail(12), ctx(resubmits=resubmits))
        assert isinstance(decision, Resubmit)
        assert decision.delay == 0.0
    for resubmits in (3, 4):
        assert isinstance(policy.decide(api_fail(12), ctx(resubmits=resubmits)), GiveUp)


def test_documented_resubmit_delay_is_configurable() -> None:
    """`resubmit_delay` is the wait before a resubmit."""
    decision = DocumentedPolicy(resubmit_delay=4.0).decide(api_fail(12), ctx())
    assert isinstance(decision, Resubmit)
    assert decision.delay == 4.0


@pytest.mark.parametrize("endpoint", list(Endpoint))
@pytest.mark.parametrize("bucket", RETRIED_BUCKETS)
def test_documented_retries_transient_failures(bucket: Bucket, endpoint: Endpoint) -> None:
    """Retryable codes, transient HTTP, malformed, not-sent and ambiguous failures are retried."""
    assert isinstance(DocumentedPolicy().decide(fail(bucket, endpoint), ctx()), RetryAfter)
    hinted = DocumentedPolicy().decide(fail(bucket, endpoint, retry_after=3.0), ctx())
    assert delay_of(hinted) == 3.0


def test_ambiguous_create_not_resent_when_disabled() -> None:
    """With resend_ambiguous_create=False an ambiguous createTask gives up; getTaskResult not."""
    policy = DocumentedPolicy(resend_ambiguous_create=False)
    assert isinstance(policy.decide(fail(Bucket.AMBIGUOUS, CREATE), ctx()), GiveUp)
    assert isinstance(policy.decide(fail(Bucket.AMBIGUOUS, RESULT), ctx()), RetryAfter)
    assert isinstance(policy.decide(fail(Bucket.NOT_SENT, CREATE), ctx()), RetryAfter)
    default = DocumentedPolicy()
    assert isinstance(default.decide(fail(Bucket.AMBIGUOUS, CREATE), ctx()), RetryAfter)


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_unusable_2xx_create_not_resent_when_disabled(status: int) -> None:
    """With resend_ambiguous_create=False a createTask answered 2xx with an unusable reply
    (no taskId, HTML, compressed) gives up, as it may have been billed; by default it is
    retried, and so is the same reply to getTaskResult."""
    billed = Failure(Bucket.MALFORMED, "MISSING_TASK_ID", "", CREATE, http_status=status)
    assert billed.may_have_billed
    policy = DocumentedPolicy(resend_ambiguous_create=False)
    decision = policy.decide(billed, ctx())
    assert isinstance(decision, GiveUp) and "billed" in decision.reason
    assert isinstance(DocumentedPolicy().decide(billed, ctx()), RetryAfter)
    poll = attrs.evolve(billed, endpoint=RESULT)
    assert isinstance(policy.decide(poll, ctx()), RetryAfter)


@pytest.mark.parametrize(
    "failure",
    [
        Failure(Bucket.MALFORMED, "BAD_REPLY", "", CREATE),  # no reply status was read
        Failure(Bucket.MALFORMED, "NON_JSON_REPLY", "", CREATE, http_status=302),
        Failure(Bucket.TRANSIENT_HTTP, "HTTP_502", "", CREATE, http_status=502),
        Failure(Bucket.RETRYABLE, "RATE_LIMITED", "", CREATE, code=16, http_status=200),
        Failure(Bucket.NOT_SENT, "NOT_SENT", "", CREATE),
    ],
    ids=["bad-reply-no-status", "malformed-302", "http-502", "code-16-on-200", "not-sent"],
)
def test_opt_out_still_retries_what_cannot_have_billed(failure: Failure) -> None:
    """The opt-out gives up only on what may have billed: an API error, a non-2xx status or
    an unsent request is retried as usual."""
    assert not failure.may_have_billed
    policy = DocumentedPolicy(resend_ambiguous_create=False)
    assert isinstance(policy.decide(failure, ctx()), RetryAfter)


@pytest.mark.parametrize(
    ("failure", "context"),
    [
        (fail(Bucket.RETRYABLE, retry_after=86400.0), ctx(time_left=120.0)),
        (fail(Bucket.RETRYABLE, retry_after=math.inf), ctx(time_left=1e9)),
        (fail(Bucket.RETRYABLE, retry_after=10.0), ctx(time_left=9.999)),
        (fail(Bucket.TRANSIENT_HTTP), ctx(attempt=5, time_left=15.9)),
        (fail(Bucket.NOT_SENT), ctx(attempt=1, time_left=0.5)),
        (fail(Bucket.MALFORMED), ctx(attempt=1, time_left=0.0)),
    ],
    ids=["day-hint", "inf-hint", "hint-just-past", "backoff-16s", "backoff-1s", "no-time"],
)
def test_documented_gives_up_rather_than_wait_past_deadline(
    failure: Failure, context: RetryContext
) -> None:
    """A hint or backoff that would end after the deadline gives up at once."""
    for seed in SEEDS:
        assert isinstance(
            DocumentedPolicy(rng=random.Random(seed)).decide(failure, context), GiveUp
        )


def test_documented_may_wait_until_exactly_the_deadline() -> None:
    """A wait ending exactly at the deadline is allowed."""
    decision = DocumentedPolicy().decide(
        fail(Bucket.RETRYABLE, retry_after=10.0), ctx(time_left=10)
    )
    assert delay_of(decision) == 10.0


def test_documented_resubmit_past_deadline_gives_up() -> None:
    """A resubmit whose delay would end after the deadline gives up."""
    policy = DocumentedPolicy(resubmit_delay=60.0)
    assert isinstance(policy.decide(api_fail(12), ctx(time_left=59.0)), GiveUp)
    assert isinstance(policy.decide(api_fail(12), ctx(time_left=60.0)), Resubmit)


def test_documented_same_seed_same_decisions() -> None:
    """Two policies seeded with random.Random(7) make the same decisions in the same order."""
    one, two = DocumentedPolicy(rng=random.Random(7)), DocumentedPolicy(rng=random.Random(7))
    steps = [(fail(b), ctx(attempt=a)) for a in range(1, 7) for b in RETRIED_BUCKETS]
    assert [one.decide(*s) for s in steps] == [two.decide(*s) for s in steps]
    other = DocumentedPolicy(rng=random.Random(8))
    assert [other.decide(*s) for s in steps] != [one.decide(*s) for s in steps]


# --- the other built-ins -------------------------------------------------------------------


def test_fixed_delay_waits_the_same_every_time() -> None:
    """FixedDelay waits `delay` (default 2 s) before every retry."""
    for attempt in range(1, 6):
        assert delay_of(FixedDelay().decide(fail(Bucket.RETRYABLE), ctx(attempt))) == 2.0
        assert delay_of(FixedDelay(delay=0.5).decide(fail(Bucket.MALFORMED), ctx(attempt))) == 0.5


@pytest.mark.parametrize(
    ("base", "cap", "expected"),
    [(1.0, 30.0, [1, 2, 4, 8, 16, 30, 30, 30]), (0.5, 4.0, [0.5, 1, 2, 4, 4, 4, 4, 4])],
)
def test_exponential_doubles_up_to_cap(base: float, cap: float, expected: list[float]) -> None:
    """Exponential waits min(cap, base * 2**(n-1)), with no jitter."""
    policy = Exponential(base=base, cap=cap, max_attempts=100)
    delays = [delay_of(policy.decide(fail(Bucket.RETRYABLE), ctx(n))) for n in range(1, 9)]
    assert delays == expected


def test_exponential_huge_attempt_is_capped_without_overflow() -> None:
    """A very late attempt waits the cap (no OverflowError from 2**n)."""
    policy = Exponential(max_attempts=10**9)
    assert delay_of(policy.decide(fail(Bucket.RETRYABLE), ctx(attempt=10**8))) == 30.0


@given(
    seed=st.integers(), attempt=st.integers(1, 12), base=st.floats(0.01, 10), cap=st.floats(0, 60)
)
def test_full_jitter_bounds(seed: int, attempt: int, base: float, cap: float) -> None:
    """Invariant: full jitter waits in [0, min(cap, base * 2**(n-1))]."""
    policy = FullJitter(base=base, cap=cap, max_attempts=100, rng=random.Random(seed))
    delay = delay_of(policy.decide(fail(Bucket.RETRYABLE), ctx(attempt)))
    assert 0 <= delay <= min(cap, base * 2 ** (attempt - 1))


@given(
    seed=st.integers(), attempt=st.integers(1, 12), base=st.floats(0.01, 10), cap=st.floats(0, 60)
)
def test_equal_jitter_bounds(seed: int, attempt: int, base: float, cap: float) -> None:
    """Invariant: equal jitter waits in [t/2, t], t = min(cap, base * 2**(n-1))."""
    policy = EqualJitter(base=base, cap=cap, max_attempts=100, rng=random.Random(seed))
    delay = delay_of(policy.decide(fail(Bucket.RETRYABLE), ctx(attempt)))
    t = min(cap, base * 2 ** (attempt - 1))
    assert t / 2 <= delay <= t


@given(
    seed=st.integers(),
    base=st.floats(0.01, 10),
    cap=st.floats(10, 100),
    previous=st.none() | st.floats(0, 1000),
)
def test_decorrelated_jitter_bounds(
    seed: int, base: float, cap: float, previous: float | None
) -> None:
    """Invariant: decorrelated jitter waits in [base, min(cap, max(base, 3 * previous))]."""
    policy = DecorrelatedJitter(base=base, cap=cap, rng=random.Random(seed))
    context = ctx(previous_delay=previous)
    delay = delay_of(policy.decide(fail(Bucket.RETRYABLE), context))
    upper = min(cap, max(base, 3 * (base if previous is None else previous)))
    assert base <= delay <= upper


def test_jittered_policies_vary_with_the_seed() -> None:
    """Full, equal and decorrelated jitter draw different delays under different seeds."""
    for cls in (FullJitter, EqualJitter, DecorrelatedJitter):
        delays = {
            delay_of(cls(rng=random.Random(s)).decide(fail(Bucket.RETRYABLE), ctx(3)))
            for s in SEEDS
        }
        assert len(delays) > 1, cls


@pytest.mark.parametrize("cls", BACKOFF_CLASSES)
def test_larger_server_hint_wins(cls: type[BackoffPolicy]) -> None:
    """A server hint larger than any backoff is waited exactly."""
    for attempt in (1, 4):
        policy = cls(rng=random.Random(attempt))
        failure = fail(Bucket.RETRYABLE, retry_after=100.0)
        context = ctx(attempt, previous_delay=20.0)
        assert delay_of(policy.decide(failure, context)) == 100.0


@pytest.mark.parametrize("cls", BACKOFF_CLASSES)
def test_hint_past_deadline_gives_up(cls: type[BackoffPolicy]) -> None:
    """A hint that would end after the deadline gives up, for every built-in."""
    failure = fail(Bucket.RETRYABLE, retry_after=86400.0)
    assert isinstance(cls().decide(failure, ctx(time_left=3600.0)), GiveUp)


@pytest.mark.parametrize(("time_left", "shown"), [(0.5, "(0.5s left)"), (-3.0, "(0s left)")])
def test_deadline_give_up_says_the_time_left(time_left: float, shown: str) -> None:
    """The give-up reason states the time left before the deadline, never a negative one."""
    failure = fail(Bucket.RETRYABLE, retry_after=10.0)
    decision = FixedDelay().decide(failure, ctx(time_left=time_left))
    assert isinstance(decision, GiveUp)
    assert decision.reason == f"waiting 10s would pass the deadline {shown}"


def test_policies_with_equal_settings_are_equal_whatever_their_random_state() -> None:
    """Policies compare by their settings: the random generator is not a setting."""
    assert DocumentedPolicy(rng=random.Random(1)) == DocumentedPolicy(rng=random.Random(2))
    assert DocumentedPolicy() != DocumentedPolicy(max_attempts=2)


def test_no_retry_is_an_immutable_value() -> None:
    """`NoRetry` has no settings: every instance is equal, hashable and frozen."""
    assert NoRetry() == NoRetry()
    assert hash(NoRetry()) == hash(NoRetry())
    assert attrs.has(NoRetry)
    assert attrs.fields(NoRetry) == ()


@pytest.mark.parametrize(
    "policy",
    [
        FixedDelay(delay=5.0),
        Exponential(base=8.0),
        EqualJitter(base=8.0),
        DecorrelatedJitter(base=8.0),
        DocumentedPolicy(),
    ],
    ids=lambda p: type(p).__name__,
)
def test_backoff_past_deadline_gives_up(policy: BackoffPolicy) -> None:
    """A backoff whose lower bound is past the deadline gives up, for every built-in."""
    assert isinstance(policy.decide(fail(Bucket.RETRYABLE), ctx(time_left=0.9)), GiveUp)


@pytest.mark.parametrize("bucket", list(Bucket))
@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_no_retry_always_gives_up(bucket: Bucket, endpoint: Endpoint) -> None:
    """NoRetry gives up on every failure, hint or not."""
    for hint in (None, 1.0):
        assert isinstance(NoRetry().decide(fail(bucket, endpoint, hint), ctx()), GiveUp)


def test_built_ins_are_retry_policies() -> None:
    """Every built-in satisfies the RetryPolicy protocol; NEVER_RETRIED has the hopeless ones."""
    for policy in [cls() for cls in BACKOFF_CLASSES] + [NoRetry()]:
        assert isinstance(policy, RetryPolicy)
    assert {Bucket.PERMANENT, Bucket.BAD_REQUEST, Bucket.UNKNOWN_CODE} <= NEVER_RETRIED
    assert Bucket.UNEXPECTED_HTTP in NEVER_RETRIED


# --- validators ----------------------------------------------------------------------------

BAD_DELAYS = [-1.0, -1e-9, math.nan, -math.inf]


@pytest.mark.parametrize("value", BAD_DELAYS)
@pytest.mark.parametrize(
    "build",
    [
        lambda v: FixedDelay(delay=v),
        lambda v: Exponential(base=v),
        lambda v: Exponential(cap=v),
        lambda v: FullJitter(base=v),
        lambda v: EqualJitter(cap=v),
        lambda v: DecorrelatedJitter(base=v),
        lambda v: DocumentedPolicy(cap=v),
        lambda v: DocumentedPolicy(jitter=v),
        lambda v: DocumentedPolicy(resubmit_delay=v),
        lambda v: RetryAfter(v),
        lambda v: Resubmit(v),
        lambda v: Failure(Bucket.RETRYABLE, "X", "", RESULT, retry_after=v),
    ],
    ids=[
        "FixedDelay.delay",
        "Exponential.base",
        "Exponential.cap",
        "FullJitter.base",
        "EqualJitter.cap",
        "DecorrelatedJitter.base",
        "DocumentedPolicy.cap",
        "DocumentedPolicy.jitter",
        "resubmit_delay",
        "RetryAfter.delay",
        "Resubmit.delay",
        "Failure.retry_after",
    ],
)
def test_negative_or_nan_delays_rejected(build: Callable[[float], object], value: float) -> None:
    """A negative or NaN delay is rejected with ValueError."""
    with pytest.raises(ValueError, match=r">= 0"):
        build(value)


@pytest.mark.parametrize("cls", BACKOFF_CLASSES)
@pytest.mark.parametrize("max_attempts", [0, -1])
def test_max_attempts_below_one_rejected(cls: type[BackoffPolicy], max_attempts: int) -> None:
    """max_attempts < 1 is rejected with ValueError; max_attempts=1 is fine."""
    with pytest.raises(ValueError, match="max_attempts"):
        cls(max_attempts=max_attempts)
    assert cls(max_attempts=1).max_attempts == 1


def test_negative_max_resubmits_rejected() -> None:
    """max_resubmits < 0 is rejected; 0 means unsolvable tasks are never resubmitted."""
    with pytest.raises(ValueError, match="max_resubmits"):
        DocumentedPolicy(max_resubmits=-1)
    assert isinstance(DocumentedPolicy(max_resubmits=0).decide(api_fail(12), ctx()), GiveUp)


# --- FixedInterval -------------------------------------------------------------------------


def test_fixed_interval_default_is_two_seconds() -> None:
    """The default schedule waits 2 s before every poll, the first one included."""
    schedule = FixedInterval()
    assert isinstance(schedule, PollSchedule)
    assert [schedule.delay_before_poll(n) for n in range(1, 6)] == [2.0] * 5


def test_fixed_interval_first_override() -> None:
    """`first` replaces the wait before the first poll only."""
    schedule = FixedInterval(interval=3.0, first=0.5)
    assert [schedule.delay_before_poll(n) for n in range(1, 5)] == [0.5, 3.0, 3.0, 3.0]
    assert FixedInterval(interval=3.0).delay_before_poll(1) == 3.0


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
@pytest.mark.parametrize("field", ["interval", "first"])
def test_fixed_interval_rejects_invalid(field: str, value: float) -> None:
    """Zero, negative, infinite and NaN intervals are rejected with ValueError."""
    with pytest.raises(ValueError, match=field):
        FixedInterval(**{field: value})


# --- AdaptivePoll (the learning behaviour over many jobs is in test_fleet.py) --------------


def learned(schedule: AdaptivePoll, *seconds: float) -> float:
    """The first wait `schedule` gives after observing `seconds`, in order."""
    for value in seconds:
        schedule.observe_solved(value)
    return schedule.delay_before_poll(1)


def test_adaptive_poll_defaults_are_the_documented_ones() -> None:
    """The README's defaults: a 2 s interval, the 10th percentile of the last 256 times, once
    10 tasks have been solved."""
    schedule = AdaptivePoll()
    assert (schedule.interval, schedule.quantile) == (2.0, 0.1)
    assert (schedule.min_samples, schedule.memory) == (10, 256)


def test_adaptive_poll_waits_interval_until_min_samples() -> None:
    """Fewer than `min_samples` solved tasks teach nothing; the `min_samples`-th does, and
    every later one updates the first wait."""
    schedule = AdaptivePoll(interval=1.0, quantile=1.0, min_samples=3)
    assert learned(schedule, 10.0, 10.0) == 1.0
    assert learned(schedule, 10.0) == 10.0
    assert learned(schedule, 20.0) == 20.0
    assert schedule.delay_before_poll(2) == 1.0


def test_adaptive_poll_quantile_one_is_the_slowest_sample() -> None:
    """`quantile=1` (allowed) waits the longest remembered time, whatever the sample size."""
    for size in range(1, 9):
        schedule = AdaptivePoll(interval=0.5, quantile=1.0, min_samples=1)
        assert learned(schedule, *(float(n) for n in range(size, 0, -1))) == float(size)


def test_adaptive_poll_remembers_exactly_memory_samples() -> None:
    """Only the last `memory` times count: the oldest is forgotten, no earlier."""
    schedule = AdaptivePoll(interval=0.5, quantile=0.0, min_samples=1, memory=2)
    assert learned(schedule, 5.0, 6.0) == 5.0
    assert learned(schedule, 7.0) == 6.0


def test_adaptive_poll_learns_sub_second_times_but_not_below_interval() -> None:
    """Times under a second are learned like any other; the first wait is never shorter
    than `interval`; negative, infinite and NaN times are ignored."""
    schedule = AdaptivePoll(interval=0.1, quantile=0.0, min_samples=1)
    assert learned(schedule, 0.5) == 0.5
    assert learned(schedule, -1.0, math.inf, math.nan) == 0.5
    assert learned(schedule, 0.0) == 0.1


@pytest.mark.parametrize("quantile", [-0.1, 1.01, math.nan])
def test_adaptive_poll_rejects_quantile_outside_zero_one(quantile: float) -> None:
    """A quantile outside [0, 1] (or NaN) is a ValueError naming it."""
    with pytest.raises(ValueError, match="quantile"):
        AdaptivePoll(quantile=quantile)


@pytest.mark.parametrize("cls", [FixedInterval, AdaptivePoll])
def test_poll_schedules_take_keywords_only(cls: type[Any]) -> None:
    """Schedules are configured by keyword (`interval=`), never by position, so that adding
    a field can never shift what a positional argument means."""
    with pytest.raises(TypeError):
        cls(1.0)


@pytest.mark.parametrize("field", ["first", "samples"])
def test_adaptive_poll_learned_state_is_not_an_argument(field: str) -> None:
    """What it learned (the samples, the first wait) is state, not configuration: it cannot
    be passed in."""
    with pytest.raises(TypeError):
        AdaptivePoll(**{field: 1.0})


@pytest.mark.parametrize("field", ["min_samples", "memory"])
def test_adaptive_poll_counts_are_at_least_one(field: str) -> None:
    """`min_samples` and `memory` of 0 are a ValueError naming the field; 1 is allowed (and
    learns from the single latest time)."""
    with pytest.raises(ValueError, match=field):
        AdaptivePoll(**{field: 0})
    schedule = AdaptivePoll(interval=0.5, quantile=0.5, min_samples=1, memory=1)
    assert learned(schedule, 9.0, 3.0) == 3.0


# --- AdaptivePoll's shaped schedule --------------------------------------------------------

ANY_TIMES = st.lists(
    st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=0.0, max_value=1e-6)
    | st.floats(min_value=0.0, max_value=120.0)
    | st.sampled_from([0.0, -1.0, 1e308, 5.0]),
    max_size=160,
)
"""Anything a caller could report as a time to solution, hostile values included."""

SMALL_SHAPE = {"min_samples": 3, "shape_samples": 8, "memory": 32}
"""Settings that shape after a handful of times, so generated lists reach every phase."""


def delay_floors_broken(schedule: Any, seconds: list[float], polls: int = 40) -> str | None:
    """Feed `seconds` one at a time; nothing may raise, and after each the waits before
    polls 1..`polls` must be finite floats of at least MIN_POLL_DELAY, the first at least
    `interval` and every later shaped one at least `min_interval`. Say what broke, or
    None."""
    gap = schedule.min_interval if schedule.min_interval is not None else schedule.interval / 4
    for value in seconds:
        try:
            schedule.observe_solved(value)
            delays = [schedule.delay_before_poll(poll) for poll in range(1, polls + 1)]
        except Exception as exc:
            return f"raised {exc!r}"
        if not all(isinstance(d, float) and math.isfinite(d) for d in delays):
            return f"a wait that is not a finite float: {delays}"
        if min(delays) < MIN_POLL_DELAY or delays[0] < schedule.interval:
            return f"a wait below the floor: {delays}"
        if any(d < gap for d in delays[1:]):
            return f"a later wait below min_interval: {delays}"
    return None


@settings(max_examples=60, deadline=None)
@given(ANY_TIMES)
def test_adaptive_poll_delays_are_finite_and_above_the_floors_for_any_times(
    seconds: list[float],
) -> None:
    """Invariant: whatever times it is told (NaN, infinities, negatives, zeros, huge, tiny),
    every wait is a finite float, at least MIN_POLL_DELAY, the first at least `interval`,
    the later ones at least `min_interval`."""
    assert delay_floors_broken(AdaptivePoll(interval=0.5, **SMALL_SHAPE), seconds) is None
    fine_gaps = AdaptivePoll(interval=2.0, min_interval=0.01, **SMALL_SHAPE)
    assert delay_floors_broken(fine_gaps, seconds) is None


class ForgetsTheGap(AdaptivePoll):
    """Broken: shapes without keeping `min_interval` between polls."""

    def _shape(self) -> None:
        super()._shape()
        object.__setattr__(self, "_delays", tuple(d / 100 for d in self.shaped_delays))


class NoUpperLimit(AdaptivePoll):
    """Broken: learns any finite time, however absurd (1e308 s), as if it were real."""

    def observe_solved(self, seconds: float) -> None:
        if seconds > 86_400 and math.isfinite(seconds):
            self._samples.append((seconds, 2.0))
            return
        super().observe_solved(seconds)


@pytest.mark.parametrize("broken", [ForgetsTheGap, NoUpperLimit], ids=["no-gap", "no-limit"])
def test_delay_floor_check_catches_a_broken_schedule(broken: type[AdaptivePoll]) -> None:
    """The property above has teeth: its strategy finds times that make a deliberately
    broken schedule answer a wait below a floor, or not finite (and the sound one passes
    those same times)."""
    counterexample = find(
        ANY_TIMES,
        lambda seconds: (
            delay_floors_broken(broken(interval=0.5, **SMALL_SHAPE), seconds) is not None
        ),
        settings=settings(max_examples=500, database=None, phases=[Phase.generate]),
    )
    assert delay_floors_broken(AdaptivePoll(interval=0.5, **SMALL_SHAPE), counterexample) is None


@settings(max_examples=30, deadline=None)
@given(ANY_TIMES)
def test_adaptive_poll_learning_is_deterministic(seconds: list[float]) -> None:
    """Invariant: two schedules told the same times in the same order answer the same waits
    (no randomness, no clock, no dependence on anything else)."""
    one, two = AdaptivePoll(**SMALL_SHAPE), AdaptivePoll(**SMALL_SHAPE)
    for value in seconds:
        one.observe_solved(value)
        two.observe_solved(value)
        assert one.shaped_delays == two.shaped_delays
        assert [one.delay_before_poll(n) for n in range(1, 30)] == [
            two.delay_before_poll(n) for n in range(1, 30)
        ]


def lognormal(median: float, count: int, seed: int) -> list[float]:
    """`count` times to solution, lognormal with `median` and sigma 0.5."""
    rng = random.Random(seed)
    return [median * math.exp(rng.gauss(0.0, 0.5)) for _ in range(count)]


def poll_times(schedule: AdaptivePoll, polls: int = 60) -> list[float]:
    """When polls 1..`polls` come, in seconds after acceptance."""
    times, now = [], 0.0
    for poll in range(1, polls + 1):
        now += schedule.delay_before_poll(poll)
        times.append(now)
    return times


def test_adaptive_poll_shapes_once_shape_samples_are_remembered() -> None:
    """Below `shape_samples` only the first wait is learned (later polls every
    `interval`); from it on every poll is shaped, the first no earlier than `interval` nor
    the learned `quantile`."""
    schedule = AdaptivePoll()
    times = lognormal(20.0, 64, seed=1)
    for value in times[:63]:
        schedule.observe_solved(value)
    assert schedule.shaped_delays == ()
    assert schedule.delay_before_poll(2) == schedule.delay_before_poll(9) == 2.0
    schedule.observe_solved(times[63])
    shaped = schedule.shaped_delays
    assert shaped and shaped[0] >= max(2.0, sorted(times)[6] * 0.8)
    assert [schedule.delay_before_poll(n) for n in range(1, len(shaped) + 1)] == list(shaped)
    assert schedule.delay_before_poll(len(shaped) + 1) == 2.0


def test_adaptive_poll_skips_the_dead_time_and_polls_sparsely_where_few_finish() -> None:
    """Learned from tasks of 4 s or of 40 s (nothing in between), it polls neither before the
    fast ones nor between the two groups as often as within them, and a task of 40 s is
    found with fewer than half the polls every 2 s would make."""
    schedule = AdaptivePoll()
    rng = random.Random(3)
    for _ in range(256):
        median = 4.0 if rng.random() < 0.5 else 40.0
        schedule.observe_solved(median * math.exp(rng.gauss(0.0, 0.15)))
    times = poll_times(schedule)
    assert times[0] >= 2.0
    in_gap = [t for t in times if 8.0 < t < 28.0]
    assert len(in_gap) <= 3
    assert 0 < sum(t < 40.0 for t in times) + 1 < 20 / 2


def test_adaptive_poll_follows_a_shift_within_memory() -> None:
    """Shared by an account whose tasks go from 5 s to 25 s, it moves its first poll past
    the old tasks' times once `memory` new ones are remembered, and back after the reverse
    change: old times are forgotten."""
    schedule = AdaptivePoll()
    for value in lognormal(5.0, 400, seed=4):
        schedule.observe_solved(value)
    fast_first = schedule.delay_before_poll(1)
    assert fast_first < 8.0
    for value in lognormal(25.0, 256, seed=5):
        schedule.observe_solved(value)
    assert schedule.delay_before_poll(1) > 12.0
    for value in lognormal(5.0, 256, seed=6):
        schedule.observe_solved(value)
    assert schedule.delay_before_poll(1) == pytest.approx(fast_first, rel=0.5)


def test_adaptive_poll_memory_and_plan_stay_bounded() -> None:
    """After 2,000 times (a tenth of them hostile), at most `memory` are remembered and the
    shaped plan is a bounded tuple; each wait is a lookup (the same object every call)."""
    schedule = AdaptivePoll(memory=100)
    rng = random.Random(9)
    for k in range(2000):
        schedule.observe_solved(math.nan if k % 10 == 0 else rng.lognormvariate(2.0, 1.0))
    assert len(schedule._samples) <= 100
    assert 0 < len(schedule.shaped_delays) <= 2000
    assert schedule.delay_before_poll(3) is schedule.delay_before_poll(3)


@pytest.mark.parametrize("field", ["latency", "min_interval"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan, "1"])
def test_adaptive_poll_rejects_invalid_latency_and_min_interval(field: str, value: Any) -> None:
    """`latency` and `min_interval` are None (the defaults: `interval / 2`, `interval / 4`)
    or finite numbers of seconds of at least MIN_POLL_DELAY."""
    with pytest.raises((ValueError, TypeError), match=field):
        AdaptivePoll(**{field: value})


def test_adaptive_poll_latency_target_trades_latency_for_polls() -> None:
    """A looser latency target never plans more polls: its poll times are sparser."""
    times = lognormal(8.0, 256, seed=2)
    tight, loose = AdaptivePoll(), AdaptivePoll(latency=3.0)
    for value in times:
        tight.observe_solved(value)
        loose.observe_solved(value)
    horizon = 30.0
    assert sum(t <= horizon for t in poll_times(loose)) < sum(
        t <= horizon for t in poll_times(tight)
    )


# --- properties over every built-in --------------------------------------------------------

SEED = st.integers(min_value=0, max_value=2**32)


@given(policy_recipes, SEED, failures, contexts())
def test_decide_returns_a_valid_decision(
    recipe: PolicyRecipe, seed: int, failure: Failure, context: RetryContext
) -> None:
    """Invariant: decide never raises and returns a decision with a finite delay >= 0."""
    decision = recipe.build(seed).decide(failure, context)
    assert isinstance(decision, RetryAfter | Resubmit | GiveUp)
    if not isinstance(decision, GiveUp):
        assert 0 <= decision.delay < math.inf


@given(policy_recipes, SEED, failures, st.sampled_from(sorted(NEVER_RETRIED)), contexts())
def test_never_retries_hopeless_buckets(
    recipe: PolicyRecipe, seed: int, failure: Failure, bucket: Bucket, context: RetryContext
) -> None:
    """Invariant: permanent, bad-request, unknown-code and unexpected-HTTP failures give up."""
    failure = attrs.evolve(failure, bucket=bucket)
    assert isinstance(recipe.build(seed).decide(failure, context), GiveUp)


def check_within_deadline(policy: RetryPolicy, failure: Failure, context: RetryContext) -> None:
    """The deadline property: a RetryAfter or Resubmit ends no later than the deadline."""
    decision = policy.decide(failure, context)
    if isinstance(decision, RetryAfter | Resubmit):
        assert context.now + decision.delay <= context.deadline


def check_hint_honoured(policy: RetryPolicy, failure: Failure, context: RetryContext) -> None:
    """The hint property: a RetryAfter never waits less than the server's retry hint."""
    decision = policy.decide(failure, context)
    if isinstance(decision, RetryAfter) and failure.retry_after is not None:
        assert decision.delay >= failure.retry_after


@given(policy_recipes, SEED, failures, contexts())
def test_never_waits_past_deadline(
    recipe: PolicyRecipe, seed: int, failure: Failure, context: RetryContext
) -> None:
    """Invariant: now + delay <= deadline for every RetryAfter and Resubmit."""
    check_within_deadline(recipe.build(seed), failure, context)


@given(policy_recipes, SEED, failures, contexts())
def test_never_waits_less_than_the_hint(
    recipe: PolicyRecipe, seed: int, failure: Failure, context: RetryContext
) -> None:
    """Invariant: a RetryAfter's delay is at least the failure's retry_after."""
    check_hint_honoured(recipe.build(seed), failure, context)


@given(policy_recipes, SEED, failures, contexts(max_attempt=30))
def test_attempts_are_bounded(
    recipe: PolicyRecipe, seed: int, failure: Failure, context: RetryContext
) -> None:
    """Invariant: from attempt max_attempts on, only GiveUp (or, within max_resubmits, Resubmit)."""
    decision = recipe.build(seed).decide(failure, context)
    if context.attempt >= recipe.max_attempts:
        assert not isinstance(decision, RetryAfter)
        if failure.bucket is not Bucket.UNSOLVABLE:
            assert isinstance(decision, GiveUp)
    if context.resubmits >= recipe.max_resubmits:
        assert not isinstance(decision, Resubmit)


@given(
    policy_recipes,
    SEED,
    st.lists(st.tuples(failures, contexts()), min_size=1, max_size=4),
)
def test_seeded_policies_are_deterministic(
    recipe: PolicyRecipe, seed: int, steps: list[tuple[Failure, RetryContext]]
) -> None:
    """Invariant: two copies seeded alike make the same decisions for the same failures."""
    one, two = recipe.build(seed), recipe.build(seed)
    assert [one.decide(*step) for step in steps] == [two.decide(*step) for step in steps]


# --- mutant: the hint property catches a policy that ignores retry_after -------------------


class _IgnoresHint(Exponential):
    """A mutant: drops the server's retry hint and always uses its own backoff."""

    def decide(self, failure: Failure, context: RetryContext) -> Any:
        return super().decide(attrs.evolve(failure, retry_after=None), context)


def test_hint_property_catches_policy_that_ignores_hints() -> None:
    """The hint property finds a failure and context on which the hint-ignoring mutant fails."""

    def mutant_breaks(case: tuple[Failure, RetryContext]) -> bool:
        try:
            check_hint_honoured(_IgnoresHint(), *case)
        except AssertionError:
            return True
        return False

    failure, context = find(
        st.tuples(failures, contexts()),
        mutant_breaks,
        settings=settings(max_examples=200, database=None, phases=[Phase.generate]),
    )
    check_hint_honoured(Exponential(), failure, context)  # the real policy passes
    assert failure.retry_after is not None


def test_deadline_property_catches_policy_that_ignores_deadline() -> None:
    """The deadline property rejects a mutant that retries past the deadline."""

    class _IgnoresDeadline(FixedDelay):
        def decide(self, failure: Failure, context: RetryContext) -> Any:
            return RetryAfter(failure.retry_after or self.delay)

    failure = fail(Bucket.RETRYABLE, retry_after=86400.0)
    with pytest.raises(AssertionError):
        check_within_deadline(_IgnoresDeadline(), failure, ctx(time_left=10.0))
    check_within_deadline(FixedDelay(), failure, ctx(time_left=10.0))


# -- boundaries pinned for mutants that survived benchmarks/mutation.py --------------------


def _ctx(attempt: int = 1, resubmits: int = 0, previous_delay: float | None = None) -> RetryContext:
    """A context far from its deadline."""
    return RetryContext(
        attempt=attempt,
        resubmits=resubmits,
        now=100.0,
        deadline=1e9,
        previous_delay=previous_delay,
    )


def _retryable() -> Failure:
    return Failure(Bucket.RETRYABLE, "NO_SLOT_AVAILABLE", "", RESULT, code=2)


def test_time_left_is_deadline_minus_now() -> None:
    """`RetryContext.time_left` is the deadline minus now, negative once it has passed."""
    assert RetryContext(attempt=1, resubmits=0, now=10.0, deadline=25.0).time_left == 15.0
    assert RetryContext(attempt=1, resubmits=0, now=30.0, deadline=25.0).time_left == -5.0


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        (RetryContext, (1, 0, 0.0, 10.0)),
        (FixedDelay, (5.0,)),
        (Exponential, (1.0,)),
        (FullJitter, (1.0,)),
        (EqualJitter, (1.0,)),
        (DecorrelatedJitter, (1.0,)),
        (DocumentedPolicy, (30.0,)),
        (FixedInterval, (2.0,)),
    ],
)
def test_settings_are_keyword_only(cls: type, args: tuple[Any, ...]) -> None:
    """Contexts, policies and poll schedules take their settings by keyword only."""
    with pytest.raises(TypeError):
        cls(*args)


def test_builtin_defaults_are_the_documented_ones() -> None:
    """Defaults: base 1 s and cap 30 s for the exponential family, 2 s fixed, 0 s resubmit."""
    for cls in (Exponential, FullJitter, EqualJitter, DecorrelatedJitter):
        policy = cls()
        assert (policy.base, policy.cap) == (1.0, 30.0), cls
    assert (DocumentedPolicy().cap, DocumentedPolicy().jitter) == (30.0, 1.0)
    assert FixedDelay().delay == 2.0
    assert Resubmit().delay == 0.0


def test_no_retry_is_a_frozen_value() -> None:
    """`NoRetry` instances are equal to each other and immutable (an attrs frozen class)."""
    assert NoRetry() == NoRetry()
    with pytest.raises(AttributeError):
        NoRetry().x = 1  # type: ignore[attr-defined]


def test_rng_is_not_in_the_repr() -> None:
    """A policy's repr shows its settings, not its random generator."""
    assert "rng" not in repr(DocumentedPolicy(rng=random.Random(1)))


@pytest.mark.parametrize(
    ("resubmits", "reason"), [(0, "resubmit 1"), (1, "resubmit 2"), (2, "resubmit 3")]
)
def test_resubmit_reason_counts_the_new_task(resubmits: int, reason: str) -> None:
    """An unsolvable failure's Resubmit says which resubmission it is: 1, 2, 3."""
    unsolvable = Failure(Bucket.UNSOLVABLE, "ERROR_CAPTCHA_UNSOLVABLE", "", RESULT, code=12)
    decision = DocumentedPolicy().decide(unsolvable, _ctx(resubmits=resubmits))
    assert isinstance(decision, Resubmit)
    assert decision.reason == reason


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_retry_reason_names_the_next_attempt(attempt: int) -> None:
    """A RetryAfter says why and which attempt comes next: "backoff, attempt 2/6"."""
    decision = FixedDelay().decide(_retryable(), _ctx(attempt=attempt))
    assert isinstance(decision, RetryAfter)
    assert decision.reason == f"backoff, attempt {attempt + 1}/6"
    hinted = attrs.evolve(_retryable(), retry_after=3.0)
    decision = FixedDelay().decide(hinted, _ctx(attempt=attempt))
    assert isinstance(decision, RetryAfter)
    assert decision.reason == f"server retry hint, attempt {attempt + 1}/6"


@pytest.mark.parametrize(("value", "jitter", "extra"), [(0.5, 2.0, 1.0), (0.25, 4.0, 1.0)])
def test_documented_jitter_scales_the_draw(value: float, jitter: float, extra: float) -> None:
    """DocumentedPolicy adds `random() * jitter`: a draw of 0.5 with jitter 2 adds 1 s."""
    policy = DocumentedPolicy(jitter=jitter, rng=EdgeRandom(value=value))
    assert policy.backoff(_ctx(attempt=3)) == 4.0 + extra


@pytest.mark.parametrize(("high", "expected"), [(True, 8.0), (False, 0.0)])
def test_full_jitter_draws_between_zero_and_the_exponential(high: bool, expected: float) -> None:
    """FullJitter draws in [0, base * 2 ** (attempt - 1)]: attempt 4 spans [0, 8]."""
    assert FullJitter(rng=EdgeRandom(high=high)).backoff(_ctx(attempt=4)) == expected


@pytest.mark.parametrize(("high", "expected"), [(True, 8.0), (False, 4.0)])
def test_equal_jitter_draws_in_the_upper_half(high: bool, expected: float) -> None:
    """EqualJitter draws in [t / 2, t] with t the capped exponential: attempt 4 spans [4, 8]."""
    assert EqualJitter(rng=EdgeRandom(high=high)).backoff(_ctx(attempt=4)) == expected


@pytest.mark.parametrize(
    ("previous", "high", "expected"),
    [(2.0, True, 6.0), (2.0, False, 1.0), (None, True, 3.0), (20.0, True, 30.0), (0.1, True, 1.0)],
)
def test_decorrelated_jitter_grows_to_three_times_the_previous_delay(
    previous: float | None, high: bool, expected: float
) -> None:
    """DecorrelatedJitter draws in [base, max(base, 3 * previous)], capped at 30 s."""
    policy = DecorrelatedJitter(rng=EdgeRandom(high=high))
    assert policy.backoff(_ctx(previous_delay=previous)) == expected


def test_exponent_is_clamped_at_64() -> None:
    """With no cap, a huge attempt waits base * 2 ** 64: the exponent stops growing at 64."""
    policy = Exponential(cap=float("inf"), max_attempts=10**6)
    assert policy.backoff(_ctx(attempt=65)) == 2.0**64
    assert policy.backoff(_ctx(attempt=10**5)) == 2.0**64
    assert policy.backoff(_ctx(attempt=64)) == 2.0**63
