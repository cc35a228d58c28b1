"""Solving captchas from Celery: `solve_captcha.delay(job_id, task)` returns the solution.

Run one worker process per host, with threads (a task mostly waits on the API):
`celery -A celery_task worker --pool threads --concurrency 50`. The process keeps one engine
(one connection pool, one account gate that learns the account's limits once) in an event
loop in a thread started by the first task; Celery's threads hand their jobs to it. Each job
is journalled under its `job_id` (SQLite, one writer per host), so a redelivery (`acks_late`)
or a retry polls the task already paid for instead of creating another. (`solve()` in each
task would be as idempotent with the journal, but would start a new engine every time.)
"""

from __future__ import annotations

import contextlib
import os
import threading

import anyio.from_thread
from celery import Celery, signals  # type: ignore[import-untyped]

from captchaflow.engine import Engine, GaveUpError
from captchaflow.engine.journal import SqliteJournal
from captchaflow.transports import DEFAULT_BASE_URL, JsonValue

app = Celery("captchas")  # the broker from $CELERY_BROKER_URL
app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True)

_lock = threading.Lock()
_stack = contextlib.ExitStack()  # closes the engine, then stops its event loop
_running: tuple[anyio.from_thread.BlockingPortal, Engine] | None = None


async def _open_engine() -> Engine:
    """The engine, configured from the environment, with its journal open."""
    journal = await SqliteJournal.open(os.environ.get("CAPTCHAFLOW_JOURNAL", "captchaflow.journal"))
    base_url = os.environ.get("NOCAPTCHA_BASE_URL") or DEFAULT_BASE_URL
    return Engine(os.environ["NOCAPTCHA_API_KEY"], base_url=base_url, journal=journal)


async def _close_engine(engine: Engine) -> None:
    """Close the engine's connections, then its journal."""
    await engine.aclose()
    if engine.journal is not None:
        await engine.journal.aclose()


def worker_engine() -> tuple[anyio.from_thread.BlockingPortal, Engine]:
    """This process's engine and the portal into its event loop, made on first use."""
    global _running
    with _lock:
        if _running is None:
            portal = _stack.enter_context(anyio.from_thread.start_blocking_portal("asyncio"))
            try:
                engine = portal.call(_open_engine)
            except BaseException:
                _stack.close()
                raise
            _stack.callback(portal.call, _close_engine, engine)
            _running = portal, engine
        return _running


def close_engine(**_: object) -> None:
    """Close this process's engine, journal and event loop (when the worker stops)."""
    global _running
    with _lock:
        _stack.close()
        _running = None


signals.worker_shutdown.connect(close_engine)  # --pool threads
signals.worker_process_shutdown.connect(close_engine)  # a --pool prefork child


@app.task(autoretry_for=(GaveUpError,), retry_backoff=10, max_retries=3)  # type: ignore[untyped-decorator]
def solve_captcha(job_id: str, task: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Solve `task` as job `job_id`; return its solution. A `GaveUpError` (the service was
    down, overloaded or unreachable until the deadline) is retried later, under the same
    `job_id`; any other error (a bad key, no balance, a bad task, unsolvable) fails the task
    at once, as a retry would fail the same way, and might pay again."""
    portal, engine = worker_engine()
    job = portal.call(engine.run_recorded, job_id, task)
    return dict(job.result())
