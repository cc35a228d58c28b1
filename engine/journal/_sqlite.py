"""`SqliteJournal`: the job journal in one SQLite file (stdlib `sqlite3`, WAL mode).

Durability. Every change is one committed transaction before the method returns, so a
process killed at any moment (SIGKILL included) loses nothing it was told was written. A
`taskId` (`created`) is also fsynced (`synchronous=FULL` for that commit), so it survives a
power loss; the other changes are committed with `synchronous=NORMAL` (no fsync of their
own: they reach the disk with the next fsync or checkpoint), which a power loss may undo:
then a createTask may be judged not sent although it was (the one case in which a job may
be created twice). The calls run in one worker thread, so a slow disk never blocks the
event loop, and the changes that arrive while a commit is under way go together in the
next (group commit: one transaction, at most one fsync), so many jobs do not queue behind
one fsync each (see README, "Job journal", for measured costs).

Safety of the file. A new journal is built under a temporary name and renamed into place,
so a file at the path is always a whole journal. An existing file is used only if it is a
captchaflow journal (its SQLite `application_id`) of a format this version reads (its
`user_version`): anything else (empty, truncated, damaged, another program's database, a
newer format) raises `JournalCorruptError` or `JournalFormatError` and is left untouched.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from captchaflow.transports import JsonValue, TaskId

from ._base import (
    JournalCorruptError,
    JournalEntry,
    JournalError,
    JournalFormatError,
    Stage,
    canonical_json,
    replaced,
)

__all__ = ["APPLICATION_ID", "FORMAT_VERSION", "SqliteJournal"]

APPLICATION_ID = 0x43464A31
"""The SQLite `application_id` of a captchaflow journal ("CFJ1")."""
FORMAT_VERSION = 1
"""The journal format this version writes and reads (SQLite `user_version`)."""

_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    stage TEXT NOT NULL,
    task_id TEXT,
    outcome TEXT,
    creates INTEGER NOT NULL DEFAULT 0
);
"""

_T = TypeVar("_T")


class SqliteJournal:
    """A `Journal` in the SQLite file at `path`, created if missing (its directory must
    exist). Open it with `await SqliteJournal.open(path)` or `SqliteJournal(path)` (which
    opens at once, blocking); close with `aclose()` or `close()`. One process at a time
    should write a journal."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)
        self._queue: list[_Change] = []
        self._committing = False
        self._db: sqlite3.Connection | None = _connect(self.path)

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> SqliteJournal:
        """The journal at `path`, opened in a worker thread."""
        return await anyio.to_thread.run_sync(cls, path)

    # -- the Journal protocol ---------------------------------------------------------------

    async def add(self, job_id: str, task: Mapping[str, JsonValue]) -> JournalEntry:
        return await self._run(lambda db: self._add(db, job_id, task))

    async def get(self, job_id: str) -> JournalEntry | None:
        return await self._run(lambda db: _get(db, job_id))

    async def sending(self, job_id: str) -> None:
        await self._update(
            job_id,
            "UPDATE jobs SET stage = ?, task_id = NULL, creates = creates + 1 WHERE job_id = ?",
            (Stage.SENDING.value, job_id),
        )

    async def created(self, job_id: str, task_id: TaskId) -> None:
        await self._update(
            job_id,
            "UPDATE jobs SET stage = ?, task_id = ? WHERE job_id = ?",
            (Stage.CREATED.value, json.dumps(task_id), job_id),
            durable=True,
        )

    async def not_created(self, job_id: str) -> None:
        await self._update(
            job_id,
            "UPDATE jobs SET stage = ?, task_id = NULL WHERE job_id = ?",
            (Stage.NEW.value, job_id),
        )

    async def finished(self, job_id: str, outcome: Mapping[str, JsonValue]) -> None:
        await self._update(
            job_id,
            "UPDATE jobs SET stage = ?, outcome = ? WHERE job_id = ?",
            (Stage.FINISHED.value, canonical_json(outcome), job_id),
        )

    async def unfinished(self) -> list[JournalEntry]:
        return await self._run(_unfinished)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close, limiter=self._limiter)

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __repr__(self) -> str:
        return f"<SqliteJournal {str(self.path)!r}>"

    # -- internals --------------------------------------------------------------------------

    async def _run(self, call: Callable[[sqlite3.Connection], _T]) -> _T:
        def locked() -> _T:
            with self._lock:
                if self._db is None:
                    raise JournalError(f"journal {str(self.path)!r} is closed")
                try:
                    return call(self._db)
                except sqlite3.DatabaseError as exc:
                    raise JournalCorruptError(
                        f"journal {str(self.path)!r} cannot be written or read: {exc}"
                    ) from exc

        return await anyio.to_thread.run_sync(locked, limiter=self._limiter)

    async def _update(
        self, job_id: str, sql: str, parameters: tuple[object, ...], *, durable: bool = False
    ) -> None:
        """Apply one change, committed with the others that queued meanwhile (group commit:
        one transaction and at most one fsync for all of them)."""
        change = _Change(job_id, sql, parameters, durable)
        self._queue.append(change)
        if self._committing:
            await change.done.wait()
        else:
            self._committing = True
            try:
                # Shielded: the changes of other jobs ride on this commit.
                with anyio.CancelScope(shield=True):
                    while self._queue:
                        batch, self._queue = self._queue, []
                        try:
                            await self._run(functools.partial(_commit, batch=batch))
                        except JournalError as exc:
                            for queued in batch:
                                queued.error = exc
                        for queued in batch:
                            queued.done.set()
            finally:
                self._committing = False
        if change.error is not None:
            raise change.error

    @staticmethod
    def _add(db: sqlite3.Connection, job_id: str, task: Mapping[str, JsonValue]) -> JournalEntry:
        with db:
            current = _get(db, job_id)
            entry = replaced(current, job_id, task)
            if entry is current:
                return entry
            db.execute(
                "INSERT INTO jobs (job_id, task, stage, creates) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET task = excluded.task, "
                "stage = excluded.stage, task_id = NULL, outcome = NULL",
                (job_id, canonical_json(task), entry.stage.value, entry.creates),
            )
        return entry


class _Change:
    """One queued change of a job's row, and how it went."""

    __slots__ = ("done", "durable", "error", "job_id", "parameters", "sql")

    def __init__(self, job_id: str, sql: str, parameters: tuple[object, ...], durable: bool):
        self.job_id, self.sql, self.parameters, self.durable = job_id, sql, parameters, durable
        self.done = anyio.Event()
        self.error: JournalError | None = None


