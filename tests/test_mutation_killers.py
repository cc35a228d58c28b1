"""Focused tests added for mutants that survived `benchmarks/mutation.py` (cosmic-ray): each
pins one boundary or formula of the classification, the FSM or the policies that the broader
tests left loose. See benchmarks/results/mutation.txt for which mutant each one kills."""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest
from strategies import EdgeRandom

from captchaflow.engine import (
    TERMINAL_STATES,
    Accepted,
    IllegalTransitionError,
    TaskState,
    classify,
    fire,
    machine_dot,
    parse_retry_after,
)
from captchaflow.engine import _fsm as fsm_module
from captchaflow.policies import (
    Bucket,
    DecorrelatedJitter,
    DocumentedPolicy,
    EqualJitter,
    Exponential,
    Failure,
    FixedDelay,
    FixedInterval,
    FullJitter,
    NoRetry,
    Resubmit,
    RetryAfter,
    RetryContext,
)
from captchaflow.transports import ApiKey, ApiReply, Endpoint, NotSent, TransportError

CREATE, RESULT = Endpoint.CREATE_TASK, Endpoint.GET_TASK_RESULT


def failure_of(outcome: object) -> Failure:
    """`outcome`, checked to be a `Failure`."""
    assert isinstance(outcome, Failure), outcome
    return outcome


def classify_json(payload: Any, status: int = 200, endpoint: Endpoint = RESULT) -> object:
    """Classify a reply whose body is `payload` as JSON."""
    return classify(endpoint, ApiReply.json(payload, status=status))


# --- classification ---------------------------------------------------------------------------


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


# --- the state machine ------------------------------------------------------------------------


class _Model:
    """The least a job needs to be moved by the machine."""

    def __init__(self, state: str) -> None:
        self.state = state


def test_live_states_are_exactly_the_non_terminal_ones() -> None:
    """LIVE_STATES is submitted, polling and backoff: every state that is not terminal."""
    live = fsm_module.LIVE_STATES
    assert live == {TaskState.SUBMITTED, TaskState.POLLING, TaskState.BACKOFF}
    assert live | TERMINAL_STATES == set(TaskState)


def test_illegal_move_of_a_known_trigger_is_not_called_unknown() -> None:
    """Firing a known trigger in the wrong state names it an event, not an unknown event."""
    with pytest.raises(IllegalTransitionError) as caught:
        fire(_Model("ready"), "accept")
    assert str(caught.value).endswith(": can't handle event 'accept' in state 'ready'")
    assert (caught.value.trigger, caught.value.state) == ("accept", "ready")


def test_dot_draws_every_state_with_its_shape() -> None:
    """The drawing has one node per state: terminal ones double circles, live ones circles."""
    dot = machine_dot()
    for state in TaskState:
        shape = "doublecircle" if state in TERMINAL_STATES else "circle"
        assert f'  "{state.value}" [shape={shape}];' in dot.splitlines()


# --- policies ---------------------------------------------------------------------------------


def _ctx(attempt: int = 1, resubmits: int = 0, previous_delay: float | None = None) -> RetryContext:
    """A context far from its deadline."""
    return RetryContext(
        attempt=attempt,
        resubmits=resubmits,
        now=100.0,
        deadline=1e9,
        previous_delay=previous_delay,
    )


def _retryable() -> Failure:
    return Failure(Bucket.RETRYABLE, "NO_SLOT_AVAILABLE", "", RESULT, code=2)


def test_time_left_is_deadline_minus_now() -> None:
    """`RetryContext.time_left` is the deadline minus now, negative once it has passed."""
    assert RetryContext(attempt=1, resubmits=0, now=10.0, deadline=25.0).time_left == 15.0
    assert RetryContext(attempt=1, resubmits=0, now=30.0, deadline=25.0).time_left == -5.0


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        (RetryContext, (1, 0, 0.0, 10.0)),
        (FixedDelay, (5.0,)),
        (Exponential, (1.0,)),
        (FullJitter, (1.0,)),
        (EqualJitter, (1.0,)),
        (DecorrelatedJitter, (1.0,)),
        (DocumentedPolicy, (30.0,)),
        (FixedInterval, (2.0,)),
    ],
)
def test_settings_are_keyword_only(cls: type, args: tuple[Any, ...]) -> None:
    """Contexts, policies and poll schedules take their settings by keyword only."""
    with pytest.raises(TypeError):
        cls(*args)


