"""Classification: every documented code, success shape, HTTP status, malformed body and
transport failure becomes the right outcome; `classify` is total."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from strategies import (
    api_replies,
    documented_code_payloads,
    endpoints,
    finite_json_values,
    header_dicts,
    json_values,
    reply_bodies,
    statuses,
    transport_errors,
)

from captchaflow.engine import Accepted, Processing, Solved, classify, parse_retry_after
from captchaflow.policies import Bucket, Failure, bucket_of_code
from captchaflow.transports import (
    ApiKey,
    ApiReply,
    BadReply,
    CertificateRejected,
    Endpoint,
    ErrorCode,
    NotSent,
    SentNoReply,
    TransportError,
)

SPEC = json.loads(
    (Path(__file__).resolve().parents[1] / "specs" / "error-codes.json").read_text("utf-8")
)
SPEC_ROWS: list[dict[str, Any]] = SPEC["codes"]
OUTCOMES = (Accepted, Processing, Solved, Failure)
CREATE, RESULT = Endpoint.CREATE_TASK, Endpoint.GET_TASK_RESULT
BOTH = pytest.mark.parametrize("endpoint", list(Endpoint))

# An IMF-fixdate, its timestamp, and a `Date` header one minute before it.
TARGET = "Wed, 21 Oct 2015 07:28:00 GMT"
TARGET_TS = 1445412480.0
MINUTE_BEFORE = "Wed, 21 Oct 2015 07:27:00 GMT"


def reply(payload: Any, status: int = 200) -> ApiReply:
    """A reply whose body is `payload` as JSON."""
    return ApiReply.json(payload, status=status)


def failure_of(outcome: object) -> Failure:
    """`outcome`, checked to be a `Failure`."""
    assert isinstance(outcome, Failure), outcome
    return outcome


# --- documented codes ------------------------------------------------------------------------


def test_spec_codes_match_error_code_enum() -> None:
    """The spec file, the `ErrorCode` enum and the brief list exactly the same codes."""
    expected = {1, 2, 3, 10, 12, 14, 15, 16, 17, 18, 21}
    assert {row["code"] for row in SPEC_ROWS} == expected
    assert {int(code) for code in ErrorCode} == expected
    assert {row["code"]: row["name"] for row in SPEC_ROWS} == {c.value: c.name for c in ErrorCode}


@BOTH
@pytest.mark.parametrize("row", SPEC_ROWS, ids=lambda row: f"{row['code']}-{row['name']}")
def test_documented_code_without_hint(endpoint: Endpoint, row: dict[str, Any]) -> None:
    """A documented code is a Failure with the spec's bucket, the code, its name and no hint."""
    failure = failure_of(classify(endpoint, reply({"code": row["code"], "msg": row["name"]})))
    assert failure.bucket == Bucket(row["bucket"])
    assert failure.code == row["code"]
    assert failure.name == ErrorCode(row["code"]).name == row["name"]
    assert failure.endpoint is endpoint
    assert failure.retry_after is None
    assert failure.http_status == 200
    assert row["meaning"] in failure.message


@BOTH
@pytest.mark.parametrize("row", SPEC_ROWS, ids=lambda row: f"{row['code']}-{row['name']}")
def test_documented_code_with_retry_after_sec(endpoint: Endpoint, row: dict[str, Any]) -> None:
    """A documented code's `retryAfterSec` becomes the failure's retry hint, in seconds."""
    payload = {"code": row["code"], "msg": row["name"], "retryAfterSec": 5}
    failure = failure_of(classify(endpoint, reply(payload)))
    assert (failure.bucket, failure.code, failure.name) == (
        Bucket(row["bucket"]),
        row["code"],
        row["name"],
    )
    assert failure.endpoint is endpoint
    assert failure.retry_after == 5.0


@BOTH
def test_unknown_code_is_unknown_code_bucket(endpoint: Endpoint) -> None:
    """An undocumented non-zero code is UNKNOWN_CODE, named CODE_<n> when msg is no name."""
    failure = failure_of(classify(endpoint, reply({"code": 99, "msg": "something odd"})))
    assert failure.bucket is Bucket.UNKNOWN_CODE
    assert (failure.code, failure.name, failure.endpoint) == (99, "CODE_99", endpoint)
    assert "something odd" in failure.message


@BOTH
def test_unknown_code_takes_upper_case_msg_as_name(endpoint: Endpoint) -> None:
    """An undocumented code whose msg looks like a name (`NEW_LIMIT`) is named by it."""
    payload = {"code": 99, "msg": "NEW_LIMIT", "retryAfterSec": 3}
    failure = failure_of(classify(endpoint, reply(payload)))
    assert (failure.bucket, failure.name, failure.retry_after) == (
        Bucket.UNKNOWN_CODE,
        "NEW_LIMIT",
        3.0,
    )


