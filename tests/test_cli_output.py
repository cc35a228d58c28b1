"""What `captchaflow solve` shows a person: server text made printable, strict JSON on stdout.

Every test runs the command as a subprocess against a hostile server on loopback.
"""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stub_api import StubAPI, accepted, error, raw, ready
from test_cli import KEY, TASK_JSON, assert_failed, solve

from captchaflow.engine.cli import TerminalFormatter, printable
from captchaflow.transports import ApiKey

# Clear the screen, retitle the window, bell; an 8-bit CSI; a right-to-left override that
# would show the rest of the line reversed; a zero-width space; a private-use character.
HOSTILE = "\x1b[2J\x1b]0;PWNED\x07 \x9b31m \u202eevil \u200b\ue000 end"
ESCAPED = ("\\x1b[2J", "\\x1b]0;PWNED\\x07", "\\x9b31m", "\\u202eevil", "\\u200b", "\\ue000")


def assert_printable(text: str) -> None:
    """Every line of `text` holds printable characters only (no ESC, BEL, bidi control)."""
    for line in text.splitlines():
        assert line.isprintable(), ascii(line)


def test_server_message_is_escaped_on_stderr() -> None:
    """A `msg` full of terminal escape sequences reaches stderr escaped, as one line."""
    with StubAPI(create=[error(1, HOSTILE)]) as stub:
        run = solve(stub, "--task", TASK_JSON)
    assert_failed(run, 3, "KEY_DOES_NOT_EXIST")
    assert_printable(run.err)
    for escaped in ESCAPED:
        assert escaped in run.err, run.err


def test_server_text_is_escaped_in_verbose_logs() -> None:
    """With -v, every line (the moves, then the error) is printable, whatever the server
    sends: a hostile `msg`, a hostile `taskId`."""
    script = [error(16, HOSTILE, retry_after=0), accepted("\x1b[31mtask\x07"), error(3, HOSTILE)]
    with StubAPI(create=script) as stub:
        run = solve(stub, "--task", TASK_JSON, "-v")
    assert run.code == 3, run.err
    assert len(run.err_lines) >= 5
    assert_printable(run.err)
    assert all(line.startswith("captchaflow: ") for line in run.err_lines)
    assert "\\x1b]0;PWNED\\x07" in run.err_lines[-1]


def test_verbose_formatter_escapes_and_redacts() -> None:
    """A -v log record holding escapes and the key becomes one printable line without the
    key (whatever a future record carries)."""
    formatter = TerminalFormatter(ApiKey(KEY))
    record = logging.LogRecord(
        "captchaflow", logging.DEBUG, __file__, 1, "task %s: %s", ("\x1b]0;x\x07", KEY), None
    )
    line = formatter.format(record)
    assert line.isprintable()
    assert line.startswith("captchaflow: task \\x1b]0;x\\x07: ")
    assert KEY not in line


@given(st.text())
def test_printable_leaves_only_printable_characters(text: str) -> None:
    """Whatever the text, the result is printable, and printable text is left as it is."""
    shown = printable(text)
    assert shown.isprintable()
    assert (shown == text) == text.isprintable()


def test_nan_solution_is_not_printed_as_invalid_json() -> None:
    """A solution holding NaN fails with exit 6 and one line; stdout gets no `NaN`."""
    body = '{"status": "ready", "solution": {"text": "abc", "score": NaN}}'
    with StubAPI(result=[raw(body)]) as stub:
        run = solve(stub, "--task", TASK_JSON)
    assert_failed(run, 6, "NON_FINITE_NUMBER")


def test_overflowing_number_in_solution_is_not_printed_as_infinity() -> None:
    """`1e999` (valid JSON, but infinite as a float) fails with exit 6, not `Infinity`."""
    body = '{"status": "ready", "solution": {"text": "abc", "n": [1e999, -1e999]}}'
    with StubAPI(result=[raw(body)]) as stub:
        run = solve(stub, "--task", TASK_JSON)
    assert_failed(run, 6, "NON_FINITE_NUMBER")


def test_finite_extremes_still_print_as_strict_json() -> None:
    """Large but finite numbers and escapes in strings print as strict, parseable JSON."""
    solution = {"big": 1.7976931348623157e308, "tiny": 5e-324, "text": "\x1b[2J\u202e"}
    with StubAPI(result=[ready(solution)]) as stub:
        run = solve(stub, "--task", TASK_JSON)
    assert run.code == 0, run.err
    assert run.out.isascii() and run.out.rstrip("\n").isprintable()
    assert json.loads(run.out, parse_constant=refuse_constant) == solution


def refuse_constant(name: str) -> object:
    """`json.loads` hook: fail on the non-standard constants NaN, Infinity, -Infinity."""
    raise AssertionError(f"not strict JSON: {name}")


def test_unresolvable_host_is_said_once_on_stderr_at_the_first_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the host cannot be resolved, `solve` says so on stderr once, at the first
    failure (not only when it gives up at the deadline), then its one error line."""
    import socket

    from captchaflow.engine import cli

    def no_dns(host: object, *args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv("NOCAPTCHA_API_KEY", "sk-dns-test-key-1234")
    code = cli.main(["solve", "--task", '{"type": "ImageToTextTask"}', "--timeout", "4"])
    err = capsys.readouterr().err.splitlines()
    assert code == 6
    warnings = [line for line in err if line.startswith("captchaflow: warning: cannot resolve")]
    assert len(warnings) == 1, err
    assert "api.nocaptchaai.com" in warnings[0] and "retrying until the deadline" in warnings[0]
    assert len(err) == 2  # the warning, then the error line
