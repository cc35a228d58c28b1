"""The simulated NoCaptcha service: the wire, accounts, tasks, faults, counters, determinism,
scenarios, and the transport onto it in virtual time."""

from __future__ import annotations

import collections
import json
import math
import pathlib
from typing import Any

import attrs
import pytest

from captchaflow.engine import Accepted, VirtualClock, classify
from captchaflow.policies import Bucket, Failure
from captchaflow.transports import (
    ApiKey,
    ApiReply,
    ApiRequest,
    Endpoint,
    ErrorCode,
    NotSent,
    SentNoReply,
)
from captchaflow.transports.sim import (
    AccountSpec,
    FaultKind,
    FaultRates,
    Outage,
    PlanState,
    RequestFate,
    Scenario,
    ScenarioError,
    ScheduledFault,
    SimRequest,
    SimulatedAPI,
    SimulatedExchange,
    SimulatedTransport,
    TaskTypeSpec,
)

KEY = "sk-sim-3b9f0c2d-NEVER-IN-ANY-REPR"
OTHER_KEY = "sk-sim-other-account-key"
TASK: dict[str, Any] = {"type": "ImageToTextTask", "body": "aGk="}
DAY = 86_400.0
FIXED = TaskTypeSpec(solve_seconds=5.0, solve_spread=0.0, min_solve_seconds=0.0)
"""Every task takes exactly 5 s to solve."""
PATHS = ("/createTask", "/getTaskResult", "/getBalance")


# -- helpers ---------------------------------------------------------------------------------


def scenario(**account: Any) -> Scenario:
    """One account (key `KEY`, with `account`'s settings) and 5 s tasks."""
    return Scenario(
        accounts=(AccountSpec(key=KEY, name="main", **account),), default_task=FIXED, latency=0.1
    )


def encode(**fields: Any) -> bytes:
    """A JSON request body."""
    return json.dumps(fields).encode()


def create(api: SimulatedAPI, now: float, *, key: str = KEY, task: Any = TASK) -> SimulatedExchange:
    """POST a createTask."""
    return api.handle_http("/createTask", encode(clientKey=key, task=task), now)


def poll(api: SimulatedAPI, task_id: Any, now: float, *, key: str = KEY) -> SimulatedExchange:
    """POST a getTaskResult."""
    return api.handle_http("/getTaskResult", encode(clientKey=key, taskId=task_id), now)


def balance(api: SimulatedAPI, now: float, *, key: str = KEY) -> SimulatedExchange:
    """POST a getBalance."""
    return api.handle_http("/getBalance", encode(clientKey=key), now)


def request(api: SimulatedAPI, path: str, now: float, task_id: Any = 1) -> SimulatedExchange:
    """POST a well-formed request to any of the three endpoints."""
    if path == "/createTask":
        return create(api, now)
    if path == "/getTaskResult":
        return poll(api, task_id, now)
    return balance(api, now)


def body(exchange: SimulatedExchange) -> Any:
    """The parsed JSON body of a reply."""
    assert exchange.fate is RequestFate.REPLY
    assert exchange.reply is not None
    return json.loads(exchange.reply.body)


def code(exchange: SimulatedExchange) -> int | None:
    """The API error code of a reply (None for a success)."""
    payload = body(exchange)
    return payload.get("code") if isinstance(payload, dict) else None


def hint(exchange: SimulatedExchange) -> int | None:
    """The `retryAfterSec` of an error reply."""
    payload = body(exchange)
    assert isinstance(payload, dict)
    return payload.get("retryAfterSec")


def task_id_of(exchange: SimulatedExchange) -> int:
    """The task id of a successful createTask reply."""
    task_id = body(exchange)["taskId"]
    assert isinstance(task_id, int)
    return task_id


def with_fault(kind: FaultKind, how: str, **faults: Any) -> Scenario:
    """A scenario where every request suffers `kind`, by schedule or by probability 1."""
    if how == "scheduled":
        return Scenario(
            accounts=(AccountSpec(key=KEY),),
            default_task=FIXED,
            latency=0.2,
            faults=FaultRates(**faults),
            scheduled_faults=(ScheduledFault(start=0.0, end=1e9, kind=kind),),
        )
    return Scenario(
        accounts=(AccountSpec(key=KEY),),
        default_task=FIXED,
        latency=0.2,
        faults=FaultRates(**{kind.value: 1.0}, **faults),
    )


HOW = pytest.mark.parametrize("how", ["scheduled", "probability"])


# -- the wire --------------------------------------------------------------------------------


def test_create_returns_integer_task_id() -> None:
    """A valid createTask answers `{"taskId": <int>}` and records the task."""
    api = SimulatedAPI(scenario())
    exchange = create(api, 0.0)
    assert exchange.fate is RequestFate.REPLY
    assert exchange.reply is not None and exchange.reply.status == 200
    assert exchange.server_acted and exchange.label == "ok"
    assert exchange.latency == pytest.approx(0.1)
    assert body(exchange) == {"taskId": 1}
    assert set(api.tasks) == {1}
    assert task_id_of(create(api, 0.0)) == 2


def test_processing_until_solve_time_then_ready_with_stored_solution() -> None:
    """A task answers `processing` before its solve time and then the stored solution, exactly."""
    api = SimulatedAPI(scenario())
    task_id = task_id_of(create(api, 10.0))
    task = api.tasks[task_id]
    assert (task.account, task.type, task.created_at, task.solve_at) == (
        "main",
        "ImageToTextTask",
        10.0,
        15.0,
    )
    assert not task.unsolvable
    for now in (10.0, 12.0, 14.999):
        exchange = poll(api, task_id, now)
        assert body(exchange) == {"status": "processing"}
        assert exchange.label == "processing"
    ready = poll(api, task_id, 15.0)
    assert ready.label == "ready"
    assert body(ready) == {"status": "ready", "solution": api.tasks[task_id].solution}
    assert body(poll(api, task_id, 99.0))["solution"] == api.tasks[task_id].solution


