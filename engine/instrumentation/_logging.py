"""The `logging` built-ins: `LoggingHook` (the engine's default) and `JsonLogFormatter`."""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import attrs

from ._records import MoveRecord, RequestRecord

__all__ = ["RECORD_ATTRIBUTE", "JsonLogFormatter", "LoggingHook"]

RECORD_ATTRIBUTE: Final = "captchaflow_record"
"""The attribute of a `logging.LogRecord` that holds the `MoveRecord` or `RequestRecord` it
was logged for (what `JsonLogFormatter` prints)."""

LOGGER: Final = "captchaflow"
"""The logger `LoggingHook` writes to unless given another."""


class LoggingHook:
    """Logs every move on `logger` (`captchaflow` by default) as
    `task 4242: submitted -> polling [accept] task 4242 accepted` (`job-17: ...` before the
    task has an id), and every request on its child `requests` (`captchaflow.requests`) as
    `task 4242: /getTaskResult -> processing in 0.120s`, both at `level` (DEBUG). Each log
    record carries its `MoveRecord` or `RequestRecord` as `captchaflow_record`."""

    __slots__ = ("_requests", "level", "logger")

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.DEBUG) -> None:
        self.logger = logger if logger is not None else logging.getLogger(LOGGER)
        self.level = level
        self._requests = self.logger.getChild("requests")

    def logs(self, kind: type[MoveRecord | RequestRecord]) -> bool:
        """Whether a record of `kind` would be logged now (its logger enabled for `level`)."""
        return (self.logger if kind is MoveRecord else self._requests).isEnabledFor(self.level)

    def on_move(self, record: MoveRecord) -> None:
        """Log the move, if `logger` is enabled for `level`."""
        if self.logger.isEnabledFor(self.level):
            self.logger.log(
                self.level,
                "%s: %s -> %s [%s] %s",
                record.job,
                record.source,
                record.dest,
                record.trigger,
                record.cause,
                extra={RECORD_ATTRIBUTE: record},
            )

    def on_request(self, record: RequestRecord) -> None:
        """Log the request, if `logger.requests` is enabled for `level`."""
        if self._requests.isEnabledFor(self.level):
            code = f" ({record.code})" if record.code is not None else ""
            self._requests.log(
                self.level,
                "%s: %s -> %s%s in %.3fs",
                record.job,
                record.endpoint,
                record.outcome,
                code,
                record.latency,
                extra={RECORD_ATTRIBUTE: record},
            )

    def __repr__(self) -> str:
        return f"LoggingHook(logger={self.logger.name!r}, level={self.level})"


class JsonLogFormatter(logging.Formatter):
    """Formats each log record as one line of JSON: `time` (the record's wall-clock time,
    seconds since the epoch), `level`, `logger` and `message`, and for a record a hook
    logged, `event` (`"move"` or `"request"`) and every field of its `MoveRecord` or
    `RequestRecord`. ASCII only, so a line is printable on any terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """`record` as one line of JSON."""
        data: dict[str, Any] = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        captured = getattr(record, RECORD_ATTRIBUTE, None)
        if isinstance(captured, MoveRecord | RequestRecord):
            data["event"] = captured.kind
            data.update(attrs.asdict(captured))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"), default=repr)
