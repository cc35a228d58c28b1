"""The policy conformance kit: its strategies generate what the engine feeds a policy, it passes
every built-in, and each deliberately broken policy is caught by the law
it breaks."""

from __future__ import annotations

import itertools
import math
import random
import subprocess
import sys
from typing import Any

import attrs
import hypothesis
import pytest
from hypothesis import given
from strategies import BACKOFF_CLASSES

from captchaflow.policies import (
    CODE_TABLE,
    BackoffPolicy,
    Bucket,
    Decision,
    DocumentedPolicy,
    Failure,
    GiveUp,
    NoRetry,
    Resubmit,
    RetryContext,
    bucket_of_code,
)
from captchaflow.policies.conformance import (
    DEFAULT_SETTINGS,
    LAWS,
    History,
    PolicyFactory,
    PolicyLawViolation,
    check_gives_up_within_max_attempts,
    check_policy,
    contexts,
    failures,
    histories,
)
from captchaflow.transports import Endpoint

QUICK = hypothesis.settings(DEFAULT_SETTINGS, max_examples=30)
"""Ten times what it takes to catch every broken policy below (derandomized: the same
examples run every time)."""
SMOKE = hypothesis.settings(DEFAULT_SETTINGS, max_examples=15)
"""For policies that pass: the built-ins' laws are property-tested in test_policies.py."""


# --- the strategies ------------------------------------------------------------------------


@given(failures())
def test_failures_are_shaped_like_classified_ones(failure: Failure) -> None:
    """Invariant: an API-code failure's code belongs to its bucket; others carry no code."""
    if failure.code is not None:
        assert bucket_of_code(failure.code) is failure.bucket
    else:
        assert failure.bucket not in {info.bucket for info in CODE_TABLE.values()}
        assert failure.bucket is not Bucket.UNKNOWN_CODE
    assert failure.retry_after is None or failure.retry_after >= 0


@given(contexts())
def test_contexts_are_valid(context: RetryContext) -> None:
    """Invariant: attempt >= 1, resubmits >= 0, finite now, deadline >= now, delay >= 0."""
    assert context.attempt >= 1
    assert context.resubmits >= 0
    assert math.isfinite(context.now)
    assert context.deadline >= context.now
    assert context.previous_delay is None or context.previous_delay >= 0


@given(histories(identical=True))
def test_histories_are_one_request(history: History) -> None:
    """Invariant: attempts count 1, 2, ...; time only moves forward, never past the deadline,
    by at least the previous delay; identical histories repeat one failure."""
    assert [context.attempt for _, context in history] == list(range(1, len(history) + 1))
    assert history[0][1].previous_delay is None
    assert len({failure for failure, _ in history}) == 1
    deadline = history[0][1].deadline
    for (_, earlier), (_, later) in itertools.pairwise(history):
        assert later.deadline == deadline
        assert later.resubmits == earlier.resubmits
        assert later.previous_delay is not None
        assert earlier.now <= later.now <= deadline
        assert later.now >= min(earlier.now + later.previous_delay, deadline)


# --- the built-ins -------------------------------------------------------------------------


def _builder(cls: type[BackoffPolicy]) -> PolicyFactory:
    return lambda rng: cls(rng=rng)


@pytest.mark.parametrize("cls", BACKOFF_CLASSES, ids=lambda cls: cls.__name__)
def test_builtin_obeys_every_law(cls: type[BackoffPolicy]) -> None:
    """A built-in backoff policy, seeded through its `rng`, passes all seven laws, with the
    limits read from its own max_attempts and max_resubmits."""
    report = check_policy(_builder(cls), settings=QUICK)
    assert report.checked == tuple(LAWS)
    assert (report.max_attempts, report.max_resubmits) == (6, 3)


def test_law_subset_can_be_selected() -> None:
    """`laws=` runs only the named laws and reports the others as not selected."""
    others = [law for law in LAWS if law != "honours_retry_after"]
    report = check_policy(_builder(DocumentedPolicy), settings=SMOKE, laws=others)
    assert report.checked == tuple(others)
    assert report.skipped == {"honours_retry_after": "not selected"}


def test_no_retry_obeys_every_law() -> None:
    """NoRetry (which has no rng) passes all seven laws, given the limits it implies (one
    attempt, no resubmits); the report counts the examples each law ran."""
    report = check_policy(lambda rng: NoRetry(), max_attempts=1, max_resubmits=0, settings=SMOKE)
    assert report.checked == tuple(LAWS)
    assert report.skipped == {}
    # max_examples generated ones per law (twice for bounded_attempts: single decisions,
    # then whole requests), after the canonical cases (all laws but deterministic)
    assert report.examples["deterministic"] == SMOKE.max_examples
    assert report.examples["bounded_attempts"] > 2 * SMOKE.max_examples
    assert all(
        n > SMOKE.max_examples for law, n in report.examples.items() if law != "deterministic"
    )
    assert report.total_examples == sum(report.examples.values())


