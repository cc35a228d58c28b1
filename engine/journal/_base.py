"""The job journal: what each job of a run has done that a restart must not redo.

Every createTask is billed. A journal records, per job (by an id the caller chooses), its
task, how far its createTask got, its `taskId` once known, and its outcome, so that a
process that dies and starts again resumes each unfinished job instead of paying for it
twice. The sans-IO `Job` never sees it: the driver (`drive_job`) writes to it around the
requests it sends, and the `taskId` is written before any further request goes out.

A job's `Stage` in the journal:

    NEW      -> SENDING     a createTask is about to be sent (written before it leaves)
    SENDING  -> CREATED     it came back with a taskId (written durably, before anything else)
    SENDING  -> NEW         it provably created nothing (an API error, or it never left)
    CREATED  -> SENDING     the task was unsolvable and a new one is about to be created
    any      -> FINISHED    the job ended (ready or failed), with its outcome

On restart (`resume_plan`): a CREATED job goes straight back to polling its `taskId`; a NEW
one is created; a SENDING one is ambiguous (the createTask left and its reply was lost with
the process: the task may exist and be billed, with no id to poll it by) and follows the
`AmbiguousCreate` rule.

Two journals come with the engine: `MemoryJournal` (tests, one process) and `SqliteJournal`
(one file, `captchaflow.engine.journal_sqlite`).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Protocol

import attrs

from captchaflow.engine._classify import Outcome
from captchaflow.engine._fsm import TaskState
from captchaflow.engine._job import Job
from captchaflow.policies import Failure
from captchaflow.transports import ApiRequest, Endpoint, JsonValue, TaskId

__all__ = [
    "AMBIGUOUS_CREATE",
    "AmbiguousCreate",
    "Journal",
    "JournalConflictError",
    "JournalCorruptError",
    "JournalEntry",
    "JournalError",
    "JournalFormatError",
    "JobRecorder",
    "MemoryJournal",
    "Resume",
    "Stage",
    "resume_plan",
]


class Stage(enum.StrEnum):
    """How far a journalled job got (see the module's docstring for the moves)."""

    NEW = "new"
    """Known, nothing sent that could have created a task."""
    SENDING = "sending"
    """A createTask was sent and no reply has said what became of it."""
    CREATED = "created"
    """The task exists: `task_id` is set and the job polls it."""
    FINISHED = "finished"
    """The job ended; `outcome` says how."""


class AmbiguousCreate(enum.StrEnum):
    """What a restart does with a job whose createTask was in flight when the previous run
    died (`Stage.SENDING`): the task may exist and be billed, but with no `taskId` nobody can
    poll it, and the protocol has no way to find it."""

    RECREATE = "recreate"
    """Create it again: the job gets its solution, at the risk of paying twice (at most one
    extra charge per job per crash). The default: a solution is what the task was for."""
    FAIL = "fail"
    """Fail the job (`AMBIGUOUS_CREATE`), sending nothing: never pay twice, at the risk of
    paying once for nothing."""


class JournalError(Exception):
    """A journal cannot be used; the message says which and why."""


class JournalCorruptError(JournalError):
    """The journal's file is not a journal: truncated, damaged, empty or something else's.
    It is never overwritten or silently replaced by a fresh journal."""


class JournalFormatError(JournalError):
    """The journal was written by a newer captchaflow, in a format this one cannot read."""


class JournalConflictError(JournalError, ValueError):
    """A job id is journalled with a different task whose createTask has been sent: running
    the new task under that id could deliver the old task's solution, or pay twice."""


@attrs.frozen
class JournalEntry:
    """One job as the journal knows it."""

    job_id: str
    task: Mapping[str, JsonValue]
    stage: Stage = Stage.NEW
    task_id: TaskId | None = None
    """Set from `CREATED` on (and kept when the job finishes)."""
    outcome: Mapping[str, JsonValue] | None = None
    """Set at `FINISHED`: `{"state": "ready", "solution": {...}}` or
    `{"state": "failed" | "cancelled", "error": NAME, "message": TEXT}`."""
    creates: int = 0
    """createTask requests recorded as sent for this job, over all runs."""

    @property
    def finished(self) -> bool:
        """True once the job ended."""
        return self.stage is Stage.FINISHED


class Journal(Protocol):
    """Where a driver records jobs as they go. Every method is atomic and takes effect before
    it returns (a process killed after it returns has it written; `created` also survives a
    power loss). Implementations: `MemoryJournal`, `SqliteJournal`."""

    async def add(self, job_id: str, task: Mapping[str, JsonValue]) -> JournalEntry:
        """The entry of `job_id`, made `NEW` with `task` if there is none; an entry of a
        different task is replaced if nothing of it was sent or it finished, else
        `JournalConflictError`."""
        ...

    async def get(self, job_id: str) -> JournalEntry | None:
        """The entry of `job_id`, if any."""
        ...

    async def sending(self, job_id: str) -> None:
        """A createTask for `job_id` is about to be sent (`SENDING`)."""
        ...

    async def created(self, job_id: str, task_id: TaskId) -> None:
        """The createTask came back with `task_id` (`CREATED`); durable when it returns."""
        ...

    async def not_created(self, job_id: str) -> None:
        """The createTask provably created nothing (`NEW` again)."""
        ...

    async def finished(self, job_id: str, outcome: Mapping[str, JsonValue]) -> None:
        """The job ended with `outcome` (`FINISHED`)."""
        ...

    async def unfinished(self) -> list[JournalEntry]:
        """Every entry not `FINISHED`, in the order they were first added."""
        ...

    async def aclose(self) -> None:
        """Release the journal's resources (the entries stay where they are)."""
        ...


@attrs.frozen
class Resume:
    """What a restart does with one journalled job."""

    entry: JournalEntry
    task_id: TaskId | None
    """Poll this task (it exists) instead of creating one; None: create."""
    fail: bool = False
    """Fail the job at once without sending (an ambiguous create under `AmbiguousCreate.FAIL`)."""
    solution: Mapping[str, JsonValue] | None = None
    """The solution an earlier run got: return it, sending nothing."""


AMBIGUOUS_CREATE = "AMBIGUOUS_CREATE"
"""The error name of a job failed under `AmbiguousCreate.FAIL`."""


def resume_plan(entry: JournalEntry, ambiguous: AmbiguousCreate) -> Resume:
    """How to run `entry` again: return the solution an earlier run got, sending nothing;
    poll its task if it has one that may still be running; if its createTask is ambiguous
    (or it failed for that before), fail or create again as `ambiguous` decides (so under
    `FAIL` a rerun never pays for it again); else create."""
    outcome = entry.outcome
    if outcome is not None and outcome.get("state") == "ready":
        solution = outcome.get("solution")
        if isinstance(solution, dict):
            return Resume(entry, entry.task_id, solution=solution)
    if entry.stage is Stage.CREATED and entry.task_id is not None:
        return Resume(entry, entry.task_id)
    if ambiguous is AmbiguousCreate.FAIL and (
        entry.stage is Stage.SENDING
        or (entry.outcome is not None and entry.outcome.get("error") == AMBIGUOUS_CREATE)
    ):
        return Resume(entry, None, fail=True)
    return Resume(entry, None)


def same_task(a: Mapping[str, JsonValue], b: Mapping[str, JsonValue]) -> bool:
    """Whether two tasks are the same JSON object (key order aside)."""
    return canonical_json(a) == canonical_json(b)


def canonical_json(value: object) -> str:
    """`value` as compact JSON with sorted keys: one text per JSON value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def replaced(
    entry: JournalEntry | None, job_id: str, task: Mapping[str, JsonValue]
) -> JournalEntry:
    """What `add(job_id, task)` leaves, given the entry there now (None: none): the entry
    itself if it is of the same task, a fresh `NEW` entry if there is none or nothing of the
    old task was sent or it finished; raise `JournalConflictError` otherwise."""
    if entry is None:
        return JournalEntry(job_id, task)
    if same_task(entry.task, task):
        return entry
    if entry.stage in (Stage.NEW, Stage.FINISHED):
        return JournalEntry(job_id, task, creates=entry.creates)
    raise JournalConflictError(
        f"job {job_id!r} is journalled with a different task, whose createTask was already "
        f"sent ({entry.stage.value}); give the new task another id"
    )


class MemoryJournal:
    """A `Journal` in this process's memory (gone with it): for tests, and for runs that
    want the driver's bookkeeping without a file."""

    def __init__(self) -> None:
        self._entries: dict[str, JournalEntry] = {}

    async def add(self, job_id: str, task: Mapping[str, JsonValue]) -> JournalEntry:
        entry = replaced(self._entries.get(job_id), job_id, task)
        self._entries[job_id] = entry
        return entry

    async def get(self, job_id: str) -> JournalEntry | None:
        return self._entries.get(job_id)

    async def sending(self, job_id: str) -> None:
        entry = self._entry(job_id)
        self._entries[job_id] = attrs.evolve(
            entry, stage=Stage.SENDING, task_id=None, creates=entry.creates + 1
        )

    async def created(self, job_id: str, task_id: TaskId) -> None:
        self._entries[job_id] = attrs.evolve(
            self._entry(job_id), stage=Stage.CREATED, task_id=task_id
        )

    async def not_created(self, job_id: str) -> None:
        self._entries[job_id] = attrs.evolve(self._entry(job_id), stage=Stage.NEW, task_id=None)

    async def finished(self, job_id: str, outcome: Mapping[str, JsonValue]) -> None:
        self._entries[job_id] = attrs.evolve(
            self._entry(job_id), stage=Stage.FINISHED, outcome=dict(outcome)
        )

    async def unfinished(self) -> list[JournalEntry]:
        return [entry for entry in self._entries.values() if not entry.finished]

    async def aclose(self) -> None:
        pass

    def _entry(self, job_id: str) -> JournalEntry:
        try:
            return self._entries[job_id]
        except KeyError:
            raise JournalError(f"job {job_id!r} is not in the journal (add it first)") from None

    def __repr__(self) -> str:
        return f"<MemoryJournal {len(self._entries)} entries>"


def outcome_of(job: Job) -> dict[str, JsonValue]:
    """The outcome a journal records for finished `job`."""
    if job.solution is not None:
        return {"state": "ready", "solution": dict(job.solution)}
    error = job.error
    return {
        "state": job.state,
        "error": error.name if error is not None else "",
        "message": str(error) if error is not None else "",
    }


class JobRecorder:
    """Writes one job's progress to a journal, called by the driver around each request:
    `before_send` before a request leaves, `after_reply` once the job was fed its reply
    (before the job's next action: so a `taskId` is journalled before any further request)
    and `at_end` when the driver is done with the job."""

    __slots__ = ("_task_id", "job_id", "journal")

    def __init__(self, journal: Journal, job_id: str, task_id: TaskId | None = None) -> None:
        self.journal = journal
        self.job_id = job_id
        self._task_id = task_id

    async def before_send(self, request: ApiRequest) -> None:
        """Record a createTask about to leave (`SENDING`)."""
        if request.endpoint is Endpoint.CREATE_TASK:
            await self.journal.sending(self.job_id)

    async def after_reply(self, job: Job, endpoint: Endpoint, outcome: Outcome | None) -> None:
        """Record what a createTask's reply made of the job: its new `taskId` (`CREATED`),
        or, if it provably created nothing, `NEW` again; a reply that may have billed a
        task leaves it `SENDING` (ambiguous)."""
        if endpoint is not Endpoint.CREATE_TASK:
            return
        if job.task_id is not None and job.task_id != self._task_id:
            self._task_id = job.task_id
            await self.journal.created(self.job_id, job.task_id)
        elif isinstance(outcome, Failure) and not outcome.may_have_billed:
            await self.journal.not_created(self.job_id)

    async def at_end(self, job: Job) -> None:
        """Record a finished job's outcome, unless it was cancelled: a cancelled job is
        not over for the journal (a restart, or the worker that took its work over, resumes
        it: polls its task, decides on a createTask in doubt, or creates one), and a
        worker that was told to stop must not overwrite what the job's new owner records."""
        if job.finished and job.state != TaskState.CANCELLED.value:
            await self.journal.finished(self.job_id, outcome_of(job))