def test_in_process_handle_matches_handle_http() -> None:
    """`handle(ApiRequest)` gives the same exchanges as `handle_http` of the encoded body."""
    sc = Scenario(accounts=(AccountSpec(key=KEY),), faults=FaultRates(non_json=0.3, slow=0.3))
    direct, http = SimulatedAPI(sc, seed=5), SimulatedAPI(sc, seed=5)
    key = ApiKey(KEY)
    for i in range(30):
        requests = [ApiRequest.create_task(key, TASK), ApiRequest.get_task_result(key, i // 2 + 1)]
        for req in requests:
            now = float(i * 3)
            raw = req.body()
            expected = http.handle_http(req.endpoint.value, raw, now)
            assert direct.handle(req, now) == expected


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "fields",
    [{"clientKey": "sk-wrong"}, {}, {"clientKey": 12345}, {"clientKey": None}],
    ids=["wrong", "missing", "number", "null"],
)
def test_wrong_or_missing_key_is_code_1(path: str, fields: dict[str, Any]) -> None:
    """A missing, unknown or non-string `clientKey` answers 1 KEY_DOES_NOT_EXIST everywhere."""
    api = SimulatedAPI(scenario())
    exchange = api.handle_http(path, encode(**fields, task=TASK, taskId=1), 0.0)
    assert code(exchange) == 1
    assert body(exchange)["msg"] == "KEY_DOES_NOT_EXIST"
    assert exchange.label == "code:1"
    assert api.stats.tasks_created == 0


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/createTask", b"{not json"),
        ("/createTask", b""),
        ("/createTask", b"[1, 2]"),
        ("/createTask", b'"a string"'),
        ("/getTaskResult", b"null"),
        ("/createTask", {}),
        ("/createTask", {"task": "ImageToTextTask"}),
        ("/createTask", {"task": {"body": "x"}}),
        ("/createTask", {"task": {"type": 7}}),
        ("/getTaskResult", {}),
        ("/getTaskResult", {"taskId": 999}),
        ("/getTaskResult", {"taskId": "1"}),
        ("/getTaskResult", {"taskId": 1.5}),
    ],
    ids=[
        "not-json",
        "empty",
        "array",
        "string",
        "null",
        "no-task",
        "task-not-object",
        "task-without-type",
        "type-not-string",
        "no-taskId",
        "unknown-taskId",
        "taskId-as-string",
        "taskId-float",
    ],
)
def test_bad_parameters_are_code_10(path: str, raw: bytes | dict[str, Any]) -> None:
    """Bodies that are not JSON objects, or lack a usable `task`/`taskId`, answer 10."""
    api = SimulatedAPI(scenario())
    create(api, 0.0)
    # (the key is added here, not in the parameters, so no report can show it)
    data = raw if isinstance(raw, bytes) else encode(clientKey=KEY, **raw)
    exchange = api.handle_http(path, data, 1.0)
    assert code(exchange) == 10
    assert body(exchange)["msg"] == "ERROR_BAD_PARAMETERS"
    assert api.stats.tasks_created == 1


def test_boolean_task_id_is_code_10() -> None:
    """`"taskId": true` is not a task id and answers 10, not task 1's result."""
    api = SimulatedAPI(scenario())
    create(api, 0.0)
    assert code(poll(api, True, 10.0)) == 10


def test_another_accounts_task_is_code_10() -> None:
    """An account cannot read another account's task: 10 ERROR_BAD_PARAMETERS."""
    sc = Scenario(accounts=(AccountSpec(key=KEY), AccountSpec(key=OTHER_KEY)), default_task=FIXED)
    api = SimulatedAPI(sc)
    task_id = task_id_of(create(api, 0.0))
    assert code(poll(api, task_id, 10.0, key=OTHER_KEY)) == 10
    assert api.tasks[task_id].delivered == 0
    assert body(poll(api, task_id, 10.0))["status"] == "ready"


def test_accounts_sharing_a_name_cannot_read_each_others_tasks() -> None:
    """Ownership follows the account (its key), not its display name."""
    sc = Scenario(
        accounts=(AccountSpec(key=KEY, name="team"), AccountSpec(key=OTHER_KEY, name="team")),
        default_task=FIXED,
    )
    api = SimulatedAPI(sc)
    task_id = task_id_of(create(api, 0.0))
    assert code(poll(api, task_id, 10.0, key=OTHER_KEY)) == 10


def test_unknown_path_is_404() -> None:
    """A POST to a path the service does not have answers HTTP 404, whatever the body."""
    api = SimulatedAPI(scenario())
    raw = encode(clientKey=KEY, task=TASK)
    exchange = api.handle_http("/createTasks", raw, 0.0)
    assert exchange.reply is not None
    assert exchange.reply.status == 404
    assert exchange.label == "http:404"
    assert api.stats.tasks_created == 0
    assert api.stats.requests["/createTasks"] == 1
    assert api.handle_http("/", b"garbage", 0.0).label == "http:404"


def test_get_balance() -> None:
    """`/getBalance` answers the credit left, and -1 for an unlimited balance."""
    api = SimulatedAPI(scenario(balance=1.0, price=0.25))
    assert body(balance(api, 0.0)) == {"balance": 1.0}
    create(api, 0.0)
    create(api, 0.0)
    exchange = balance(api, 1.0)
    assert body(exchange) == {"balance": 0.5}
    assert exchange.label == "balance"
    assert body(balance(SimulatedAPI(scenario()), 0.0)) == {"balance": -1}


# -- accounts --------------------------------------------------------------------------------


def test_balance_runs_out_after_n_tasks() -> None:
    """With balance N x price, N tasks are created; then 3 ZERO_BALANCE and nothing is billed."""
    api = SimulatedAPI(scenario(balance=3.0, price=1.0))
    assert [task_id_of(create(api, float(t))) for t in range(3)] == [1, 2, 3]
    for t in range(3, 6):
        exchange = create(api, float(t))
        assert code(exchange) == 3
        assert body(exchange)["msg"] == "ZERO_BALANCE"
    assert api.stats.tasks_created == 3
    assert api.stats.spent == 3.0
    assert body(balance(api, 9.0)) == {"balance": 0.0}
    assert body(poll(api, 1, 9.0))["status"] == "ready"


def test_balance_of_n_default_prices_pays_for_n_tasks() -> None:
    """A balance of 11 x the default price (0.001) pays for exactly 11 tasks."""
    api = SimulatedAPI(scenario(balance=0.011))
    labels = [create(api, 0.0).label for _ in range(12)]
    assert labels == ["ok"] * 11 + ["code:3"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("plan", "expected"), [(PlanState.EXPIRED, 14), (PlanState.INACTIVE, 15)])
def test_plan_state_refuses_every_endpoint(path: str, plan: PlanState, expected: int) -> None:
    """An expired plan answers 14 and an inactive one 15, to every endpoint."""
    api = SimulatedAPI(scenario(plan=plan))
    exchange = request(api, path, 0.0)
    assert code(exchange) == expected
    assert body(exchange)["msg"] == f"PLAN_{plan.name}"
    assert api.stats.tasks_created == 0


def test_slots_busy_until_solve_time() -> None:
    """With all slots busy createTask answers 2 (no hint); a slot frees at the solve time."""
    api = SimulatedAPI(scenario(slots=2))
    create(api, 0.0)
    create(api, 1.0)
    for now in (1.0, 3.0, 4.999):
        exchange = create(api, now)
        assert code(exchange) == 2
        assert hint(exchange) is None
    assert task_id_of(create(api, 5.0)) == 3
    assert code(create(api, 5.5)) == 2
    assert task_id_of(create(api, 6.0)) == 4
    assert api.stats.tasks_created == 4


def test_rate_limit_hint_and_admission() -> None:
    """Over the rate: 16, hint = seconds until the window frees (rounded up); then admitted."""
    api = SimulatedAPI(scenario(rate_limit=2, rate_window=10.0))
    assert balance(api, 0.0).label == "balance"
    assert create(api, 3.0).label == "ok"
    limited = create(api, 4.5)
    assert code(limited) == 16
    assert hint(limited) == 6  # the request at 0 leaves the window at 10: 5.5 s, rounded up
    again = poll(api, 1, 4.5)
    assert code(again) == 16  # every endpoint counts
    assert hint(again) == 6
    assert create(api, 4.5 + 6).label == "ok"
    assert code(create(api, 10.5)) == 16
    assert hint(create(api, 10.5)) == 3  # now the request at 3 is the oldest


