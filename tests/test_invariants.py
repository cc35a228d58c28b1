"""Property tests of the engine against the simulated API, in virtual time.

Each `test_invariant_*` states one invariant of `specs/invariants.json`; hypothesis draws
whole worlds (a scenario with limits, outages and network faults, a seed, a policy, a poll
schedule, a batch of jobs) and runs them with the discrete-event driver. Each invariant has
a mutant test beside it: a deliberately broken engine or policy that the same check must
catch (`test_mutant_*`).
"""

from __future__ import annotations

import itertools
import json
import pathlib
import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from captchaflow.engine import (
    Accepted,
    BadRequestError,
    IllegalTransitionError,
    Job,
    Outcome,
    PermanentError,
    Processing,
    Simulation,
    Solved,
    classify,
)
from captchaflow.engine import _job as job_module
from captchaflow.engine import _simulation as simulation_module
from captchaflow.policies import (
    BackoffPolicy,
    Bucket,
    Decision,
    DocumentedPolicy,
    Failure,
    FixedInterval,
    FullJitter,
    RetryAfter,
    RetryContext,
)
from captchaflow.transports import ApiRequest, Endpoint
from captchaflow.transports.sim import (
    AccountSpec,
    FaultRates,
    Outage,
    PlanState,
    Scenario,
    SimulatedAPI,
    TaskTypeSpec,
)

ROOT = pathlib.Path(__file__).parents[1]
SPEC = json.loads((ROOT / "specs" / "task-fsm.json").read_text())
EDGES = {(s, t["trigger"], t["dest"]) for t in SPEC["transitions"] for s in t["source"]}
INVARIANTS = json.loads((ROOT / "specs" / "invariants.json").read_text())["invariants"]
KEY = "sk-property-KEY"

# -- worlds ----------------------------------------------------------------------------------

rates = st.just(0.0) | st.just(0.0) | st.floats(0, 0.05) | st.floats(0, 0.3)
maybe = st.none


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A world: one account with random limits, random task behaviour, outages and faults."""
    resets = draw(maybe() | st.floats(0, 200))
    account = AccountSpec(
        key=KEY,
        balance=draw(maybe() | st.sampled_from([0.0, 0.001, 0.003, 0.01])),
        price=0.001,
        plan=draw(st.sampled_from([PlanState.ACTIVE] * 8 + list(PlanState))),
        slots=draw(maybe() | st.integers(1, 10)),
        rate_limit=draw(maybe() | st.integers(1, 20)),
        daily_quota=draw(maybe() | st.integers(1, 30)),
        plan_quota=draw(maybe() | st.integers(1, 30)),
        plan_quota_resets_at=resets,
    )
    starts = draw(st.lists(st.floats(0, 100), max_size=2))
    outages = tuple(
        Outage(start=s, end=s + draw(st.floats(0, 30)), hint=draw(st.booleans())) for s in starts
    )
    faults = FaultRates(
        refused=draw(rates),
        timeout_before=draw(rates),
        http_429=draw(rates),
        http_5xx=draw(rates),
        timeout_after=draw(rates),
        non_json=draw(rates),
        truncated=draw(rates),
        wrong_shape=draw(rates),
        slow=draw(rates),
        retry_after_header=draw(maybe() | st.floats(0, 20)),
        timeout_seconds=draw(st.floats(0.5, 20)),
        slow_seconds=draw(st.floats(0, 10)),
    )
    task = TaskTypeSpec(
        solve_seconds=draw(st.floats(0, 20)),
        solve_spread=draw(st.floats(0, 5)),
        min_solve_seconds=draw(st.floats(0, 2)),
        unsolvable_rate=draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0])),
    )
    return Scenario(
        accounts=(account,),
        default_task=task,
        outages=outages,
        faults=faults,
        latency=draw(st.floats(0, 1)),
    )


@attrs.frozen
class Case:
    """One world to run."""

    scenario: Scenario
    seed: int
    jobs: int
    timeout: float
    interval: float
    policy: str
    max_attempts: int
    max_resubmits: int
    resend_ambiguous_create: bool
    spread: float


cases = st.builds(
    Case,
    scenario=scenarios(),
    seed=st.integers(0, 2**16),
    jobs=st.integers(1, 12),
    timeout=st.floats(1, 150),
    interval=st.floats(0.25, 5),
    policy=st.sampled_from(["documented", "full-jitter"]),
    max_attempts=st.integers(1, 8),
    max_resubmits=st.integers(0, 4),
    resend_ambiguous_create=st.booleans(),
    spread=st.floats(0, 20),
)


@attrs.define
class Sent:
    """One request a job sent and what it came back with."""

    request: ApiRequest
    sent_at: float
    seen_at: float
    outcome: Outcome


@attrs.define
class Run:
    """A finished world: the jobs, what each sent, when each finished, the service."""

    case: Case
    jobs: list[Job]
    sent: dict[int, list[Sent]]
    finished_at: dict[int, float]
    api: SimulatedAPI
    policy: BackoffPolicy


def make_policy(case: Case) -> BackoffPolicy:
    """The case's policy, seeded."""
    options: dict[str, Any] = {
        "max_attempts": case.max_attempts,
        "max_resubmits": case.max_resubmits,
        "resend_ambiguous_create": case.resend_ambiguous_create,
        "rng": random.Random(case.seed),
    }
    if case.policy == "documented":
        return DocumentedPolicy(**options)
    return FullJitter(**options)


