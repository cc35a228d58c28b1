"""`WorkQueue`: the tasks of a run shared by many workers through a Redis Stream and a
consumer group, and the results stream the collector follows.

Delivery is at least once. A worker takes entries with `take` (XREADGROUP): each stays in
the group's pending list, owned by that worker, until it is acked (`ack`: XACK). An entry
whose owner has not touched it for `idle_takeover` seconds (XAUTOCLAIM) is taken over by
the next `take` of any worker: so a dead worker's work is finished by the others, and a
live worker with long jobs calls `touch` every `idle_takeover / 3` to keep its own. Because
an entry may be delivered twice (a worker presumed dead that was not, a reply lost when the
connection dropped), work is keyed by `job_id`, and the job journal makes running a job a
second time safe (it polls the taskId journalled instead of creating the task again).

Acked entries are not deleted (no XDEL): the group's `lag` stays exact for `backlog`, and
the stream is the run's record of what was asked. Trim or delete it when the run is over.

A message that is not a task (a missing field, a task that is not a JSON object) cannot be
worked on by anyone: `take` acks it so it is not delivered again, logs a warning on the
`captchaflow` logger and counts it in `WorkQueue.malformed`; it is not returned.

Redis going away: each call retries a connection error or timeout with capped exponential
backoff for `retry_for` seconds, then raises `QueueUnavailableError` (a
`RedisUnavailableError`): the worker stops taking work and tries again later. A consumer
group lost with the data (a Redis restarted without persistence) is made again on first use.
Only the asyncio event loop is supported (redis-py's asyncio client).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import attrs
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from captchaflow.engine.journal._base import canonical_json
from captchaflow.transports import JsonValue

from ._keys import DEFAULT_NAMESPACE, redis_key

__all__ = [
    "QueueError",
    "QueueUnavailableError",
    "RedisUnavailableError",
    "WorkItem",
    "WorkQueue",
]

_log = logging.getLogger("captchaflow")
_T = TypeVar("_T")

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
_CLAIM_ROUNDS = 16
"""Most XAUTOCLAIM calls in one `take` (each scans up to ten times `count` pending entries;
the cursor carries over to the next `take`)."""
_CHUNK = 1000


class RedisUnavailableError(Exception):
    """Redis could not be reached (refused, reset, timed out) for as long as the call was
    allowed to retry. Nothing is wrong with the data: try again later."""


class QueueError(Exception):
    """The work queue cannot be used; the message says why (e.g. its key is not a stream)."""


class QueueUnavailableError(QueueError, RedisUnavailableError):
    """The work queue's Redis is unreachable: stop taking work and try again later."""


@attrs.frozen
class WorkItem:
    """One task taken from the queue, owned by the consumer that took it until acked."""

    message_id: str
    job_id: str
    task: Mapping[str, JsonValue]
    deliveries: int
    """How many times the entry was delivered, this time included (1: first delivery)."""
    taken_over: bool
    """Taken over from a consumer that left it idle for `idle_takeover` (presumed dead)."""


