"""The pure parts of `captchaflow batch`: the lines of TASKS and the entries they hold, the
result record of a finished job, and reading a results file back to resume.

No I/O here: a reader takes a `read(n) -> bytes` function (`os.read` on a descriptor, a
file's `read`, a test's `io.BytesIO(...).read`), so files, pipes and tests serve alike.
Nothing said about a bad line repeats what the line holds: it may hold a secret.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TypeAlias

import attrs

from captchaflow.engine import _errors
from captchaflow.engine._errors import (
    CaptchaflowError,
    InvalidTaskError,
    JobCancelledError,
)
from captchaflow.engine._job import Job, validate_task
from captchaflow.transports import JsonValue

from ._inputs import MAX_TASK_BYTES, _size
from ._output import strict_json, unencodable_solution

MAX_LINE_BYTES = MAX_TASK_BYTES
"""The longest line of TASKS (or of RESULTS) read; a longer one is a bad line, read past
without being held in memory."""

CHUNK_BYTES = 1 << 16
"""How much one `read` asks for."""

BatchId: TypeAlias = str | int
"""A task's id in TASKS and RESULTS, kept as given."""

Read: TypeAlias = Callable[[int], bytes]
"""Reads up to n bytes; an empty result is the end of the stream."""

Line: TypeAlias = tuple[int, bytes | None]
"""A line's 1-based number and its bytes (without the newline), or None for one too long."""


def capped_lines(read: Read, limit: int = MAX_LINE_BYTES) -> Iterator[Line]:
    """Every line of the stream `read` gives, numbered from 1, without its newline; a line
    longer than `limit` bytes comes as None (its bytes are dropped as they arrive, so an
    endless line costs `limit` bytes of memory, not all of it). A last line without a
    newline counts."""
    buffer = bytearray()
    number, searched, overlong = 0, 0, False
    while chunk := read(CHUNK_BYTES):
        buffer += chunk
        while (end := buffer.find(b"\n", searched)) >= 0:
            number += 1
            yield number, None if overlong or end > limit else bytes(buffer[:end])
            del buffer[: end + 1]
            searched, overlong = 0, False
        if len(buffer) > limit:
            overlong = True
            buffer.clear()
        searched = len(buffer)
    if buffer or overlong:
        yield number + 1, None if overlong else bytes(buffer)


def is_blank(raw: bytes | None) -> bool:
    """True for a line of nothing but whitespace (ignored wherever lines are read)."""
    return raw is not None and not raw.strip()


def count_lines(read: Read) -> int:
    """How many lines that are not blank the stream `read` gives (the batch's total)."""
    return sum(1 for _number, raw in capped_lines(read) if not is_blank(raw))


class BadLine(ValueError):
    """A line of TASKS that is skipped; the message says why, never what the line holds."""


@attrs.frozen
class Entry:
    """A good line of TASKS: its number, its task's id and the task."""

    number: int
    id: BatchId
    task: Mapping[str, JsonValue]

    @property
    def key(self) -> str:
        """The id as ids are compared (`id_key`)."""
        return id_key(self.id)


def id_key(value: BatchId) -> str:
    """How ids are compared, in TASKS and in RESULTS: by their JSON text, so 7 and "7" are
    two ids."""
    return json.dumps(value)


def _checked_id(value: object) -> BatchId:
    """`value` if it can be an id (a non-empty string or an integer), else `BadLine`."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise BadLine('"id" must be a non-empty string or an integer')
    return value


def _task(value: object) -> Mapping[str, JsonValue]:
    """`value` if it is a valid task (`validate_task`), else `BadLine` saying why."""
    try:
        return validate_task(value)
    except InvalidTaskError as exc:
        raise BadLine(f"invalid task: {exc.message}") from None


def _json(raw: bytes) -> object:
    """The JSON value of a line, or `BadLine` saying what is wrong with it (where, not what)."""
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise BadLine("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadLine(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError):  # a number too long to read, nesting too deep
        raise BadLine("not valid JSON that can be read") from None


def parse_line(number: int, raw: bytes) -> Entry:
    """The entry line `number` holds: `{"id": ID, "task": {...}}` (without an id, or as a
    bare task object, the id is `line-N`). Raise `BadLine` if it holds none."""
    data = _json(raw)
    if not isinstance(data, dict):
        raise BadLine("not a JSON object")
    if "task" not in data:
        return Entry(number, f"line-{number}", _task(data))
    if not set(data) <= {"id", "task"}:
        raise BadLine('an object with a "task" may have only "id" besides')
    ident = _checked_id(data["id"]) if "id" in data else f"line-{number}"
    return Entry(number, ident, _task(data["task"]))


class Intake:
    """Turns the lines of TASKS into entries, in order, each id once."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def take(self, number: int, raw: bytes | None) -> Entry | None:
        """The entry of line `number` (`raw`: its bytes, None if too long); None for a
        blank line; `BadLine` for one that holds no task or repeats an earlier id."""
        if raw is None:
            raise BadLine(f"longer than {_size(MAX_LINE_BYTES)}")
        if is_blank(raw):
            return None
        entry = parse_line(number, raw)
        if entry.key in self._seen:
            raise BadLine("its id is that of an earlier line")
        self._seen.add(entry.key)
        return entry


@attrs.frozen
class Resumed:
    """What a results file says: the ids whose last record is `ready` (as `id_key`s), and
    how many of its lines could not be read (a write cut short by a crash)."""

    solved: frozenset[str] = frozenset()
    unreadable: int = 0


