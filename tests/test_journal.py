"""The job journal: both built-in journals keep the same record, the SQLite file refuses
anything that is not a journal, and `Engine.run_recorded` resumes what an earlier run
journalled without a second createTask, in virtual time."""

from __future__ import annotations

import collections
import pathlib
import sqlite3
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.lowlevel
import attrs
import pytest

from captchaflow.engine import Engine, Job, NoReplyError, VirtualClock, drive_job
from captchaflow.engine.journal import (
    AmbiguousCreate,
    Journal,
    JournalConflictError,
    JournalCorruptError,
    JournalEntry,
    JournalError,
    JournalFormatError,
    MemoryJournal,
    Resume,
    SqliteJournal,
    Stage,
    resume_plan,
)
from captchaflow.policies import Hold, OpenGate
from captchaflow.transports import (
    ApiReply,
    ApiRequest,
    Endpoint,
    HandlerTransport,
    NotSent,
    SentNoReply,
)

TASK = {"type": "ImageToTextTask", "body": "aGk="}
OTHER = {"type": "ImageToTextTask", "body": "b3RoZXI="}
READY = ApiReply.json({"status": "ready", "solution": {"text": "xyz"}})


@pytest.fixture(params=["memory", "sqlite"])
async def journal(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Journal]:
    made: Journal = (
        MemoryJournal() if request.param == "memory" else await SqliteJournal.open(tmp_path / "j")
    )
    try:
        yield made
    finally:
        await made.aclose()


# -- the record ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_job_goes_through_every_stage(journal: Journal) -> None:
    entry = await journal.add("a", TASK)
    assert entry.stage is Stage.NEW and entry.task == TASK and entry.task_id is None
    await journal.sending("a")
    assert (await journal.get("a")).stage is Stage.SENDING  # type: ignore[union-attr]
    await journal.created("a", "T-1")
    entry = await journal.get("a")
    assert entry is not None and entry.stage is Stage.CREATED and entry.task_id == "T-1"
    assert entry.creates == 1
    await journal.finished("a", {"state": "ready", "solution": {"text": "x"}})
    entry = await journal.get("a")
    assert entry is not None and entry.finished and entry.task_id == "T-1"
    assert entry.outcome == {"state": "ready", "solution": {"text": "x"}}
    assert await journal.unfinished() == []


@pytest.mark.anyio
async def test_a_create_that_created_nothing_goes_back_to_new(journal: Journal) -> None:
    await journal.add("a", TASK)
    await journal.sending("a")
    await journal.not_created("a")
    entry = await journal.get("a")
    assert entry is not None and entry.stage is Stage.NEW and entry.creates == 1


@pytest.mark.anyio
async def test_integer_task_ids_come_back_as_integers(journal: Journal) -> None:
    await journal.add("a", TASK)
    await journal.sending("a")
    await journal.created("a", 12345)
    entry = await journal.get("a")
    assert entry is not None and entry.task_id == 12345


@pytest.mark.anyio
async def test_unfinished_lists_entries_in_the_order_they_were_added(journal: Journal) -> None:
    for name in ("c", "a", "b"):
        await journal.add(name, TASK)
    await journal.finished("a", {"state": "failed", "error": "X", "message": ""})
    assert [entry.job_id for entry in await journal.unfinished()] == ["c", "b"]


@pytest.mark.anyio
async def test_adding_a_known_job_again_keeps_its_record(journal: Journal) -> None:
    await journal.add("a", TASK)
    await journal.sending("a")
    await journal.created("a", "T-1")
    again = await journal.add("a", dict(reversed(list(TASK.items()))))  # key order aside
    assert again.stage is Stage.CREATED and again.task_id == "T-1"


