"""Account gates: how the jobs that share an API key behave as one good citizen.

Theory of operation. Per-request retry policies reason about one request at a time; a
thousand jobs on one key that each back off on their own turn one rate limit into a retry
storm, and one empty balance into a thousand doomed requests. An `AccountGate` sits between
every job of an account and the wire. Before a job sends, it asks `admit()`; the gate
answers `Admit()`, `Hold(until, ...)` (not yet: come back at `until`, or when woken) or
`Refuse(failure, ...)` (never: fail with this failure). After every reply the job tells the
gate what came back (`observe()`), and when it finishes it says so (`release()`).
Because the gate can change its mind about jobs that are asleep (a circuit opens, the account
is paused past their deadline, a permit frees), it keeps a list of jobs to wake that drivers
drain with `wakeups()` and re-run at once.

`FleetGate` is the built-in gate, composed of five parts, each replaceable or switched off
(pass `None`):

- `SharedPause`: a rate-limit or outage reply (16, 21, HTTP 429/5xx) pauses every job of the
  account until its hint has passed (or one shared, jittered backoff without a hint); quota
  replies (17, 18) pause new tasks only;
- `CircuitBreaker`: a permanent account error (1, 3, 14, 15) fails every job that has no task
  yet, at once, and sends nothing more on the key until `reset()` (or a cool-down); jobs whose
  task exists keep polling when the error leaves polling possible (3: the task is paid for);
- `AdaptiveConcurrency`: tasks in flight are bounded by a limit that adapts to
  NO_SLOT_AVAILABLE (2): additive increase, multiplicative decrease;
- `RetryBudget`: retries may use at most a share of the traffic (plus a small floor rate);
- `AdaptiveRate`: after a RATE_LIMITED the gate learns the rate the account accepts and paces
  every request to it, probing upwards while requests wait and nothing is refused.

The gate is sans-IO like the rest of the core: time comes in as arguments, randomness from
its `rng`.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Hashable
from typing import Final, Protocol, TypeAlias, runtime_checkable

import attrs

from captchaflow.transports import Endpoint, ErrorCode

from ._failure import Bucket, Failure

__all__ = [
    "AccountGate",
    "AdaptiveConcurrency",
    "AdaptiveRate",
    "Admit",
    "CircuitBreaker",
    "FleetGate",
    "GateDecision",
    "Hold",
    "OpenGate",
    "Refuse",
    "RetryBudget",
    "SharedPause",
]

_CREATE: Final = Endpoint.CREATE_TASK
_PAUSING_CODES: Final = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.SERVICE_UNAVAILABLE})
_QUOTA_CODES: Final = frozenset({ErrorCode.DAILY_LIMIT_EXCEEDED, ErrorCode.QUOTA_LIMIT_EXCEEDED})
_POLL_BLOCKING: Final = frozenset(
    {ErrorCode.KEY_DOES_NOT_EXIST, ErrorCode.PLAN_EXPIRED, ErrorCode.PLAN_INACTIVE}
)


@attrs.frozen
class Admit:
    """Send now."""


@attrs.frozen
class Hold:
    """Not now. Ask again at `until` (or when woken, if `until` is None). `cause` is the
    failure behind the hold, if one is: a job that cannot outwait the hold before its
    deadline fails at once with it."""

    until: float | None
    reason: str
    cause: Failure | None = None


@attrs.frozen
class Refuse:
    """Never: fail the job with `failure`."""

    failure: Failure
    reason: str


GateDecision: TypeAlias = Admit | Hold | Refuse

ADMIT: Final = Admit()


@runtime_checkable
class AccountGate(Protocol):
    """Coordinates every job of one account. Must be pure (no I/O, no clock, no sleeping).

    `job` is any hashable identity (drivers pass the job object itself).
    """

    def register(self, job: Hashable, now: float) -> None:
        """A job of this account has started."""
        ...

    def standing(self, job: Hashable, endpoint: Endpoint, now: float) -> Refuse | Hold | None:
        """The account-wide verdict on `job` now, even while it sleeps: a refusal (it must
        fail), a hold with a known end, or None. Has no side effects."""
        ...

    def admit(self, job: Hashable, endpoint: Endpoint, *, retry: bool, now: float) -> GateDecision:
        """May `job` send a request to `endpoint` now? `retry` is true when it is not the
        first attempt of that request. An `Admit` may reserve resources for the request."""
        ...

    def observe(
        self,
        job: Hashable,
        endpoint: Endpoint,
        failure: Failure | None,
        *,
        sent_at: float,
        now: float,
    ) -> None:
        """What `job`'s request, sent at `sent_at`, came back with (`None`: success)."""
        ...

    def release(self, job: Hashable, now: float) -> None:
        """`job` has finished (or resubmits): drop everything it holds."""
        ...

    def wakeups(self) -> list[Hashable]:
        """Jobs whose sleep the gate has cut short since the last call (drained)."""
        ...