@BOTH
def test_numeric_string_code_is_accepted(endpoint: Endpoint) -> None:
    """`"code": "16"` is read as code 16 (the documented leniency)."""
    failure = failure_of(classify(endpoint, reply({"code": "16", "retryAfterSec": 2})))
    assert (failure.bucket, failure.code, failure.name) == (Bucket.RETRYABLE, 16, "RATE_LIMITED")
    assert failure.retry_after == 2.0


def test_integral_float_code_is_accepted() -> None:
    """`"code": 12.0` is read as code 12 (a float holding an integer is accepted)."""
    failure = failure_of(classify(RESULT, reply({"code": 12.0})))
    assert (failure.bucket, failure.code) == (Bucket.UNSOLVABLE, 12)


def test_api_code_wins_over_success_shape() -> None:
    """A non-zero code is an error even when the body also looks like a success."""
    failure = failure_of(classify(CREATE, reply({"code": 2, "taskId": 5})))
    assert failure.bucket is Bucket.RETRYABLE


# --- success shapes --------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", [5, 0, 10**30, "abc", "a" * 256, "5f3c-9a"])
def test_create_task_success_is_accepted(task_id: int | str) -> None:
    """createTask with a usable taskId (int or printable string) is Accepted with that id."""
    outcome = classify(CREATE, reply({"taskId": task_id}))
    assert outcome == Accepted(task_id)
    assert isinstance(outcome, Accepted)
    assert type(outcome.task_id) is type(task_id)


def test_processing_is_processing() -> None:
    """getTaskResult with status processing is Processing."""
    assert classify(RESULT, reply({"status": "processing"})) == Processing()


def test_ready_is_solved_with_exact_solution() -> None:
    """getTaskResult ready returns the solution exactly as received, nested values included."""
    solution = {"text": "abc", "nested": {"list": [1, 2.5, None, True]}, "ünï": "çødé"}
    outcome = classify(RESULT, reply({"status": "ready", "solution": solution}))
    assert isinstance(outcome, Solved)
    assert outcome.solution == solution


@pytest.mark.parametrize(
    "extra",
    [{"code": 0}, {"code": None}, {}, {"code": "0"}, {"code": 0.0}],
    ids=["zero", "null", "absent", "zero-string", "zero-float"],
)
def test_code_zero_null_or_absent_is_success(extra: dict[str, Any]) -> None:
    """A code of 0, null or no code at all is success, at both endpoints."""
    assert classify(CREATE, reply({**extra, "taskId": 7})) == Accepted(7)
    assert classify(RESULT, reply({**extra, "status": "processing"})) == Processing()
    solved = classify(RESULT, reply({**extra, "status": "ready", "solution": {"t": "x"}}))
    assert solved == Solved({"t": "x"})


@given(task_id=st.integers() | st.text(min_size=1, max_size=256).filter(str.isprintable))
def test_any_usable_task_id_is_accepted_unchanged(task_id: int | str) -> None:
    """Invariant: any int or printable 1-256 char string taskId comes back unchanged."""
    assert classify(CREATE, reply({"taskId": task_id})) == Accepted(task_id)


@given(solution=st.dictionaries(st.text(max_size=8), finite_json_values, max_size=3))
def test_any_solution_object_is_returned_exactly(solution: dict[str, Any]) -> None:
    """Invariant: a ready reply's solution object is returned exactly as sent."""
    outcome = classify(RESULT, reply({"status": "ready", "solution": solution}))
    assert isinstance(outcome, Solved)
    assert outcome.solution == solution


# --- HTTP-level failures ---------------------------------------------------------------------

NON_API_BODIES = [b"", b"<html>Bad gateway</html>", b'{"error": "busy"}', b'{"code": 0}']


@BOTH
@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
@pytest.mark.parametrize("body", NON_API_BODIES)
def test_transient_statuses(endpoint: Endpoint, status: int, body: bytes) -> None:
    """408, 425, 429 and 5xx without an API code are TRANSIENT_HTTP named HTTP_<status>."""
    failure = failure_of(classify(endpoint, ApiReply(status, body)))
    assert failure.bucket is Bucket.TRANSIENT_HTTP
    assert (failure.name, failure.http_status, failure.code) == (f"HTTP_{status}", status, None)
    assert failure.retry_after is None
    assert failure.endpoint is endpoint


@BOTH
@pytest.mark.parametrize("status", [404, 401, 403, 400, 301, 302, 100])
@pytest.mark.parametrize("body", NON_API_BODIES)
def test_unexpected_statuses(endpoint: Endpoint, status: int, body: bytes) -> None:
    """Other non-2xx statuses without an API code are UNEXPECTED_HTTP named HTTP_<status>."""
    failure = failure_of(classify(endpoint, ApiReply(status, body)))
    assert failure.bucket is Bucket.UNEXPECTED_HTTP
    assert (failure.name, failure.http_status, failure.code) == (f"HTTP_{status}", status, None)


