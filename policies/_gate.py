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

`FleetGate` is the built-in gate. It tells apart what is account-wide by the API's own word
from per-request noise, and acts on noise only with evidence:

- `SharedPause`: 16 and 21 pause every job of the account until their `retryAfterSec` has
  passed; without a hint, for one shared backoff, after which one probe request goes first
  and the rest follow its success. 17 and 18 pause new tasks only, the same way;
- `FailureRateBreaker`: per-request noise (gateway 429/5xx, refused connections, timeouts,
  malformed bodies) is each job's own business, handled by its retry policy, until the
  failure rate of an endpoint over a sliding window, with a minimum number of calls, says
  the service is down; then that endpoint pauses, and probes, as above (resilience4j's
  circuit breaker, Envoy's outlier detection, Finagle's failure accrual);
- `CircuitBreaker`: a permanent account error (1, 3, 14, 15) fails every job that has no task
  yet, at once, and sends nothing more on the key until `reset()` (or a cool-down); jobs whose
  task exists keep polling when the error leaves polling possible (3: the task is paid for);
- `AdaptiveConcurrency`: no bound until the service says NO_SLOT_AVAILABLE (2); then tasks in
  flight are bounded by what filled it, with additive increase, multiplicative decrease,
  and, while jobs wait, one createTask at a time beyond the bound (a freed slot is known
  at the next poll; a probe takes it at once);
- `AdaptiveRate`: after a RATE_LIMITED (16) the gate learns the rate the account accepts
  (never below what it was seen to accept) and paces every request to it, probing upwards
  while requests wait; once task slots are bounded, createTasks go before queued polls;
- `StartupWindow`: until the account first answers, at most 32 requests go out, so a
  start-up burst meets the account's limits a few requests at a time;
- `RetryBudget` (off by default): retries may use at most a share of the traffic;
- `TaskDurations`: learns how long this account's tasks take, from acceptance to the end of
  their job; once slots are scarce, a job asks (`expected_task_seconds`) before it creates a
  task, and creates none it would probably not see solved before its deadline (it would be
  paid for and lost, and hold a slot a job with more time could use).

Every part is inert until its signal arrives, so on a healthy account the default gate sends
what `OpenGate` sends (a start-up burst beyond 32 requests waits one round trip).

