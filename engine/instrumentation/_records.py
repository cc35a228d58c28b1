"""The records hooks receive: frozen copies of one move or one request, never the live job.

Times (`at`, `sent_at`) are the engine clock's seconds (`Clock.now()`): `time.monotonic()`
with the default `SystemClock`, virtual time in a simulation or under a `VirtualClock`. They
are not wall time: only differences between them mean something. Durations (`elapsed`,
`delay`, `latency`) are seconds on the same clock. No record holds the key: the cause is
redacted by the job, task ids and names here.
"""

from __future__ import annotations

from typing import ClassVar, Final

import attrs

from captchaflow.engine._balance import BalanceQuery
from captchaflow.engine._classify import Accepted, Balance, Outcome, Processing, Solved
from captchaflow.engine._fsm import Move
from captchaflow.engine._job import Job
from captchaflow.policies import Failure
from captchaflow.transports import Endpoint

__all__ = ["MoveRecord", "RequestRecord", "move_record", "outcome_label", "request_record"]

WAITING_TRIGGERS: Final = frozenset({"defer", "hold"})
"""The moves after which a job waits: their records carry the `delay`."""

BALANCE_JOB: Final = "balance"
"""The `job` of a balance query's request records (a query is not a job: no serial)."""

_LABELS: Final[dict[type, str]] = {
    Accepted: "accepted",
    Processing: "processing",
    Solved: "ready",
    Balance: "balance",
}
TRANSPORT_BUG: Final = "TRANSPORT_BUG"
"""The outcome of a request whose transport raised something no network does (a bug)."""


@attrs.frozen
class MoveRecord:
    """One move of one job (one entry of its `history`), as hooks see it.

    - `job`: a readable name, `task <id>` once the provider assigned an id, else
      `job-<serial>` (`Job.name`);
    - `serial`: the job's number in this process, fixed for its life (`job` changes when
      the task id arrives, and again after a resubmit);
    - `source`, `dest`, `trigger`: the move in the task state machine;
    - `cause`: why, in words (`Move.cause`, redacted of the key by the job);
    - `at`: when (`Move.at`), in seconds on the engine's clock (see the module docstring);
    - `elapsed`: seconds from the job's start to `at`;
    - `attempt`: how many times in a row the job's current request had failed when the
      move was reported (0 after a success);
    - `delay`: for a `defer` or a `hold`, seconds from `at` to the job's next action
      (when the driver knew it), else None;
    - `task_id`: the provider's task id as text (redacted), or None while there is none.
    """

    kind: ClassVar[str] = "move"

    job: str
    serial: int
    source: str
    dest: str
    trigger: str
    cause: str
    at: float
    elapsed: float
    attempt: int
    delay: float | None
    task_id: str | None


@attrs.frozen
class RequestRecord:
    """One request and what came of it, as hooks see it.

    - `job`, `serial`, `task_id`: the job as it was when the request was sent (`job` is
      `"balance"` and `serial` None for a balance query);
    - `endpoint`: the path, e.g. `"/createTask"`;
    - `attempt`: how many times in a row this request had failed before (0: a first try);
    - `sent_at`: when it was sent, in seconds on the engine's clock;
    - `latency`: seconds from sending to the outcome, on the same clock;
    - `outcome`: `"accepted"`, `"processing"`, `"ready"`, `"balance"`, or the failure's
      name (`"RATE_LIMITED"`, `"HTTP_503"`, `"NOT_SENT"`, `"TRANSPORT_BUG"`...);
    - `code`: the API error code of a failure that carried one, else None.
    """

    kind: ClassVar[str] = "request"

    job: str
    serial: int | None
    endpoint: str
    attempt: int
    sent_at: float
    latency: float
    outcome: str
    code: int | None
    task_id: str | None


def _task_id_text(job: Job) -> str | None:
    return None if job.task_id is None else job.key.redact(str(job.task_id))


def move_record(job: Job, move: Move, until: float | None = None) -> MoveRecord:
    """The record of `move`, one of `job`'s; `until`: when the job's next action is due,
    if the driver knows (it gives a `defer` or `hold` its `delay`)."""
    delay = until - move.at if until is not None and move.trigger in WAITING_TRIGGERS else None
    return MoveRecord(
        job=job.name,
        serial=job.serial,
        source=move.source,
        dest=move.dest,
        trigger=move.trigger,
        cause=move.cause,
        at=move.at,
        elapsed=move.at - job.started_at,
        attempt=job.attempt,
        delay=delay,
        task_id=_task_id_text(job),
    )


def outcome_label(outcome: Outcome | None) -> str:
    """The short label of `outcome` (`RequestRecord.outcome`); None: the transport failed
    in a way no network does."""
    if isinstance(outcome, Failure):
        return outcome.name
    return TRANSPORT_BUG if outcome is None else _LABELS[type(outcome)]


def request_record(
    caller: Job | BalanceQuery,
    endpoint: Endpoint,
    sent_at: float,
    received_at: float,
    outcome: Outcome | None,
) -> RequestRecord:
    """The record of `caller`'s request to `endpoint`, sent at `sent_at`, whose `outcome`
    (None for a transport bug) came at `received_at`. Call it before feeding the outcome:
    the record names the caller as it was when it sent."""
    if isinstance(caller, Job):
        name, serial, task_id = caller.name, caller.serial, _task_id_text(caller)
    else:
        name, serial, task_id = BALANCE_JOB, None, None
    return RequestRecord(
        job=name,
        serial=serial,
        endpoint=endpoint.value,
        attempt=caller.attempt,
        sent_at=sent_at,
        latency=received_at - sent_at,
        outcome=outcome_label(outcome),
        code=outcome.code if isinstance(outcome, Failure) else None,
        task_id=task_id,
    )