class OpenGate:
    """A gate that admits everything: every job on its own, as without coordination."""

    __slots__ = ()

    def register(self, job: Hashable, now: float) -> None:
        """Nothing to track."""

    def standing(self, job: Hashable, endpoint: Endpoint, now: float) -> Refuse | Hold | None:
        """Never a verdict."""
        return None

    def admit(self, job: Hashable, endpoint: Endpoint, *, retry: bool, now: float) -> GateDecision:
        """Always `Admit`."""
        return ADMIT

    def observe(
        self,
        job: Hashable,
        endpoint: Endpoint,
        failure: Failure | None,
        *,
        sent_at: float,
        now: float,
    ) -> None:
        """Ignored."""

    def release(self, job: Hashable, now: float) -> None:
        """Nothing to release."""

    def wakeups(self) -> list[Hashable]:
        """Never any."""
        return []


# -- the parts -----------------------------------------------------------------------------


@attrs.define(kw_only=True)
class SharedPause:
    """Pauses the whole account after a rate-limit, outage or quota reply.

    With a hint, until the hint has passed (the latest hint wins); without one, for a shared
    full-jitter backoff `uniform(0, min(cap, base * 2 ** (n - 1)))` where `n` counts such
    replies since the last success. Quota pauses (17, 18) hold new tasks only.
    """

    base: float = 1.0
    cap: float = 30.0
    # -inf, not 0: clock readings may be negative (only their differences matter).
    until: float = -math.inf
    quota_until: float = -math.inf
    cause: Failure | None = None
    quota_cause: Failure | None = None
    strikes: int = 0

    def pausing(self, failure: Failure) -> bool:
        """Whether `failure` pauses the account."""
        if failure.bucket is Bucket.TRANSIENT_HTTP:
            return failure.http_status == 429 or (failure.http_status or 0) >= 500
        return failure.bucket is Bucket.RETRYABLE and failure.code in _PAUSING_CODES | _QUOTA_CODES

    def observe(self, failure: Failure | None, now: float, rng: random.Random) -> bool:
        """Update the pause; return True when it was extended."""
        if failure is None:
            self.strikes = 0
            return False
        if not self.pausing(failure):
            return False
        if failure.retry_after is not None:
            end = now + failure.retry_after
        else:
            self.strikes += 1
            end = now + rng.uniform(0, min(self.cap, self.base * 2 ** min(self.strikes - 1, 32)))
        if failure.code in _QUOTA_CODES:
            if end > self.quota_until:
                self.quota_until, self.quota_cause = end, failure
                return True
            return False
        if end > self.until:
            self.until, self.cause = end, failure
            return True
        return False

    def hold(self, endpoint: Endpoint, now: float) -> Hold | None:
        """The hold that applies to a request on `endpoint` now, if any."""
        if now < self.until:
            return Hold(self.until, f"account paused: {_name(self.cause)}", self.cause)
        if endpoint is _CREATE and now < self.quota_until:
            return Hold(
                self.quota_until, f"new tasks paused: {_name(self.quota_cause)}", self.quota_cause
            )
        return None