@pytest.mark.parametrize(
    ("headers", "wall_time", "expected"),
    [
        ({"Retry-After": "120"}, None, 120.0),
        ({"Retry-After": "1.5"}, None, 1.5),
        ({"Retry-After": " 7 "}, None, 7.0),
        ({"Retry-After": "0"}, None, 0.0),
        ({"Retry-After": TARGET, "Date": MINUTE_BEFORE}, None, 60.0),
        ({"Retry-After": TARGET, "Date": MINUTE_BEFORE}, TARGET_TS - 10, 60.0),
        ({"Retry-After": TARGET}, TARGET_TS - 10, 10.0),
        ({"Retry-After": TARGET, "Date": "not a date"}, TARGET_TS - 10, 10.0),
        ({"Retry-After": TARGET, "Date": "Wed, 21 Oct 2015 07:29:00 GMT"}, None, 0.0),
        ({"Retry-After": TARGET}, TARGET_TS + 3600, 0.0),
        ({"Retry-After": "soon"}, TARGET_TS, None),
        ({"Retry-After": "-5"}, TARGET_TS, None),
        ({"Retry-After": "nan"}, TARGET_TS, None),
        ({"Retry-After": ""}, TARGET_TS, None),
        ({"Retry-After": TARGET}, None, None),
        ({}, TARGET_TS, None),
    ],
    ids=[
        "seconds",
        "decimal-seconds",
        "padded-seconds",
        "zero",
        "date-vs-date-header",
        "date-header-beats-wall-time",
        "date-vs-wall-time",
        "garbage-date-header-falls-back-to-wall-time",
        "date-in-past-by-date-header",
        "date-in-past-by-wall-time",
        "garbage",
        "negative",
        "nan",
        "empty",
        "date-without-reference",
        "absent",
    ],
)
def test_retry_after_header_on_429_and_503(
    headers: dict[str, str], wall_time: float | None, expected: float | None
) -> None:
    """`Retry-After` (seconds, decimals or an HTTP-date) becomes the hint of a 429 or 503."""
    for status in (429, 503):
        failure = failure_of(classify(CREATE, ApiReply(status, b"", headers), wall_time=wall_time))
        assert failure.bucket is Bucket.TRANSIENT_HTTP
        assert failure.retry_after == expected
        header_hint = parse_retry_after(headers.get("Retry-After"), headers.get("Date"), wall_time)
        assert header_hint == expected


def test_retry_after_header_name_is_case_insensitive() -> None:
    """`retry-after` and `RETRY-AFTER` are read like `Retry-After`."""
    for name in ("retry-after", "RETRY-AFTER", "Retry-After"):
        failure = failure_of(classify(RESULT, ApiReply(503, b"", {name: "4"})))
        assert failure.retry_after == 4.0


def test_parse_retry_after_accepts_zone_less_dates() -> None:
    """An HTTP-date with `-0000` (UTC, no zone given) is measured like a GMT one."""
    zone_less = "Wed, 21 Oct 2015 07:28:00 -0000"
    assert parse_retry_after(zone_less, MINUTE_BEFORE) == 60.0
    assert parse_retry_after(None, MINUTE_BEFORE, TARGET_TS) is None


@pytest.mark.parametrize(
    ("body_hint", "header_hint", "expected"),
    [(3, "10", 10.0), (30, "10", 30.0), (None, "10", 10.0), (8, None, 8.0), (None, None, None)],
)
def test_api_error_on_503_takes_larger_hint(
    body_hint: int | None, header_hint: str | None, expected: float | None
) -> None:
    """A 503 with a JSON error body is classified by its code, hinting max(body, header)."""
    payload: dict[str, Any] = {"code": 21, "msg": "SERVICE_UNAVAILABLE"}
    if body_hint is not None:
        payload["retryAfterSec"] = body_hint
    headers = {} if header_hint is None else {"Retry-After": header_hint}
    failure = failure_of(classify(CREATE, ApiReply.json(payload, status=503, headers=headers)))
    assert (failure.bucket, failure.code, failure.name) == (
        Bucket.RETRYABLE,
        21,
        "SERVICE_UNAVAILABLE",
    )
    assert failure.http_status == 503
    assert failure.retry_after == expected


def test_api_error_on_404_is_classified_by_code() -> None:
    """A documented code wins over the HTTP status, even an unexpected one."""
    failure = failure_of(classify(RESULT, ApiReply.json({"code": 1}, status=404)))
    assert (failure.bucket, failure.code, failure.http_status) == (Bucket.PERMANENT, 1, 404)


# --- malformed replies -----------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    "body",
    [b"not json", b"", b'{"taskId": 5', b"[1, 2]", b'"taskId"', b"42", b"null", b"\xff\xfe"],
    ids=["non-json", "empty", "truncated", "array", "string", "number", "null", "bad-utf8"],
)
def test_malformed_bodies(endpoint: Endpoint, body: bytes) -> None:
    """A 200 whose body is not a JSON object is MALFORMED, with no code."""
    failure = failure_of(classify(endpoint, ApiReply(200, body)))
    assert failure.bucket is Bucket.MALFORMED
    assert (failure.code, failure.http_status, failure.endpoint) == (None, 200, endpoint)


