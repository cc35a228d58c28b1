"""`SimulatedAPI`: an in-process model of the NoCaptcha service, and a transport onto it.

Theory of operation. The model is a plain object with no clock and no I/O of its own: each
call `handle_http(path, body, now)` says what the service and the network between do with
one request sent at time `now`, and returns an `SimulatedExchange`: the reply (or the failure the
client sees) and how long after `now` the client sees it. The same object serves the
in-process `SimulatedTransport`, the discrete-event driver and `captchaflow serve-sim`.

Two streams seeded by `seed` drive every draw: one the network's faults, consumed in request
order; one each created task's solve time, solvability and solution, consumed in creation
order (so two clients that create tasks in the same order get the same tasks whatever faults
their other requests met). The same scenario, seed and request sequence give the same
replies, byte for byte.

Precedence for one request (the first that applies answers):
1. a network fault before the service (refused, lost request, gateway 429/5xx);
2. a body that is not a JSON object, or a missing `task`/`taskId`: 10 ERROR_BAD_PARAMETERS;
   a missing or unknown `clientKey`: 1 KEY_DOES_NOT_EXIST;
3. an outage: 21; the account's rate window: 16; its plan: 14 or 15;
4. createTask: an invalid task 10, the balance 3, the daily quota 17, the plan quota 18,
   the slots 2, else the task is created and billed; getTaskResult: an unknown task 10,
   `processing` until its solve time, then 12 or the solution;
5. a network fault after the service acted (lost reply, mangled body, slow reply).
"""

from __future__ import annotations

import collections
import enum
import heapq
import json
import math
import random
import string
from collections.abc import Mapping
from typing import Any, Final, Protocol

import attrs

from captchaflow.transports._base import NotSent, SentNoReply, TransportError
from captchaflow.transports._wire import ApiReply, ApiRequest, Endpoint, ErrorCode

from ._scenario import (
    BEFORE_SERVICE,
    AccountSpec,
    FaultKind,
    PlanState,
    Scenario,
)

__all__ = [
    "SimulatedExchange",
    "RequestFate",
    "SimStats",
    "SimTask",
    "SimRequest",
    "SimulatedAPI",
    "SimulatedClock",
    "SimulatedTransport",
]

DAY: Final = 86_400.0
_JSON_HEADERS: Final = {"content-type": "application/json"}
_HTML_HEADERS: Final = {"content-type": "text/html"}
_PROCESSING: Final = ApiReply.json({"status": "processing"}, headers=_JSON_HEADERS)


class RequestFate(enum.StrEnum):
    """What the client sees of one request."""

    REPLY = "reply"
    """An HTTP reply (which may still be an error, or mangled)."""
    REFUSED = "refused"
    """The connection was refused: nothing was sent."""
    TIMEOUT = "timeout"
    """No reply within the client's patience (the service may or may not have acted)."""


@attrs.frozen
class SimulatedExchange:
    """The fate of one request: `reply` when `fate` is REPLY; seen `latency` s after sending;
    `server_acted` tells whether the service processed it (billing included)."""

    fate: RequestFate
    latency: float
    reply: ApiReply | None = None
    server_acted: bool = True
    label: str = "ok"
    """A short name of what happened, for counters (`ok`, `code:16`, `refused`, ...)."""

    def seen_by_client(
        self, timeout: float | None = None
    ) -> tuple[float, ApiReply | TransportError]:
        """When (seconds after sending) and what a client with patience `timeout` sees: the
        reply, `NotSent` for a refused connection, `SentNoReply` for a timeout."""
        if timeout is not None and self.latency > timeout:
            return timeout, SentNoReply(f"no reply within {timeout:.3g}s")
        if self.fate is RequestFate.REFUSED:
            return self.latency, NotSent("connection refused (simulated)")
        if self.fate is RequestFate.TIMEOUT or self.reply is None:
            return self.latency, SentNoReply("timed out waiting for the reply (simulated)")
        return self.latency, self.reply


@attrs.define
class SimTask:
    """A task the service created."""

    task_id: int
    account: str
    """The owning account's name (display only)."""
    type: str
    created_at: float
    solve_at: float
    unsolvable: bool
    solution: dict[str, Any]
    delivered: int = 0
    """How many times the solution (or the 12) was sent back."""
    owner: int = attrs.field(default=-1, repr=False)
    """The owning account's position in the scenario (names need not be unique)."""


