"""Scale-out end to end: workers sharing one account through a real Redis, against the
simulated service over loopback; a worker killed with SIGKILL has its jobs finished by the
others, each billed once; Redis going away mid-run stops no job in flight."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from redis_server import RedisServer
from test_cli import KEY
from test_cli_signals import finish, start
from test_crash import BillingAPI, body

from captchaflow.engine.distributed import RedisJournal, Worker, shared_engine
from captchaflow.transports.sim import AccountSpec, Scenario, TaskTypeSpec, simulator_in_thread

TASK_TYPE = "ImageToTextTask"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client


def scenario(solve: float = 1.0, spread: float = 0.5) -> Scenario:
    return Scenario(
        accounts=(AccountSpec(key=KEY, rate_limit=1000, slots=1000),),
        default_task=TaskTypeSpec(solve_seconds=solve, solve_spread=spread, min_solve_seconds=0.1),
        latency=0.005,
    )


@pytest.fixture
def service() -> Iterator[tuple[BillingAPI, str]]:
    api = BillingAPI(scenario())
    with simulator_in_thread(api) as server:
        yield api, server.base_url


def task(n: int) -> dict[str, object]:
    return {"type": TASK_TYPE, "body": body(n)}


@pytest.mark.anyio
async def test_two_workers_share_the_queue_and_bill_each_task_once(
    service: tuple[BillingAPI, str], redis_url: str, redis_namespace: str
) -> None:
    api, url = service
    count = 30
    stop = anyio.Event()
    options = {"namespace": redis_namespace, "base_url": url, "timeout": 60.0}
    results: dict[str, dict[str, object]] = {}
    async with (
        shared_engine(redis_url, KEY, worker="a", **options) as one,  # type: ignore[arg-type]
        shared_engine(redis_url, KEY, worker="b", **options) as two,  # type: ignore[arg-type]
        anyio.create_task_group() as group,
    ):
        await one.queue.enqueue_many((f"job-{n}", task(n)) for n in range(count))
        workers = [
            Worker(runtime.engine, runtime.queue, consumer=runtime.worker, concurrency=10)
            for runtime in (one, two)
        ]
        for worker in workers:
            group.start_soon(lambda w=worker: w.run(stop=stop))
        after = "0"
        with anyio.fail_after(60):
            while len(results) < count:
                after, pairs = await one.queue.results(after, block=1.0)
                results.update(pairs)  # type: ignore[arg-type]
        stop.set()
    assert {record["state"] for record in results.values()} == {"ready"}
    assert all(worker.finished > 0 for worker in workers)  # both took a share
    assert [api.billed[body(n)] for n in range(count)] == [1] * count


def test_a_worker_killed_mid_run_has_its_jobs_finished_by_the_other_billed_once(
    service: tuple[BillingAPI, str], redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    """Real processes: two `captchaflow worker`s and `captchaflow batch --redis`; one worker
    is SIGKILLed mid-run. The other takes its jobs over (after --idle-takeover) and resumes
    them from the journal: every task ends solved, each billed once, except a task whose
    createTask was in flight at the kill (the journal counts its sends: it is billed at
    most that many times)."""
    api, url = service
    count = 60
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": n, "task": task(n)}) + "\n" for n in range(count)))
    results = tmp_path / "results.jsonl"
    shared = ["--redis", redis_url, "--namespace", redis_namespace]
    worker_args = ["worker", *shared, "--base-url", url, "--concurrency", "10"]
    worker_args += ["--idle-takeover", "1"]
    victim = start([*worker_args, "--name", "victim"])
    survivor = start([*worker_args, "--name", "survivor"])
    collector = start(["batch", str(tasks), "-o", str(results), *shared])
    try:
        deadline = time.monotonic() + 60
        while _lines(results) < 5:
            assert time.monotonic() < deadline, "no results"
            assert collector.poll() is None, finish(collector).err
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
        done = finish(collector)
    finally:
        for proc in (victim, survivor):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert done.code == 0, done.err
    states = {json.loads(line)["id"]: json.loads(line)["state"] for line in _read(results)}
    assert states == {n: "ready" for n in range(count)}
    creates = _creates(redis_url, redis_namespace, results)
    for n in range(count):
        billed = api.billed[body(n)]
        assert 1 <= billed <= max(1, creates[n]), (n, billed, creates[n])
    assert sum(api.billed.values()) - count <= sum(c - 1 for c in creates.values())


def _read(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _lines(path: Path) -> int:
    return len(_read(path))


def _creates(redis_url: str, namespace: str, results: Path) -> dict[int, int]:
    """createTasks sent per task id, from the Redis journal."""
    from captchaflow.engine.cli._batch_io import job_prefix

    prefix = job_prefix(str(results))

    async def read() -> dict[int, int]:
        journal = RedisJournal.from_url(redis_url, namespace=namespace)
        try:
            found = {}
            for n in range(60):
                entry = await journal.get(f"{prefix}/{json.dumps(n)}")
                found[n] = entry.creates if entry is not None else 0
            return found
        finally:
            await journal.aclose()

    return anyio.run(read, backend="asyncio")


@pytest.mark.anyio
async def test_redis_going_away_mid_run_stops_no_job_in_flight(
    service: tuple[BillingAPI, str], redis_namespace: str
) -> None:
    """Redis stops (its data saved) while jobs run and starts again 1.5 s later: the jobs in
    flight go on, the worker takes no new ones meanwhile, and takes them again after."""
    api, url = service
    server = RedisServer().start()
    try:
        count, stop = 12, anyio.Event()
        async with shared_engine(
            server.url, KEY, worker="w", namespace=redis_namespace, base_url=url, timeout=60.0
        ) as runtime:
            await runtime.queue.enqueue_many((f"job-{n}", task(n)) for n in range(count))
            worker = Worker(runtime.engine, runtime.queue, consumer="w", concurrency=4)
            async with anyio.create_task_group() as group:
                group.start_soon(lambda: worker.run(stop=stop))
                await until(lambda: len(worker.running) == 4, 30)
                before = set(worker.running)
                await anyio.to_thread.run_sync(_shutdown_saving, server)
                await anyio.sleep(1.5)
                assert set(worker.running) <= before  # nothing new taken while away
                await anyio.to_thread.run_sync(server.start)
                await until(lambda: worker.finished == count, 60)
                stop.set()
        assert [api.billed[body(n)] for n in range(count)] == [1] * count
    finally:
        server.close()


@pytest.mark.anyio
async def test_a_worker_stops_a_job_another_worker_took_over_and_publishes_nothing(
    redis_url: str, redis_namespace: str
) -> None:
    """A worker presumed dead (here: its item claimed by another consumer while it still
    runs it) learns so at its next touch: it stops the job, publishes and acks nothing, and
    the new owner finishes it from the journal, polling the task already created: billed
    once, one result."""
    api = BillingAPI(scenario(solve=3.0, spread=0.0))
    options = {"namespace": redis_namespace, "timeout": 60.0, "idle_takeover": 0.6}
    with simulator_in_thread(api) as server:
        async with (
            shared_engine(redis_url, KEY, worker="a", base_url=server.base_url, **options) as a,  # type: ignore[arg-type]
            shared_engine(redis_url, KEY, worker="b", base_url=server.base_url, **options) as b,  # type: ignore[arg-type]
            anyio.create_task_group() as group,
        ):
            await a.queue.enqueue("job-0", task(0))
            first = Worker(a.engine, a.queue, consumer="a", concurrency=1)
            stop_a = anyio.Event()
            group.start_soon(lambda: first.run(stop=stop_a))
            journal = a.engine.journal
            assert journal is not None

            async def created() -> bool:
                entry = await journal.get("job-0")
                return entry is not None and entry.task_id is not None

            with anyio.fail_after(30):
                while not await created():  # noqa: ASYNC110 (polling Redis: no event)
                    await anyio.sleep(0.02)
            (item,) = first.running.values()
            await a.queue.client.xclaim(  # another worker takes the item over
                a.queue.tasks_key,
                a.queue.group,
                "b",
                min_idle_time=0,
                message_ids=[item.message_id],
            )
            await until(lambda: first.lost == 1 and not first.running, 10)
            stop_a.set()  # else it may take the item back itself once "b" leaves it idle
            second = Worker(b.engine, b.queue, consumer="b", concurrency=1)
            stop_b = anyio.Event()
            group.start_soon(lambda: second.run(stop=stop_b))
            results: dict[str, object] = {}
            after = "0"
            with anyio.fail_after(30):
                while not results:
                    after, pairs = await a.queue.results(after, block=1.0)
                    results.update(pairs)
            await until(lambda: second.finished == 1, 10)
            stop_b.set()
    assert first.finished == 0 and first.lost == 1 and second.taken_over == 1
    assert results["job-0"]["state"] == "ready"  # type: ignore[index]
    assert api.billed[body(0)] == 1


async def until(condition: Callable[[], bool], seconds: float) -> None:
    """Return once `condition()` holds; fail after `seconds`."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 (a plain condition: no event to wait on)
            await anyio.sleep(0.02)


