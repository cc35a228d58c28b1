"""Fuzzing: hypothesis-generated replies through classification and through whole jobs.

The replies are arbitrary bytes, arbitrary JSON, and valid-looking replies with wrong types
(`taskId` as a float, list or dict; `status` as an int; `solution` as a list; `retryAfterSec`
as a string, negative, huge or NaN; `code` as a float, bool or nested value), some echoing the
API key, under arbitrary HTTP statuses and headers, mixed with transport failures and a
transport that raises something else entirely. Whole jobs run them through the async driver
(`Engine` over `HandlerTransport`, `VirtualClock`) and through the discrete-event
`Simulation` with an account gate. The properties: the engine raises nothing but
`CaptchaflowError` subclasses, every job ends terminal, and no job runs past its deadline by
more than one poll interval (each reply takes at most that long to arrive).

`GENERATED` counts the replies generated in a run; `test_generated_reply_count` prints it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import anyio
import pytest
from hypothesis import HealthCheck, Phase, Verbosity, find, given, settings
from hypothesis import strategies as st
from strategies import PolicyRecipe, header_dicts, json_values, policy_recipes, transport_errors

from captchaflow.engine import (
    CaptchaflowError,
    Engine,
    Job,
    Outcome,
    Simulation,
    VirtualClock,
    classify,
)
from captchaflow.engine import _driver as driver_module
from captchaflow.engine import _job as job_module
from captchaflow.policies import Failure, FixedInterval, FleetGate, OpenGate
from captchaflow.transports import (
    ApiKey,
    ApiReply,
    ApiRequest,
    BadReply,
    Endpoint,
    HandlerTransport,
    NotSent,
    TransportError,
)
from captchaflow.transports.sim import RequestFate, Scenario, SimulatedAPI, SimulatedExchange

KEY = "sk-test-7f3c9a1e-DO-NOT-LEAK"
TASK = {"type": "ImageToTextTask", "body": "aGVsbG8="}
POLL = 2.0
"""The poll interval, and the most virtual time one reply may take to arrive."""

GENERATED = 0
"""Replies (and transport failures) generated so far in this run."""


def count(replies: Sequence[object]) -> None:
    """Add `replies` to the run's count of generated replies."""
    global GENERATED
    GENERATED += len(replies)


# -- replies ------------------------------------------------------------------------------

echo = st.just(KEY) | st.just(f"invalid key {KEY} (check it)")
"""Server texts that repeat the key."""
texts = st.text(max_size=12) | echo | st.just("x" * 300) | st.just("a\nb\r\nc")

task_ids = st.one_of(
    st.integers(),
    st.text(max_size=10),
    st.floats(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.booleans(),
    st.none(),
    st.sampled_from(["", "a\tb", "x" * 300]),
    echo,
)
task_statuses = st.one_of(
    st.sampled_from(["ready", "processing", "READY", "ready ", "done", "failed", ""]),
    st.integers(),
    st.lists(st.text(max_size=3), max_size=2),
    st.none(),
    echo,
)
solutions = st.one_of(
    st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    st.lists(json_values, max_size=2),
    st.text(max_size=5),
    st.integers(),
    st.none(),
)
codes = st.one_of(
    st.sampled_from([0, 1, 2, 3, 10, 12, 14, 15, 16, 17, 18, 21, 99, -1]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    st.sampled_from(["16", " 2 ", "1e1", "0x10", "٣", "²", "sixteen", "", "21.0"]),
    st.none(),
)
hints = st.one_of(
    st.sampled_from([0, 1, 30, 86_400, 10**12, 10**30, -1, -(10**9)]),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.integers(),
    st.sampled_from(["1", "-1", "nan", "inf", "1e400", "", " 5 ", "soon"]),
    st.lists(st.integers(), max_size=1),
    st.none(),
)
protocol_payloads = st.fixed_dictionaries(
    {},
    optional={
        "taskId": task_ids,
        "status": task_statuses,
        "solution": solutions,
        "code": codes,
        "msg": texts | json_values,
        "retryAfterSec": hints,
        "errorDescription": texts,
    },
)
"""Valid-looking replies: the protocol's own keys, often with the wrong types."""


@st.composite
def cut_json(draw: st.DrawFn) -> bytes:
    """A protocol payload cut short somewhere."""
    body = json.dumps(draw(protocol_payloads)).encode()
    return body[: draw(st.integers(min_value=0, max_value=len(body)))]


bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda value: json.dumps(value).encode()),
    protocol_payloads.map(lambda value: json.dumps(value).encode()),
    cut_json(),
)
http_statuses = st.sampled_from([200, 200, 200, 201, 204, 302, 400, 404, 408, 429, 500, 503]) | (
    st.integers(min_value=0, max_value=999)
)
replies = st.builds(ApiReply, http_statuses, bodies, header_dicts)
"""Any reply: status, headers and body all arbitrary or nearly right."""