class WorkQueue:
    """The work queue of run `run` in `namespace`, taken from by consumer group `group`.

    Keys: `{namespace}:queue:{run}:tasks` (the tasks stream; entries `job_id` and `task`, the
    task as canonical JSON) and `{namespace}:queue:{run}:results` (entries `job_id` and
    `record`). A client passed in stays the caller's; one made by `from_url` is closed by
    `aclose`. A client's own retries add to `retry_for`, and its `socket_timeout`, if any,
    must exceed the `block` of `take` and `results`."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        run: str = "default",
        group: str = "workers",
        idle_takeover: float = 30.0,
        retry_for: float = 5.0,
    ) -> None:
        if not run or ":" in run:
            raise ValueError(f"a run is a non-empty name without ':', got {run!r}")
        if not (idle_takeover > 0 and math.isfinite(idle_takeover)):
            raise ValueError(f"idle_takeover must be a positive number, got {idle_takeover!r}")
        self.client = client
        self.group = group
        self.idle_takeover = idle_takeover
        self.retry_for = retry_for
        self.tasks_key = redis_key(namespace, "queue", run, "tasks")
        self.results_key = redis_key(namespace, "queue", run, "results")
        self.malformed = 0
        """Messages `take` dropped (acked unworked) because they were not tasks."""
        self._claim_cursor = "0-0"
        self._touch = client.register_script(_TOUCH)
        self._owns_client = False

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> WorkQueue:
        """A queue on a client of its own for `url` (closed by `aclose`; `kw` are this
        class's), with the client's own retries off so that `retry_for` alone decides how
        long a call waits, and replies timed out after 30 s (so `block` must be shorter)."""
        client = redis.asyncio.Redis.from_url(
            url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=5.0, socket_timeout=30.0
        )
        queue = cls(client, **kw)
        queue._owns_client = True
        return queue

    async def aclose(self) -> None:
        """Close the client if this queue made it (`from_url`)."""
        if self._owns_client:
            await self.client.aclose()

    def __repr__(self) -> str:
        return f"<WorkQueue {self.tasks_key!r} group {self.group!r}>"

    # -- tasks ----------------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Make the stream and the consumer group if missing (a new group starts at the
        stream's first entry, so tasks enqueued before it are delivered too)."""
        try:
            await self._call(
                functools.partial(
                    self.client.xgroup_create, self.tasks_key, self.group, id="0", mkstream=True
                ),
                "creating the consumer group",
            )
        except QueueError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, job_id: str, task: Mapping[str, JsonValue]) -> str:
        """Add one task; its message id."""
        return (await self.enqueue_many([(job_id, task)]))[0]

    async def enqueue_many(self, items: Iterable[tuple[str, Mapping[str, JsonValue]]]) -> list[str]:
        """Add tasks in order, a thousand to a round trip; their message ids. A chunk whose
        reply was lost is sent again, so a task may be enqueued twice (work is by job id)."""
        fields = [{"job_id": job_id, "task": canonical_json(task)} for job_id, task in items]
        ids: list[str] = []
        for start in range(0, len(fields), _CHUNK):
            chunk = fields[start : start + _CHUNK]

            async def send(chunk: list[dict[str, str]] = chunk) -> list[Any]:
                pipe = self.client.pipeline(transaction=False)
                for entry in chunk:
                    pipe.xadd(self.tasks_key, entry)  # type: ignore[arg-type]
                return await pipe.execute()

            ids += [text(message_id) for message_id in await self._call(send, "enqueueing")]
        return ids

    async def take(self, consumer: str, count: int, *, block: float) -> list[WorkItem]:
        """Up to `count` tasks for `consumer`: first entries other consumers left idle for
        `idle_takeover` (`taken_over=True`), then new ones, waiting up to `block` seconds
        for one if none was taken over (`block <= 0`: no wait). Malformed messages are acked
        and logged, not returned (see the module docstring)."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count!r}")
        items = await self._grouped(functools.partial(self._take_idle, consumer, count))
        if len(items) < count:
            wait = 0.0 if items else block
            items += await self._grouped(
                functools.partial(self._take_new, consumer, count - len(items), wait)
            )
        return items

    async def touch(self, consumer: str, items: Sequence[WorkItem]) -> list[WorkItem]:
        """Reset the idle time of `consumer`'s `items` (XCLAIM, min-idle 0, JUSTID: the
        delivery count is unchanged), so they are not taken over while it works on them.
        Only items `consumer` still owns are claimed: the items returned are those it lost
        (taken over by another consumer, or acked), which it should stop working on."""
        if not items:
            return []
        ids = [item.message_id for item in items]
        reply = await self._call(
            functools.partial(
                self._touch, keys=[self.tasks_key], args=[self.group, consumer, *ids]
            ),
            "touching work items",
        )
        lost = {text(message_id) for message_id in reply}
        return [item for item in items if item.message_id in lost]

    async def ack(self, item: WorkItem) -> bool:
        """Mark `item` done (XACK; the entry stays in the stream). False if it was not
        pending any more (acked already)."""
        acked = await self._call(
            functools.partial(self.client.xack, self.tasks_key, self.group, item.message_id),
            "acking a work item",
        )
        return bool(acked)

    async def pending_count(self) -> int:
        """Entries delivered and not yet acked."""

        async def pending() -> int:
            summary = await self._call(
                functools.partial(self.client.xpending, self.tasks_key, self.group),
                "reading the pending entries",
            )
            return int(summary["pending"])

        return await self._grouped(pending)

    async def backlog(self) -> int:
        """Entries not yet done: never delivered to the group, plus pending."""
        return await self._grouped(self._backlog)

    # -- results --------------------------------------------------------------------------------

    async def publish_result(self, job_id: str, record: Mapping[str, JsonValue]) -> str:
        """Add a job's result record to the results stream; its message id. A reply lost
        with the connection means it is sent again: the collector keeps one per job id."""
        fields = {"job_id": job_id, "record": canonical_json(record)}
        message_id = await self._call(
            functools.partial(self.client.xadd, self.results_key, fields),  # type: ignore[arg-type]
            "publishing a result",
        )
        return text(message_id)

    async def results(
        self, after: str = "0", *, block: float, count: int = 1000
    ) -> tuple[str, list[tuple[str, dict[str, JsonValue]]]]:
        """Up to `count` results published after message id `after` (XREAD), waiting up to
        `block` seconds for one (`block <= 0`: no wait): the last id read (`after` if none,
        so pass it back to follow the stream) and the (job id, record) pairs. A malformed
        entry is logged and skipped."""
        reply = await self._call(
            functools.partial(
                self.client.xread, {self.results_key: after}, count=count, block=_ms(block)
            ),
            "reading results",
        )
        last, pairs = after, []
        for message_id, fields in stream_entries(reply):
            last = message_id
            try:
                job_id = _field(fields or {}, "job_id")
                record = _object(_field(fields or {}, "record"))
            except ValueError as exc:
                _log.warning("captchaflow: skipped malformed result %s: %s", message_id, exc)
                continue
            pairs.append((job_id, record))
        return last, pairs

    # -- internals ------------------------------------------------------------------------------

    async def _take_idle(self, consumer: str, count: int) -> list[WorkItem]:
        claimed: list[tuple[str, Mapping[Any, Any] | None]] = []
        for _round in range(_CLAIM_ROUNDS):
            reply = await self._call(
                functools.partial(
                    self.client.xautoclaim,
                    self.tasks_key,
                    self.group,
                    consumer,
                    int(self.idle_takeover * 1000),
                    self._claim_cursor,
                    count=count - len(claimed),
                ),
                "taking over idle work",
            )
            # [next cursor, claimed entries, ids of entries deleted from the stream (which
            # Redis 7 drops from the pending list)]; Redis 6.2 gives a deleted one as nil.
            self._claim_cursor = text(reply[0])
            deleted = [text(message_id) for message_id in (reply[2] if len(reply) > 2 else [])]
            if deleted:
                _log.warning(
                    "captchaflow: %d pending work items were deleted from %s before they were "
                    "done: %s",
                    len(deleted),
                    self.tasks_key,
                    ", ".join(deleted),
                )
            claimed += [entry for entry in _entries(reply[1]) if entry[0]]
            if self._claim_cursor == "0-0" or len(claimed) >= count:
                break
        if not claimed:
            return []
        deliveries = await self._deliveries([message_id for message_id, _ in claimed])
        return await self._items(claimed, deliveries, taken_over=True)

    async def _take_new(self, consumer: str, count: int, block: float) -> list[WorkItem]:
        reply = await self._call(
            functools.partial(
                self.client.xreadgroup,
                self.group,
                consumer,
                {self.tasks_key: ">"},
                count=count,
                block=_ms(block),
            ),
            "taking new work",
        )
        entries = stream_entries(reply)
        return await self._items(entries, dict.fromkeys((e[0] for e in entries), 1), False)

    async def _deliveries(self, ids: list[str]) -> dict[str, int]:
        """The delivery counts of pending entries `ids` (XPENDING, one round trip)."""

        async def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for message_id in ids:
                pipe.xpending_range(self.tasks_key, self.group, message_id, message_id, 1)
            return await pipe.execute()

        counts: dict[str, int] = {}
        for rows in await self._call(read, "reading delivery counts"):
            for row in rows:
                counts[text(row["message_id"])] = int(row["times_delivered"])
        return counts

    async def _items(
        self,
        entries: Sequence[tuple[str, Mapping[Any, Any] | None]],
        deliveries: Mapping[str, int],
        taken_over: bool,
    ) -> list[WorkItem]:
        items: list[WorkItem] = []
        for message_id, fields in entries:
            try:
                job_id = _field(fields or {}, "job_id")
                task = _object(_field(fields or {}, "task"))
            except ValueError as exc:
                await self._drop(message_id, str(exc))
                continue
            # Acked by its owner between the claim and XPENDING: it was delivered at least twice.
            count = deliveries.get(message_id, 2 if taken_over else 1)
            items.append(WorkItem(message_id, job_id, task, count, taken_over))
        return items

    async def _drop(self, message_id: str, reason: str) -> None:
        self.malformed += 1
        _log.warning("captchaflow: dropped malformed work message %s: %s", message_id, reason)
        await self._call(
            functools.partial(self.client.xack, self.tasks_key, self.group, message_id),
            "acking a malformed message",
        )

    async def _backlog(self) -> int:
        groups = await self._call(
            functools.partial(self.client.xinfo_groups, self.tasks_key), "reading the group"
        )
        for info in groups:
            if text(info["name"]) != self.group:
                continue
            lag = info.get("lag")
            if lag is None:  # unknown after entries were deleted: count them
                lag = await self._count_after(text(info["last-delivered-id"]))
            return int(lag) + int(info["pending"])
        raise QueueError(f"NOGROUP no consumer group {self.group!r} on {self.tasks_key!r}")

    async def _count_after(self, last_id: str) -> int:
        count, start = 0, f"({last_id}"
        while True:
            page = (
                await self._call(
                    functools.partial(self.client.xrange, self.tasks_key, start, "+", _CHUNK),
                    "counting undelivered entries",
                )
                or []
            )
            count += len(page)
            if len(page) < _CHUNK:
                return count
            start = f"({text(page[-1][0])}"

    async def _grouped(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """`call()`, making the group first if Redis says there is none (a new stream, or
        a Redis restarted without its data)."""
        try:
            return await call()
        except QueueError as exc:
            if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                raise
        await self.ensure_group()
        return await call()

    async def _call(self, call: Callable[[], Awaitable[_T]], what: str) -> _T:
        try:
            return await retry_unavailable(
                call, retry_for=self.retry_for, what=what, error=QueueUnavailableError
            )
        except redis.exceptions.RedisError as exc:
            raise QueueError(f"Redis refused {what} on {self.tasks_key!r}: {exc}") from exc


_TOUCH = """
-- KEYS[1]: the stream; ARGV: group, consumer, message ids. Claims (idle 0, JUSTID) the ids
-- the consumer still owns; returns the others.
local lost = {}
for i = 3, #ARGV do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if row[1] and row[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""


