"""`OpenTelemetryHook`: a span per job and an event per move, with the OpenTelemetry API
(the `otel` extra), imported only when a hook is built."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from captchaflow.engine._fsm import TERMINAL_STATES, TaskState

from ._optional import require
from ._records import MoveRecord, RequestRecord

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["SPAN_NAME", "OpenTelemetryHook"]

SPAN_NAME = "captchaflow.job"
"""The name of each job's span."""


class OpenTelemetryHook:
    """Traces each job as one span named `captchaflow.job`, made with `tracer` (by default
    the global tracer provider's `captchaflow` tracer): the span starts with the job's
    first record (its first request or move), gets one event per move (named by the
    trigger, with the record's fields as `captchaflow.*` attributes) and ends with the
    job's terminal move, with the final state and task id as attributes and status ERROR
    when the job failed. Spans are not made current: a job's span is its own trace unless
    the tracer says otherwise. Needs `opentelemetry-api` (`pip install 'captchaflow[otel]'`,
    which brings the SDK too)."""

    __slots__ = ("_spans", "_tracer")

    def __init__(self, tracer: Tracer | None = None) -> None:
        require("opentelemetry.trace", "OpenTelemetryHook", "otel")
        from opentelemetry import trace

        self._tracer = tracer if tracer is not None else trace.get_tracer("captchaflow")
        self._spans: dict[int, Span] = {}

    def on_move(self, record: MoveRecord) -> None:
        """Add the move to the job's span as an event; end the span on a terminal move."""
        span = self._span(record.serial, record.job)
        span.add_event(record.trigger, attributes=_attributes(record))
        if record.dest not in TERMINAL_STATES:
            return
        del self._spans[record.serial]
        span.set_attribute("captchaflow.state", record.dest)
        if record.task_id is not None:
            span.set_attribute("captchaflow.task_id", record.task_id)
        if record.dest == TaskState.FAILED:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, record.cause))
        span.end()

    def on_request(self, record: RequestRecord) -> None:
        """Start the job's span if this is its first record (a balance query has none)."""
        if record.serial is not None:
            self._span(record.serial, record.job)

    def _span(self, serial: int, name: str) -> Span:
        span = self._spans.get(serial)
        if span is None:
            attributes: dict[str, str | int] = {
                "captchaflow.serial": serial,
                "captchaflow.job": name,
            }
            span = self._spans[serial] = self._tracer.start_span(SPAN_NAME, attributes=attributes)
        return span


def _attributes(record: MoveRecord) -> dict[str, str | int | float]:
    """The record's fields as span attributes (OpenTelemetry has no null: None is left out)."""
    return {
        f"captchaflow.{name}": value
        for name, value in attrs.asdict(record).items()
        if value is not None
    }
