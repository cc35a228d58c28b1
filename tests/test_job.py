"""The sans-IO job, driven by hand: no transport, no event loop, no clock but numbers."""

from __future__ import annotations

import json
import math
import pathlib
import random
from collections.abc import Callable

import attrs
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from captchaflow.engine import (
    MIN_WAIT,
    Accepted,
    BadRequestError,
    CaptchaflowError,
    ConnectionFailedError,
    DeadlineExceededError,
    Finished,
    HttpStatusError,
    InvalidTaskError,
    Job,
    JobCancelledError,
    JobStateError,
    MalformedReplyError,
    Move,
    NoReplyError,
    Outcome,
    PermanentError,
    PolicyError,
    Processing,
    RetriesExhaustedError,
    Send,
    Simulation,
    Solved,
    TaskState,
    UnknownCodeError,
    UnsolvableError,
    Wait,
    error_class_for,
)
from captchaflow.engine import _job as job_module
from captchaflow.engine.cli import exit_code_for
from captchaflow.policies import (
    AdaptiveConcurrency,
    Bucket,
    Decision,
    DocumentedPolicy,
    Failure,
    FixedInterval,
    FleetGate,
    GiveUp,
    NoRetry,
    OpenGate,
    PollSchedule,
    Resubmit,
    RetryAfter,
    RetryContext,
    RetryPolicy,
    TaskDurations,
)
from captchaflow.transports import ApiKey, ApiReply, Endpoint, NotSent
from captchaflow.transports.sim import AccountSpec, Scenario, SimulatedAPI, TaskTypeSpec

KEY = ApiKey("sk-job-test-SECRET")
TASK = {"type": "ImageToTextTask", "body": "aGVsbG8="}
SPEC = json.loads((pathlib.Path(__file__).parents[1] / "specs" / "task-fsm.json").read_text())
EDGES = {(s, t["trigger"], t["dest"]) for t in SPEC["transitions"] for s in t["source"]}


def new_job(
    policy: RetryPolicy | None = None,
    schedule: PollSchedule | None = None,
    timeout: float = 120.0,
    now: float = 0.0,
) -> Job:
    """A job on the test key with the given policy (default: documented, seeded)."""
    import random

    return Job(
        TASK,
        key=KEY,
        policy=policy or DocumentedPolicy(rng=random.Random(1)),
        schedule=schedule or FixedInterval(),
        now=now,
        timeout=timeout,
    )


def fail(bucket: Bucket, endpoint: Endpoint, *, code: int | None = None, **kw: object) -> Failure:
    """A failure of `bucket` on `endpoint`."""
    return Failure(
        bucket, kw.pop("name", bucket.name), str(kw.pop("message", "m")), endpoint, code=code, **kw
    )  # type: ignore[arg-type]


def send(job: Job, now: float) -> Send:
    """Assert the job wants to send now and return the action."""
    action = job.next_action(now)
    assert isinstance(action, Send), action
    return action


def test_happy_path() -> None:
    """create -> accepted -> wait 2 s -> processing -> wait -> solved, with its history."""
    job = new_job()
    first = send(job, 0.0)
    assert first.request.endpoint is Endpoint.CREATE_TASK
    assert first.request.params == {"task": TASK}
    job.feed(Accepted(42), 0.1)
    assert job.next_action(0.1) == Wait(2.1)
    poll = send(job, 2.1)
    assert poll.request.params == {"taskId": 42}
    job.feed(Processing(), 2.2)
    assert job.next_action(3.0) == Wait(4.2)
    send(job, 4.2)
    job.feed(Solved({"text": "abc"}), 4.3)
    assert job.next_action(5.0) == Finished()
    assert job.state == TaskState.READY
    assert job.result() == {"text": "abc"}
    assert [(m.source, m.trigger, m.dest) for m in job.history] == [
        ("submitted", "accept", "polling"),
        ("polling", "solve", "ready"),
    ]
    assert job.requests_sent == 3 and job.polls == 2


def test_string_task_id_sent_back_unchanged() -> None:
    """A string task id is polled with exactly that string."""
    job = new_job()
    send(job, 0)
    job.feed(Accepted("t-1"), 0)
    assert send(job, 2).request.params == {"taskId": "t-1"}


class HintBlind:
    """A policy that ignores server hints and always retries after 0.1 s."""

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        """Retry after 0.1 s, whatever the hint."""
        return RetryAfter(0.1)


def test_server_hint_is_a_floor_whatever_the_policy() -> None:
    """A policy that asks for 0.1 s still waits the server's 5 s hint."""
    job = new_job(policy=HintBlind())
    send(job, 0)
    job.feed(fail(Bucket.RETRYABLE, Endpoint.CREATE_TASK, code=16, retry_after=5.0), 1.0)
    assert job.state == TaskState.BACKOFF
    assert job.next_action(1.1) == Wait(6.0)
    assert send(job, 6.0).request.endpoint is Endpoint.CREATE_TASK
    assert job.history[-1].trigger == "retry_submit"


def test_hint_past_deadline_fails_at_once_with_that_error() -> None:
    """DAILY_LIMIT_EXCEEDED with a day-long hint fails the job at once with that error."""
    job = new_job(timeout=30)
    send(job, 0)
    job.feed(
        fail(
            Bucket.RETRYABLE,
            Endpoint.CREATE_TASK,
            code=17,
            name="DAILY_LIMIT_EXCEEDED",
            retry_after=86400.0,
        ),
        0.5,
    )
    assert job.state == TaskState.FAILED
    assert isinstance(job.error, RetriesExhaustedError)
    assert job.error.name == "DAILY_LIMIT_EXCEEDED" and job.error.code == 17
    assert "deadline" in job.error.reason
    assert job.next_action(0.5) == Finished()