@attrs.define
class HintedResubmit:
    """A policy wrapper that makes a resubmit wait at least the server's hint (the built-ins
    already do; the broken policies below start from it, so each breaks one law only)."""

    inner: BackoffPolicy

    @property
    def max_attempts(self) -> int:
        return self.inner.max_attempts

    @property
    def max_resubmits(self) -> int:
        return self.inner.max_resubmits

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        decision = self.inner.decide(failure, context)
        if isinstance(decision, Resubmit) and failure.retry_after is not None:
            delay = max(decision.delay, failure.retry_after)
            if context.now + delay > context.deadline:
                return GiveUp("waiting for the hint would pass the deadline")
            return Resubmit(delay, decision.reason)
        return decision


def test_sound_base_of_the_broken_policies_obeys_every_law() -> None:
    """The wrapped documented policy the broken ones start from passes all seven laws."""
    report = check_policy(lambda rng: HintedResubmit(DocumentedPolicy(rng=rng)), settings=SMOKE)
    assert report.checked == tuple(LAWS)


# --- deliberately broken policies, each caught by the law it breaks ------------------------


def sound(rng: random.Random) -> HintedResubmit:
    """A conforming policy the broken ones below start from."""
    return HintedResubmit(DocumentedPolicy(rng=rng))


@attrs.define
class RetriesPermanent:
    """Broken: treats permanent and bad-request failures as retryable."""

    inner: HintedResubmit
    max_attempts: int = 6
    max_resubmits: int = 3

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        if failure.bucket in (Bucket.PERMANENT, Bucket.BAD_REQUEST):
            failure = attrs.evolve(failure, bucket=Bucket.RETRYABLE)
        return self.inner.decide(failure, context)


@attrs.define
class IgnoresHint(RetriesPermanent):
    """Broken: drops the server's retry hint and uses its own backoff."""

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        return self.inner.decide(attrs.evolve(failure, retry_after=None), context)


@attrs.define
class IgnoresDeadline(RetriesPermanent):
    """Broken: decides as if the job had no deadline."""

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        return self.inner.decide(failure, attrs.evolve(context, deadline=math.inf))


@attrs.define
class NeverStops(RetriesPermanent):
    """Broken: decides every failure as if it were the first attempt."""

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        return self.inner.decide(failure, attrs.evolve(context, attempt=1))


@attrs.define
class OneAttemptTooMany(RetriesPermanent):
    """Broken by one: still retries at attempt max_attempts (gives up only after it)."""

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        return self.inner.decide(failure, attrs.evolve(context, attempt=context.attempt - 1))


@attrs.define
class ResubmitsForever(RetriesPermanent):
    """Broken: forgets how many times the task was resubmitted."""

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        return self.inner.decide(failure, attrs.evolve(context, resubmits=0))


@attrs.define(kw_only=True)
class GlobalJitter(DocumentedPolicy):
    """Broken: draws its jitter from the global `random` module, not from `rng`."""

    def backoff(self, context: RetryContext) -> float:
        return min(2.0 ** (context.attempt - 1), self.cap) + random.random() * self.jitter


@attrs.define
class DividesByPreviousDelay(RetriesPermanent):
    """Broken: raises ZeroDivisionError when the previous delay was 0."""

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        if context.previous_delay is not None and 1 / context.previous_delay > 1e6:
            return GiveUp("unreachable")
        return self.inner.decide(failure, context)


@attrs.define
class AnswersNone(RetriesPermanent):
    """Broken: returns None (not a decision) for failures it does not know."""

    def decide(self, failure: Failure, context: RetryContext) -> Any:
        if failure.bucket is Bucket.UNKNOWN_CODE:
            return None
        return self.inner.decide(failure, context)


BROKEN: list[tuple[PolicyFactory, str]] = [
    (lambda rng: RetriesPermanent(sound(rng)), "never_retries_permanent"),
    (lambda rng: IgnoresHint(sound(rng)), "honours_retry_after"),
    (lambda rng: IgnoresDeadline(sound(rng)), "respects_deadline"),
    (lambda rng: NeverStops(sound(rng)), "bounded_attempts"),
    (lambda rng: OneAttemptTooMany(sound(rng)), "bounded_attempts"),
    (lambda rng: ResubmitsForever(sound(rng)), "bounded_resubmits"),
    (lambda rng: HintedResubmit(GlobalJitter(rng=rng)), "deterministic"),
    (lambda rng: DividesByPreviousDelay(sound(rng)), "total"),
    (lambda rng: AnswersNone(sound(rng)), "total"),
]
BROKEN_IDS = [
    "retries-permanent",
    "ignores-hint",
    "ignores-deadline",
    "never-stops",
    "one-attempt-too-many",
    "resubmits-forever",
    "global-random",
    "raises",
    "answers-none",
]


