"""The files of `captchaflow batch`: TASKS (opened, counted, read by a thread of its own)
and RESULTS (read back to resume, appended to). Errors name TASKS or --output, never the
path given: it may be a key typed in the wrong place."""

from __future__ import annotations

import functools
import math
import os
import stat
import sys
import threading
from types import TracebackType
from typing import BinaryIO, TypeAlias

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.lowlevel import EventLoopToken

from captchaflow.engine._words import counted

from ._args import UsageError
from ._batch_io import Line, Resumed, capped_lines, count_lines, read_resumed
from ._inputs import _os_reason
from ._output import _fail

Item: TypeAlias = Line | OSError
"""What the reader hands the event loop: a line of TASKS, or the error that ended reading."""


def open_tasks(path: str) -> int:
    """A descriptor to read TASKS from (a copy of stdin's for '-'). Errors name TASKS,
    never the path: it may be a key typed in the wrong place."""
    try:
        fd = os.dup(sys.stdin.fileno()) if path == "-" else os.open(path, os.O_RDONLY)
    except (AttributeError, ValueError):  # no stdin at all, or a closed one
        raise UsageError("TASKS -: there is no stdin") from None
    except OSError as exc:
        raise UsageError(f"cannot read TASKS: {_os_reason(exc)}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError("cannot read TASKS: it is a directory")
    return fd


def count_total(fd: int) -> int | None:
    """The lines of TASKS that are not blank, if it is a regular file (read through once,
    then rewound); None for a pipe or a terminal, whose end is not known in advance."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return None
    start = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        total = count_lines(functools.partial(os.read, fd))
    except OSError as exc:
        raise UsageError(f"cannot read TASKS: {_os_reason(exc)}") from None
    os.lseek(fd, start, os.SEEK_SET)
    return total


def refuse_same_file(path: str, tasks_fd: int) -> None:
    """`UsageError` if RESULTS `path` is the file TASKS is read from: the batch would read
    its own results as tasks, forever."""
    try:
        same = os.path.samestat(os.stat(path), os.fstat(tasks_fd))
    except OSError:  # no RESULTS yet (or none that can be looked at: said when opened)
        return
    if same:
        raise UsageError("TASKS and --output are the same file")


def resumed_from(path: str) -> tuple[Resumed, bool]:
    """What RESULTS says (nothing if it is missing or not a regular file), and whether it
    ends mid-line. Lines that cannot be read are ignored, with one warning."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return Resumed(), False
        with open(path, "rb") as handle:
            resumed = read_resumed(handle.read)
            torn = _ends_mid_line(handle)
    except FileNotFoundError:
        return Resumed(), False
    except OSError as exc:
        raise UsageError(f"cannot read --output: {_os_reason(exc)}") from None
    if resumed.unreadable:
        lines = counted(resumed.unreadable, "line")
        _fail(f"warning: {lines} of --output could not be read (cut short?): ignored", 0)
    return resumed, torn


def _ends_mid_line(handle: BinaryIO) -> bool:
    """True if the file of `handle` is not empty and its last byte is not a newline."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return False
    handle.seek(size - 1)
    return handle.read(1) != b"\n"


def cannot_write(error: OSError) -> UsageError:
    """The error that ends the command when RESULTS cannot be written."""
    return UsageError(f"cannot write --output: {_os_reason(error)}")


class ResultsFile:
    """RESULTS, open for appending. Each record goes in with one write (no buffer), so it
    is in the file as soon as it is written, and a line is never cut short but by a crash."""

    def __init__(self, path: str, *, torn: bool) -> None:
        """Open (create) `path` to append to it (`UsageError` if it cannot be); if it ends
        mid-line (`torn`), end that line first."""
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise cannot_write(exc) from None
        try:
            if torn:
                self.write(b"\n")
        except OSError as exc:
            self.close()
            raise cannot_write(exc) from None

    def write(self, data: bytes) -> None:
        """Append `data` (raises OSError)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


READ_AHEAD = 8
"""Lines of TASKS the reader may hold ready ahead of the batch."""


class Reader:
    """TASKS read in a daemon thread of its own, on plain `os.read`, at most `READ_AHEAD`
    lines ahead of the batch: an endless stdin never holds the command up when it is
    interrupted. Lines reach the event loop by plain calls (no task of the loop waits on
    the thread), so nothing is left pending when the loop ends early."""

    def __init__(self, fd: int) -> None:
        """Take over `fd` (the thread closes it at the end)."""
        self._fd = fd
        self._room = threading.Semaphore(READ_AHEAD)
        self._send, self._receive = anyio.create_memory_object_stream[Item](math.inf)

    def start(self) -> None:
        """Start reading (from inside the event loop the lines are for)."""
        token = anyio.lowlevel.current_token()
        name = "captchaflow batch reader"
        threading.Thread(target=self._read_all, args=(token,), name=name, daemon=True).start()

    async def next(self) -> Item | None:
        """The next line of TASKS (or the error that ended reading); None at the end."""
        try:
            item = await self._receive.receive()
        except anyio.EndOfStream:
            return None
        self._room.release()
        return item

    def close(self) -> None:
        """Take no more lines: the thread stops at its next one."""
        self._receive.close()
        self._room.release()  # a thread waiting for room finds the stream closed

    def _read_all(self, token: EventLoopToken) -> None:
        def hand(item: Item) -> None:
            self._room.acquire()
            anyio.from_thread.run_sync(self._send.send_nowait, item, token=token)

        try:
            try:
                for line in capped_lines(functools.partial(os.read, self._fd)):
                    hand(line)
            except OSError as exc:
                hand(exc)
            anyio.from_thread.run_sync(self._send.close, token=token)
        except Exception:  # the batch is over (interrupted): no one to hand lines to
            return
        finally:
            os.close(self._fd)
