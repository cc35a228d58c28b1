"""`PrometheusHook`: request, latency, solution-time and job metrics with `prometheus_client`
(the `prometheus` extra), imported only when a hook is built."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Final

import attrs

from captchaflow.engine._fsm import TERMINAL_STATES, TaskState

from ._optional import require
from ._records import MoveRecord, RequestRecord

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["SOLUTION_BUCKETS", "PrometheusHook"]

SOLUTION_BUCKETS: Final = (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0)
"""Bucket bounds (seconds) of `captchaflow_time_to_solution_seconds`: a captcha takes
seconds to minutes, past the client library's default buckets (which stop at 10 s)."""


@attrs.frozen
class _Metrics:
    requests: Counter
    latency: Histogram
    solution: Histogram
    jobs: Counter


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class PrometheusHook:
    """Counts and times requests and jobs in `registry` (the client's default registry
    unless given one):

    - `captchaflow_requests_total{endpoint, outcome}`: requests by path and outcome;
    - `captchaflow_request_latency_seconds{endpoint}`: a histogram of request latency;
    - `captchaflow_time_to_solution_seconds`: a histogram of the seconds from a job's
      start to its solution (observed on the move into `ready`);
    - `captchaflow_jobs_total{state}`: finished jobs by terminal state.

    Hooks of one registry share its metrics, so building several is harmless. Needs
    `prometheus_client` (`pip install 'captchaflow[prometheus]'`)."""

    __slots__ = ("_metrics",)

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        require("prometheus_client", "PrometheusHook", "prometheus")
        import prometheus_client

        registry = registry if registry is not None else prometheus_client.REGISTRY
        with _LOCK:
            metrics = _METRICS.get(registry)
            if metrics is None:
                metrics = _METRICS[registry] = _register(registry)
        self._metrics = metrics

    def on_move(self, record: MoveRecord) -> None:
        """Count a finished job; time a solved one."""
        if record.dest in TERMINAL_STATES:
            self._metrics.jobs.labels(state=record.dest).inc()
            if record.dest == TaskState.READY:
                self._metrics.solution.observe(record.elapsed)

    def on_request(self, record: RequestRecord) -> None:
        """Count the request and time it."""
        self._metrics.requests.labels(endpoint=record.endpoint, outcome=record.outcome).inc()
        self._metrics.latency.labels(endpoint=record.endpoint).observe(record.latency)


def _register(registry: CollectorRegistry) -> _Metrics:
    from prometheus_client import Counter, Histogram

    return _Metrics(
        requests=Counter(
            "captchaflow_requests",
            "Requests to the API, by endpoint and outcome.",
            ("endpoint", "outcome"),
            registry=registry,
        ),
        latency=Histogram(
            "captchaflow_request_latency_seconds",
            "Seconds from sending a request to its outcome.",
            ("endpoint",),
            registry=registry,
        ),
        solution=Histogram(
            "captchaflow_time_to_solution_seconds",
            "Seconds from a job's start to its solution.",
            buckets=SOLUTION_BUCKETS,
            registry=registry,
        ),
        jobs=Counter(
            "captchaflow_jobs",
            "Finished jobs, by terminal state.",
            ("state",),
            registry=registry,
        ),
    )
