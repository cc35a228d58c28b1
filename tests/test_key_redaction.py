"""The key is redacted however the text around it quoted it, and only when it is long enough
to be a key.

A server can echo the key in any field. Where our messages quote server data (`repr`, `!r`,
JSON), a key holding a backslash, a quote of either kind, a tab or a non-ASCII letter is
escaped on the way in, and a plain search for the key no longer finds it; these tests echo
such keys in each field and look for the key's distinctive tail in every text we produce.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest

from captchaflow.engine import Engine, Job, VirtualClock, classify
from captchaflow.policies import Bucket, Failure
from captchaflow.transports import ApiKey, ApiReply, ApiRequest, Endpoint, HandlerTransport

TAIL = "secret-key-123"
"""Every hostile key ends so: no text of ours may ever contain it."""
HOSTILE_KEYS = [
    "a\\b\"c'd-" + TAIL,  # a backslash and both quotes: repr escapes the \ and the '
    "o'brien-" + TAIL,  # one kind of quote: repr switches to the other
    'say"what-' + TAIL,
    "tab\there-" + TAIL,  # whitespace inside: escaped by repr, folded by message cleaning
    "new\nline-" + TAIL,
    "cl\u00e9\\-" + TAIL,  # non-ASCII: kept by repr, escaped by ascii() and JSON
]
IDS = ["backslash-both-quotes", "single-quote", "double-quote", "tab", "newline", "non-ascii"]
HOSTILE = pytest.mark.parametrize("secret", HOSTILE_KEYS, ids=IDS)
TASK = {"type": "ImageToTextTask", "body": "aGVsbG8="}


def quotings(value: str) -> list[str]:
    """Texts that quote `value` the ways messages and logs do."""
    return [
        value,
        repr(value),
        ascii(value),
        f"status {value!r} unknown",
        repr(f"it's {value}"),  # ' in the text: repr quotes with " (if it can)
        repr(f'say "{value}" now'),
        repr([value, {"taskId": value}]),
        repr(repr(value)),  # a repr of a message that already quoted it
        repr(f"task {value!r} accepted"),
        json.dumps(value),
        json.dumps(value, ensure_ascii=False),
        json.dumps({"msg": f"bad key {value}"}),
    ]


@HOSTILE
def test_redact_catches_every_quoting_of_the_key(secret: str) -> None:
    """`ApiKey.redact` removes the key as written and as `repr`, `ascii` or JSON escaped it,
    once or twice, inside any quoted text."""
    key = ApiKey(secret)
    for text in quotings(secret):
        assert TAIL not in key.redact(text), text


def test_redact_leaves_text_without_the_key_alone() -> None:
    """Text that does not contain the key (in any quoting) is returned unchanged."""
    key = ApiKey(HOSTILE_KEYS[0])
    text = "No worker slot is currently free for your account. 'a\\b' \"c\""
    assert key.redact(text) == text


def test_minimum_redacted_length_is_eight() -> None:
    """The documented rule: keys of fewer than 8 characters are not redacted."""
    assert ApiKey.MIN_REDACTED_LENGTH == 8


@pytest.mark.parametrize(
    ("secret", "redacted"),
    [("k", False), ("LIMITE", False), ("LIMITED", False), ("_LIMITED", True)],
)
def test_keys_shorter_than_the_minimum_are_not_redacted(secret: str, redacted: bool) -> None:
    """A key of MIN_REDACTED_LENGTH - 1 characters is left in text; one of exactly the
    minimum is redacted. A one-letter test key no longer mangles every message."""
    key = ApiKey(secret)
    text = f"No worker slot: RATE_LIMITED {secret!r}"
    assert (key.redact(text) != text) is redacted
    assert (secret in key.redact(text)) is not redacted
    assert repr(key) == str(key) == "ApiKey('***')"  # the mask never depends on the length


def test_one_letter_key_leaves_messages_readable() -> None:
    """With a one-character key, a classified failure reads as the provider wrote it."""
    failure = classify(
        Endpoint.CREATE_TASK,
        ApiReply.json({"code": 2, "msg": "no slot for worker k"}),
        secret=ApiKey("k"),
    )
    assert isinstance(failure, Failure)
    assert failure.name == "NO_SLOT_AVAILABLE"
    assert failure.message.startswith("No worker slot is currently free")
    assert failure.message.endswith("(server: no slot for worker k)")


Payload = Callable[[str], dict[str, object]]


@HOSTILE
@pytest.mark.parametrize(
    ("endpoint", "payload"),
    [
        (Endpoint.CREATE_TASK, lambda key: {"code": key}),
        (Endpoint.CREATE_TASK, lambda key: {"code": [key]}),
        (Endpoint.GET_TASK_RESULT, lambda key: {"status": key}),
        (Endpoint.GET_TASK_RESULT, lambda key: {"status": {"state": key}}),
        (Endpoint.CREATE_TASK, lambda key: {"code": 1, "msg": key}),
        (Endpoint.CREATE_TASK, lambda key: {"code": 99, "msg": f"rejected {key}"}),
    ],
    ids=["code", "code-array", "status", "status-object", "msg", "msg-unknown-code"],
)
def test_classify_redacts_an_echoed_key_in_every_field(
    secret: str, endpoint: Endpoint, payload: Payload
) -> None:
    """A key echoed as `code`, `status` or `msg` is in no part of the classified failure."""
    failure = classify(endpoint, ApiReply.json(payload(secret)), secret=ApiKey(secret))
    assert isinstance(failure, Failure)
    assert failure.bucket in (Bucket.MALFORMED, Bucket.PERMANENT, Bucket.UNKNOWN_CODE)
    for text in (failure.message, failure.name, repr(failure)):
        assert TAIL not in text, text


def texts_of(job: Job, engine: Engine, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every text the engine produced about `job`."""
    error = job.error
    assert error is not None
    failure = job.last_failure
    assert failure is not None
    return [
        str(error),
        repr(error),
        error.summary(),
        error.reason,
        repr(error.history),
        repr(job),
        repr(job.history),
        *(move.cause for move in job.history),
        repr(failure),
        repr(engine),
        caplog.text,
    ]


