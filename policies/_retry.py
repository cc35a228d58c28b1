"""Retry policies: what a failure does to a job.

A policy is any object with `decide(failure, context) -> Decision`. It answers one of:

- `RetryAfter(delay)`: send the same request again after `delay` seconds;
- `Resubmit(delay)`: drop the current task and create a new one after `delay` seconds;
- `GiveUp(reason)`: stop; the job fails with the failure that caused it.

Policies are pure: the same failure, context and seeded `random.Random` give the same
decision. The engine enforces two laws whatever a policy says: it never waits less than the
server's retry hint, and never waits past the job's deadline (it gives up instead).

The built-ins share one set of rules (`BackoffPolicy`) and differ only in the delay they
choose when the server gives no hint.
"""

from __future__ import annotations

import random
from typing import Protocol, TypeAlias, runtime_checkable

import attrs

from ._failure import Bucket, Failure

__all__ = [
    "NEVER_RETRIED",
    "BackoffPolicy",
    "Decision",
    "DecorrelatedJitter",
    "DocumentedPolicy",
    "EqualJitter",
    "Exponential",
    "FixedDelay",
    "FullJitter",
    "GiveUp",
    "NoRetry",
    "Resubmit",
    "RetryAfter",
    "RetryContext",
    "RetryPolicy",
]

NEVER_RETRIED = frozenset(
    {Bucket.PERMANENT, Bucket.BAD_REQUEST, Bucket.UNKNOWN_CODE, Bucket.UNEXPECTED_HTTP}
)
"""Buckets no built-in policy retries: retrying cannot help, and may get the key rate
limited. (The provider's rule: retry only what is known to be transient.)"""