def test_non_json_is_named_non_json_reply() -> None:
    """A body that is not JSON at all is named NON_JSON_REPLY."""
    assert failure_of(classify(CREATE, ApiReply(200, b"<html>"))).name == "NON_JSON_REPLY"


@BOTH
@pytest.mark.parametrize("code", ["abc", "", "-16", "1e1", "²", [16], {"n": 16}, True, 1.5])
def test_non_numeric_code_is_malformed(endpoint: Endpoint, code: Any) -> None:
    """A `code` that is not an integer (nor a string or float holding one) is MALFORMED."""
    failure = failure_of(classify(endpoint, reply({"code": code, "taskId": 5})))
    assert failure.bucket is Bucket.MALFORMED
    assert failure.code is None


def test_superscript_digit_code_takes_the_not_an_integer_path() -> None:
    """`"code": "²"` is reported as a non-integer code, not via the classifier's safety net."""
    failure = failure_of(classify(CREATE, reply({"code": "²"})))
    assert failure.name == "WRONG_SHAPE"
    assert "not an integer" in failure.message


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"taskId": None},
        {"taskId": True},
        {"taskId": False},
        {"taskId": ""},
        {"taskId": {"id": 5}},
        {"taskId": [5]},
        {"taskId": 5.0},
        {"taskId": "a\nb"},
        {"taskId": "x" * 257},
        {"status": "processing"},
    ],
    ids=lambda p: repr(p)[:30],
)
def test_create_task_without_usable_task_id_is_malformed(payload: dict[str, Any]) -> None:
    """createTask without a usable taskId (missing/null/bool/empty/object/...) is MALFORMED."""
    failure = failure_of(classify(CREATE, reply(payload)))
    assert (failure.bucket, failure.name) == (Bucket.MALFORMED, "MISSING_TASK_ID")


@pytest.mark.parametrize(
    "payload",
    [{}, {"status": "done"}, {"status": None}, {"status": 1}, {"status": "READY"}, {"taskId": 5}],
    ids=lambda p: repr(p)[:30],
)
def test_unknown_task_status_is_malformed(payload: dict[str, Any]) -> None:
    """getTaskResult with a missing or unknown status is MALFORMED (UNKNOWN_STATUS)."""
    failure = failure_of(classify(RESULT, reply(payload)))
    assert (failure.bucket, failure.name) == (Bucket.MALFORMED, "UNKNOWN_STATUS")


@pytest.mark.parametrize("solution", [None, "abc", 42, [1, 2], True], ids=repr)
def test_ready_without_solution_object_is_malformed(solution: Any) -> None:
    """A ready reply without a solution, or with a non-object one, is MALFORMED."""
    payload = {"status": "ready", "solution": solution}
    assert failure_of(classify(RESULT, reply(payload))).bucket is Bucket.MALFORMED
    assert failure_of(classify(RESULT, reply({"status": "ready"}))).bucket is Bucket.MALFORMED


# --- retryAfterSec edge values ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"-1", b"-0.5", b"NaN", b"true", b"false", b'"soon"', b'"nan"', b"[5]", b'{"s": 5}', b"null"],
)
def test_unusable_retry_after_sec_is_absent(raw: bytes) -> None:
    """A negative, NaN, boolean or non-numeric `retryAfterSec` is treated as absent."""
    body = b'{"code": 16, "retryAfterSec": ' + raw + b"}"
    failure = failure_of(classify(CREATE, ApiReply(200, body)))
    assert (failure.bucket, failure.code) == (Bucket.RETRYABLE, 16)
    assert failure.retry_after is None


@pytest.mark.parametrize(
    ("raw", "check"),
    [
        (b"1e300", lambda v: v == 1e300),
        (str(10**400).encode(), lambda v: isinstance(v, float) and 1e9 <= v < math.inf),
        (b"1e400", math.isinf),
        (b"Infinity", math.isinf),
        (b"2.5", lambda v: v == 2.5),
    ],
    ids=["huge-float", "huge-int", "overflowing-float", "Infinity", "decimal"],
)
def test_large_retry_after_sec_is_kept(raw: bytes, check: Callable[[float], bool]) -> None:
    """A huge `retryAfterSec` stays a large float, and `Infinity` becomes inf."""
    body = b'{"code": 21, "retryAfterSec": ' + raw + b"}"
    failure = failure_of(classify(RESULT, ApiReply(200, body)))
    assert isinstance(failure.retry_after, float)
    assert check(failure.retry_after)


