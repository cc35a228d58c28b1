"""The command line's input checks: usage errors never echo a value, the base URL is checked
before anything is sent, and local inputs are read up to a cap, never whole.

Every check of the command runs it as a subprocess, on real files.
"""

from __future__ import annotations

import base64
import json
import os
import re
import resource
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stub_api import StubAPI, ready
from test_cli import CLI, KEY, KEY_ENV, TASK, TASK_JSON, Run, assert_failed, run_cli

from captchaflow.engine.cli import (
    MAX_IMAGE_BYTES,
    MAX_KEY_FILE_BYTES,
    MAX_SCENARIO_BYTES,
    MAX_TASK_BYTES,
    UsageError,
    build_parser,
)

SOLUTION = {"text": "w7xk9"}


def run_command(*args: str, stdin: int | None = subprocess.DEVNULL) -> Run:
    """Run `captchaflow ARGS` (any command) with the key in the environment; check that no
    part of the key shows and that there is no traceback."""
    env = {**os.environ, KEY_ENV: KEY}
    start = time.monotonic()
    proc = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, stdin=stdin, timeout=60
    )
    run = Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
    assert_no_fragment_of_key(run.out + run.err)
    assert "Traceback" not in run.err
    return run


def assert_no_fragment_of_key(text: str) -> None:
    """Not even 6 consecutive characters of the key appear in `text` (pytest's temporary
    directories, quoted in messages about files, are left out: `pytest-70` holds `test-7`)."""
    text = re.sub(r"pytest-of-[^/\s]*/pytest-\d+", "", text)
    fragments = {KEY[i : i + 6] for i in range(len(KEY) - 5)}
    assert not any(fragment in text for fragment in fragments), text


# -- usage errors never echo a value -------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["solve", "--task", TASK_JSON, f"--key={KEY}"], id="key=value"),
        pytest.param(["solve", "--task", TASK_JSON, "--key", KEY], id="key-value"),
        pytest.param(["solve", "--task", TASK_JSON, KEY], id="stray-value"),
        pytest.param(["solve", "--task", TASK_JSON, "--key-file", KEY], id="key-file"),
        pytest.param(["solve", "--task", TASK_JSON, "--timeout", KEY], id="timeout"),
        pytest.param(["solve", "--task", TASK_JSON, "--base-url", KEY], id="base-url"),
        pytest.param(["solve", "--image", KEY], id="image"),
        pytest.param(["solve", "--task-file", KEY], id="task-file"),
        pytest.param(["solve", "--task", TASK_JSON, f"-v{KEY}"], id="flag-with-value"),
        pytest.param(
            ["solve", "--task", TASK_JSON, f"--allow-shared-key-file={KEY}"], id="flag=value"
        ),
        pytest.param([KEY], id="command"),
        pytest.param(["demo", "--seed", KEY], id="demo-seed"),
        pytest.param(["demo", "--scenario", KEY], id="demo-scenario"),
        pytest.param(["serve-sim", "--port", KEY], id="sim-port"),
        pytest.param(["serve-sim", "--host", KEY], id="sim-host"),
    ],
)
def test_usage_error_never_echoes_a_value(args: list[str]) -> None:
    """A key typed as any option's value (or as the command) is not printed, not even in
    part: exit 2 and one line that names the option."""
    run = run_command(*args)
    assert_failed(run, 2, "error: ")


def test_unknown_option_is_named_and_its_value_hidden() -> None:
    """`--key=VALUE` is reported as `--key=…`: the option the user meant, not the value."""
    run = run_command("solve", "--task", TASK_JSON, f"--key={KEY}")
    assert_failed(run, 2, "unrecognized arguments: --key=…")


def test_invalid_command_lists_the_commands() -> None:
    """An unknown command is answered with the valid ones."""
    run = run_command(KEY)
    commands = "solve, batch, balance, demo, serve-sim, worker, diagram, fsm"
    assert_failed(run, 2, f"invalid choice (choose from {commands})")


_SECRETS = st.builds(
    lambda head, tail: f"sk{head}{tail}",
    st.sampled_from("0123456789ABCXYZ"),
    st.text("abcdefghijkXYZ0123456789-_.:/'\\", min_size=6, max_size=20),
)
_OPTIONS = ["--task", "--task-file", "--image", "--base-url", "--timeout", "--key-file"]


