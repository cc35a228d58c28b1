"""`WorkQueue`: tasks shared by workers through a Redis Stream and consumer group, on a real
Redis: each task goes to one worker, a dead worker's tasks are taken over after the idle
timeout (a live one keeps its own by touching them), malformed messages are dropped without
crashing anyone, results go round, and Redis going away is a typed error that ends when
Redis is back.

asyncio only: redis-py's client does not run on trio."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
import attrs
import pytest
import redis.asyncio
from redis_server import RedisServer

from captchaflow.engine.distributed._queue import (
    QueueError,
    QueueUnavailableError,
    RedisUnavailableError,
    WorkItem,
    WorkQueue,
)
from captchaflow.transports import JsonValue

TASK: dict[str, JsonValue] = {"type": "ImageToTextTask", "body": "aGk="}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    made = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
async def queue(client: redis.asyncio.Redis, redis_namespace: str) -> WorkQueue:
    made = WorkQueue(client, namespace=redis_namespace, idle_takeover=0.3)
    await made.ensure_group()
    return made


def _task(n: int) -> dict[str, JsonValue]:
    return {**TASK, "n": n}


# -- taking and acking -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_tasks_are_taken_in_order_and_acked(queue: WorkQueue) -> None:
    ids = [await queue.enqueue(f"j{n}", _task(n)) for n in range(3)]
    assert await queue.backlog() == 3 and await queue.pending_count() == 0
    items = await queue.take("w1", 10, block=0)
    assert [(i.message_id, i.job_id, i.task) for i in items] == [
        (ids[n], f"j{n}", _task(n)) for n in range(3)
    ]
    assert all(i.deliveries == 1 and not i.taken_over for i in items)
    assert await queue.pending_count() == 3 and await queue.backlog() == 3
    assert await queue.take("w1", 10, block=0) == []
    assert [await queue.ack(item) for item in items] == [True, True, True]
    assert await queue.ack(items[0]) is False  # done already
    assert await queue.pending_count() == 0 and await queue.backlog() == 0


@pytest.mark.anyio
async def test_enqueue_many_keeps_the_order(queue: WorkQueue) -> None:
    items = [(f"j{n}", _task(n)) for n in range(1200)]  # more than one round trip
    ids = await queue.enqueue_many(items)
    assert len(ids) == 1200 and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    taken = await queue.take("w1", 2000, block=0)
    assert [item.job_id for item in taken] == [job_id for job_id, _ in items]


@pytest.mark.anyio
async def test_a_take_waits_up_to_block_for_new_work(queue: WorkQueue) -> None:
    with anyio.fail_after(5):
        assert await queue.take("w1", 1, block=0.1) == []

    async def later() -> None:
        await anyio.sleep(0.1)
        await queue.enqueue("late", TASK)

    async with anyio.create_task_group() as group:
        group.start_soon(later)
        with anyio.fail_after(5):
            items = await queue.take("w1", 1, block=3)
    assert [item.job_id for item in items] == ["late"]


@pytest.mark.anyio
async def test_tasks_enqueued_before_the_group_exists_are_delivered(
    client: redis.asyncio.Redis, redis_namespace: str
) -> None:
    queue = WorkQueue(client, namespace=redis_namespace)
    await queue.enqueue("early", TASK)
    items = await queue.take("w1", 5, block=0)  # makes the group, from the first entry
    assert [item.job_id for item in items] == ["early"]
    await queue.ensure_group()  # already there: nothing happens
    assert await queue.pending_count() == 1


@pytest.mark.anyio
async def test_two_consumers_share_the_work_without_duplicates(
    redis_url: str, redis_namespace: str
) -> None:
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]
    queues = [WorkQueue(c, namespace=redis_namespace, idle_takeover=30) for c in clients]
    try:
        await queues[0].ensure_group()
        await queues[0].enqueue_many([(f"j{n}", _task(n)) for n in range(200)])
        got: dict[str, list[str]] = {"a": [], "b": []}

        async def work(name: str, queue: WorkQueue) -> None:
            while items := await queue.take(name, 5, block=0):
                for item in items:
                    got[name].append(item.job_id)
                    await queue.ack(item)

        async with anyio.create_task_group() as group:
            group.start_soon(work, "a", queues[0])
            group.start_soon(work, "b", queues[1])
        assert got["a"] and got["b"]
        assert sorted(got["a"] + got["b"]) == sorted(f"j{n}" for n in range(200))
        assert await queues[1].backlog() == 0
    finally:
        for c in clients:
            await c.aclose()


# -- a dead worker's work ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_dead_consumers_items_are_taken_over_after_the_idle_time(
    queue: WorkQueue,
) -> None:
    for n in range(3):
        await queue.enqueue(f"j{n}", _task(n))
    taken = await queue.take("dead", 3, block=0)  # and never acked
    assert await queue.take("alive", 3, block=0) == []  # not idle long enough yet
    await anyio.sleep(0.45)
    again = await queue.take("alive", 3, block=0)
    assert [i.message_id for i in again] == [i.message_id for i in taken]
    assert [i.job_id for i in again] == ["j0", "j1", "j2"]
    assert all(i.taken_over and i.deliveries == 2 for i in again)
    assert await queue.pending_count() == 3
    assert await queue.touch("dead", taken) == taken  # all lost: the dead one's touch says so
    assert await queue.touch("alive", again) == []  # and does not take them back


@pytest.mark.anyio
async def test_takeover_takes_no_more_than_asked_and_then_new_work(queue: WorkQueue) -> None:
    for n in range(4):
        await queue.enqueue(f"j{n}", _task(n))
    await queue.take("dead", 3, block=0)
    await anyio.sleep(0.45)
    first = await queue.take("alive", 2, block=5)  # two idle ones: no wait, no new work
    assert [(i.job_id, i.taken_over) for i in first] == [("j0", True), ("j1", True)]
    second = await queue.take("alive", 2, block=5)  # the last idle one, then a new one
    assert [(i.job_id, i.taken_over) for i in second] == [("j2", True), ("j3", False)]


@pytest.mark.anyio
async def test_touching_keeps_a_live_consumers_items(queue: WorkQueue) -> None:
    for n in range(3):
        await queue.enqueue(f"j{n}", _task(n))
    mine = await queue.take("slow", 3, block=0)
    for _ in range(10):  # 0.8 s, over twice the idle timeout
        await anyio.sleep(0.08)
        assert await queue.touch("slow", mine) == []
        assert await queue.take("other", 3, block=0) == []
    await anyio.sleep(0.45)  # stops touching: presumed dead
    assert [i.job_id for i in await queue.take("other", 3, block=0)] == ["j0", "j1", "j2"]


@pytest.mark.anyio
async def test_touching_acked_items_reports_them_lost(queue: WorkQueue) -> None:
    await queue.enqueue("j", TASK)
    (item,) = await queue.take("w", 1, block=0)
    await queue.ack(item)
    assert await queue.touch("w", [item]) == [item]
    assert await queue.touch("w", []) == []


@pytest.mark.anyio
async def test_an_entry_deleted_before_it_was_done_is_reported_not_delivered(
    queue: WorkQueue, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(2):
        await queue.enqueue(f"j{n}", _task(n))
    first, _ = await queue.take("dead", 2, block=0)
    await client.xdel(queue.tasks_key, first.message_id)
    await anyio.sleep(0.45)
    with caplog.at_level(logging.WARNING, logger="captchaflow"):
        again = await queue.take("alive", 2, block=0)
    assert [i.job_id for i in again] == ["j1"]
    assert first.message_id in caplog.text and "deleted" in caplog.text


# -- messages that are not tasks ---------------------------------------------------------------


@pytest.mark.anyio
async def test_malformed_messages_are_acked_and_logged_not_returned(
    queue: WorkQueue, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [
        {"task": '{"type": "x"}'},  # no job id
        {"job_id": "a"},  # no task
        {"job_id": "b", "task": "{not json"},
        {"job_id": "c", "task": "[1, 2]"},
        {"job_id": b"\xff", "task": "{}"},
    ]
    for fields in bad:
        await client.xadd(queue.tasks_key, fields)  # type: ignore[arg-type]
    await queue.enqueue("good", TASK)
    with caplog.at_level(logging.WARNING, logger="captchaflow"):
        items = await queue.take("w", 10, block=0)
    assert [i.job_id for i in items] == ["good"]
    assert queue.malformed == len(bad)
    assert caplog.text.count("dropped malformed work message") == len(bad)
    assert await queue.pending_count() == 1  # only the good one waits for its ack


@pytest.mark.anyio
async def test_work_items_are_frozen(queue: WorkQueue) -> None:
    await queue.enqueue("j", TASK)
    (item,) = await queue.take("w", 1, block=0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        item.job_id = "other"  # type: ignore[misc]
    assert isinstance(item, WorkItem)


# -- results -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_results_go_round(queue: WorkQueue, client: redis.asyncio.Redis) -> None:
    records = [{"job_id": f"j{n}", "state": "ready", "solution": {"n": n}} for n in range(3)]
    ids = [await queue.publish_result(f"j{n}", records[n]) for n in range(3)]
    await client.xadd(queue.results_key, {"job_id": "broken", "record": "{"})
    last, pairs = await queue.results(block=0)
    assert pairs == [(f"j{n}", records[n]) for n in range(3)]
    assert last > ids[-1]  # the broken one was read past, not returned
    assert await queue.results(last, block=0.05) == (last, [])

    async def later() -> None:
        await anyio.sleep(0.1)
        await queue.publish_result("j9", {"state": "failed"})

    async with anyio.create_task_group() as group:
        group.start_soon(later)
        with anyio.fail_after(5):
            last2, pairs = await queue.results(last, block=3)
    assert pairs == [("j9", {"state": "failed"})] and last2 != last


@pytest.mark.anyio
@pytest.mark.parametrize(
    "options",
    [{"decode_responses": True}, {"protocol": 2}, {"protocol": 3}],
    ids=["decoded", "resp2", "resp3"],
)
async def test_any_client_shape_works(
    redis_url: str, redis_namespace: str, options: dict[str, object]
) -> None:
    """redis-py's replies differ in shape with the protocol and decoding asked for."""
    client = redis.asyncio.Redis.from_url(redis_url, **options)  # type: ignore[arg-type]
    try:
        queue = WorkQueue(client, namespace=redis_namespace, idle_takeover=0.1)
        await queue.enqueue("j", TASK)
        assert len(await queue.take("dead", 1, block=0)) == 1
        await anyio.sleep(0.2)
        (again,) = await queue.take("alive", 1, block=0)
        assert again.job_id == "j" and again.task == TASK and again.deliveries == 2
        assert await queue.touch("alive", [again]) == []
        assert await queue.backlog() == 1
        assert await queue.ack(again)
        await queue.publish_result("j", {"state": "ready"})
        assert (await queue.results(block=0))[1] == [("j", {"state": "ready"})]
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_backlog_counts_undelivered_entries_after_deletions(
    queue: WorkQueue, client: redis.asyncio.Redis
) -> None:
    """Redis cannot say the group's lag once entries were deleted: they are counted."""
    ids = [await queue.enqueue(f"j{n}", _task(n)) for n in range(5)]
    await queue.take("w", 1, block=0)
    await client.xdel(queue.tasks_key, ids[2])
    assert await queue.backlog() == 1 + 3


