"""`captchaflow batch`: its pure parts (lines, entries, records, resuming) in-process, and
the command in real processes against `captchaflow serve-sim` on 127.0.0.1: bad lines,
stop signals mid-batch, resuming, progress lines and exit statuses."""

from __future__ import annotations

import collections
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest
from test_cli import CLI, KEY, KEY_ENV
from test_cli_signals import INTERRUPTED, Finished, finish, start
from test_job import KEY as JOB_KEY
from test_job import fail, new_job
from test_provider_example import serve_sim, stop
from test_sim_server import run_main

from captchaflow.engine import Job
from captchaflow.engine._classify import Accepted, Solved
from captchaflow.engine._job import Send, Wait
from captchaflow.engine.cli._batch_io import (
    CANCELLED,
    BadLine,
    BatchId,
    Intake,
    capped_lines,
    count_lines,
    read_resumed,
    result_of,
)
from captchaflow.engine.cli._batch_tally import Tally
from captchaflow.engine.cli._progress import PROGRESS_ENV, LiveProgress, open_display
from captchaflow.policies import Bucket
from captchaflow.transports import Endpoint

TASK = {"type": "ImageToTextTask", "body": "aGVsbG8="}
CREDIT = 1_000_000
"""The simulated account's balance; each task created costs 1 of it."""


def entry(ident: str | int) -> str:
    """A line of TASKS: `TASK` with id `ident`."""
    return json.dumps({"id": ident, "task": TASK})


# -- lines ---------------------------------------------------------------------------------


