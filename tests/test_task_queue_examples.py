"""The task-queue examples (`examples/celery_task.py`, `examples/arq_job.py`, quoted in the
README's "Calling the engine from Celery or arq") run as written against the simulated
service over HTTP, configured through the environment as a deployment would be: each
returns the solution, and a job run again under the same job id (a redelivery, a retry, a
second worker) is answered from the journal without a second createTask.

Celery runs its task in-process (`Task.apply`, as `task_always_eager` does); arq runs a
real worker in burst mode on the test Redis. Each is skipped, saying why, when its queue
library is not installed (both are in the `dev` extra)."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import sys
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from secret_scan import SECRETS

from captchaflow.engine import GaveUpError, PermanentError
from captchaflow.transports.sim import (
    AccountSpec,
    Outage,
    Scenario,
    SimulatedAPI,
    TaskTypeSpec,
    simulator_in_thread,
)

ROOT = pathlib.Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
README_SECTION = "### Calling the engine from Celery or arq\n"
KEY = SECRETS[0]
"""The account's key: one the suite's secret scan looks for, so that a test fails if the
queue's own logs (its job arguments, its errors) or the engine's ever show it."""
TASK: dict[str, Any] = {"type": "ImageToTextTask", "body": "aGVsbG8="}
QUICK = TaskTypeSpec(solve_seconds=0.2, solve_spread=0, min_solve_seconds=0)


def load_example(name: str) -> ModuleType:
    """Import `examples/{name}.py` as the module `name` (as `celery -A` or `arq` would)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> Iterator[SimulatedAPI]:
    """The simulated service on loopback, the examples' environment pointing at it (key,
    base URL, and a journal file of this test's own)."""
    api = SimulatedAPI(Scenario(accounts=(AccountSpec(key=KEY),), default_task=QUICK))
    with simulator_in_thread(api) as server:
        monkeypatch.setenv("NOCAPTCHA_API_KEY", KEY)
        monkeypatch.setenv("NOCAPTCHA_BASE_URL", server.base_url)
        monkeypatch.setenv("CAPTCHAFLOW_JOURNAL", str(tmp_path / "captchaflow.journal"))
        yield api


def quoted_examples(readme: str) -> list[str]:
    """The code of the no-run Python blocks of the README's task-queue section."""
    section = re.split(r"\n#{2,3} ", readme.split(README_SECTION, 1)[1], maxsplit=1)[0]
    return re.findall(r"<!-- no-run -->\n```python\n(.*?)```", section, re.DOTALL)


def test_the_readme_quotes_the_examples_as_they_are() -> None:
    """The README shows each example file whole, unchanged (so what it shows is what
    these tests run)."""
    readme = (ROOT / "README.md").read_text()
    if README_SECTION not in readme:
        pytest.skip("README.md has no section 'Calling the engine from Celery or arq' yet")
    examples = [(EXAMPLES / name).read_text() for name in ("celery_task.py", "arq_job.py")]
    assert quoted_examples(readme)[:2] == examples


# -- Celery -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def celery_example() -> ModuleType:
    pytest.importorskip("celery", reason="celery is not installed (pip install -e '.[dev]')")
    return load_example("celery_task")


@pytest.fixture
def celery_task(celery_example: ModuleType) -> Iterator[ModuleType]:
    """The Celery example, its per-process engine closed after the test (as at the worker's
    shutdown), so the next test makes a new one from its own environment."""
    yield celery_example
    celery_example.close_engine()


def test_celery_task_solves_and_a_rerun_of_the_job_is_not_paid_again(
    service: SimulatedAPI, celery_task: ModuleType
) -> None:
    first = celery_task.solve_captcha.apply(args=("order-1", TASK))
    assert first.successful(), first.traceback
    assert first.get()["text"]
    # The same job id again (a redelivery after acks_late, a retry): the journal answers.
    again = celery_task.solve_captcha.apply(args=("order-1", TASK))
    assert again.get() == first.get()
    assert service.stats.tasks_created == 1
    # The process keeps one engine (and event loop) for all its tasks.
    assert celery_task.worker_engine() is celery_task.worker_engine()