def _placements(secret: str) -> list[list[str]]:
    """Every way of typing `secret` on a command line that we know of."""
    flags = ["-v", "--verbose", "--allow-shared-key-file", "--key", "--token"]  # no -h: help
    return [
        [secret],
        [f"--{secret}"],
        [f"-{secret}"],
        *([option, secret] for option in [*_OPTIONS, "--key", "--seed", "--tasks", "--port"]),
        *([f"{option}={secret}"] for option in [*_OPTIONS, *flags, "--seed", "--port"]),
        *([f"{flag}{secret}"] for flag in ["-v", "-x"]),
    ]


@given(
    secret=_SECRETS,
    command=st.sampled_from([[], ["solve"], ["demo"], ["serve-sim"], ["fsm"]]),
    before=st.lists(st.sampled_from([["--task", TASK_JSON], ["-v"], ["--timeout", "5"]])),
    where=st.integers(min_value=0),
)
def test_no_parser_error_holds_the_value(
    secret: str, command: list[str], before: list[list[str]], where: int
) -> None:
    """Whatever the command and wherever a secret is typed, the parser's error message
    does not contain it (nor its repr)."""
    placements = _placements(secret)
    argv = [*command, *(word for words in before for word in words)]
    argv += placements[where % len(placements)]
    try:
        build_parser().parse_args(argv)
    except UsageError as exc:
        message = str(exc)
    else:
        return
    assert secret not in message, message
    assert repr(secret)[1:-1] not in message, message


# -- base URL ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "mentions"),
    [
        pytest.param("http://127.0.0.1:99999", "port", id="port-out-of-range"),
        pytest.param("http://127.0.0.1:0", "port", id="port-0"),
        pytest.param("http://127.0.0.1:+80", "port", id="port-sign"),
        pytest.param("http://127.0.0.1:", "port", id="port-empty"),
        pytest.param("http://api .example", "spaces", id="space-in-host"),
        pytest.param("http://api\t.example", "spaces", id="tab-in-host"),
        pytest.param("http://api.example/\x1b[2J", "control", id="escape-in-path"),
        pytest.param("http://a%20b.example", "host", id="encoded-space-in-host"),
        pytest.param("https://user:sk-pw-2f9a@api.example", "password", id="userinfo"),
        pytest.param("https://sk-pw-2f9a@api.example", "password", id="user-only"),
        pytest.param("https://:443", "host", id="no-host"),
        pytest.param("ftp://api.example", "https://", id="scheme"),
        pytest.param("api.example", "https://", id="no-scheme"),
        pytest.param("https://api.example/?x=1", "query", id="query"),
        pytest.param("https://[::1", "URL", id="unclosed-bracket"),
    ],
)
def test_bad_base_url_is_a_usage_error(url: str, mentions: str) -> None:
    """A base URL that cannot be right is refused at once (exit 2, one line, nothing sent),
    without echoing it: it may hold a password."""
    run = run_cli("--task", TASK_JSON, "--base-url", url, "--timeout", "30")
    assert_failed(run, 2, mentions)
    assert run.elapsed < 20
    assert "sk-pw-2f9a" not in run.err
    assert url not in run.err


@pytest.mark.parametrize(
    "template",
    ["{}", "{}/", "HTTP://{}"],
)
def test_good_base_url_forms_are_accepted(template: str) -> None:
    """A base URL with a port, a trailing slash, a path or an upper-case scheme works."""
    with StubAPI(result=[ready(SOLUTION)]) as stub:
        url = template.format(stub.base_url.removeprefix("http://"))
        url = url if "://" in url else f"http://{url}"
        run = run_cli("--task", TASK_JSON, "--base-url", url)
    assert run.code == 0, run.err
    assert json.loads(run.out) == SOLUTION


def test_ipv6_loopback_base_url_is_accepted() -> None:
    """A bracketed IPv6 host with a port passes the checks (refused only by the network)."""
    run = run_cli("--task", TASK_JSON, "--base-url", "http://[::1]:9/", "--timeout", "2.5")
    assert_failed(run, 6, "NOT_SENT")


