"""`Worker`: runs jobs taken from a shared `WorkQueue`, on an engine whose gate is kept in
step with the account's other workers, journalled in Redis.

Each item taken from the queue runs through `Engine.run_recorded` under its job id, so a job
a dead worker left (taken over after the queue's idle timeout) resumes from the journal: a
task already created is polled, never created again. When a job ends, its result record is
published to the queue's results stream, then the item is acknowledged; a worker that dies
between the two leaves the item to be taken over, and the journal answers the new owner at
once with the recorded outcome (no request), which is published again (a collector keeps
the last record per id).

An item this worker still runs but no longer owns (another worker took it over, having
presumed this one dead after the queue's idle timeout: a stall, a long pause) is reported
lost by the next `touch`; its job is cancelled here at once and nothing is published or
acknowledged for it: the new owner resumes it from the journal. A createTask in flight at
that moment is let finish and its `taskId` journalled first (see `Engine.run_recorded`), so
the new owner polls that task; only a createTask the new owner finds still in doubt is
decided by the engine's `AmbiguousCreate` rule.

Redis going away: jobs in flight go on (a createTask's `taskId` waits for the journal to be
reachable before anything else is sent; polls go on), no new items are taken, and taking
resumes when Redis is back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import anyio

from captchaflow.engine._engine import Engine
from captchaflow.engine._job import Job
from captchaflow.engine.journal import outcome_of
from captchaflow.transports import JsonValue

from ._queue import RedisUnavailableError, WorkItem, WorkQueue

__all__ = ["Worker"]

_log = logging.getLogger("captchaflow")

Record = Callable[[str, Job], Mapping[str, JsonValue]]
"""Makes the result record of a finished job from its job id."""


def default_record(job_id: str, job: Job) -> Mapping[str, JsonValue]:
    """`{"job_id": ..., **outcome_of(job)}`."""
    return {"job_id": job_id, **outcome_of(job)}


class Worker:
    """Takes work from `queue` as `consumer` and runs up to `concurrency` jobs at a time on
    `engine` (which must have a journal: `Engine(journal=RedisJournal(...))`), publishing
    each job's `record(job_id, job)` to the results stream."""

    def __init__(
        self,
        engine: Engine,
        queue: WorkQueue,
        *,
        consumer: str,
        concurrency: int = 50,
        record: Record = default_record,
        retry_every: float = 0.5,
    ) -> None:
        if engine.journal is None:
            raise ValueError("a worker's engine needs a journal (the jobs of the dead resume)")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
        self.engine, self.queue, self.consumer = engine, queue, consumer
        self.concurrency, self.record, self.retry_every = concurrency, record, retry_every
        self.running: dict[str, WorkItem] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self.finished = 0
        self.taken_over = 0
        self.lost = 0
        """Jobs cancelled here because another worker took their item over."""
        self.redis_outages = 0

    async def run(self, *, stop: anyio.Event | None = None, max_jobs: int | None = None) -> None:
        """Take and run jobs until `stop` is set (then the jobs running finish) or `max_jobs`
        were taken; cancelling it cancels the jobs running (their items stay pending, for a
        takeover; their taskIds are journalled)."""
        stop = stop if stop is not None else anyio.Event()
        taken = 0
        free = anyio.Semaphore(self.concurrency)
        async with anyio.create_task_group() as group:
            group.start_soon(self._keep_touching)
            async with anyio.create_task_group() as jobs:  # left once every job ended
                while not stop.is_set() and (max_jobs is None or taken < max_jobs):
                    want = self.concurrency - len(self.running)
                    if max_jobs is not None:
                        want = min(want, max_jobs - taken)
                    if want <= 0:
                        async with free:  # wait for a job to end
                            pass
                        continue
                    for item in await self._take(want):
                        taken += 1
                        self.taken_over += item.taken_over
                        self.running[item.message_id] = item
                        await free.acquire()
                        jobs.start_soon(self._run_one, item, free)
            group.cancel_scope.cancel()

    async def _take(self, want: int) -> list[WorkItem]:
        try:
            return await self.queue.take(self.consumer, want, block=0.5)
        except RedisUnavailableError as exc:
            self.redis_outages += 1
            _log.warning("captchaflow: worker %s: queue unreachable (%s)", self.consumer, exc)
            await anyio.sleep(self.retry_every)
            return []

    async def _run_one(self, item: WorkItem, free: anyio.Semaphore) -> None:
        scope = self._scopes[item.message_id] = anyio.CancelScope()
        try:
            with scope:
                job = await self.engine.run_recorded(item.job_id, item.task)
            if scope.cancelled_caught:  # taken over: the new owner publishes and acks it
                self.lost += 1
                _log.warning(
                    "captchaflow: worker %s: job %s was taken over by another worker; "
                    "stopped it here",
                    self.consumer,
                    item.job_id,
                )
                return
            record = self.record(item.job_id, job)
            await self._until_done(lambda: self.queue.publish_result(item.job_id, record))
            await self._until_done(lambda: self.queue.ack(item))
            self.finished += 1
        finally:
            self.running.pop(item.message_id, None)
            self._scopes.pop(item.message_id, None)
            free.release()

    async def _until_done(self, call: Callable[[], Awaitable[object]]) -> None:
        """Run `call` until Redis takes it."""
        while True:
            try:
                await call()
                return
            except RedisUnavailableError:
                self.redis_outages += 1
                await anyio.sleep(self.retry_every)

    async def _keep_touching(self) -> None:
        """Keep this worker's items from looking idle (taken over) while it runs them, and
        stop the jobs of those another worker took over all the same."""
        period = max(0.05, self.queue.idle_takeover / 3)
        while True:
            await anyio.sleep(period)
            if self.running:
                try:
                    lost = await self.queue.touch(self.consumer, list(self.running.values()))
                except RedisUnavailableError:
                    self.redis_outages += 1
                    continue
                for item in lost:
                    scope = self._scopes.get(item.message_id)
                    if scope is not None:  # None: it ended (and was acked) meanwhile
                        scope.cancel()
