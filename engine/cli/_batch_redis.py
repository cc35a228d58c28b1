"""`captchaflow batch --redis URL`: the batch's tasks go to the Redis work queue, the
workers (`captchaflow worker`) solve them, and this process collects their results into
RESULTS as they are published.

Each task is queued under the job id `PREFIX/ID`, PREFIX naming RESULTS (a digest of its
absolute path) and ID the task's id as JSON, so the same command again names the same jobs:
a task the journal shows in flight is not queued again (a worker has it, or will take it
over), a task already solved by a worker is queued again and answered from the journal at
once (nothing sent), and a failed one gets a new try, as a local batch does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from captchaflow.engine.journal import Stage

from ._batch_files import Reader
from ._batch_io import Entry, batch_job_id, job_prefix, result_from
from ._batch_run import _Batch
from ._progress import Display, keep_showing

if TYPE_CHECKING:
    from captchaflow.engine.distributed import RedisJournal, WorkQueue

__all__ = ["RedisBatch"]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBatch(_Batch):
    """A batch whose tasks the workers on Redis solve; see the module docstring."""

    async def _main(self, tasks_fd: int, display: Display) -> None:
        import redis.asyncio as redis_asyncio

        from captchaflow.engine.distributed import RedisJournal, WorkQueue

        args = self._args
        client = redis_asyncio.Redis.from_url(args.redis, socket_timeout=5.0)
        try:
            queue = WorkQueue(client, namespace=args.namespace, run=args.queue)
            journal = RedisJournal(client, namespace=args.namespace, run=args.queue)
            await queue.ensure_group()
            baseline = await client.xrevrange(queue.results_key, count=1)
            after = _text(baseline[0][0]) if baseline else "0"
            prefix = job_prefix(args.output)
            waiting: set[str] = set()
            reader = Reader(tasks_fd)
            reader.start()
            try:
                while (item := await reader.next()) is not None:
                    entry = self._entry(item)
                    if entry is not None:
                        await self._queue_entry(queue, journal, prefix, entry, waiting)
            finally:
                reader.close()
            self.tally.total = self.tally.done + len(waiting)
            self.tally.running = len(waiting)
            async with anyio.create_task_group() as group:
                self._scope = group.cancel_scope
                group.start_soon(keep_showing, display)
                await self._collect(queue, after, waiting)
                group.cancel_scope.cancel()
        finally:
            await client.aclose()

    async def _queue_entry(
        self,
        queue: WorkQueue,
        journal: RedisJournal,
        prefix: str,
        entry: Entry,
        waiting: set[str],
    ) -> None:
        """Queue `entry` unless the journal shows it in flight; wait for its result."""
        job_id = batch_job_id(prefix, entry)
        known = await journal.get(job_id)
        waiting.add(job_id)
        if known is None or known.stage is Stage.FINISHED:
            await queue.enqueue(job_id, entry.task)

    async def _collect(self, queue: WorkQueue, after: str, waiting: set[str]) -> None:
        """Write each result published for a job of `waiting` until none is left."""
        while waiting:
            after, pairs = await queue.results(after, block=1.0)
            for job_id, record in pairs:
                if job_id not in waiting:
                    continue
                found = result_from(record)
                if found is None:
                    continue
                result, requests = found
                waiting.discard(job_id)
                self.tally.running = len(waiting)
                self._write(result, requests)
                if self.write_error is not None:
                    return