def test_celery_task_is_not_retried_for_a_permanent_error(
    service: SimulatedAPI,
    celery_task: ModuleType,
    celery_runs: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOCAPTCHA_API_KEY", "sk-a-key-the-service-does-not-know")
    result = celery_task.solve_captcha.apply(args=("order-2", TASK))
    assert result.failed()
    assert isinstance(result.result, PermanentError)
    assert celery_runs == ["order-2"]  # failed at once, never retried
    assert service.stats.tasks_created == 0


def test_celery_task_retries_when_the_engine_gave_up(
    celery_task: ModuleType,
    celery_runs: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
) -> None:
    """An outage longer than the deadline: the engine gives up at once (a GaveUpError), and
    Celery retries the task, up to its max_retries, then fails it with that error."""
    down = Scenario(
        accounts=(AccountSpec(key=KEY),), default_task=QUICK, outages=(Outage(start=0, end=3600),)
    )
    with simulator_in_thread(SimulatedAPI(down)) as server:
        monkeypatch.setenv("NOCAPTCHA_API_KEY", KEY)
        monkeypatch.setenv("NOCAPTCHA_BASE_URL", server.base_url)
        monkeypatch.setenv("CAPTCHAFLOW_JOURNAL", str(tmp_path / "captchaflow.journal"))
        result = celery_task.solve_captcha.apply(args=("order-3", TASK))
    assert result.failed()
    assert isinstance(result.result, GaveUpError)
    assert celery_runs == ["order-3"] * (1 + celery_task.solve_captcha.max_retries)


@pytest.fixture
def celery_runs(celery_task: ModuleType) -> Iterator[list[str]]:
    """The job id of every run of the example's task during the test (retries included)."""
    from celery import signals

    runs: list[str] = []

    def count(task: Any, args: tuple[Any, ...], **_: object) -> None:
        if task.name == celery_task.solve_captcha.name:
            runs.append(args[0])

    signals.task_prerun.connect(count, weak=False)
    yield runs
    signals.task_prerun.disconnect(count)


# -- arq --------------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    """Redis is asyncio only (redis-py's client), and so is arq."""
    return "asyncio"


class ArqRun:
    """Enqueues jobs on a queue of the test's own and runs the example's worker on them."""

    def __init__(self, example: ModuleType, redis_url: str, namespace: str) -> None:
        from arq.connections import RedisSettings

        self.example, self.redis_url, self.namespace = example, redis_url, namespace
        self.settings = RedisSettings.from_dsn(redis_url)
        self.queue = f"{namespace}:arq"

    async def run(self, job_id: str, task: dict[str, Any]) -> tuple[Any, Any]:
        """Enqueue `solve_captcha(job_id, task)` (a new arq job each time), run a worker in
        burst mode until the queue is empty, and return the job's result info and worker."""
        from arq import create_pool
        from arq.worker import create_worker

        pool = await create_pool(self.settings, default_queue_name=self.queue)
        try:
            job = await pool.enqueue_job("solve_captcha", job_id, task, _job_id=uuid.uuid4().hex)
            assert job is not None
            worker = create_worker(
                self.example.WorkerSettings,
                redis_settings=self.settings,
                queue_name=self.queue,
                burst=True,
                handle_signals=False,
                poll_delay=0.05,
            )
            try:
                await worker.async_run()
            finally:
                await worker.close()
            return await job.result_info(), worker
        finally:
            await pool.aclose()


@pytest.fixture
def arq_run(redis_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch) -> ArqRun:
    """The arq example on the test Redis, its journal under the test's namespace."""
    pytest.importorskip("arq", reason="arq is not installed (pip install -e '.[dev]')")
    monkeypatch.setenv("CAPTCHAFLOW_NAMESPACE", redis_namespace)
    return ArqRun(load_example("arq_job"), redis_url, redis_namespace)


# arq closes its pool with redis-py's deprecated `close` (redis 5 asks for `aclose`).
ARQ_CLOSE = pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")


@pytest.mark.anyio
@ARQ_CLOSE
async def test_arq_job_solves_and_a_rerun_of_the_job_is_not_paid_again(
    service: SimulatedAPI, arq_run: ArqRun
) -> None:
    """A real arq worker (burst mode) runs the job and returns the solution; a second
    worker given a second arq job for the same job id answers it from the journal, which
    lives in arq's own Redis."""
    from captchaflow.engine.distributed import RedisJournal
    from captchaflow.engine.journal import Stage

    job_id = f"order-{uuid.uuid4().hex}"
    first, _ = await arq_run.run(job_id, TASK)
    again, _ = await arq_run.run(job_id, TASK)
    assert first.success and first.result["text"]
    assert again.success and again.result == first.result
    assert service.stats.tasks_created == 1
    journal = RedisJournal.from_url(arq_run.redis_url, namespace=arq_run.namespace, run="arq")
    try:
        entry = await journal.get(job_id)
    finally:
        await journal.aclose()
    assert entry is not None and entry.stage is Stage.FINISHED


@pytest.mark.anyio
@ARQ_CLOSE
async def test_arq_job_is_not_retried_for_a_permanent_error(
    service: SimulatedAPI, arq_run: ArqRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOCAPTCHA_API_KEY", "sk-a-key-the-service-does-not-know")
    info, worker = await arq_run.run(f"order-{uuid.uuid4().hex}", TASK)
    assert not info.success and isinstance(info.result, PermanentError)
    assert (worker.jobs_failed, worker.jobs_retried, info.job_try) == (1, 0, 1)
    assert service.stats.tasks_created == 0
