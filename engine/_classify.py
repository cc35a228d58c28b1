"""Classification: turn whatever came back from a transport into one typed outcome.

Theory of operation. The engine never looks at bytes. Each exchange ends in exactly one of:

- `Accepted(task_id)`: createTask succeeded;
- `Processing()`: getTaskResult says the task is still being solved;
- `Solved(solution)`: getTaskResult returned the solution;
- `Failure(...)`: anything else, with its bucket, code, name, message and retry hint.

`classify` is total: for any reply (any status, any headers, any bytes) and any
`TransportError`, it returns an outcome and never raises. The rules, in order:

1. A transport failure maps to its bucket: `CertificateRejected` -> unexpected_http (a
   configuration error: retrying cannot help), any other `NotSent` -> not_sent, `BadReply`
   -> malformed (keeping the reply's HTTP status), anything else (a request that may have
   been sent) -> ambiguous.
2. A JSON object with a non-zero `code` is an API error, whatever the HTTP status. Its retry
   hint is the larger of `retryAfterSec` and the `Retry-After` header.
3. Otherwise a non-2xx status is an HTTP failure: 408, 425, 429 and 5xx are transient,
   any other status is unexpected. `Retry-After` (seconds or an HTTP-date) is the hint.
4. Otherwise the body must have the documented shape for its endpoint, or it is malformed.

Server text never reaches a message with the key in it: a value quoted into a message is
redacted before it is quoted (`repr` would escape the key out of reach of a plain search),
and the whole message is redacted again, escape-aware, before it is shortened.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping
from typing import Final, TypeAlias, TypeGuard

import attrs

from captchaflow.policies import CODE_TABLE, Bucket, Failure, bucket_of_code
from captchaflow.transports import (
    ApiKey,
    ApiReply,
    BadReply,
    CertificateRejected,
    Endpoint,
    ErrorCode,
    JsonValue,
    NotSent,
    TaskId,
    TransportError,
)

__all__ = [
    "Accepted",
    "Balance",
    "Outcome",
    "Processing",
    "Solved",
    "classify",
    "parse_retry_after",
]

_TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
_NAME_RE: Final = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_MAX_MESSAGE: Final = 200


@attrs.frozen
class Accepted:
    """createTask succeeded and the provider assigned `task_id`."""

    task_id: TaskId


@attrs.frozen
class Processing:
    """getTaskResult: the task is not solved yet."""


@attrs.frozen
class Solved:
    """getTaskResult: the task is solved; `solution` is exactly what the API returned."""

    solution: Mapping[str, JsonValue]


@attrs.frozen
class Balance:
    """getBalance: the account's remaining credit, as the API returned it (the simulated
    service answers -1 for an account without a balance limit)."""

    amount: float


Outcome: TypeAlias = Accepted | Processing | Solved | Balance | Failure

PROCESSING: Final = Processing()


def classify(
    endpoint: Endpoint,
    result: ApiReply | TransportError,
    *,
    wall_time: float | None = None,
    secret: ApiKey | None = None,
) -> Outcome:
    """Classify one exchange on `endpoint`; never raises.

    `wall_time` (seconds since the epoch) is only used to turn a `Retry-After` HTTP-date into
    a delay when the reply carries no `Date` header of its own. Every text taken from the
    reply is redacted of `secret` (before it is shortened, so no part of it survives).
    """
    outcome: Outcome
    try:
        if isinstance(result, TransportError):
            outcome = _classify_transport_error(endpoint, result)
        else:
            outcome = _classify_reply(endpoint, result, wall_time, secret)
    except Exception as exc:  # pragma: no cover - a bug here must not kill a job
        outcome = Failure(Bucket.MALFORMED, "UNCLASSIFIABLE_REPLY", repr(exc), endpoint)
    if isinstance(outcome, Failure):
        # The one place server text is made safe: redacted first, then shortened, so no
        # fragment of the key can survive a cut.
        message = _clean(outcome.message, secret) or outcome.name
        name = secret.redact(outcome.name) if secret is not None else outcome.name
        if message != outcome.message or name != outcome.name:
            outcome = attrs.evolve(outcome, message=message, name=name)
    return outcome


def _classify_transport_error(endpoint: Endpoint, error: TransportError) -> Failure:
    message = str(error) or type(error).__name__
    if isinstance(error, CertificateRejected):
        return Failure(Bucket.UNEXPECTED_HTTP, "TLS_CERTIFICATE_REJECTED", message, endpoint)
    if isinstance(error, NotSent):
        return Failure(Bucket.NOT_SENT, "NOT_SENT", message, endpoint)
    if isinstance(error, BadReply):
        status = error.status if isinstance(getattr(error, "status", None), int) else None
        return Failure(Bucket.MALFORMED, "BAD_REPLY", message, endpoint, http_status=status)
    return Failure(Bucket.AMBIGUOUS, "NO_REPLY", message, endpoint)


def _classify_reply(
    endpoint: Endpoint, reply: ApiReply, wall_time: float | None, secret: ApiKey | None
) -> Outcome:
    status = reply.status
    header_hint = parse_retry_after(
        reply.headers.get("retry-after"), reply.headers.get("date"), wall_time
    )
    payload = _parse_json(reply.body)

    if isinstance(payload, dict) and payload.get("code") is not None:
        code = _as_code(payload["code"])
        if code is None:
            return _malformed(
                endpoint, status, f"error code is not an integer: {_quote(payload['code'], secret)}"
            )
        if code != 0:
            return _api_error(endpoint, status, code, payload, header_hint, secret)

    if not 200 <= status < 300:
        transient = status in _TRANSIENT_STATUSES or 500 <= status < 600
        return Failure(
            Bucket.TRANSIENT_HTTP if transient else Bucket.UNEXPECTED_HTTP,
            f"HTTP_{status}",
            f"HTTP {status} without an API error code",
            endpoint,
            retry_after=header_hint,
            http_status=status,
        )
    if payload is _NOT_JSON:
        return _malformed(endpoint, status, "reply body is not JSON", name="NON_JSON_REPLY")
    if not isinstance(payload, dict):
        return _malformed(
            endpoint, status, f"reply is a JSON {type(payload).__name__}, not an object"
        )

    if endpoint is Endpoint.GET_BALANCE:
        amount = payload.get("balance")
        if _is_finite_number(amount):
            return Balance(float(amount))
        return _malformed(
            endpoint, status, "getBalance reply has no usable balance", name="MISSING_BALANCE"
        )
    if endpoint is Endpoint.CREATE_TASK:
        task_id = payload.get("taskId")
        if _is_task_id(task_id):
            return Accepted(task_id)
        return _malformed(
            endpoint, status, "createTask reply has no usable taskId", name="MISSING_TASK_ID"
        )

    state = payload.get("status")
    if state == "processing":
        return PROCESSING
    if state == "ready":
        solution = payload.get("solution")
        if isinstance(solution, dict):
            return Solved(solution)
        return _malformed(endpoint, status, "ready reply has no solution object")
    return _malformed(
        endpoint,
        status,
        f"unknown task status {_quote(state, secret)}",
        name="UNKNOWN_STATUS",
    )


def _api_error(
    endpoint: Endpoint,
    status: int,
    code: int,
    payload: Mapping[str, JsonValue],
    header_hint: float | None,
    secret: ApiKey | None,
) -> Failure:
    raw_msg = payload.get("msg")
    if isinstance(raw_msg, str) and secret is not None:
        raw_msg = secret.redact(raw_msg)  # before its whitespace is folded out of the key's
    server_msg = " ".join(raw_msg.split()) if isinstance(raw_msg, str) else ""
    info = CODE_TABLE.get(code)
    if info is not None:
        name = ErrorCode(code).name
        message = info.meaning
        if server_msg and server_msg != name:
            message = f"{message} (server: {server_msg})"
    else:
        name = server_msg if _NAME_RE.fullmatch(server_msg) else f"CODE_{code}"
        message = f"undocumented error code {code}" + (
            f" (server: {server_msg})" if server_msg else ""
        )
    body_hint = _as_seconds(payload.get("retryAfterSec"))
    hints = [h for h in (body_hint, header_hint) if h is not None]
    return Failure(
        bucket_of_code(code),
        name,
        message,
        endpoint,
        code=code,
        retry_after=max(hints) if hints else None,
        http_status=status,
    )


def _malformed(
    endpoint: Endpoint, status: int, message: str, *, name: str = "WRONG_SHAPE"
) -> Failure:
    return Failure(Bucket.MALFORMED, name, message, endpoint, http_status=status)


_NOT_JSON: Final = object()


def _parse_json(body: bytes) -> JsonValue:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _as_code(value: JsonValue) -> int | None:
    """An error code: an integer, or a string or float holding one (lenient, documented);
    anything outside a 32-bit range is not a code."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) < 2**31 else None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**31:
        return int(value)
    if isinstance(value, str):
        digits = value.strip()
        if digits.isascii() and digits.isdigit() and len(digits) < 10:
            return int(digits)
    return None