The gate is sans-IO like the rest of the core: time comes in as arguments, randomness from
its `rng`.
"""

from __future__ import annotations

import collections
import heapq
import math
import random
from collections.abc import Hashable
from typing import Any, Final, Protocol, TypeAlias, runtime_checkable

import attrs

from captchaflow.transports import Endpoint, ErrorCode

from ._failure import Bucket, Failure

__all__ = [
    "AccountGate",
    "AdaptiveConcurrency",
    "AdaptiveRate",
    "Admit",
    "CircuitBreaker",
    "FailureRateBreaker",
    "FleetGate",
    "GateDecision",
    "Hold",
    "OpenGate",
    "PauseState",
    "Refuse",
    "RetryBudget",
    "SharedPause",
    "StartupWindow",
    "TaskDurations",
    "TimingGate",
]

_CREATE: Final = Endpoint.CREATE_TASK
_TOKEN_SLACK: Final = 1e-9
_RATE_LIMITED: Final = ErrorCode.RATE_LIMITED
_PAUSING_CODES: Final = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.SERVICE_UNAVAILABLE})
_QUOTA_CODES: Final = frozenset({ErrorCode.DAILY_LIMIT_EXCEEDED, ErrorCode.QUOTA_LIMIT_EXCEEDED})
_NOISE: Final = frozenset(
    {Bucket.TRANSIENT_HTTP, Bucket.NOT_SENT, Bucket.AMBIGUOUS, Bucket.MALFORMED}
)
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


@runtime_checkable
class TimingGate(AccountGate, Protocol):
    """An `AccountGate` that also learns how long this account's tasks take. Before a job
    creates a task it asks `expected_task_seconds()`; it creates none when less time than
    that is left before its deadline (and a job waiting for the gate wakes at the last
    moment a task could still pay off, to fail then rather than at its deadline)."""

    def expected_task_seconds(self) -> float | None:
        """The seconds a task created now needs, from its acceptance until its job sees it
        solved, that a job should count on; None while unknown. Must be a finite number of
        seconds >= 0 or None (anything else fails the asking job with `PolicyError`)."""
        ...

    def task_left_running(self, job: Hashable, now: float) -> None:
        """`job` ends now, before `release`, while its task may still be solving (it gave up
        at its deadline or was cancelled while polling): the task still fills a slot of
        the service for a while."""
        ...


@runtime_checkable
class SlotQueueGate(AccountGate, Protocol):
    """An `AccountGate` that holds createTasks in a queue until a task slot of the account
    is free. When `queues_for_slots()` is True, a job whose createTask the service refused
    with NO_SLOT_AVAILABLE counts the refusal as no attempt and retries after its policy's
    first backoff (`RetryContext.attempt` 1), not an escalating one: the account is full,
    the task has not failed, and the gate's queue does the waiting. Without it (no gate, or
    a gate that does not queue) a refusal is a failed attempt like any other, whose backoff
    grows: that is what keeps jobs with nothing to hold them from hammering a full account.

    Measured by `benchmarks/slot_refusals.py` in virtual time (one account of 20 slots at
    30 requests/s, 2 +- 1 s solves, 200 jobs in flight, 3 seeds): 400 tasks in 46.5 s on
    average against 48.6 s with the escalating backoff, 2,000 tasks in 217.8 s against
    227.5 s; with 10 slots, 400 tasks in 91.5 s against 99.1 s. The escalation left a few
    jobs each refused four or five times in a row waiting 4 to 8.5 s at the end of a run
    while slots stood free, and a sixth refusal in a row failed the task."""

    def queues_for_slots(self) -> bool:
        """Whether a createTask refused for want of a slot waits in this gate's queue now.
        Must be a bool (anything else, or raising, fails the asking job with
        `PolicyError`)."""
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


def _backoff(base: float, cap: float, strikes: int, rng: random.Random) -> float:
    """Equal jitter: half of `min(cap, base * 2 ** (strikes - 1))`, plus up to as much again."""
    ceiling = min(cap, base * 2.0 ** min(strikes - 1, 32))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


@attrs.define(kw_only=True)
class PauseState:
    """One pause: until when, why, and whether a probe must succeed before the rest go.

    Before `until`, every request it covers is held until then. After it, if `probing`, one
    job at a time (the probe) may send and the others wait to be woken by its outcome."""

    until: float = -math.inf
    cause: Failure | None = None
    probing: bool = False
    probe: Hashable | None = None
    strikes: int = 0
    """Failures that paused without a hint since the last success (the backoff's exponent)."""

    def active(self, now: float) -> bool:
        """True while the pause holds requests back (timed, or waiting for a probe)."""
        return now < self.until or self.probing

    def hold(self, job: Hashable, now: float, label: str) -> Hold | None:
        """The hold for `job` now, if any (a probe slot is not taken here: see `claim`)."""
        if now < self.until:
            return Hold(self.until, label, self.cause)
        if self.probing and self.probe is not None and self.probe != job:
            return Hold(None, f"{label}: waiting for a probe request")
        return None

    def timed(self, now: float, label: str) -> Hold | None:
        """The hold with a known end, if one applies now (no side effects)."""
        return Hold(self.until, label, self.cause) if now < self.until else None

    def claim(self, job: Hashable, now: float) -> None:
        """`job` is about to send: it becomes the probe if one is due."""
        if self.probing and self.probe is None and now >= self.until:
            self.probe = job

    def extend(self, end: float, cause: Failure, *, probe: bool) -> bool:
        """Pause until `end` at least; return True if the pause was extended."""
        self.probe = None
        self.probing = self.probing or probe
        if end > self.until:
            self.until, self.cause = end, cause
            return True
        return False

    def succeed(self) -> bool:
        """A request got through: stop probing; return True if jobs were waiting on it."""
        self.strikes = 0
        waiting = self.probing
        self.probing, self.probe = False, None
        return waiting

    def forget(self, job: Hashable) -> bool:
        """`job` is gone: if it was the probe, free the slot and return True."""
        if self.probe is not None and self.probe == job:
            self.probe = None
            return True
        return False


@attrs.define(kw_only=True)
class SharedPause:
    """Pauses the account on the API's own word: RATE_LIMITED (16) and SERVICE_UNAVAILABLE
    (21) hold every request, DAILY_LIMIT_EXCEEDED (17) and QUOTA_LIMIT_EXCEEDED (18) new
    tasks only.

    With a `retryAfterSec` hint, until the hint has passed (the latest end wins); without
    one, for an equal-jitter backoff of `min(cap, base * 2 ** (n - 1))` seconds, `n` counting
    such replies since the last success, after which one probe request goes first and the
    others follow its success. Gateway pages and network faults never pause here (see
    `FailureRateBreaker`)."""

    base: float = 1.0
    cap: float = 30.0
    account: PauseState = attrs.field(factory=PauseState)
    quota: PauseState = attrs.field(factory=PauseState)

    def pausing(self, failure: Failure) -> bool:
        """Whether `failure` pauses the account (or its new tasks)."""
        return failure.bucket is Bucket.RETRYABLE and failure.code in _PAUSING_CODES | _QUOTA_CODES

    @property
    def until(self) -> float:
        """When the account-wide pause ends."""
        return self.account.until

    def observe(
        self,
        endpoint: Endpoint,
        failure: Failure | None,
        now: float,
        rng: random.Random,
        *,
        job: Hashable | None = None,
    ) -> bool:
        """Update the pauses (`job`: whose reply it is); return True when jobs must be woken
        to see the change."""
        if failure is None or not self.pausing(failure):
            if failure is not None and failure.bucket in _NOISE:
                # Says nothing about the account; but a probe that met noise gives its slot
                # up, so the others do not wait out its own backoff.
                return job is not None and (self.account.forget(job) | self.quota.forget(job))
            # The API answered: the account takes requests (and new tasks, on createTask).
            woken = self.account.succeed()
            return (self.quota.succeed() | woken) if endpoint is _CREATE else woken
        pause = self.quota if failure.code in _QUOTA_CODES else self.account
        if failure.retry_after is not None:
            was_probing = pause.probing
            pause.probing = False
            return pause.extend(now + failure.retry_after, failure, probe=False) or was_probing
        pause.strikes += 1
        end = now + _backoff(self.base, self.cap, pause.strikes, rng)
        return pause.extend(end, failure, probe=True)

    def hold(self, job: Hashable, endpoint: Endpoint, now: float) -> Hold | None:
        """The hold that applies to `job`'s request on `endpoint` now, if any."""
        account, quota = self.account, self.quota
        # The labels are built only for a hold (this runs before every request).
        if account.active(now):
            held = account.hold(job, now, f"account paused: {_name(account.cause)}")
            if held is not None:
                return held
        if endpoint is _CREATE and quota.active(now):
            return quota.hold(job, now, f"new tasks paused: {_name(quota.cause)}")
        return None

    def timed(self, endpoint: Endpoint, now: float) -> Hold | None:
        """The hold with a known end that applies on `endpoint` now (no side effects)."""
        if now < self.account.until:
            return self.account.timed(now, f"account paused: {_name(self.account.cause)}")
        if endpoint is _CREATE and now < self.quota.until:
            return self.quota.timed(now, f"new tasks paused: {_name(self.quota.cause)}")
        return None

    def claim(self, job: Hashable, endpoint: Endpoint, now: float) -> None:
        """`job` sends now: take the probe slots that are due."""
        self.account.claim(job, now)
        if endpoint is _CREATE:
            self.quota.claim(job, now)

    def forget(self, job: Hashable) -> bool:
        """`job` is gone; return True if it was a probe."""
        return self.account.forget(job) | self.quota.forget(job)


@attrs.define(kw_only=True)
class FailureRateBreaker:
    """Pauses an endpoint when the evidence says the service behind it is down.

    Every reply to an endpoint goes into a time-based sliding window of `window` seconds;
    a failure here is per-request noise (gateway 429/5xx, refused connection, timeout,
    malformed body), anything the API itself answered is a success. When the window holds
    at least `min_calls` replies and at least `threshold` of them failed, the endpoint
    pauses for an equal-jitter backoff (`min(cap, base * 2 ** (n - 1))`, `n` counting trips
    since the last success, and never less than the longest `Retry-After` in the window);
    then one probe request goes: its success closes the breaker (the window starts empty),
    its failure pauses again, longer. Isolated noise never trips it: 15% noise is far
    below the threshold, and a quiet account never has `min_calls` replies to judge."""

    window: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    min_calls: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    threshold: float = attrs.field(default=0.5)
    base: float = 1.0
    cap: float = 30.0
    calls: dict[Endpoint, collections.deque[float | tuple[float, float | None]]] = attrs.field(
        factory=dict, repr=False
    )
    """The replies in each endpoint's window, oldest first: the time of one the API answered,
    (time, the failure's `retry_after`) for noise. (Most replies are answered, and a bare
    time costs a job in flight a third of what a pair would: the window holds every reply of
    its last 10 s. A pair holds no `Failure`: a tuple of numbers is one the garbage collector
    stops tracking, where a hundred thousand jobs in flight would give it as many pairs.)"""
    failed: dict[Endpoint, int] = attrs.field(factory=dict, repr=False)
    pauses: dict[Endpoint, PauseState] = attrs.field(factory=dict)

    @threshold.validator
    def _check_threshold(self, _attribute: attrs.Attribute[float], value: float) -> None:
        if not 0 < value <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {value!r}")

    def observe(
        self,
        job: Hashable,
        endpoint: Endpoint,
        failure: Failure | None,
        now: float,
        rng: random.Random,
    ) -> bool:
        """Count a reply; return True when jobs must be woken to see a change."""
        noise = failure if failure is not None and failure.bucket in _NOISE else None
        pause = self.pauses.get(endpoint)
        if pause is not None and pause.active(now):
            if pause.probe is None or pause.probe != job:
                return False  # in flight before the pause: the probe decides
            if noise is None:
                self._reset(endpoint)
                return pause.succeed()
            pause.strikes += 1
            pause.extend(now + self._wait(pause.strikes, noise, rng), noise, probe=True)
            return True  # jobs waiting on the probe now wait for a time
        calls = self.calls.get(endpoint)
        if calls is None:
            calls = self.calls[endpoint] = collections.deque()
        failed = self.failed.get(endpoint, 0)
        if noise is None:
            calls.append(now)
        else:
            calls.append((now, noise.retry_after))
            failed += 1
        horizon = now - self.window
        while calls:
            oldest = calls[0]
            if isinstance(oldest, tuple):
                if oldest[0] > horizon:
                    break
                failed -= 1
            elif oldest > horizon:
                break
            calls.popleft()
        self.failed[endpoint] = failed
        if noise is None or len(calls) < self.min_calls or failed < self.threshold * len(calls):
            if pause is not None and noise is None:
                pause.strikes = 0
            return False
        pause = self.pauses.setdefault(endpoint, PauseState())
        pause.strikes += 1
        hint = max((call[1] or 0.0 for call in calls if isinstance(call, tuple)), default=0.0)
        end = now + max(self._wait(pause.strikes, noise, rng), hint)
        self._reset(endpoint)
        pause.extend(end, noise, probe=True)
        return False

    def _wait(self, strikes: int, failure: Failure, rng: random.Random) -> float:
        return max(_backoff(self.base, self.cap, strikes, rng), failure.retry_after or 0.0)

    def _reset(self, endpoint: Endpoint) -> None:
        self.calls.pop(endpoint, None)
        self.failed.pop(endpoint, None)

    def _label(self, endpoint: Endpoint, pause: PauseState) -> str:
        return f"{endpoint.value} seems down: {_name(pause.cause)}"

    def hold(self, job: Hashable, endpoint: Endpoint, now: float) -> Hold | None:
        """The hold on `job`'s request to `endpoint` now, if the endpoint is paused."""
        pause = self.pauses.get(endpoint)
        if pause is None or not pause.active(now):
            return None
        return pause.hold(job, now, self._label(endpoint, pause))

    def timed(self, endpoint: Endpoint, now: float) -> Hold | None:
        """The hold with a known end on `endpoint` now (no side effects)."""
        pause = self.pauses.get(endpoint)
        if pause is None or now >= pause.until:
            return None
        return pause.timed(now, self._label(endpoint, pause))

    def claim(self, job: Hashable, endpoint: Endpoint, now: float) -> None:
        """`job` sends to `endpoint` now: it becomes the probe if one is due."""
        pause = self.pauses.get(endpoint)
        if pause is not None:
            pause.claim(job, now)

    def forget(self, job: Hashable) -> bool:
        """`job` is gone; return True if it was a probe."""
        return any([pause.forget(job) for pause in self.pauses.values()])


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

    def claim(self, job: Hashable, endpoint: Endpoint, now: float) -> None:
        """`job` sends to `endpoint` now: it becomes the probe if the circuit has cooled."""
        if self.failure is not None and self.probe is None:
            self.refuse(job, endpoint, now, probe=True)

    def forget(self, job: Hashable) -> bool:
        """`job` is gone: if it was the probe, free the slot and return True."""
        if self.probe is not None and self.probe == job:
            self.probe = None
            return True
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


def _positive_or_none(
    _instance: object, attribute: attrs.Attribute[Any], value: float | None
) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0 or None, got {value!r}")


@attrs.define(kw_only=True)
class AdaptiveConcurrency:
    """Bounds the tasks in flight (created and not yet finished) once the service has said
    NO_SLOT_AVAILABLE; until then (`limit` None) it only counts them.

    On NO_SLOT_AVAILABLE the limit becomes the tasks that filled the service (those created
    and not yet finished), or, when already set, decreases by `decrease` (at most
    once per `cooldown` seconds) and never above what filled the service; each accepted
    task then adds `increase`; always within [`min_limit`, `max_limit`]. Jobs beyond the
    limit wait in FIFO order for a permit.

    While jobs wait, one createTask at a time goes beyond the limit, as a probe: the gate
    learns that a slot is free only when a poll finds its task done (at 2-s polls, a second
    after the service freed it, on average), and a probe takes such a slot at once. The
    first job waiting sends it (the queue's order holds); the last keeps the time (it waits
    until the next probe is due, and is woken when a probe comes back). Probes go at most
    every `probe_every` seconds; each refused one (NO_SLOT_AVAILABLE: no slot was free)
    doubles the wait, up to `probe_backoff_cap`, and teaches the limit nothing (it was
    beyond it); an accepted one is a task like any other, and the next probe may go at
    once. Probes start once the service has said NO_SLOT_AVAILABLE (a `limit` given and
    never refused is kept). None: no probes.

    Measured against no probes (`probe_every=None`), 4 seeds each: on 5 slots with 8 +- 3-s
    solves (`benchmarks/short_timeout.py`), tasks solved 113 -> 119 at 10 tasks a second
    with a 30-s timeout (693 -> 843 requests; OpenGate 127 with 6,328) and 766 -> 801 at
    one a second with a 60-s timeout (4,545 -> 6,132; OpenGate 782 with 8,239); on
    `benchmarks/regret.py`'s scarce slots 1,566 -> 1,618 (2 seeds), every other scenario
    unchanged. Probes sent by the last job instead of the first solved more in the first
    case (124) and fewer in the second (1,529): served out of order, the youngest jobs
    take the slots early and the oldest run out of time. A cap of 2 s solved 119 / 779,
    0.5 s 124 / 789 for 15% more requests; no backoff at all 126 / 788 for twice the
    requests."""

    limit: float | None = None
    min_limit: float = 1.0
    max_limit: float = 10_000.0
    increase: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    """Added to the limit per accepted task. 0.5 climbs back to the service's capacity within
    a few rounds after a decrease: measured on the scarce-slots scenario of
    `benchmarks/regret.py`, 12% more tasks solved than `1 / limit` (TCP's one per round),
    for a few more NO_SLOT_AVAILABLE replies."""
    decrease: float = 0.9
    cooldown: float = 5.0
    probe_every: float | None = attrs.field(default=0.25, validator=_positive_or_none)
    probe_backoff_cap: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    holders: dict[Hashable, None] = attrs.field(factory=dict)
    """Jobs holding a permit, in the order they took it (a dict: insertion-ordered)."""
    created: dict[Hashable, None] = attrs.field(factory=dict)
    """Holders whose task exists (their createTask was accepted)."""
    sending: dict[Hashable, None] = attrs.field(factory=dict)
    """Holders whose createTask is in flight (admitted, not yet answered)."""
    queue: collections.deque[Hashable] = attrs.field(factory=collections.deque)
    last_decrease: float = -math.inf
    lingering: dict[Hashable, float] = attrs.field(factory=dict)
    """Tasks whose job ended while they may still be solving (a job that gave up at its
    deadline, or was cancelled), each with when it is expected to have finished: each
    still fills a slot of the service until then, so it holds a permit and counts in what
    filled the service (else the next refusal would teach a limit below the true one)."""
    probing: Hashable | None = attrs.field(default=None, repr=False)
    """The job holding the probe's permit (beyond the limit), if one does."""
    next_probe: float = attrs.field(default=-math.inf, repr=False)
    """When the next probe may go."""
    probe_gap: float | None = attrs.field(default=None, repr=False)
    """The wait between probes now: `probe_every`, doubled by each refused probe up to
    `probe_backoff_cap`, back to `probe_every` at each accepted one (None: not yet)."""

    def _room(self) -> float:
        return math.inf if self.limit is None else max(1, math.floor(self.limit))

    def _expire(self, now: float | None) -> None:
        if self.lingering and now is not None:
            for job in [job for job, until in self.lingering.items() if until <= now]:
                del self.lingering[job]

    def acquire(self, job: Hashable, now: float | None = None) -> Hold | None:
        """Take a permit for `job`, or a hold until one frees (FIFO; until the first
        lingering task is expected to end, if one holds a permit). A permit taken before
        the limit fell is given back while its task does not exist yet."""
        self._expire(now)
        room = self._room() - len(self.lingering)
        if job in self.holders:
            if job in self.created or len(self.holders) <= room or job is self.probing:
                return None
            del self.holders[job]
        if len(self.holders) < room:
            self.holders[job] = None
            if job in self.queue:
                self.queue.remove(job)
            return None
        if job not in self.queue:
            self.queue.append(job)
        until = min(self.lingering.values()) if self.lingering else None
        if (
            self.probe_every is not None
            and now is not None
            and self.probing is None
            and self.queue[-1] is job
            and self.last_decrease > -math.inf  # the service refused a task: a learned limit
        ):
            if now >= self.next_probe:
                # The last job keeps the time; the first takes the permit (FIFO as ever).
                first = self.queue.popleft()
                self.holders[first] = None
                self.probing = first
                gap = self.probe_gap if self.probe_gap is not None else self.probe_every
                self.next_probe = now + gap
                if first is job:
                    return None
            else:
                until = self.next_probe if until is None else min(until, self.next_probe)
        return Hold(until, "waiting for a task slot")

    def release(self, job: Hashable, now: float | None = None) -> list[Hashable]:
        """Drop `job`'s permit and queue place; return the jobs that may now go."""
        self._expire(now)
        self.holders.pop(job, None)
        self.created.pop(job, None)
        self.sending.pop(job, None)
        if job in self.queue:
            self.queue.remove(job)
        free = self._room() - len(self.holders) - len(self.lingering)
        if job is self.probing:
            self.probing = None  # it never sent: the job keeping the time probes again
            if free <= 0 and self.queue:
                return [self.queue[-1]]
        if free <= 0 or not self.queue:
            return []
        return list(self.queue) if math.isinf(free) else list(self.queue)[: int(free)]

    def linger(self, job: Hashable, until: float) -> None:
        """`job`'s task may go on filling a slot until `until` though the job ends now (call
        before `release`): it keeps a permit until then."""
        if job in self.created:
            self.lingering[job] = until

    def observe(
        self, job: Hashable, failure: Failure | None, *, sent_at: float, now: float
    ) -> list[Hashable]:
        """Adapt the limit to `job`'s createTask reply; return the jobs whose permit it took
        back (see `_revoke`)."""
        self.sending.pop(job, None)
        probe = job is self.probing
        if probe:
            self.probing = None
            self._probe_answered(failure, now)
        if failure is None:
            # Its task exists, permit or not: count it (and it no longer waits for a slot).
            self.holders[job] = None
            self.created[job] = None
            if job in self.queue:
                self.queue.remove(job)
            if self.limit is not None:
                self.limit = min(self.max_limit, self.limit + self.increase)
            return []
        if failure.code == ErrorCode.NO_SLOT_AVAILABLE and not probe:
            # The tasks that filled the service: those created, those whose createTask is
            # still in flight (the service may have made them already), and those left
            # solving by jobs that ended.
            self._expire(now)
            filled = len(self.created) + len(self.sending) + len(self.lingering)
            limit = self.limit
            if limit is None:
                limit, self.last_decrease = float(filled), now
            elif sent_at < self.last_decrease:
                # Once per round, as TCP does: a refusal of a request sent before the last
                # decrease says nothing about the limit since (nor does what is in flight
                # now measure what filled the service then).
                return []
            elif now - self.last_decrease >= self.cooldown:
                limit *= self.decrease
                self.last_decrease = now
            self.limit = max(self.min_limit, min(limit, max(filled, 1), self.max_limit))
            return self._revoke()
        return []

    def _probe_answered(self, failure: Failure | None, now: float) -> None:
        """A probe came back: at once again if it took a slot (more may be free), else
        twice as late (none was free), within [`probe_every`, `probe_backoff_cap`]."""
        every = self.probe_every
        if every is None:
            return
        if failure is None:
            self.probe_gap = every
            self.next_probe = now
        elif failure.code == ErrorCode.NO_SLOT_AVAILABLE:
            gap = min(self.probe_backoff_cap, 2 * (self.probe_gap or every))
            self.probe_gap = max(every, gap)
            self.next_probe = now + self.probe_gap

    def _revoke(self) -> list[Hashable]:
        """Take back the permits beyond the limit of jobs whose task does not exist yet
        (taken while the limit was higher); they queue again, first. Return them."""
        room = self._room() - len(self.lingering)
        if math.isinf(room) or len(self.holders) <= room:
            return []
        excess = len(self.holders) - int(room)
        revoked = [
            job
            for job in reversed(self.holders)
            if job not in self.created and job not in self.sending  # not a request in flight
        ][:excess]
        for job in revoked:
            del self.holders[job]
            self.queue.appendleft(job)
            if job is self.probing:
                self.probing = None
        return revoked


@attrs.define(kw_only=True)
class StartupWindow:
    """Until the account first answers, at most `requests` requests go out (TCP's initial
    window): a burst of thousands at start-up learns the account's limits from the first
    few replies instead of from a thousand refusals. It opens for good at the first reply of
    any kind, or `seconds` after the first request, whichever comes first; so it delays
    nothing but the part of a start-up burst beyond `requests`, by one round trip."""

    requests: int = attrs.field(default=32, validator=attrs.validators.ge(1))
    seconds: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))
    sent: int = 0
    first_at: float | None = None
    opened: bool = False

    def hold(self, now: float) -> Hold | None:
        """The hold for one more request now, if the window is full."""
        if self.opened or self.sent < self.requests or self.first_at is None:
            return None
        if now >= self.first_at + self.seconds:
            self.opened = True
            return None
        return Hold(self.first_at + self.seconds, "waiting for the account's first reply")

    def spend(self, now: float) -> None:
        """Count a request that goes now."""
        if not self.opened:
            self.sent += 1
            if self.first_at is None:
                self.first_at = now

    def observe(self) -> bool:
        """The account answered: open; return True if jobs may be waiting on it."""
        if self.opened:
            return False
        self.opened = True
        return self.sent >= self.requests


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
        if self.tokens >= 1.0 - _TOKEN_SLACK:  # float sums of `ratio` land just short of 1
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