def test_builtin_defaults_are_the_documented_ones() -> None:
    """Defaults: base 1 s and cap 30 s for the exponential family, 2 s fixed, 0 s resubmit."""
    for cls in (Exponential, FullJitter, EqualJitter, DecorrelatedJitter):
        policy = cls()
        assert (policy.base, policy.cap) == (1.0, 30.0), cls
    assert (DocumentedPolicy().cap, DocumentedPolicy().jitter) == (30.0, 1.0)
    assert FixedDelay().delay == 2.0
    assert Resubmit().delay == 0.0


def test_no_retry_is_a_frozen_value() -> None:
    """`NoRetry` instances are equal to each other and immutable (an attrs frozen class)."""
    assert NoRetry() == NoRetry()
    with pytest.raises(AttributeError):
        NoRetry().x = 1  # type: ignore[attr-defined]


def test_rng_is_not_in_the_repr() -> None:
    """A policy's repr shows its settings, not its random generator."""
    assert "rng" not in repr(DocumentedPolicy(rng=random.Random(1)))


@pytest.mark.parametrize(
    ("resubmits", "reason"), [(0, "resubmit 1"), (1, "resubmit 2"), (2, "resubmit 3")]
)
def test_resubmit_reason_counts_the_new_task(resubmits: int, reason: str) -> None:
    """An unsolvable failure's Resubmit says which resubmission it is: 1, 2, 3."""
    unsolvable = Failure(Bucket.UNSOLVABLE, "ERROR_CAPTCHA_UNSOLVABLE", "", RESULT, code=12)
    decision = DocumentedPolicy().decide(unsolvable, _ctx(resubmits=resubmits))
    assert isinstance(decision, Resubmit)
    assert decision.reason == reason


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_retry_reason_names_the_next_attempt(attempt: int) -> None:
    """A RetryAfter says why and which attempt comes next: "backoff, attempt 2/6"."""
    decision = FixedDelay().decide(_retryable(), _ctx(attempt=attempt))
    assert isinstance(decision, RetryAfter)
    assert decision.reason == f"backoff, attempt {attempt + 1}/6"
    hinted = attrs.evolve(_retryable(), retry_after=3.0)
    decision = FixedDelay().decide(hinted, _ctx(attempt=attempt))
    assert isinstance(decision, RetryAfter)
    assert decision.reason == f"server retry hint, attempt {attempt + 1}/6"


@pytest.mark.parametrize(("value", "jitter", "extra"), [(0.5, 2.0, 1.0), (0.25, 4.0, 1.0)])
def test_documented_jitter_scales_the_draw(value: float, jitter: float, extra: float) -> None:
    """DocumentedPolicy adds `random() * jitter`: a draw of 0.5 with jitter 2 adds 1 s."""
    policy = DocumentedPolicy(jitter=jitter, rng=EdgeRandom(value=value))
    assert policy.backoff(_ctx(attempt=3)) == 4.0 + extra


@pytest.mark.parametrize(("high", "expected"), [(True, 8.0), (False, 0.0)])
def test_full_jitter_draws_between_zero_and_the_exponential(high: bool, expected: float) -> None:
    """FullJitter draws in [0, base * 2 ** (attempt - 1)]: attempt 4 spans [0, 8]."""
    assert FullJitter(rng=EdgeRandom(high=high)).backoff(_ctx(attempt=4)) == expected


@pytest.mark.parametrize(("high", "expected"), [(True, 8.0), (False, 4.0)])
def test_equal_jitter_draws_in_the_upper_half(high: bool, expected: float) -> None:
    """EqualJitter draws in [t / 2, t] with t the capped exponential: attempt 4 spans [4, 8]."""
    assert EqualJitter(rng=EdgeRandom(high=high)).backoff(_ctx(attempt=4)) == expected


@pytest.mark.parametrize(
    ("previous", "high", "expected"),
    [(2.0, True, 6.0), (2.0, False, 1.0), (None, True, 3.0), (20.0, True, 30.0), (0.1, True, 1.0)],
)
def test_decorrelated_jitter_grows_to_three_times_the_previous_delay(
    previous: float | None, high: bool, expected: float
) -> None:
    """DecorrelatedJitter draws in [base, max(base, 3 * previous)], capped at 30 s."""
    policy = DecorrelatedJitter(rng=EdgeRandom(high=high))
    assert policy.backoff(_ctx(previous_delay=previous)) == expected


def test_exponent_is_clamped_at_64() -> None:
    """With no cap, a huge attempt waits base * 2 ** 64: the exponent stops growing at 64."""
    policy = Exponential(cap=float("inf"), max_attempts=10**6)
    assert policy.backoff(_ctx(attempt=65)) == 2.0**64
    assert policy.backoff(_ctx(attempt=10**5)) == 2.0**64
    assert policy.backoff(_ctx(attempt=64)) == 2.0**63
