"""The account's balance (getBalance), as a sans-IO call: like a job, but one request.

`BalanceQuery` answers `next_action(now)` with `Send`, `Wait` or `Finished` and is fed each
outcome, exactly as a `Job` is; its failures go through the same retry policy, under the same
rules (the server's hint and `MIN_WAIT` are floors, nothing waits past the deadline, a policy
that raises or answers garbage is a `PolicyError`). It never sleeps, reads no clock and does
no I/O; `Engine.balance()` drives it.
"""

from __future__ import annotations

from captchaflow.policies import Failure, RetryContext, RetryPolicy
from captchaflow.transports import ApiKey, ApiRequest

from ._classify import Balance, Outcome
from ._errors import CaptchaflowError, DeadlineExceededError, JobStateError, PolicyError
from ._job import FINISHED, Action, Send, Stop, Wait, check_timeout, error_for, judge_failure

__all__ = ["BalanceQuery"]


class BalanceQuery:
    """One getBalance call on `key`'s account, retried as `policy` says until `timeout`
    seconds after `now`. When finished, `balance` holds the amount or `error` says why not."""

    __slots__ = (
        "_awaiting",
        "_next_at",
        "_previous_delay",
        "attempt",
        "balance",
        "deadline",
        "error",
        "key",
        "last_failure",
        "policy",
        "requests_sent",
    )

    def __init__(self, key: ApiKey, *, policy: RetryPolicy, now: float, timeout: float) -> None:
        check_timeout(timeout)
        self.key = key
        self.policy = policy
        self.deadline = now + timeout
        self.attempt = 0
        self.requests_sent = 0
        self.balance: float | None = None
        self.error: CaptchaflowError | None = None
        self.last_failure: Failure | None = None
        self._previous_delay: float | None = None
        self._next_at = now
        self._awaiting = False

    @property
    def finished(self) -> bool:
        """Whether the call has its balance or its error."""
        return self.balance is not None or self.error is not None

    def next_action(self, now: float) -> Action:
        """What the driver should do at time `now`."""
        if self.finished:
            return FINISHED
        if self._awaiting:
            raise JobStateError("a reply is still awaited; feed it before asking again")
        if now >= self.deadline:
            self.error = DeadlineExceededError(
                "no balance within the deadline",
                name="DEADLINE_EXCEEDED",
                failure=self.last_failure,
                reason=f"after {self.requests_sent} request(s)",
            )
            return FINISHED
        if now < self._next_at:
            return Wait(self._next_at)
        self._awaiting = True
        self.requests_sent += 1
        return Send(ApiRequest.get_balance(self.key))

    def feed(self, outcome: Outcome, now: float) -> None:
        """Tell the call what its request came back with, at time `now`."""
        if not self._awaiting:
            raise JobStateError("no request is awaiting a reply")
        self._awaiting = False
        if isinstance(outcome, Balance):
            self.balance = outcome.amount
            return
        if not isinstance(outcome, Failure):
            raise JobStateError(f"{type(outcome).__name__} is not a reply to /getBalance")
        self.attempt += 1
        self.last_failure = outcome
        context = RetryContext(
            attempt=self.attempt,
            resubmits=0,
            now=now,
            deadline=self.deadline,
            previous_delay=self._previous_delay,
        )
        verdict = judge_failure(self.policy, outcome, context)
        if isinstance(verdict, Stop):
            if verdict.policy_at_fault:
                self.error = PolicyError(self.key.redact(verdict.reason), name="POLICY_ERROR")
            else:
                self.error = error_for(outcome, verdict.reason)
            return
        # A Resubmit means nothing here (there is no task): it is retried like any other.
        self._previous_delay = verdict.delay
        self._next_at = now + verdict.delay

    def fail_bug(self, reason: str) -> None:
        """The transport failed in a way no network does: the call fails with PolicyError."""
        self._awaiting = False
        self.error = PolicyError(self.key.redact(reason), name="POLICY_ERROR")