# --- transport failures ----------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("error", "bucket", "name"),
    [
        (NotSent("connection refused"), Bucket.NOT_SENT, "NOT_SENT"),
        (SentNoReply("read timed out"), Bucket.AMBIGUOUS, "NO_REPLY"),
        (BadReply("reply too large"), Bucket.MALFORMED, "BAD_REPLY"),
        (TransportError("reset by peer"), Bucket.AMBIGUOUS, "NO_REPLY"),
    ],
    ids=["not-sent", "sent-no-reply", "bad-reply", "base-error"],
)
def test_transport_failures(
    endpoint: Endpoint, error: TransportError, bucket: Bucket, name: str
) -> None:
    """Each transport failure maps to its bucket and name, keeping the transport's message."""
    failure = failure_of(classify(endpoint, error))
    assert (failure.bucket, failure.name, failure.endpoint) == (bucket, name, endpoint)
    assert (failure.code, failure.http_status, failure.retry_after) == (None, None, None)
    assert failure.message == error.message
    assert failure.may_have_billed is (endpoint is CREATE and bucket is Bucket.AMBIGUOUS)


def test_transport_failure_without_message_is_named_by_type() -> None:
    """An empty transport message falls back to the error's type name."""
    assert failure_of(classify(CREATE, NotSent(""))).message == "NotSent"


@pytest.mark.parametrize("status", [None, 199, 200, 204, 299, 300, 404, 502])
@pytest.mark.parametrize("bucket", list(Bucket))
@BOTH
def test_may_have_billed_exactly_for_ambiguous_or_unusable_2xx_create(
    bucket: Bucket, endpoint: Endpoint, status: int | None
) -> None:
    """`may_have_billed` is True exactly for a createTask that is ambiguous, or malformed
    with a 2xx status (the service said yes, we could not read the task id)."""
    failure = Failure(bucket, "X", "", endpoint, http_status=status)
    answered_yes = bucket is Bucket.MALFORMED and status is not None and 200 <= status < 300
    expected = endpoint is CREATE and (bucket is Bucket.AMBIGUOUS or answered_yes)
    assert failure.may_have_billed is expected


@pytest.mark.parametrize(
    ("body", "headers", "name"),
    [
        (b'{"taskId": null}', {}, "MISSING_TASK_ID"),
        (b'{"taskId": ""}', {}, "MISSING_TASK_ID"),
        (b"{}", {}, "MISSING_TASK_ID"),
        (
            b"<html><title>Just a moment...</title></html>",
            {"content-type": "text/html"},
            "NON_JSON_REPLY",
        ),
        (b"", {}, "NON_JSON_REPLY"),
        (b'["taskId", 7]', {}, "WRONG_SHAPE"),
    ],
    ids=["null-task-id", "empty-task-id", "no-task-id", "html-page", "empty", "array"],
)
@pytest.mark.parametrize("status", [200, 201])
def test_unusable_2xx_create_may_have_billed(
    body: bytes, headers: dict[str, str], name: str, status: int
) -> None:
    """A createTask answered 2xx with a reply we cannot use stays MALFORMED, keeps its
    status, and may have billed; the same reply to getTaskResult cannot have."""
    failure = failure_of(classify(CREATE, ApiReply(status, body, headers)))
    assert (failure.bucket, failure.name, failure.http_status) == (Bucket.MALFORMED, name, status)
    assert failure.may_have_billed
    if name != "MISSING_TASK_ID":
        polled = failure_of(classify(RESULT, ApiReply(status, body, headers)))
        assert polled.bucket is Bucket.MALFORMED and not polled.may_have_billed


def test_api_error_on_2xx_create_has_not_billed() -> None:
    """An API error code is a refusal, whatever the status: a 200 `{"code": 16}` bills
    nothing, and neither does a non-2xx reply without a task id."""
    assert not failure_of(classify(CREATE, reply({"code": 16}))).may_have_billed
    assert not failure_of(classify(CREATE, ApiReply(502, b"<html>"))).may_have_billed


@BOTH
@pytest.mark.parametrize("status", [None, 200, 502])
def test_bad_reply_keeps_its_status(endpoint: Endpoint, status: int | None) -> None:
    """A `BadReply` (oversized, compressed) is MALFORMED with the reply's status when the
    transport read one, so a 2xx to createTask may have billed."""
    failure = failure_of(
        classify(endpoint, BadReply("unrequested content-encoding", status=status))
    )
    assert (failure.bucket, failure.name, failure.http_status) == (
        Bucket.MALFORMED,
        "BAD_REPLY",
        status,
    )
    assert failure.may_have_billed is (endpoint is CREATE and status == 200)


