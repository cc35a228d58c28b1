"""`RedisJournal`: the job journal in Redis, one record shared by every worker of a run.

It keeps the record `SqliteJournal` keeps, with the same rules (`replaced`), so a job
started by one worker can be resumed by another after a crash. Layout, under
`{namespace}:journal:{run}:`

    job:{job_id}   a hash: task (canonical JSON), stage, task_id (JSON), outcome (JSON),
                   creates, seq
    unfinished     a sorted set of the job ids not FINISHED, scored by seq (first added)
    seq            the counter seq is taken from
    format         the format version ("1"), written on first use

Atomicity. Every change is one Lua script, which Redis runs with nothing in between: a
change sees the entry as the last change left it, even with many workers on one job.

Durability. A change is acknowledged once it is in the Redis server's memory. Whether it
survives the server's restart or crash depends on the server's persistence, which is the
operator's: with AOF and `appendfsync always` it is on disk when acknowledged; with
`appendfsync everysec` (Redis's default when AOF is on) a crash of the server (not of a
worker) can lose up to the last second; with RDB snapshots only or no persistence, all
since the last snapshot. `wait_replicas > 0` makes `created` (the taskId, the one write a
restart must not lose) wait for that many replicas to acknowledge it (WAIT, up to
`wait_timeout` seconds; fewer acknowledgements are logged as a warning, as the taskId is
on the primary all the same). A worker killed at any moment loses nothing acknowledged.

Redis going away. A call that meets a connection error or a timeout is retried with capped
exponential backoff (0.05 s doubling to 1 s) for `retry_for` seconds, then raises
`JournalUnavailableError` (a `JournalError`): so a job blocked writing its taskId waits for
Redis to come back before sending anything else. A retried `sending` whose first attempt
was applied but whose reply was lost counts that createTask twice in `creates`; every other
change is idempotent.

Safety of the data. A key of another type, an entry missing a field or with an unknown
stage raises `JournalCorruptError` in any call that meets it, an entry whose task, taskId or
outcome does not parse in any call that reads it; a format version above this one's raises
`JournalFormatError`. None of them changes anything. The API key is never written. Only the
asyncio event loop is supported (redis-py's asyncio client).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from captchaflow.engine.journal._base import (
    JournalCorruptError,
    JournalEntry,
    JournalError,
    JournalFormatError,
    Stage,
    canonical_json,
    replaced,
)
from captchaflow.transports import JsonValue, TaskId

from ._keys import DEFAULT_NAMESPACE, redis_key
from ._queue import RedisUnavailableError, retry_unavailable, text

__all__ = ["FORMAT_VERSION", "JournalUnavailableError", "RedisJournal"]

FORMAT_VERSION = 1
"""The Redis journal format this version writes and reads (the `format` key)."""

_log = logging.getLogger("captchaflow")
_T = TypeVar("_T")
_CHUNK = 500


class JournalUnavailableError(JournalError, RedisUnavailableError):
    """The journal's Redis could not be reached for `retry_for` seconds."""


