"""What went wrong, in the terms a policy decides on: buckets, the code table, `Failure`.

Every failed exchange, whether the API answered with an error code or the network failed,
becomes one `Failure` with a `Bucket`. Policies look at the bucket (and the retry hint);
they never parse replies themselves.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping

import attrs

from captchaflow.transports import Endpoint, ErrorCode

__all__ = ["CODE_TABLE", "Bucket", "CodeInfo", "Failure", "bucket_of_code"]


class Bucket(enum.StrEnum):
    """The kinds of failure. The first five come from API error codes, the rest from HTTP
    and the network."""

    RETRYABLE = "retryable"
    """Codes 2, 16, 17, 18, 21: transient rate, quota or capacity limits."""
    PERMANENT = "permanent"
    """Codes 1, 3, 14, 15: the key or the account must be fixed; never retried."""
    BAD_REQUEST = "bad_request"
    """Code 10: the task payload is invalid; never retried."""
    UNSOLVABLE = "unsolvable"
    """Code 12: the captcha could not be solved; may be resubmitted as a new task."""
    UNKNOWN_CODE = "unknown_code"
    """A non-zero code the provider does not document. Not retried by the built-in
    policies: the page says to retry only the retryable bucket."""
    TRANSIENT_HTTP = "transient_http"
    """HTTP 408, 425, 429 or 5xx without an API error code."""
    UNEXPECTED_HTTP = "unexpected_http"
    """The URL does not lead to the API, and waiting will not change that: any other non-2xx
    HTTP status without an API error code (a wrong URL, a redirect), or a server whose TLS
    certificate fails verification."""
    MALFORMED = "malformed"
    """The service answered, but not with a reply of the documented shape (or not with a
    usable reply at all: too large, compressed). A createTask answered 2xx this way may
    have created a task: see `Failure.may_have_billed`."""
    NOT_SENT = "not_sent"
    """The request never left (connection refused, connect timeout): safe to send again."""
    AMBIGUOUS = "ambiguous"
    """The request may have arrived but no reply came: a createTask may have been billed."""


@attrs.frozen
class CodeInfo:
    """One row of the provider's error table."""

    code: ErrorCode
    meaning: str
    bucket: Bucket
    action: str


def _row(code: ErrorCode, meaning: str, bucket: Bucket, action: str) -> tuple[int, CodeInfo]:
    return int(code), CodeInfo(code, meaning, bucket, action)


CODE_TABLE: Mapping[int, CodeInfo] = dict(
    [
        _row(
            ErrorCode.KEY_DOES_NOT_EXIST,
            "The API key is missing, malformed, or invalid.",
            Bucket.PERMANENT,
            "Fix the key. Do not retry.",
        ),
        _row(
            ErrorCode.NO_SLOT_AVAILABLE,
            "No worker slot is currently free for your account.",
            Bucket.RETRYABLE,
            "Retry after a short backoff.",
        ),
        _row(
            ErrorCode.ZERO_BALANCE,
            "Account balance is exhausted.",
            Bucket.PERMANENT,
            "Top up credits. Do not retry.",
        ),
        _row(
            ErrorCode.ERROR_BAD_PARAMETERS,
            "The task payload is invalid or incomplete.",
            Bucket.BAD_REQUEST,
            "Fix the request. Do not retry.",
        ),
        _row(
            ErrorCode.ERROR_CAPTCHA_UNSOLVABLE,
            "The captcha could not be solved.",
            Bucket.UNSOLVABLE,
            "Retry, or resubmit with cleaner input.",
        ),
        _row(
            ErrorCode.PLAN_EXPIRED,
            "Your subscription plan has expired.",
            Bucket.PERMANENT,
            "Renew the plan. Do not retry.",
        ),
        _row(
            ErrorCode.PLAN_INACTIVE,
            "Your plan is not active.",
            Bucket.PERMANENT,
            "Activate the plan. Do not retry.",
        ),
        _row(
            ErrorCode.RATE_LIMITED,
            "Too many requests in a short window.",
            Bucket.RETRYABLE,
            "Back off, respect retryAfterSec.",
        ),
        _row(
            ErrorCode.DAILY_LIMIT_EXCEEDED,
            "Daily request quota reached.",
            Bucket.RETRYABLE,
            "Retry later (often next day).",
        ),
        _row(
            ErrorCode.QUOTA_LIMIT_EXCEEDED,
            "Plan quota reached.",
            Bucket.RETRYABLE,
            "Retry later or upgrade the plan.",
        ),
        _row(
            ErrorCode.SERVICE_UNAVAILABLE,
            "The service is temporarily unavailable.",
            Bucket.RETRYABLE,
            "Back off, respect retryAfterSec.",
        ),
    ]
)


def bucket_of_code(code: int) -> Bucket:
    """The bucket of a non-zero API error code; undocumented codes are `UNKNOWN_CODE`."""
    info = CODE_TABLE.get(code)
    return info.bucket if info is not None else Bucket.UNKNOWN_CODE


def _check_retry_after(_instance: object, _attribute: object, value: float | None) -> None:
    if value is not None and not (value >= 0 and not math.isnan(value)):
        raise ValueError(f"retry_after must be None or >= 0, got {value!r}")


@attrs.frozen
class Failure:
    """One failed exchange with the API, classified.

    - `bucket`: what kind of failure it is (the only thing most policies need);
    - `code`: the API error code, or `None` when the failure is not an API error;
    - `name`: a stable upper-case name (`RATE_LIMITED`, `HTTP_503`, `NOT_SENT`, ...);
    - `message`: a human-readable explanation (never contains the API key);
    - `retry_after`: the server's hint in seconds (`retryAfterSec` or `Retry-After`), if any;
    - `endpoint`: which call failed; `http_status`: the HTTP status, if a reply came.
    """

    bucket: Bucket
    name: str
    message: str
    endpoint: Endpoint
    code: int | None = None
    retry_after: float | None = attrs.field(default=None, validator=_check_retry_after)
    http_status: int | None = None

    @property
    def may_have_billed(self) -> bool:
        """True when a createTask may have created (and billed) a task although no usable
        task id came back: it was sent and no reply came (`AMBIGUOUS`), or the service
        answered 2xx with a reply that could not be used (`MALFORMED`: no `taskId`, not
        JSON, compressed, too large). A 2xx is how createTask reports success, so the task
        most likely exists; an API error code (whatever the status) never bills."""
        if self.endpoint is not Endpoint.CREATE_TASK:
            return False
        if self.bucket is Bucket.AMBIGUOUS:
            return True
        status = self.http_status
        return self.bucket is Bucket.MALFORMED and status is not None and 200 <= status < 300