@BOTH
def test_rejected_certificate_is_unexpected_not_retried(endpoint: Endpoint) -> None:
    """A TLS certificate that fails verification is a configuration error: UNEXPECTED_HTTP
    (which no built-in policy retries), named TLS_CERTIFICATE_REJECTED, never billed."""
    error = CertificateRejected("the TLS certificate of h failed verification")
    assert isinstance(error, NotSent)
    failure = failure_of(classify(endpoint, error))
    assert (failure.bucket, failure.name) == (Bucket.UNEXPECTED_HTTP, "TLS_CERTIFICATE_REJECTED")
    assert failure.message == error.message
    assert not failure.may_have_billed


# --- messages --------------------------------------------------------------------------------

HUGE = "word " * 400
MULTILINE = "first line\nsecond line\r\nthird\u2028fourth\x0bfifth"


def _assert_message_is_short_one_liner(failure: Failure) -> None:
    assert failure.message.splitlines() == ([failure.message] if failure.message else [])
    assert len(failure.message) <= 200, len(failure.message)


@pytest.mark.parametrize(
    "result",
    [
        reply({"code": 16, "msg": MULTILINE}),
        reply({"code": 99, "msg": MULTILINE}),
        reply({"code": "a\nb"}),
        reply({"status": "a\nb"}),
        SentNoReply(MULTILINE),
        NotSent(HUGE + "\n" + HUGE),
        BadReply(MULTILINE * 50),
    ],
    ids=[
        "documented-multiline-msg",
        "unknown-multiline-msg",
        "multiline-code",
        "multiline-status",
        "multiline-transport",
        "huge-transport",
        "huge-multiline-transport",
    ],
)
def test_messages_are_short_single_lines(result: ApiReply | TransportError) -> None:
    """Failure messages are one line of at most 200 chars, whatever the server or network said."""
    _assert_message_is_short_one_liner(failure_of(classify(CREATE, result)))


@pytest.mark.parametrize(
    ("endpoint", "payload"),
    [
        pytest.param(CREATE, {"code": 16, "msg": HUGE}, id="documented-huge-msg"),
        pytest.param(CREATE, {"code": 99, "msg": HUGE}, id="unknown-huge-msg"),
        pytest.param(CREATE, {"code": "x" * 1000}, id="huge-bad-code"),
        pytest.param(RESULT, {"status": "s" * 1000}, id="huge-status"),
        pytest.param(CREATE, {"code": 16, "msg": "x" * 150}, id="documented-long-msg"),
    ],
)
def test_messages_stay_short_for_huge_replies(endpoint: Endpoint, payload: Any) -> None:
    """A huge server msg, code or status still yields a message of at most 200 chars."""
    _assert_message_is_short_one_liner(failure_of(classify(endpoint, reply(payload))))


# --- properties ------------------------------------------------------------------------------


def assert_total(
    classifier: Callable[..., object],
    endpoint: Endpoint,
    result: ApiReply | TransportError,
    wall_time: float | None = None,
) -> None:
    """The totality property: an outcome comes back; a failure is for `endpoint`, its hint is
    None or >= 0 and its message is a single line."""
    outcome = classifier(endpoint, result, wall_time=wall_time)
    assert isinstance(outcome, OUTCOMES), outcome
    if isinstance(outcome, Failure):
        assert outcome.retry_after is None or outcome.retry_after >= 0
        assert outcome.endpoint is endpoint
        assert outcome.message.splitlines() == ([outcome.message] if outcome.message else [])


@given(endpoints, api_replies, st.none() | st.floats())
def test_classify_is_total_on_any_reply(
    endpoint: Endpoint, result: ApiReply, wall_time: float | None
) -> None:
    """Invariant: any status, headers and body give an outcome; hints >= 0; one-line messages."""
    assert_total(classify, endpoint, result, wall_time)


@given(endpoints, statuses, st.binary(), header_dicts)
def test_classify_is_total_on_any_bytes(
    endpoint: Endpoint, status: int, body: bytes, headers: dict[str, str]
) -> None:
    """Invariant: arbitrary bytes as a body never make classify raise."""
    assert_total(classify, endpoint, ApiReply(status, body, headers))


@given(endpoints, statuses, json_values)
def test_classify_is_total_on_any_json(endpoint: Endpoint, status: int, value: Any) -> None:
    """Invariant: any JSON value (NaN, inf, nesting included), bare or as `code`, is classified."""
    assert_total(classify, endpoint, ApiReply.json(value, status=status))
    assert_total(classify, endpoint, ApiReply.json({"code": value}, status=status))
    assert_total(classify, endpoint, ApiReply.json({"code": 16, "retryAfterSec": value}))


@given(endpoints, transport_errors)
def test_classify_is_total_on_transport_errors(endpoint: Endpoint, error: TransportError) -> None:
    """Invariant: every transport failure gives a Failure in its bucket with a one-line message."""
    failure = failure_of(classify(endpoint, error))
    assert failure.bucket in {Bucket.NOT_SENT, Bucket.AMBIGUOUS, Bucket.MALFORMED}
    assert "\n" not in failure.message
    assert failure.message.splitlines() == [failure.message]


