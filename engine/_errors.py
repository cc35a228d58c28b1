"""The exceptions users catch. One base class; one subclass per kind of failure.

Every error raised for a job carries the failure's `code` and `name`, a `message`, the
`reason` the job stopped, the job's `history` (its moves, oldest first) and its `task_id`
when the provider had assigned one. None of them ever contains the API key: the engine
redacts it from every server text before it is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from captchaflow.policies import Bucket

if TYPE_CHECKING:
    from captchaflow.policies import Failure
    from captchaflow.transports import TaskId

    from ._fsm import Move

__all__ = [
    "BadRequestError",
    "CaptchaflowError",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "GaveUpError",
    "HttpStatusError",
    "IllegalTransitionError",
    "InvalidTaskError",
    "JobCancelledError",
    "JobStateError",
    "MalformedReplyError",
    "NoReplyError",
    "PermanentError",
    "PolicyError",
    "RetriesExhaustedError",
    "UnknownCodeError",
    "UnsolvableError",
    "error_class_for",
]


class CaptchaflowError(Exception):
    """Base of every error this library raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        name: str = "",
        code: int | None = None,
        reason: str = "",
        failure: Failure | None = None,
        history: Sequence[Move] = (),
        task_id: TaskId | None = None,
    ) -> None:
        self.name = name or type(self).__name__
        self.code = code
        self.message = message
        self.reason = reason
        self.failure = failure
        self.history = tuple(history)
        self.task_id = task_id
        super().__init__(self.summary())

    def summary(self) -> str:
        """One line: name, code, message and reason (what the CLI prints)."""
        head = self.name if self.code is None else f"{self.name} ({self.code})"
        tail = f" [{self.reason}]" if self.reason else ""
        return f"{head}: {self.message}{tail}"


class PermanentError(CaptchaflowError):
    """The key or the account must be fixed (codes 1, 3, 14, 15). Never retried."""


class BadRequestError(CaptchaflowError):
    """The provider rejected the task payload (code 10). Never retried."""


class UnsolvableError(CaptchaflowError):
    """The captcha stayed unsolvable (code 12) after the allowed resubmits."""


class GaveUpError(CaptchaflowError):
    """The job stopped without an answer: transient failures outlasted the policy or the
    deadline, or the service answered something the engine cannot use."""


class RetriesExhaustedError(GaveUpError):
    """A retryable code (2, 16, 17, 18, 21) persisted past the attempts, or its retry hint
    would have passed the deadline."""


class UnknownCodeError(GaveUpError):
    """The API answered with an error code it does not document."""


class HttpStatusError(GaveUpError):
    """An HTTP error status without an API error code (429, 5xx, or unexpected)."""


class MalformedReplyError(GaveUpError):
    """The reply was not of the documented shape (not JSON, missing fields, too large)."""


class ConnectionFailedError(GaveUpError):
    """The request could not be sent (connection refused, connect timeout)."""


class NoReplyError(GaveUpError):
    """The request was sent but no reply came back (read timeout, connection lost)."""


class DeadlineExceededError(GaveUpError):
    """The job's deadline passed before it was solved."""


class PolicyError(GaveUpError):
    """A retry policy or poll schedule raised or answered something invalid."""


class JobCancelledError(CaptchaflowError):
    """The job was cancelled by its caller."""


class InvalidTaskError(CaptchaflowError, ValueError):
    """The task given to the engine is not a JSON object with a string `type`; nothing
    was sent."""


class JobStateError(CaptchaflowError, RuntimeError):
    """A driver used a job out of order (fed a reply nobody asked for, for instance)."""


class IllegalTransitionError(CaptchaflowError, RuntimeError):
    """A trigger was fired in a state the machine has no edge for."""

    def __init__(self, trigger: str, state: str, *, known: bool) -> None:
        self.trigger = trigger
        self.state = state
        what = "event" if known else "unknown event"
        super().__init__(f"can't handle {what} {trigger!r} in state {state!r}")


_BY_BUCKET: dict[Bucket, type[CaptchaflowError]] = {
    Bucket.PERMANENT: PermanentError,
    Bucket.BAD_REQUEST: BadRequestError,
    Bucket.UNSOLVABLE: UnsolvableError,
    Bucket.RETRYABLE: RetriesExhaustedError,
    Bucket.UNKNOWN_CODE: UnknownCodeError,
    Bucket.TRANSIENT_HTTP: HttpStatusError,
    Bucket.UNEXPECTED_HTTP: HttpStatusError,
    Bucket.MALFORMED: MalformedReplyError,
    Bucket.NOT_SENT: ConnectionFailedError,
    Bucket.AMBIGUOUS: NoReplyError,
}


def error_class_for(bucket: Bucket) -> type[CaptchaflowError]:
    """The exception class a job raises when it gives up on a failure of `bucket`."""
    return _BY_BUCKET[bucket]