def run(case: Case, policy: BackoffPolicy | None = None) -> Run:
    """Run `case` with the discrete-event driver, recording every exchange."""
    policy = policy if policy is not None else make_policy(case)
    api = SimulatedAPI(case.scenario, seed=case.seed)
    sent: dict[int, list[Sent]] = {}

    def record(job: Job, request: ApiRequest, at: float, seen: float, outcome: Outcome) -> None:
        sent.setdefault(id(job), []).append(Sent(request, at, seen, outcome))

    simulation = Simulation(
        api,
        key=KEY,
        policy=policy,
        poll_schedule=FixedInterval(interval=case.interval),
        timeout=case.timeout,
        on_exchange=record,
    )
    arrivals = random.Random(case.seed)
    for n in range(case.jobs):
        simulation.submit(
            {"type": "ImageToTextTask", "body": f"img-{n}"}, at=arrivals.uniform(0, case.spread)
        )
    report = simulation.run()
    by_index = dict(report.finished_at)
    return Run(
        case,
        list(report.jobs),
        sent,
        {id(job): by_index[i] for i, job in enumerate(report.jobs) if i in by_index},
        api,
        policy,
    )


# -- invariants ------------------------------------------------------------------------------


def check_terminal(result: Run) -> None:
    """Every job ends in exactly one terminal state, within its deadline plus one interval."""
    for job in result.jobs:
        assert job.finished, job
        assert sum(m.dest in SPEC["terminal"] for m in job.history) == 1
        assert (job.solution is None) != (job.error is None)
        assert result.finished_at[id(job)] <= job.deadline + result.case.interval + 1e-9


def check_spec_edges(result: Run) -> None:
    """Every move is an edge of the spec, and nothing is sent once a job is terminal."""
    for job in result.jobs:
        assert all((m.source, m.trigger, m.dest) in EDGES for m in job.history), job.history
        end = result.finished_at[id(job)]
        assert all(s.sent_at <= end for s in result.sent.get(id(job), []))
        if job.history:
            assert all(s.sent_at <= job.history[-1].at for s in result.sent.get(id(job), []))


def check_permanent_not_retried(result: Run) -> None:
    """A permanent or bad-request failure is the job's last request; the job then fails."""
    for job in result.jobs:
        sent = result.sent.get(id(job), [])
        for i, s in enumerate(sent):
            if isinstance(s.outcome, Failure) and s.outcome.bucket in (
                Bucket.PERMANENT,
                Bucket.BAD_REQUEST,
            ):
                assert i == len(sent) - 1, f"sent {len(sent) - 1 - i} more after {s.outcome.name}"
                assert isinstance(job.error, PermanentError | BadRequestError)
                if i == 0:
                    assert len(sent) == 1


def check_hints_respected(result: Run) -> None:
    """After a reply with a retry hint, the job sends nothing before the hint has passed."""
    for job in result.jobs:
        sent = result.sent.get(id(job), [])
        for before, after in itertools.pairwise(sent):
            if isinstance(before.outcome, Failure) and before.outcome.retry_after is not None:
                assert after.sent_at >= before.seen_at + before.outcome.retry_after - 1e-9