valid_replies = st.one_of(
    st.builds(lambda task_id: ApiReply.json({"taskId": task_id}), st.integers(1, 10**6)),
    st.just(ApiReply.json({"status": "processing"})),
    st.builds(
        lambda solution: ApiReply.json({"status": "ready", "solution": solution}),
        st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    ),
    st.builds(
        lambda code, hint: ApiReply.json(
            {"code": code, "msg": "X"} if hint is None else {"code": code, "retryAfterSec": hint}
        ),
        st.sampled_from([1, 2, 3, 10, 12, 14, 15, 16, 17, 18, 21, 99]),
        st.none() | st.floats(min_value=0, max_value=100),
    ),
)
"""Replies of the documented shapes, so that jobs get deep into their lives."""

STRANGE = (RuntimeError("the transport broke"), KeyError("reply"), ValueError(KEY))
"""What a misbehaving transport might raise instead of a `TransportError`."""
happenings: st.SearchStrategy[ApiReply | Exception] = st.one_of(
    replies, replies, valid_replies, valid_replies, transport_errors, st.sampled_from(STRANGE)
)
"""One exchange's result: a fuzzed or a well-formed reply, a transport failure, or a stray
exception from a misbehaving transport."""

# -- the properties -----------------------------------------------------------------------


def check_classification(endpoint: Endpoint, result: ApiReply | TransportError) -> None:
    """`classify` returns an outcome; a failure has a usable hint and a short one-line text
    without the key."""
    outcome: Outcome = classify(endpoint, result, wall_time=1.7e9, secret=ApiKey(KEY))
    if isinstance(outcome, Failure):
        assert outcome.endpoint is endpoint
        assert outcome.retry_after is None or outcome.retry_after >= 0
        assert outcome.message and "\n" not in outcome.message and len(outcome.message) <= 200
        assert KEY not in outcome.message and KEY not in outcome.name


@given(st.sampled_from(list(Endpoint)), replies | transport_errors)
def test_classification_is_total_on_fuzzed_replies(
    endpoint: Endpoint, result: ApiReply | TransportError
) -> None:
    """Any generated reply or transport failure classifies without raising, into a failure
    with a hint >= 0 and a short one-line message free of the key."""
    count([result])
    check_classification(endpoint, result)


@pytest.mark.parametrize("code", [10**400, 1e300, -(2**200)], ids=["int", "float", "negative"])
def test_failure_names_stay_short_for_huge_codes(code: float) -> None:
    """A failure's name is at most 64 characters whatever the code, like a server-given one."""
    failure = classify(Endpoint.CREATE_TASK, ApiReply.json({"code": code, "msg": "?"}))
    assert isinstance(failure, Failure)
    assert len(failure.name) <= 64, f"a {len(failure.name)}-character name"


def check_job(job: Job, finished_at: float) -> None:
    """A finished job: terminal, one of solution or error, not past its deadline by more than
    a poll interval, and no text of it shows the key."""
    assert job.finished, f"left {job.state}"
    assert (job.solution is None) != (job.error is None)
    if job.error is not None:
        assert isinstance(job.error, CaptchaflowError)
    late = finished_at - job.deadline
    assert late <= POLL, f"finished {late:.3g}s past its deadline"
    texts = [repr(job), *(move.cause for move in job.history)]
    if job.error is not None:
        texts += [str(job.error), repr(job.error), job.error.summary()]
    assert not [text for text in texts if KEY in text]