def _unit_interval(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{attribute.name} must be within [0, 1], got {value!r}")


@attrs.define(kw_only=True)
class TaskDurations:
    """How long this account's tasks hold it: from the acceptance of a job's createTask to
    the end of that job (solved, failed, or given up at its deadline), over the last
    `memory` tasks. `estimate()` is their `quantile` once `min_samples` are known, else None.

    A job that waited for a slot so long that its task would probably outlive its deadline
    creates none, so it neither pays for a task it never sees nor holds a slot another job
    could have used. The default quantile, 0.9, is measured (`benchmarks/regret.py`,
    scarce-slots, 4 seeds): tasks solved 708 without it, 752 at 0.5, 770 at 0.75, 782 at
    0.9 and at 0.95; no other scenario of the matrix changes. So is `min_samples`, 10 (with
    fewer than ten durations the 0.9 quantile is the longest seen): where few tasks fit in a
    short timeout (`benchmarks/short_timeout.py`, 300 tasks at 10 a second, 5 slots, a 30-s
    timeout, 4 seeds) the gate waited for 20 durations until most jobs were over, every slot
    freed meanwhile went to the job nearest its deadline, and 81 tasks were solved (22 paid
    for and never seen); 101 at 1, 110 at 5, 113 at 10 (7 never seen); OpenGate solves 127.
    Neither `regret.py`'s matrix nor `storm.py` changes."""

    quantile: float = attrs.field(default=0.9, validator=_unit_interval)
    memory: int = attrs.field(default=200, validator=attrs.validators.ge(1))
    min_samples: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    started: dict[Hashable, float] = attrs.field(factory=dict, repr=False)
    """When each live job's task was accepted."""
    recent: collections.deque[float] = attrs.field(init=False, repr=False)
    # No setter hooks on the fields below (they have no validator): `finish` runs at the
    # end of every job, and attrs would otherwise send each assignment through them.
    _estimate: float | None = attrs.field(
        default=None, init=False, repr=False, on_setattr=attrs.setters.NO_OP
    )
    _unsorted: int = attrs.field(default=0, init=False, repr=False, on_setattr=attrs.setters.NO_OP)
    """Durations recorded since `_estimate` was computed."""

    def __attrs_post_init__(self) -> None:
        self.recent = collections.deque(maxlen=self.memory)

    def start(self, job: Hashable, now: float) -> None:
        """`job`'s task was accepted at `now`."""
        self.started.setdefault(job, now)

    def finish(self, job: Hashable, now: float) -> None:
        """`job` ended at `now`: record how long its task (if it had one) lasted."""
        accepted = self.started.pop(job, None)
        if accepted is not None and now >= accepted:
            self.recent.append(now - accepted)
            self._unsorted += 1

    def estimate(self) -> float | None:
        """The `quantile` of the recent durations; None with fewer than `min_samples`.
        Recomputed once per `memory / 16` new durations (so asking is cheap)."""
        if len(self.recent) < self.min_samples:
            return None
        if self._estimate is None or self._unsorted >= max(1, self.memory // 16):
            ordered = sorted(self.recent)
            self._estimate = ordered[min(len(ordered) - 1, int(self.quantile * len(ordered)))]
            self._unsorted = 0
        return self._estimate


@attrs.define(kw_only=True)
class AdaptiveRate:
    """Paces requests once the account has said RATE_LIMITED (16, the API's own word).

    On such a reply the gate measures the requests the service accepted in the last
    `window` seconds (or the most it was ever seen to accept in one window, if more): that
    is the account's `ceiling`, and the rate becomes `safety` times it. While requests wait
    for their turn, the rate grows by `increase` (a fraction) per `window` up to `headroom`
    times the ceiling, and the ceiling itself creeps up a hundred times more slowly, so the
    gate re-probes a limit that may have been raised without hitting it every few seconds.
    Requests get send times `1 / rate` apart, in the order they ask, except that one asked
    to go `first` takes the earliest send time reserved by a request that was not (that
    request moves to the end of the queue); before the first rate limit nothing is paced.
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
    last_admitted: float = -math.inf
    peak: int = 0
    """The most requests the account accepted within one `window` so far: the learned rate
    never falls below `safety` times it."""
    reservations: dict[Hashable, float] = attrs.field(factory=dict)
    yielding: dict[Hashable, None] = attrs.field(factory=dict)
    """Jobs whose reservation a request going `first` may take (their request yields)."""
    _by_time: list[tuple[float, int, Hashable]] = attrs.field(factory=list, alias="_by_time")
    """The yielding reservations as a heap of (send time, order, job); an entry whose job's
    reservation has changed since is stale and skipped."""
    _pushed: int = attrs.field(default=0, alias="_pushed")

    def _reserve(self, job: Hashable, at: float, *, yielding: bool) -> None:
        self.reservations[job] = at
        if not yielding:
            self.yielding.pop(job, None)
            return
        self.yielding[job] = None
        self._pushed += 1
        heapq.heappush(self._by_time, (at, self._pushed, job))

    def _earliest_yielding(self) -> tuple[float, Hashable] | None:
        heap = self._by_time
        while heap:
            at, _, job = heap[0]
            if job in self.yielding and self.reservations.get(job) == at:
                return at, job
            heapq.heappop(heap)
        return None

    def hold(
        self, job: Hashable, now: float, not_before: float, *, first: bool = False
    ) -> Hold | None:
        """A reserved send time for `job` if it must wait for it. A request going `first`
        takes the earliest send time reserved by one that does not (which moves to the end of
        the queue)."""
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
            taken = self._earliest_yielding() if first else None
            if taken is not None and taken[0] >= not_before:
                # Take the earliest yielding send time; its job goes to the end of the queue.
                at, other = taken
                heapq.heappop(self._by_time)
                self._reserve(other, max(now, self.next_free), yielding=True)
                self.next_free = self.reservations[other] + 1.0 / rate
            else:
                at = max(now, self.next_free, not_before)
                self.next_free = at + 1.0 / rate
                if at <= now:
                    # It goes now: the reservation would be dropped as soon as made (and no
                    # other request can take a send time that is already due).
                    self.last_admitted = max(self.last_admitted, at)
                    return None
            self._reserve(job, at, yielding=not first)
        if at <= now:
            self.forget(job)
            self.last_admitted = max(self.last_admitted, at)
            return None
        self.last_paced = now
        return Hold(at, "paced to the account's request rate")

    def observe(self, failure: Failure | None, *, sent_at: float, now: float) -> None:
        """Learn from a reply: the API's RATE_LIMITED sets the ceiling to what was accepted
        (never below the most the account was seen to accept in one window). Gateway 429s
        and other noise teach nothing: they are not the account's limit."""
        window = self.accepted
        horizon = now - self.window
        while window and window[0] < horizon:
            window.popleft()
        limited = failure is not None and failure.code == _RATE_LIMITED
        if not limited:
            if failure is None or failure.bucket not in _NOISE:
                window.append(sent_at)  # the account took it (an answer is an answer)
                if len(window) > self.peak:
                    self.peak = len(window)
            return
        if len(window) < self.min_evidence:
            return  # too little of our own traffic to measure the limit: the pause suffices
        ceiling = max(self.min_rate, len(window) / self.window, self.peak / self.window)
        self.ceiling = ceiling if self.ceiling is None else min(self.ceiling, ceiling)
        measured = max(self.min_rate, self.safety * self.ceiling)
        if self.rate is None or measured < self.rate:
            self.rate = measured
        self.last_change = now

    def forget(self, job: Hashable) -> None:
        """Drop `job`'s reservation."""
        self.reservations.pop(job, None)
        self.yielding.pop(job, None)

    def rewind(self, now: float) -> list[Hashable]:
        """After reservations were dropped, close the gaps they left: the reservations still
        held move up, in their order, to `1 / rate` apart from the last send (or `now`).
        Return the jobs whose send time moved (they must be woken to see it)."""
        rate = self.rate
        if rate is None:
            return []
        at = max(now, self.last_admitted + 1.0 / rate)
        moved = []
        for job, reserved in sorted(self.reservations.items(), key=lambda item: item[1]):
            if reserved > at:
                self._reserve(job, at, yielding=job in self.yielding)
                moved.append(job)
            at = max(at, self.reservations[job]) + 1.0 / rate
        self.next_free = at
        return moved

    def restart(self, at: float) -> None:
        """After a pause, hand out send times from `at` again (dropping old reservations, so
        the jobs released by the pause do not all go at once)."""
        self.reservations.clear()
        self.yielding.clear()
        self._by_time.clear()
        self.next_free = max(self.next_free, at)


# -- the composition -----------------------------------------------------------------------


@attrs.define(kw_only=True)
class FleetGate:
    """The built-in `AccountGate`: see the module docstring. Any part may be `None`; the
    retry budget is off unless given."""

    startup: StartupWindow | None = attrs.field(factory=StartupWindow)
    pause: SharedPause | None = attrs.field(factory=SharedPause)
    breaker: FailureRateBreaker | None = attrs.field(factory=FailureRateBreaker)
    circuit: CircuitBreaker | None = attrs.field(factory=CircuitBreaker)
    concurrency: AdaptiveConcurrency | None = attrs.field(factory=AdaptiveConcurrency)
    budget: RetryBudget | None = None
    rate: AdaptiveRate | None = attrs.field(factory=AdaptiveRate)
    durations: TaskDurations | None = attrs.field(factory=TaskDurations)
    rng: random.Random = attrs.field(factory=random.Random, repr=False, eq=False)
    live: dict[Hashable, None] = attrs.field(factory=dict, repr=False)
    """Jobs of the account, in the order they registered (a dict: insertion-ordered, so a
    seeded run wakes jobs in the same order every time)."""
    _wake: list[Hashable] = attrs.field(factory=list, repr=False, alias="_wake")

    def register(self, job: Hashable, now: float) -> None:
        """Track `job` so that account-wide events can wake it."""
        self.live[job] = None

    # The three methods below run for every request of every job. Each skips a part whose
    # own method would do nothing, which it can tell only for the built-in part itself
    # (`type(part) is ...`: a subclass is always asked): a closed circuit, pauses not in
    # force, an opened start-up window, pacing not started, and so on.

    def standing(self, job: Hashable, endpoint: Endpoint, now: float) -> Refuse | Hold | None:
        """An open circuit's refusal, else a pause with a known end, else None."""
        circuit = self.circuit
        if circuit is not None and (
            type(circuit) is not CircuitBreaker or circuit.failure is not None
        ):
            refusal = circuit.refuse(job, endpoint, now, probe=False)
            if refusal is not None:
                return refusal
        pause = self.pause
        if pause is not None and (
            type(pause) is not SharedPause or now < pause.account.until or now < pause.quota.until
        ):
            held = pause.timed(endpoint, now)
            if held is not None:
                return held
        breaker = self.breaker
        if breaker is not None and (type(breaker) is not FailureRateBreaker or breaker.pauses):
            return breaker.timed(endpoint, now)
        return None

    def admit(self, job: Hashable, endpoint: Endpoint, *, retry: bool, now: float) -> GateDecision:
        """Circuit, pauses, retry budget, task slots, then pacing, in that order; a job that
        gets through becomes the probe of any pause (or cooled circuit) that waits for one."""
        circuit = self.circuit
        if type(circuit) is CircuitBreaker and circuit.failure is None:
            circuit = None  # closed: refuses nothing, and has no probe to hand out
        if circuit is not None:
            refusal = circuit.refuse(job, endpoint, now, probe=False)
            if refusal is not None:
                return refusal
        pause_end = -math.inf
        pause = self.pause
        if pause is not None:
            account = pause.account if type(pause) is SharedPause else None
            if (
                account is None
                or type(account) is not PauseState
                or now < account.until  # (`PauseState.active`, inlined)
                or account.probing
                or (endpoint is _CREATE and pause.quota.active(now))
            ):
                held = pause.hold(job, endpoint, now)
                if held is not None:
                    return held
            pause_end = pause.until if account is None else account.until
        breaker = self.breaker
        if type(breaker) is FailureRateBreaker and not breaker.pauses:
            breaker = None  # no endpoint paused: holds nothing, has no probe to hand out
        if breaker is not None:
            held = breaker.hold(job, endpoint, now)
            if held is not None:
                return held
        startup = self.startup
        if type(startup) is StartupWindow and startup.opened:
            startup = None  # open for good: holds nothing, counts nothing
        if startup is not None:
            held = startup.hold(now)
            if held is not None:
                return held
        if retry and self.budget is not None:
            held = self.budget.hold(now)
            if held is not None:
                return held
        concurrency = self.concurrency
        if endpoint is _CREATE and concurrency is not None:
            probing = concurrency.probing
            held = concurrency.acquire(job, now)
            if held is not None:
                if concurrency.probing is not probing and concurrency.probing is not None:
                    self._wake.append(concurrency.probing)  # a probe's permit, taken for it
                return held
        rate = self.rate
        if rate is not None and (type(rate) is not AdaptiveRate or rate.rate is not None):
            # Once task slots are scarce, a createTask goes before queued polls: it fills a
            # slot the account would leave idle, while a poll put back only finds its task
            # a little later (and cannot starve: no permit frees until a poll finds a task
            # finished).
            first = (
                endpoint is _CREATE and concurrency is not None and concurrency.limit is not None
            )
            held = rate.hold(job, now, pause_end, first=first)
            if held is not None:
                return held
        if self.budget is not None:
            self.budget.spend(retry, now)
        if startup is not None:
            startup.spend(now)
        if endpoint is _CREATE and concurrency is not None:
            concurrency.sending[job] = None
        if circuit is not None:
            circuit.claim(job, endpoint, now)
        if pause is not None and (
            account is None
            or type(account) is not PauseState
            or account.probing  # (`_unprobed`, inlined: this runs for every request)
            or (endpoint is _CREATE and not _unprobed(pause.quota))
        ):
            pause.claim(job, endpoint, now)
        if breaker is not None:
            breaker.claim(job, endpoint, now)
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
        startup = self.startup
        wake_all = (
            startup is not None
            and (type(startup) is not StartupWindow or not startup.opened)
            and startup.observe()
        )
        circuit = self.circuit
        if (
            circuit is not None
            and (
                type(circuit) is not CircuitBreaker
                or circuit.probe is not None
                or (failure is not None and failure.bucket is Bucket.PERMANENT)
            )
            and circuit.observe(job, failure, now)
        ):
            wake_all = True
        pause = self.pause
        account = pause.account if type(pause) is SharedPause else None
        if pause is not None and (
            failure is not None
            or account is None
            or type(account) is not PauseState  # (`_settled`, inlined: this runs for every reply)
            or account.strikes
            or account.probing
            or account.probe is not None
            or (endpoint is _CREATE and not _settled(pause.quota))
        ):
            until = pause.until
            if pause.observe(endpoint, failure, now, self.rng, job=job):
                wake_all = True
                if self.rate is not None and pause.until > until:
                    self.rate.restart(max(pause.until, now))
        if self.breaker is not None and self.breaker.observe(job, endpoint, failure, now, self.rng):
            wake_all = True
        if self.rate is not None:
            self.rate.observe(failure, sent_at=sent_at, now=now)
        if endpoint is _CREATE:
            if failure is None and self.durations is not None:
                self.durations.start(job, now)
            concurrency = self.concurrency
            if concurrency is not None:
                probe = job is concurrency.probing
                revoked = concurrency.observe(job, failure, sent_at=sent_at, now=now)
                if probe and concurrency.queue:
                    self._wake.append(concurrency.queue[-1])  # the next probe's job
                if revoked and self.rate is not None:
                    for other in revoked:
                        self.rate.forget(other)
                    self._wake.extend(self.rate.rewind(now))
                if failure is not None:
                    self._wake.extend(concurrency.release(job, now))
        if wake_all:
            self._wake.extend(self.live)

    def release(self, job: Hashable, now: float) -> None:
        """Forget `job`; pass its task slot (and any probe it was) on."""
        self.live.pop(job, None)
        if self.durations is not None:
            self.durations.finish(job, now)
        if self.concurrency is not None:
            self._wake.extend(self.concurrency.release(job, now))
        if self.rate is not None:
            self.rate.forget(job)
        # As `admit` does, a built-in part with no probe to give up is not asked.
        pause, circuit, breaker = self.pause, self.circuit, self.breaker
        if (
            type(pause) is SharedPause
            and type(pause.account) is PauseState
            and type(pause.quota) is PauseState
            and pause.account.probe is None
            and pause.quota.probe is None
        ):
            pause = None  # neither pause awaits a probe: `forget` would change nothing
        if type(circuit) is CircuitBreaker and circuit.probe is None:
            circuit = None
        if type(breaker) is FailureRateBreaker and not breaker.pauses:
            breaker = None
        probe = pause is not None and pause.forget(job)
        probe = (circuit is not None and circuit.forget(job)) or probe
        if (breaker is not None and breaker.forget(job)) or probe:
            self._wake.extend(self.live)

    def task_left_running(self, job: Hashable, now: float) -> None:
        """`job` ends now (its `release` follows) while its task may still be solving: the
        task keeps its slot (and permit) until `TaskDurations` expects it done (its
        acceptance plus the estimate; without one, as long again as it has run)."""
        if self.concurrency is None:
            return
        accepted = self.durations.started.get(job) if self.durations is not None else None
        if accepted is None:
            return
        estimate = self.durations.estimate() if self.durations is not None else None
        until = accepted + estimate if estimate is not None else now + (now - accepted)
        if until > now:
            self.concurrency.linger(job, until)

    def expected_task_seconds(self) -> float | None:
        """What `TaskDurations` estimates, once task slots are scarce (the service said
        NO_SLOT_AVAILABLE, so `AdaptiveConcurrency` bounds them): a job that gives up a task
        it would probably not see solved leaves the slot to one that has more time. None
        before that, without those parts, or until the estimate is known; see
        `TimingGate`."""
        slots = self.concurrency
        if self.durations is None or slots is None or slots.limit is None:
            return None
        return self.durations.estimate()

    def queues_for_slots(self) -> bool:
        """Whether a createTask the service refused with NO_SLOT_AVAILABLE waits for a slot
        in this gate's queue: True once task slots are scarce (`AdaptiveConcurrency`
        bounds them); see `SlotQueueGate`."""
        slots = self.concurrency
        return slots is not None and slots.limit is not None

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


def _unprobed(pause: PauseState) -> bool:
    """Whether `PauseState.claim` would leave `pause` as it is: no probe awaited."""
    return type(pause) is PauseState and not pause.probing


def _settled(pause: PauseState) -> bool:
    """Whether a success would leave `pause` as it is (`PauseState.succeed` would change
    nothing and return False): no strikes, no probe awaited."""
    return (
        type(pause) is PauseState
        and not pause.strikes
        and not pause.probing
        and (pause.probe is None)
    )


def _name(failure: Failure | None) -> str:
    if failure is None:
        return "backoff"
    code = f" ({failure.code})" if failure.code is not None else ""
    return f"{failure.name}{code}"