def test_rate_limit_hint_is_at_least_one_second() -> None:
    """A window that frees in under a second still hints 1 (never 0)."""
    api = SimulatedAPI(scenario(rate_limit=1, rate_window=0.5))
    create(api, 0.0)
    limited = create(api, 0.2)
    assert code(limited) == 16
    assert hint(limited) == 1
    assert create(api, 1.2).label == "ok"


def test_rate_limit_resend_after_exact_hint_is_admitted() -> None:
    """A request sent exactly `retryAfterSec` after a 16 is admitted (fractional send time)."""
    api = SimulatedAPI(scenario(rate_limit=1, rate_window=2.0))
    assert create(api, 0.01).label == "ok"
    limited = create(api, 0.01)
    assert hint(limited) == 2
    assert create(api, 0.01 + 2).label == "ok"


def test_daily_quota_hint_to_next_day() -> None:
    """Over the daily quota: 17, hint to the next 86,400 s boundary; next day works."""
    api = SimulatedAPI(scenario(daily_quota=2))
    create(api, 100.0)
    create(api, 200.0)
    limited = create(api, 300.5)
    assert code(limited) == 17
    assert hint(limited) == 86_100  # 86,099.5 rounded up
    assert body(poll(api, 1, 400.0))["status"] == "ready"  # polls are not quota'd
    assert create(api, DAY).label == "ok"
    assert create(api, DAY + 1).label == "ok"
    limited = create(api, DAY + 2)
    assert code(limited) == 17
    assert hint(limited) == DAY - 2
    assert create(api, 5 * DAY + 0.5).label == "ok"
    assert api.stats.tasks_created == 5


def test_plan_quota_hint_to_reset() -> None:
    """Over the plan quota: 18, hint to `plan_quota_resets_at`; works from the reset."""
    api = SimulatedAPI(scenario(plan_quota=2, plan_quota_resets_at=1000.0))
    create(api, 0.0)
    create(api, 1.0)
    limited = create(api, 10.5)
    assert code(limited) == 18
    assert body(limited)["msg"] == "QUOTA_LIMIT_EXCEEDED"
    assert hint(limited) == 990
    assert code(create(api, 999.9)) == 18
    assert create(api, 1000.0).label == "ok"
    assert create(api, 1001.0).label == "ok"


def test_plan_quota_without_reset_has_no_hint() -> None:
    """Without `plan_quota_resets_at`, 18 carries no `retryAfterSec` and never ends."""
    api = SimulatedAPI(scenario(plan_quota=1))
    create(api, 0.0)
    for now in (1.0, DAY, 1e7):
        limited = create(api, now)
        assert code(limited) == 18
        assert hint(limited) is None
    assert api.stats.tasks_created == 1


def test_plan_quota_applies_again_after_the_reset() -> None:
    """After the reset the new plan period allows `plan_quota` tasks, then answers 18."""
    api = SimulatedAPI(scenario(plan_quota=2, plan_quota_resets_at=1000.0))
    create(api, 0.0)
    create(api, 1.0)
    labels = [create(api, 1000.0 + t).label for t in range(4)]
    assert labels == ["ok", "ok", "code:18", "code:18"]


@pytest.mark.parametrize("path", PATHS)
def test_outage_with_hint(path: str) -> None:
    """During an outage every endpoint answers 21 with the seconds left (rounded up)."""
    sc = attrs.evolve(scenario(), outages=(Outage(start=10.0, end=20.0),))
    api = SimulatedAPI(sc)
    create(api, 0.0)
    exchange = request(api, path, 12.5)
    assert code(exchange) == 21
    assert body(exchange)["msg"] == "SERVICE_UNAVAILABLE"
    assert hint(exchange) == 8
    assert hint(request(api, path, 19.9)) == 1
    assert code(request(api, path, 9.99)) is None
    assert code(request(api, path, 20.0)) is None


def test_outage_without_hint() -> None:
    """An outage with `hint=False` answers 21 without `retryAfterSec`; normal after `end`."""
    sc = attrs.evolve(scenario(), outages=(Outage(start=0.0, end=60.0, hint=False),))
    api = SimulatedAPI(sc)
    exchange = create(api, 30.0)
    assert code(exchange) == 21
    assert hint(exchange) is None
    assert create(api, 60.0).label == "ok"


# -- precedence (module docstring) -------------------------------------------------------


def test_precedence_fault_before_service_beats_everything() -> None:
    """A fault before the service wins: a bad key in an outage is just refused."""
    sc = Scenario(
        accounts=(AccountSpec(key=KEY),),
        outages=(Outage(start=0.0, end=100.0),),
        scheduled_faults=(ScheduledFault(start=0.0, end=100.0, kind=FaultKind.REFUSED),),
    )
    api = SimulatedAPI(sc)
    assert create(api, 1.0, key="sk-wrong").fate is RequestFate.REFUSED
    assert api.handle_http("/createTask", b"not json", 1.0).fate is RequestFate.REFUSED


def test_precedence_bad_body_and_bad_key_beat_outage() -> None:
    """Step 2 before 3: a non-object body gets 10, a bad key 1, even in an outage."""
    sc = attrs.evolve(scenario(), outages=(Outage(start=0.0, end=100.0),))
    api = SimulatedAPI(sc)
    assert code(api.handle_http("/createTask", b"[]", 1.0)) == 10
    assert code(create(api, 1.0, key="sk-wrong")) == 1
    assert code(poll(api, 1, 1.0, key="sk-wrong")) == 1
    assert code(create(api, 1.0)) == 21


@pytest.mark.parametrize(
    ("path", "key", "outage"),
    [
        ("/createTask", "valid", True),
        ("/getTaskResult", "valid", True),
        ("/createTask", "sk-wrong", False),
        ("/getTaskResult", "sk-wrong", False),
    ],
    ids=["no-task-in-outage", "no-taskId-in-outage", "no-task-bad-key", "no-taskId-bad-key"],
)
def test_precedence_missing_task_or_task_id_is_step_2(path: str, key: str, outage: bool) -> None:
    """As documented, a missing `task`/`taskId` answers 10 before the key and the outage."""
    outages = (Outage(start=0.0, end=100.0),) if outage else ()
    api = SimulatedAPI(attrs.evolve(scenario(), outages=outages))
    raw = encode(clientKey=KEY if key == "valid" else key)
    exchange = api.handle_http(path, raw, 1.0)
    assert code(exchange) == 10


def test_precedence_outage_beats_rate_limit_and_plan() -> None:
    """An outage answers 21 even when the rate window is full and the plan expired."""
    sc = attrs.evolve(
        scenario(rate_limit=1, rate_window=100.0, plan=PlanState.EXPIRED),
        outages=(Outage(start=10.0, end=20.0),),
    )
    api = SimulatedAPI(sc)
    assert code(create(api, 0.0)) == 14
    assert code(create(api, 15.0)) == 21
    assert code(create(api, 25.0)) == 16


