"""Shared hypothesis strategies: replies and transport failures for classification, failures,
contexts and built-in policy configurations for retry policies."""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import json
import random
from typing import Any

from hypothesis import strategies as st

from captchaflow.policies import (
    BackoffPolicy,
    Bucket,
    DecorrelatedJitter,
    DocumentedPolicy,
    EqualJitter,
    Exponential,
    Failure,
    FixedDelay,
    FullJitter,
    NoRetry,
    RetryContext,
    RetryPolicy,
)
from captchaflow.transports import (
    ApiReply,
    BadReply,
    Endpoint,
    ErrorCode,
    NotSent,
    SentNoReply,
    TransportError,
)

__all__ = [
    "BACKOFF_CLASSES",
    "EdgeRandom",
    "DOCUMENTED_CODES",
    "PolicyRecipe",
    "api_replies",
    "buckets",
    "contexts",
    "documented_code_payloads",
    "endpoints",
    "failures",
    "header_dicts",
    "http_dates",
    "json_values",
    "policy_recipes",
    "reply_bodies",
    "retry_hints",
    "statuses",
    "transport_errors",
]

DOCUMENTED_CODES: tuple[int, ...] = tuple(int(code) for code in ErrorCode)
"""Every error code the provider's page documents."""


class EdgeRandom(random.Random):
    """A `random.Random` whose draws are pinned: `uniform` gives its upper (or lower) bound
    and `random()` gives `value`, so a jittered formula can be checked exactly."""

    def __init__(self, *, high: bool = True, value: float = 0.5) -> None:
        super().__init__(0)
        self.high, self.value = high, value

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a

    def random(self) -> float:
        return self.value


BACKOFF_CLASSES: list[type[BackoffPolicy]] = [
    DocumentedPolicy,
    FixedDelay,
    Exponential,
    FullJitter,
    EqualJitter,
    DecorrelatedJitter,
]
"""Every built-in policy class that takes the common backoff parameters."""

endpoints = st.sampled_from(list(Endpoint))
buckets = st.sampled_from(list(Bucket))
statuses = st.integers(min_value=100, max_value=599)

# --- JSON and reply bodies -------------------------------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and +/-inf included: Python's json reads and writes them
    | st.text()
)
json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
"""Any value `json.loads` can return, NaN and infinities included."""

finite_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
"""JSON values that compare equal to themselves (no NaN), for exact round-trip checks."""

_codes = (
    st.sampled_from((0, *DOCUMENTED_CODES))
    | st.integers()
    | st.sampled_from(DOCUMENTED_CODES).map(str)
    | st.sampled_from(DOCUMENTED_CODES).map(float)
    | json_values
)
_protocol_objects = st.fixed_dictionaries(
    {},
    optional={
        "code": _codes,
        "msg": st.text() | json_values,
        "retryAfterSec": st.floats() | st.integers() | json_values,
        "taskId": st.integers() | st.text() | json_values,
        "status": st.sampled_from(["processing", "ready"]) | json_values,
        "solution": st.dictionaries(st.text(max_size=8), json_values, max_size=4) | json_values,
        "errorDescription": st.text(),
    },
)
"""JSON objects made of the protocol's own keys, with well- and ill-typed values."""

reply_bodies = st.one_of(
    st.binary(),
    json_values.map(lambda value: json.dumps(value).encode()),
    _protocol_objects.map(lambda value: json.dumps(value).encode()),
)
"""Reply bodies: arbitrary bytes, arbitrary JSON, and protocol-shaped JSON objects."""


def documented_code_payloads() -> st.SearchStrategy[tuple[int, dict[str, Any]]]:
    """`(code, payload)` where `payload["code"]` holds documented `code` as an int, a float
    or a numeric string, next to arbitrary other protocol keys (even success-looking ones)."""

    def with_code(code: int) -> st.SearchStrategy[tuple[int, dict[str, Any]]]:
        spellings = st.sampled_from([code, float(code), str(code), f" {code} ", f"0{code}"])
        return st.tuples(st.just(code), _protocol_objects, spellings).map(
            lambda t: (t[0], {**t[1], "code": t[2]})
        )

    return st.sampled_from(DOCUMENTED_CODES).flatmap(with_code)


# --- headers ---------------------------------------------------------------------------------

http_dates = st.datetimes(
    min_value=datetime.datetime(1970, 1, 2),
    max_value=datetime.datetime(2200, 1, 1),
    timezones=st.just(datetime.UTC),
).map(lambda moment: email.utils.format_datetime(moment, usegmt=True))
"""RFC 9110 IMF-fixdate strings, e.g. `Wed, 21 Oct 2015 07:28:00 GMT`."""