@pytest.mark.parametrize(("make_policy", "law"), BROKEN, ids=BROKEN_IDS)
def test_broken_policy_is_caught_by_its_law(make_policy: PolicyFactory, law: str) -> None:
    """A policy that breaks exactly one law fails the kit with a PolicyLawViolation (an
    AssertionError) naming that law and showing the counterexample."""
    with pytest.raises(PolicyLawViolation) as caught:
        check_policy(make_policy, settings=QUICK)
    violation = caught.value
    assert isinstance(violation, AssertionError)
    assert violation.law == law
    assert f"law {law!r}" in str(violation)
    assert "seed = " in str(violation)
    assert "failure" in violation.counterexample or "steps" in violation.counterexample


def test_raising_policy_keeps_the_cause() -> None:
    """When decide raises, the violation is chained to the policy's own exception."""
    with pytest.raises(PolicyLawViolation) as caught:
        check_policy(lambda rng: DividesByPreviousDelay(sound(rng)), settings=QUICK)
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_one_attempt_too_many_passes_when_the_limit_is_raised() -> None:
    """The bounded-attempts law checks against the limit given: one more attempt is fine."""
    report = check_policy(lambda rng: OneAttemptTooMany(sound(rng)), max_attempts=7, settings=SMOKE)
    assert report.max_attempts == 7


def test_history_walk_stops_at_max_attempts() -> None:
    """Walking one request of repeated 503s, the sound policy gives up at attempt 6, while
    the one that retries one attempt too many is caught at exactly attempt 6."""
    failure = Failure(Bucket.TRANSIENT_HTTP, "HTTP_503", "", Endpoint.GET_TASK_RESULT)
    start = RetryContext(attempt=1, resubmits=0, now=0.0, deadline=1e6)
    check_gives_up_within_max_attempts(sound(random.Random(1)), [(failure, start)], max_attempts=6)
    with pytest.raises(PolicyLawViolation, match="still retrying after 6 attempts") as caught:
        check_gives_up_within_max_attempts(
            OneAttemptTooMany(sound(random.Random(1))), [(failure, start)], max_attempts=6
        )
    walk = caught.value.counterexample["walk (attempt, now, decision)"]
    assert isinstance(walk, list)
    assert [attempt for attempt, _, _ in walk] == [1, 2, 3, 4, 5, 6]


# --- limits, options and packaging -----------------------------------------------------------


class Minimal:
    """A conforming policy with no max_attempts or max_resubmits attribute."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        return GiveUp("never retries")


def test_laws_without_a_limit_are_skipped_and_reported() -> None:
    """Without max_attempts/max_resubmits (argument or attribute), those laws are skipped."""
    report = check_policy(Minimal, settings=SMOKE)
    assert set(report.skipped) == {"bounded_attempts", "bounded_resubmits"}
    assert "no max_attempts given" in report.skipped["bounded_attempts"]
    assert set(report.checked) == set(LAWS) - set(report.skipped)
    assert (report.max_attempts, report.max_resubmits) == (None, None)


@pytest.mark.parametrize(
    "kwargs",
    [{"laws": ["no_such_law"]}, {"max_attempts": 0}, {"max_resubmits": -1}],
    ids=["unknown-law", "max-attempts-0", "max-resubmits-negative"],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, Any]) -> None:
    """Unknown law names and impossible limits raise ValueError before anything runs."""
    with pytest.raises(ValueError, match=r"laws|must be an int"):
        check_policy(Minimal, **kwargs)


def test_non_policy_is_rejected() -> None:
    """A factory that does not build a RetryPolicy raises TypeError."""
    with pytest.raises(TypeError, match="decide"):
        check_policy(lambda rng: object())  # type: ignore[arg-type,return-value]


def test_policies_package_does_not_need_hypothesis() -> None:
    """Importing captchaflow.policies neither imports the kit nor hypothesis."""
    code = (
        "import sys, captchaflow.policies\n"
        "assert 'hypothesis' not in sys.modules\n"
        "assert 'captchaflow.policies.conformance' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_settings_are_deterministic() -> None:
    """The default settings run the same examples every time, with no database or deadline."""
    assert DEFAULT_SETTINGS.derandomize
    assert DEFAULT_SETTINGS.database is None
    assert DEFAULT_SETTINGS.deadline is None
    assert DEFAULT_SETTINGS.max_examples == 200
