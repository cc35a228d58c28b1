"""End-to-end tests of the `captchaflow` command, run as a subprocess against a stub API."""

from __future__ import annotations

import base64
import email.utils
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from stub_api import Reply, Request, StubAPI, accepted, error, processing, raw, ready

KEY = "sk-test-7f3c9a1e-DO-NOT-LEAK"
KEY_ENV = "NOCAPTCHA_API_KEY"
TASK = {"type": "RecaptchaV2TaskProxyless", "websiteURL": "https://a.test", "websiteKey": "k"}
TASK_JSON = json.dumps(TASK)
SOLUTION = {"gRecaptchaResponse": "03AGdBq2-ünï-✓", "extra": {"n": [1, 2.5, None, True]}}

_EXE = shutil.which("captchaflow")
CLI = [_EXE] if _EXE else [sys.executable, "-m", "captchaflow.engine.cli"]

CREATE, RESULT = "/createTask", "/getTaskResult"


@dataclass(frozen=True)
class Run:
    """The outcome of one CLI run."""

    code: int
    out: str
    err: str
    elapsed: float

    @property
    def err_lines(self) -> list[str]:
        """stderr split into lines."""
        return self.err.splitlines()


def run_cli(*args: str, key: str | None = KEY, timeout: float = 60) -> Run:
    """Run `captchaflow solve ARGS` with a clean env; check what every run must respect."""
    env = {name: value for name, value in os.environ.items() if name != KEY_ENV}
    if key is not None:
        env[KEY_ENV] = key
    start = time.monotonic()
    proc = subprocess.run(
        [*CLI, "solve", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    run = Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
    assert KEY not in run.out, "the API key leaked to stdout"
    assert KEY not in run.err, "the API key leaked to stderr"
    assert "Traceback" not in run.err
    return run


def solve(stub: StubAPI, *args: str, key: str | None = KEY, timeout: float = 60) -> Run:
    """Run the CLI against `stub` and check the key reached it, as `clientKey`, every time."""
    run = run_cli(*args, "--base-url", stub.base_url, key=key, timeout=timeout)
    for request in stub.requests:
        assert request.json["clientKey"] == KEY
    return run


def assert_solved(run: Run, solution: object = SOLUTION) -> None:
    """Exit 0, the solution as exactly one line of JSON on stdout, nothing on stderr."""
    assert run.code == 0, run.err
    assert run.out.count("\n") == 1
    assert run.out.endswith("\n")
    assert json.loads(run.out) == solution
    assert run.err == ""


def assert_failed(run: Run, code: int, name: str) -> None:
    """Exit `code`, nothing on stdout, one `captchaflow: ` line on stderr naming `name`."""
    assert run.code == code, run.err
    assert run.out == ""
    assert len(run.err_lines) == 1, run.err
    assert run.err_lines[0].startswith("captchaflow: ")
    assert name in run.err_lines[0]


def gap(first: Request, second: Request) -> float:
    """Seconds between two requests' arrivals."""
    return second.at - first.at


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- success and retries -------------------------------------------------------------------


def test_success_prints_exactly_the_solution() -> None:
    """A solved task prints the API's solution, unchanged, as one JSON line; polls after 2 s."""
    with StubAPI(create=[accepted(123)], result=[ready(SOLUTION)]) as stub:
        run = solve(stub, "--task", TASK_JSON)
    assert_solved(run)
    (create,) = stub.to(CREATE)
    (poll,) = stub.to(RESULT)
    assert create.json == {"clientKey": KEY, "task": TASK}
    assert poll.json == {"clientKey": KEY, "taskId": 123}
    assert 2.0 <= gap(create, poll) < 3.0


def create_retry_gap(first_reply: Reply) -> float:
    """Seconds between the CLI's two createTask requests when the first gets `first_reply`
    and the second is accepted (and the task then solves)."""
    with StubAPI(create=[first_reply, accepted()], result=[ready(SOLUTION)]) as stub:
        run = solve(stub, "--task", TASK_JSON)
    assert_solved(run)
    first, second = stub.to(CREATE)
    return gap(first, second)


def test_rate_limit_waits_retry_after_sec() -> None:
    """RATE_LIMITED with retryAfterSec 1 is retried after 1 s (not before, not much later)."""
    limited = error(16, "RATE_LIMITED", retry_after=1)
    assert 1.0 <= create_retry_gap(limited) < 1.75


def test_retry_after_sec_zero_retries_at_once_and_at_most_six_attempts() -> None:
    """A 0 s hint is honoured exactly (no backoff added), and a request is tried 6 times."""
    with StubAPI(create=[error(16, "RATE_LIMITED", retry_after=0)]) as stub:
        run = solve(stub, "--task", TASK_JSON)
    assert_failed(run, 6, "RATE_LIMITED")
    assert len(stub.requests) == 6
    assert gap(stub.requests[0], stub.requests[-1]) < 2.0


@pytest.mark.parametrize(
    ("code", "name"),
    [(1, "KEY_DOES_NOT_EXIST"), (3, "ZERO_BALANCE"), (14, "PLAN_EXPIRED"), (15, "PLAN_INACTIVE")],
)
def test_permanent_error_is_never_retried(code: int, name: str) -> None:
    """A permanent account error exits 3 after exactly one request, naming the error."""
    with StubAPI(create=[error(code, name), accepted()]) as stub:
        run = solve(stub, "--task", TASK_JSON)
    assert_failed(run, 3, name)
    assert len(stub.requests) == 1


def test_bad_parameters_is_never_retried() -> None:
    """ERROR_BAD_PARAMETERS exits 4 after exactly one request."""
    with StubAPI(create=[error(10, "ERROR_BAD_PARAMETERS"), accepted()]) as stub:
        run = solve(stub, "--task", TASK_JSON)
    assert_failed(run, 4, "ERROR_BAD_PARAMETERS")
    assert len(stub.requests) == 1


def test_unsolvable_gives_up_after_three_resubmits() -> None:
    """A task unsolvable every time is created 4 times in all, then exits 5."""
    creates = [accepted(1), accepted(2), accepted(3), accepted(4), accepted(5)]
    with StubAPI(create=creates, result=[error(12, "ERROR_CAPTCHA_UNSOLVABLE")]) as stub:
        run = solve(stub, "--task", TASK_JSON)
    assert_failed(run, 5, "ERROR_CAPTCHA_UNSOLVABLE")
    assert len(stub.to(CREATE)) == 4
    assert [r.json["taskId"] for r in stub.to(RESULT)] == [1, 2, 3, 4]
    assert all(r.json["task"] == TASK for r in stub.to(CREATE))


def test_unsolvable_then_solved_on_resubmit() -> None:
    """When the resubmitted task solves, the CLI prints its solution and exits 0."""
    unsolvable = error(12, "ERROR_CAPTCHA_UNSOLVABLE")
    with StubAPI(create=[accepted(1), accepted(2)], result=[unsolvable, ready(SOLUTION)]) as stub:
        run = solve(stub, "--task", TASK_JSON)
    assert_solved(run)
    assert len(stub.to(CREATE)) == 2
    assert [r.json["taskId"] for r in stub.to(RESULT)] == [1, 2]


def test_http_503_html_with_retry_after_header() -> None:
    """HTTP 503 with an HTML body is transient; its Retry-After: 1 is waited exactly."""
    outage = raw(
        "<html><body>503 Service Unavailable</body></html>",
        status=503,
        headers={"Content-Type": "text/html", "Retry-After": "1"},
    )
    assert 1.0 <= create_retry_gap(outage) < 1.75


def test_retry_after_http_date_past_deadline_gives_up_at_once() -> None:
    """A Retry-After HTTP-date an hour ahead is understood: the CLI gives up at once."""
    later = email.utils.formatdate(time.time() + 3600, usegmt=True)
    outage = raw("busy", status=503, headers={"Retry-After": later})
    with StubAPI(create=[outage, accepted()]) as stub:
        run = solve(stub, "--task", TASK_JSON, "--timeout", "30")
    assert_failed(run, 6, "HTTP_503")
    assert len(stub.requests) == 1
    assert run.elapsed < 5


def test_malformed_body_is_retried() -> None:
    """A 200 reply that is not JSON is transient: retried after 1-2 s of backoff, then solved."""
    assert 1.0 <= create_retry_gap(raw("not json")) < 2.5


def test_task_never_ready_hits_the_deadline() -> None:
    """A task that stays processing fails with DEADLINE_EXCEEDED (exit 6) at the deadline."""
    with StubAPI(result=[processing()]) as stub:
        run = solve(stub, "--task", TASK_JSON, "--timeout", "3")
    assert_failed(run, 6, "DEADLINE_EXCEEDED")
    # deadline + one poll interval, plus the command's own start-up (about a second, more on
    # a loaded machine), which the engine's clock does not see
    assert 3.0 <= run.elapsed < 3 + 2 + 2
    polls = stub.to(RESULT)
    assert polls
    assert all(gap(a, b) >= 2.0 for a, b in itertools.pairwise(polls))


def test_daily_limit_beyond_deadline_gives_up_at_once() -> None:
    """DAILY_LIMIT_EXCEEDED asking for a day's wait fails at once (exit 6), one request."""
    daily = error(17, "DAILY_LIMIT_EXCEEDED", retry_after=86400)
    with StubAPI(create=[daily, accepted()]) as stub:
        run = solve(stub, "--task", TASK_JSON, "--timeout", "30")
    assert_failed(run, 6, "DAILY_LIMIT_EXCEEDED")
    assert len(stub.requests) == 1
    assert run.elapsed < 5


def test_connection_refused_gives_up_cleanly() -> None:
    """A refused connection is retried until the deadline, then exits 6 naming NOT_SENT."""
    url = f"http://127.0.0.1:{free_port()}"
    run = run_cli("--task", TASK_JSON, "--base-url", url, "--timeout", "4")
    assert_failed(run, 6, "NOT_SENT")
    assert run.elapsed < 4 + 2


# -- input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "key", "mentions"),
    [
        pytest.param(["--task", TASK_JSON], None, KEY_ENV, id="missing-key"),
        pytest.param(["--task", "{not json"], KEY, "JSON", id="invalid-json"),
        pytest.param(["--task", '{"websiteURL": "x"}'], KEY, "type", id="task-without-type"),
        pytest.param(["--task-file", "/nonexistent/task.json"], KEY, "--task-file", id="task-file"),
        pytest.param(
            ["--task", TASK_JSON, "--key-file", "/nonexistent/key"],
            KEY,
            "--key-file",
            id="key-file",
        ),
        pytest.param(["--task", TASK_JSON, "--timeout", "0"], KEY, "--timeout", id="timeout-0"),
        pytest.param(
            ["--task", TASK_JSON, "--base-url", "ftp://x"], KEY, "--base-url", id="base-url-ftp"
        ),
    ],
)
def test_usage_error(args: list[str], key: str | None, mentions: str) -> None:
    """Invalid input exits 2 with one line saying what is wrong, and sends nothing."""
    with StubAPI() as stub:
        base = [] if "--base-url" in args else ["--base-url", stub.base_url]
        run = run_cli(*args, *base, key=key)
    assert_failed(run, 2, mentions)
    assert stub.requests == []


def test_key_file_supplies_the_key(tmp_path: Path) -> None:
    """--key-file is read (trailing newline stripped) when the env var is unset."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    with StubAPI(result=[ready(SOLUTION)]) as stub:
        run = solve(stub, "--task", TASK_JSON, "--key-file", str(key_file), key=None)
    assert_solved(run)
    assert len(stub.requests) == 2


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A --key-file that group or others can read is refused (exit 2) before any request."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY, encoding="utf-8")
    key_file.chmod(mode)
    with StubAPI() as stub:
        run = solve(stub, "--task", TASK_JSON, "--key-file", str(key_file), key=None)
    assert_failed(run, 2, "chmod 600")
    assert f"{mode:04o}" in run.err
    assert stub.requests == []


def test_shared_key_file_accepted_with_override(tmp_path: Path) -> None:
    """--allow-shared-key-file accepts a world-readable key file (containers)."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY, encoding="utf-8")
    key_file.chmod(0o644)
    with StubAPI(result=[ready(SOLUTION)]) as stub:
        run = solve(
            stub,
            "--task",
            TASK_JSON,
            "--key-file",
            str(key_file),
            "--allow-shared-key-file",
            key=None,
        )
    assert_solved(run)


def test_key_is_never_accepted_as_an_argument() -> None:
    """There is no option that takes the key itself: --key is a usage error."""
    run = run_cli("--task", TASK_JSON, "--key", KEY, key=None)
    assert run.code == 2
    assert len(run.err_lines) == 1


def test_image_sends_an_image_to_text_task(tmp_path: Path) -> None:
    """--image sends an ImageToTextTask whose body is the file's bytes in base64."""
    image = tmp_path / "captcha.png"
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    image.write_bytes(data)
    with StubAPI(result=[ready({"text": "w7xk9"})]) as stub:
        run = solve(stub, "--image", str(image))
    assert_solved(run, {"text": "w7xk9"})
    (create,) = stub.to(CREATE)
    assert create.json["task"] == {
        "type": "ImageToTextTask",
        "body": base64.b64encode(data).decode("ascii"),
    }


def test_task_file_is_sent_as_is(tmp_path: Path) -> None:
    """--task-file sends the file's task unchanged."""
    task_file = tmp_path / "task.json"
    task_file.write_text(TASK_JSON, encoding="utf-8")
    with StubAPI(create=[error(10, "ERROR_BAD_PARAMETERS")]) as stub:
        run = solve(stub, "--task-file", str(task_file))
    assert_failed(run, 4, "ERROR_BAD_PARAMETERS")
    assert stub.requests[0].json["task"] == TASK


# -- verbose output and secret hygiene -----------------------------------------------------


def test_verbose_logs_each_transition() -> None:
    """-v logs every state change as a `captchaflow: ` line, then the one error line."""
    script = [error(16, "RATE_LIMITED", retry_after=0), error(3, "ZERO_BALANCE")]
    with StubAPI(create=script) as stub:
        run = solve(stub, "--task", TASK_JSON, "-v")
    assert run.code == 3
    assert run.out == ""
    lines = run.err_lines
    assert all(line.startswith("captchaflow: ") for line in lines)
    moves = [("submitted", "backoff"), ("backoff", "submitted"), ("submitted", "failed")]
    assert len(lines) == len(moves) + 1
    for line, (source, dest) in zip(lines, moves, strict=False):
        assert re.search(rf"\b{source}\b.*\b{dest}\b", line), line
    assert "ZERO_BALANCE" in lines[-1]


def test_key_echoed_in_error_message_is_not_printed() -> None:
    """A server that echoes the key inside `msg` does not make the CLI print it (even -v)."""
    echo = error(1, f"key {KEY} does not exist")
    with StubAPI(create=[echo]) as stub:
        run = solve(stub, "--task", TASK_JSON, "-v")
    assert run.code == 3
    assert "KEY_DOES_NOT_EXIST" in run.err_lines[-1]
    assert len(stub.requests) == 1


# -- regressions (found in review) -------------------------------------------------------


def test_key_is_not_leaked_in_part_by_a_long_message() -> None:
    """No fragment of the key is printed when the echoed key straddles the truncation point."""
    echo = error(1, "x" * 185 + KEY)
    with StubAPI(create=[echo]) as stub:
        run = solve(stub, "--task", TASK_JSON)
    assert_failed(run, 3, "KEY_DOES_NOT_EXIST")
    fragments = {KEY[i : i + 10] for i in range(len(KEY) - 9)}
    assert not any(fragment in run.err for fragment in fragments), run.err


def test_key_echoed_as_task_id_is_not_logged() -> None:
    """A taskId that contains the key is not printed by -v."""
    with StubAPI(create=[accepted(f"task-{KEY}")], result=[processing()]) as stub:
        run = solve(stub, "--task", TASK_JSON, "-v", "--timeout", "2.5")
    assert run.code == 6
    assert "DEADLINE_EXCEEDED" in run.err_lines[-1]


def test_verbose_labels_each_move_with_its_own_task() -> None:
    """The retry of a createTask is not logged as if task 4242 already existed."""
    limited = error(16, "RATE_LIMITED", retry_after=0)
    with StubAPI(create=[limited, accepted(4242)], result=[processing()]) as stub:
        run = solve(stub, "--task", TASK_JSON, "-v", "--timeout", "2.5")
    assert run.code == 6
    (retry,) = [line for line in run.err_lines if re.search(r"backoff\W+submitted", line)]
    assert "4242" not in retry, retry


def test_deeply_nested_task_is_a_usage_error() -> None:
    """A task nested too deeply to encode is invalid input (exit 2), and nothing is sent."""
    depth = 985  # json.loads accepts it; json.dumps in validate_task overflows (CPython 3.11)
    task = '{"type": "T", "a": ' + "[" * depth + "]" * depth + "}"
    with StubAPI() as stub:
        run = solve(stub, "--task", task)
    assert_failed(run, 2, "task")
    assert stub.requests == []