# -- local inputs are capped ---------------------------------------------------------------


def solved_with(*args: str, stdin: int | None = subprocess.DEVNULL) -> tuple[Run, dict]:
    """Run `solve ARGS` against a stub that solves; return the run and the task it got."""
    with StubAPI(result=[ready(SOLUTION)]) as stub:
        run = run_command("solve", *args, "--base-url", stub.base_url, stdin=stdin)
    assert run.code == 0, run.err
    assert json.loads(run.out) == SOLUTION
    return run, stub.requests[0].json["task"]


def refused(*args: str, stdin: int | None = subprocess.DEVNULL, mentions: str) -> Run:
    """Run `solve ARGS` against a stub; check it exits 2 with one line and sends nothing."""
    with StubAPI() as stub:
        run = run_command("solve", *args, "--base-url", stub.base_url, stdin=stdin)
    assert_failed(run, 2, mentions)
    assert stub.requests == []
    return run


def task_of_size(size: int) -> bytes:
    """A task JSON of exactly `size` bytes."""
    head = json.dumps({**TASK, "pad": ""}).encode()
    return head[:-2] + b"x" * (size - len(head)) + head[-2:]


def test_image_of_exactly_the_cap_is_sent(tmp_path: Path) -> None:
    """An --image of MAX_IMAGE_BYTES bytes is sent whole, base64-encoded."""
    image = tmp_path / "captcha.png"
    data = os.urandom(MAX_IMAGE_BYTES)
    image.write_bytes(data)
    _run, task = solved_with("--image", str(image))
    assert base64.b64decode(task["body"]) == data


def test_image_one_byte_over_the_cap_is_refused(tmp_path: Path) -> None:
    """An --image of MAX_IMAGE_BYTES + 1 bytes is refused (exit 2), nothing sent."""
    image = tmp_path / "captcha.png"
    image.write_bytes(b"\x89" * (MAX_IMAGE_BYTES + 1))
    refused("--image", str(image), mentions="--image is larger than 6 MiB")


def test_task_file_of_exactly_the_cap_is_sent(tmp_path: Path) -> None:
    """A --task-file of MAX_TASK_BYTES bytes is sent as it is."""
    task_file = tmp_path / "task.json"
    task_file.write_bytes(task_of_size(MAX_TASK_BYTES))
    _run, task = solved_with("--task-file", str(task_file))
    assert task == json.loads(task_file.read_bytes())


def test_task_file_one_byte_over_the_cap_is_refused(tmp_path: Path) -> None:
    """A --task-file of MAX_TASK_BYTES + 1 bytes is refused (exit 2), nothing sent."""
    task_file = tmp_path / "task.json"
    task_file.write_bytes(task_of_size(MAX_TASK_BYTES + 1))
    refused("--task-file", str(task_file), mentions="--task-file is larger than 8 MiB")


@pytest.mark.parametrize(("extra", "accepted"), [(0, True), (1, False)])
def test_task_on_stdin_is_capped(tmp_path: Path, extra: int, accepted: bool) -> None:
    """`--task-file -` takes a task of MAX_TASK_BYTES bytes on stdin, and refuses one more."""
    task_file = tmp_path / "task.json"
    task_file.write_bytes(task_of_size(MAX_TASK_BYTES + extra))
    with task_file.open("rb") as stdin:
        if accepted:
            solved_with("--task-file", "-", stdin=stdin.fileno())
        else:
            refused("--task-file", "-", stdin=stdin.fileno(), mentions="larger than 8 MiB")