async def run_scripted_job(
    script: Sequence[ApiReply | Exception],
    latencies: Sequence[float],
    recipe: PolicyRecipe,
    timeout: float,
    open_gate: bool,
) -> tuple[Job, float]:
    """Run one task whose exchanges come back as `script` says (its last entry forever),
    each `latencies[i]` of virtual time late; return the job and when it finished."""
    clock = VirtualClock()
    sent = 0

    def handler(request: ApiRequest) -> ApiReply:
        nonlocal sent
        index = min(sent, len(script) - 1)
        sent += 1
        clock.advance(latencies[index % len(latencies)])
        happening = script[index]
        if isinstance(happening, Exception):
            raise happening
        return happening

    engine = Engine(
        KEY,
        transport=HandlerTransport(handler),
        clock=clock,
        policy=recipe.build(0),
        poll_schedule=FixedInterval(interval=POLL),
        timeout=timeout,
        gate=OpenGate() if open_gate else None,
    )
    job = await engine.run(TASK)
    return job, clock.now()


class JobCase(NamedTuple):
    """One generated whole-job run: what the network answers, how long each exchange takes,
    the policy, the deadline and whether the account gate is off."""

    script: Sequence[ApiReply | Exception]
    latencies: Sequence[float]
    recipe: PolicyRecipe
    timeout: float
    open_gate: bool


def check_whole_job(case: JobCase) -> None:
    """The whole-job property for one case."""
    script, latencies, recipe, timeout, open_gate = case
    try:
        job, finished_at = anyio.run(
            run_scripted_job, script, latencies, recipe, timeout, open_gate
        )
    except CaptchaflowError:
        raise AssertionError("Engine.run raised instead of returning the failed job") from None
    except Exception as exc:
        raise AssertionError(f"the engine raised {type(exc).__name__}") from None
    check_job(job, finished_at)
    try:
        solution = job.result()
    except CaptchaflowError:
        return
    sent = [
        json.loads(happening.body).get("solution")
        for happening in script
        if isinstance(happening, ApiReply) and _is_json(happening)
    ]
    assert _canonical(solution) in [_canonical(candidate) for candidate in sent]


def _canonical(value: Any) -> str:
    """`value` as canonical JSON text (so NaN compares equal to itself)."""
    return json.dumps(value, sort_keys=True)


def _is_json(happening: ApiReply | Exception) -> bool:
    if not isinstance(happening, ApiReply):
        return False
    try:
        return isinstance(json.loads(happening.body), dict)
    except (ValueError, RecursionError):
        return False


scripts = st.lists(happenings, min_size=1, max_size=8)
latency_lists = st.lists(st.floats(min_value=0.0, max_value=POLL), min_size=1, max_size=3)
timeouts = st.sampled_from([0.5, 3.0, 60.0]) | st.floats(min_value=0.1, max_value=300.0)


job_cases = st.builds(JobCase, scripts, latency_lists, policy_recipes, timeouts, st.booleans())


@given(job_cases)
def test_whole_job_survives_fuzzed_replies(case: JobCase) -> None:
    """Any sequence of replies and failures: the job ends terminal, by its deadline plus one
    poll interval, with a solution it was sent or a CaptchaflowError, and nothing else is
    ever raised."""
    count(case.script)
    check_whole_job(case)


class ScriptedAPI(SimulatedAPI):
    """A simulated service whose every exchange is the next entry of a script."""

    def __init__(self, script: Sequence[ApiReply | Exception], latencies: Sequence[float]) -> None:
        super().__init__(Scenario())
        self.script = script
        self.latencies = latencies
        self.served = 0

    def handle(self, request: ApiRequest, now: float) -> SimulatedExchange:
        """The next scripted exchange (the last one forever)."""
        index = min(self.served, len(self.script) - 1)
        latency = self.latencies[self.served % len(self.latencies)]
        self.served += 1
        happening = self.script[index]
        if isinstance(happening, ApiReply):
            return SimulatedExchange(RequestFate.REPLY, latency, happening)
        if isinstance(happening, NotSent):
            return SimulatedExchange(RequestFate.REFUSED, latency, server_acted=False)
        return SimulatedExchange(RequestFate.TIMEOUT, latency)


sim_scripts = st.lists(
    st.one_of(
        replies,
        valid_replies,
        valid_replies,
        st.builds(NotSent, st.text(max_size=5)),
        st.just(BadReply("x")),
    ),
    min_size=1,
    max_size=12,
)