def check_bounds(result: Run) -> None:
    """Attempts per request and resubmits stay within the policy's bounds; no wait ends
    after the deadline."""
    policy = result.policy
    for job in result.jobs:
        assert job.resubmits <= policy.max_resubmits
        streak = 0
        for s in result.sent.get(id(job), []):
            if not isinstance(s.outcome, Failure):
                streak = 0
                continue
            streak += 1
            assert streak <= policy.max_attempts, f"{streak} failed attempts in a row"
            if s.outcome.bucket is Bucket.UNSOLVABLE:
                streak = 0  # a resubmit starts a new request
        for move in job.history:
            if move.trigger in ("retry_submit", "retry_poll"):
                assert move.at <= job.deadline + 1e-9


def check_solutions_and_billing(result: Run) -> None:
    """A solution is exactly what the API returned for the job's task; a task the API
    created for a job is never replaced by a new one unless the policy resubmitted."""
    tasks = result.api.tasks
    for job in result.jobs:
        if job.solution is not None:
            assert job.task_id is not None
            assert job.solution == tasks[int(job.task_id)].solution
        accepted_since_resubmit = False
        for move in job.history:
            if move.trigger == "accept":
                accepted_since_resubmit = True
            elif move.trigger == "defer" and "resubmit" in move.cause:
                accepted_since_resubmit = False
            elif move.trigger == "retry_submit":
                assert not accepted_since_resubmit, "created again without a resubmit"


def check_classification_total(result: Run) -> None:
    """Every exchange was classified into a typed outcome (classification never raised)."""
    for sent in result.sent.values():
        for s in sent:
            assert isinstance(s.outcome, Failure | Accepted | Processing | Solved)


CHECKS: dict[str, Callable[[Run], None]] = {
    "terminal": check_terminal,
    "spec_edges": check_spec_edges,
    "permanent_not_retried": check_permanent_not_retried,
    "hints_respected": check_hints_respected,
    "bounds": check_bounds,
    "solutions_and_billing": check_solutions_and_billing,
    "classification_total": check_classification_total,
}


@given(cases)
def test_invariant_terminal(case: Case) -> None:
    """Every job ends in exactly one terminal state, within its deadline plus one interval."""
    check_terminal(run(case))


@given(cases)
def test_invariant_spec_edges(case: Case) -> None:
    """Jobs move only along the spec's edges; no request is sent for a terminal job."""
    check_spec_edges(run(case))


@given(cases)
def test_invariant_permanent_not_retried(case: Case) -> None:
    """Permanent (1, 3, 14, 15) and bad-request (10) failures are never retried."""
    check_permanent_not_retried(run(case))


@given(cases)
def test_invariant_hints_respected(case: Case) -> None:
    """After `retryAfterSec`/`Retry-After`, the job sends nothing before it has passed."""
    check_hints_respected(run(case))


@given(cases)
def test_invariant_bounds(case: Case) -> None:
    """Attempts and resubmits stay within the policy's bounds; waits end by the deadline."""
    check_bounds(run(case))


@given(cases)
def test_invariant_solutions_and_billing(case: Case) -> None:
    """Solutions are exactly the API's; a billed task is only replaced by policy choice."""
    check_solutions_and_billing(run(case))


@given(cases)
def test_invariant_classification_total(case: Case) -> None:
    """Whatever the simulated network returns, every exchange gets a typed outcome."""
    check_classification_total(run(case))


def test_every_invariant_listed_in_specs_has_its_test() -> None:
    """specs/invariants.json and this file agree: each invariant names an existing test."""
    names = {name for name in globals() if name.startswith("test_")}
    for entry in INVARIANTS:
        for test in entry["tests"]:
            module, _, function = test.partition("::")
            path = ROOT / module
            assert path.exists(), test
            if path == pathlib.Path(__file__):
                assert function in names, test
    assert {e["id"] for e in INVARIANTS} >= set(CHECKS)


# -- mutants ---------------------------------------------------------------------------------

