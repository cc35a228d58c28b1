"""Solving captchas from arq: `await redis.enqueue_job("solve_captcha", job_id, task)`.

Run the worker with `arq arq_job.WorkerSettings` (Redis from $REDIS_URL). It makes one
engine at start-up, shared by every job it runs (one connection pool, one account gate),
journalled in arq's own Redis: arq runs a job again when a worker died in it or it asked
for a retry, and the journal makes that rerun poll the task already paid for (same
`job_id`) instead of creating another. Enqueue with `_job_id=job_id` as well, so that arq
refuses a second copy of a job while the first is queued or running.
"""

from __future__ import annotations

import os
from typing import Any

from arq import Retry
from arq.connections import RedisSettings

from captchaflow.engine import Engine, GaveUpError
from captchaflow.engine.distributed import DEFAULT_NAMESPACE, RedisJournal
from captchaflow.transports import DEFAULT_BASE_URL, JsonValue


async def startup(ctx: dict[str, Any]) -> None:
    """Make the worker's engine, journalled in arq's Redis (`ctx["redis"]`, a redis-py
    asyncio client, which arq closes)."""
    namespace = os.environ.get("CAPTCHAFLOW_NAMESPACE", DEFAULT_NAMESPACE)
    journal = RedisJournal(ctx["redis"], namespace=namespace, run="arq")
    base_url = os.environ.get("NOCAPTCHA_BASE_URL") or DEFAULT_BASE_URL
    ctx["engine"] = Engine(os.environ["NOCAPTCHA_API_KEY"], base_url=base_url, journal=journal)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Close the engine's connections."""
    await ctx["engine"].aclose()


async def solve_captcha(
    ctx: dict[str, Any], job_id: str, task: dict[str, JsonValue]
) -> dict[str, JsonValue]:
    """Solve `task` as job `job_id`; return its solution. A `GaveUpError` (the service was
    down, overloaded or unreachable until the deadline) is retried later, up to `max_tries`;
    any other error (a bad key, no balance, a bad task, unsolvable) fails the job at once."""
    engine: Engine = ctx["engine"]
    job = await engine.run_recorded(job_id, task)
    try:
        return dict(job.result())
    except GaveUpError as error:
        raise Retry(defer=10 * ctx["job_try"]) from error


class WorkerSettings:
    """`arq arq_job.WorkerSettings`."""

    functions = (solve_captcha,)
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://localhost:6379"))
    max_jobs = 100  # jobs mostly wait on the API
    max_tries = 4