@given(endpoints, documented_code_payloads(), statuses, header_dicts)
def test_documented_code_is_never_success(
    endpoint: Endpoint,
    code_and_payload: tuple[int, dict[str, Any]],
    status: int,
    headers: dict[str, str],
) -> None:
    """Invariant: a documented non-zero code is a Failure with that code and its bucket."""
    code, payload = code_and_payload
    failure = failure_of(classify(endpoint, ApiReply.json(payload, status=status, headers=headers)))
    assert (failure.code, failure.bucket) == (code, bucket_of_code(code))
    assert failure.name == ErrorCode(code).name


# --- mutant: the totality property catches a classifier that trusts its input ----------------


def _broken_classify(
    endpoint: Endpoint, result: ApiReply | TransportError, *, wall_time: float | None = None
) -> object:
    """A mutant: reads `json.loads(body)["code"]` without guarding, then defers to classify."""
    if isinstance(result, ApiReply):
        code = json.loads(result.body)["code"]
        if code:
            return Failure(bucket_of_code(code), "X", "", endpoint, code=code)
    return classify(endpoint, result, wall_time=wall_time)


def test_totality_property_catches_unguarded_classifier() -> None:
    """The totality property finds a reply that makes the unguarded mutant raise."""

    def mutant_breaks(args: tuple[Endpoint, ApiReply]) -> bool:
        try:
            assert_total(_broken_classify, *args)
        except Exception:
            return True
        return False

    counterexample = find(
        st.tuples(endpoints, st.builds(ApiReply, statuses, reply_bodies)),
        mutant_breaks,
        settings=settings(max_examples=100, database=None, phases=[Phase.generate]),
    )
    assert_total(classify, *counterexample)  # the real classifier handles it


# -- boundaries pinned for mutants that survived benchmarks/mutation.py --------------------


def classify_json(payload: Any, status: int = 200, endpoint: Endpoint = RESULT) -> object:
    """Classify a reply whose body is `payload` as JSON."""
    return classify(endpoint, ApiReply.json(payload, status=status))


@pytest.mark.parametrize(("digits", "code"), [("123456789", 123456789), ("000000016", 16)])
def test_nine_digit_string_code_is_read(digits: str, code: int) -> None:
    """A digit-string code of up to nine digits is read as that integer code."""
    failure = failure_of(classify_json({"code": digits}))
    assert failure.code == code


@pytest.mark.parametrize("digits", ["1234567890", "12345678901", "123456789012345"])
def test_ten_or_more_digit_string_code_is_malformed(digits: str) -> None:
    """A digit-string code of ten digits or more is not read as a code: the reply is MALFORMED."""
    failure = failure_of(classify_json({"code": digits}))
    assert failure.bucket is Bucket.MALFORMED
    assert failure.code is None


@pytest.mark.parametrize("code", [2**30, 2**31 - 1, -(2**31 - 1), 2147483647.0, -2147483647.0])
def test_codes_inside_the_32_bit_range_are_read(code: float) -> None:
    """An integer (or integral float) code with |code| < 2**31 is read as that code."""
    failure = failure_of(classify_json({"code": code}))
    assert (failure.bucket, failure.code) == (Bucket.UNKNOWN_CODE, int(code))


@pytest.mark.parametrize(
    "code", [2**31, -(2**31), 2**32, 3**31, 2147483648.0, -2147483648.0, 4294967296.0, 1e20]
)
def test_codes_outside_the_32_bit_range_are_malformed(code: float) -> None:
    """An integer (or integral float) code with |code| >= 2**31 is not a code: MALFORMED."""
    failure = failure_of(classify_json({"code": code}))
    assert (failure.bucket, failure.code) == (Bucket.MALFORMED, None)


def test_accepted_keeps_task_id() -> None:
    """Sanity: a createTask reply with a task id is Accepted (the helpers above work)."""
    assert classify_json({"taskId": 7}, endpoint=CREATE) == Accepted(7)


class _UnprintableError(TransportError):
    """A transport error whose `str()` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("cannot print this error")


def test_classify_survives_an_error_it_cannot_print() -> None:
    """classify is total even when reading the transport error raises: MALFORMED, not a crash."""
    failure = failure_of(classify(RESULT, _UnprintableError("x")))
    assert (failure.bucket, failure.name) == (Bucket.MALFORMED, "UNCLASSIFIABLE_REPLY")
    assert "cannot print this error" in failure.message


@pytest.mark.parametrize("status", [200, 201, 204, 250, 299])
def test_every_2xx_status_is_success(status: int) -> None:
    """Any status from 200 to 299 inclusive with a documented body is a success, not HTTP."""
    assert classify_json({"taskId": 7}, status=status, endpoint=CREATE) == Accepted(7)


@pytest.mark.parametrize("status", [199, 300])
def test_statuses_just_outside_2xx_are_http_failures(status: int) -> None:
    """199 and 300 with a success-shaped body and no code are UNEXPECTED_HTTP failures."""
    failure = failure_of(classify_json({"taskId": 7}, status=status, endpoint=CREATE))
    assert (failure.bucket, failure.http_status) == (Bucket.UNEXPECTED_HTTP, status)


@pytest.mark.parametrize("msg", ["Already over the limit", "Zzz, over the limit", "rate limited"])
def test_documented_code_keeps_any_other_server_msg(msg: str) -> None:
    """A documented code's message keeps any server msg that is not just the code's name."""
    failure = failure_of(classify_json({"code": 16, "msg": msg}))
    assert failure.name == "RATE_LIMITED"
    assert failure.message.endswith(f"(server: {msg})")


def test_documented_code_drops_a_msg_that_is_its_name() -> None:
    """A documented code whose msg is exactly its name adds nothing to the table's meaning."""
    failure = failure_of(classify_json({"code": 16, "msg": "RATE_LIMITED"}))
    assert "(server:" not in failure.message


