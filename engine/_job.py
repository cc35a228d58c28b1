"""The sans-IO job: one task's life, advanced by feeding it outcomes and the current time.

Theory of operation. A driver runs this loop until the job is finished:

    action = job.next_action(now)
    Send(request)  -> perform it, then job.feed(classify(...), now)
    Wait(until)    -> come back at `until` (or earlier; the job just answers Wait again)
    Finished()     -> read job.solution or job.error

The job never sleeps, never reads a clock and never does I/O; time is whatever the driver
says it is, which is what makes it testable in virtual time and embeddable anywhere.

Rules the job enforces whatever its policy says:
- it never sends a request before the server's retry hint has passed;
- it never waits past its deadline: a wait that would end after it fails the job at once,
  and a job still live at its deadline fails with `DeadlineExceededError`;
- it never creates a task it could not poll before its deadline (one whose first poll, after
  the schedule's delay before poll 1, would come later): it fails instead, paying nothing;
- a solution that arrives is always kept, even after the deadline: it has been paid for;
- every state change goes through the shared machine and is recorded in `history`.

Progress is the job's business, not its parts': whatever a policy, schedule or gate answers,
every `Wait` the job returns ends at least `MIN_WAIT` after `now`, a poll delay is a number of
seconds of at least `MIN_POLL_DELAY`, and a gate that holds a job until a time at or before
`now` twice without letting it send (or holds it `MAX_HOLDS_AT_ONE_TIME` times at one instant)
fails the job with a `PolicyError` naming the gate. So a job's clock advances by a positive
step between any two of its actions, and no driver can spin on it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Final, TypeAlias, TypeGuard

import attrs

from captchaflow.policies import (
    MIN_POLL_DELAY,
    AccountGate,
    Admit,
    Failure,
    GiveUp,
    Hold,
    PollSchedule,
    Refuse,
    Resubmit,
    RetryAfter,
    RetryContext,
    RetryPolicy,
)
from captchaflow.transports import (
    ApiKey,
    ApiReply,
    ApiRequest,
    Endpoint,
    ErrorCode,
    JsonValue,
    TaskId,
    TransportError,
)

from ._classify import Accepted, Outcome, Processing, Solved, classify
from ._errors import (
    CaptchaflowError,
    DeadlineExceededError,
    InvalidTaskError,
    JobCancelledError,
    JobStateError,
    NoReplyError,
    PolicyError,
    error_class_for,
)
from ._fsm import _DESTINATIONS, INITIAL_STATE, TERMINAL_STATES, Move, TaskState, apply_trigger
from ._words import counted

__all__ = [
    "MAX_HOLDS_AT_ONE_TIME",
    "MIN_WAIT",
    "Action",
    "Finished",
    "Job",
    "Send",
    "Wait",
    "check_timeout",
    "validate_task",
]


@attrs.frozen
class Send:
    """Send `request` now, then feed the job what came back."""

    request: ApiRequest


@attrs.frozen
class Wait:
    """Nothing to do before `until` (on the driver's clock)."""

    until: float


@attrs.frozen
class Finished:
    """The job is in a terminal state; read `job.solution` or `job.error`."""


Action: TypeAlias = Send | Wait | Finished

_new_object: Final = object.__new__
_SET_REQUEST: Final = Send.__dict__["request"].__set__
_SET_UNTIL: Final = Wait.__dict__["until"].__set__


def _wait(until: float) -> Wait:
    """`Wait(until)`, the same object, made by setting its slot (it has no validator or
    converter) instead of through attrs' frozen `__init__`: a job answers one for every wait
    (and `next_action` makes its `Send`s and commonest `Wait`s the same way, inline)."""
    wait: Wait = _new_object(Wait)
    _SET_UNTIL(wait, until)
    return wait


FINISHED: Final = Finished()
_GATE_FAILED: Final = object()
_NOT_ASKED: Final = object()
_new_move: Final = tuple.__new__
"""Makes a `Move` as `Move(...)` does, without the call through its generated `__new__`."""

_Entry: TypeAlias = tuple[float, str, str, str, str]
"""A move as a job keeps it until its `history` is read: a plain tuple of `Move`'s fields."""

_CREATE: Final = Endpoint.CREATE_TASK
_GET: Final = Endpoint.GET_TASK_RESULT
_NO_SLOT: Final = int(ErrorCode.NO_SLOT_AVAILABLE)
_BACKOFF: Final = TaskState.BACKOFF.value
_INITIAL: Final = INITIAL_STATE.value
_READY: Final = TaskState.READY.value

MIN_WAIT: Final = 0.001
"""Seconds: the least time any wait of a job lasts (a retry after 0 s, a gate's hold until
`now`), so that time always moves forward between two actions of a job."""

MAX_HOLDS_AT_ONE_TIME: Final = 64
"""A gate that holds a job this many times at one instant (waking it and holding it again)
keeps it from progressing: the job fails with `PolicyError`."""

MAX_TASK_DEPTH: Final = 64
"""Tasks are shallow JSON objects; anything deeper is refused before it is sent."""

_SERIALS: Final = itertools.count(1)
"""Each job's `serial`: jobs are numbered from 1 in the order this process creates them."""


def validate_task(task: object) -> Mapping[str, JsonValue]:
    """Return `task` if it is a JSON-serialisable object with a non-empty string `type`,
    else raise `InvalidTaskError` saying what is wrong."""
    if type(task) is not dict and not isinstance(task, Mapping):
        raise InvalidTaskError(f"a task must be a JSON object, got {type(task).__name__}")
    kind = task.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidTaskError('a task needs a non-empty string "type"')
    if _plain(task):
        return task  # JSON as it stands, one level deep: nothing to encode to know it
    if _depth(task) > MAX_TASK_DEPTH:
        raise InvalidTaskError(f"the task is nested deeper than {MAX_TASK_DEPTH} levels")
    try:
        json.dumps(task, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidTaskError(f"the task is not serialisable as JSON: {exc}") from None
    return task


_SHORT_INT_BITS: Final = 2000
"""An int this short has fewer digits (603) than any limit on int-to-str conversion can be
set to (640, `sys.set_int_max_str_digits`): `json.dumps` always writes it."""


def _plain(task: Mapping[str, object]) -> bool:
    """Whether `task` is a `dict` whose keys are `str` and whose values are `str`, `int`,
    `bool`, None or finite `float` (those exact types): what `json.dumps(task,
    allow_nan=False)` always encodes, without encoding it. A task of an image is such a
    dict (tens of kilobytes of base64 in one string), and encoding it cost more than
    everything else a job does."""
    if type(task) is not dict:
        return False
    for key, value in task.items():
        kind = type(value)
        if type(key) is not str or not (
            kind is str
            or (kind is int and value.bit_length() <= _SHORT_INT_BITS)
            or kind is bool
            or value is None
            or (kind is float and math.isfinite(value))
        ):
            return False
    return True


@attrs.frozen
class Retry:
    """A failure is retried after `delay` seconds, as `decision` says."""

    delay: float
    decision: RetryAfter | Resubmit


@attrs.frozen
class Stop:
    """A failure ends the call, for `reason`; `policy_at_fault`: the retry policy raised or
    answered garbage (a `PolicyError`), rather than giving up or running out of time."""

    reason: str
    policy_at_fault: bool = False


def judge_failure(policy: RetryPolicy, failure: Failure, context: RetryContext) -> Retry | Stop:
    """Ask `policy` about `failure` and hold its answer to the engine's rules: a decision is
    checked (a forged one does not pass), the server's hint and `MIN_WAIT` are floors of the
    wait, and a wait that would end after `context.deadline` stops the call instead."""
    name = type(policy).__name__
    try:
        decision = policy.decide(failure, context)
    except Exception as exc:
        return Stop(f"retry policy {name} raised {exc!r}", policy_at_fault=True)
    if isinstance(decision, GiveUp):
        return Stop(decision.reason)
    if not isinstance(decision, RetryAfter | Resubmit) or not (
        _is_seconds(decision.delay) and 0 <= decision.delay < math.inf
    ):
        # Checked here, not only by the constructors: a forged decision must not pass.
        return Stop(f"retry policy {name} answered {decision!r}", policy_at_fault=True)
    # The server's hint is a floor, whatever the policy chose; so is the least step.
    delay = max(decision.delay, failure.retry_after or 0.0)
    delay = max(delay, MIN_WAIT)
    if context.now + delay > context.deadline:
        return Stop(f"waiting {delay:.3g}s would pass the deadline")
    return Retry(delay, decision)


def error_for(
    failure: Failure,
    reason: str,
    *,
    history: Sequence[Move] = (),
    task_id: TaskId | None = None,
) -> CaptchaflowError:
    """The error that `failure` ends a call with (its bucket's class), for `reason`."""
    return error_class_for(failure.bucket)(
        failure.message,
        name=failure.name,
        code=failure.code,
        reason=reason,
        failure=failure,
        history=history,
        task_id=task_id,
    )


DEFAULT_TIMEOUT: Final = 120.0
"""A task's deadline when none is given, in seconds from its start."""


def check_timeout(timeout: float) -> None:
    """Raise `ValueError` unless `timeout` is a positive finite number of seconds."""
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout!r}")


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
"""Types whose values are leaves of a task (exactly these: a subclass is checked in full)."""


def _depth(value: object) -> int:
    """How deeply containers nest in `value` (iterative: no recursion limit to hit)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if type(item) in _SCALARS:
            continue  # a leaf (the common case, decided without the ABC checks below)
        if isinstance(item, Mapping):
            children: Iterable[object] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_TASK_DEPTH:
            break
        stack.extend((child, level + 1) for child in children if type(child) not in _SCALARS)
    return deepest


class Job:
    """One captcha task driven to a terminal state. See the module docstring."""

    __slots__ = (
        "_accepted_at",
        "_awaiting",
        "_create_by",
        "_held_at",
        "_hold_reason",
        "_holds_at_one_time",
        "_latest",
        "_log",
        "_next_at",
        "_previous_delay",
        "_processing_at",
        "_sent_at",
        "_stale_holds",
        "attempt",
        "deadline",
        "error",
        "gate",
        "key",
        "last_failure",
        "policy",
        "polls",
        "requests_sent",
        "resubmits",
        "schedule",
        "serial",
        "solution",
        "started_at",
        "state",
        "task",
        "task_id",
    )

    def __init__(
        self,
        task: Mapping[str, JsonValue],
        *,
        key: ApiKey,
        policy: RetryPolicy,
        schedule: PollSchedule,
        now: float,
        timeout: float,
        gate: AccountGate | None = None,
    ) -> None:
        check_timeout(timeout)
        self.task = validate_task(task)
        self.key = key
        self.policy = policy
        self.schedule = schedule
        self.started_at = now
        self.deadline = now + timeout
        self.state: str = _INITIAL
        self._log: tuple[_Entry, ...] | list[Move] = ()
        self.task_id: TaskId | None = None
        self.attempt = 0
        self.resubmits = 0
        self.polls = 0
        self.requests_sent = 0
        self.solution: Mapping[str, JsonValue] | None = None
        self.error: CaptchaflowError | None = None
        self.last_failure: Failure | None = None
        self._awaiting: Endpoint | None = None
        self._next_at = now
        self._create_by = self.deadline
        self._previous_delay: float | None = None
        self._sent_at = now
        self._accepted_at = now
        self._processing_at = now
        self._hold_reason: str | None = None
        self._held_at = -math.inf
        self._latest = now
        self._holds_at_one_time = 0
        self._stale_holds = 0
        self.gate = gate
        self.serial = next(_SERIALS)
        if gate is not None:
            gate.register(self, now)

    # -- reading ---------------------------------------------------------------------------

    @property
    def history(self) -> list[Move]:
        """The job's moves, oldest first: the same list at every read, to which each later
        move is appended.

        Until it is first read, a job keeps its moves as plain tuples in a tuple, which the
        garbage collector stops tracking (it never does for `Move`s, a tuple subclass): a
        hundred thousand jobs in flight would otherwise give its full passes eight objects
        each to walk, the job itself, this list and a `Move` per move."""
        log = self._log
        if type(log) is list:
            return log
        moves = [_new_move(Move, entry) for entry in log]
        self._log = moves
        return moves

    @property
    def finished(self) -> bool:
        """True once the job is ready, failed or cancelled."""
        return self.state in TERMINAL_STATES

    @property
    def name(self) -> str:
        """A readable name for logs that never holds the key: `task <id>` (redacted) once
        the provider has assigned the task an id, before that `job-<serial>`, `serial`
        numbering the jobs of this process from 1 in the order they were created."""
        if self.task_id is None:
            return f"job-{self.serial}"
        return f"task {self.key.redact(str(self.task_id))}"

    @property
    def awaiting_reply(self) -> bool:
        """True between a `Send` and the matching `feed`."""
        return self._awaiting is not None

    def result(self) -> Mapping[str, JsonValue]:
        """The solution, or raise the job's error (or `JobStateError` if still live)."""
        if self.solution is not None:
            return self.solution
        if self.error is not None:
            raise self.error
        raise JobStateError(f"the job is still {self.state}")

    def __repr__(self) -> str:
        task_id = self.key.redact(repr(self.task_id))
        return f"<Job {self.state} task_id={task_id} requests={self.requests_sent}>"

    # -- driving ---------------------------------------------------------------------------

    def next_action(self, now: float) -> Action:
        """What the driver should do at time `now`."""
        if self.state in TERMINAL_STATES:
            return FINISHED
        if self._awaiting is not None:
            raise JobStateError("a reply is still awaited; feed it before asking again")
        if not now >= self._latest:
            self._advance(now)  # raises: time went backwards
        self._latest = now
        if now >= self.deadline:
            self._fail_deadline(now)
            return FINISHED
        gate = self.gate
        endpoint = _CREATE if self.task_id is None else _GET
        if gate is not None:
            # The gate is asked directly, and only an answer other than the common one is
            # checked (this runs before every request and every wait of every job).
            try:
                verdict: object = gate.standing(self, endpoint, now)
            except Exception as exc:
                self._fail_policy(now, f"gate {type(gate).__name__}.standing raised {exc!r}")
                return FINISHED
            if verdict is not None:
                verdict = self._gate_answer("standing", verdict, now)
                if verdict is _GATE_FAILED or (
                    isinstance(verdict, Refuse | Hold) and self._held(verdict, now)
                ):
                    return FINISHED
        if now < self._next_at:
            wait: Wait = _new_object(Wait)  # `_wait(self._next_at)`, inlined: the commonest answer
            _SET_UNTIL(wait, self._next_at)
            return wait
        if self.task_id is None and self._too_late_to_create(now):
            return FINISHED
        if gate is not None:
            try:
                decision: object = gate.admit(self, endpoint, retry=self.attempt > 0, now=now)
            except Exception as exc:
                self._fail_policy(now, f"gate {type(gate).__name__}.admit raised {exc!r}")
                return FINISHED
            if type(decision) is not Admit:
                decision = self._gate_answer("admit", decision, now)
                if decision is _GATE_FAILED:
                    return FINISHED
                if isinstance(decision, Refuse | Hold):
                    if self._held(decision, now) or self._stalled(decision, now):
                        return FINISHED
                    until = decision.until if isinstance(decision, Hold) else None
                    # No later than the last moment a task could still pay off (then it
                    # fails, having paid nothing, instead of waiting on for its deadline).
                    latest = self.deadline if self.task_id is not None else self._create_by
                    until = latest if until is None else min(until, latest)
                    return _wait(max(until, now + MIN_WAIT))
            self._hold_reason = None
            self._stale_holds = 0
            self._holds_at_one_time = 0
        if self.state == _BACKOFF:
            trigger = "retry_submit" if self.task_id is None else "retry_poll"
            self._move(trigger, now, "wait over")
        task_id = self.task_id
        if task_id is None:
            request = ApiRequest.create_task(self.key, self.task)
        else:
            request = ApiRequest.get_task_result(self.key, task_id)
            self.polls += 1
        self._awaiting = request.endpoint
        self._sent_at = now
        self.requests_sent += 1
        send: Send = _new_object(Send)  # `_send(request)`, inlined
        _SET_REQUEST(send, request)
        return send

    def feed_reply(
        self, result: ApiReply | TransportError, now: float, *, wall_time: float | None = None
    ) -> list[Hashable]:
        """Tell the job what its last request came back with, as it came: the transport's
        reply or the `TransportError` it raised (classified here, with the job's key
        redacted from every text). `wall_time` (seconds since the epoch) turns a
        `Retry-After` HTTP-date into a delay when the reply has no `Date` header.

        Returns the jobs the account gate wants re-run now (see `woken`): a driver that
        runs many jobs wakes each of them, or they sleep until their deadline."""
        if self._awaiting is None:
            raise JobStateError("no request is awaiting a reply")
        self.feed(classify(self._awaiting, result, wall_time=wall_time, secret=self.key), now)
        return self.woken()

    def woken(self) -> list[Hashable]:
        """The jobs of this job's account gate that must be re-run now (each once; none
        without a gate), taken from the gate: after a reply, or after a job finished (which
        frees its task slot), call it and run each again at once."""
        return self.gate.wakeups() if self.gate is not None else []

    def feed(self, outcome: Outcome, now: float) -> None:
        """Tell the job what its last request came back with, at time `now`, classified
        (`feed_reply` classifies for you)."""
        endpoint = self._awaiting
        if endpoint is None:
            raise JobStateError("no request is awaiting a reply")
        if not now >= self._latest:
            self._advance(now)  # raises: time went backwards
        self._latest = now
        self._awaiting = None
        failure = outcome if isinstance(outcome, Failure) else None
        if self.gate is not None:
            self.gate.observe(self, endpoint, failure, sent_at=self._sent_at, now=now)
        if failure is not None:
            self._on_failure(self._redacted(failure), now)
        elif isinstance(outcome, Processing) and endpoint is _GET:  # the commonest reply
            self._processing_at = now
            self.attempt = 0
            self._previous_delay = None
            # `_schedule_poll`, inlined (this runs for every poll of every job)
            try:
                answer = self.schedule.delay_before_poll(self.polls + 1)
            except Exception as exc:
                self._poll_schedule_raised(exc, now)
                return
            delay: float | None = answer
            if not (type(answer) is float and MIN_POLL_DELAY <= answer < math.inf):
                delay = self._checked_poll_delay(answer, now)
            if delay is not None:
                self._next_at = min(now + delay, self.deadline)
        elif isinstance(outcome, Accepted) and endpoint is _CREATE:
            self._accept(outcome.task_id, now, f"task {outcome.task_id!r} accepted")
        elif isinstance(outcome, Solved) and endpoint is _GET:
            self.solution = outcome.solution
            self._move("solve", now, f"solved after {counted(self.polls, 'poll')}")
            # For any schedule whose observe_solved is a method, what isinstance(schedule,
            # LearningPollSchedule) decides, about 150 times faster than a runtime Protocol
            # check (which showed in the simulation's profile).
            observe_solved = getattr(self.schedule, "observe_solved", None)
            if callable(observe_solved):
                # The task was solved between the last reply that said processing (or its
                # acceptance) and now: report the middle. Reporting `now` would teach the
                # schedule its own polling lag, and a learned first wait would only grow.
                observe_solved((self._processing_at + now) / 2 - self._accepted_at)
        else:
            self._awaiting = endpoint
            raise JobStateError(f"{type(outcome).__name__} is not a reply to {endpoint.value}")

    def feed_bug(self, now: float, reason: str) -> None:
        """Tell the job its last request got no outcome because a plug-in (the transport)
        failed in a way no network does: the job fails at once with `PolicyError`, since
        resending could bill a task twice and a bug does not heal."""
        self._reply_arrives(now)
        self._fail_policy(now, reason)

    def resume(self, task_id: TaskId, now: float, cause: str = "") -> None:
        """Take over `task_id`, a task created for this job's task by an earlier run (from a
        journal): the job polls it instead of creating one, as if its createTask had just
        been accepted (the account gate counts the task as live). Only before the job's
        first request."""
        self._before_first_request("resume a task")
        self._advance(now)
        if self.gate is not None:
            self.gate.observe(self, Endpoint.CREATE_TASK, None, sent_at=now, now=now)
        self._accept(task_id, now, cause or f"task {task_id!r} resumed from the journal")

    def restore_solution(
        self, task_id: TaskId | None, solution: Mapping[str, JsonValue], now: float
    ) -> None:
        """Finish the job with `solution`, which an earlier run got for this job's task (from
        a journal), sending nothing. Only before the job's first request."""
        self.resume(task_id if task_id is not None else "", now, "resumed from the journal")
        self.solution = solution
        self._move("solve", now, "solution from the journal (nothing sent)")

    def fail_unsent(self, now: float, name: str, reason: str) -> None:
        """Fail the job with `NoReplyError` called `name` before it sends anything, for
        `reason` (a createTask of an earlier run whose fate is unknown, which the caller
        chose not to repeat). Only before the job's first request."""
        self._before_first_request("fail unsent")
        self._advance(now)
        self._move("fail", now, reason)
        self.error = NoReplyError(
            "the task's createTask may have been sent by an earlier run, whose reply was lost",
            name=name,
            reason=self.key.redact(reason),
            history=self.history,
        )

    def cancel(self, now: float, reason: str = "cancelled by the caller") -> bool:
        """Cancel the job unless it has finished; return whether it was cancelled."""
        if self.state in TERMINAL_STATES:
            return False
        self._awaiting = None
        self._move("cancel", now, reason)
        self.error = JobCancelledError(
            reason, history=self.history, task_id=self.task_id, failure=self.last_failure
        )
        return True

    # -- internals -------------------------------------------------------------------------

    def _move(self, trigger: str, now: float, cause: str) -> None:
        source = self.state
        dest = _DESTINATIONS.get((source, trigger))  # `apply_trigger(self, trigger)`, inlined
        if dest is None:
            apply_trigger(self, trigger)  # raises: not a move of the machine
            dest = self.state
        self.state = dest
        entry = (now, source, dest, trigger, self.key.redact(cause))
        log = self._log
        if isinstance(log, list):
            log.append(_new_move(Move, entry))
        else:
            self._log = (*log, entry)
        if self.gate is not None and dest in TERMINAL_STATES:
            if self._task_may_run_on():
                left_running = getattr(self.gate, "task_left_running", None)
                if callable(left_running):
                    # The job has ended: a gate that fails here cannot fail it, and must
                    # not keep the gate from hearing of its end (`release`).
                    with contextlib.suppress(Exception):
                        left_running(self, now)
            self.gate.release(self, now)

    def _task_may_run_on(self) -> bool:
        """Whether the job ends with a task the service may still be solving: it has one,
        was not found solved, and no API error code said the task was over (it gave up at
        its deadline, was cancelled, or its polls got no answer)."""
        if self.task_id is None or self.state == _READY:
            return False
        return self.last_failure is None or self.last_failure.code is None

    def _before_first_request(self, what: str) -> None:
        """Raise `JobStateError` unless the job has not moved or sent anything yet."""
        if self.state != _INITIAL or self.requests_sent or self._awaiting:
            raise JobStateError(f"only a job that has sent nothing can {what}")

    def _accept(self, task_id: TaskId, now: float, cause: str) -> None:
        """The task exists as `task_id`: poll it."""
        self.task_id = task_id
        self.attempt = 0
        self.polls = 0
        self._previous_delay = None
        self._accepted_at = self._processing_at = now
        self._move("accept", now, cause)
        self._schedule_poll(now)

    def _held(self, decision: Refuse | Hold, now: float) -> bool:
        """Apply a gate's refusal or hold; return True if it finished the job."""
        if isinstance(decision, Refuse):
            self._fail(decision.failure, now, decision.reason)
            return True
        until = decision.until
        if until is not None and until > self.deadline and decision.cause is not None:
            # A failure behind the hold (a quota, an outage) that outlasts the deadline: fail
            # now with it. A hold without one (pacing, a start-up window) may end sooner, on a
            # wake-up: the job waits, and fails at its deadline if nothing changed.
            self._fail(decision.cause, now, f"{decision.reason}, past the deadline")
            return True
        if decision.reason != self._hold_reason:  # record each new reason to wait, once
            self._hold_reason = decision.reason
            self._move("hold", now, decision.reason)
        return False

    def _reply_arrives(self, now: float) -> Endpoint:
        """The endpoint of the request whose answer arrives now (no longer awaited); raise
        `JobStateError` if none is awaited or `now` runs backwards."""
        endpoint = self._awaiting
        if endpoint is None:
            raise JobStateError("no request is awaiting a reply")
        self._advance(now)
        self._awaiting = None
        return endpoint

    def _advance(self, now: float) -> None:
        """Refuse a time before the latest the job was given (a driver's clock must not run
        backwards: history entries would precede what caused them) or one that is NaN."""
        if not now >= self._latest:
            raise JobStateError(
                f"time went backwards: {now!r} after {self._latest!r} (drivers must feed a "
                "monotonic clock)"
            )
        self._latest = now

    def _gate_answer(self, question: str, answer: object, now: float) -> object:
        """The gate's `standing` or `admit` answer (`question`), checked: it, or
        `_GATE_FAILED` (the job failed with PolicyError naming the gate) if it is garbage."""
        if answer is None and question == "standing":
            return None
        if type(answer) is Admit and question == "admit":
            return answer
        until = getattr(answer, "until", None)
        if type(answer) is Hold and (until is None or (type(until) is float and until == until)):
            return answer  # a hold until a time, or until woken: the other common answer
        allowed = (Refuse, Hold, type(None)) if question == "standing" else (Admit, Refuse, Hold)
        well_formed = isinstance(answer, allowed) and (
            not isinstance(answer, Hold) or answer.until is None or _is_seconds(answer.until)
        )
        if not well_formed or (
            isinstance(answer, Refuse) and not isinstance(answer.failure, Failure)
        ):
            gate = type(self.gate).__name__
            self._fail_policy(now, f"gate {gate}.{question} answered {answer!r}")
            return _GATE_FAILED
        return answer

    def _stalled(self, decision: Hold | Refuse, now: float) -> bool:
        """Fail the job (and return True) if the gate keeps it from progressing: a second
        hold until a time at or before `now` since it last sent, or too many holds at one
        instant."""
        if not isinstance(decision, Hold):
            return False
        if decision.until is not None and decision.until <= now:
            self._stale_holds += 1
            if self._stale_holds >= 2:
                gate = type(self.gate).__name__
                self._fail_policy(
                    now,
                    f"gate {gate} held the job until a time already passed twice without "
                    f"letting it send ({decision.reason})",
                )
                return True
        if now > self._held_at:
            self._held_at, self._holds_at_one_time = now, 0
        self._holds_at_one_time += 1
        if self._holds_at_one_time >= MAX_HOLDS_AT_ONE_TIME:
            gate = type(self.gate).__name__
            self._fail_policy(
                now,
                f"gate {gate} held the job {self._holds_at_one_time} times at one instant "
                f"({decision.reason})",
            )
            return True
        return False

    def _poll_delay(self, poll: int, now: float) -> float | None:
        """The schedule's wait before poll number `poll`, checked; None if the schedule
        failed (the job then has failed with `PolicyError`)."""
        try:
            delay = self.schedule.delay_before_poll(poll)
        except Exception as exc:
            self._poll_schedule_raised(exc, now)
            return None
        if type(delay) is float and MIN_POLL_DELAY <= delay < math.inf:  # the common answer
            return delay
        return self._checked_poll_delay(delay, now)

    def _poll_schedule_raised(self, exc: Exception, now: float) -> None:
        """Fail the job: its poll schedule raised `exc`."""
        schedule = type(self.schedule).__name__
        self._fail_policy(now, f"poll schedule {schedule} raised {exc!r}")

    def _checked_poll_delay(self, delay: float, now: float) -> float | None:
        """`delay`, an answer of the poll schedule, as seconds; None if it is not a finite
        number of seconds >= `MIN_POLL_DELAY` (the job then has failed with `PolicyError`)."""
        schedule = type(self.schedule).__name__
        if not _is_seconds(delay) or not (MIN_POLL_DELAY <= delay < math.inf):
            self._fail_policy(
                now,
                f"poll schedule {schedule} answered {delay!r}: a poll delay must be a "
                f"finite number of seconds >= {MIN_POLL_DELAY}",
            )
            return None
        return float(delay)

    def _schedule_poll(self, now: float) -> None:
        delay = self._poll_delay(self.polls + 1, now)
        if delay is not None:
            self._next_at = min(now + delay, self.deadline)

    def _too_late_to_create(self, now: float) -> bool:
        """Fail the job, sending nothing, if a task created now would outlive the deadline
        (paid for and never seen): if less time is left than the poll schedule's first
        delay, or than a `TimingGate`'s expected task time when that is at most half the
        job's timeout. It fails with its last failure if
        it has one, else DEADLINE_EXCEEDED. Say whether it failed; if not, remember the last
        moment a task could still be created (`_create_by`)."""
        first_poll = self._poll_delay(1, now)
        if first_poll is None:
            return True
        expected = self._expected_task_seconds(now)
        if expected is _GATE_FAILED:
            return True
        needed, why = first_poll, "before a new task's first poll"
        # Only where the tasks fit the job's timeout twice over: where they need most of it,
        # a task created late is no worse a bet than one created on time.
        timeout = self.deadline - self.started_at
        if isinstance(expected, float) and needed < expected <= timeout / 2:
            needed, why = expected, "this account's tasks have lately taken to be solved"
        self._create_by = self.deadline - needed
        if now <= self._create_by:
            return False
        reason = (
            f"{self.deadline - now:.4g}s left, less than the {needed:.4g}s {why}: no task "
            "was created (nothing was paid)"
        )
        if self._hold_reason is not None:
            reason += f"; it was held by the account gate ({self._hold_reason})"
        if self.last_failure is not None:  # the failure that kept it from creating sooner
            self._fail(self.last_failure, now, reason)
        else:
            self._fail_deadline(now, reason)
        return True

    def _ask_gate(self, method: str, now: float) -> object:
        """The answer of the gate's optional `method` (one a `TimingGate` or a
        `SlotQueueGate` adds): `_NOT_ASKED` when the gate has none, `_GATE_FAILED` once the
        job failed with `PolicyError` naming the gate because it raised."""
        # getattr rather than isinstance(gate, TimingGate): far cheaper than a runtime
        # Protocol check, and the same answer for any gate whose method is a method.
        ask = getattr(self.gate, method, None)
        if not callable(ask):
            return _NOT_ASKED
        try:
            return ask()
        except Exception as exc:
            self._fail_policy(now, f"gate {type(self.gate).__name__}.{method} raised {exc!r}")
            return _GATE_FAILED

    def _gate_answered_wrongly(self, method: str, answer: object, must: str, now: float) -> None:
        gate = type(self.gate).__name__
        self._fail_policy(now, f"gate {gate}.{method} answered {answer!r}: it must be {must}")

    def _expected_task_seconds(self, now: float) -> object:
        """A `TimingGate`'s expected task time, checked: a float, None (no gate, not a
        timing one, or it does not know yet), or `_GATE_FAILED` (the job failed with
        `PolicyError` naming the gate: it raised or answered garbage)."""
        answer = self._ask_gate("expected_task_seconds", now)
        if answer is _NOT_ASKED or answer is None:
            return None
        if answer is _GATE_FAILED:
            return _GATE_FAILED
        if not _is_seconds(answer) or not (0 <= answer < math.inf):
            must = "None or a finite number of seconds >= 0"
            self._gate_answered_wrongly("expected_task_seconds", answer, must, now)
            return _GATE_FAILED
        return float(answer)

    def _on_failure(self, failure: Failure, now: float) -> None:
        self.last_failure = failure
        slot_wait = failure.code == _NO_SLOT and self._gate_queues_for_slots(now)
        if slot_wait is None:
            return  # the gate failed the job
        if not slot_wait:
            self.attempt += 1
        context = RetryContext(
            attempt=1 if slot_wait else self.attempt,
            resubmits=self.resubmits,
            now=now,
            deadline=self.deadline,
            previous_delay=self._previous_delay,
        )
        verdict = judge_failure(self.policy, failure, context)
        if isinstance(verdict, Stop):
            if verdict.policy_at_fault:
                self._fail_policy(now, verdict.reason)
            else:
                self._fail(failure, now, verdict.reason)
            return
        delay, decision, what = verdict.delay, verdict.decision, _describe(failure)
        if isinstance(decision, Resubmit):
            self.resubmits += 1
            self.task_id = None
            if self.gate is not None:  # the old task no longer holds a slot
                self.gate.release(self, now)
                self.gate.register(self, now)
            self.attempt = 0
            self._previous_delay = None
            cause = f"{what}; resubmit {self.resubmits} in {delay:.3g}s"
        else:
            self._previous_delay = delay
            cause = f"{what}; retry in {delay:.3g}s ({decision.reason})"
        self._next_at = now + delay
        self._move("defer", now, cause)

    def _gate_queues_for_slots(self, now: float) -> bool | None:
        """A `SlotQueueGate`'s answer, checked: True or False (no gate, or not such a gate:
        False), or None once the job failed with `PolicyError` naming the gate (it raised
        or answered something other than a bool)."""
        answer = self._ask_gate("queues_for_slots", now)
        if answer is _NOT_ASKED:
            return False
        if answer is _GATE_FAILED:
            return None
        if type(answer) is not bool:
            self._gate_answered_wrongly("queues_for_slots", answer, "a bool", now)
            return None
        return answer

    def _fail(self, failure: Failure, now: float, reason: str) -> None:
        self._move("fail", now, f"{_describe(failure)}; {reason}")
        self.error = error_for(failure, reason, history=self.history, task_id=self.task_id)

    def _fail_deadline(self, now: float, reason: str = "") -> None:
        last = self.last_failure
        if not reason and self._hold_reason is not None:
            # Never silent: a job the gate freed but its driver did not run again ends here.
            reason = f"still held by the account gate ({self._hold_reason}) when the deadline came"
        elif not reason and last is not None:
            reason = f"last failure: {_describe(last)}"
        self._move("fail", now, "deadline passed")
        self.error = DeadlineExceededError(
            f"no solution within the deadline (state was {self._log[-1][1]})",
            name="DEADLINE_EXCEEDED",
            reason=reason,
            failure=last,
            history=self.history,
            task_id=self.task_id,
        )

    def _fail_policy(self, now: float, reason: str) -> None:
        reason = self.key.redact(reason)  # a plug-in's exception may quote a request
        self._move("fail", now, reason)
        self.error = PolicyError(
            reason, name="POLICY_ERROR", history=self.history, task_id=self.task_id
        )

    def _redacted(self, failure: Failure) -> Failure:
        message = self.key.redact(failure.message)
        name = self.key.redact(failure.name)
        if message is failure.message and name is failure.name:
            return failure
        return attrs.evolve(failure, message=message, name=name)


def _is_seconds(value: object) -> TypeGuard[float]:
    """A real number of seconds: an int or float, not a bool, a string or NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _describe(failure: Failure) -> str:
    code = f" ({failure.code})" if failure.code is not None else ""
    return f"{failure.name}{code} on {failure.endpoint.value}"