@given(sim_scripts, latency_lists, policy_recipes, timeouts, st.booleans())
def test_simulated_fleet_survives_fuzzed_replies(
    script: list[ApiReply | TransportError],
    latencies: list[float],
    recipe: PolicyRecipe,
    timeout: float,
    gated: bool,
) -> None:
    """Three jobs sharing an account gate (or none) in the discrete-event simulation, fed
    one stream of fuzzed replies: each ends terminal by its deadline plus one poll interval,
    with nothing but CaptchaflowErrors."""
    count(script)
    simulation = Simulation(
        ScriptedAPI(script, latencies),
        key=KEY,
        policy=recipe.build(0),
        poll_schedule=FixedInterval(interval=POLL),
        timeout=timeout,
        gate=FleetGate() if gated else None,
    )
    jobs = [simulation.submit(TASK, at=at) for at in (0.0, 0.5, 7.0)]
    report = simulation.run()
    for index, job in enumerate(jobs):
        check_job(job, report.finished_at[index])


# -- the count ----------------------------------------------------------------------------


def test_generated_reply_count() -> None:
    """The fuzz properties above generated at least three replies per example (the figure is
    printed: `pytest -s` or `-rP` shows it)."""
    if GENERATED == 0:
        pytest.skip("the fuzz properties did not run in this session")
    print(f"fuzz: {GENERATED} generated replies")
    assert settings.default.max_examples * 3 <= GENERATED


# -- mutants: the whole-job property catches a broken engine ------------------------------

MUTANT_SETTINGS = settings(
    verbosity=Verbosity.quiet,  # the falsifying example may hold the key: do not print it
    max_examples=200,
    phases=[Phase.generate],
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    deadline=None,
)


def caught() -> str | None:
    """How the whole-job property fails on some generated script (with whatever is
    monkeypatched), or None if it holds on all of them."""

    @MUTANT_SETTINGS
    @given(job_cases)
    def prop(case: JobCase) -> None:
        check_whole_job(case)

    try:
        prop()
    except AssertionError as exc:
        return str(exc)
    return None


def test_unbroken_engine_is_not_caught() -> None:
    """The mutant harness finds nothing wrong with the real engine (so a catch below means
    the mutant, not the harness)."""
    assert caught() is None


def test_mutant_classifier_raising_on_malformed_replies_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A classifier that raises on a reply that is not a JSON object breaks the property."""

    def fragile(endpoint: Endpoint, result: Any, **kwargs: Any) -> Outcome:
        if isinstance(result, ApiReply) and not _is_json(result):
            raise ValueError("not a JSON object")
        return classify(endpoint, result, **kwargs)

    monkeypatch.setattr(driver_module, "classify", fragile)
    assert "the engine raised ValueError" in (caught() or "")


def test_mutant_job_never_failing_at_its_deadline_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job that ignores its deadline is left non-terminal (polling, or submitted when it
    was too late to create its task), which breaks the property."""
    monkeypatch.setattr(job_module.Job, "_fail_deadline", lambda self, now, reason="": None)
    assert re.search(r"left (polling|submitted)", caught() or "")


def test_mutant_poll_wait_past_the_deadline_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that schedules its next poll without capping it at the deadline finishes late,
    which breaks the property."""
    real = job_module.Job._schedule_poll

    def uncapped(self: Job, now: float) -> None:
        real(self, now)
        if not self.finished:
            self._next_at = now + 10 * POLL

    monkeypatch.setattr(job_module.Job, "_schedule_poll", uncapped)
    assert "past its deadline" in (caught() or "")


WRONG_TYPES = (
    ("taskId", "float"),
    ("taskId", "list"),
    ("taskId", "dict"),
    ("status", "int"),
    ("solution", "list"),
    ("code", "float"),
    ("code", "bool"),
    ("code", "list"),
    ("code", "dict"),
    ("retryAfterSec", "str"),
    ("retryAfterSec", "negative"),
    ("retryAfterSec", "huge"),
    ("retryAfterSec", "nan"),
)


@pytest.mark.parametrize(("key", "kind"), WRONG_TYPES, ids=[f"{k}-{t}" for k, t in WRONG_TYPES])
def test_fuzzed_replies_include_every_wrong_type(key: str, kind: str) -> None:
    """The reply strategy reaches each wrong type the module docstring promises."""
    find(
        protocol_payloads,
        lambda payload: key in payload and _kind(payload[key]) == kind,
        settings=settings(max_examples=5000, database=None, phases=[Phase.generate]),
    )


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, int | float) and value < 0:
        return "negative"
    if isinstance(value, int | float) and value > 10**9:
        return "huge"
    return type(value).__name__