_header_values = st.one_of(
    st.text(max_size=40),
    http_dates,
    st.floats().map(repr),
    st.integers().map(str),
    st.sampled_from(["", "0", "1.5", " 7 ", "-3", "nan", "inf", "soon", "Mon, 99 Foo 2024"]),
)
header_dicts = st.dictionaries(
    st.sampled_from(["Retry-After", "retry-after", "Date", "date", "Content-Type"])
    | st.text(max_size=12),
    _header_values,
    max_size=5,
)
"""Header dicts that often carry a `Retry-After` and a `Date`, valid or not."""

api_replies = st.builds(ApiReply, statuses, reply_bodies, header_dicts)
"""Any reply: any status 100-599, any headers, any body."""

transport_errors: st.SearchStrategy[TransportError] = st.builds(
    lambda cls, message: cls(message),
    st.sampled_from([NotSent, SentNoReply, BadReply, TransportError]),
    st.text(),
)

# --- failures, contexts, policies --------------------------------------------------------------

retry_hints = st.none() | st.sampled_from([0.0, 86400.0, 1e12]) | st.floats(min_value=0.0)
"""An optional retry hint: None, or any float >= 0 including huge values and infinity."""

failures = st.builds(
    Failure,
    bucket=buckets,
    name=st.sampled_from(["RATE_LIMITED", "HTTP_503", "NOT_SENT", "NO_REPLY", "WRONG_SHAPE"]),
    message=st.just("") | st.text(max_size=8),
    endpoint=endpoints,
    code=st.none() | st.integers(min_value=-5, max_value=100),
    retry_after=retry_hints,
    http_status=st.none() | statuses,
)
"""Any `Failure`: every bucket, both endpoints, an optional code and an optional hint."""


@st.composite
def contexts(draw: st.DrawFn, max_attempt: int = 20) -> RetryContext:
    """A `RetryContext` with attempt >= 1, resubmits >= 0 and a deadline not before `now`."""
    now = draw(st.floats(min_value=0.0, max_value=1e10))
    slack = draw(st.sampled_from([0.0, 0.5, 120.0, 1e7]) | st.floats(min_value=0.0, max_value=1e7))
    return RetryContext(
        attempt=draw(st.integers(min_value=1, max_value=max_attempt)),
        resubmits=draw(st.integers(min_value=0, max_value=6)),
        now=now,
        deadline=now + slack,
        previous_delay=draw(st.none() | st.floats(min_value=0.0, max_value=1e6)),
    )


@dataclasses.dataclass(frozen=True)
class PolicyRecipe:
    """A built-in policy class and its settings; `build(seed)` makes a fresh, seeded copy."""

    cls: type[Any]
    kwargs: dict[str, Any]

    def build(self, seed: int) -> RetryPolicy:
        """A new policy whose randomness comes from `random.Random(seed)`."""
        if self.cls is NoRetry:
            return NoRetry()
        policy: RetryPolicy = self.cls(rng=random.Random(seed), **self.kwargs)
        return policy

    @property
    def max_attempts(self) -> int:
        """Attempts the policy allows (NoRetry allows none beyond the first)."""
        return 1 if self.cls is NoRetry else int(self.kwargs["max_attempts"])

    @property
    def max_resubmits(self) -> int:
        """Resubmits the policy allows (NoRetry allows none)."""
        return 0 if self.cls is NoRetry else int(self.kwargs["max_resubmits"])


_delays = st.sampled_from([0.0, 1.0, 2.0, 30.0]) | st.floats(min_value=0.0, max_value=100.0)
_common = {
    "max_attempts": st.integers(min_value=1, max_value=10),
    "max_resubmits": st.integers(min_value=0, max_value=5),
    "resubmit_delay": _delays,
    "resend_ambiguous_create": st.booleans(),
}
_base_cap = {"base": _delays, "cap": _delays}


def _recipe(cls: type[Any], extra: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({**_common, **extra}).map(lambda kw: PolicyRecipe(cls, kw))


policy_recipes: st.SearchStrategy[PolicyRecipe] = st.one_of(
    _recipe(DocumentedPolicy, {"cap": _delays, "jitter": st.floats(0.0, 5.0)}),
    _recipe(FixedDelay, {"delay": _delays}),
    _recipe(Exponential, _base_cap),
    _recipe(FullJitter, _base_cap),
    _recipe(EqualJitter, _base_cap),
    _recipe(DecorrelatedJitter, _base_cap),
    st.just(PolicyRecipe(NoRetry, {})),
)
"""Every built-in policy, with arbitrary (valid) settings."""