Handler = Callable[[ApiRequest], ApiReply]


def echo_in_task_id_and_status(secret: str) -> Handler:
    """createTask answers the key as `taskId`; every poll answers it as `status`."""

    def handle(request: ApiRequest) -> ApiReply:
        if request.endpoint is Endpoint.CREATE_TASK:
            return ApiReply.json({"taskId": secret})
        return ApiReply.json({"status": secret})

    return handle


def echo_in_code(secret: str) -> Handler:
    """createTask answers the key as `code`."""
    return lambda request: ApiReply.json({"code": secret})


def echo_in_msg(secret: str) -> Handler:
    """createTask answers KEY_DOES_NOT_EXIST quoting the key in `msg`."""
    return lambda request: ApiReply.json({"code": 1, "msg": f"key {secret!r} does not exist"})


@pytest.mark.anyio
@HOSTILE
@pytest.mark.parametrize(
    "server", [echo_in_task_id_and_status, echo_in_code, echo_in_msg], ids=lambda f: f.__name__
)
async def test_engine_never_shows_an_echoed_key(
    secret: str, server: Callable[[str], Handler], caplog: pytest.LogCaptureFixture
) -> None:
    """A server echoing a hostile key as `taskId`, `status`, `code` or `msg` never gets it,
    escaped or not, into an error, a history entry, a repr or a log record."""
    caplog.set_level(logging.DEBUG)
    transport = HandlerTransport(server(secret))
    engine = Engine(secret, transport=transport, clock=VirtualClock(), timeout=600)
    job = await engine.run(TASK)
    assert transport.requests_sent > 1 or server is echo_in_msg  # it got to quote the key
    if server is echo_in_task_id_and_status and secret.isprintable():
        assert job.task_id == secret  # kept as data, sent back on every poll
    for text in texts_of(job, engine, caplog):
        assert TAIL not in text, text
