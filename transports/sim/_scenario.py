"""Scenarios: plain data describing the simulated service, loadable from JSON or TOML.

A scenario says which accounts exist (key, balance, plan, slots, rate and quotas), how long
each task type takes to solve and how often it is unsolvable, when the service is down, and
which network faults strike, by probability or by schedule. Every field has a default, so
`Scenario()` is a healthy service with one account whose key is `test-key`.

All times are seconds on the simulation's clock, which starts at 0.
"""

from __future__ import annotations

import enum
import json
import math
import pathlib
import tomllib
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs

__all__ = [
    "AccountSpec",
    "FaultKind",
    "FaultRates",
    "Outage",
    "PlanState",
    "Scenario",
    "ScenarioError",
    "ScheduledFault",
    "TaskTypeSpec",
]


class ScenarioError(ValueError):
    """A scenario file or mapping that does not describe a valid scenario."""


def _non_negative(_instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _probability(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _positive_int(_instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be None or >= 1, got {value!r}")


_ENDPOINTS = frozenset({"/createTask", "/getTaskResult", "/getBalance"})


def _ends_after_start(instance: Any, end: float) -> None:
    if end < instance.start:
        what = "an outage" if isinstance(instance, Outage) else "a scheduled fault"
        raise ValueError(f"{what} must end after it starts")


class PlanState(enum.StrEnum):
    """An account's plan: active, or the state that makes every request fail (14, 15)."""

    ACTIVE = "active"
    EXPIRED = "expired"
    INACTIVE = "inactive"


@attrs.frozen(kw_only=True)
class AccountSpec:
    """One account of the simulated service.

    - `balance`: credit left (`None`: unlimited); each created task costs `price`, and a
      createTask that the balance cannot pay for gets 3 ZERO_BALANCE;
    - `plan`: `expired` answers 14 PLAN_EXPIRED, `inactive` 15 PLAN_INACTIVE, to everything;
    - `slots`: tasks being solved at once (`None`: unlimited); beyond it, 2 NO_SLOT_AVAILABLE;
    - `rate_limit` requests per `rate_window` seconds (`None`: unlimited); beyond it,
      16 RATE_LIMITED with `retryAfterSec` until the window frees;
    - `daily_quota` tasks per day (days start at multiples of 86,400 s): beyond it,
      17 DAILY_LIMIT_EXCEEDED with `retryAfterSec` to the next day;
    - `plan_quota` tasks per plan period: beyond it, 18 QUOTA_LIMIT_EXCEEDED, with
      `retryAfterSec` to `plan_quota_resets_at` when that is set.
    """

    key: str = attrs.field(default="test-key", repr=lambda _key: "'***'")
    name: str = ""
    balance: float | None = attrs.field(default=None, validator=_non_negative)
    price: float = attrs.field(default=0.001, validator=_non_negative)
    plan: PlanState = PlanState.ACTIVE
    slots: int | None = attrs.field(default=None, validator=_positive_int)
    rate_limit: int | None = attrs.field(default=None, validator=_positive_int)
    rate_window: float = attrs.field(default=1.0, validator=_non_negative)
    daily_quota: int | None = attrs.field(default=None, validator=_positive_int)
    plan_quota: int | None = attrs.field(default=None, validator=_positive_int)
    plan_quota_resets_at: float | None = attrs.field(default=None, validator=_non_negative)

    @key.validator
    def _check_key(self, _attribute: attrs.Attribute[str], value: str) -> None:
        if not value or value != value.strip():
            raise ValueError("an account key must be non-empty, without surrounding whitespace")


@attrs.frozen(kw_only=True)
class TaskTypeSpec:
    """How a task type behaves: solve time uniform in `solve_seconds` ± `solve_spread`
    (never below `min_solve_seconds`), and the chance that it turns out unsolvable (12)."""

    solve_seconds: float = attrs.field(default=8.0, validator=_non_negative)
    solve_spread: float = attrs.field(default=4.0, validator=_non_negative)
    min_solve_seconds: float = attrs.field(default=1.0, validator=_non_negative)
    unsolvable_rate: float = attrs.field(default=0.0, validator=_probability)


@attrs.frozen(kw_only=True)
class Outage:
    """From `start` to `end` every request gets 21 SERVICE_UNAVAILABLE, with `retryAfterSec`
    (the seconds left, rounded up) when `hint` is true."""

    start: float = attrs.field(validator=_non_negative)
    end: float = attrs.field(validator=[_non_negative, lambda s, a, v: _ends_after_start(s, v)])
    hint: bool = True


class FaultKind(enum.StrEnum):
    """A network or gateway fault. The first four happen before the service sees the
    request; the rest after it acted (so a createTask may be billed)."""

    REFUSED = "refused"
    """The connection is refused: nothing was sent."""
    TIMEOUT_BEFORE = "timeout_before"
    """The request is lost on the way: the client times out; the service saw nothing."""
    HTTP_429 = "http_429"
    """A gateway answers 429 (with `Retry-After` when configured)."""
    HTTP_5XX = "http_5xx"
    """A gateway answers 500, 502, 503 or 504 with an HTML page."""
    TIMEOUT_AFTER = "timeout_after"
    """The service acted, but the reply is lost: the client times out."""
    NON_JSON = "non_json"
    """The service acted; the client receives an HTML body instead of its reply."""
    TRUNCATED = "truncated"
    """The service acted; the client receives the first half of its reply."""
    WRONG_SHAPE = "wrong_shape"
    """The service acted; the client receives JSON of the wrong shape."""
    SLOW = "slow"
    """The reply arrives, `slow_seconds` late."""


BEFORE_SERVICE = frozenset(
    {FaultKind.REFUSED, FaultKind.TIMEOUT_BEFORE, FaultKind.HTTP_429, FaultKind.HTTP_5XX}
)


@attrs.frozen(kw_only=True)
class FaultRates:
    """Per-request probabilities of each fault, tried in `FaultKind` order (at most one
    fault strikes a request), and the fault parameters."""

    refused: float = attrs.field(default=0.0, validator=_probability)
    timeout_before: float = attrs.field(default=0.0, validator=_probability)
    http_429: float = attrs.field(default=0.0, validator=_probability)
    http_5xx: float = attrs.field(default=0.0, validator=_probability)
    timeout_after: float = attrs.field(default=0.0, validator=_probability)
    non_json: float = attrs.field(default=0.0, validator=_probability)
    truncated: float = attrs.field(default=0.0, validator=_probability)
    wrong_shape: float = attrs.field(default=0.0, validator=_probability)
    slow: float = attrs.field(default=0.0, validator=_probability)
    retry_after_header: float | None = attrs.field(default=None, validator=_non_negative)
    """The `Retry-After` (seconds) sent with gateway 429/5xx replies; `None`: none."""
    timeout_seconds: float = attrs.field(default=30.0, validator=_non_negative)
    """How long a client waits before a lost request or reply times out."""
    slow_seconds: float = attrs.field(default=10.0, validator=_non_negative)

    def rate(self, kind: FaultKind) -> float:
        """The probability of `kind`."""
        return float(getattr(self, kind.value))


@attrs.frozen(kw_only=True)
class ScheduledFault:
    """From `start` to `end`, every request (to `endpoint` only, when given) suffers `kind`."""

    start: float = attrs.field(validator=_non_negative)
    end: float = attrs.field(validator=[_non_negative, lambda s, a, v: _ends_after_start(s, v)])
    kind: FaultKind
    endpoint: str | None = attrs.field(default=None)

    @endpoint.validator
    def _check_endpoint(self, _attribute: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None and value not in _ENDPOINTS:
            raise ValueError(f"endpoint must be one of {sorted(_ENDPOINTS)}, got {value!r}")


@attrs.frozen(kw_only=True)
class Scenario:
    """Everything the simulated service does. See the module docstring."""

    accounts: tuple[AccountSpec, ...] = attrs.field(default=(AccountSpec(),))
    task_types: Mapping[str, TaskTypeSpec] = attrs.field(factory=dict)
    """Per task `type`; types not listed behave as `default_task`."""
    default_task: TaskTypeSpec = TaskTypeSpec()
    outages: tuple[Outage, ...] = ()
    faults: FaultRates = FaultRates()
    scheduled_faults: tuple[ScheduledFault, ...] = ()
    latency: float = attrs.field(default=0.05, validator=_non_negative)
    """Network round-trip time of every exchange, in seconds."""
    error_status: int = 200
    """The HTTP status of API error replies (the provider's example reads the body whatever
    the status; 200 is what it expects)."""

    @accounts.validator
    def _check_accounts(
        self, _attribute: attrs.Attribute[tuple[AccountSpec, ...]], value: tuple[AccountSpec, ...]
    ) -> None:
        keys = [account.key for account in value]
        if len(set(keys)) != len(keys):
            raise ValueError("two accounts share a key")

    def task_type(self, name: str) -> TaskTypeSpec:
        """The behaviour of tasks of type `name`."""
        return self.task_types.get(name, self.default_task)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        """Build a scenario from plain data (as parsed from JSON or TOML); raise
        `ScenarioError` naming every problem."""
        try:
            return _converter.structure(dict(data), cls)
        except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
            raise ScenarioError(_explain(exc)) from None

    @classmethod
    def load(cls, path: str | pathlib.Path) -> Scenario:
        """Read a scenario from a `.json` or `.toml` file; raise `ScenarioError` (or
        `OSError` when the file cannot be read)."""
        path = pathlib.Path(path)
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ScenarioError(f"{path}: not valid {path.suffix[1:] or 'JSON'}: {exc}") from None
        if not isinstance(data, dict):
            raise ScenarioError(f"{path}: a scenario must be an object/table")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The scenario as plain data (`from_dict(s.to_dict()) == s`)."""
        result: dict[str, Any] = _converter.unstructure(self)
        return result


_converter = cattrs.Converter(forbid_extra_keys=True)


def _strict(kind: type, accepted: tuple[type, ...]) -> None:
    """Refuse silent conversions ("false" -> True, 2.7 -> 2, true -> 1.0)."""

    def structure(value: Any, _type: Any) -> Any:
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, accepted):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return kind(value)

    _converter.register_structure_hook(kind, structure)


def _enum(kind: type[enum.Enum]) -> None:
    """Enums subclass str, so they need their own (more specific) hook."""

    def structure(value: Any, _type: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(repr(member.value) for member in kind)
            raise ValueError(f"{value!r} is not one of {choices}") from None

    _converter.register_structure_hook(kind, structure)


_strict(bool, (bool,))
_strict(int, (int,))
_strict(float, (int, float))
_strict(str, (str,))
_enum(PlanState)
_enum(FaultKind)


def _describe(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown field(s) {sorted(exc.extra_fields)}"
    if isinstance(exc, ValueError | TypeError) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def _explain(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        messages = cattrs.transform_error(exc, path="scenario", format_exception=_describe)
        return "invalid scenario: " + "; ".join(messages)
    return f"invalid scenario: {exc}"
