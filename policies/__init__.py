"""The decision vocabulary: failures and their buckets, the `RetryPolicy` protocol and its
built-ins, and poll schedules. Imports only wire types from `captchaflow.transports`."""

from ._failure import CODE_TABLE, Bucket, CodeInfo, Failure, bucket_of_code
from ._poll import FixedInterval, PollSchedule
from ._retry import (
    NEVER_RETRIED,
    BackoffPolicy,
    Decision,
    DecorrelatedJitter,
    DocumentedPolicy,
    EqualJitter,
    Exponential,
    FixedDelay,
    FullJitter,
    GiveUp,
    NoRetry,
    Resubmit,
    RetryAfter,
    RetryContext,
    RetryPolicy,
)

__all__ = [
    "CODE_TABLE",
    "NEVER_RETRIED",
    "BackoffPolicy",
    "Bucket",
    "CodeInfo",
    "Decision",
    "DecorrelatedJitter",
    "DocumentedPolicy",
    "EqualJitter",
    "Exponential",
    "Failure",
    "FixedDelay",
    "FixedInterval",
    "FullJitter",
    "GiveUp",
    "NoRetry",
    "PollSchedule",
    "Resubmit",
    "RetryAfter",
    "RetryContext",
    "RetryPolicy",
    "bucket_of_code",
]