def dribble(data: bytes, size: int = 3) -> io.BytesIO:
    """A stream that hands out at most `size` bytes a read, as a slow pipe does."""

    class Slow(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            return super().read(size)

    return Slow(data)


def test_capped_lines_numbers_lines_and_drops_long_ones() -> None:
    """Lines come numbered from 1 without their newline, across reads; a line over the cap
    comes as None (and costs no more than the cap); a last line without newline counts."""
    data = b'{"a": 1}\n\n' + b"x" * 25 + b"\nshort\r\nlast"
    lines = list(capped_lines(dribble(data).read, limit=10))
    assert lines == [(1, b'{"a": 1}'), (2, b""), (3, None), (4, b"short\r"), (5, b"last")]
    assert list(capped_lines(io.BytesIO(b"y" * 11).read, limit=10)) == [(1, None)]
    assert list(capped_lines(io.BytesIO(b"").read)) == []
    assert count_lines(io.BytesIO(b"a\n \n\nb\nc").read) == 3


def take_all(*lines: str) -> tuple[list[tuple[int, BatchId]], list[tuple[int, str]]]:
    """Each good line's (number, id), and each bad line's (number, reason)."""
    intake = Intake()
    good: list[tuple[int, BatchId]] = []
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        try:
            found = intake.take(number, line.encode())
        except BadLine as exc:
            bad.append((number, str(exc)))
        else:
            if found is not None:
                good.append((number, found.id))
    return good, bad


def test_intake_ids_as_given_or_made_from_the_line_number() -> None:
    """`{"id", "task"}` keeps its id (a string or an integer; 7 and "7" are two ids); a
    bare task, or a wrapper without an id, gets `line-N`; blank lines are ignored."""
    good, bad = take_all(
        entry("a"), "", entry(7), entry("7"), json.dumps(TASK), json.dumps({"task": TASK}), "  "
    )
    assert bad == []
    assert good == [(1, "a"), (3, 7), (4, "7"), (5, "line-5"), (6, "line-6")]


def test_intake_bad_lines_say_why_without_their_content() -> None:
    """Each kind of bad line is refused with a reason that holds nothing of the line."""
    secret = KEY
    _, bad = take_all(
        entry("a"),
        "{" + secret,
        json.dumps([secret]),
        json.dumps({"id": "b", "task": {"type": "", "k": secret}}),
        entry("a"),
        json.dumps({"id": True, "task": TASK}),
        json.dumps({"id": 1.5, "task": TASK}),
        json.dumps({"id": "", "task": TASK}),
        json.dumps({"id": "c", "task": TASK, secret: 1}),
        json.dumps({"id": "d", "task": {"type": "T", "n": float("nan")}}),
    )
    reasons = dict(bad)
    assert sorted(reasons) == list(range(2, 11))
    assert reasons[2].startswith("not valid JSON (")
    assert reasons[3] == "not a JSON object"
    assert reasons[4].startswith("invalid task: ")
    assert reasons[5] == "its id is that of an earlier line"
    assert reasons[6] == reasons[7] == reasons[8] == '"id" must be a non-empty string or an integer'
    assert reasons[9] == 'an object with a "task" may have only "id" besides'
    assert reasons[10].startswith("invalid task: ")
    assert not any(fragment in " ".join(reasons.values()) for fragment in (secret, "sk-"))


def test_intake_refuses_a_line_over_the_cap() -> None:
    """A line too long (None from `capped_lines`) is a bad line naming the cap."""
    with pytest.raises(BadLine, match="longer than 8 MiB"):
        Intake().take(4, None)
    with pytest.raises(BadLine, match="not UTF-8"):
        Intake().take(1, b'{"type": "\xff"}')


# -- resuming ------------------------------------------------------------------------------


def test_resume_reads_the_last_record_of_each_id_and_tolerates_a_torn_line() -> None:
    """An id is solved if its last record is ready; lines that are not records (a write
    cut short, garbage) are counted, not fatal."""
    lines = [
        {"id": "a", "state": "failed"},
        {"id": "a", "state": "ready"},
        {"id": "b", "state": "ready"},
        {"id": "b", "state": "cancelled"},
        {"id": 7, "state": "ready"},
        {"id": "c", "state": "failed"},
        [1],
        {"id": True, "state": "ready"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + '\n\n{"id": "d", "sta'
    resumed = read_resumed(io.BytesIO(text.encode()).read)
    assert resumed.solved == {'"a"', "7"}
    assert resumed.unreadable == 3


# -- records -------------------------------------------------------------------------------


def job_fed(*outcomes: object) -> Job:
    """A job (on `test_job`'s key) fed `outcomes` in turn, each the reply to the request
    it sends next."""
    job = new_job(timeout=60, now=100.0)
    now = 100.0
    for outcome in outcomes:
        action = job.next_action(now)
        while isinstance(action, Wait):
            now = action.until
            action = job.next_action(now)
        assert isinstance(action, Send)
        now += 0.25
        job.feed(outcome, now)  # type: ignore[arg-type]
    return job


def parsed(line: bytes) -> dict[str, object]:
    """A record line as JSON: one line, ASCII, strict (no NaN or Infinity), no key."""
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert KEY.encode() not in line and JOB_KEY.reveal().encode() not in line

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a record")

    record: dict[str, object] = json.loads(line, parse_constant=refuse)
    return record


def test_record_of_a_solved_task() -> None:
    """A ready record: id as given, the solution as sent, attempts, polls, seconds from
    start to end, and the task id."""
    solution = {"text": "ünï ✓"}
    result = result_of(7, job_fed(Accepted(42), Solved(solution)))
    assert (result.state, result.error) == ("ready", None)
    assert parsed(result.line) == {
        "id": 7,
        "state": "ready",
        "solution": solution,
        "attempts": 1,
        "polls": 1,
        "seconds": 2.5,
        "task_id": 42,
    }


def test_record_of_a_failed_task_names_the_error_without_the_key() -> None:
    """A failed record carries the error's name, code and message; the key is redacted."""
    failure = fail(
        Bucket.PERMANENT,
        Endpoint.CREATE_TASK,
        name="ZERO_BALANCE",
        message=f"no money on {JOB_KEY.reveal()}",
        code=3,
    )
    result = result_of("a", job_fed(failure))
    record = parsed(result.line)
    assert result.state == record["state"] == "failed"
    assert result.error is not None and result.error.name == "ZERO_BALANCE"
    error = record["error"]
    assert isinstance(error, dict)
    assert (error["name"], error["code"]) == ("ZERO_BALANCE", 3)
    assert "solution" not in record and record["task_id"] is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_record_of_a_non_finite_solution_is_a_failure(bad: float) -> None:
    """A solution JSON cannot carry is not written: the record fails, NON_FINITE_NUMBER."""
    result = result_of("a", job_fed(Accepted("t-1"), Solved({"text": "x", "n": [bad]})))
    record = parsed(result.line)
    assert record["state"] == result.state == "failed"
    assert record["error"] == {
        "name": "NON_FINITE_NUMBER",
        "code": None,
        "message": "the solution holds NaN or an infinite number, which JSON cannot carry; "
        "it was not written",
    }
    assert record["task_id"] == "t-1"
    assert result.error is not None and result.error.name == "NON_FINITE_NUMBER"


def test_record_of_a_cancelled_task() -> None:
    """A task cancelled in flight is recorded as cancelled, CANCELLED."""
    job = job_fed(Accepted(5))
    job.cancel(101.0, "the driver was cancelled")
    record = parsed(result_of("a", job).line)
    assert record["state"] == "cancelled"
    assert isinstance(record["error"], dict) and record["error"]["name"] == CANCELLED


# -- counts and exit status ----------------------------------------------------------------


def test_exit_status_is_the_commonest_failure_then_bad_lines() -> None:
    """0 when all is solved; the commonest failure's status (ties: the first name); 2 when
    only lines were bad."""
    tally = Tally(started=0.0, total=10)
    assert tally.exit_status() == 0
    tally.bad_lines = 1
    assert tally.exit_status() == 2
    bad_request = fail(Bucket.BAD_REQUEST, Endpoint.CREATE_TASK, name="ERROR_BAD_PARAMETERS")
    permanent = fail(Bucket.PERMANENT, Endpoint.CREATE_TASK, name="ZERO_BALANCE")
    for failure in (permanent, bad_request):
        tally.add(result_of("x", job_fed(failure)), requests=1)
    assert tally.exit_status() == 4  # a tie: the first name, ERROR_BAD_PARAMETERS
    tally.add(result_of("y", job_fed(permanent)), requests=1)
    assert tally.exit_status() == 3  # ZERO_BALANCE is now the commonest
    assert tally.progress_line(4.0) == (
        "4/10 done (ready 0, failed 3, bad lines 1), 0 running, 0.8 tasks/s"
    )


def test_live_display_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the display is rich's live bar, with the counts and the throughput."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("COLUMNS", "200")
    tally = Tally(started=time.monotonic(), total=4, running=2)
    display = open_display(tally)
    assert isinstance(display, LiveProgress)
    tally.add(result_of("a", job_fed(Accepted(1), Solved({"text": "x"}))), requests=2)
    display.show()
    display.close()
    shown = terminal.getvalue()
    assert "1/4" in shown and "ready 1, failed 0, 2 running, " in shown and " tasks/s" in shown


# -- the command against serve-sim, in real processes --------------------------------------


@attrs.frozen
class Sim:
    """A `captchaflow serve-sim` process: its URL, and its account's credit, which each task
    created costs 1 of (so the service's count of createTasks can be read over HTTP)."""

    url: str

    def created(self) -> int:
        """Tasks created (billed) on the account so far."""
        reply = httpx.post(f"{self.url}/getBalance", json={"clientKey": KEY}, timeout=10)
        return CREDIT - int(reply.json()["balance"])


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """One serve-sim for the module: the key `KEY`, tasks solved in 0.3 s, no latency."""
    scenario = tmp_path_factory.mktemp("sim") / "scenario.json"
    account = {"key": "replaced-by-the-key-flag", "balance": CREDIT, "price": 1}
    scenario.write_text(json.dumps({"accounts": [account], "latency": 0}))
    args = ["--key", KEY, "--solve-seconds", "0.3", "--scenario", str(scenario)]
    with serve_sim(*args) as (proc, url):
        yield Sim(url)
        assert stop(proc, signal.SIGTERM)[0] == 0


def write_tasks(path: Path, *lines: str) -> Path:
    """`path` holding `lines`, one a line."""
    path.write_text("".join(line + "\n" for line in lines))
    return path


def batch_args(sim: Sim, tasks: Path | str, out: Path, *more: str) -> list[str]:
    """The arguments of `captchaflow batch TASKS -o OUT` against `sim`."""
    return ["batch", str(tasks), "-o", str(out), "--base-url", sim.url, *more]


def run_batch(args: list[str], *, stdin: str = "") -> Finished:
    """Run `captchaflow ARGS` to its end (stdin: `stdin`), with the key in the environment;
    check the key and tracebacks never show."""
    proc = subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, KEY_ENV: KEY},
        timeout=30,
        check=False,
    )
    assert KEY not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return Finished(proc.returncode, proc.stdout, proc.stderr)


def records(path: Path, *, torn: int = 0) -> list[dict[str, object]]:
    """Every record of RESULTS `path`; every line must parse (but `torn` of them), and
    none may hold the key."""
    text = path.read_text(encoding="ascii")
    assert KEY not in text
    found, unparseable = [], 0
    for line in text.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            unparseable += 1
    assert unparseable == torn, text
    return found


def states(found: list[dict[str, object]]) -> dict[str, int]:
    """How many records of each state."""
    return dict(collections.Counter(str(record["state"]) for record in found))


def wait_for_records(path: Path, count: int, proc: subprocess.Popen[str]) -> None:
    """Wait until `path` holds `count` records (the batch is then mid-way)."""
    deadline = time.monotonic() + 20
    while not path.exists() or path.read_text().count("\n") < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no records came"
        time.sleep(0.02)


def interrupt_mid_batch(sig: signal.Signals, args: list[str], out: Path, after: int) -> Finished:
    """Start the batch `args`, and send it `sig` once `after` records are in `out` and the
    next tasks are in flight."""
    proc = start(args)
    wait_for_records(out, after, proc)
    time.sleep(0.3)  # the next tasks are created and waiting for their first poll
    proc.send_signal(sig)
    return finish(proc)


def test_bad_lines_are_reported_by_number_and_skipped(sim: Sim, tmp_path: Path) -> None:
    """Good lines are solved; bad ones are reported by number on stderr, without their
    content, and skipped; exit 2; every output line parses."""
    tasks = write_tasks(
        tmp_path / "tasks.jsonl",
        entry("a"),
        "{not json " + KEY,
        "",
        json.dumps([KEY]),
        json.dumps({"id": "b", "task": {"type": "", "k": KEY}}),
        json.dumps(TASK),
        entry("a"),
        json.dumps({"id": 1.5, "task": TASK}),
        entry(7),
    )
    out = tmp_path / "results.jsonl"
    done = run_batch(batch_args(sim, tasks, out))
    assert done.code == 2, done.err
    skipped = [line for line in done.err_lines if line.endswith("; skipped")]
    assert [int(re.findall(r"line (\d+):", line)[0]) for line in skipped] == [2, 4, 5, 7, 8]
    assert all(line.startswith("captchaflow: batch: line ") for line in skipped)
    assert len(done.err_lines) == len(skipped)
    found = records(out)
    assert sorted(str(record["id"]) for record in found) == ["7", "a", "line-6"]
    assert states(found) == {"ready": 3}
    assert re.search(r"^bad lines skipped +5$", done.out, re.MULTILINE), done.out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_stop_signal_mid_batch_records_the_tasks_in_flight_as_cancelled(
    sim: Sim, tmp_path: Path, sig: signal.Signals
) -> None:
    """A stop signal mid-batch: exit 130 and one `interrupted` line; the tasks in flight
    are written as cancelled, those never started are not written; every line parses."""
    tasks = write_tasks(tmp_path / "tasks.jsonl", *(entry(f"t{n}") for n in range(8)))
    out = tmp_path / "results.jsonl"
    done = interrupt_mid_batch(sig, batch_args(sim, tasks, out, "--concurrency", "3"), out, 3)
    assert done.code == 130, done.err
    assert done.err_lines == [INTERRUPTED]
    found = records(out)
    assert states(found) == {"ready": 3, "cancelled": 3}
    assert len({record["id"] for record in found}) == 6
    for record in found:
        if record["state"] == "cancelled":
            assert isinstance(record["error"], dict) and record["error"]["name"] == CANCELLED
            assert record["task_id"] is not None  # created, then cancelled
    assert re.search(r"^final states +cancelled 3 · ready 3$", done.out, re.MULTILINE), done.out


def test_resume_after_interruption_runs_only_the_rest(sim: Sim, tmp_path: Path) -> None:
    """The same command again after an interruption (and a torn last line, as a crash
    leaves) solves only the tasks not solved yet, polling those the first run created (the
    journal has their taskIds) instead of creating them again: each of the 8 tasks is billed
    once; a third run sends nothing at all."""
    tasks = write_tasks(
        tmp_path / "tasks.jsonl", *(entry(n) for n in range(4)), *(entry(f"s{n}") for n in range(4))
    )
    out = tmp_path / "results.jsonl"
    args = batch_args(sim, tasks, out, "--concurrency", "4")
    start = sim.created()
    first = interrupt_mid_batch(signal.SIGINT, args, out, 4)
    assert first.code == 130, first.err
    solved = {record["id"] for record in records(out) if record["state"] == "ready"}
    assert len(solved) == 4
    with out.open("a") as handle:
        handle.write('{"id": "s3", "state": "rea')  # a write cut short by a crash

    second = run_batch(args)
    assert second.code == 0, second.err
    assert second.err_lines == [
        "captchaflow: warning: 1 line of --output could not be read (cut short?): ignored"
    ]
    assert sim.created() - start == 8  # the four not solved were created once, by either run
    found = records(out, torn=1)
    last = {record["id"]: record["state"] for record in found}
    assert set(last.values()) == {"ready"} and len(last) == 8
    assert [record["id"] for record in found if record["state"] == "ready"].count(0) <= 1
    assert re.search(r"^already solved +4$", second.out, re.MULTILINE), second.out

    third = run_batch(args)
    assert third.code == 0, third.err
    assert sim.created() - start == 8
    assert re.search(r"^already solved +8$", third.out, re.MULTILINE), third.out
    assert len(records(out, torn=1)) == len(found)


def test_progress_lines_when_not_a_terminal_and_exit_0(
    sim: Sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not on a terminal, a plain progress line comes every few seconds (here 0.25 s);
    the tasks are read from stdin; all solved: exit 0 and the summary on stdout."""
    monkeypatch.setenv(PROGRESS_ENV, "0.25")
    out = tmp_path / "results.jsonl"
    done = run_batch(batch_args(sim, "-", out), stdin="".join(entry(n) + "\n" for n in range(3)))
    assert done.code == 0, done.err
    progress = re.compile(
        r"captchaflow: batch: \d+/(\d+|\?) done \(ready \d+, failed \d+\), \d+ running, "
        r"\d+\.\d tasks/s"
    )
    assert len(done.err_lines) >= 4, done.err
    assert all(progress.fullmatch(line) for line in done.err_lines), done.err
    assert states(records(out)) == {"ready": 3}
    assert done.out.startswith("captchaflow batch: 3 tasks run in ")
    assert re.search(r"^final states +ready 3$", done.out, re.MULTILINE), done.out


def test_failed_tasks_exit_with_the_status_of_their_error(sim: Sim, tmp_path: Path) -> None:
    """Tasks that fail are recorded with their error; the exit status is solve's for it
    (a deadline too short to poll: DEADLINE_EXCEEDED, 6, and nothing created)."""
    tasks = write_tasks(tmp_path / "tasks.jsonl", entry("a"), entry("b"))
    out = tmp_path / "results.jsonl"
    before = sim.created()
    done = run_batch(batch_args(sim, tasks, out, "--timeout", "1"))
    assert done.code == 6, done.err
    assert sim.created() == before
    found = records(out)
    assert states(found) == {"failed": 2}
    assert {record["error"]["name"] for record in found} == {"DEADLINE_EXCEEDED"}  # type: ignore[index]
    assert re.search(r"^failures +DEADLINE_EXCEEDED 2$", done.out, re.MULTILINE), done.out


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_results_that_cannot_be_written_stop_the_batch(sim: Sim, tmp_path: Path) -> None:
    """A RESULTS that cannot be written (a full disk) stops the batch at once, with one
    line saying so, exit 2: what it would solve could not be kept."""
    tasks = write_tasks(tmp_path / "tasks.jsonl", *(entry(n) for n in range(20)))
    args = ["batch", str(tasks), "-o", "/dev/full", "--base-url", sim.url, "--timeout", "1"]
    done = run_batch(args)  # (a deadline too short to poll: the tasks end at once)
    assert done.code == 2, done.err
    assert done.err_lines == ["captchaflow: error: cannot write --output: No space left on device"]


# -- usage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "argument --concurrency: must be between 1 and 1000000"),
        (["--concurrency", KEY], "argument --concurrency: not an integer"),
        (["--timeout", KEY], "argument --timeout: not a number"),
    ],
)
def test_bad_options_are_usage_errors_without_the_value(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    """A bad option value: exit 2, one line naming the option, not repeating the value."""
    monkeypatch.setenv(KEY_ENV, KEY)
    tasks = write_tasks(tmp_path / "tasks.jsonl", entry("a"))
    code, out, err = run_main(["batch", str(tasks), "-o", str(tmp_path / "r"), *args], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"captchaflow: error: {message}") and err.count("\n") == 1
    assert KEY not in err


def test_unreadable_tasks_and_same_file_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TASKS that cannot be read is named as TASKS, not by its path; RESULTS may not be
    TASKS itself (it would read its own results forever)."""
    monkeypatch.setenv(KEY_ENV, KEY)
    missing = tmp_path / KEY
    code, _, err = run_main(["batch", str(missing), "-o", str(tmp_path / "r")], capsys)
    assert code == 2
    assert err == "captchaflow: error: cannot read TASKS: No such file or directory\n"
    tasks = write_tasks(tmp_path / "tasks.jsonl", entry("a"))
    code, _, err = run_main(["batch", str(tasks), "-o", str(tasks)], capsys)
    assert code == 2
    assert err == "captchaflow: error: TASKS and --output are the same file\n"
    assert tasks.read_text() == entry("a") + "\n"