def _non_negative(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class RetryAfter:
    """Send the same request again after `delay` seconds."""

    delay: float = attrs.field(validator=_non_negative)
    reason: str = ""


@attrs.frozen
class Resubmit:
    """Create the task anew (a new createTask) after `delay` seconds."""

    delay: float = attrs.field(default=0.0, validator=_non_negative)
    reason: str = ""


@attrs.frozen
class GiveUp:
    """Stop retrying; the job fails with the failure at hand."""

    reason: str


Decision: TypeAlias = RetryAfter | Resubmit | GiveUp


@attrs.frozen(kw_only=True)
class RetryContext:
    """Where a job stands when a failure arrives.

    - `attempt`: how many times the current request has now failed in a row (1 on the first
      failure; reset by a successful reply and by a resubmit);
    - `resubmits`: how many times the task has already been created anew;
    - `now`, `deadline`: the current time and the job's deadline, on the engine's clock;
    - `previous_delay`: the delay chosen after the previous failure of this request, if any.
    """

    attempt: int
    resubmits: int
    now: float
    deadline: float
    previous_delay: float | None = None

    @property
    def time_left(self) -> float:
        """Seconds until the deadline (negative once it has passed)."""
        return self.deadline - self.now


@runtime_checkable
class RetryPolicy(Protocol):
    """Decides what a failure does. Must not raise, sleep or do I/O."""

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        """Return what the job does about `failure`."""
        ...


@attrs.define(frozen=True)
class NoRetry:
    """Gives up on the first failure of any kind."""

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        """Always `GiveUp`."""
        return GiveUp("the policy never retries")


def _exponential(base: float, attempt: int, cap: float) -> float:
    return float(min(cap, base * 2 ** min(attempt - 1, 64)))


@attrs.define(kw_only=True)
class BackoffPolicy:
    """The rules every built-in follows; subclasses choose only `backoff()`.

    - permanent, bad-request, unknown-code and unexpected-HTTP failures: give up at once;
    - unsolvable (12): resubmit as a new task after `resubmit_delay`, at most
      `max_resubmits` times;
    - a createTask that may have been billed (`Failure.may_have_billed`: sent and no reply,
      or answered 2xx with an unusable reply, so the task may exist): retried like any
      transient failure, unless `resend_ambiguous_create` is False, which gives up instead;
    - everything else (retryable codes, HTTP 429/5xx, malformed replies, network failures):
      retry the same request, at most `max_attempts` attempts in all, waiting the server's
      hint when it gives one and `backoff(context)` otherwise;
    - a wait that would end after the deadline gives up at once instead.
    """

    max_attempts: int = attrs.field(default=6, validator=attrs.validators.ge(1))
    max_resubmits: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    resubmit_delay: float = attrs.field(default=0.0, validator=_non_negative)
    resend_ambiguous_create: bool = True
    rng: random.Random = attrs.field(factory=random.Random, repr=False, eq=False)

    def backoff(self, context: RetryContext) -> float:
        """The delay before retrying when the server gave no hint."""
        raise NotImplementedError

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        """Apply the rules above."""
        bucket = failure.bucket
        if bucket in NEVER_RETRIED:
            return GiveUp(f"{bucket.value} failures are never retried")
        if bucket is Bucket.UNSOLVABLE:
            if context.resubmits >= self.max_resubmits:
                return GiveUp(f"still unsolvable after {context.resubmits} resubmits")
            delay = max(self.resubmit_delay, failure.retry_after or 0.0)
            return _within_deadline(Resubmit(delay, f"resubmit {context.resubmits + 1}"), context)
        if failure.may_have_billed and not self.resend_ambiguous_create:
            return GiveUp("createTask may have been billed; not sending it again")
        if context.attempt >= self.max_attempts:
            return GiveUp(f"gave up after {context.attempt} attempts")
        if failure.retry_after is not None:
            delay, why = failure.retry_after, "server retry hint"
        else:
            delay, why = self.backoff(context), "backoff"
        return _within_deadline(
            RetryAfter(delay, f"{why}, attempt {context.attempt + 1}/{self.max_attempts}"),
            context,
        )


def _within_deadline(decision: RetryAfter | Resubmit, context: RetryContext) -> Decision:
    if context.now + decision.delay > context.deadline:
        return GiveUp(
            f"waiting {decision.delay:.3g}s would pass the deadline "
            f"({max(context.time_left, 0):.3g}s left)"
        )
    return decision


@attrs.define(kw_only=True)
class DocumentedPolicy(BackoffPolicy):
    """The provider's documented strategy, done right.

    Without a hint, attempt n (1-based) waits `min(2 ** (n - 1), cap)` seconds plus up to
    `jitter` seconds of uniform random jitter, as the provider's example does
    (`min(2**attempt, 30) + random.random()`); at most 6 attempts; unsolvable tasks are
    resubmitted up to 3 times; the server's `retryAfterSec` / `Retry-After` always wins.
    """

    cap: float = attrs.field(default=30.0, validator=_non_negative)
    jitter: float = attrs.field(default=1.0, validator=_non_negative)

    def backoff(self, context: RetryContext) -> float:
        """`min(2 ** (attempt - 1), cap)` plus uniform jitter in [0, jitter)."""
        return _exponential(1.0, context.attempt, self.cap) + self.rng.random() * self.jitter


@attrs.define(kw_only=True)
class FixedDelay(BackoffPolicy):
    """Waits the same `delay` before every retry; a server hint replaces it."""

    delay: float = attrs.field(default=2.0, validator=_non_negative)

    def backoff(self, context: RetryContext) -> float:
        """Always `delay`."""
        return self.delay


@attrs.define(kw_only=True)
class Exponential(BackoffPolicy):
    """Capped exponential backoff with no jitter: `min(cap, base * 2 ** (attempt - 1))`.

    Kept as the reference that shows why jitter matters: clients that fail together retry
    together.
    """

    base: float = attrs.field(default=1.0, validator=_non_negative)
    cap: float = attrs.field(default=30.0, validator=_non_negative)

    def backoff(self, context: RetryContext) -> float:
        """`min(cap, base * 2 ** (attempt - 1))`."""
        return _exponential(self.base, context.attempt, self.cap)


@attrs.define(kw_only=True)
class FullJitter(BackoffPolicy):
    """ "Full jitter": uniform in `[0, min(cap, base * 2 ** (attempt - 1))]`."""

    base: float = attrs.field(default=1.0, validator=_non_negative)
    cap: float = attrs.field(default=30.0, validator=_non_negative)

    def backoff(self, context: RetryContext) -> float:
        """A uniform draw below the capped exponential."""
        return self.rng.uniform(0.0, _exponential(self.base, context.attempt, self.cap))


@attrs.define(kw_only=True)
class EqualJitter(BackoffPolicy):
    """ "Equal jitter": half the capped exponential, plus a uniform draw over the other half."""

    base: float = attrs.field(default=1.0, validator=_non_negative)
    cap: float = attrs.field(default=30.0, validator=_non_negative)

    def backoff(self, context: RetryContext) -> float:
        """`t / 2 + uniform(0, t / 2)` with `t` the capped exponential."""
        half = _exponential(self.base, context.attempt, self.cap) / 2
        return half + self.rng.uniform(0.0, half)


@attrs.define(kw_only=True)
class DecorrelatedJitter(BackoffPolicy):
    """ "Decorrelated jitter": `min(cap, uniform(base, 3 * previous_delay))`."""

    base: float = attrs.field(default=1.0, validator=_non_negative)
    cap: float = attrs.field(default=30.0, validator=_non_negative)

    def backoff(self, context: RetryContext) -> float:
        """Grows from the previous delay, randomly, never above `cap`."""
        previous = context.previous_delay if context.previous_delay is not None else self.base
        return min(self.cap, self.rng.uniform(self.base, max(self.base, previous * 3)))
