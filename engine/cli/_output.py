"""What the command writes to stderr: one printable line per message, never the key."""

from __future__ import annotations

import json
import logging
import sys
from typing import TextIO

from captchaflow.engine._errors import MalformedReplyError
from captchaflow.transports import ApiKey, JsonValue, TaskId

PROG = "captchaflow"


def printable(text: str) -> str:
    """`text` with every character that is not printable written as an escape: control
    characters (ESC, BEL, CR...) as `\\xNN`, other non-printable characters (bidi
    controls, zero-width and line separators, unassigned code points) as `\\uNNNN` or
    `\\UNNNNNNNN`. The result is only printable characters, so no text from a server can
    move the cursor, clear the screen, retitle the window or hide part of a line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _fail(message: str, code: int, key: ApiKey | None = None) -> int:
    line = " ".join(message.split())
    if key is not None:
        line = key.redact(line)
    print(f"{PROG}: {printable(line)}", file=sys.stderr)
    return code


class TerminalFormatter(logging.Formatter):
    """`-v` log lines: `captchaflow: message`, one line, the key redacted, printable."""

    def __init__(self, key: ApiKey) -> None:
        super().__init__(f"{PROG}: %(message)s")
        self._key = key

    def format(self, record: logging.LogRecord) -> str:
        """The record as one printable line without the key."""
        return printable(" ".join(self._key.redact(super().format(record)).split()))


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    print(f"{PROG}: warning: {printable(' '.join(str(message).split()))}", file=sys.stderr)


def strict_json(value: JsonValue) -> str:
    """`value` as one line of strict JSON, ASCII only (so it prints on any terminal
    encoding); raises ValueError for NaN or an infinite number, which JSON cannot carry."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def unencodable_solution(unshown: str, task_id: TaskId | None = None) -> MalformedReplyError:
    """The error of a solution that strict JSON cannot carry (NaN, an infinite number), so
    it was not `unshown` ("printed", "written"): NON_FINITE_NUMBER, a malformed reply."""
    return MalformedReplyError(
        "the solution holds NaN or an infinite number, which JSON cannot carry; "
        f"it was not {unshown}",
        name="NON_FINITE_NUMBER",
        task_id=task_id,
    )
