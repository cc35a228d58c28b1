"""The policy conformance kit: one call that checks a retry policy obeys the engine's laws.

Needs hypothesis, which captchaflow itself does not depend on: `pip install hypothesis` (or
`pip install 'captchaflow[dev]'`). For that reason this module is not re-exported by
`captchaflow.policies`; import it as `captchaflow.policies.conformance`.

Put one call in your own test suite::

    def test_my_policy_obeys_the_laws() -> None:
        check_policy(lambda rng: MyPolicy(rng=rng))

`check_policy` builds policies with `make_policy(random.Random(seed))`, feeds them canonical
cases (every documented code and every bucket, with and without a hint, near and far from the
deadline) and then generated failures and contexts, and raises `PolicyLawViolation` (an
`AssertionError`) naming the first law broken and a shrunk counterexample. The laws, in the
order they are checked:

1. `never_retries_permanent`: PERMANENT and BAD_REQUEST failures always get `GiveUp`.
2. `honours_retry_after`: a `RetryAfter` or `Resubmit` never waits less than
   `failure.retry_after`.
3. `respects_deadline`: a `RetryAfter` or `Resubmit` ends by the deadline:
   `now + delay <= deadline`.
4. `bounded_attempts`: from attempt `max_attempts` on, never `RetryAfter` (and `Resubmit` only
   for UNSOLVABLE); a request failing the same transient way gives up within `max_attempts`.
5. `bounded_resubmits`: once `resubmits >= max_resubmits`, never `Resubmit`.
6. `deterministic`: two policies built from equally seeded `random.Random`s decide alike.
7. `total`: `decide` never raises and returns `RetryAfter`, `Resubmit` or `GiveUp` with a finite
   delay >= 0.

Each law has a `check_*` function that checks a single example, for use in your own property
tests; the strategies `failures`, `contexts` and `histories` generate what the engine can feed
a policy. Law 4 counts attempts the way the engine does: `context.attempt` is how many times
the request has already failed, so answering `RetryAfter` at `attempt == max_attempts` would
send it a `max_attempts + 1`-th time.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, TypeAlias

import attrs
import hypothesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st

from captchaflow.transports import Endpoint, ErrorCode

from ._failure import CODE_TABLE, Bucket, Failure
from ._retry import Decision, GiveUp, Resubmit, RetryAfter, RetryContext, RetryPolicy

__all__ = [
    "DEFAULT_SETTINGS",
    "LAWS",
    "ConformanceReport",
    "History",
    "PolicyFactory",
    "PolicyLawViolation",
    "check_bounded_attempts",
    "check_bounded_resubmits",
    "check_deterministic",
    "check_gives_up_within_max_attempts",
    "check_honours_retry_after",
    "check_never_retries_permanent",
    "check_policy",
    "check_respects_deadline",
    "check_total",
    "contexts",
    "failures",
    "histories",
]

PolicyFactory: TypeAlias = Callable[[random.Random], RetryPolicy]
"""Builds a fresh policy whose randomness comes only from the `random.Random` it is given."""

History: TypeAlias = list[tuple[Failure, RetryContext]]
"""The failures of one request, in order, each with the context the engine would pass."""

LAWS: Final[Mapping[str, str]] = {
    "never_retries_permanent": "PERMANENT and BAD_REQUEST failures always get GiveUp",
    "honours_retry_after": "a RetryAfter or Resubmit never waits less than failure.retry_after",
    "respects_deadline": "a RetryAfter or Resubmit ends by the deadline: now + delay <= deadline",
    "bounded_attempts": (
        "from attempt max_attempts on, never RetryAfter (Resubmit only for UNSOLVABLE); "
        "repeated transient failures give up within max_attempts"
    ),
    "bounded_resubmits": "once resubmits >= max_resubmits, never Resubmit",
    "deterministic": "policies built from equally seeded random.Random decide alike",
    "total": "decide never raises and returns RetryAfter, Resubmit or GiveUp, delay finite >= 0",
}
"""Every law by name, in the order `check_policy` checks them, with its one-line statement."""

DEFAULT_SETTINGS: Final = hypothesis.settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)
"""The settings `check_policy` uses by default: 200 generated examples per law (after its
canonical cases), the same ones on every run (so a CI failure reproduces locally), no
example database and no time limit.
Change one value with `hypothesis.settings(DEFAULT_SETTINGS, max_examples=50)`."""

_WALK_LIMIT: Final = 1000
"""The longest request history `check_policy` walks for the bounded-attempts law."""

_RETRIED: Final = (
    Bucket.RETRYABLE,
    Bucket.TRANSIENT_HTTP,
    Bucket.MALFORMED,
    Bucket.NOT_SENT,
    Bucket.AMBIGUOUS,
)
"""Transient buckets: the ones a policy may retry with the same request."""


class PolicyLawViolation(AssertionError):
    """A policy broke a law. `law` names it (a key of `LAWS`), `explanation` says what went
    wrong and `counterexample` holds the inputs and the decision that show it; `str()` shows
    all three."""

    def __init__(self, law: str, explanation: str, counterexample: Mapping[str, object]) -> None:
        self.law = law
        self.explanation = explanation
        self.counterexample = dict(counterexample)
        lines = [f"policy broke law {law!r} ({LAWS.get(law, '?')}): {explanation}"]
        lines += [f"    {key} = {value!r}" for key, value in self.counterexample.items()]
        super().__init__("\n".join(lines))

    def _with_seed(self, seed: int) -> PolicyLawViolation:
        return PolicyLawViolation(self.law, self.explanation, {"seed": seed, **self.counterexample})


@attrs.frozen
class ConformanceReport:
    """What `check_policy` verified: the laws `checked` (all held), the laws `skipped` with
    why, the limits it used, and how many generated `examples` each checked law ran."""

    checked: tuple[str, ...]
    skipped: Mapping[str, str]
    examples: Mapping[str, int]
    max_attempts: int | None
    max_resubmits: int | None

    @property
    def total_examples(self) -> int:
        """Examples run over all checked laws."""
        return sum(self.examples.values())


# --- strategies ------------------------------------------------------------------------------

_HTTP_TRANSIENT: Final = (408, 425, 429, *range(500, 600))
_HTTP_UNEXPECTED: Final = tuple(
    s for s in range(100, 500) if not 200 <= s < 300 and s not in _HTTP_TRANSIENT
)
_UNKNOWN_CODES: Final = st.sampled_from(
    [c for c in range(-1, 40) if c != 0 and c not in CODE_TABLE]
) | st.integers(min_value=100, max_value=10**6)

_HINTS: Final = st.sampled_from([30.0, 1.0, 0.0, 0.5, 86400.0, 1e12, math.inf]) | st.floats(
    min_value=0.0, max_value=1e7
)
"""Server retry hints: 0, small, a day, huge, and infinity (`retryAfterSec: 1e999` parses
to it). Hypothesis favours the first values listed, so those are the ones most likely to
matter."""

_SEEDS: Final = st.integers(min_value=0, max_value=2**64 - 1)

_NAMES: Final[Mapping[Bucket, str]] = {
    Bucket.MALFORMED: "WRONG_SHAPE",
    Bucket.NOT_SENT: "NOT_SENT",
    Bucket.AMBIGUOUS: "NO_REPLY",
}


def _failure_of(
    bucket: Bucket, endpoints: st.SearchStrategy[Endpoint], hints: st.SearchStrategy[float | None]
) -> st.SearchStrategy[Failure]:
    """Failures in `bucket`, with the code, name and HTTP status classification gives them."""
    documented = sorted(code for code, info in CODE_TABLE.items() if info.bucket is bucket)
    codes: st.SearchStrategy[int | None] = st.none()
    statuses: st.SearchStrategy[int | None] = st.none()
    if documented:
        codes, statuses = st.sampled_from(documented), st.sampled_from([200, 400, 429, 503])
    elif bucket is Bucket.UNKNOWN_CODE:
        codes, statuses = _UNKNOWN_CODES, st.sampled_from([200, 400, 500])
    elif bucket is Bucket.TRANSIENT_HTTP:
        statuses = st.sampled_from(_HTTP_TRANSIENT)
    elif bucket is Bucket.UNEXPECTED_HTTP:
        statuses = st.sampled_from(_HTTP_UNEXPECTED)
    elif bucket is Bucket.MALFORMED:
        statuses = st.sampled_from([200, 502])

    @st.composite
    def build(draw: st.DrawFn) -> Failure:
        code, status = draw(codes), draw(statuses)
        if code is not None:
            name = ErrorCode(code).name if code in CODE_TABLE else f"CODE_{code}"
        else:
            name = _NAMES.get(bucket, f"HTTP_{status}")
        return Failure(
            bucket,
            name,
            draw(st.sampled_from(["", "server says no"])),
            draw(endpoints),
            code=code,
            retry_after=draw(hints),
            http_status=status,
        )

    return build()


def _canonical_failures() -> list[Failure]:
    """One failure per documented code and per other bucket (two HTTP statuses for
    transient HTTP; an ambiguous getTaskResult next to the ambiguous createTask), each
    without and with a 30 s hint."""
    create = Endpoint.CREATE_TASK
    shapes = [
        Failure(info.bucket, ErrorCode(code).name, "", create, code=code, http_status=200)
        for code, info in sorted(CODE_TABLE.items())
    ]
    shapes += [
        Failure(Bucket.UNKNOWN_CODE, "CODE_99", "", create, code=99, http_status=200),
        Failure(Bucket.TRANSIENT_HTTP, "HTTP_503", "", create, http_status=503),
        Failure(Bucket.TRANSIENT_HTTP, "HTTP_429", "", create, http_status=429),
        Failure(Bucket.UNEXPECTED_HTTP, "HTTP_404", "", create, http_status=404),
        Failure(Bucket.MALFORMED, "WRONG_SHAPE", "", create, http_status=200),
        Failure(Bucket.NOT_SENT, "NOT_SENT", "", create),
        Failure(Bucket.AMBIGUOUS, "NO_REPLY", "", create),
        Failure(Bucket.AMBIGUOUS, "NO_REPLY", "", Endpoint.GET_TASK_RESULT),
    ]
    return [attrs.evolve(f, retry_after=hint) for f in shapes for hint in (None, 30.0)]


_CANONICAL: Final = _canonical_failures()
"""Every code and bucket at least once: a policy keyed on one code is always exercised."""


def _grid(
    situations: Iterable[tuple[int, int, float]], buckets: Iterable[Bucket] | None = None
) -> list[tuple[Failure, RetryContext]]:
    """Each canonical failure in `buckets` (default: all) in each `(attempt, resubmits,
    time_left)` situation."""
    wanted = set(Bucket if buckets is None else buckets)
    return [
        (failure, RetryContext(attempt=a, resubmits=r, now=1000.0, deadline=1000.0 + left))
        for failure in _CANONICAL
        if failure.bucket in wanted
        for a, r, left in situations
    ]


def failures(
    buckets: Iterable[Bucket] | None = None,
    endpoints: Iterable[Endpoint] | None = None,
    *,
    retry_after: st.SearchStrategy[float | None] | None = None,
) -> st.SearchStrategy[Failure]:
    """Failures the engine can hand a policy: any of `buckets` (default: all), any of
    `endpoints` (default: both), a code and HTTP status plausible for the bucket, and a
    `retry_after` from `retry_after` (default: `None`, or a hint >= 0 from 0 up to huge
    values and infinity)."""
    bucket_list = list(Bucket) if buckets is None else list(buckets)
    endpoint_list = list(Endpoint) if endpoints is None else list(endpoints)
    if not bucket_list or not endpoint_list:
        raise ValueError("failures() needs at least one bucket and one endpoint")
    hints = (st.none() | _HINTS) if retry_after is None else retry_after
    endpoint_st = st.sampled_from(endpoint_list)
    return st.one_of([_failure_of(bucket, endpoint_st, hints) for bucket in bucket_list])


def _time_left() -> st.SearchStrategy[float]:
    return st.sampled_from([3600.0, 1e7, 120.0, 1.0, 0.5, 0.0]) | st.floats(0.0, 1e7)


_NOW: Final = st.sampled_from([0.0, 1000.0]) | st.floats(min_value=-1e12, max_value=1e12)
_EARLY: Final = st.integers(1, 3)
_ROOMY: Final = st.sampled_from([3600.0, 86400.0]) | st.floats(100.0, 1e7)
_ATTEMPTS: Final = st.integers(1, 8) | st.integers(1, 64) | st.sampled_from([100, 1000])
"""Mostly early attempts (where a policy still retries), some late and a few very late."""
_STEP_DELAYS: Final = st.sampled_from([0.0, 1.0, 2.0, 30.0]) | st.floats(0.0, 3600.0)
_LATENCIES: Final = st.sampled_from([0.0, 0.05]) | st.floats(0.0, 60.0)


def contexts(
    *,
    attempts: st.SearchStrategy[int] | None = None,
    resubmits: st.SearchStrategy[int] | None = None,
    time_left: st.SearchStrategy[float] | None = None,
    previous_delay: st.SearchStrategy[float | None] | None = None,
) -> st.SearchStrategy[RetryContext]:
    """Contexts with `attempt >= 1`, `resubmits >= 0`, a finite `now`, a `deadline` at or
    after `now` and an optional `previous_delay >= 0`. Each keyword replaces the strategy for
    that part (`time_left` is `deadline - now`; it must draw floats >= 0)."""
    return st.builds(
        lambda attempt, resubmit, now, left, previous: RetryContext(
            attempt=attempt,
            resubmits=resubmit,
            now=now,
            deadline=now + left,
            previous_delay=previous,
        ),
        _ATTEMPTS if attempts is None else attempts,
        st.integers(0, 10) if resubmits is None else resubmits,
        _NOW,
        _time_left() if time_left is None else time_left,
        (
            st.none() | st.sampled_from([0.0, 1.0, 30.0]) | st.floats(0.0, 1e12)
            if previous_delay is None
            else previous_delay
        ),
    )


def histories(
    buckets: Iterable[Bucket] | None = None,
    endpoints: Iterable[Endpoint] | None = None,
    *,
    identical: bool = False,
    min_size: int = 1,
    max_size: int = 8,
) -> st.SearchStrategy[History]:
    """What one request can see: `(failure, context)` pairs with `attempt` 1, 2, 3, ...,
    fixed `resubmits` and `deadline`, and time moving forward by each step's delay (the
    next step's `previous_delay`, up to an hour) plus a request's latency (up to a minute),
    never past the deadline. Failures come
    from `failures(buckets, endpoints)`; with `identical` every step fails the same way."""
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    failure_st = failures(buckets, endpoints)

    @st.composite
    def build(draw: st.DrawFn) -> History:
        size = draw(st.integers(min_size, max_size))
        first = draw(failure_st)
        resubmits = draw(st.integers(0, 10))
        now = draw(_NOW)
        deadline = now + draw(_time_left())
        previous: float | None = None
        steps: History = []
        for attempt in range(1, size + 1):
            failure = first if identical or attempt == 1 else draw(failure_st)
            context = RetryContext(
                attempt=attempt,
                resubmits=resubmits,
                now=now,
                deadline=deadline,
                previous_delay=previous,
            )
            steps.append((failure, context))
            previous = min(draw(_STEP_DELAYS), max(deadline - now, 0.0))
            latency = min(draw(_LATENCIES), max(deadline - now - previous, 0.0))
            now = min(now + previous + latency, deadline)
        return steps

    return build()


# --- the laws, one example at a time ---------------------------------------------------------


def _decide(policy: RetryPolicy, failure: Failure, context: RetryContext) -> Decision:
    """`policy.decide`, with raising or answering a non-decision reported as law `total`."""
    example = {"failure": failure, "context": context}
    try:
        decision: object = policy.decide(failure, context)
    except Exception as exc:
        raise PolicyLawViolation("total", f"decide raised {exc!r}", example) from exc
    if not isinstance(decision, RetryAfter | Resubmit | GiveUp):
        raise PolicyLawViolation(
            "total",
            "decide returned something other than a decision",
            example | {"decision": decision},
        )
    return decision


def _broken(
    law: str, why: str, failure: Failure, context: RetryContext, decision: Decision
) -> PolicyLawViolation:
    return PolicyLawViolation(
        law, why, {"failure": failure, "context": context, "decision": decision}
    )


def check_never_retries_permanent(
    policy: RetryPolicy, failure: Failure, context: RetryContext
) -> None:
    """Law `never_retries_permanent` on one example: a PERMANENT or BAD_REQUEST failure gets
    `GiveUp`. Raises `PolicyLawViolation` if not."""
    decision = _decide(policy, failure, context)
    if failure.bucket in (Bucket.PERMANENT, Bucket.BAD_REQUEST) and not isinstance(
        decision, GiveUp
    ):
        raise _broken(
            "never_retries_permanent",
            f"a {failure.bucket.value} failure was answered {type(decision).__name__}",
            failure,
            context,
            decision,
        )


def check_honours_retry_after(policy: RetryPolicy, failure: Failure, context: RetryContext) -> None:
    """Law `honours_retry_after` on one example: with a server hint, a `RetryAfter` or
    `Resubmit` waits at least `failure.retry_after`. Raises `PolicyLawViolation` if not."""
    decision = _decide(policy, failure, context)
    hint = failure.retry_after
    if isinstance(decision, RetryAfter | Resubmit) and hint is not None and decision.delay < hint:
        raise _broken(
            "honours_retry_after",
            f"{type(decision).__name__} waits {decision.delay!r} s, less than the hint {hint!r} s",
            failure,
            context,
            decision,
        )


def check_respects_deadline(policy: RetryPolicy, failure: Failure, context: RetryContext) -> None:
    """Law `respects_deadline` on one example: a `RetryAfter` or `Resubmit` satisfies
    `context.now + delay <= context.deadline`. Raises `PolicyLawViolation` if not."""
    decision = _decide(policy, failure, context)
    if isinstance(decision, RetryAfter | Resubmit) and not (
        context.now + decision.delay <= context.deadline
    ):
        raise _broken(
            "respects_deadline",
            f"{type(decision).__name__} waits {decision.delay!r} s with only "
            f"{context.time_left!r} s left before the deadline",
            failure,
            context,
            decision,
        )


def check_bounded_attempts(
    policy: RetryPolicy, failure: Failure, context: RetryContext, *, max_attempts: int
) -> None:
    """Law `bounded_attempts` on one example: once `context.attempt >= max_attempts` the
    answer is `GiveUp`, or `Resubmit` for an UNSOLVABLE failure; never `RetryAfter`.
    Raises `PolicyLawViolation` if not."""
    decision = _decide(policy, failure, context)
    if context.attempt < max_attempts or isinstance(decision, GiveUp):
        return
    if isinstance(decision, Resubmit) and failure.bucket is Bucket.UNSOLVABLE:
        return
    raise _broken(
        "bounded_attempts",
        f"attempt {context.attempt} of at most {max_attempts} was answered "
        f"{type(decision).__name__}",
        failure,
        context,
        decision,
    )


def check_gives_up_within_max_attempts(
    policy: RetryPolicy, history: Sequence[tuple[Failure, RetryContext]], *, max_attempts: int
) -> None:
    """Law `bounded_attempts` over one request: feeding the policy the failures of
    `history` in turn, from its first context on, with time moved forward by the delay the
    policy chose plus the history's own latencies, the policy stops answering `RetryAfter`
    by attempt `max_attempts`. At most 1000 attempts are walked. Raises
    `PolicyLawViolation` if it still answers `RetryAfter` at attempt `max_attempts`."""
    if not history:
        return
    failures_seen = [failure for failure, _ in history]
    latencies = [0.0] + [
        max(later.now - earlier.now - (later.previous_delay or 0.0), 0.0)
        for (_, earlier), (_, later) in itertools.pairwise(history)
    ]
    context = history[0][1]
    walked: list[tuple[int, float, Decision]] = []
    for step in range(min(max_attempts, _WALK_LIMIT)):
        failure = failures_seen[step % len(failures_seen)]
        decision = _decide(policy, failure, context)
        walked.append((context.attempt, context.now, decision))
        if not isinstance(decision, RetryAfter):
            return
        if context.attempt >= max_attempts:
            raise PolicyLawViolation(
                "bounded_attempts",
                f"still retrying after {context.attempt} attempts of at most {max_attempts}",
                {
                    "failure": failure,
                    "start": history[0][1],
                    "walk (attempt, now, decision)": walked,
                },
            )
        ends = context.now + decision.delay
        if ends > context.deadline:
            return  # the engine fails the job here; law respects_deadline reports it
        latency = latencies[(step + 1) % len(latencies)]
        context = attrs.evolve(
            context,
            attempt=context.attempt + 1,
            now=min(ends + latency, context.deadline),
            previous_delay=decision.delay,
        )


def check_bounded_resubmits(
    policy: RetryPolicy, failure: Failure, context: RetryContext, *, max_resubmits: int
) -> None:
    """Law `bounded_resubmits` on one example: once `context.resubmits >= max_resubmits`
    the answer is never `Resubmit`. Raises `PolicyLawViolation` if it is."""
    decision = _decide(policy, failure, context)
    if context.resubmits >= max_resubmits and isinstance(decision, Resubmit):
        raise _broken(
            "bounded_resubmits",
            f"resubmitted after {context.resubmits} resubmits of at most {max_resubmits}",
            failure,
            context,
            decision,
        )


def check_deterministic(
    make_policy: PolicyFactory, seed: int, steps: Sequence[tuple[Failure, RetryContext]]
) -> None:
    """Law `deterministic` on one example: two policies from `make_policy(random.Random(seed))`
    answer `steps` (fed in order, one policy after the other) with equal decisions. Raises
    `PolicyLawViolation` at the first step where they differ."""
    one, two = make_policy(random.Random(seed)), make_policy(random.Random(seed))
    first = [_decide(one, failure, context) for failure, context in steps]
    second = [_decide(two, failure, context) for failure, context in steps]
    for index, ((failure, context), a, b) in enumerate(zip(steps, first, second, strict=True)):
        if a != b:
            raise PolicyLawViolation(
                "deterministic",
                f"equally seeded policies differ at step {index + 1} of {len(steps)}",
                {
                    "seed": seed,
                    "steps": list(steps),
                    "failure": failure,
                    "context": context,
                    "first policy": a,
                    "second policy": b,
                },
            )


def check_total(policy: RetryPolicy, failure: Failure, context: RetryContext) -> None:
    """Law `total` on one example: `decide` returns without raising, answers `RetryAfter`,
    `Resubmit` or `GiveUp`, and any delay is finite and >= 0. Raises `PolicyLawViolation`
    if not."""
    decision = _decide(policy, failure, context)
    if isinstance(decision, RetryAfter | Resubmit):
        delay: object = decision.delay
        if not (isinstance(delay, int | float) and math.isfinite(delay) and delay >= 0):
            raise _broken(
                "total",
                f"{type(decision).__name__} has delay {delay!r}, not a finite number >= 0",
                failure,
                context,
                decision,
            )


# --- running every law with hypothesis -------------------------------------------------------

_PointCheck: TypeAlias = Callable[[RetryPolicy, Failure, RetryContext], None]


def _run_pointwise(
    name: str,
    check: _PointCheck,
    make_policy: PolicyFactory,
    failure_st: st.SearchStrategy[Failure],
    context_st: st.SearchStrategy[RetryContext],
    config: hypothesis.settings,
    explicit: Sequence[tuple[Failure, RetryContext]] = (),
) -> int:
    """Runs `check` on the `explicit` examples (seed 0), then on generated ones under
    `config`; returns how many ran."""
    count = 0

    def law(seed: int, failure: Failure, context: RetryContext) -> None:
        nonlocal count
        count += 1
        try:
            check(make_policy(random.Random(seed)), failure, context)
        except PolicyLawViolation as exc:
            raise exc._with_seed(seed) from exc.__cause__

    for failure, context in explicit:  # a plain loop: cheaper than hypothesis.example
        law(0, failure, context)
    law.__name__ = law.__qualname__ = name  # names the example hypothesis reports
    config(given(seed=_SEEDS, failure=failure_st, context=context_st)(law))()
    return count


def _run_history_walk(
    make_policy: PolicyFactory, max_attempts: int, config: hypothesis.settings
) -> int:
    count = 0
    size = max(1, min(max_attempts, 10))

    @config
    @given(
        seed=_SEEDS,
        history=histories(_RETRIED, identical=True, min_size=size, max_size=size),
    )
    def bounded_attempts_over_a_request(seed: int, history: History) -> None:
        nonlocal count
        count += 1
        try:
            check_gives_up_within_max_attempts(
                make_policy(random.Random(seed)), history, max_attempts=max_attempts
            )
        except PolicyLawViolation as exc:
            raise exc._with_seed(seed) from exc.__cause__

    bounded_attempts_over_a_request()
    return count


def _run_determinism(make_policy: PolicyFactory, config: hypothesis.settings) -> int:
    count = 0
    steps_st = histories() | st.lists(st.tuples(failures(), contexts()), min_size=1, max_size=6)

    @config
    @given(seed=_SEEDS, steps=steps_st)
    def deterministic(seed: int, steps: History) -> None:
        nonlocal count
        count += 1
        check_deterministic(make_policy, seed, steps)

    deterministic()
    return count


def _limit(
    probe: RetryPolicy, name: str, given_value: int | None, minimum: int
) -> tuple[int | None, str]:
    """The limit to check `name` against, or None with the reason it is skipped."""
    value: object = given_value if given_value is not None else getattr(probe, name, None)
    if value is None:
        return None, f"no {name} given and the policy has no {name} attribute"
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value, ""


def _first_violation(group: BaseExceptionGroup[BaseException]) -> PolicyLawViolation | None:
    for exc in group.exceptions:
        if isinstance(exc, PolicyLawViolation):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_violation(exc)
            if found is not None:
                return found
    return None


def check_policy(
    make_policy: PolicyFactory,
    *,
    max_attempts: int | None = None,
    max_resubmits: int | None = None,
    settings: hypothesis.settings | None = None,
    laws: Iterable[str] | None = None,
) -> ConformanceReport:
    """Checks that policies built by `make_policy(rng)` obey every law in `LAWS`.

    On success, returns a `ConformanceReport`; otherwise raises `PolicyLawViolation` for the
    first law broken, with a shrunk counterexample. `max_attempts` and `max_resubmits`
    default to the policy's attributes of those names; without either, the law that needs
    it is skipped (and listed in the report). `settings` replaces `DEFAULT_SETTINGS`; `laws`
    restricts the check to some of the laws by name. Do not call it from inside another
    hypothesis test.
    """
    selected = list(LAWS) if laws is None else list(laws)
    unknown = [name for name in selected if name not in LAWS]
    if unknown:
        raise ValueError(f"unknown laws {unknown}; the laws are {list(LAWS)}")
    probe = make_policy(random.Random(0))
    if not isinstance(probe, RetryPolicy):
        raise TypeError(f"make_policy returned {probe!r}, which has no decide() method")
    attempts, no_attempts = _limit(probe, "max_attempts", max_attempts, 1)
    resubmits, no_resubmits = _limit(probe, "max_resubmits", max_resubmits, 0)
    config = hypothesis.settings(settings or DEFAULT_SETTINGS, report_multiple_bugs=False)

    skipped: dict[str, str] = {name: "not selected" for name in LAWS if name not in selected}
    if attempts is None and "bounded_attempts" in selected:
        skipped["bounded_attempts"] = no_attempts
    if resubmits is None and "bounded_resubmits" in selected:
        skipped["bounded_resubmits"] = no_resubmits

    # Where a policy still retries: early attempts, mostly far from the deadline (law 3 gets
    # tight deadlines instead). A policy that gives up at once shows nothing of its rules.
    live = contexts(attempts=_EARLY | _ATTEMPTS, time_left=_ROOMY | _time_left())

    def run(name: str) -> int:
        if name == "never_retries_permanent":
            hopeless = failures([Bucket.PERMANENT, Bucket.BAD_REQUEST])
            grid = _grid([(1, 0, 3600.0)], [Bucket.PERMANENT, Bucket.BAD_REQUEST])
            return _run_pointwise(
                name, check_never_retries_permanent, make_policy, hopeless, live, config, grid
            )
        if name == "honours_retry_after":
            # Resubmit comes mostly from UNSOLVABLE: it goes first (the first example
            # hypothesis tries is the simplest) and gets a quarter of the examples.
            hinted = failures([Bucket.UNSOLVABLE, *Bucket, Bucket.UNSOLVABLE], retry_after=_HINTS)
            grid = _grid([(1, 0, 3600.0)])
            return _run_pointwise(
                name, check_honours_retry_after, make_policy, hinted, live, config, grid
            )
        if name == "respects_deadline":
            tight = contexts(attempts=_EARLY | _ATTEMPTS)
            grid = _grid([(1, 0, 0.0), (1, 0, 5.0), (2, 0, 5.0)])
            return _run_pointwise(
                name, check_respects_deadline, make_policy, failures(), tight, config, grid
            )
        if name == "bounded_attempts":
            assert attempts is not None
            late = contexts(
                attempts=st.just(attempts) | st.integers(attempts, attempts + 100),
                time_left=_ROOMY | _time_left(),
            )

            def bounded(policy: RetryPolicy, failure: Failure, context: RetryContext) -> None:
                check_bounded_attempts(policy, failure, context, max_attempts=attempts)

            grid = _grid([(attempts, 0, 3600.0), (attempts + 1, 0, 3600.0)])
            ran = _run_pointwise(name, bounded, make_policy, failures(), late, config, grid)
            return ran + _run_history_walk(make_policy, attempts, config)
        if name == "bounded_resubmits":
            assert resubmits is not None
            many = contexts(
                resubmits=st.just(resubmits) | st.integers(resubmits, resubmits + 20),
                time_left=_ROOMY | _time_left(),
            )
            # Half UNSOLVABLE: the failure built-in policies resubmit.
            unsolvable_often = failures([Bucket.UNSOLVABLE]) | failures()

            def capped(policy: RetryPolicy, failure: Failure, context: RetryContext) -> None:
                check_bounded_resubmits(policy, failure, context, max_resubmits=resubmits)

            grid = _grid([(1, resubmits, 3600.0)])
            return _run_pointwise(name, capped, make_policy, unsolvable_often, many, config, grid)
        if name == "deterministic":
            return _run_determinism(make_policy, config)
        grid = _grid([(1, 0, 0.0), (1, 0, 3600.0)])
        return _run_pointwise(name, check_total, make_policy, failures(), contexts(), config, grid)

    examples: dict[str, int] = {}
    for name in LAWS:
        if name in skipped:
            continue
        try:
            examples[name] = run(name)
        except BaseExceptionGroup as group:  # hypothesis reports flaky failures as groups
            violation = _first_violation(group)
            if violation is None:
                raise
            raise violation from group
    return ConformanceReport(
        checked=tuple(examples),
        skipped=skipped,
        examples=examples,
        max_attempts=attempts,
        max_resubmits=resubmits,
    )