class RedisJournal:
    """A `Journal` in Redis, for run `run` under `namespace` (see the module docstring for
    its keys, atomicity and durability). A client passed in stays the caller's; one made by
    `from_url` is closed by `aclose`. Many processes may write one run's journal at once."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        run: str = "default",
        retry_for: float = 60.0,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        if not run or ":" in run:
            raise ValueError(f"a run is a non-empty name without ':', got {run!r}")
        self.client = client
        self.namespace, self.run = namespace, run
        self.retry_for = retry_for
        self.wait_replicas, self.wait_timeout = wait_replicas, wait_timeout
        self._prefix = redis_key(namespace, "journal", run)
        self._unfinished_key = redis_key(namespace, "journal", run, "unfinished")
        self._seq_key = redis_key(namespace, "journal", run, "seq")
        self._format_key = redis_key(namespace, "journal", run, "format")
        self._add_script = client.register_script(_PRELUDE + _ADD)
        self._update_script = client.register_script(_PRELUDE + _UPDATE)
        self._owns_client = False

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> RedisJournal:
        """A journal on a client of its own for `url` (closed by `aclose`; `kw` are this
        class's), with the client's own retries off so that `retry_for` alone decides how
        long a call waits for Redis, and replies timed out after 10 s (then retried)."""
        client = redis.asyncio.Redis.from_url(
            url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=5.0, socket_timeout=10.0
        )
        journal = cls(client, **kw)
        journal._owns_client = True
        return journal

    # -- the Journal protocol ---------------------------------------------------------------

    async def add(self, job_id: str, task: Mapping[str, JsonValue]) -> JournalEntry:
        keys = [self._job_key(job_id), self._unfinished_key, self._seq_key, self._format_key]
        args: list[str | int] = [FORMAT_VERSION, job_id, canonical_json(task)]
        reply = await self._call(
            functools.partial(self._add_script, keys=keys, args=args), f"adding job {job_id!r}"
        )
        status = self._status(reply)
        entry = self._entry(job_id, _pairs(reply[1]))
        if status == "conflict":
            replaced(entry, job_id, task)  # raises JournalConflictError
        return entry

    async def get(self, job_id: str) -> JournalEntry | None:
        async def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self._format_key)
            pipe.hgetall(self._job_key(job_id))
            return await pipe.execute()

        found, fields = await self._call(read, f"reading job {job_id!r}")
        self._check_format(found)
        return self._entry(job_id, fields) if fields else None

    async def sending(self, job_id: str) -> None:
        await self._update(job_id, Stage.SENDING, "")

    async def created(self, job_id: str, task_id: TaskId) -> None:
        await self._update(job_id, Stage.CREATED, json.dumps(task_id), wait=True)

    async def not_created(self, job_id: str) -> None:
        await self._update(job_id, Stage.NEW, "")

    async def finished(self, job_id: str, outcome: Mapping[str, JsonValue]) -> None:
        await self._update(job_id, Stage.FINISHED, canonical_json(outcome))

    async def unfinished(self) -> list[JournalEntry]:
        """Every entry not `FINISHED`, in the order first added (read in chunks of 500:
        changes made meanwhile may or may not show)."""

        async def index() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self._format_key)
            pipe.zrange(self._unfinished_key, 0, -1)
            return await pipe.execute()

        found, raw_ids = await self._call(index, "listing unfinished jobs")
        self._check_format(found)
        job_ids = [self._text(job_id) for job_id in raw_ids]
        entries: list[JournalEntry] = []
        for start in range(0, len(job_ids), _CHUNK):
            chunk = job_ids[start : start + _CHUNK]

            async def read(chunk: list[str] = chunk) -> list[Any]:
                pipe = self.client.pipeline(transaction=False)
                for job_id in chunk:
                    pipe.hgetall(self._job_key(job_id))
                return await pipe.execute()

            for job_id, fields in zip(chunk, await self._call(read, "reading jobs"), strict=True):
                if not fields:
                    raise JournalCorruptError(
                        f"journal {self._prefix!r} lists job {job_id!r} as unfinished, but has "
                        "no entry for it; it was left as it is"
                    )
                entry = self._entry(job_id, fields)
                if not entry.finished:  # finished since the index was read
                    entries.append(entry)
        return entries

    async def aclose(self) -> None:
        """Close the client if this journal made it (`from_url`); the entries stay."""
        if self._owns_client:
            await self.client.aclose()

    def __repr__(self) -> str:
        return f"<RedisJournal {self._prefix!r}>"

    # -- internals --------------------------------------------------------------------------

    def _job_key(self, job_id: str) -> str:
        return redis_key(self.namespace, "journal", self.run, "job", job_id)

    async def _update(self, job_id: str, stage: Stage, value: str, *, wait: bool = False) -> None:
        keys = [self._job_key(job_id), self._unfinished_key, self._format_key]
        args: list[str | int] = [FORMAT_VERSION, job_id, stage.value, value]
        what = f"recording job {job_id!r} as {stage.value}"
        if wait and self.wait_replicas > 0:
            reply, acked = await self._call(functools.partial(self._waited, keys, args), what)
            if int(acked) < self.wait_replicas:
                _log.warning(
                    "captchaflow: %s reached %d of %d replicas in %g s",
                    what,
                    int(acked),
                    self.wait_replicas,
                    self.wait_timeout,
                )
        else:
            reply = await self._call(
                functools.partial(self._update_script, keys=keys, args=args), what
            )
        if self._status(reply) == "missing":
            raise JournalError(f"job {job_id!r} is not in the journal (add it first)")

    async def _waited(self, keys: list[str], args: list[str | int]) -> list[Any]:
        # WAIT counts the writes of its own connection: it must follow the script on the
        # same one, hence one pipeline.
        pipe = self.client.pipeline(transaction=False)
        await self._update_script(keys=keys, args=args, client=pipe)
        pipe.wait(self.wait_replicas, max(1, round(self.wait_timeout * 1000)))
        return await pipe.execute()

    async def _call(self, call: Callable[[], Awaitable[_T]], what: str) -> _T:
        try:
            return await retry_unavailable(
                call, retry_for=self.retry_for, what=what, error=JournalUnavailableError
            )
        except redis.exceptions.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise JournalCorruptError(
                    f"journal {self._prefix!r} holds a key of another type ({exc}); it was "
                    "left as it is"
                ) from exc
            raise JournalError(f"Redis refused {what} in {self._prefix!r}: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            raise JournalError(f"{what} in {self._prefix!r} failed: {exc}") from exc

    def _status(self, reply: Any) -> str:
        """The status of a script's reply, raising for a bad format or corrupt data."""
        status = self._text(reply[0])
        if status == "format":
            self._check_format(reply[1])
        elif status == "corrupt":
            raise JournalCorruptError(
                f"journal {self._prefix!r} is damaged: {self._text(reply[1])}; it was left as it is"
            )
        return status

    def _check_format(self, found: object) -> None:
        if found is None:
            return
        version = self._text(found)
        if version == str(FORMAT_VERSION):
            return
        if version.isascii() and version.isdigit() and int(version) > FORMAT_VERSION:
            raise JournalFormatError(
                f"journal {self._prefix!r} has format {version}, written by a newer "
                f"captchaflow (this one reads format {FORMAT_VERSION}); upgrade captchaflow "
                "to resume it"
            )
        raise JournalCorruptError(
            f"journal {self._prefix!r} has format {version!r}, not a format version; it was "
            "left as it is"
        )

    def _text(self, value: object) -> str:
        try:
            return text(value)
        except ValueError as exc:  # UnicodeDecodeError included
            raise JournalCorruptError(
                f"journal {self._prefix!r} holds what is not text ({exc}); it was left as it is"
            ) from exc

    def _entry(self, job_id: str, raw: Mapping[Any, Any]) -> JournalEntry:
        """The entry in hash `raw` of `job_id`, or `JournalCorruptError`."""
        key = self._job_key(job_id)
        fields = {self._text(name): self._text(value) for name, value in raw.items()}
        try:
            task = json.loads(fields["task"])
            task_id = json.loads(fields["task_id"]) if "task_id" in fields else None
            outcome = json.loads(fields["outcome"]) if "outcome" in fields else None
            stage, creates = Stage(fields["stage"]), int(fields["creates"])
        except KeyError as exc:
            raise JournalCorruptError(
                f"journal entry {key!r} has no {exc.args[0]!r}; it was left as it is"
            ) from None
        except ValueError as exc:
            raise JournalCorruptError(
                f"journal entry {key!r} does not parse ({exc}); it was left as it is"
            ) from None
        if not isinstance(task, dict) or not (outcome is None or isinstance(outcome, dict)):
            raise JournalCorruptError(f"journal entry {key!r} is not a job's; left as it is")
        if not (task_id is None or isinstance(task_id, str | int)) or isinstance(task_id, bool):
            raise JournalCorruptError(f"journal entry {key!r} has a bad task_id; left as it is")
        return JournalEntry(job_id, task, stage, task_id, outcome, creates)


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    """A hash from HGETALL's flat [field, value, ...] as a Lua script returns it."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


# Each script checks the format key and the types of the keys it touches, and the entry,
# before it writes anything (the format key first): an error leaves nothing half-done.
_PRELUDE = """
local STAGES = {new = true, sending = true, created = true, finished = true}
local function bad_type(key, want)
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'none' and kind ~= want then
    return {'corrupt', key .. ' is a ' .. kind .. ', not a ' .. want}
  end
end
local function bad_format(key, version)
  local wrong = bad_type(key, 'string')
  if wrong then return wrong end
  local found = redis.call('GET', key)
  if found and found ~= version then return {'format', found} end
end
local function bad_entry(job)
  local f = redis.call('HMGET', job, 'task', 'stage', 'seq', 'creates')
  if not f[1] then return {'corrupt', job .. ' has no task'} end
  if not STAGES[f[2]] then return {'corrupt', job .. ' has no known stage'} end
  if not (f[3] and string.match(f[3], '^%d+$') and f[4] and string.match(f[4], '^%d+$')) then
    return {'corrupt', job .. ' has no seq or creates count'}
  end
end
"""

_ADD = """
-- KEYS: job hash, unfinished zset, seq counter, format; ARGV: format, job id, task JSON
local job, job_id, task = KEYS[1], ARGV[2], ARGV[3]
local wrong = bad_format(KEYS[4], ARGV[1]) or bad_type(job, 'hash')
  or bad_type(KEYS[2], 'zset') or bad_type(KEYS[3], 'string')
if wrong then return wrong end
if redis.call('EXISTS', job) == 0 then
  redis.call('SET', KEYS[4], ARGV[1], 'NX')
  local seq = redis.call('INCR', KEYS[3])
  redis.call('HSET', job, 'task', task, 'stage', 'new', 'creates', 0, 'seq', seq)
  redis.call('ZADD', KEYS[2], seq, job_id)
  return {'ok', redis.call('HGETALL', job)}
end
wrong = bad_entry(job)
if wrong then return wrong end
redis.call('SET', KEYS[4], ARGV[1], 'NX')
if redis.call('HGET', job, 'task') ~= task then
  local stage = redis.call('HGET', job, 'stage')
  if stage ~= 'new' and stage ~= 'finished' then
    return {'conflict', redis.call('HGETALL', job)}
  end
  redis.call('HSET', job, 'task', task, 'stage', 'new')
  redis.call('HDEL', job, 'task_id', 'outcome')
  redis.call('ZADD', KEYS[2], redis.call('HGET', job, 'seq'), job_id)
end
return {'ok', redis.call('HGETALL', job)}
"""

_UPDATE = """
-- KEYS: job hash, unfinished zset, format; ARGV: format, job id, new stage, its value
-- (task_id JSON for created, outcome JSON for finished)
local job, job_id, stage, value = KEYS[1], ARGV[2], ARGV[3], ARGV[4]
local wrong = bad_format(KEYS[3], ARGV[1]) or bad_type(job, 'hash') or bad_type(KEYS[2], 'zset')
if wrong then return wrong end
if redis.call('EXISTS', job) == 0 then return {'missing'} end
wrong = bad_entry(job)
if wrong then return wrong end
redis.call('SET', KEYS[3], ARGV[1], 'NX')
if stage == 'finished' then
  redis.call('HSET', job, 'stage', stage, 'outcome', value)
  redis.call('ZREM', KEYS[2], job_id)
  return {'ok'}
end
if stage == 'sending' then
  redis.call('HSET', job, 'stage', stage)
  redis.call('HINCRBY', job, 'creates', 1)
  redis.call('HDEL', job, 'task_id')
elseif stage == 'created' then
  redis.call('HSET', job, 'stage', stage, 'task_id', value)
else
  redis.call('HSET', job, 'stage', stage)
  redis.call('HDEL', job, 'task_id')
end
redis.call('ZADD', KEYS[2], redis.call('HGET', job, 'seq'), job_id)
return {'ok'}
"""
