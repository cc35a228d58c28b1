"""Running `captchaflow batch` (its options are in `_cmd_batch`): the event loop that
solves the tasks of a JSON Lines file on one account, many at once, appending one result
line per task to RESULTS as each finishes. The parsing, the records and the counts are in
`_batch_io` and `_batch_tally`, the files in `_batch_files`, the progress display in
`_progress`. Imported only when the command runs (anyio, httpx, sqlite3).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator

import anyio

from captchaflow.engine._engine import Engine
from captchaflow.engine._job import Job
from captchaflow.engine.journal import AmbiguousCreate, Journal, JournalError
from captchaflow.engine.journal._sqlite import SqliteJournal
from captchaflow.transports import ApiKey

from ._account import _account
from ._args import UsageError
from ._batch_files import (
    Item,
    Reader,
    ResultsFile,
    cannot_write,
    count_total,
    open_tasks,
    refuse_same_file,
    resumed_from,
)
from ._batch_io import BadLine, Entry, Intake, Result, Resumed, result_of
from ._batch_tally import Tally
from ._cmd_batch import journal_path
from ._cmd_solve import _warn_unresolved_host
from ._inputs import _os_reason
from ._output import _fail, printable
from ._progress import Display, keep_showing, open_display


class _Batch:
    """One run of the command: the tasks of TASKS through one engine, results to RESULTS."""

    def __init__(
        self,
        args: argparse.Namespace,
        account: tuple[ApiKey, str],
        results: ResultsFile,
        resumed: Resumed,
        total: int | None,
        journal: Journal | None,
    ) -> None:
        """A batch as `args` say, on `account` (key, base URL), appending to `results`,
        skipping the tasks `resumed` says are solved, recording each job in `journal`;
        `total`: the lines of TASKS, if known."""
        self._journal = journal
        self.tally = Tally(started=time.monotonic(), total=total)
        self.write_error: OSError | None = None
        self.journal_error: JournalError | None = None
        self._args = args
        self._key, self._base_url = account
        self._results = results
        self._solved = resumed.solved
        self._intake = Intake()
        self._scope: anyio.CancelScope | None = None

    def run(self, tasks_fd: int) -> None:
        """Run every task of `tasks_fd` (taken over) that is not solved yet, with the
        progress display on; `KeyboardInterrupt` once the tasks in flight are cancelled
        and recorded, if interrupted."""
        display = open_display(self.tally)
        try:
            anyio.run(self._main, tasks_fd, display)
        finally:
            display.close()

    def print_summary(self) -> None:
        """Print the summary table on stdout."""
        for line in self.tally.summary(time.monotonic()).splitlines():
            print(printable(self._key.redact(line)))

    async def _main(self, tasks_fd: int, display: Display) -> None:
        reader = Reader(tasks_fd)
        reader.start()
        engine = Engine(
            self._key,
            base_url=self._base_url,
            timeout=self._args.timeout,
            on_move=_warn_unresolved_host(self._key),
            journal=self._journal,
            ambiguous=AmbiguousCreate(self._args.ambiguous),
        )
        async with engine, anyio.create_task_group() as group:
            self._scope = group.cancel_scope
            group.start_soon(keep_showing, display)
            await self._dispatch(reader, engine)
            group.cancel_scope.cancel()

    async def _dispatch(self, reader: Reader, engine: Engine) -> None:
        """Start a job for every entry, at most `--concurrency` at a time; wait for them."""
        slots = anyio.Semaphore(self._args.concurrency)
        try:
            async with anyio.create_task_group() as jobs:
                while (item := await reader.next()) is not None:
                    entry = self._entry(item)
                    if entry is None:
                        continue
                    await slots.acquire()
                    self.tally.running += 1
                    jobs.start_soon(self._solve, engine, entry, slots)
                self.tally.total = self.tally.done + self.tally.running  # all read: exact
        finally:
            reader.close()

    def _entry(self, item: Item) -> Entry | None:
        """The entry to run of `item`, or None (a blank or bad line, a task already solved,
        the end of what could be read), said on stderr where it is not what was asked."""
        if isinstance(item, OSError):
            self.tally.unread_input = True
            _fail(f"cannot read TASKS: {_os_reason(item)}; the rest of it was not read", 0)
            return None
        number, raw = item
        try:
            entry = self._intake.take(number, raw)
        except BadLine as exc:
            self.tally.bad_lines += 1
            _fail(f"batch: line {number}: {exc}; skipped", 0)
            return None
        if entry is not None and entry.key in self._solved:
            self.tally.already_solved += 1
            return None
        return entry

    async def _solve(self, engine: Engine, entry: Entry, slots: anyio.Semaphore) -> None:
        """Run `entry`'s task to its end (cancelled if the batch is), journalled, and record
        it in RESULTS."""
        started: list[Job] = []
        try:
            await engine.run_recorded(entry.key, entry.task, started=started.append)
        except JournalError as exc:
            self._journal_failed(exc)
        finally:  # synchronous from here: a cancellation cannot cut the record short
            self.tally.running -= 1
            slots.release()
            if started:
                job = started[0]
                job.cancel(engine.clock.now(), "the batch was interrupted")
                self._record(entry, job)

    def _journal_failed(self, error: JournalError) -> None:
        """Stop the batch: a journal that cannot be written could make a rerun pay twice."""
        if self.journal_error is None:
            self.journal_error = error
        if self._scope is not None:
            self._scope.cancel()

    def _record(self, entry: Entry, job: Job) -> None:
        """Write finished `job`'s record (see `_write`)."""
        self._write(result_of(entry.id, job), job.requests_sent)

    def _write(self, result: Result, requests: int) -> None:
        """Append `result` to RESULTS and count it (it took `requests`); if it cannot be
        written, stop the batch (what is solved then would be paid for and lost)."""
        if self.write_error is not None:
            return
        try:
            self._results.write(result.line)
        except OSError as exc:
            self.write_error = exc
            if self._scope is not None:
                self._scope.cancel()
            return
        self.tally.add(result, requests)


