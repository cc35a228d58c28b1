"""The job journal: a record of each job that lets a restarted process resume its jobs
without paying for a task twice.

`Journal` is the interface the driver writes to (through `JobRecorder`); `MemoryJournal`
keeps it in memory, `SqliteJournal` in one SQLite file (imported on first use). On restart,
`resume_plan` says what each unfinished job does: poll the task it created, create one, or,
for a createTask whose reply was lost with the process, what `AmbiguousCreate` says.
`Engine(journal=...).run_recorded(job_id, task)` does all of it for one job.
"""

import typing

from captchaflow import _lazy

from ._base import (
    AMBIGUOUS_CREATE,
    AmbiguousCreate,
    JobRecorder,
    Journal,
    JournalConflictError,
    JournalCorruptError,
    JournalEntry,
    JournalError,
    JournalFormatError,
    MemoryJournal,
    Resume,
    Stage,
    outcome_of,
    resume_plan,
)

if typing.TYPE_CHECKING:
    from ._sqlite import SqliteJournal

__getattr__, __dir__ = _lazy.lazy_exports(__name__, globals(), {"SqliteJournal": "._sqlite"})

__all__ = [
    "AMBIGUOUS_CREATE",
    "AmbiguousCreate",
    "JobRecorder",
    "Journal",
    "JournalConflictError",
    "JournalCorruptError",
    "JournalEntry",
    "JournalError",
    "JournalFormatError",
    "MemoryJournal",
    "Resume",
    "SqliteJournal",
    "Stage",
    "outcome_of",
    "resume_plan",
]