def _shutdown_saving(server: RedisServer) -> None:
    """Stop `server` the way a restart does, its data saved to disk first."""
    import redis

    client = redis.Redis(port=server.port)
    with contextlib.suppress(redis.ConnectionError):  # it closes the connection as it stops
        client.shutdown(save=True)
    assert server.proc is not None
    server.proc.wait(timeout=10)
    server.proc = None


@pytest.mark.parametrize(
    ("command", "url", "says"),
    [
        (["worker"], "http://not-redis", "Redis URL must specify one of the following schemes"),
        (["worker"], "redis://127.0.0.1:1/0", "Redis is unreachable"),
        (["batch", "TASKS", "-o", "RESULTS"], "redis://127.0.0.1:1/0", "Redis is unreachable"),
    ],
    ids=["worker-bad-url", "worker-unreachable", "batch-unreachable"],
)
def test_a_redis_that_cannot_be_used_is_a_one_line_usage_error(
    tmp_path: Path, command: list[str], url: str, says: str
) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(task(1)) + "\n")
    args = [
        str(tasks) if word == "TASKS" else str(tmp_path / "r.jsonl") if word == "RESULTS" else word
        for word in command
    ]
    done = finish(start([*args, "--redis", url]))
    assert done.code == 2
    errors = [line for line in done.err.splitlines() if line.startswith("captchaflow: error:")]
    assert len(errors) == 1 and "--redis: " in errors[0] and says in errors[0], done.err