def test_engine_refuses_a_policy_wait_past_the_deadline() -> None:
    """A policy that asks to wait past the deadline gets the job failed instead."""

    class Sleepy:
        def decide(self, failure: Failure, context: RetryContext) -> Decision:
            return RetryAfter(1000.0)

    job = new_job(policy=Sleepy(), timeout=10)
    send(job, 0)
    job.feed(fail(Bucket.NOT_SENT, Endpoint.CREATE_TASK), 0)
    assert isinstance(job.error, ConnectionFailedError)


def test_polls_never_wait_past_the_deadline_then_fail() -> None:
    """The last wait ends at the deadline and the job then fails DEADLINE_EXCEEDED."""
    job = new_job(timeout=5, schedule=FixedInterval(interval=3))
    send(job, 0)
    job.feed(Accepted(1), 0)
    send(job, 3)
    job.feed(Processing(), 3)
    assert job.next_action(3) == Wait(5.0)
    assert job.next_action(5.0) == Finished()
    assert isinstance(job.error, DeadlineExceededError)
    assert job.error.task_id == 1
    assert job.history[-1].cause == "deadline passed"


def test_no_task_is_created_that_could_not_be_polled_before_the_deadline() -> None:
    """Invariant: a createTask is sent only if the new task's first poll (the schedule's
    delay before poll 1) would come by the deadline; otherwise the job fails
    DEADLINE_EXCEEDED having sent nothing, so nothing is paid for a task never seen."""
    late = new_job(timeout=1.5, schedule=FixedInterval(interval=2))
    assert late.next_action(0.0) == Finished()
    assert isinstance(late.error, DeadlineExceededError)
    assert late.requests_sent == 0 and late.task_id is None
    assert "no task was created" in late.error.reason
    in_time = new_job(timeout=2.0, schedule=FixedInterval(interval=2))
    send(in_time, 0.0)


def test_a_retried_create_is_not_sent_too_late_either() -> None:
    """After a failed createTask, the retry is dropped (nothing sent) once the first poll of
    the task it would make could no longer come by the deadline; the job fails with the
    failure that kept it from creating sooner."""
    job = new_job(timeout=10.0, schedule=FixedInterval(interval=2))
    send(job, 0.0)
    job.feed(fail(Bucket.RETRYABLE, Endpoint.CREATE_TASK, name="NO_SLOT_AVAILABLE", code=2), 8.5)
    action = job.next_action(9.0)
    if isinstance(action, Wait):
        action = job.next_action(action.until)
    assert action == Finished()
    assert job.error is not None and job.error.name == "NO_SLOT_AVAILABLE"  # what kept it
    assert "no task was created" in job.error.reason
    assert job.requests_sent == 1


def _creates_sent_too_late(timeout: float, interval: float, gaps: list[float]) -> int:
    """Drive a job whose createTasks all meet NO_SLOT_AVAILABLE, `gaps` seconds after each
    send; return how many createTasks went out when the task's first poll could not have
    come by the deadline."""
    job = new_job(timeout=timeout, schedule=FixedInterval(interval=interval))
    now, late = 0.0, 0
    no_slot = fail(Bucket.RETRYABLE, Endpoint.CREATE_TASK, name="NO_SLOT_AVAILABLE", code=2)
    for gap in gaps:
        action = job.next_action(now)
        while isinstance(action, Wait):
            now = action.until
            action = job.next_action(now)
        if not isinstance(action, Send):
            break
        late += now + interval > job.deadline
        now += gap
        job.feed(no_slot, now)
    return late


@given(
    timeout=st.floats(0.05, 30.0),
    interval=st.floats(0.01, 10.0),
    gaps=st.lists(st.floats(0.0, 5.0), min_size=1, max_size=8),
)
@settings(max_examples=150, deadline=None)
def test_property_no_create_whose_first_poll_would_pass_the_deadline(
    timeout: float, interval: float, gaps: list[float]
) -> None:
    """Invariant: every createTask is sent at a time t with t + (delay before poll 1) <=
    deadline, through any sequence of refusals and retries."""
    assert _creates_sent_too_late(timeout, interval, gaps) == 0