def test_precedence_rate_limit_beats_plan() -> None:
    """With the rate window full, an expired plan's request answers 16, not 14."""
    api = SimulatedAPI(scenario(rate_limit=1, rate_window=60.0, plan=PlanState.INACTIVE))
    assert code(balance(api, 0.0)) == 15
    assert code(balance(api, 1.0)) == 16


def test_precedence_plan_beats_invalid_task_and_balance() -> None:
    """An expired plan answers 14 before the task is checked or the balance looked at."""
    api = SimulatedAPI(scenario(plan=PlanState.EXPIRED, balance=0.0))
    assert code(create(api, 0.0, task={"notype": 1})) == 14
    assert code(poll(api, 999, 0.0)) == 14


def test_precedence_outage_beats_unknown_task() -> None:
    """getTaskResult of an unknown task during an outage answers 21 (step 3 before step 4)."""
    api = SimulatedAPI(attrs.evolve(scenario(), outages=(Outage(start=0.0, end=9.0),)))
    assert code(poll(api, 999, 1.0)) == 21
    assert code(poll(api, 999, 9.0)) == 10


def test_precedence_invalid_task_beats_balance() -> None:
    """An invalid task answers 10 even when the balance is empty."""
    api = SimulatedAPI(scenario(balance=0.0))
    assert code(create(api, 0.0, task={"type": None})) == 10
    assert code(create(api, 0.0)) == 3


@pytest.mark.parametrize(
    ("account", "expected"),
    [
        ({"balance": 1.0, "price": 1.0, "daily_quota": 1, "plan_quota": 1, "slots": 1}, 3),
        ({"daily_quota": 1, "plan_quota": 1, "slots": 1}, 17),
        ({"plan_quota": 1, "slots": 1}, 18),
        ({"slots": 1}, 2),
    ],
    ids=["balance", "daily", "plan-quota", "slots"],
)
def test_precedence_balance_daily_plan_quota_slots(account: dict[str, Any], expected: int) -> None:
    """createTask checks, in order: balance 3, daily quota 17, plan quota 18, slots 2."""
    api = SimulatedAPI(scenario(**account))
    assert create(api, 0.0).label == "ok"
    assert code(create(api, 1.0)) == expected


# -- tasks -----------------------------------------------------------------------------------


def test_solve_time_within_bounds_per_type() -> None:
    """Solve times lie in [max(min, mean - spread), mean + spread], per task type."""
    sc = Scenario(
        accounts=(AccountSpec(key=KEY),),
        task_types={
            "Quick": TaskTypeSpec(solve_seconds=6.0, solve_spread=4.0, min_solve_seconds=3.0)
        },
        default_task=TaskTypeSpec(solve_seconds=20.0, solve_spread=5.0, min_solve_seconds=1.0),
    )
    api = SimulatedAPI(sc, seed=3)
    for i in range(300):
        create(api, float(i), task={"type": "Quick"})
        create(api, float(i), task={"type": "Other"})
    quick = [t.solve_at - t.created_at for t in api.tasks.values() if t.type == "Quick"]
    other = [t.solve_at - t.created_at for t in api.tasks.values() if t.type == "Other"]
    assert all(3.0 <= s <= 10.0 for s in quick)
    assert min(quick) == 3.0  # the floor binds: mean - spread = 2 < min = 3
    assert max(quick) > 9.0
    assert all(15.0 <= s <= 25.0 for s in other)
    assert min(other) < 16.0 and max(other) > 24.0


def test_min_solve_seconds_above_the_range() -> None:
    """A minimum above mean + spread makes every task take exactly the minimum."""
    sc = Scenario(
        accounts=(AccountSpec(key=KEY),),
        default_task=TaskTypeSpec(solve_seconds=1.0, solve_spread=0.5, min_solve_seconds=7.0),
    )
    api = SimulatedAPI(sc)
    for i in range(20):
        create(api, float(i))
    assert {t.solve_at - t.created_at for t in api.tasks.values()} == {7.0}


def test_unsolvable_answers_12_on_every_poll_after_solve_time() -> None:
    """`unsolvable_rate` 1: processing, then 12 on every later poll, each `delivered`."""
    sc = attrs.evolve(scenario(), default_task=attrs.evolve(FIXED, unsolvable_rate=1.0))
    api = SimulatedAPI(sc)
    task_id = task_id_of(create(api, 0.0))
    assert api.tasks[task_id].unsolvable
    assert body(poll(api, task_id, 4.0)) == {"status": "processing"}
    for n, now in enumerate((5.0, 6.0, 100.0), start=1):
        exchange = poll(api, task_id, now)
        assert code(exchange) == 12
        assert body(exchange)["msg"] == "ERROR_CAPTCHA_UNSOLVABLE"
        assert exchange.label == "code:12"
        assert api.tasks[task_id].delivered == n
    assert api.stats.solutions_delivered == 0


def test_delivered_counts_solutions_sent() -> None:
    """`delivered` counts each ready reply sent (not the processing ones)."""
    api = SimulatedAPI(scenario())
    task_id = task_id_of(create(api, 0.0))
    poll(api, task_id, 1.0)
    assert api.tasks[task_id].delivered == 0
    poll(api, task_id, 5.0)
    poll(api, task_id, 7.0)
    assert api.tasks[task_id].delivered == 2
    assert api.stats.solutions_delivered == 2


# -- faults ----------------------------------------------------------------------------------


@HOW
def test_refused_fault(how: str) -> None:
    """refused: fate REFUSED after half the latency; the service did not act or create."""
    api = SimulatedAPI(with_fault(FaultKind.REFUSED, how))
    exchange = create(api, 0.0)
    assert exchange.fate is RequestFate.REFUSED
    assert exchange.reply is None
    assert not exchange.server_acted
    assert exchange.label == "refused"
    assert exchange.latency == pytest.approx(0.1)
    assert api.stats.tasks_created == 0
    assert api.stats.requests["/createTask"] == 1
    assert api.tasks == {}
    assert isinstance(exchange.seen_by_client()[1], NotSent)


@HOW
def test_timeout_before_fault(how: str) -> None:
    """timeout_before: the request is lost; TIMEOUT after `timeout_seconds`, nothing acted."""
    api = SimulatedAPI(with_fault(FaultKind.TIMEOUT_BEFORE, how, timeout_seconds=7.0))
    exchange = create(api, 0.0)
    assert exchange.fate is RequestFate.TIMEOUT
    assert exchange.latency == 7.0
    assert not exchange.server_acted
    assert exchange.label == "lost_request"
    assert api.stats.tasks_created == 0
    assert api.stats.tasks_billed_unseen == 0