def test_the_queue_options_default_to_the_distributed_namespace() -> None:
    """`--namespace` defaults to the distributed package's namespace (written twice, so
    that `--help` does not load redis: this holds the two together)."""
    from captchaflow.engine.cli._args import REDIS_NAMESPACE
    from captchaflow.engine.distributed import DEFAULT_NAMESPACE

    assert REDIS_NAMESPACE == DEFAULT_NAMESPACE


def test_a_worker_refuses_an_idle_takeover_that_is_not_positive_seconds() -> None:
    done = finish(start(["worker", "--redis", "redis://127.0.0.1:1/0", "--idle-takeover", "nan"]))
    assert done.code == 2 and "argument --idle-takeover" in done.err, done.err


@pytest.mark.parametrize("ident", [7, "7", "a/b", "ünï"])
def test_a_batch_job_id_gives_back_the_task_id(ident: object) -> None:
    """What `batch --redis` names a job, a worker reads the task's id back from: 7 and
    "7" stay two ids, and a slash in an id is kept."""
    from captchaflow.engine.cli._batch_io import Entry, batch_id_of, batch_job_id, job_prefix

    entry = Entry(1, ident, task(1))  # type: ignore[arg-type]
    assert batch_id_of(batch_job_id(job_prefix("results.jsonl"), entry)) == ident