def test_mutant_job_creating_too_late_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant check for the property above: a job without the rule sends a doomed create."""
    monkeypatch.setattr(Job, "_too_late_to_create", lambda self, now: False)
    assert _creates_sent_too_late(1.5, 2.0, [0.1]) == 1


def test_solution_after_deadline_is_kept() -> None:
    """A solution arriving after the deadline is kept: it has been paid for."""
    job = new_job(timeout=5)
    send(job, 0)
    job.feed(Accepted(1), 0)
    send(job, 2)
    job.feed(Solved({"t": 1}), 9.0)
    assert job.state == TaskState.READY


def test_unsolvable_resubmits_as_new_task() -> None:
    """Code 12 on a poll creates the task anew (new createTask), up to 3 times, then fails."""
    job = new_job()
    t = 0.0
    for n in range(4):
        assert send(job, t).request.endpoint is Endpoint.CREATE_TASK
        job.feed(Accepted(n), t)
        t += 2
        send(job, t)
        job.feed(fail(Bucket.UNSOLVABLE, Endpoint.GET_TASK_RESULT, code=12), t)
        t += MIN_WAIT  # a resubmit "after 0 s" still waits the least step
        if n < 3:
            assert job.state == TaskState.BACKOFF and job.task_id is None
    assert isinstance(job.error, UnsolvableError)
    assert job.resubmits == 3
    triggers = [m.trigger for m in job.history]
    assert triggers.count("retry_submit") == 3 and triggers[-1] == "fail"


@pytest.mark.parametrize("code", [1, 3, 14, 15])
def test_permanent_failure_no_retry(code: int) -> None:
    """A permanent code fails the job after one request, with PermanentError."""
    job = new_job()
    send(job, 0)
    job.feed(fail(Bucket.PERMANENT, Endpoint.CREATE_TASK, code=code), 0)
    assert isinstance(job.error, PermanentError) and job.error.code == code
    assert job.next_action(100) == Finished()
    assert job.requests_sent == 1


def test_attempts_bounded_then_gives_up() -> None:
    """Six failed attempts of the same request, then RetriesExhaustedError."""
    job = new_job()
    t = 0.0
    for _ in range(6):
        send(job, t)
        job.feed(fail(Bucket.RETRYABLE, Endpoint.CREATE_TASK, code=2), t)
        action = job.next_action(t)
        if isinstance(action, Wait):
            t = action.until
    assert isinstance(job.error, RetriesExhaustedError)
    assert job.requests_sent == 6


def test_success_resets_attempts() -> None:
    """A successful poll resets the attempt count of the next failures."""
    job = new_job(policy=DocumentedPolicy(max_attempts=2))
    send(job, 0)
    job.feed(Accepted(1), 0)
    t = 2.0
    for _ in range(3):
        send(job, t)
        job.feed(fail(Bucket.TRANSIENT_HTTP, Endpoint.GET_TASK_RESULT, http_status=503), t)
        action = job.next_action(t)
        assert isinstance(action, Wait)
        t = action.until
        send(job, t)
        job.feed(Processing(), t)
        t += 2
    assert job.state == TaskState.POLLING


def test_cancel() -> None:
    """Cancel moves a live job to cancelled with JobCancelledError; a finished job stays."""
    job = new_job()
    send(job, 0)
    assert job.cancel(1.0)
    assert job.state == TaskState.CANCELLED
    assert isinstance(job.error, JobCancelledError)
    assert not job.cancel(2.0)
    with pytest.raises(JobCancelledError):
        job.result()


def test_driver_misuse_raises_job_state_error() -> None:
    """Feeding without a request, asking while a reply is due, wrong outcome types raise."""
    job = new_job()
    with pytest.raises(JobStateError):
        job.feed(Processing(), 0)
    send(job, 0)
    with pytest.raises(JobStateError):
        job.next_action(0)
    with pytest.raises(JobStateError):
        job.feed(Solved({}), 0)  # a createTask cannot be answered with a solution
    job.feed(Accepted(1), 0)  # the job is still waiting for a proper reply
    assert job.state == TaskState.POLLING
    with pytest.raises(JobStateError):
        new_job().result()


class Raising:
    """A policy that raises."""

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        """Raise."""
        raise RuntimeError("boom")


class Garbage:
    """A policy that answers something that is not a decision."""

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        """Answer a string."""
        return "retry please"  # type: ignore[return-value]


@pytest.mark.parametrize("policy", [Raising(), Garbage()])
def test_broken_policy_fails_job_with_policy_error(policy: RetryPolicy) -> None:
    """A policy that raises or answers garbage fails the job with PolicyError."""
    job = new_job(policy=policy)
    send(job, 0)
    job.feed(fail(Bucket.NOT_SENT, Endpoint.CREATE_TASK), 0)
    assert isinstance(job.error, PolicyError)
    assert job.state == TaskState.FAILED


@pytest.mark.parametrize("delay", [-1.0, float("nan"), float("inf")])
def test_broken_poll_schedule_fails_job_with_policy_error(delay: float) -> None:
    """A poll schedule answering a negative, NaN or infinite delay fails the job: before
    its createTask when it answers so for the first poll (nothing sent), after it when it
    answers so later."""

    @attrs.define
    class Bad:
        from_poll: int

        def delay_before_poll(self, poll: int) -> float:
            return delay if poll >= self.from_poll else 2.0

    at_once = new_job(schedule=Bad(from_poll=1))
    assert at_once.next_action(0) == Finished()
    assert isinstance(at_once.error, PolicyError) and at_once.requests_sent == 0
    later = new_job(schedule=Bad(from_poll=2))
    send(later, 0)
    later.feed(Accepted(1), 0)
    send(later, 2)
    later.feed(Processing(), 2)
    assert isinstance(later.error, PolicyError) and later.task_id == 1


@pytest.mark.parametrize(
    "task",
    [
        None,
        [],
        "x",
        {},
        {"type": ""},
        {"type": 3},
        {"type": "T", "x": {1, 2}},
        {"type": "T", "x": float("nan")},
    ],
)
def test_invalid_task_rejected_before_anything_is_sent(task: object) -> None:
    """A task that is not a JSON object with a string type raises InvalidTaskError."""
    with pytest.raises(InvalidTaskError) as caught:
        Job(task, key=KEY, policy=NoRetry(), schedule=FixedInterval(), now=0, timeout=1)  # type: ignore[arg-type]
    assert exit_code_for(caught.value) == 2


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_invalid_timeout_rejected(timeout: float) -> None:
    """A timeout that is not a positive finite number raises ValueError."""
    with pytest.raises(ValueError, match="timeout"):
        new_job(timeout=timeout)


def test_key_echoed_by_server_is_redacted() -> None:
    """A server message that echoes the key is stored redacted in history and error."""
    job = new_job()
    send(job, 0)
    job.feed(
        fail(
            Bucket.PERMANENT,
            Endpoint.CREATE_TASK,
            code=1,
            message=f"key {KEY.reveal()} does not exist",
        ),
        0,
    )
    assert job.error is not None
    texts = [str(job.error), repr(job.error), job.error.message, repr(job.history), repr(job)]
    assert all(KEY.reveal() not in t for t in texts)
    assert "***" in job.error.message


@pytest.mark.parametrize(
    ("bucket", "cls", "exit_code"),
    [
        (Bucket.PERMANENT, PermanentError, 3),
        (Bucket.BAD_REQUEST, BadRequestError, 4),
        (Bucket.UNSOLVABLE, UnsolvableError, 5),
        (Bucket.RETRYABLE, RetriesExhaustedError, 6),
        (Bucket.UNKNOWN_CODE, UnknownCodeError, 6),
        (Bucket.TRANSIENT_HTTP, HttpStatusError, 6),
        (Bucket.UNEXPECTED_HTTP, HttpStatusError, 6),
        (Bucket.MALFORMED, MalformedReplyError, 6),
        (Bucket.NOT_SENT, ConnectionFailedError, 6),
        (Bucket.AMBIGUOUS, NoReplyError, 6),
    ],
)
def test_each_bucket_has_its_error_class(
    bucket: Bucket, cls: type[CaptchaflowError], exit_code: int
) -> None:
    """Giving up on a bucket raises its class, carrying code, name and history; the command
    exits with the class's status."""
    assert error_class_for(bucket) is cls
    job = new_job(policy=NoRetry())
    send(job, 0)
    job.feed(fail(bucket, Endpoint.CREATE_TASK, code=7), 0)
    error = job.error
    assert type(error) is cls and exit_code_for(error) == exit_code
    assert error.code == 7 and error.name == bucket.name
    assert error.history and error.history[-1].dest == "failed"
    assert error.summary().startswith(f"{bucket.name} (7): ")