@attrs.define(kw_only=True)
class CircuitBreaker:
    """Opens on a permanent account error; while open, refuses new tasks (and polls, for
    errors that make polling impossible: 1, 14, 15). `cooldown` (seconds) lets one probe
    through after that long; `reset()` closes it by hand."""

    cooldown: float | None = None
    failure: Failure | None = None
    opened_at: float = -math.inf
    """When the circuit opened (-inf for one built open: its cool-down is already over)."""
    probe: Hashable | None = None

    @property
    def is_open(self) -> bool:
        """True while the circuit refuses requests."""
        return self.failure is not None

    def reset(self) -> None:
        """Close the circuit (the operator fixed the account)."""
        self.failure = None
        self.probe = None

    def observe(self, job: Hashable, failure: Failure | None, now: float) -> bool:
        """Update the circuit; return True when it opened."""
        if failure is not None and failure.bucket is Bucket.PERMANENT:
            opened = self.failure is None
            self.failure, self.opened_at, self.probe = failure, now, None
            return opened
        if job == self.probe and self.probe is not None:
            self.reset()  # the probe got through: the account works again
        return False

    def refuse(
        self, job: Hashable, endpoint: Endpoint, now: float, *, probe: bool = True
    ) -> Refuse | None:
        """The refusal for a request on `endpoint` now, if the circuit is open. After the
        cool-down one job is let through as a probe (taken only when `probe`)."""
        failure = self.failure
        if failure is None:
            return None
        if endpoint is not _CREATE and failure.code not in _POLL_BLOCKING:
            return None
        cooled = self.cooldown is not None and now >= self.opened_at + self.cooldown
        if cooled and self.probe in (None, job):
            if probe:
                self.probe = job
            return None
        return Refuse(failure, f"circuit open since {failure.name} on this account")


@attrs.define(kw_only=True)
class AdaptiveConcurrency:
    """Bounds the tasks in flight (created and not yet finished) by `limit`: additive
    increase, about one per `limit` accepted tasks; on NO_SLOT_AVAILABLE, multiplicative
    decrease by `decrease` (at most once per `cooldown` seconds), and never above the tasks
    that were in flight when the service said it was full; always within [`min_limit`,
    `max_limit`]."""

    limit: float = 16.0
    min_limit: float = 1.0
    max_limit: float = 10_000.0
    decrease: float = 0.9
    cooldown: float = 5.0
    slow_start: bool = True
    """Until the first NO_SLOT_AVAILABLE, grow by one per accepted task (doubling each
    round trip), as TCP's slow start does, instead of one per `limit`."""
    holders: set[Hashable] = attrs.field(factory=set)
    queue: collections.deque[Hashable] = attrs.field(factory=collections.deque)
    last_decrease: float = -math.inf

    def acquire(self, job: Hashable) -> Hold | None:
        """Take a permit for `job`, or a hold until one frees (FIFO)."""
        if job in self.holders:
            return None
        if len(self.holders) < max(1, math.floor(self.limit)):
            self.holders.add(job)
            if job in self.queue:
                self.queue.remove(job)
            return None
        if job not in self.queue:
            self.queue.append(job)
        return Hold(None, "waiting for a task slot")

    def release(self, job: Hashable) -> list[Hashable]:
        """Drop `job`'s permit and queue place; return the jobs that may now go."""
        self.holders.discard(job)
        if job in self.queue:
            self.queue.remove(job)
        free = max(1, math.floor(self.limit)) - len(self.holders)
        return list(self.queue)[: max(free, 0)]

    def observe(self, failure: Failure | None, *, sent_at: float, now: float) -> None:
        """Adapt the limit to a createTask reply."""
        if failure is None:
            step = 1.0 if self.slow_start else 1.0 / self.limit
            self.limit = min(self.max_limit, self.limit + step)
        elif failure.code == ErrorCode.NO_SLOT_AVAILABLE:
            self.slow_start = False
            limit = self.limit
            if now - self.last_decrease >= self.cooldown:
                limit *= self.decrease
                self.last_decrease = now
            # This request itself is one of the holders: the others filled the service.
            self.limit = max(self.min_limit, min(limit, len(self.holders) - 1))