@pytest.mark.anyio
@pytest.mark.parametrize("stage", ["sending", "created"])
async def test_a_different_task_under_an_id_in_flight_is_a_conflict(
    journal: Journal, stage: str
) -> None:
    """Running another task under an id whose createTask left could deliver the old task's
    solution or pay twice: refused with a typed error."""
    await journal.add("a", TASK)
    await journal.sending("a")
    if stage == "created":
        await journal.created("a", "T-1")
    with pytest.raises(JournalConflictError, match="'a'"):
        await journal.add("a", OTHER)


@pytest.mark.anyio
@pytest.mark.parametrize("stage", ["new", "finished"])
async def test_a_different_task_replaces_one_with_nothing_in_flight(
    journal: Journal, stage: str
) -> None:
    await journal.add("a", TASK)
    if stage == "finished":
        await journal.finished("a", {"state": "failed", "error": "X", "message": ""})
    entry = await journal.add("a", OTHER)
    assert entry.task == OTHER and entry.stage is Stage.NEW and entry.outcome is None
    stored = await journal.get("a")
    assert stored is not None and stored.task == OTHER and stored.stage is Stage.NEW


@pytest.mark.anyio
async def test_changing_a_job_that_was_never_added_is_an_error(journal: Journal) -> None:
    with pytest.raises(JournalError, match="not in the journal"):
        await journal.sending("nobody")


# -- the SQLite file -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_reopened_sqlite_journal_has_every_change(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal.db"
    first = await SqliteJournal.open(path)
    await first.add("a", TASK)
    await first.sending("a")
    await first.created("a", "T-1")
    await first.add("b", OTHER)
    await first.sending("b")
    await first.aclose()
    second = await SqliteJournal.open(path)
    try:
        entries = {entry.job_id: entry for entry in await second.unfinished()}
    finally:
        await second.aclose()
    assert entries["a"].stage is Stage.CREATED and entries["a"].task_id == "T-1"
    assert entries["b"].stage is Stage.SENDING and entries["b"].task == OTHER


def _journal_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "real.db"
    journal = SqliteJournal(path)
    journal.close()
    return path


def _bad_files() -> dict[str, Callable[[pathlib.Path], pathlib.Path]]:
    def empty(tmp: pathlib.Path) -> pathlib.Path:
        path = tmp / "empty.db"
        path.write_bytes(b"")
        return path

    def truncated(tmp: pathlib.Path) -> pathlib.Path:
        path = _journal_file(tmp)
        path.write_bytes(path.read_bytes()[:50])
        return path

    def text(tmp: pathlib.Path) -> pathlib.Path:
        path = tmp / "results.jsonl"
        path.write_text('{"id": 1, "state": "ready"}\n' * 200)
        return path

    def foreign_sqlite(tmp: pathlib.Path) -> pathlib.Path:
        path = tmp / "other.db"
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE jobs (x)")
        db.commit()
        db.close()
        return path

    return {"empty": empty, "truncated": truncated, "text": text, "foreign": foreign_sqlite}


@pytest.mark.parametrize("kind", list(_bad_files()))
def test_a_file_that_is_not_a_journal_is_refused_and_left_as_it_is(
    tmp_path: pathlib.Path, kind: str
) -> None:
    """Never a silent fresh start: an empty, truncated, foreign or non-SQLite file raises
    `JournalCorruptError` naming it, and its bytes are unchanged."""
    path = _bad_files()[kind](tmp_path)
    before = path.read_bytes()
    with pytest.raises(JournalCorruptError, match=str(path.name)):
        SqliteJournal(path)
    assert path.read_bytes() == before