# --- properties ----------------------------------------------------------------------------

FAILURE_BUCKETS = st.sampled_from(list(Bucket))


@st.composite
def outcomes(draw: st.DrawFn, endpoint: Endpoint) -> Outcome:
    """Any outcome a request on `endpoint` can come back with."""
    hint = draw(st.none() | st.floats(0, 300))
    failure = st.builds(
        Failure,
        FAILURE_BUCKETS,
        st.just("X"),
        st.just("m"),
        st.just(endpoint),
        code=st.none() | st.integers(0, 30),
        retry_after=st.just(hint),
    )
    if endpoint is Endpoint.CREATE_TASK:
        return draw(st.builds(Accepted, st.integers(1, 10**6)) | failure)
    return draw(st.just(Processing()) | st.builds(Solved, st.just({"text": "ok"})) | failure)


POLICIES = st.sampled_from(["documented", "hint-blind", "no-retry"])


def make_policy(name: str) -> RetryPolicy:
    """A policy by name (hypothesis-friendly)."""
    import random

    return {
        "documented": lambda: DocumentedPolicy(rng=random.Random(0)),
        "hint-blind": HintBlind,
        "no-retry": NoRetry,
    }[name]()


def run_random_job(
    data: st.DataObject, policy: RetryPolicy, timeout: float
) -> tuple[Job, list[tuple[float, Endpoint]], list[tuple[float, float | None]]]:
    """Drive a job with random outcomes and latencies; return it, its sends and its hints."""
    job = new_job(policy=policy, timeout=timeout)
    now = 0.0
    sends: list[tuple[float, Endpoint]] = []
    replies: list[tuple[float, float | None]] = []
    while True:
        action = job.next_action(now)
        if isinstance(action, Finished):
            break
        if isinstance(action, Wait):
            assert action.until <= job.deadline
            now = max(now, action.until)
            continue
        sends.append((now, action.request.endpoint))
        outcome = data.draw(outcomes(action.request.endpoint))
        now += data.draw(st.floats(0, 3))
        replies.append((now, outcome.retry_after if isinstance(outcome, Failure) else None))
        job.feed(outcome, now)
    return job, sends, replies


@given(data=st.data(), policy=POLICIES, timeout=st.floats(1, 60))
def test_property_every_move_is_a_spec_edge_and_job_terminates(
    data: st.DataObject, policy: str, timeout: float
) -> None:
    """Whatever the replies, every move is an edge of the spec and the job ends in exactly
    one terminal state with either a solution or an error, and sends nothing after."""
    job, _sends, _ = run_random_job(data, make_policy(policy), timeout)
    assert job.finished
    assert all((m.source, m.trigger, m.dest) in EDGES for m in job.history)
    assert sum(m.dest in SPEC["terminal"] for m in job.history) == 1
    assert (job.solution is None) != (job.error is None)
    assert job.next_action(10**9) == Finished()


def hints_respected(data: st.DataObject, policy: str) -> None:
    """After a reply carrying a hint at time t, the job sends nothing before t + hint."""
    _, sends, replies = run_random_job(data, make_policy(policy), 60)
    for (replied_at, hint), (sent_at, _) in zip(replies, sends[1:], strict=False):
        if hint is not None:
            assert sent_at >= replied_at + hint


@given(data=st.data(), policy=POLICIES)
def test_property_server_hint_respected(data: st.DataObject, policy: str) -> None:
    """No request follows a hinted reply before the hint has passed, for any policy."""
    hints_respected(data, policy)