@attrs.define(kw_only=True)
class RetryBudget:
    """Retries spend tokens; first attempts earn `ratio` of one; tokens also accrue at
    `floor_per_second`; at most `max_tokens`. With no token left, retries wait for one, so
    retries stay within `ratio` of the traffic plus the floor rate (the design of Finagle's
    RetryBudget and of the AWS SDKs' retry quota, waiting instead of failing)."""

    ratio: float = attrs.field(default=0.2, validator=attrs.validators.ge(0))
    floor_per_second: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))
    max_tokens: float = attrs.field(default=100.0, validator=attrs.validators.ge(1))
    tokens: float = 10.0
    updated: float | None = None
    """When `tokens` was last brought up to date (None: not yet used; the floor rate
    accrues from the first use on)."""
    retries: int = 0
    first_attempts: int = 0

    def __attrs_post_init__(self) -> None:
        self.tokens = min(self.tokens, self.max_tokens)  # never more saved than the cap

    def _refill(self, now: float) -> None:
        if self.updated is None:
            self.updated = now
        elif now > self.updated:
            self.tokens = min(
                self.max_tokens, self.tokens + (now - self.updated) * self.floor_per_second
            )
            self.updated = now

    def hold(self, now: float) -> Hold | None:
        """The wait before a retry may go, if the budget is spent."""
        self._refill(now)
        if self.tokens >= 1.0:
            return None
        if self.floor_per_second <= 0:
            return Hold(None, "retry budget spent")
        return Hold(now + (1.0 - self.tokens) / self.floor_per_second, "retry budget spent")

    def spend(self, retry: bool, now: float) -> None:
        """Account for a request that goes now."""
        self._refill(now)
        if retry:
            self.tokens -= 1.0
            self.retries += 1
        else:
            self.tokens = min(self.max_tokens, self.tokens + self.ratio)
            self.first_attempts += 1


@attrs.define(kw_only=True)
class AdaptiveRate:
    """Paces requests once the account has said RATE_LIMITED (16 or HTTP 429).

    On such a reply the gate measures the requests the service accepted in the last
    `window` seconds: that is the account's `ceiling`, and the rate becomes `safety` times
    it. While requests wait for their turn, the rate grows by `increase` (a fraction) per
    `window` up to `headroom` times the ceiling, and the ceiling itself creeps up a hundred
    times more slowly, so the gate re-probes a limit that may have been raised without
    hitting it every few seconds. Requests get send times `1 / rate` apart, in the order
    they ask; before the first rate limit nothing is paced.
    """

    window: float = 1.0
    safety: float = 0.9
    increase: float = 0.05
    headroom: float = 0.95
    min_rate: float = 0.1
    min_evidence: int = 5
    """A rate limit seen with fewer of our requests accepted in the window than this (a
    quiet account, or other clients on the key) teaches no rate; the shared pause still
    applies."""
    rate: float | None = None
    ceiling: float | None = None
    next_free: float = -math.inf
    last_change: float = -math.inf
    last_paced: float = -math.inf
    accepted: collections.deque[float] = attrs.field(factory=collections.deque)
    reservations: dict[Hashable, float] = attrs.field(factory=dict)

    def hold(self, job: Hashable, now: float, not_before: float) -> Hold | None:
        """A reserved send time for `job` if it must wait for it."""
        rate = self.rate
        if rate is None:
            return None
        if now - self.last_change >= self.window:
            if now - self.last_paced < self.window and self.ceiling is not None:
                # Under demand only: an idle account must not drift to an untried rate.
                self.ceiling *= 1.0 + self.increase / 100
                rate = min(rate * (1.0 + self.increase), self.ceiling * self.headroom)
                self.rate = rate = max(rate, self.rate or rate)
            self.last_change = now
        at = self.reservations.get(job)
        if at is None:
            at = max(now, self.next_free, not_before)
            self.next_free = at + 1.0 / rate
            self.reservations[job] = at
        if at <= now:
            del self.reservations[job]
            return None
        self.last_paced = now
        return Hold(at, "paced to the account's request rate")

    def observe(self, failure: Failure | None, *, sent_at: float, now: float) -> None:
        """Learn from a reply: a rate limit sets the ceiling to what was accepted."""
        window = self.accepted
        while window and window[0] < now - self.window:
            window.popleft()
        limited = failure is not None and (
            failure.code == ErrorCode.RATE_LIMITED or failure.http_status == 429
        )
        if not limited:
            window.append(sent_at)
            return
        if len(window) < self.min_evidence:
            return  # too little of our own traffic to measure the limit: the pause suffices
        ceiling = max(self.min_rate, len(window) / self.window)
        self.ceiling = ceiling if self.ceiling is None else min(self.ceiling, ceiling)
        measured = max(self.min_rate, self.safety * ceiling)
        if self.rate is None or measured < self.rate:
            self.rate = measured
        self.last_change = now

    def forget(self, job: Hashable) -> None:
        """Drop `job`'s reservation."""
        self.reservations.pop(job, None)

    def restart(self, at: float) -> None:
        """After a pause, hand out send times from `at` again (dropping old reservations, so
        the jobs released by the pause do not all go at once)."""
        self.reservations.clear()
        self.next_free = max(self.next_free, at)