def limit_memory() -> None:
    """In the child: at most 1 GiB of address space, so reading /dev/zero whole fails
    fast with MemoryError instead of exhausting the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def run_limited(*args: str, stdin: int | None = subprocess.DEVNULL) -> Run:
    """`captchaflow solve ARGS` with bounded memory, against nothing (it must not send)."""
    env = {**os.environ, KEY_ENV: KEY}
    start = time.monotonic()
    proc = subprocess.run(
        [*CLI, "solve", *args, "--base-url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        env=env,
        stdin=stdin,
        timeout=60,
        preexec_fn=limit_memory,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--image", "/dev/zero"], id="image"),
        pytest.param(["--task-file", "/dev/zero"], id="task-file"),
        pytest.param(["--task-file", "-"], id="stdin"),
        pytest.param(
            ["--task", TASK_JSON, "--key-file", "/dev/zero", "--allow-shared-key-file"], id="key"
        ),
    ],
)
def test_endless_input_is_refused_quickly_in_bounded_memory(args: list[str]) -> None:
    """/dev/zero as an image, a task file, stdin or a key file is refused with exit 2 in
    a few seconds, within 1 GiB of address space (it is never read whole)."""
    with open("/dev/zero", "rb") as zero:
        run = run_limited(*args, stdin=zero.fileno())
    assert_failed(run, 2, "larger than")
    assert run.elapsed < 15


def test_key_file_is_capped(tmp_path: Path) -> None:
    """A --key-file of MAX_KEY_FILE_BYTES bytes is read; one byte more is refused."""
    key_file = tmp_path / "key"
    key_file.write_text("k" * (MAX_KEY_FILE_BYTES - 1) + "\n")
    key_file.chmod(0o600)
    with StubAPI(result=[ready(SOLUTION)]) as stub:
        run = run_cli("--task", TASK_JSON, "--key-file", str(key_file), "--base-url", stub.base_url)
    assert run.code == 0, run.err
    assert stub.requests[0].json["clientKey"] == "k" * (MAX_KEY_FILE_BYTES - 1)
    key_file.write_text("k" * MAX_KEY_FILE_BYTES + "\n")
    run = run_cli("--task", TASK_JSON, "--key-file", str(key_file), "--base-url", stub.base_url)
    assert_failed(run, 2, f"--key-file is larger than {MAX_KEY_FILE_BYTES} bytes")


# -- scenario files ------------------------------------------------------------------------


def test_scenario_of_exactly_the_cap_is_read_and_one_more_byte_refused(tmp_path: Path) -> None:
    """A --scenario file of MAX_SCENARIO_BYTES bytes runs; one byte more is refused."""
    scenario = tmp_path / "s.json"
    scenario.write_text("{}" + " " * (MAX_SCENARIO_BYTES - 2))
    run = run_command("demo", "--tasks", "3", "--scenario", str(scenario))
    assert run.code == 0, run.err
    assert run.out.startswith("captchaflow demo: 3 tasks")
    scenario.write_text("{}" + " " * (MAX_SCENARIO_BYTES - 1))
    run = run_command("demo", "--tasks", "3", "--scenario", str(scenario))
    assert_failed(run, 2, "is larger than 1 MiB")


@pytest.mark.parametrize("name", ["bad.yaml", "bad.yml", "scenario", "s.ini"])
def test_scenario_format_other_than_json_or_toml_is_named_as_unsupported(
    tmp_path: Path, name: str
) -> None:
    """A scenario that is not .json or .toml is refused saying which formats are."""
    path = tmp_path / name
    path.write_text("accounts: []\n")
    run = run_command("demo", "--scenario", str(path))
    assert_failed(run, 2, "only .json and .toml scenario files are supported")
    assert "not valid" not in run.err


def test_invalid_scenario_names_the_file_once(tmp_path: Path) -> None:
    """An invalid scenario file is named once in the error, with what is wrong."""
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    run = run_command("demo", "--scenario", str(path))
    assert_failed(run, 2, "is not valid JSON")
    assert run.err.count(str(path)) == 1, run.err


# -- the key -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_key", ["sk-1\x1b[2J", "sk-\x00-2", "sk-\u200b3", "sk 4"])
def test_key_with_control_characters_or_whitespace_is_refused(tmp_path: Path, bad_key: str) -> None:
    """A key file holding a control, zero-width or space character (a binary file, a
    paste gone wrong) is refused (exit 2) before anything is sent."""
    key_file = tmp_path / "key"
    key_file.write_text(bad_key)
    key_file.chmod(0o600)
    with StubAPI() as stub:
        run = run_cli("--task", TASK_JSON, "--key-file", str(key_file), "--base-url", stub.base_url)
    assert_failed(run, 2, "control characters")
    assert stub.requests == []
