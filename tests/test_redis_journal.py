"""`RedisJournal`: the behaviour tests every journal passes (imported from test_journal,
run here on a `journal` fixture of Redis's), and what Redis adds: changes from many clients
at once are atomic, data that is not a journal is refused and left as it is, and a change
made while Redis is away waits for it to come back (or says it is unreachable).

asyncio only: redis-py's client does not run on trio."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import anyio.to_thread
import pytest
import redis.asyncio
from redis_server import RedisServer
from test_journal import (
    OTHER,
    TASK,
    Counting,
    _engine,
    test_a_create_that_created_nothing_goes_back_to_new,
    test_a_different_task_replaces_one_with_nothing_in_flight,
    test_a_different_task_under_an_id_in_flight_is_a_conflict,
    test_a_job_cancelled_with_a_live_task_stays_resumable,
    test_a_job_goes_through_every_stage,
    test_a_journalled_task_id_is_polled_not_created_again,
    test_a_solved_job_is_returned_from_the_journal_sending_nothing,
    test_adding_a_known_job_again_keeps_its_record,
    test_an_ambiguous_create_fails_unsent_when_asked,
    test_an_ambiguous_create_is_created_again_by_default,
    test_an_interrupt_lets_a_journalled_create_in_flight_finish,
    test_changes_made_at_once_all_land_and_an_error_stays_its_own,
    test_changing_a_job_that_was_never_added_is_an_error,
    test_integer_task_ids_come_back_as_integers,
    test_the_task_id_is_journalled_before_the_first_poll,
    test_under_fail_a_job_failed_for_an_ambiguous_create_stays_failed,
    test_unfinished_lists_entries_in_the_order_they_were_added,
)

from captchaflow.engine.distributed._journal import JournalUnavailableError, RedisJournal
from captchaflow.engine.distributed._keys import redis_key
from captchaflow.engine.distributed._queue import RedisUnavailableError
from captchaflow.engine.journal import (
    JournalConflictError,
    JournalCorruptError,
    JournalError,
    JournalFormatError,
    Stage,
)
from captchaflow.transports import ApiReply

__all__ = [  # the shared behaviour tests, collected here with this module's `journal`
    "test_a_create_that_created_nothing_goes_back_to_new",
    "test_a_different_task_replaces_one_with_nothing_in_flight",
    "test_a_different_task_under_an_id_in_flight_is_a_conflict",
    "test_a_job_cancelled_with_a_live_task_stays_resumable",
    "test_a_job_goes_through_every_stage",
    "test_a_journalled_task_id_is_polled_not_created_again",
    "test_a_solved_job_is_returned_from_the_journal_sending_nothing",
    "test_adding_a_known_job_again_keeps_its_record",
    "test_an_ambiguous_create_fails_unsent_when_asked",
    "test_an_ambiguous_create_is_created_again_by_default",
    "test_an_interrupt_lets_a_journalled_create_in_flight_finish",
    "test_changes_made_at_once_all_land_and_an_error_stays_its_own",
    "test_changing_a_job_that_was_never_added_is_an_error",
    "test_integer_task_ids_come_back_as_integers",
    "test_the_task_id_is_journalled_before_the_first_poll",
    "test_under_fail_a_job_failed_for_an_ambiguous_create_stays_failed",
    "test_unfinished_lists_entries_in_the_order_they_were_added",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def journal(redis_url: str, redis_namespace: str) -> AsyncIterator[RedisJournal]:
    made = RedisJournal.from_url(redis_url, namespace=redis_namespace)
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    made = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield made
    finally:
        await made.aclose()


def _key(namespace: str, *parts: str) -> str:
    return redis_key(namespace, "journal", "default", *parts)


# -- what Redis adds: many clients, one record -----------------------------------------------


@pytest.mark.anyio
async def test_a_second_client_sees_every_change(redis_url: str, redis_namespace: str) -> None:
    first = RedisJournal.from_url(redis_url, namespace=redis_namespace)
    second = RedisJournal.from_url(redis_url, namespace=redis_namespace)
    try:
        await first.add("a", TASK)
        await first.sending("a")
        await first.created("a", "T-1")
        await first.add("b", OTHER)
        entry = await second.get("a")
        assert entry is not None and entry.stage is Stage.CREATED and entry.task_id == "T-1"
        assert [e.job_id for e in await second.unfinished()] == ["a", "b"]
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.anyio
async def test_runs_and_namespaces_keep_their_own_records(
    client: redis.asyncio.Redis, redis_namespace: str
) -> None:
    one = RedisJournal(client, namespace=redis_namespace, run="one")
    two = RedisJournal(client, namespace=redis_namespace, run="two")
    await one.add("a", TASK)
    assert await two.get("a") is None and await two.unfinished() == []
    await two.add("a", OTHER)
    await one.sending("a")
    with pytest.raises(JournalConflictError):
        await one.add("a", OTHER)
    assert (await two.add("a", TASK)).task == TASK  # two's "a" was never sent: replaced


@pytest.mark.anyio
async def test_fifty_clients_adding_one_job_at_once_make_one_entry(
    redis_url: str, redis_namespace: str, client: redis.asyncio.Redis
) -> None:
    journals = [RedisJournal.from_url(redis_url, namespace=redis_namespace) for _ in range(50)]
    entries = []

    async def add(journal: RedisJournal) -> None:
        entries.append(await journal.add("a", TASK))

    try:
        async with anyio.create_task_group() as group:
            for journal in journals:
                group.start_soon(add, journal)
    finally:
        for journal in journals:
            await journal.aclose()
    assert len(entries) == 50 and all(entry == entries[0] for entry in entries)
    assert await client.get(_key(redis_namespace, "seq")) == b"1"
    assert await client.zrange(_key(redis_namespace, "unfinished"), 0, -1) == [b"a"]


@pytest.mark.anyio
async def test_concurrent_changes_from_many_clients_all_land(
    redis_url: str, redis_namespace: str
) -> None:
    """No lost update: 100 jobs each sent and created through five clients at once, and
    one job sent by every client at once (each send counted)."""
    journals = [RedisJournal.from_url(redis_url, namespace=redis_namespace) for _ in range(5)]
    try:
        for n in range(100):
            await journals[0].add(f"j{n}", TASK)
        await journals[0].add("busy", TASK)

        async def one(n: int) -> None:
            await journals[n % 5].sending(f"j{n}")
            await journals[(n + 1) % 5].created(f"j{n}", n)

        async with anyio.create_task_group() as group:
            for n in range(100):
                group.start_soon(one, n)
            for journal in journals * 4:
                group.start_soon(journal.sending, "busy")
        entries = {entry.job_id: entry for entry in await journals[3].unfinished()}
    finally:
        for journal in journals:
            await journal.aclose()
    assert [(entries[f"j{n}"].stage, entries[f"j{n}"].task_id) for n in range(100)] == [
        (Stage.CREATED, n) for n in range(100)
    ]
    assert entries["busy"].stage is Stage.SENDING and entries["busy"].creates == 20


@pytest.mark.anyio
async def test_a_conflict_changes_nothing(journal: RedisJournal) -> None:
    await journal.add("a", TASK)
    await journal.sending("a")
    before = await journal.get("a")
    with pytest.raises(JournalConflictError, match="different task"):
        await journal.add("a", OTHER)
    assert await journal.get("a") == before


@pytest.mark.anyio
async def test_a_replaced_job_keeps_its_place_and_its_count(journal: RedisJournal) -> None:
    """As in SQLite: a job finished and added again with another task stays where it was
    first added, with its createTask count."""
    for name in ("a", "b"):
        await journal.add(name, TASK)
    await journal.sending("a")
    await journal.created("a", "T-1")
    await journal.finished("a", {"state": "ready", "solution": {"text": "x"}})
    entry = await journal.add("a", OTHER)
    assert entry.task == OTHER and entry.creates == 1 and entry.task_id is None
    assert [e.job_id for e in await journal.unfinished()] == ["a", "b"]


@pytest.mark.anyio
async def test_finished_jobs_leave_the_unfinished_index(
    journal: RedisJournal, client: redis.asyncio.Redis, redis_namespace: str
) -> None:
    await journal.add("a", TASK)
    await journal.finished("a", {"state": "failed", "error": "X", "message": ""})
    assert await client.zcard(_key(redis_namespace, "unfinished")) == 0
    await journal.sending("a")  # a change after the end puts it back, as in SQLite
    assert [e.job_id for e in await journal.unfinished()] == ["a"]


@pytest.mark.anyio
async def test_the_format_version_is_written_on_first_use(
    journal: RedisJournal, client: redis.asyncio.Redis, redis_namespace: str
) -> None:
    assert await journal.get("a") is None
    assert await client.get(_key(redis_namespace, "format")) is None  # a read writes nothing
    await journal.add("a", TASK)
    assert await client.get(_key(redis_namespace, "format")) == b"1"


@pytest.mark.anyio
async def test_the_api_key_is_never_written(
    journal: RedisJournal, client: redis.asyncio.Redis, redis_namespace: str
) -> None:
    api = Counting(ApiReply.json({"taskId": 9}))
    engine = _engine(api, journal)  # its key: "secret-key-for-tests"
    job = await engine.run_recorded("a", TASK)
    assert job.solution == {"text": "xyz"}
    keys = [key async for key in client.scan_iter(match=f"{redis_namespace}:*")]
    assert keys
    for key in keys:
        dumped = await client.dump(key)
        assert dumped is not None and b"secret-key-for-tests" not in dumped


@pytest.mark.anyio
async def test_a_decoding_client_works_too(redis_url: str, redis_namespace: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    journal = RedisJournal(client, namespace=redis_namespace)
    try:
        await journal.add("a", TASK)
        await journal.sending("a")
        await journal.created("a", 5)
        entry = await journal.get("a")
        assert entry is not None and entry.task_id == 5 and entry.task == TASK
        assert [e.job_id for e in await journal.unfinished()] == ["a"]
    finally:
        await journal.aclose()
        await client.aclose()  # a client passed in stays the caller's to close


# -- data that is not a journal --------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("version", [b"2", b"99"])
async def test_a_newer_format_is_refused(
    journal: RedisJournal, client: redis.asyncio.Redis, redis_namespace: str, version: bytes
) -> None:
    await journal.add("a", TASK)
    await client.set(_key(redis_namespace, "format"), version)
    for call in (
        lambda: journal.add("b", TASK),
        lambda: journal.get("a"),
        lambda: journal.sending("a"),
        journal.unfinished,
    ):
        with pytest.raises(JournalFormatError, match="newer captchaflow"):
            await call()
    assert await client.exists(_key(redis_namespace, "job", "b")) == 0
    assert (await client.hget(_key(redis_namespace, "job", "a"), "stage")) == b"new"


async def _damage(client: redis.asyncio.Redis, namespace: str, kind: str) -> None:
    job = _key(namespace, "job", "a")
    if kind == "format-not-a-number":
        await client.set(_key(namespace, "format"), "one")
    elif kind == "format-a-list":
        await client.delete(_key(namespace, "format"))
        await client.rpush(_key(namespace, "format"), "1")
    elif kind == "job-a-string":
        await client.delete(job)
        await client.set(job, "x")
    elif kind == "job-without-task":
        await client.hdel(job, "task")
    elif kind == "task-not-json":
        await client.hset(job, "task", "{not json")
    elif kind == "task-a-list":
        await client.hset(job, "task", "[1]")
    elif kind == "unknown-stage":
        await client.hset(job, "stage", "exploded")
    elif kind == "creates-not-a-number":
        await client.hset(job, "creates", "many")
    elif kind == "index-a-string":
        await client.delete(_key(namespace, "unfinished"))
        await client.set(_key(namespace, "unfinished"), "x")
    elif kind == "task-not-utf8":
        await client.hset(job, "task", b"\xff\xfe")


STRUCTURE = [
    "format-not-a-number",
    "format-a-list",
    "job-a-string",
    "job-without-task",
    "unknown-stage",
    "creates-not-a-number",
]
"""Damage every call meets."""
CONTENT = ["task-not-json", "task-a-list", "task-not-utf8"]
"""Damage the calls that read the entry meet."""


@pytest.mark.anyio
@pytest.mark.parametrize("kind", [*STRUCTURE, *CONTENT, "index-a-string"])
async def test_damaged_data_is_refused_and_left_as_it_is(
    journal: RedisJournal, client: redis.asyncio.Redis, redis_namespace: str, kind: str
) -> None:
    """Never a silent fresh start or a half-done change: a call that meets damaged data
    raises `JournalCorruptError`, and every key is as it was."""
    await journal.add("a", TASK)
    await _damage(client, redis_namespace, kind)
    keys = sorted([key async for key in client.scan_iter(match=f"{redis_namespace}:*")])
    before = [await client.dump(key) for key in keys]
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get": lambda: journal.get("a"),
        "unfinished": journal.unfinished,
        "add": lambda: journal.add("a", OTHER),
        "sending": lambda: journal.sending("a"),
        "finished": lambda: journal.finished("a", {"state": "ready", "solution": {}}),
    }
    if kind in STRUCTURE:
        refused = set(calls)
    elif kind in CONTENT:
        refused = {"get", "unfinished"}
    else:
        refused = {"unfinished", "add", "sending", "finished"}
    for name in refused:
        with pytest.raises(JournalCorruptError, match="left as it is"):
            await calls[name]()
        assert sorted([key async for key in client.scan_iter(match=f"{redis_namespace}:*")]) == (
            keys
        ), name
        assert [await client.dump(key) for key in keys] == before, name


@pytest.mark.anyio
async def test_a_refused_call_on_a_fresh_journal_writes_not_even_the_format(
    journal: RedisJournal, client: redis.asyncio.Redis, redis_namespace: str
) -> None:
    await client.set(_key(redis_namespace, "job", "a"), "not a hash")
    with pytest.raises(JournalCorruptError, match="is a string, not a hash"):
        await journal.add("a", TASK)
    assert await client.exists(_key(redis_namespace, "format"), _key(redis_namespace, "seq")) == 0


@pytest.mark.anyio
async def test_unfinished_reads_a_long_journal_in_order(journal: RedisJournal) -> None:
    for n in range(1200):  # more than one chunk
        await journal.add(f"j{n}", TASK)
        if n % 3 == 0:
            await journal.finished(f"j{n}", {"state": "failed", "error": "X", "message": ""})
    entries = await journal.unfinished()
    assert [e.job_id for e in entries] == [f"j{n}" for n in range(1200) if n % 3]


# -- Redis going away ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_change_while_redis_is_away_says_it_is_unreachable(
    private_redis: RedisServer, redis_namespace: str
) -> None:
    journal = RedisJournal.from_url(private_redis.url, namespace=redis_namespace, retry_for=0.5)
    try:
        await journal.add("a", TASK)
        await anyio.to_thread.run_sync(private_redis.stop)
        started = time.monotonic()
        with pytest.raises(JournalUnavailableError, match="unreachable") as raised:
            await journal.created("a", "T-1")
        assert 0.5 <= time.monotonic() - started < 3.0
        assert isinstance(raised.value, JournalError)
        assert isinstance(raised.value, RedisUnavailableError)
    finally:
        await journal.aclose()


@pytest.mark.anyio
async def test_a_task_id_written_while_redis_is_away_lands_when_it_is_back(
    private_redis: RedisServer, redis_namespace: str
) -> None:
    """The taskId write blocks (sending nothing else) until Redis is back, then lands."""
    journal = RedisJournal.from_url(private_redis.url, namespace=redis_namespace, retry_for=30)
    try:
        await journal.add("a", TASK)
        await journal.sending("a")
        # The private server has no persistence of its own: a snapshot taken now is what it
        # loads when it starts again, as a server with AOF would have its data back.
        await journal.client.save()
        await anyio.to_thread.run_sync(private_redis.stop)
        done = anyio.Event()

        async def write() -> None:
            await journal.created("a", "T-1")
            done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(write)
            await anyio.sleep(0.4)
            assert not done.is_set()
            await anyio.to_thread.run_sync(private_redis.start)
            with anyio.fail_after(10):
                await done.wait()
    finally:
        await journal.aclose()
    fresh = RedisJournal.from_url(private_redis.url, namespace=redis_namespace)
    try:
        entry = await fresh.get("a")
    finally:
        await fresh.aclose()
    assert entry is not None and entry.stage is Stage.CREATED and entry.task_id == "T-1"


@pytest.mark.anyio
async def test_waiting_for_replicas_that_do_not_answer_is_logged_not_fatal(
    redis_url: str, redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    journal = RedisJournal.from_url(
        redis_url, namespace=redis_namespace, wait_replicas=1, wait_timeout=0.05
    )
    try:
        await journal.add("a", TASK)
        await journal.sending("a")
        with caplog.at_level(logging.WARNING, logger="captchaflow"):
            await journal.created("a", "T-1")
        entry = await journal.get("a")
    finally:
        await journal.aclose()
    assert entry is not None and entry.task_id == "T-1"
    assert "reached 0 of 1 replicas" in caplog.text


def test_a_run_name_with_a_colon_is_refused() -> None:
    with pytest.raises(ValueError, match="run"):
        RedisJournal(redis.asyncio.Redis(), run="a:b")