@HOW
@pytest.mark.parametrize("retry_after", [None, 7.0, 2.5])
@pytest.mark.parametrize("kind", [FaultKind.HTTP_429, FaultKind.HTTP_5XX])
def test_gateway_http_faults(how: str, retry_after: float | None, kind: FaultKind) -> None:
    """http_429/5xx: HTML page, that status, `Retry-After` if set, service untouched."""
    api = SimulatedAPI(with_fault(kind, how, retry_after_header=retry_after))
    statuses = set()
    for i in range(20):
        exchange = create(api, float(i))
        assert exchange.fate is RequestFate.REPLY
        assert not exchange.server_acted
        reply = exchange.reply
        assert reply is not None
        statuses.add(reply.status)
        assert reply.headers["content-type"] == "text/html"
        assert reply.body.startswith(b"<html>")
        assert exchange.label == f"http:{reply.status}"
        if retry_after is None:
            assert "retry-after" not in reply.headers
        else:
            assert reply.headers["retry-after"] == {7.0: "7", 2.5: "2.5"}[retry_after]
        outcome = classify(Endpoint.CREATE_TASK, reply)
        assert isinstance(outcome, Failure)
        assert outcome.bucket is Bucket.TRANSIENT_HTTP
        assert outcome.retry_after == retry_after
    if kind is FaultKind.HTTP_429:
        assert statuses == {429}
    else:
        assert statuses <= {500, 502, 503, 504}
        assert len(statuses) > 1
    assert api.stats.tasks_created == 0


@HOW
def test_timeout_after_create_bills_an_unseen_task(how: str) -> None:
    """timeout_after on createTask: client times out, task created, billed, unseen."""
    api = SimulatedAPI(with_fault(FaultKind.TIMEOUT_AFTER, how, timeout_seconds=9.0))
    exchange = create(api, 0.0)
    assert exchange.fate is RequestFate.TIMEOUT
    assert exchange.server_acted
    assert exchange.latency == 9.0
    assert exchange.reply is None
    assert exchange.label == "lost_reply(ok)"
    assert api.stats.tasks_created == 1
    assert api.stats.spent == pytest.approx(0.001)
    assert api.stats.tasks_billed_unseen == 1
    assert set(api.tasks) == {1}
    _, seen = exchange.seen_by_client()
    assert isinstance(seen, SentNoReply)
    outcome = classify(Endpoint.CREATE_TASK, seen)
    assert isinstance(outcome, Failure)
    assert outcome.may_have_billed


@HOW
@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (FaultKind.NON_JSON, "NON_JSON_REPLY"),
        (FaultKind.TRUNCATED, "NON_JSON_REPLY"),
        (FaultKind.WRONG_SHAPE, "WRONG_SHAPE"),
    ],
)
def test_mangled_replies_are_malformed_but_the_task_exists(
    how: str, kind: FaultKind, name: str
) -> None:
    """non_json/truncated/wrong_shape: MALFORMED to `classify`, task still created."""
    api = SimulatedAPI(with_fault(kind, how))
    exchange = create(api, 0.0)
    assert exchange.fate is RequestFate.REPLY
    assert exchange.server_acted
    assert exchange.label == f"{kind.value}(ok)"
    assert exchange.reply is not None
    assert exchange.reply.body != b'{"taskId": 1}'
    outcome = classify(Endpoint.CREATE_TASK, exchange.reply)
    assert isinstance(outcome, Failure)
    assert outcome.bucket is Bucket.MALFORMED
    assert outcome.name == name
    assert api.stats.tasks_created == 1
    assert api.stats.tasks_billed_unseen == 1
    assert set(api.tasks) == {1}
    # the solution is mangled too, but it was sent: it counts as delivered
    polled = poll(api, 1, 10.0)
    assert polled.label == f"{kind.value}(ready)"
    assert api.tasks[1].delivered == 1


def test_truncated_reply_is_the_first_half() -> None:
    """truncated: the body is the first half of the real reply, status and headers kept."""
    api = SimulatedAPI(with_fault(FaultKind.TRUNCATED, "scheduled"))
    exchange = create(api, 0.0)
    assert exchange.reply is not None
    assert exchange.reply.body == b'{"taskId": 1}'[:6]
    assert exchange.reply.status == 200


def test_mangled_error_reply_does_not_count_as_billed() -> None:
    """A mangled reply to a createTask the service refused bills nothing."""
    sc = attrs.evolve(
        with_fault(FaultKind.NON_JSON, "scheduled"), accounts=(AccountSpec(key=KEY, balance=0.0),)
    )
    api = SimulatedAPI(sc)
    exchange = create(api, 0.0)
    assert exchange.label == "non_json(code:3)"
    assert api.stats.tasks_created == 0
    assert api.stats.tasks_billed_unseen == 0


@HOW
def test_slow_fault_adds_slow_seconds(how: str) -> None:
    """slow: the normal reply, `slow_seconds` late; nothing lost, nothing unseen."""
    api = SimulatedAPI(with_fault(FaultKind.SLOW, how, slow_seconds=4.0))
    exchange = create(api, 0.0)
    assert exchange.fate is RequestFate.REPLY
    assert exchange.latency == pytest.approx(0.2 + 4.0)
    assert body(exchange) == {"taskId": 1}
    assert exchange.label == "ok"
    assert api.stats.tasks_billed_unseen == 0


def test_scheduled_fault_on_one_endpoint_leaves_the_other_alone() -> None:
    """A scheduled fault restricted to /getTaskResult leaves createTask untouched."""
    sc = attrs.evolve(
        scenario(),
        scheduled_faults=(
            ScheduledFault(start=0.0, end=50.0, kind=FaultKind.REFUSED, endpoint="/getTaskResult"),
        ),
    )
    api = SimulatedAPI(sc)
    assert create(api, 1.0).label == "ok"
    assert poll(api, 1, 10.0).fate is RequestFate.REFUSED
    assert balance(api, 10.0).label == "balance"
    assert poll(api, 1, 50.0).label == "ready"


def test_scheduled_fault_window_is_half_open() -> None:
    """A scheduled fault strikes from `start` (included) to `end` (excluded) only."""
    sc = attrs.evolve(
        scenario(),
        scheduled_faults=(ScheduledFault(start=10.0, end=20.0, kind=FaultKind.TIMEOUT_BEFORE),),
    )
    api = SimulatedAPI(sc)
    fates = [create(api, t).fate for t in (9.99, 10.0, 19.99, 20.0)]
    assert fates == [RequestFate.REPLY, RequestFate.TIMEOUT, RequestFate.TIMEOUT, RequestFate.REPLY]


READY_REPLY = ApiReply.json({"status": "ready", "solution": {"text": "x"}})


@pytest.mark.parametrize(
    ("exchange", "seen"),
    [
        (SimulatedExchange(RequestFate.REPLY, 2.0, READY_REPLY), ApiReply),
        (SimulatedExchange(RequestFate.REFUSED, 2.0, server_acted=False), NotSent),
        (SimulatedExchange(RequestFate.TIMEOUT, 2.0, server_acted=False), SentNoReply),
        (SimulatedExchange(RequestFate.TIMEOUT, 2.0), SentNoReply),
    ],
    ids=["reply", "refused", "timeout-before", "timeout-after"],
)
def test_seen_by_client(exchange: SimulatedExchange, seen: type) -> None:
    """`seen_by_client` per fate, and (timeout, SentNoReply) when patience < latency."""
    for timeout in (None, 2.0, 10.0):
        at, what = exchange.seen_by_client(timeout)
        assert at == 2.0
        assert isinstance(what, seen)
        if seen is ApiReply:
            assert what is exchange.reply
    at, what = exchange.seen_by_client(0.5)
    assert at == 0.5
    assert isinstance(what, SentNoReply)