# -- the composition -----------------------------------------------------------------------


@attrs.define(kw_only=True)
class FleetGate:
    """The built-in `AccountGate`: see the module docstring. Any part may be `None`."""

    pause: SharedPause | None = attrs.field(factory=SharedPause)
    circuit: CircuitBreaker | None = attrs.field(factory=CircuitBreaker)
    concurrency: AdaptiveConcurrency | None = attrs.field(factory=AdaptiveConcurrency)
    budget: RetryBudget | None = attrs.field(factory=RetryBudget)
    rate: AdaptiveRate | None = attrs.field(factory=AdaptiveRate)
    rng: random.Random = attrs.field(factory=random.Random, repr=False, eq=False)
    live: set[Hashable] = attrs.field(factory=set, repr=False)
    _wake: list[Hashable] = attrs.field(factory=list, repr=False, alias="_wake")

    def register(self, job: Hashable, now: float) -> None:
        """Track `job` so that account-wide events can wake it."""
        self.live.add(job)

    def standing(self, job: Hashable, endpoint: Endpoint, now: float) -> Refuse | Hold | None:
        """An open circuit's refusal, else the account's pause, else None."""
        if self.circuit is not None:
            refusal = self.circuit.refuse(job, endpoint, now, probe=False)
            if refusal is not None:
                return refusal
        if self.pause is not None:
            return self.pause.hold(endpoint, now)
        return None

    def admit(self, job: Hashable, endpoint: Endpoint, *, retry: bool, now: float) -> GateDecision:
        """Circuit, pause, retry budget, task slots, then pacing, in that order."""
        if self.circuit is not None:
            refusal = self.circuit.refuse(job, endpoint, now)
            if refusal is not None:
                return refusal
        pause_end = -math.inf
        if self.pause is not None:
            held = self.pause.hold(endpoint, now)
            if held is not None:
                return held
            pause_end = self.pause.until
        if retry and self.budget is not None:
            held = self.budget.hold(now)
            if held is not None:
                return held
        if endpoint is _CREATE and self.concurrency is not None:
            held = self.concurrency.acquire(job)
            if held is not None:
                return held
        if self.rate is not None:
            held = self.rate.hold(job, now, pause_end)
            if held is not None:
                return held
        if self.budget is not None:
            self.budget.spend(retry, now)
        return ADMIT

    def observe(
        self,
        job: Hashable,
        endpoint: Endpoint,
        failure: Failure | None,
        *,
        sent_at: float,
        now: float,
    ) -> None:
        """Feed every part the reply; wake whoever the change concerns."""
        if self.circuit is not None and self.circuit.observe(job, failure, now):
            self._wake.extend(self.live)
        if self.pause is not None and self.pause.observe(failure, now, self.rng):
            if self.rate is not None:
                self.rate.restart(max(self.pause.until, now))
            self._wake.extend(self.live)
        if self.rate is not None:
            self.rate.observe(failure, sent_at=sent_at, now=now)
        if endpoint is _CREATE and self.concurrency is not None:
            self.concurrency.observe(failure, sent_at=sent_at, now=now)
            if failure is not None:
                self._wake.extend(self.concurrency.release(job))

    def release(self, job: Hashable, now: float) -> None:
        """Forget `job`; pass its task slot on."""
        self.live.discard(job)
        if self.concurrency is not None:
            self._wake.extend(self.concurrency.release(job))
        if self.rate is not None:
            self.rate.forget(job)

    def wakeups(self) -> list[Hashable]:
        """Jobs to re-run now (each once, in order)."""
        if not self._wake:
            return []
        woken = list(dict.fromkeys(self._wake))
        self._wake.clear()
        return woken

    def reset(self) -> None:
        """Close the circuit after the operator fixed the account."""
        if self.circuit is not None:
            self.circuit.reset()


def _name(failure: Failure | None) -> str:
    if failure is None:
        return "backoff"
    code = f" ({failure.code})" if failure.code is not None else ""
    return f"{failure.name}{code}"
