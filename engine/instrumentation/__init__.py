"""Instrumentation: what the engine tells about its jobs, and the hooks that listen.

Every move of every job and every request becomes a frozen record (`MoveRecord`,
`RequestRecord`; never the live job, never the key), handed to each `Hook` of the engine in
order. Built in: `LoggingHook` (the default: DEBUG records on the `captchaflow` logger) with
`JsonLogFormatter`, `PrometheusHook` (`prometheus_client`, the `prometheus` extra) and
`OpenTelemetryHook` (the `otel` extra). Those two are imported on first use, so importing
this package needs neither library. A custom driver hands records to hooks with
`move_record`, `request_record` and `emit`, as `drive_job` does.
"""

import typing

from captchaflow import _lazy

from ._hooks import DEFAULT_HOOKS, Hook, emit
from ._logging import RECORD_ATTRIBUTE, JsonLogFormatter, LoggingHook
from ._records import MoveRecord, RequestRecord, move_record, outcome_label, request_record

if typing.TYPE_CHECKING:
    from ._otel import OpenTelemetryHook
    from ._prometheus import PrometheusHook

__getattr__, __dir__ = _lazy.lazy_exports(
    __name__,
    globals(),
    {"OpenTelemetryHook": "._otel", "PrometheusHook": "._prometheus"},
)

__all__ = [
    "DEFAULT_HOOKS",
    "RECORD_ATTRIBUTE",
    "Hook",
    "JsonLogFormatter",
    "LoggingHook",
    "MoveRecord",
    "OpenTelemetryHook",
    "PrometheusHook",
    "RequestRecord",
    "emit",
    "move_record",
    "outcome_label",
    "request_record",
]