# -- counters and log ------------------------------------------------------------------------


def test_stats_counters_and_log() -> None:
    """Counters by endpoint and label, tasks, spend, and one log entry per request."""
    api = SimulatedAPI(scenario(price=0.5))
    create(api, 0.0)
    create(api, 1.0)
    poll(api, 1, 2.0)
    poll(api, 1, 6.0)
    poll(api, 2, 6.0)
    poll(api, 77, 6.0)
    balance(api, 7.0)
    create(api, 8.0, key="sk-wrong")
    api.handle_http("/nowhere", b"", 9.0)
    assert api.stats.requests == collections.Counter(
        {"/createTask": 3, "/getTaskResult": 4, "/getBalance": 1, "/nowhere": 1}
    )
    assert api.stats.outcomes == collections.Counter(
        {
            "/createTask ok": 2,
            "/createTask code:1": 1,
            "/getTaskResult processing": 1,
            "/getTaskResult ready": 2,
            "/getTaskResult code:10": 1,
            "/getBalance balance": 1,
            "/nowhere http:404": 1,
        }
    )
    assert api.stats.tasks_created == 2
    assert api.stats.spent == 1.0
    assert api.stats.solutions_delivered == 2
    assert api.log == [
        SimRequest(0.0, "/createTask", "main", "ok", 1),
        SimRequest(1.0, "/createTask", "main", "ok", 2),
        SimRequest(2.0, "/getTaskResult", "main", "processing", 1),
        SimRequest(6.0, "/getTaskResult", "main", "ready", 1),
        SimRequest(6.0, "/getTaskResult", "main", "ready", 2),
        SimRequest(6.0, "/getTaskResult", "main", "code:10", None),
        SimRequest(7.0, "/getBalance", "main", "balance", None),
        SimRequest(8.0, "/createTask", None, "code:1", None),
        SimRequest(9.0, "/nowhere", None, "http:404", None),
    ]


def test_default_account_names() -> None:
    """Accounts without a name are logged as `account-<n>`, in scenario order."""
    api = SimulatedAPI(Scenario(accounts=(AccountSpec(key=OTHER_KEY), AccountSpec(key=KEY))))
    create(api, 0.0)
    create(api, 0.0, key=OTHER_KEY)
    assert [entry.account for entry in api.log] == ["account-2", "account-1"]
    assert api.tasks[1].account == "account-2"


def test_fault_outcomes_are_counted() -> None:
    """Faulted requests are counted under their fault label."""
    sc = Scenario(
        accounts=(AccountSpec(key=KEY),),
        scheduled_faults=(
            ScheduledFault(start=0.0, end=1.0, kind=FaultKind.REFUSED),
            ScheduledFault(start=1.0, end=2.0, kind=FaultKind.TIMEOUT_AFTER),
            ScheduledFault(start=2.0, end=3.0, kind=FaultKind.HTTP_429),
        ),
    )
    api = SimulatedAPI(sc)
    for t in (0.5, 1.5, 2.5):
        create(api, t)
    assert api.stats.outcomes == collections.Counter(
        {"/createTask refused": 1, "/createTask lost_reply(ok)": 1, "/createTask http:429": 1}
    )
    assert [entry.label for entry in api.log] == ["refused", "lost_reply(ok)", "http:429"]
    # faults before the service never look at the key
    assert [entry.account for entry in api.log] == [None, "account-1", None]


def test_keep_log_false_keeps_no_log_but_counts() -> None:
    """`keep_log=False` records no request log; the counters are still kept."""
    api = SimulatedAPI(scenario(), keep_log=False)
    create(api, 0.0)
    poll(api, 1, 9.0)
    assert api.log == []
    assert api.stats.requests == collections.Counter({"/createTask": 1, "/getTaskResult": 1})