MUTANT_SETTINGS = settings(
    # Quiet: the falsifying world is expected, and printing it would print its account key.
    verbosity=Verbosity.quiet,
    max_examples=400,
    phases=[Phase.generate],
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    deadline=None,
)


def caught(
    check: Callable[[Run], None], policy: Callable[[Case], BackoffPolicy] | None = None
) -> bool:
    """Whether `check` fails on some generated world (with `policy` instead of the case's)."""

    @MUTANT_SETTINGS
    @given(cases)
    def prop(case: Case) -> None:
        check(run(case, policy(case) if policy is not None else None))

    try:
        prop()
    except (AssertionError, IllegalTransitionError):  # the machine refusing counts too
        return True
    return False


def test_mutant_deadline_never_failed_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that never fails at its deadline violates `terminal`."""
    monkeypatch.setattr(job_module.Job, "_fail_deadline", lambda self, now, reason="": None)
    assert caught(check_terminal)


def test_mutant_illegal_edge_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine whose retry of a poll goes back to submitted violates `spec_edges` (the
    job moves by the machine's destination table, `_DESTINATIONS`: the mutant is there)."""
    table = dict(job_module._DESTINATIONS)
    table["backoff", "retry_poll"] = "submitted"
    monkeypatch.setattr(job_module, "_DESTINATIONS", table)
    assert caught(check_spec_edges)


class RetriesEverything(DocumentedPolicy):
    """Broken: treats permanent and bad-request failures as transient."""

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        """Retry whatever failed, after 1 s."""
        if context.attempt < self.max_attempts:
            return RetryAfter(min(1.0, max(0.0, context.time_left)))
        return super().decide(failure, context)


def test_mutant_policy_retrying_permanent_is_caught() -> None:
    """A policy that retries permanent errors violates `permanent_not_retried`."""
    assert caught(check_permanent_not_retried, lambda case: RetriesEverything(rng=random.Random(0)))


def test_mutant_hint_floor_removed_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that lets a policy undercut the server's hint violates `hints_respected`."""
    monkeypatch.setattr(job_module, "max", lambda a, b: a, raising=False)

    class Impatient(DocumentedPolicy):
        def decide(self, failure: Failure, context: RetryContext) -> Decision:
            decision = super().decide(failure, context)
            return RetryAfter(0.0) if isinstance(decision, RetryAfter) else decision

    assert caught(check_hints_respected, lambda case: Impatient(rng=random.Random(0)))


def test_mutant_unbounded_policy_is_caught() -> None:
    """A policy that declares 2 attempts but keeps retrying violates `bounds`."""

    class Unbounded(DocumentedPolicy):
        def decide(self, failure: Failure, context: RetryContext) -> Decision:
            patched = attrs.evolve(context, attempt=1)
            return super().decide(failure, patched)

    assert caught(check_bounds, lambda case: Unbounded(max_attempts=2, rng=random.Random(0)))


def test_mutant_wrong_solution_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A classifier that alters solutions violates `solutions_and_billing`."""

    def corrupting(*args: Any, **kwargs: Any) -> Outcome:
        outcome = classify(*args, **kwargs)
        return Solved({"text": "forged"}) if isinstance(outcome, Solved) else outcome

    monkeypatch.setattr(simulation_module, "classify", corrupting)
    assert caught(check_solutions_and_billing)


def test_mutant_recreating_billed_task_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that forgets a billed task after a failed poll violates billing."""
    real = job_module.Job._on_failure

    def forgetful(self: Job, failure: Failure, now: float) -> None:
        if failure.endpoint is Endpoint.GET_TASK_RESULT:
            self.task_id = None
        real(self, failure, now)

    monkeypatch.setattr(job_module.Job, "_on_failure", forgetful)
    assert caught(check_solutions_and_billing)


def test_mutant_raising_classifier_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A classifier that lets an exception escape on odd replies breaks a whole run."""

    def fragile(endpoint: Endpoint, result: Any, **kwargs: Any) -> Outcome:
        if not isinstance(result, Exception) and not result.body.startswith(b"{"):
            raise ValueError("not JSON")
        return classify(endpoint, result, **kwargs)

    monkeypatch.setattr(simulation_module, "classify", fragile)
    with pytest.raises(ValueError, match="not JSON"):
        caught(check_classification_total)