async def retry_unavailable(
    call: Callable[[], Awaitable[_T]],
    *,
    retry_for: float,
    what: str,
    error: Callable[[str], Exception],
) -> _T:
    """`call()`, tried again after a connection error or timeout with capped exponential
    backoff (0.05 s doubling to 1 s) until `retry_for` seconds have passed; then
    `error(message)` is raised. A refused password is not retried."""
    deadline = time.monotonic() + retry_for
    delay = _FIRST_BACKOFF
    while True:
        try:
            return await call()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            if isinstance(exc, redis.exceptions.AuthenticationError):
                raise error(f"Redis refused the login: {what} failed ({exc})") from exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise error(
                    f"Redis is unreachable: {what} did not get through in {retry_for:g} s "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            await anyio.sleep(min(delay, left))
            delay = min(delay * 2, _MAX_BACKOFF)


def text(value: object) -> str:
    """A reply value as text, whether the client decodes replies or not."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise ValueError(f"expected text, got {type(value).__name__}")


def stream_entries(reply: Any) -> list[tuple[str, Mapping[Any, Any] | None]]:
    """The entries of an XREAD/XREADGROUP reply on one stream, in any of redis-py's shapes
    (a list of [stream, entries], or a dict of stream to entries or to [entries])."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [entries for _, entries in reply]
    found: list[tuple[str, Mapping[Any, Any] | None]] = []
    for entries in streams:
        if entries and isinstance(entries[0], list):  # RESP3's {stream: [entries]}
            entries = entries[0]
        found += [entry for entry in _entries(entries) if entry[0]]
    return found


def _entries(raw: Any) -> list[tuple[str, Mapping[Any, Any] | None]]:
    return [("", None) if entry[0] is None else (text(entry[0]), entry[1]) for entry in raw or []]


def _field(fields: Mapping[Any, Any], name: str) -> str:
    value = fields.get(name.encode(), fields.get(name))
    if value is None:
        raise ValueError(f"no {name!r} field")
    try:
        return text(value)
    except UnicodeDecodeError:
        raise ValueError(f"field {name!r} is not UTF-8 text") from None


def _object(raw: str) -> dict[str, JsonValue]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    return value


def _ms(seconds: float) -> int | None:
    """BLOCK milliseconds for a wait of `seconds` (None: do not block; BLOCK 0 is forever)."""
    return max(1, round(seconds * 1000)) if seconds > 0 else None