def _as_seconds(value: JsonValue) -> float | None:
    """A retry hint in seconds, or None when absent or not a non-negative number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int):
        value = float(min(value, 10**12)) if value >= 0 else -1.0
    if not isinstance(value, float) or math.isnan(value) or value < 0:
        return None
    return value


def parse_retry_after(
    value: str | None, date_header: str | None = None, wall_time: float | None = None
) -> float | None:
    """The delay in seconds that a `Retry-After` header asks for, or None.

    Accepts delay-seconds (decimals too) and an HTTP-date; a date is measured from the
    reply's own `Date` header when it has one (so clock skew between us and the server does
    not matter), else from `wall_time`. A date in the past means 0; garbage means None.
    """
    if value is None:
        return None
    value = value.strip()
    seconds = _as_seconds(value)
    if seconds is not None:
        return seconds
    target = _http_date(value)
    if target is None:
        return None
    reference = _http_date(date_header) if date_header is not None else None
    if reference is None:
        reference = wall_time
    if reference is None:
        return None
    return max(0.0, target - reference)


def _http_date(value: str) -> float | None:
    # Imported here: email.utils imports socket, which the sans-IO core must not load
    # (and an HTTP-date Retry-After is rare).
    import email.utils

    try:
        moment = email.utils.parsedate_to_datetime(value)
        if moment.tzinfo is None:  # "-0000" means UTC with no zone given
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _is_finite_number(value: JsonValue) -> TypeGuard[int | float]:
    """A JSON number (not a bool) that is finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_task_id(value: JsonValue) -> TypeGuard[TaskId]:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and 0 < len(value) <= 256 and value.isprintable()


def _quote(value: JsonValue, secret: ApiKey | None) -> str:
    """`value` for a message: a string redacted of `secret` and then quoted, a number as
    written; an array or object only by its kind (never rendered, so never a fragment)."""
    if isinstance(value, str):
        return repr(secret.redact(value) if secret is not None else value)
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"


def _clean(text: str, secret: ApiKey | None) -> str:
    """One line, redacted of `secret`, then shortened to `_MAX_MESSAGE` characters."""
    if secret is not None:
        text = secret.redact(text)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."