def test_a_journal_of_a_newer_format_is_refused(tmp_path: pathlib.Path) -> None:
    path = _journal_file(tmp_path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(JournalFormatError, match="newer captchaflow"):
        SqliteJournal(path)


def test_a_journal_in_a_missing_directory_is_a_journal_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(JournalError, match="cannot create journal"):
        SqliteJournal(tmp_path / "no" / "such" / "j.db")


def test_a_new_journal_leaves_no_temporary_file(tmp_path: pathlib.Path) -> None:
    _journal_file(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real.db"]


# -- resuming through the engine -------------------------------------------------------------


class Counting:
    """A handler answering from a fixed set of replies and counting each endpoint's calls."""

    def __init__(self, create: ApiReply | Exception, poll: ApiReply = READY) -> None:
        self.create, self.poll = create, poll
        self.calls: collections.Counter[Endpoint] = collections.Counter()

    def __call__(self, request: ApiRequest) -> ApiReply:
        self.calls[request.endpoint] += 1
        answer = self.create if request.endpoint is Endpoint.CREATE_TASK else self.poll
        if isinstance(answer, Exception):
            raise answer
        return answer


def _engine(api: Counting, journal: Journal, **options: object) -> Engine:
    return Engine(
        "secret-key-for-tests",
        transport=HandlerTransport(api),
        clock=VirtualClock(),
        journal=journal,
        gate=OpenGate(),
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.anyio
async def test_a_journalled_task_id_is_polled_not_created_again(journal: Journal) -> None:
    """The resume law: a job whose taskId was journalled sends no createTask on restart."""
    await journal.add("a", TASK)
    await journal.sending("a")
    await journal.created("a", "T-7")
    api = Counting(ApiReply.json({"taskId": "NEW"}))
    job = await _engine(api, journal).run_recorded("a", TASK)
    assert job.solution == {"text": "xyz"} and job.task_id == "T-7"
    assert api.calls[Endpoint.CREATE_TASK] == 0 and api.calls[Endpoint.GET_TASK_RESULT] == 1
    assert "resumed from the journal" in job.history[0].cause
    entry = await journal.get("a")
    assert entry is not None and entry.finished and entry.outcome is not None
    assert entry.outcome["state"] == "ready"


@pytest.mark.anyio
async def test_a_solved_job_is_returned_from_the_journal_sending_nothing(
    journal: Journal,
) -> None:
    api = Counting(ApiReply.json({"taskId": 1}))
    engine = _engine(api, journal)
    first = await engine.run_recorded("a", TASK)
    again = await engine.run_recorded("a", TASK)
    assert first.solution == again.solution == {"text": "xyz"}
    assert api.calls == {Endpoint.CREATE_TASK: 1, Endpoint.GET_TASK_RESULT: 1}


@pytest.mark.anyio
async def test_the_task_id_is_journalled_before_the_first_poll(journal: Journal) -> None:
    stages: list[Stage | None] = []

    def handler(request: ApiRequest) -> ApiReply:
        if request.endpoint is Endpoint.CREATE_TASK:
            return ApiReply.json({"taskId": 5})
        stages.append(getattr(journal_entry.pop(), "stage", None))
        return READY

    journal_entry: list[object] = []
    engine = Engine(
        "k" * 12,
        transport=HandlerTransport(handler),
        clock=VirtualClock(),
        journal=journal,
        gate=OpenGate(),
    )
    original = journal.created

    async def created(job_id: str, task_id: object) -> None:
        await original(job_id, task_id)  # type: ignore[arg-type]
        journal_entry.append(await journal.get(job_id))

    journal.created = created  # type: ignore[method-assign]
    await engine.run_recorded("a", TASK)
    assert stages == [Stage.CREATED]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("failure", "stage"),
    [
        (NotSent("refused"), Stage.NEW),
        (ApiReply.json({"code": 3, "msg": "ZERO_BALANCE"}), Stage.NEW),
        (SentNoReply("timed out"), Stage.SENDING),
    ],
    ids=["not-sent", "api-error", "no-reply"],
)
async def test_a_create_that_may_have_billed_stays_in_doubt(
    tmp_path: pathlib.Path, failure: ApiReply | Exception, stage: Stage
) -> None:
    """After each createTask reply, the journal says whether a task may exist: a request
    that never left or an API error created nothing; a lost reply may have billed one. A job
    that ends in doubt stays unfinished for the next run to decide."""
    journal = MemoryJournal()
    api = Counting(failure)
    stages: list[Stage] = []
    original = journal.not_created

    async def not_created(job_id: str) -> None:
        await original(job_id)
        stages.append(Stage.NEW)

    journal.not_created = not_created  # type: ignore[method-assign]
    engine = _engine(api, journal, timeout=5.0)
    job = await engine.run_recorded("a", TASK)
    assert job.state == "failed"
    entry = await journal.get("a")
    assert entry is not None
    if stage is Stage.NEW:
        assert stages and entry.finished
    else:
        assert not stages and entry.creates >= 1


@pytest.mark.anyio
async def test_an_ambiguous_create_is_created_again_by_default(journal: Journal) -> None:
    await journal.add("a", TASK)
    await journal.sending("a")
    api = Counting(ApiReply.json({"taskId": 1}))
    job = await _engine(api, journal).run_recorded("a", TASK)
    assert job.solution == {"text": "xyz"} and api.calls[Endpoint.CREATE_TASK] == 1
    entry = await journal.get("a")
    assert entry is not None and entry.creates == 2  # the doubtful one and this one


@pytest.mark.anyio
async def test_an_ambiguous_create_fails_unsent_when_asked(journal: Journal) -> None:
    await journal.add("a", TASK)
    await journal.sending("a")
    api = Counting(ApiReply.json({"taskId": 1}))
    engine = _engine(api, journal, ambiguous=AmbiguousCreate.FAIL)
    job = await engine.run_recorded("a", TASK)
    assert isinstance(job.error, NoReplyError) and job.error.name == "AMBIGUOUS_CREATE"
    assert sum(api.calls.values()) == 0
    entry = await journal.get("a")
    assert entry is not None and entry.finished


@pytest.mark.anyio
async def test_a_job_cancelled_with_a_live_task_stays_resumable(journal: Journal) -> None:
    """Interrupting a run (its jobs end `cancelled`) must not forget a task that exists."""
    scope = anyio.CancelScope()

    def handler(request: ApiRequest) -> ApiReply:
        if request.endpoint is Endpoint.CREATE_TASK:
            return ApiReply.json({"taskId": 3})
        scope.cancel()  # interrupted while its first poll is out
        return ApiReply.json({"status": "processing"})

    engine = Engine(
        "k" * 12,
        transport=HandlerTransport(handler),
        clock=VirtualClock(),
        journal=journal,
        gate=OpenGate(),
    )
    with scope:
        await engine.run_recorded("a", TASK)
    entry = await journal.get("a")
    assert entry is not None and entry.stage is Stage.CREATED and entry.task_id == 3


@pytest.mark.anyio
async def test_a_job_cancelled_before_it_sent_anything_is_not_journalled_as_over(
    journal: Journal,
) -> None:
    """A job cancelled while it waited (nothing sent) leaves its entry NEW, not finished
    `cancelled`: a worker told to stop because another took its work over must not write
    over what the new owner records, and a rerun creates it."""

    class Holding(OpenGate):
        def admit(self, job: object, endpoint: Endpoint, *, retry: bool, now: float) -> Hold:
            return Hold(None, "held by the test")

    api = Counting(READY)
    engine = Engine("k" * 12, transport=HandlerTransport(api), journal=journal, gate=Holding())
    started: list[Job] = []
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: engine.run_recorded("a", TASK, started=started.append))
        await anyio.sleep(0.05)
        group.cancel_scope.cancel()
    assert started[0].state == "cancelled" and sum(api.calls.values()) == 0
    entry = await journal.get("a")
    assert entry is not None and entry.stage is Stage.NEW and entry.outcome is None


@pytest.mark.anyio
async def test_run_recorded_without_a_journal_is_a_value_error() -> None:
    engine = Engine("k" * 12, transport=HandlerTransport(Counting(READY)), clock=VirtualClock())
    with pytest.raises(ValueError, match="journal"):
        await engine.run_recorded("a", TASK)


@pytest.mark.anyio
@pytest.mark.parametrize("journalled", [True, False])
async def test_an_interrupt_lets_a_journalled_create_in_flight_finish(
    journal: Journal, journalled: bool
) -> None:
    """Cancelling a run while a createTask is out leaves no doubt for the next run: the
    reply is awaited and its taskId journalled (only a killed process leaves one in doubt).
    Without a journal the send is cut off as before (`journalled=False`: the mutant check
    that the shield, not luck, keeps the taskId)."""
    scope = anyio.CancelScope()

    async def create(request: ApiRequest) -> ApiReply:
        scope.cancel()
        await anyio.lowlevel.checkpoint()  # a checkpoint: a cancellation not shielded lands here
        return ApiReply.json({"taskId": 11})

    class Transport(HandlerTransport):
        async def send(self, request: ApiRequest, *, timeout: float | None = None) -> ApiReply:
            return await create(request)

    engine = Engine(
        "k" * 12,
        transport=Transport(lambda request: READY),
        clock=VirtualClock(),
        journal=journal if journalled else None,
        gate=OpenGate(),
    )
    started: list[Job] = []
    with scope:
        if journalled:
            await engine.run_recorded("a", TASK, started=started.append)
        else:
            started.append(engine.job(TASK))
            await drive_job(started[0], engine.transport, engine.clock)
    assert started[0].state == "cancelled"
    if journalled:
        entry = await journal.get("a")
        assert entry is not None and entry.stage is Stage.CREATED and entry.task_id == 11
    else:
        assert started[0].task_id is None


@pytest.mark.anyio
async def test_under_fail_a_job_failed_for_an_ambiguous_create_stays_failed(
    journal: Journal,
) -> None:
    """`AmbiguousCreate.FAIL` means never paying twice: a rerun of a job it failed sends
    nothing again (under RECREATE, the rerun creates it)."""
    await journal.add("a", TASK)
    await journal.sending("a")
    api = Counting(ApiReply.json({"taskId": 1}))
    for _run in range(2):
        job = await _engine(api, journal, ambiguous=AmbiguousCreate.FAIL).run_recorded("a", TASK)
        assert job.error is not None and job.error.name == "AMBIGUOUS_CREATE"
    assert sum(api.calls.values()) == 0
    job = await _engine(api, journal).run_recorded("a", TASK)
    assert job.solution == {"text": "xyz"} and api.calls[Endpoint.CREATE_TASK] == 1


@pytest.mark.anyio
async def test_changes_made_at_once_all_land_and_an_error_stays_its_own(
    journal: Journal,
) -> None:
    """Group commit: 100 jobs' changes made concurrently are each written, and one change
    of a job never added fails alone, not the changes committed with it."""
    for n in range(100):
        await journal.add(f"j{n}", TASK)
    failures: list[Exception] = []

    async def one(n: int) -> None:
        await journal.sending(f"j{n}")
        await journal.created(f"j{n}", n)

    async def stray() -> None:
        try:
            await journal.created("never-added", 0)
        except JournalError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as group:
        for n in range(100):
            group.start_soon(one, n)
        group.start_soon(stray)
    entries = await journal.unfinished()
    assert [(e.stage, e.task_id) for e in entries] == [(Stage.CREATED, n) for n in range(100)]
    assert len(failures) == 1


def test_the_resume_plan_of_a_solved_job_is_its_solution() -> None:
    """Whoever asks `resume_plan` (not only the engine) is told to return a solution the
    journal holds, not to create the task again."""
    solved = JournalEntry(
        "a", TASK, Stage.FINISHED, "T-1", {"state": "ready", "solution": {"text": "x"}}
    )
    for rule in AmbiguousCreate:
        plan = resume_plan(solved, rule)
        assert plan.solution == {"text": "x"} and plan.task_id == "T-1" and not plan.fail
    failed = attrs.evolve(solved, outcome={"state": "failed", "error": "X", "message": ""})
    assert resume_plan(failed, AmbiguousCreate.RECREATE) == Resume(failed, None)