def test_key_never_in_log_stats_tasks_or_reprs() -> None:
    """The account key appears in no log entry, counter, task, exchange or repr."""
    sc = Scenario(
        accounts=(AccountSpec(key=KEY, rate_limit=5),),
        default_task=attrs.evolve(FIXED, unsolvable_rate=0.5),
        faults=FaultRates(
            refused=0.05, timeout_after=0.05, non_json=0.05, truncated=0.05, wrong_shape=0.05
        ),
        outages=(Outage(start=50.0, end=60.0),),
    )
    api = SimulatedAPI(sc, seed=11)
    clock = VirtualClock()
    transport = SimulatedTransport(api, clock)
    exchanges = []
    for i in range(100):
        exchanges.append(create(api, float(i)))
        exchanges.append(poll(api, i // 2 + 1, float(i) + 0.5))
        exchanges.append(balance(api, float(i) + 0.7))
        exchanges.append(create(api, float(i), key=KEY + "-wrong"))
    texts = [
        repr(api),
        repr(api.log),
        repr(api.stats),
        repr(api.tasks),
        repr(exchanges),
        repr(transport),
        str(api.stats.outcomes),
    ]
    assert len(api.log) == 400
    assert api.stats.tasks_created > 10
    # (indices only: a failing assertion must not print the key itself)
    assert [i for i, text in enumerate(texts) if "sk-sim" in text] == []


# -- determinism -----------------------------------------------------------------------------

FAULT_MIX = Scenario(
    accounts=(AccountSpec(key=KEY, slots=20),),
    default_task=TaskTypeSpec(solve_seconds=6.0, solve_spread=5.0, unsolvable_rate=0.3),
    faults=FaultRates(
        refused=0.05,
        timeout_before=0.05,
        http_429=0.05,
        http_5xx=0.05,
        timeout_after=0.05,
        non_json=0.05,
        truncated=0.05,
        wrong_shape=0.05,
        slow=0.05,
    ),
)


def run_sequence(api: SimulatedAPI) -> list[tuple[RequestFate, float, ApiReply | None, bool, str]]:
    """Feed `api` a fixed sequence of creates and polls; return what came of each."""
    results = []
    for i in range(150):
        exchanges = [create(api, float(i)), poll(api, i // 2 + 1, float(i) + 0.5)]
        results += [(e.fate, e.latency, e.reply, e.server_acted, e.label) for e in exchanges]
    return results


def test_same_seed_same_exchanges() -> None:
    """Same scenario, seed and requests give identical exchanges, tasks and counters."""
    first, second = SimulatedAPI(FAULT_MIX, seed=42), SimulatedAPI(FAULT_MIX, seed=42)
    results = run_sequence(first)
    assert results == run_sequence(second)
    assert first.tasks == second.tasks
    assert first.stats == second.stats
    assert first.log == second.log
    labels = {label.split("(")[0] for *_, label in results}
    assert {"refused", "lost_request", "lost_reply", "non_json", "truncated"} <= labels
    assert {"wrong_shape", "http:429", "code:12", "ready", "processing"} <= labels


def test_different_seed_different_exchanges() -> None:
    """Another seed gives another sequence of faults, solve times and solutions."""
    first, second = SimulatedAPI(FAULT_MIX, seed=42), SimulatedAPI(FAULT_MIX, seed=43)
    assert run_sequence(first) != run_sequence(second)
    assert [t.solve_at for t in first.tasks.values()] != [t.solve_at for t in second.tasks.values()]


# -- scenarios -------------------------------------------------------------------------------

RICH = Scenario(
    accounts=(
        AccountSpec(
            key="sk-a",
            name="alpha",
            balance=12.5,
            price=0.25,
            plan=PlanState.EXPIRED,
            slots=3,
            rate_limit=10,
            rate_window=2.5,
            daily_quota=100,
            plan_quota=1000,
            plan_quota_resets_at=3600.0,
        ),
        AccountSpec(key="sk-b", plan=PlanState.INACTIVE),
    ),
    task_types={
        "ImageToTextTask": TaskTypeSpec(solve_seconds=3.0, solve_spread=1.0),
        "RecaptchaV2Task": TaskTypeSpec(solve_seconds=40.0, unsolvable_rate=0.1),
    },
    default_task=TaskTypeSpec(solve_seconds=9.0, min_solve_seconds=2.0),
    outages=(Outage(start=100.0, end=200.0), Outage(start=300.0, end=301.0, hint=False)),
    faults=FaultRates(refused=0.01, slow=0.2, retry_after_header=5.0, timeout_seconds=12.0),
    scheduled_faults=(
        ScheduledFault(start=5.0, end=6.0, kind=FaultKind.HTTP_5XX),
        ScheduledFault(start=7.0, end=8.0, kind=FaultKind.WRONG_SHAPE, endpoint="/createTask"),
    ),
    latency=0.3,
    error_status=400,
)


def test_default_scenario() -> None:
    """`Scenario()` is a healthy service with one account whose key is `test-key`."""
    sc = Scenario()
    assert [a.key for a in sc.accounts] == ["test-key"]
    api = SimulatedAPI()
    assert create(api, 0.0, key="test-key").label == "ok"


@pytest.mark.parametrize("sc", [Scenario(), RICH], ids=["default", "rich"])
def test_from_dict_round_trips_to_dict(sc: Scenario) -> None:
    """`from_dict(to_dict())` gives the scenario back, also through JSON text."""
    assert Scenario.from_dict(sc.to_dict()) == sc
    assert Scenario.from_dict(json.loads(json.dumps(sc.to_dict()))) == sc


def test_error_status_is_used_for_api_errors() -> None:
    """API error replies carry the scenario's `error_status`."""
    api = SimulatedAPI(RICH)
    exchange = create(api, 0.0, key="sk-b")
    assert exchange.reply is not None
    assert exchange.reply.status == 400
    assert code(exchange) == 15


def test_load_json_file(tmp_path: pathlib.Path) -> None:
    """A `.json` scenario file loads."""
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(RICH.to_dict()), encoding="utf-8")
    assert Scenario.load(path) == RICH
    assert Scenario.load(str(path)) == RICH


def test_load_toml_file(tmp_path: pathlib.Path) -> None:
    """A `.toml` scenario file loads."""
    path = tmp_path / "scenario.toml"
    path.write_text(
        """
latency = 0.3
error_status = 400

[[accounts]]
key = "sk-a"
name = "alpha"
balance = 12.5
price = 0.25
plan = "expired"
slots = 3
rate_limit = 10
rate_window = 2.5
daily_quota = 100
plan_quota = 1000
plan_quota_resets_at = 3600.0

[[accounts]]
key = "sk-b"
plan = "inactive"

[task_types.ImageToTextTask]
solve_seconds = 3.0
solve_spread = 1.0

[task_types.RecaptchaV2Task]
solve_seconds = 40
unsolvable_rate = 0.1

[default_task]
solve_seconds = 9.0
min_solve_seconds = 2.0

[[outages]]
start = 100
end = 200

[[outages]]
start = 300
end = 301
hint = false

[faults]
refused = 0.01
slow = 0.2
retry_after_header = 5
timeout_seconds = 12

[[scheduled_faults]]
start = 5
end = 6
kind = "http_5xx"

[[scheduled_faults]]
start = 7
end = 8
kind = "wrong_shape"
endpoint = "/createTask"
""",
        encoding="utf-8",
    )
    assert Scenario.load(path) == RICH


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": 1}, "bogus"),
        ({"faults": {"refused": 0.1, "lag": 3}}, "lag"),
        ({"accounts": [{"key": "k", "colour": "red"}]}, "colour"),
        ({"faults": {"http_5xx": -0.1}}, "http_5xx must be a probability"),
        ({"faults": {"refused": 1.5}}, "refused must be a probability"),
        ({"task_types": {"T": {"unsolvable_rate": 2}}}, "unsolvable_rate must be a probability"),
        ({"accounts": [{"key": "k", "price": -1}]}, "price must be a finite number >= 0"),
        ({"accounts": [{"key": "k", "rate_limit": 0}]}, "rate_limit must be None or >= 1"),
        ({"latency": -0.5}, "latency must be a finite number >= 0"),
        ({"outages": [{"start": 10, "end": 5}]}, "an outage must end after it starts"),
        ({"outages": [{"start": 10}]}, "end"),
        ({"accounts": [{"key": "k"}, {"key": "k"}]}, "two accounts share a key"),
        ({"accounts": [{"key": ""}]}, "an account key must be non-empty"),
        ({"latency": "fast"}, "latency"),
        ({"accounts": 5}, "accounts"),
        ({"accounts": [{"key": "k", "slots": "many"}]}, "slots"),
        ({"accounts": [{"key": "k", "plan": "gold"}]}, "plan"),
        ({"scheduled_faults": [{"start": 0, "end": 1, "kind": "meteor"}]}, "kind"),
    ],
    ids=[
        "unknown-key",
        "unknown-fault-key",
        "unknown-account-key",
        "negative-rate",
        "probability-above-1",
        "unsolvable-above-1",
        "negative-price",
        "zero-rate-limit",
        "negative-latency",
        "outage-backwards",
        "outage-no-end",
        "duplicate-keys",
        "empty-key",
        "latency-string",
        "accounts-int",
        "slots-string",
        "unknown-plan",
        "unknown-fault-kind",
    ],
)
def test_invalid_scenarios_raise_scenario_error(data: dict[str, Any], message: str) -> None:
    """Invalid scenarios raise `ScenarioError` whose message names the problem."""
    with pytest.raises(ScenarioError, match="invalid scenario") as caught:
        Scenario.from_dict(data)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "data",
    [
        {"outages": [{"start": 1, "end": 5, "hint": "false"}]},
        {"accounts": [{"key": "k", "slots": 2.7}]},
        {"latency": True},
    ],
    ids=["bool-from-string", "int-from-float", "float-from-bool"],
)
def test_wrong_scalar_types_raise_scenario_error(data: dict[str, Any]) -> None:
    """A value of the wrong JSON type is rejected, not coerced."""
    with pytest.raises(ScenarioError):
        Scenario.from_dict(data)