@pytest.mark.parametrize("hint", [0, 1, 500_000_000_000, 10**12])
def test_integer_retry_after_sec_up_to_1e12_is_exact(hint: int) -> None:
    """An integer `retryAfterSec` from 0 up to 10**12 is the hint exactly, 0 included."""
    failure = failure_of(classify_json({"code": 16, "retryAfterSec": hint}))
    assert failure.retry_after == float(hint)
    assert isinstance(failure.retry_after, float)


@pytest.mark.parametrize("hint", [10**12 + 1, 10**13, 10**400])
def test_integer_retry_after_sec_above_1e12_is_clamped(hint: int) -> None:
    """An integer `retryAfterSec` above 10**12 s is clamped to 1e12 s (so it fits a float)."""
    failure = failure_of(classify_json({"code": 16, "retryAfterSec": hint}))
    assert failure.retry_after == 1e12


@pytest.mark.parametrize("length", [199, 200])
def test_message_of_200_chars_is_kept_whole(length: int) -> None:
    """A one-line message of at most 200 characters is kept whole, with no ellipsis."""
    text = "x" * length
    assert failure_of(classify(RESULT, NotSent(text))).message == text


@pytest.mark.parametrize("length", [201, 202, 5000])
def test_message_over_200_chars_is_cut_to_exactly_200(length: int) -> None:
    """A longer message is cut to exactly 200 characters: 197 of the text, then '...'."""
    message = failure_of(classify(RESULT, NotSent("y" * length))).message
    assert message == "y" * 197 + "..."


def test_classify_options_are_keyword_only() -> None:
    """`wall_time` and `secret` can only be passed by keyword."""
    reply = ApiReply.json({"status": "processing"})
    assert classify(endpoint=RESULT, result=reply, wall_time=1.0) == classify(RESULT, reply)
    with pytest.raises(TypeError):
        classify(RESULT, reply, 1.0)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("status", "bucket"),
    [
        (499, Bucket.UNEXPECTED_HTTP),
        (500, Bucket.TRANSIENT_HTTP),
        (599, Bucket.TRANSIENT_HTTP),
        (600, Bucket.UNEXPECTED_HTTP),
        (601, Bucket.UNEXPECTED_HTTP),
        (999, Bucket.UNEXPECTED_HTTP),
    ],
)
def test_transient_5xx_range_is_exactly_500_to_599(status: int, bucket: Bucket) -> None:
    """Without an API code, 500-599 are transient; 499 and 600 and above are unexpected."""
    failure = failure_of(classify(RESULT, ApiReply(status, b"")))
    assert (failure.bucket, failure.name) == (bucket, f"HTTP_{status}")


def test_key_inside_a_documented_name_is_redacted() -> None:
    """The key is redacted from a failure's name even when its message does not contain it."""
    key = ApiKey("E_LIMITED")  # at least ApiKey.MIN_REDACTED_LENGTH characters
    failure = failure_of(classify(RESULT, ApiReply.json({"code": 16}), secret=key))
    assert failure.name == "RAT***"
    assert "E_LIMITED" not in failure.message


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("Wed, 21 Oct 2015 08:28:00 +0100", 60.0),
        ("Wed, 21 Oct 2015 02:28:00 -0500", 60.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),
    ],
)
def test_retry_after_date_keeps_its_zone_offset(target: str, expected: float) -> None:
    """A `Retry-After` date with a numeric zone is measured in that zone, not taken as UTC."""
    assert parse_retry_after(target, "Wed, 21 Oct 2015 07:27:00 GMT") == expected


@pytest.mark.parametrize("code", [-1, -16])
def test_negative_code_is_an_api_error(code: int) -> None:
    """A negative `code` is non-zero, so it is an (undocumented) API error, not a success."""
    failure = failure_of(classify_json({"code": code, "status": "processing"}))
    assert (failure.bucket, failure.code) == (Bucket.UNKNOWN_CODE, code)