@attrs.frozen
class SimRequest:
    """One entry of the request log (no key: accounts appear by name)."""

    at: float
    endpoint: str
    account: str | None
    label: str
    task_id: int | None


@attrs.define
class SimStats:
    """Counters of everything the service did."""

    requests: collections.Counter[str] = attrs.field(factory=collections.Counter)
    """Requests received, by endpoint path (all of them, faults included)."""
    outcomes: collections.Counter[str] = attrs.field(factory=collections.Counter)
    """Requests by endpoint and label, keyed `"/createTask code:16"`."""
    tasks_created: int = 0
    """Tasks created (and billed): every createTask the service accepted."""
    tasks_billed_unseen: int = 0
    """Created tasks whose reply the client never received (lost or mangled)."""
    spent: float = 0.0
    solutions_delivered: int = 0


@attrs.define
class _Account:
    spec: AccountSpec
    index: int
    name: str
    balance: float | None
    window: collections.deque[float] = attrs.field(factory=collections.deque)
    created_per_day: collections.Counter[int] = attrs.field(factory=collections.Counter)
    created_in_plan: int = 0
    plan_reset_done: bool = False
    solving: list[float] = attrs.field(factory=list)
    """Solve times of tasks not yet done (pruned lazily)."""


class SimulatedAPI:
    """The service: see the module docstring. `keep_log=False` skips the per-request log
    (counters are always kept).

    A reply it sends again and again (`processing`, an error code with a given retry hint)
    is one `ApiReply`, built once, and so is the `SimulatedExchange` that carries it when no
    fault touches it: replies and exchanges are read-only (frozen; do not change a reply's
    `headers` either)."""

    def __init__(
        self, scenario: Scenario | None = None, *, seed: int = 0, keep_log: bool = True
    ) -> None:
        self.scenario = scenario if scenario is not None else Scenario()
        self.seed = seed
        self.rng = random.Random(seed)
        """Draws the network's faults, in request order."""
        self.task_rng = random.Random(f"tasks-{seed}")
        """Draws each created task's solve time, solvability and solution, in creation order:
        a stream of its own, so two clients that create tasks in the same order get the same
        tasks whatever faults their other requests met (common random numbers, which keeps
        comparisons of strategies on one seed from being mostly noise)."""
        self.stats = SimStats()
        self.log: list[SimRequest] = []
        self.keep_log = keep_log
        self.tasks: dict[int, SimTask] = {}
        self._accounts = {
            spec.key: _Account(spec, i, spec.name or f"account-{i + 1}", spec.balance)
            for i, spec in enumerate(self.scenario.accounts)
        }
        self._next_task_id = 1
        # Replies the service sends again and again (processing, its error codes with their
        # hints) are built once, with the exchange that carries them when nothing goes wrong.
        self._errors: dict[tuple[ErrorCode, int | None], tuple[ApiReply, str, None]] = {}
        self._plain: dict[int, SimulatedExchange] = {}
        self._share(_PROCESSING, "processing")
        rates = self.scenario.faults
        self._fault_rates = [(k, rates.rate(k)) for k in FaultKind if rates.rate(k) > 0]
        self._faults_possible = bool(self._fault_rates or self.scenario.scheduled_faults)

    # -- the wire --------------------------------------------------------------------------

    def handle(self, request: ApiRequest, now: float) -> SimulatedExchange:
        """What happens to `request` sent at `now` (in-process: the JSON body is not
        encoded and parsed again, which keeps large simulations fast)."""
        params = request.params  # its own `clientKey`, if it has one, wins (as in its body)
        key = params["clientKey"] if "clientKey" in params else request.key.reveal()
        return self._handle(_PATHS[request.endpoint], key, params, now)

    def handle_http(self, path: str, body: bytes, now: float) -> SimulatedExchange:
        """What happens to a POST of `body` to `path` at `now` (the HTTP server's entry)."""
        payload = _parse_object(body)
        key = payload.get("clientKey") if payload is not None else None
        return self._handle(path, key, payload, now)

    def _handle(
        self, path: str, key: object, payload: Mapping[str, Any] | None, now: float
    ) -> SimulatedExchange:
        """One request to `path` with the account key `key` (as sent: anything) and the
        other fields `payload` (None: the body was not a JSON object)."""
        self.stats.requests[path] += 1
        fault = self._draw_fault(path, now) if self._faults_possible else None
        account: _Account | None = None
        task_id: int | None = None
        if fault in BEFORE_SERVICE:
            exchange = self._fault_before(fault)
        else:
            account = self._accounts.get(key) if isinstance(key, str) else None
            reply, label, task_id = self._serve(path, payload, account, now)
            shared = self._plain.get(id(reply)) if fault is None else None
            if shared is not None and shared.latency == self.scenario.latency:
                exchange = shared  # a reply it keeps, and nothing went wrong (see `_share`)
            else:
                exchange = self._deliver(reply, label, fault, path, task_id)
        self.stats.outcomes[f"{path} {exchange.label}"] += 1
        if self.keep_log:
            name = account.name if account is not None else None
            self.log.append(SimRequest(now, path, name, exchange.label, task_id))
        return exchange

    # -- faults ----------------------------------------------------------------------------

    def _draw_fault(self, path: str, now: float) -> FaultKind | None:
        for scheduled in self.scenario.scheduled_faults:
            if scheduled.start <= now < scheduled.end and scheduled.endpoint in (None, path):
                return scheduled.kind
        draw = self.rng.random
        for kind, rate in self._fault_rates:
            if draw() < rate:
                return kind
        return None

    def _fault_before(self, fault: FaultKind) -> SimulatedExchange:
        latency = self.scenario.latency
        faults = self.scenario.faults
        if fault is FaultKind.REFUSED:
            return SimulatedExchange(
                RequestFate.REFUSED, latency / 2, server_acted=False, label="refused"
            )
        if fault is FaultKind.TIMEOUT_BEFORE:
            return SimulatedExchange(
                RequestFate.TIMEOUT,
                faults.timeout_seconds,
                server_acted=False,
                label="lost_request",
            )
        headers = dict(_HTML_HEADERS)
        if faults.retry_after_header is not None:
            headers["retry-after"] = _seconds_text(faults.retry_after_header)
        status = 429 if fault is FaultKind.HTTP_429 else self.rng.choice((500, 502, 503, 504))
        body = f"<html><body><h1>{status}</h1>gateway error</body></html>".encode()
        return SimulatedExchange(
            RequestFate.REPLY,
            latency,
            ApiReply(status, body, headers),
            server_acted=False,
            label=f"http:{status}",
        )

    def _deliver(
        self, reply: ApiReply, label: str, fault: FaultKind | None, path: str, task_id: int | None
    ) -> SimulatedExchange:
        latency = self.scenario.latency
        if fault is None:
            return SimulatedExchange(RequestFate.REPLY, latency, reply, label=label)
        created = path == "/createTask" and task_id is not None
        if fault is FaultKind.SLOW:
            return SimulatedExchange(
                RequestFate.REPLY, latency + self.scenario.faults.slow_seconds, reply, label=label
            )
        if created:
            self.stats.tasks_billed_unseen += 1
        if fault is FaultKind.TIMEOUT_AFTER:
            timeout = self.scenario.faults.timeout_seconds
            return SimulatedExchange(RequestFate.TIMEOUT, timeout, label=f"lost_reply({label})")
        if fault is FaultKind.NON_JSON:
            body = b"<html><body>Something went wrong</body></html>"
            mangled = ApiReply(200, body, _HTML_HEADERS)
        elif fault is FaultKind.TRUNCATED:
            mangled = ApiReply(reply.status, reply.body[: len(reply.body) // 2], reply.headers)
        else:
            mangled = ApiReply(200, b'["unexpected"]', _JSON_HEADERS)
        return SimulatedExchange(
            RequestFate.REPLY, latency, mangled, label=f"{fault.value}({label})"
        )

    # -- the service -----------------------------------------------------------------------

    def _serve(
        self, path: str, payload: Mapping[str, Any] | None, account: _Account | None, now: float
    ) -> tuple[ApiReply, str, int | None]:
        """The service's own answer, its counter label, and the task it concerns."""
        if path not in ("/createTask", "/getTaskResult", "/getBalance"):
            return ApiReply(404, b"not found", {"content-type": "text/plain"}), "http:404", None
        required = _REQUIRED.get(path)
        if payload is None or (required is not None and required not in payload):
            return self._error(ErrorCode.ERROR_BAD_PARAMETERS)
        if account is None:
            return self._error(ErrorCode.KEY_DOES_NOT_EXIST)
        refusal = self._account_refusal(account, now)
        if refusal is not None:
            return refusal
        if path == "/createTask":
            return self._create(payload, account, now)
        if path == "/getTaskResult":
            return self._result(payload, account, now)
        balance = account.balance
        reply = ApiReply.json(
            {"balance": balance if balance is not None else -1}, headers=_JSON_HEADERS
        )
        return reply, "balance", None

    def _account_refusal(self, account: _Account, now: float) -> tuple[ApiReply, str, None] | None:
        for outage in self.scenario.outages:
            if outage.start <= now < outage.end:
                hint = outage.end - now if outage.hint else None
                return self._error(ErrorCode.SERVICE_UNAVAILABLE, hint)
        spec = account.spec
        limit = spec.rate_limit
        if limit is not None:
            expiries = account.window  # when each admitted request leaves the window
            while expiries and expiries[0] <= now:
                expiries.popleft()
            if len(expiries) >= limit:
                return self._error(ErrorCode.RATE_LIMITED, expiries[0] - now)
            expiries.append(now + spec.rate_window)
        plan = spec.plan
        if plan is _ACTIVE:
            return None
        if plan is PlanState.EXPIRED:
            return self._error(ErrorCode.PLAN_EXPIRED)
        if plan is PlanState.INACTIVE:
            return self._error(ErrorCode.PLAN_INACTIVE)
        return None

    def _create(
        self, payload: Mapping[str, Any], account: _Account, now: float
    ) -> tuple[ApiReply, str, int | None]:
        task = payload.get("task")
        if not isinstance(task, dict) or not isinstance(task.get("type"), str):
            return self._error(ErrorCode.ERROR_BAD_PARAMETERS)
        spec = account.spec
        if account.balance is not None and account.balance + 1e-9 < spec.price:
            return self._error(ErrorCode.ZERO_BALANCE)
        day = math.floor(now / DAY)
        if spec.daily_quota is not None and account.created_per_day[day] >= spec.daily_quota:
            return self._error(ErrorCode.DAILY_LIMIT_EXCEEDED, (day + 1) * DAY - now)
        resets = spec.plan_quota_resets_at
        if resets is not None and now >= resets and not account.plan_reset_done:
            account.plan_reset_done = True
            account.created_in_plan = 0
        if spec.plan_quota is not None and account.created_in_plan >= spec.plan_quota:
            hint = resets - now if resets is not None and now < resets else None
            return self._error(ErrorCode.QUOTA_LIMIT_EXCEEDED, hint)
        solving = account.solving
        while solving and solving[0] <= now:
            heapq.heappop(solving)
        if spec.slots is not None and len(solving) >= spec.slots:
            return self._error(ErrorCode.NO_SLOT_AVAILABLE)
        task_id = self._new_task(task["type"], account, now)
        # What `ApiReply.json({"taskId": task_id})` gives, byte for byte, without the encoder.
        return ApiReply(200, b'{"taskId": %d}' % task_id), "ok", task_id

    def _new_task(self, task_type: str, account: _Account, now: float) -> int:
        kind = self.scenario.task_type(task_type)
        rng = self.task_rng
        solve = kind.solve_seconds + rng.uniform(-kind.solve_spread, kind.solve_spread)
        solve_at = now + max(kind.min_solve_seconds, solve)
        unsolvable = rng.random() < kind.unsolvable_rate
        text = "".join(rng.choices(_SOLUTION_LETTERS, k=6))
        task_id = self._next_task_id
        self._next_task_id += 1
        self.tasks[task_id] = SimTask(
            task_id,
            account.name,
            task_type,
            now,
            solve_at,
            unsolvable,
            {"text": text},
            owner=account.index,
        )
        if account.balance is not None:
            account.balance = round(account.balance - account.spec.price, 9)
        account.created_per_day[math.floor(now / DAY)] += 1
        account.created_in_plan += 1
        heapq.heappush(account.solving, solve_at)
        self.stats.tasks_created += 1
        self.stats.spent += account.spec.price
        return task_id

    def _result(
        self, payload: Mapping[str, Any], account: _Account, now: float
    ) -> tuple[ApiReply, str, int | None]:
        task_id = payload.get("taskId")
        known = isinstance(task_id, int) and not isinstance(task_id, bool)
        task = self.tasks.get(task_id) if known and task_id is not None else None
        if task is None or task.owner != account.index:
            return self._error(ErrorCode.ERROR_BAD_PARAMETERS)
        if now < task.solve_at:
            return _PROCESSING, "processing", task.task_id
        task.delivered += 1
        if task.unsolvable:
            error, label, _ = self._error(ErrorCode.ERROR_CAPTCHA_UNSOLVABLE)
            return error, label, task.task_id
        self.stats.solutions_delivered += 1
        return _ready(task.solution), "ready", task.task_id

    def _error(
        self, code: ErrorCode, retry_after: float | None = None
    ) -> tuple[ApiReply, str, None]:
        """The reply of an API error `code` with `retryAfterSec` (whole seconds, rounded up)
        when `retry_after` is given, and its counter label; built once per code and hint."""
        hint = _whole_seconds(retry_after) if retry_after is not None else None
        known = self._errors.get((code, hint))
        if known is not None:
            return known
        payload: dict[str, Any] = {"code": int(code), "msg": code.name}
        if hint is not None:
            payload["retryAfterSec"] = hint
        body = json.dumps(payload).encode()
        reply = ApiReply(self.scenario.error_status, body, _JSON_HEADERS)
        error = reply, f"code:{int(code)}", None
        if len(self._errors) < _MAX_SHARED_ERRORS:  # hints until a far reset are many
            self._errors[code, hint] = error
            self._share(reply, error[1])
        return error

    def _share(self, reply: ApiReply, label: str) -> None:
        """Keep `reply` to send again: its fault-free exchange is built once, here."""
        exchange = SimulatedExchange(RequestFate.REPLY, self.scenario.latency, reply, label=label)
        self._plain[id(reply)] = exchange  # the exchange keeps `reply`, so its id stays its own


_MAX_SHARED_ERRORS: Final = 1024


_REQUIRED: Final = {"/createTask": "task", "/getTaskResult": "taskId"}
_PATHS: Final = {endpoint: endpoint.value for endpoint in Endpoint}
_ACTIVE: Final = PlanState.ACTIVE
_SOLUTION_LETTERS: Final = string.ascii_lowercase + string.digits


def _ready(solution: dict[str, Any]) -> ApiReply:
    """What `ApiReply.json({"status": "ready", "solution": solution})` gives, byte for byte;
    a solution of one short ASCII letters-and-digits text (what the service makes) written
    without the encoder."""
    text = solution.get("text")
    if len(solution) == 1 and type(text) is str and text.isascii() and text.isalnum():
        return ApiReply(200, b'{"status": "ready", "solution": {"text": "%s"}}' % text.encode())
    return ApiReply.json({"status": "ready", "solution": solution})


def _whole_seconds(delay: float) -> int:
    """`delay` rounded up to whole seconds (at least 1), never short of it in floats."""
    seconds = max(1, math.ceil(delay - 1e-9))
    while seconds < delay:
        seconds += 1
    return seconds


def _parse_object(body: bytes) -> Mapping[str, Any] | None:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


def _seconds_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class SimulatedClock(Protocol):
    """What `SimulatedTransport` needs of a clock (an engine clock fits)."""

    def now(self) -> float:
        """The current time on the simulation's clock."""
        ...

    async def sleep_until(self, until: float) -> None:
        """Return once the clock has reached `until`."""
        ...


class SimulatedTransport:
    """A `Transport` onto a `SimulatedAPI`: the request reaches the model at `clock.now()`,
    and the reply (or failure) arrives `latency` later on the same clock. A refused
    connection raises `NotSent`; a timeout (or a reply later than `send`'s `timeout`)
    raises `SentNoReply`."""

    __slots__ = ("api", "clock")

    def __init__(self, api: SimulatedAPI, clock: SimulatedClock) -> None:
        self.api = api
        self.clock = clock

    async def send(self, request: ApiRequest, *, timeout: float | None = None) -> ApiReply:
        """Deliver `request` to the model and wait, on the clock, for what comes back."""
        sent_at = self.clock.now()
        delay, result = self.api.handle(request, sent_at).seen_by_client(timeout)
        await self.clock.sleep_until(sent_at + delay)
        if isinstance(result, TransportError):
            raise result
        return result

    async def aclose(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"SimulatedTransport(seed={self.api.seed})"