def _record_of(raw: bytes | None) -> tuple[str, bool] | None:
    """A record's id key and whether it says `ready`, or None if the line is none."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(data, dict) or not isinstance(data.get("state"), str):
        return None
    try:
        ident = _checked_id(data.get("id"))
    except BadLine:
        return None
    return id_key(ident), data["state"] == "ready"


def read_resumed(read: Read) -> Resumed:
    """Read a results file through `read`: every id whose last record is `ready` is solved."""
    last: dict[str, bool] = {}
    unreadable = 0
    for _number, raw in capped_lines(read):
        if is_blank(raw):
            continue
        record = _record_of(raw)
        if record is None:
            unreadable += 1
        else:
            last[record[0]] = record[1]
    return Resumed(frozenset(key for key, ready in last.items() if ready), unreadable)


@attrs.frozen
class Result:
    """A finished task as recorded: the record's state, its error (None when ready) and
    the record, one line of strict ASCII JSON without the key."""

    state: str
    error: CaptchaflowError | None
    line: bytes


CANCELLED = "CANCELLED"
"""The error name of a task the batch cancelled when it was interrupted."""
INTERRUPTED = "the batch was interrupted before the task finished; it runs again next time"
"""The error message of such a task."""


def _error_fields(error: CaptchaflowError) -> dict[str, JsonValue]:
    if isinstance(error, JobCancelledError):
        return {"name": CANCELLED, "code": error.code, "message": INTERRUPTED}
    return {"name": error.name, "code": error.code, "message": error.message}


def _line(record: dict[str, JsonValue], job: Job) -> bytes:
    """`record` as one line of strict JSON, ASCII, with the job's key redacted; raises
    ValueError for NaN or an infinite number."""
    text = strict_json(record)
    return (job.key.redact(text) + "\n").encode("utf-8")


def result_of(ident: BatchId, job: Job) -> Result:
    """The record of finished `job`, the task of id `ident`: id, state, solution (when
    ready) or error (name, code, message), attempts (1 + resubmits), polls, seconds (from
    the job's start to its end) and task id. A solution JSON cannot carry (NaN, infinite
    numbers) makes the record `failed`, NON_FINITE_NUMBER, as `captchaflow solve` does."""
    end = job.history[-1].at if job.history else job.started_at
    tail: dict[str, JsonValue] = {
        "attempts": 1 + job.resubmits,
        "polls": job.polls,
        "seconds": round(end - job.started_at, 3),
        "task_id": job.task_id,
    }
    if job.solution is not None:
        try:
            record = {"id": ident, "state": "ready", "solution": job.solution, **tail}
            return Result("ready", None, _line(record, job))
        except ValueError:
            error: CaptchaflowError = unencodable_solution("written", job.task_id)
        state = "failed"
    else:
        error = job.error or CaptchaflowError("the job ended without a solution or an error")
        state = job.state
    record = {"id": ident, "state": state, "error": _error_fields(error), **tail}
    return Result(state, error, _line(record, job))


# -- `batch --redis` and its workers: how jobs are named and results travel -----------------


def job_prefix(results_path: str) -> str:
    """The job-id prefix of the batch writing `results_path` (a digest of its absolute
    path: the same command again names the same jobs)."""
    digest = hashlib.sha256(os.path.abspath(results_path).encode()).hexdigest()[:16]
    return f"batch-{digest}"


def batch_job_id(prefix: str, entry: Entry) -> str:
    """The queue's job id of `entry` in the batch of `prefix`: `PREFIX/ID-JSON`."""
    return f"{prefix}/{entry.key}"


def batch_id_of(job_id: str) -> BatchId:
    """The task's id in TASKS that `batch_job_id` put in `job_id` (the text after the
    prefix, as is, if it is not an id's JSON)."""
    _prefix, _, ident = job_id.partition("/")
    try:
        original = json.loads(ident)
    except ValueError:
        return ident
    if not isinstance(original, str | int) or isinstance(original, bool):
        return ident
    return original


def worker_record(job_id: str, job: Job) -> dict[str, JsonValue]:
    """What a worker publishes for a finished job of `batch --redis`: the batch's result
    line, its state, the requests the job took, and its error (name, class, code, message)
    for the batch's summary and exit status. `result_from` reads it back."""
    result = result_of(batch_id_of(job_id), job)
    record: dict[str, JsonValue] = {
        "line": result.line.decode(),
        "state": result.state,
        "requests": job.requests_sent,
    }
    if result.error is not None:
        record["error_name"] = result.error.name
        record["error_class"] = type(result.error).__name__
        record["error_code"] = result.error.code
        record["error_message"] = result.error.message
    return record


def result_from(record: Mapping[str, JsonValue]) -> tuple[Result, int] | None:
    """The `Result` (and the requests it took) of a `worker_record`, or None if the record
    is not one of a batch's."""
    line, state = record.get("line"), record.get("state")
    if not isinstance(line, str) or not isinstance(state, str):
        return None
    error: CaptchaflowError | None = None
    name = record.get("error_name")
    if isinstance(name, str):
        kind = getattr(_errors, str(record.get("error_class")), None)
        cls = kind if isinstance(kind, type) and issubclass(kind, CaptchaflowError) else None
        code = record.get("error_code")
        error = (cls or CaptchaflowError)(
            str(record.get("error_message", "")),
            name=name,
            code=code if isinstance(code, int) else None,
        )
    requests = record.get("requests")
    return Result(state, error, line.encode()), requests if isinstance(requests, int) else 0