def _commit(db: sqlite3.Connection, *, batch: list[_Change]) -> None:
    """Apply `batch` in one transaction, fsynced if any change must be durable; a change of
    a job that is not in the journal gets its error and changes nothing."""
    durable = any(change.durable for change in batch)
    if durable:
        db.execute("PRAGMA synchronous = FULL")
    try:
        with db:
            for change in batch:
                if db.execute(change.sql, change.parameters).rowcount != 1:
                    change.error = JournalError(
                        f"job {change.job_id!r} is not in the journal (add it first)"
                    )
    finally:
        if durable:
            db.execute("PRAGMA synchronous = NORMAL")


def _connect(path: Path) -> sqlite3.Connection:
    """An open connection to the journal at `path`, made (atomically) if there is none."""
    if not path.exists():
        _create(path)
    elif path.is_dir():
        raise JournalCorruptError(f"journal {str(path)!r} is a directory, not a journal")
    elif path.stat().st_size == 0:
        raise JournalCorruptError(
            f"journal {str(path)!r} is empty, not a journal (truncated?); move it away to "
            "start afresh"
        )
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open journal {str(path)!r}: {exc}") from exc
    try:
        _check(db, path)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.isolation_level = "DEFERRED"  # `with db:` opens and commits a transaction
    except BaseException:
        db.close()
        raise
    return db


def _create(path: Path) -> None:
    """Build an empty journal beside `path` and rename it into place."""
    spare = path.with_name(f".{path.name}.{os.getpid()}.new")
    with contextlib.suppress(FileNotFoundError):
        spare.unlink()
    try:
        db = sqlite3.connect(spare, isolation_level=None)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot create journal {str(path)!r}: {exc}") from exc
    try:
        db.executescript(
            f"PRAGMA application_id = {APPLICATION_ID};"
            f"PRAGMA user_version = {FORMAT_VERSION};" + _SCHEMA
        )
        db.execute("PRAGMA synchronous = FULL")
        db.commit()
    finally:
        db.close()
    try:
        with open(spare, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(spare, path)
    except OSError as exc:
        raise JournalError(f"cannot create journal {str(path)!r}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            spare.unlink()


def _check(db: sqlite3.Connection, path: Path) -> None:
    """Raise unless `db` is a captchaflow journal of a format this version reads."""
    try:
        (application_id,) = db.execute("PRAGMA application_id").fetchone()
        (version,) = db.execute("PRAGMA user_version").fetchone()
        db.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as exc:
        raise JournalCorruptError(
            f"journal {str(path)!r} is not a captchaflow journal or is damaged ({exc}); it was "
            "left as it is"
        ) from exc
    if application_id != APPLICATION_ID:
        raise JournalCorruptError(
            f"{str(path)!r} is an SQLite database, but not a captchaflow journal; it was left "
            "as it is"
        )
    if version > FORMAT_VERSION:
        raise JournalFormatError(
            f"journal {str(path)!r} has format {version}, written by a newer captchaflow "
            f"(this one reads format {FORMAT_VERSION}); upgrade captchaflow to resume it"
        )
    if version < 1:
        raise JournalCorruptError(f"journal {str(path)!r} has no format version; left as it is")


def _row_entry(row: tuple[str, str, str, str | None, str | None, int]) -> JournalEntry:
    job_id, task, stage, task_id, outcome, creates = row
    return JournalEntry(
        job_id,
        json.loads(task),
        Stage(stage),
        None if task_id is None else json.loads(task_id),
        None if outcome is None else json.loads(outcome),
        creates,
    )


def _get(db: sqlite3.Connection, job_id: str) -> JournalEntry | None:
    row = db.execute(
        "SELECT job_id, task, stage, task_id, outcome, creates FROM jobs WHERE job_id = ?",
        (job_id,),
    ).fetchone()
    return None if row is None else _row_entry(row)


def _unfinished(db: sqlite3.Connection) -> list[JournalEntry]:
    rows = db.execute(
        "SELECT job_id, task, stage, task_id, outcome, creates FROM jobs "
        "WHERE stage != ? ORDER BY seq",
        (Stage.FINISHED.value,),
    ).fetchall()
    return [_row_entry(row) for row in rows]