def test_scheduled_fault_ending_before_it_starts_is_invalid() -> None:
    """A scheduled fault that ends before it starts is rejected like such an outage."""
    with pytest.raises(ScenarioError):
        Scenario.from_dict({"scheduled_faults": [{"start": 10, "end": 5, "kind": "refused"}]})


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", '{"latency": 0.1,', "not valid json"),
        ("bad.toml", "latency = = 3", "not valid toml"),
        ("list.json", "[1, 2]", "must be an object/table"),
        ("noext", "{oops", "not valid JSON"),
        ("semantic.toml", "latency = -1", "latency must be a finite number"),
    ],
)
def test_load_malformed_files_raise_scenario_error(
    tmp_path: pathlib.Path, name: str, text: str, message: str
) -> None:
    """Malformed JSON/TOML, a non-object, or an invalid scenario raise `ScenarioError`."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        Scenario.load(path)
    assert message in str(caught.value)


def test_load_missing_file_raises_os_error(tmp_path: pathlib.Path) -> None:
    """A file that cannot be read raises `OSError`."""
    with pytest.raises(OSError, match="nope"):
        Scenario.load(tmp_path / "nope.json")


def test_load_non_utf8_file_raises_scenario_error(tmp_path: pathlib.Path) -> None:
    """A file that is not UTF-8 raises `ScenarioError`."""
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"accounts": [{"key": "cl\xe9"}]}')
    with pytest.raises(ScenarioError):
        Scenario.load(path)


# -- SimulatedTransport ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_transport_send_advances_clock_by_latency() -> None:
    """`send` returns the reply once the clock has advanced by the latency."""
    api = SimulatedAPI(attrs.evolve(scenario(), latency=0.25))
    clock = VirtualClock(100.0)
    transport = SimulatedTransport(api, clock)
    reply = await transport.send(ApiRequest.create_task(ApiKey(KEY), TASK))
    assert clock.now() == 100.25
    assert json.loads(reply.body) == {"taskId": 1}
    assert api.tasks[1].created_at == 100.0
    outcome = classify(Endpoint.CREATE_TASK, reply)
    assert outcome == Accepted(1)
    poll_reply = await transport.send(ApiRequest.get_task_result(ApiKey(KEY), 1))
    assert json.loads(poll_reply.body) == {"status": "processing"}
    assert clock.now() == 100.5
    await transport.aclose()


@pytest.mark.anyio
async def test_transport_refused_raises_not_sent() -> None:
    """A refused connection raises `NotSent`, half a latency later."""
    api = SimulatedAPI(attrs.evolve(with_fault(FaultKind.REFUSED, "probability"), latency=0.4))
    clock = VirtualClock()
    with pytest.raises(NotSent):
        await SimulatedTransport(api, clock).send(ApiRequest.create_task(ApiKey(KEY), TASK))
    assert clock.now() == pytest.approx(0.2)


@pytest.mark.anyio
async def test_transport_timeout_raises_sent_no_reply() -> None:
    """A lost reply raises `SentNoReply` after `timeout_seconds`; the task exists."""
    api = SimulatedAPI(with_fault(FaultKind.TIMEOUT_AFTER, "scheduled", timeout_seconds=30.0))
    clock = VirtualClock(5.0)
    with pytest.raises(SentNoReply):
        await SimulatedTransport(api, clock).send(ApiRequest.create_task(ApiKey(KEY), TASK))
    assert clock.now() == 35.0
    assert api.stats.tasks_billed_unseen == 1


@pytest.mark.anyio
async def test_transport_timeout_shorter_than_latency() -> None:
    """`timeout=` shorter than the latency raises `SentNoReply` at exactly that time."""
    api = SimulatedAPI(with_fault(FaultKind.SLOW, "scheduled", slow_seconds=10.0))
    clock = VirtualClock(1.0)
    transport = SimulatedTransport(api, clock)
    with pytest.raises(SentNoReply):
        await transport.send(ApiRequest.create_task(ApiKey(KEY), TASK), timeout=3.0)
    assert clock.now() == 4.0
    assert api.stats.tasks_created == 1  # the service acted; only the client gave up
    clock.advance(5.0)
    reply = await transport.send(ApiRequest.get_task_result(ApiKey(KEY), 1), timeout=60.0)
    assert clock.now() == pytest.approx(9.0 + 10.2)
    assert json.loads(reply.body)["status"] == "ready"


# -- replies built once ------------------------------------------------------------------------


def test_replies_built_once_are_what_json_would_write() -> None:
    """Error replies (each code, with and without a hint, the hint rounded up to whole
    seconds) and createTask replies are byte for byte `json.dumps` of their payloads, built
    once per code and hint however often they are sent."""
    api = SimulatedAPI(scenario(rate_limit=1))
    for code_ in ErrorCode:
        for retry_after in (None, 0.2, 3.0, 7.5, 86_399.9):
            reply, label, _ = api._error(code_, retry_after)
            payload: dict[str, Any] = {"code": int(code_), "msg": code_.name}
            if retry_after is not None:
                payload["retryAfterSec"] = math.ceil(retry_after)
            assert reply.body == json.dumps(payload).encode()
            assert (reply.status, label) == (api.scenario.error_status, f"code:{int(code_)}")
            assert api._error(code_, retry_after)[0] is reply
    creating = SimulatedAPI(scenario())
    for task_id in (1, 2, 10**12):
        creating._next_task_id = task_id
        exchange = create(creating, float(task_id))
        assert exchange.reply is not None
        assert exchange.reply.body == json.dumps({"taskId": task_id}).encode()
    limited = SimulatedAPI(scenario(rate_limit=1))
    create(limited, 10.0)
    again = create(limited, 10.5)  # the second request within the window: 16, in 1 s
    assert again.reply is not None and again is create(limited, 10.5)
    assert (
        again.reply.body
        == json.dumps({"code": 16, "msg": "RATE_LIMITED", "retryAfterSec": 1}).encode()
    )


def test_a_reply_sent_again_shares_its_exchange_only_when_nothing_went_wrong() -> None:
    """The processing reply (and an error sent again) is one exchange object each time it
    goes out untouched; a fault still makes an exchange of its own (here a slow reply)."""
    api = SimulatedAPI(scenario())
    task_id = task_id_of(create(api, 0.0))
    first, second = poll(api, task_id, 1.0), poll(api, task_id, 2.0)
    assert first is second and body(first) == {"status": "processing"}
    assert (first.fate, first.latency, first.label) == (RequestFate.REPLY, 0.1, "processing")
    slow = SimulatedAPI(with_fault(FaultKind.SLOW, "scheduled", slow_seconds=3.0))
    task_id = task_id_of(create(slow, 0.0))
    late = poll(slow, task_id, 1.0)
    assert late is not poll(slow, task_id, 2.0) and late.latency == 0.2 + 3.0
    assert body(late) == {"status": "processing"}