@pytest.mark.anyio
async def test_a_key_that_is_not_a_stream_is_a_queue_error(
    queue: WorkQueue, client: redis.asyncio.Redis
) -> None:
    await client.delete(queue.tasks_key)
    await client.set(queue.tasks_key, "x")
    with pytest.raises(QueueError, match="WRONGTYPE"):
        await queue.enqueue("j", TASK)
    with pytest.raises(QueueError):
        await queue.take("w", 1, block=0)


# -- Redis going away --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_redis_going_away_is_a_typed_error_and_coming_back_ends_it(
    private_redis: RedisServer, redis_namespace: str
) -> None:
    queue = WorkQueue.from_url(private_redis.url, namespace=redis_namespace, retry_for=0.3)
    try:
        await queue.ensure_group()
        await queue.enqueue("before", TASK)
        assert len(await queue.take("w", 1, block=0)) == 1
        await anyio.to_thread.run_sync(private_redis.stop)
        for call in (
            lambda: queue.take("w", 1, block=0),
            lambda: queue.enqueue("during", TASK),
            lambda: queue.publish_result("before", {"state": "ready"}),
            queue.backlog,
        ):
            with pytest.raises(QueueUnavailableError, match="unreachable") as raised:
                await call()
            assert isinstance(raised.value, RedisUnavailableError)
        await anyio.to_thread.run_sync(private_redis.start)
        # A Redis without persistence comes back empty: the group is made again on use.
        assert await queue.take("w", 1, block=0) == []
        await queue.enqueue("after", TASK)
        assert [i.job_id for i in await queue.take("w", 1, block=0)] == ["after"]
    finally:
        await queue.aclose()


@pytest.mark.anyio
async def test_a_call_made_while_redis_is_away_lands_when_it_is_back_in_time(
    private_redis: RedisServer, redis_namespace: str
) -> None:
    queue = WorkQueue.from_url(private_redis.url, namespace=redis_namespace, retry_for=30)
    try:
        await queue.ensure_group()
        await anyio.to_thread.run_sync(private_redis.stop)
        done = anyio.Event()

        async def enqueue() -> None:
            await queue.enqueue("during", TASK)
            done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(enqueue)
            await anyio.sleep(0.45)
            assert not done.is_set()
            await anyio.to_thread.run_sync(private_redis.start)
            with anyio.fail_after(10):
                await done.wait()
        assert [i.job_id for i in await queue.take("w", 1, block=0)] == ["during"]
    finally:
        await queue.aclose()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="run"):
        WorkQueue(redis.asyncio.Redis(), run="a:b")
    with pytest.raises(ValueError, match="idle_takeover"):
        WorkQueue(redis.asyncio.Redis(), idle_takeover=0)
