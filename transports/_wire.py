"""The wire vocabulary of the NoCaptcha task API: endpoints, error codes, requests, replies.

Everything here is plain data. A request carries the account key as an `ApiKey`, whose
`repr` and `str` are masked, so a request can be logged, stored in a history or shown in a
traceback without leaking the credential; only `ApiRequest.body()` reveals it, to the wire.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any, ClassVar, TypeAlias

import attrs

__all__ = [
    "ApiKey",
    "ApiReply",
    "ApiRequest",
    "Endpoint",
    "ErrorCode",
    "JsonValue",
    "TaskId",
]

JsonValue: TypeAlias = Any
"""Any value `json.loads` can return."""

TaskId: TypeAlias = int | str
"""The provider's task identifier, sent back exactly as it was received."""


class Endpoint(enum.StrEnum):
    """The calls of the protocol, valued by their URL path: the two of a task's life, and
    the account's balance."""

    CREATE_TASK = "/createTask"
    GET_TASK_RESULT = "/getTaskResult"
    GET_BALANCE = "/getBalance"


class ErrorCode(enum.IntEnum):
    """Every error code the provider documents (see specs/error-codes.json)."""

    KEY_DOES_NOT_EXIST = 1
    NO_SLOT_AVAILABLE = 2
    ZERO_BALANCE = 3
    ERROR_BAD_PARAMETERS = 10
    ERROR_CAPTCHA_UNSOLVABLE = 12
    PLAN_EXPIRED = 14
    PLAN_INACTIVE = 15
    RATE_LIMITED = 16
    DAILY_LIMIT_EXCEEDED = 17
    QUOTA_LIMIT_EXCEEDED = 18
    SERVICE_UNAVAILABLE = 21


_MASK = "ApiKey('***')"


def _lower_keys(headers: Mapping[str, str]) -> Mapping[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _quoted_forms(text: str) -> set[str]:
    """How `text` reads inside a quoted string: Python `repr` (its quote choice escapes `'`
    or not), `ascii`, and JSON (ASCII-escaped or not), each without the quotes."""
    forms = {
        repr(text + '"')[1:-2],  # both quotes in the string: repr quotes with ' and escapes it
        ascii(text + '"')[1:-2],
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
    }
    if '"' not in text:
        forms.add(repr(text + "'")[1:-2])  # repr quotes with " and leaves ' alone
        forms.add(ascii(text + "'")[1:-2])
    return forms


def _secret_forms(secret: str) -> tuple[str, ...]:
    """The secret as written, quoted once and quoted twice (a repr of a message that already
    quoted it), longest first so a longer form is replaced whole before a shorter one."""
    once = _quoted_forms(secret)
    twice = set().union(*(_quoted_forms(form) for form in once))
    return tuple(sorted({secret} | once | twice, key=lambda form: (-len(form), form)))


@attrs.frozen(repr=False)
class ApiKey:
    """An account key that never shows itself: `repr`, `str` and format all print a mask.

    Equality compares the secret, so two keys for one account are equal; `reveal()` is the
    only way to read it, and only transports call it. `redact()` removes it from text,
    written as is or escaped by `repr`/JSON quoting, once it is at least
    `MIN_REDACTED_LENGTH` characters long.
    """

    MIN_REDACTED_LENGTH: ClassVar[int] = 8
    """Shorter keys are not redacted from text: no real key is that short, and replacing
    every `k` of a one-letter test key would mangle every message."""

    _secret: str = attrs.field(alias="secret")
    _forms: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)

    @_secret.validator
    def _check(self, _attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("an API key must be a str")
        if not value or value != value.strip():
            raise ValueError("an API key must be non-empty, without surrounding whitespace")

    @_forms.default
    def _derive_forms(self) -> tuple[str, ...]:
        secret = self._secret
        if not isinstance(secret, str) or len(secret) < self.MIN_REDACTED_LENGTH:
            return ()  # not a key worth redacting (or not a str: the validator says so)
        return _secret_forms(secret)

    def reveal(self) -> str:
        """Return the secret itself, for putting on the wire."""
        return self._secret

    def redact(self, text: str) -> str:
        """Return `text` with every occurrence of the secret replaced by `***`: as written,
        and as `repr` or JSON would have escaped it (once or twice) inside a quoted string.

        A key shorter than `MIN_REDACTED_LENGTH` is left in place (see there)."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, "***")
        return text

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return _MASK


@attrs.frozen
class ApiRequest:
    """One call to the API: the endpoint, the account key and the call's own fields.

    `params` is `{"task": {...}}` for createTask and `{"taskId": ...}` for getTaskResult;
    `body()` adds `clientKey`.
    """

    endpoint: Endpoint
    key: ApiKey
    params: Mapping[str, JsonValue]

    @classmethod
    def create_task(cls, key: ApiKey, task: Mapping[str, JsonValue]) -> ApiRequest:
        """Build the createTask request for `task`."""
        if cls is ApiRequest:
            return _request(Endpoint.CREATE_TASK, key, {"task": task})
        return cls(Endpoint.CREATE_TASK, key, {"task": task})

    @classmethod
    def get_task_result(cls, key: ApiKey, task_id: TaskId) -> ApiRequest:
        """Build the getTaskResult request for `task_id`."""
        if cls is not ApiRequest:
            return cls(Endpoint.GET_TASK_RESULT, key, {"taskId": task_id})
        request: ApiRequest = _new_object(ApiRequest)  # as `_request` makes it (a poll each)
        _SET_ENDPOINT(request, Endpoint.GET_TASK_RESULT)
        _SET_KEY(request, key)
        _SET_PARAMS(request, {"taskId": task_id})
        return request

    @classmethod
    def get_balance(cls, key: ApiKey) -> ApiRequest:
        """Build the getBalance request of `key`'s account."""
        return cls(Endpoint.GET_BALANCE, key, {})

    def body(self) -> bytes:
        """The JSON body as sent on the wire, key included."""
        payload = {"clientKey": self.key.reveal(), **self.params}
        return json.dumps(payload, separators=(",", ":")).encode()


_new_object = object.__new__
_SET_ENDPOINT = ApiRequest.__dict__["endpoint"].__set__
_SET_KEY = ApiRequest.__dict__["key"].__set__
_SET_PARAMS = ApiRequest.__dict__["params"].__set__


def _request(endpoint: Endpoint, key: ApiKey, params: Mapping[str, JsonValue]) -> ApiRequest:
    """`ApiRequest(endpoint, key, params)`, the same object, made by setting its three slots
    (it has no validator, converter or hook to run) instead of through attrs' frozen
    `__init__`, which cost half of what building a request and its `Send` cost a job."""
    request: ApiRequest = _new_object(ApiRequest)
    _SET_ENDPOINT(request, endpoint)
    _SET_KEY(request, key)
    _SET_PARAMS(request, params)
    return request


@attrs.frozen
class ApiReply:
    """What came back over the wire: HTTP status, headers (names lower-cased) and raw body.

    Nothing is parsed here; classification turns a reply into an outcome.
    """

    status: int
    body: bytes
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_lower_keys)

    @classmethod
    def json(
        cls, payload: JsonValue, *, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> ApiReply:
        """Build a reply whose body is `payload` encoded as JSON (handy in tests and handlers)."""
        return cls(status, json.dumps(payload).encode(), headers or {})