def test_mutant_job_ignoring_hints_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant check: a job whose hint floor is removed fails the hint property."""
    monkeypatch.setattr(job_module, "max", lambda a, b: a, raising=False)
    prop: Callable[[], None] = settings(phases=[Phase.generate], database=None)(
        given(data=st.data())(lambda data: hints_respected(data, "hint-blind"))
    )
    with pytest.raises(AssertionError):
        prop()


def test_give_up_decision_fails_job() -> None:
    """GiveUp fails the job with the failure's class and the policy's reason."""

    class Quit:
        def decide(self, failure: Failure, context: RetryContext) -> Decision:
            return GiveUp("enough")

    job = new_job(policy=Quit())
    send(job, 0)
    job.feed(fail(Bucket.AMBIGUOUS, Endpoint.CREATE_TASK), 0)
    assert isinstance(job.error, NoReplyError) and job.error.reason == "enough"


def test_resubmit_from_submitted_recreates() -> None:
    """A Resubmit decision on a createTask failure sends createTask again after the delay."""

    class Again:
        def decide(self, failure: Failure, context: RetryContext) -> Decision:
            return Resubmit(1.0)

    job = new_job(policy=Again())
    send(job, 0)
    job.feed(fail(Bucket.UNSOLVABLE, Endpoint.CREATE_TASK, code=12), 0)
    assert job.next_action(0.5) == Wait(1.0)
    assert send(job, 1.0).request.endpoint is Endpoint.CREATE_TASK
    assert job.resubmits == 1


@attrs.define
class RecordingSchedule:
    """Polls every 2 s and records the times to solution it is told (a learning schedule)."""

    solved: list[float] = attrs.Factory(list)

    def delay_before_poll(self, poll: int) -> float:
        return 2.0

    def observe_solved(self, seconds: float) -> None:
        self.solved.append(seconds)


def test_learning_schedule_hears_each_solved_tasks_time_to_solution() -> None:
    """A poll schedule with `observe_solved` (a `LearningPollSchedule`, e.g. `AdaptivePoll`)
    is told how long after acceptance the task was solved, estimated as the middle between
    the last reply that said processing (or the acceptance) and the one that said solved;
    it hears nothing of tasks that were not solved."""
    schedule = RecordingSchedule()
    job = new_job(schedule=schedule)
    send(job, 0.0)
    job.feed(Accepted(7), 0.5)
    send(job, 2.5)
    job.feed(Solved({"text": "ok"}), 3.25)  # found on the first poll: in (0.5, 3.25]
    assert schedule.solved == [1.375]
    later = new_job(schedule=schedule)
    send(later, 10.0)
    later.feed(Accepted(8), 10.0)
    send(later, 12.0)
    later.feed(Processing(), 12.0)
    send(later, 14.0)
    later.feed(Solved({"text": "ok"}), 14.0)  # solved in (12, 14]
    assert schedule.solved == [1.375, 3.0]
    unsolved = new_job(schedule=schedule)
    send(unsolved, 20.0)
    unsolved.feed(fail(Bucket.PERMANENT, Endpoint.CREATE_TASK, code=1), 20.1)
    assert schedule.solved == [1.375, 3.0]


# -- feed_reply: the reply as it came --------------------------------------------------------


def test_feed_reply_classifies_a_reply_and_redacts_the_key() -> None:
    """feed_reply takes the raw reply: accepted, then an API error echoing the key, whose
    text reaches the history without the key."""
    job = new_job()
    send(job, 0.0)
    assert job.feed_reply(ApiReply.json({"taskId": 7}), 0.1) == []
    assert job.task_id == 7
    send(job, 2.1)
    echo = ApiReply.json({"code": 16, "msg": f"slow down {KEY.reveal()}", "retryAfterSec": 3})
    job.feed_reply(echo, 2.2)
    assert job.last_failure is not None and job.last_failure.code == 16
    assert KEY.reveal() not in repr(job.history) and KEY.reveal() not in str(job.last_failure)


def test_feed_reply_takes_a_transport_failure() -> None:
    """A TransportError is fed as it was raised: NotSent on createTask is retried."""
    job = new_job()
    send(job, 0.0)
    job.feed_reply(NotSent("connection refused"), 0.0)
    assert job.state == TaskState.BACKOFF and job.last_failure is not None
    assert job.last_failure.name == "NOT_SENT"


def test_feed_reply_without_a_request_out_is_a_driver_bug() -> None:
    """Nothing awaited: JobStateError, as feed does."""
    with pytest.raises(JobStateError):
        new_job().feed_reply(ApiReply.json({"taskId": 7}), 0.0)


def two_jobs_one_slot(timeout: float) -> tuple[Job, Job]:
    """Two jobs sharing a gate that lets one task run at a time."""
    gate = FleetGate(startup=None, concurrency=AdaptiveConcurrency(limit=1.0))
    first, second = (
        Job(
            TASK,
            key=KEY,
            policy=DocumentedPolicy(),
            schedule=FixedInterval(),
            now=0.0,
            timeout=timeout,
            gate=gate,
        )
        for _ in range(2)
    )
    return first, second


def test_feed_reply_returns_the_jobs_the_gate_wakes() -> None:
    """With a gate, the jobs it wants re-run come back from feed_reply (a job's release of
    its slot wakes the one waiting for it)."""
    first, second = two_jobs_one_slot(timeout=120.0)
    send(first, 0.0)
    assert isinstance(second.next_action(0.0), Wait)  # no slot: held
    first.feed_reply(ApiReply.json({"taskId": 1}), 0.1)
    send(first, 2.1)
    assert first.feed_reply(ApiReply.json({"status": "ready", "solution": {"t": 1}}), 2.2) == [
        second
    ]
    assert isinstance(second.next_action(2.2), Send)


def test_a_gated_job_never_woken_says_so_when_its_last_chance_to_create_passes() -> None:
    """A driver that ignores the gate's wake-ups does not lose the job silently: it wakes at
    the last moment a task could still be polled before its deadline (the deadline less
    the first poll's delay) and fails then, saying it was held by the gate, and why."""
    first, second = two_jobs_one_slot(timeout=30.0)
    send(first, 0.0)
    held = second.next_action(0.0)
    assert isinstance(held, Wait) and held.until == 28.0  # 30 s deadline - the 2-s first poll
    first.feed_reply(ApiReply.json({"taskId": 1}), 0.1)
    send(first, 2.1)
    first.feed_reply(ApiReply.json({"status": "ready", "solution": {"t": 1}}), 2.2)  # ignored
    assert second.next_action(28.0 + 1e-6) == Finished()
    assert isinstance(second.error, DeadlineExceededError)
    assert second.requests_sent == 0
    assert "held by the account gate (waiting for a task slot)" in second.error.reason


# -- a gate that knows how long tasks take -------------------------------------------------


class ExpectingGate(FleetGate):
    """A `FleetGate` (no start-up window) whose expected task time is fixed by the test."""

    def __init__(self, expected: object, **parts: object) -> None:
        super().__init__(startup=None, **parts)  # type: ignore[arg-type]
        self.expected = expected

    def expected_task_seconds(self) -> float | None:
        if isinstance(self.expected, Exception):
            raise self.expected
        return self.expected  # type: ignore[return-value]


def gated_job(gate: FleetGate, timeout: float = 30.0, now: float = 0.0) -> Job:
    return Job(
        TASK,
        key=KEY,
        policy=DocumentedPolicy(),
        schedule=FixedInterval(),
        now=now,
        timeout=timeout,
        gate=gate,
    )


def test_a_job_creates_no_task_it_could_not_see_solved_before_its_deadline() -> None:
    """With less time left than the gate expects a task to take, nothing is sent (nothing
    is paid): the job fails at once, saying why."""
    late = gated_job(ExpectingGate(12.0), timeout=30.0)
    assert late.next_action(19.0) == Finished()  # 11 s left
    assert late.requests_sent == 0
    assert isinstance(late.error, DeadlineExceededError)
    assert "lately taken to be solved" in late.error.reason
    in_time = gated_job(ExpectingGate(12.0), timeout=30.0)
    assert isinstance(in_time.next_action(18.0), Send)  # 12 s left


def test_an_expected_task_time_over_half_the_timeout_is_not_held_against_a_job() -> None:
    """Where tasks need most of a job's timeout, a task created late is no worse a bet than
    one created on time: the expectation is ignored (only the first poll must fit)."""
    job = gated_job(ExpectingGate(20.0), timeout=30.0)
    assert isinstance(job.next_action(19.0), Send)  # 11 s left, under the 20 s expected


def test_a_job_waiting_for_a_slot_gives_up_when_a_task_could_no_longer_pay_off() -> None:
    """Held for a task slot, a job wakes at deadline - expected task time (not at its
    deadline) and fails then, having sent nothing."""
    gate = ExpectingGate(12.0, concurrency=AdaptiveConcurrency(limit=1.0))
    first, second = gated_job(gate), gated_job(gate)
    assert isinstance(first.next_action(0.0), Send)
    held = second.next_action(0.0)
    assert held == Wait(18.0)
    assert second.next_action(18.5) == Finished()
    assert second.requests_sent == 0 and isinstance(second.error, DeadlineExceededError)


def test_a_job_with_a_task_polls_to_its_deadline_whatever_the_gate_expects() -> None:
    gate = ExpectingGate(100.0)
    job = gated_job(gate, timeout=300.0)
    send(job, 0.0)
    job.feed_reply(ApiReply.json({"taskId": 7}), 0.1)
    gate.expected = 1_000.0
    assert isinstance(job.next_action(2.1), Send)  # a paid task is never abandoned early


@pytest.mark.parametrize("answer", [math.nan, -1.0, math.inf, "5", True, [3], RuntimeError("boom")])
def test_a_timing_gate_answering_garbage_fails_the_job_naming_it(answer: object) -> None:
    job = gated_job(ExpectingGate(answer))
    assert job.next_action(0.0) == Finished()
    assert isinstance(job.error, PolicyError) and job.requests_sent == 0
    assert "ExpectingGate.expected_task_seconds" in str(job.error)


def test_the_default_gate_learns_task_times_and_stops_creating_hopeless_tasks() -> None:
    """Outcome on a starved account (5 slots for 10 tasks a second of 8-s solves, 30-s
    timeout): learning task times pays for fewer tasks that are never delivered than the
    same gate without it, and solves at least as many."""
    outcomes = {}
    for name, durations in (("timed", TaskDurations()), ("untimed", None)):
        api = SimulatedAPI(
            Scenario(
                accounts=(AccountSpec(key=KEY.reveal(), slots=5),),
                default_task=TaskTypeSpec(solve_seconds=8.0, solve_spread=3.0),
                latency=0.05,
            ),
            seed=3,
            keep_log=False,
        )
        simulation = Simulation(
            api,
            key=KEY.reveal(),
            timeout=30.0,
            gate=FleetGate(rng=random.Random(3), durations=durations),
        )
        for index in range(300):
            simulation.submit(TASK, at=index / 10)
        report = simulation.run()
        ready = report.states()["ready"]
        outcomes[name] = (ready, api.stats.tasks_created - ready)
    (timed_ready, timed_lost), (untimed_ready, untimed_lost) = (
        outcomes["timed"],
        outcomes["untimed"],
    )
    assert timed_ready >= untimed_ready
    assert timed_lost < untimed_lost / 2, outcomes


class RecordingGate(FleetGate):
    """A `FleetGate` (no start-up window) that records which jobs it was told left a task
    running."""

    def __init__(self) -> None:
        super().__init__(startup=None)
        self.left: list[object] = []

    def task_left_running(self, job: object, now: float) -> None:
        self.left.append(job)


def polling_job(gate: FleetGate, timeout: float = 30.0) -> Job:
    job = gated_job(gate, timeout=timeout)
    send(job, 0.0)
    job.feed_reply(ApiReply.json({"taskId": 5}), 0.1)
    return job


def test_a_job_ending_with_its_task_maybe_still_solving_tells_the_gate() -> None:
    """At its deadline while polling, or cancelled while polling: the task may still fill a
    slot. Solved, or ended by the API's word on the task (12: unsolvable), it does not."""
    gate = RecordingGate()
    timed_out = polling_job(gate, timeout=5.0)
    assert timed_out.next_action(5.0) == Finished()
    cancelled = polling_job(gate)
    cancelled.cancel(1.0)
    solved = polling_job(gate)
    send(solved, 2.1)
    solved.feed_reply(ApiReply.json({"status": "ready", "solution": {"t": 1}}), 2.2)
    unsolvable = Job(
        TASK, key=KEY, policy=NoRetry(), schedule=FixedInterval(), now=0.0, timeout=30.0, gate=gate
    )
    send(unsolvable, 0.0)
    unsolvable.feed_reply(ApiReply.json({"taskId": 6}), 0.1)
    send(unsolvable, 2.1)
    unsolvable.feed_reply(ApiReply.json({"code": 12, "msg": "ERROR_CAPTCHA_UNSOLVABLE"}), 2.2)
    never_created = gated_job(gate)
    never_created.cancel(0.5)
    assert unsolvable.state == "failed" and solved.state == "ready"
    assert gate.left == [timed_out, cancelled]


def test_the_shortcut_constructors_make_what_the_classes_make() -> None:
    """`Send`, `Wait` and `ApiRequest` are built on the hot path by setting their slots, not
    through attrs' `__init__`: that is only the same while they have no validator, converter
    or post-init hook, and the objects are then equal, of the same type, frozen and hashable
    alike (where hashable)."""
    from captchaflow.engine._job import _wait
    from captchaflow.transports import ApiRequest
    from captchaflow.transports._wire import _request

    for cls in (job_module.Send, job_module.Wait, ApiRequest):
        assert all(f.validator is None and f.converter is None for f in attrs.fields(cls))
        assert not hasattr(cls, "__attrs_post_init__") and not hasattr(cls, "__attrs_pre_init__")
    request = ApiRequest.get_task_result(KEY, 42)
    assert type(request) is ApiRequest and request == ApiRequest(
        Endpoint.GET_TASK_RESULT, KEY, {"taskId": 42}
    )
    assert ApiRequest.create_task(KEY, TASK) == ApiRequest(
        Endpoint.CREATE_TASK, KEY, {"task": TASK}
    )
    assert _request(Endpoint.GET_BALANCE, KEY, {}) == ApiRequest.get_balance(KEY)
    sent = send(new_job(), 0.0)
    assert type(sent) is Send and sent == Send(ApiRequest.create_task(KEY, TASK))
    assert repr(sent) == repr(Send(ApiRequest.create_task(KEY, TASK)))
    waiting = new_job()
    send(waiting, 0.0)
    waiting.feed(Accepted(7), 0.1)
    assert type(waiting.next_action(0.1)) is Wait and waiting.next_action(0.2) == Wait(2.1)
    assert _wait(2.5) == Wait(2.5) and hash(_wait(2.5)) == hash(Wait(2.5))
    assert repr(_wait(2.5)) == "Wait(until=2.5)"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        _wait(1.0).until = 2.0  # type: ignore[misc]

    class Subclassed(ApiRequest):
        pass

    assert type(Subclassed.get_task_result(KEY, 1)) is Subclassed


def _lived(read_early: bool) -> tuple[Job, list[Move], int]:
    """A job that is accepted, meets a 503, retries and is solved; its history read after
    its first move (then kept) or only at the end."""
    job = new_job()
    send(job, 0.0)
    job.feed(Accepted(7), 0.1)
    early = job.history if read_early else []
    length = len(early)
    send(job, 2.1)
    job.feed(fail(Bucket.TRANSIENT_HTTP, Endpoint.GET_TASK_RESULT, http_status=503), 2.2)
    until = job.next_action(2.2)
    assert isinstance(until, Wait)
    send(job, until.until)
    job.feed(Solved({"text": "x"}), until.until + 0.1)
    return job, early, length


def test_a_history_read_early_or_late_is_the_same_list_of_moves() -> None:
    """A job keeps its moves as plain tuples until `history` is first read; from then on
    `history` is one list of `Move`s, the same object at every read, to which later moves
    are appended: a history read after the first move and one read only at the end hold
    the same moves, of the same type, and every read returns the list read before."""
    early_job, early, length = _lived(read_early=True)
    late_job, _, _ = _lived(read_early=False)
    assert length == 1 and early is early_job.history and len(early) == 4
    assert early_job.history == late_job.history
    assert [m.trigger for m in late_job.history] == ["accept", "defer", "retry_poll", "solve"]
    for job in (early_job, late_job):
        assert type(job.history) is list and job.history is job.history
        assert all(type(move) is Move for move in job.history)
    held = late_job.history
    late_job.cancel(99.0)  # finished: nothing moves, and the list read is the list kept
    assert late_job.history is held and len(held) == 4
    pending = new_job()
    kept = pending.history
    assert kept == [] and pending.cancel(1.0) and kept[-1].trigger == "cancel"


def test_a_job_refuses_an_illegal_move_as_the_machine_does() -> None:
    """`Job._move` reads the destination table instead of calling `apply_trigger` (its
    inlined copy); a move the machine lacks still goes through `apply_trigger`, which
    raises, and the job is left as it was."""
    from captchaflow.engine import IllegalTransitionError

    job = new_job()
    with pytest.raises(IllegalTransitionError, match="solve"):
        job._move("solve", 0.0, "not legal from submitted")
    with pytest.raises(IllegalTransitionError, match="no-such-trigger"):
        job._move("no-such-trigger", 0.0, "unknown")
    assert job.state == "submitted" and job.history == []


class _Answers:
    """A poll schedule that answers `answer` (or raises it, if an exception)."""

    def __init__(self, answer: object) -> None:
        self.answer = answer

    def delay_before_poll(self, poll: int) -> float:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer  # type: ignore[return-value]


@pytest.mark.parametrize(
    "answer",
    [2.0, 0.05, 1e-9, 0.0, -1.0, math.nan, math.inf, 3, 0, True, "2", None, 500.0, ValueError("x")],
)
def test_feed_schedules_the_next_poll_as_schedule_poll_does(answer: object) -> None:
    """`feed` of a processing reply computes the next poll inline instead of calling
    `_schedule_poll` (its inlined copy): for any answer of the schedule, good, odd, garbage
    or raising, it leaves the job as `_schedule_poll` leaves its twin (same next send
    time, state, error)."""
    inline, twin = new_job(schedule=_Answers(2.0)), new_job(schedule=_Answers(2.0))
    for job in (inline, twin):
        send(job, 0.0)
        job.feed(Accepted(7), 0.1)
        send(job, 2.1)
        job.schedule = _Answers(answer)  # type: ignore[assignment]
    inline.feed(Processing(), 2.2)
    twin._awaiting = None
    twin._schedule_poll(2.2)
    assert (inline._next_at, inline.state) == (twin._next_at, twin.state)
    assert repr(inline.error) == repr(twin.error)


@pytest.mark.parametrize("now", [0.1, 0.5, 2.0, 2.0999])
def test_next_action_waits_as_wait_makes_it(now: float) -> None:
    """`next_action` makes its commonest `Wait` inline, as `_wait` does (its inlined
    copy): equal, of the same type, hash and repr, and frozen."""
    from captchaflow.engine._job import _wait

    job = new_job()
    send(job, 0.0)
    job.feed(Accepted(7), 0.1)
    action = job.next_action(now)
    assert type(action) is Wait and action == _wait(2.1) == Wait(2.1)
    assert hash(action) == hash(Wait(2.1)) and repr(action) == repr(_wait(2.1))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        action.until = 3.0  # type: ignore[misc]


# -- a createTask refused for want of a slot, with a gate that queues for slots ---------------

NO_SLOT_REFUSAL = fail(Bucket.RETRYABLE, Endpoint.CREATE_TASK, name="NO_SLOT_AVAILABLE", code=2)


class SlotQueue(OpenGate):
    """An open gate that says whether it queues createTasks for slots (`answer`; an
    exception is raised instead)."""

    def __init__(self, answer: object) -> None:
        self.answer = answer

    def queues_for_slots(self) -> object:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class RecordingPolicy:
    """`DocumentedPolicy` (seeded, `max_attempts` as given), recording each context."""

    def __init__(self, max_attempts: int) -> None:
        self.inner = DocumentedPolicy(max_attempts=max_attempts, rng=random.Random(3))
        self.contexts: list[RetryContext] = []

    def decide(self, failure: Failure, context: RetryContext) -> Decision:
        self.contexts.append(context)
        return self.inner.decide(failure, context)


def refuse_for_slots(gate: object, refusals: int, max_attempts: int) -> tuple[Job, list[float]]:
    """A job whose first `refusals` createTasks all meet NO_SLOT_AVAILABLE; return it and the
    delay before each retry."""
    policy = RecordingPolicy(max_attempts)
    job = Job(
        TASK,
        key=KEY,
        policy=policy,  # type: ignore[arg-type]
        schedule=FixedInterval(),
        now=0.0,
        timeout=10_000.0,
        gate=gate,  # type: ignore[arg-type]
    )
    now, delays = 0.0, []
    for _ in range(refusals):
        action = job.next_action(now)
        if not isinstance(action, Send):
            break
        job.feed(NO_SLOT_REFUSAL, now)
        action = job.next_action(now)
        if isinstance(action, Wait):
            delays.append(action.until - now)
            now = action.until
    return job, delays


@given(refusals=st.integers(1, 15), max_attempts=st.integers(2, 6))
@settings(max_examples=40, deadline=None)
def test_property_slot_refusals_do_not_escalate_with_a_gate_that_queues_for_slots(
    refusals: int, max_attempts: int
) -> None:
    """Invariant: with a gate whose `queues_for_slots()` is True, every NO_SLOT_AVAILABLE
    refusal is retried after the policy's first backoff (it sees attempt 1 each time, the
    job's attempt count stays 0) and never exhausts the attempts: the job is still going
    after any number of refusals (its deadline alone bounds them). (A policy whose answer
    to attempt 1 is to give up, `max_attempts=1`, is obeyed.)"""
    job, delays = refuse_for_slots(SlotQueue(True), refusals, max_attempts)
    assert not job.finished
    assert job.attempt == 0
    assert isinstance(job.policy, RecordingPolicy)
    assert [context.attempt for context in job.policy.contexts] == [1] * refusals
    assert len(delays) == refusals and all(1.0 <= delay < 2.0 for delay in delays)


def test_slot_refusals_escalate_and_exhaust_without_a_queueing_gate() -> None:
    """A gate that does not queue (answer False), and no gate at all, leave a refusal a
    failed attempt like any other: growing backoff, and RetriesExhaustedError at the
    sixth."""
    for gate in (SlotQueue(False), None):
        job, delays = refuse_for_slots(gate, 10, 6)
        assert isinstance(job.error, RetriesExhaustedError)
        assert job.requests_sent == 6
        assert delays[3] >= 8.0  # attempt 4 waits 2 ** 3 s plus jitter


def test_mutant_job_escalating_slot_refusals_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant check for the property above: a job that does not ask the gate escalates."""
    monkeypatch.setattr(Job, "_gate_queues_for_slots", lambda self, now: False)
    job, _ = refuse_for_slots(SlotQueue(True), 8, 6)
    assert job.finished  # the property's `not job.finished` catches it


@pytest.mark.parametrize("answer", [1, None, "yes", RuntimeError("broken gate")])
def test_a_gate_answering_queues_for_slots_wrongly_fails_the_job(answer: object) -> None:
    """A `queues_for_slots` that raises or answers something other than a bool fails the
    job with `PolicyError` naming the gate, on the refusal it was asked about."""
    job, _ = refuse_for_slots(SlotQueue(answer), 1, 6)
    assert isinstance(job.error, PolicyError)
    assert "SlotQueue.queues_for_slots" in str(job.error)
    assert job.requests_sent == 1


def test_fleet_gate_queues_for_slots_once_slots_are_scarce() -> None:
    """`FleetGate` queues createTasks for slots once the service said NO_SLOT_AVAILABLE (its
    `AdaptiveConcurrency` then bounds them), not before, and never without that part."""
    gate = FleetGate()
    assert gate.queues_for_slots() is False
    gate.register("job", 0.0)
    gate.observe("job", Endpoint.CREATE_TASK, NO_SLOT_REFUSAL, sent_at=0.0, now=0.1)
    assert gate.queues_for_slots() is True
    without = FleetGate(concurrency=None)
    without.observe("job", Endpoint.CREATE_TASK, NO_SLOT_REFUSAL, sent_at=0.0, now=0.1)
    assert without.queues_for_slots() is False