def run_batch(args: argparse.Namespace) -> int:
    """Run the batch `args` describe; print the summary; return the exit status."""
    account = _account(args)
    tasks_fd = open_tasks(args.tasks)
    try:
        refuse_same_file(args.output, tasks_fd)
        total = count_total(tasks_fd)
        resumed, torn = resumed_from(args.output)
        results = ResultsFile(args.output, torn=torn)
    except BaseException:
        os.close(tasks_fd)
        raise
    if args.redis:
        try:
            from captchaflow.engine.distributed import RedisUnavailableError
        except ImportError as exc:
            raise UsageError(
                f"--redis needs the redis extra (pip install 'captchaflow[redis]'): {exc}"
            ) from None
        with results:
            batch = _redis_batch(args, account, results, resumed, total)
            try:
                batch.run(tasks_fd)
            except (RedisUnavailableError, ValueError) as exc:
                raise UsageError(f"--redis: {exc}") from None
            finally:
                batch.print_summary()
        if batch.write_error is not None:
            raise cannot_write(batch.write_error)
        return batch.tally.exit_status()
    with results, _open_journal(journal_path(args), tasks_fd) as journal:
        batch = _Batch(args, account, results, resumed, total, journal)
        try:
            batch.run(tasks_fd)
        finally:
            batch.print_summary()
    if batch.write_error is not None:
        raise cannot_write(batch.write_error)
    if batch.journal_error is not None:
        raise UsageError(f"--journal: {batch.journal_error}; the batch was stopped")
    return batch.tally.exit_status()


def _redis_batch(
    args: argparse.Namespace,
    account: tuple[ApiKey, str],
    results: ResultsFile,
    resumed: Resumed,
    total: int | None,
) -> _Batch:
    """The batch that queues its tasks on `--redis` (`UsageError` without the extra)."""
    try:
        from ._batch_redis import RedisBatch
    except ImportError as exc:
        raise UsageError(
            f"--redis needs the redis extra (pip install 'captchaflow[redis]'): {exc}"
        ) from None
    return RedisBatch(args, account, results, resumed, total, journal=None)


@contextlib.contextmanager
def _open_journal(path: str, tasks_fd: int) -> Iterator[SqliteJournal]:
    """The batch's journal at `path`, closed after; `UsageError` (TASKS closed) if it cannot
    be used."""
    try:
        journal = SqliteJournal(path)
    except JournalError as exc:
        os.close(tasks_fd)
        raise UsageError(f"--journal: {exc}") from None
    try:
        yield journal
    finally:
        journal.close()
