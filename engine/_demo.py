"""`captchaflow demo`: a batch of tasks through the engine against the in-process simulated
service, with a realistic mix of faults, in virtual time: no key, no network."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence

from captchaflow.policies import DocumentedPolicy, FixedInterval
from captchaflow.transports import ErrorCode
from captchaflow.transports.sim import (
    AccountSpec,
    FaultRates,
    Outage,
    Scenario,
    SimulatedAPI,
    TaskTypeSpec,
)

from ._engine import DEFAULT_TIMEOUT, default_gate
from ._simulation import Simulation, SimulationReport, gc_paused
from ._words import counted
from .instrumentation import Hook

__all__ = ["DEMO_TASK", "demo_scenario", "format_failures", "format_summary", "run_demo"]

DEMO_TASK = {
    "type": "ImageToTextTask",
    "body": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk",
}


def demo_scenario() -> Scenario:
    """A busy but healthy day: a rate limit, a short outage, 3% unsolvable captchas, and a
    sprinkle of every network fault (refused, lost requests and replies, gateway 429/5xx,
    HTML and truncated bodies, slow replies)."""
    return Scenario(
        accounts=(AccountSpec(key="demo-key", name="demo", rate_limit=150, slots=400),),
        default_task=TaskTypeSpec(solve_seconds=8.0, solve_spread=5.0, unsolvable_rate=0.03),
        outages=(Outage(start=20.0, end=24.0, hint=True),),
        faults=FaultRates(
            refused=0.004,
            timeout_before=0.003,
            http_429=0.004,
            http_5xx=0.008,
            timeout_after=0.003,
            non_json=0.004,
            truncated=0.003,
            wrong_shape=0.002,
            slow=0.01,
            retry_after_header=2.0,
            timeout_seconds=10.0,
            slow_seconds=4.0,
        ),
        latency=0.08,
    )


def run_demo(
    tasks: int = 200,
    *,
    seed: int = 0,
    scenario: Scenario | None = None,
    rate: float = 20.0,
    hooks: Sequence[Hook] = (),
) -> tuple[SimulationReport, float]:
    """Run `tasks` tasks arriving at random, `rate` per second on average, through exactly
    the engine's defaults (`DocumentedPolicy`, 2-s polls, the 120-s deadline and
    `default_gate()`), seeded by `seed`, telling `hooks` every move and request; return the
    report and the real seconds it took. The service keeps its counters (`api.stats`), not
    a log of every request (`keep_log=False`: the summary reads none, and a large run's log
    was a fifth of its memory)."""
    spread = tasks / rate
    scenario = scenario if scenario is not None else demo_scenario()
    arrivals = random.Random(seed ^ 0x5EED)
    api = SimulatedAPI(scenario, seed=seed, keep_log=False)  # the summary reads counters only
    # Exactly the engine's defaults (policy, polls, deadline and gate), seeded.
    simulation = Simulation(
        api,
        key=scenario.accounts[0].key,
        policy=DocumentedPolicy(rng=random.Random(seed)),
        poll_schedule=FixedInterval(),
        timeout=DEFAULT_TIMEOUT,
        gate=default_gate(random.Random(seed)),
        hooks=hooks,
    )
    with gc_paused():  # as `run()` does: making the jobs makes no reference cycles either
        for _ in range(tasks):
            simulation.submit(DEMO_TASK, at=arrivals.uniform(0.0, spread))
    started = time.perf_counter()
    report = simulation.run()
    return report, time.perf_counter() - started


def _joined(counts: Counter[str] | dict[str, int]) -> str:
    """`NAME n · NAME n`, commonest first (ties by name)."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return " · ".join(f"{k} {v}" for k, v in items)


def _row(label: str, counts: Counter[str] | dict[str, int]) -> str:
    return f"{label:<22}" + (_joined(counts) or "none")


def format_summary(report: SimulationReport, wall_seconds: float, *, seed: int) -> str:
    """A human-readable summary of a demo run."""
    stats = report.api.stats
    solved = [job for job in report.jobs if job.solution is not None]
    polls = sum(job.polls for job in solved)
    resubmits = sum(job.resubmits for job in report.jobs)
    p50, p95 = report.percentile(0.50), report.percentile(0.95)
    endpoint_names = {k.lstrip("/"): v for k, v in stats.requests.items()}
    waits = counted(report.retries(), "wait after failures", "waits after failures")
    lines = [
        f"captchaflow demo: {counted(len(report.jobs), 'task')}, seed {seed}: "
        f"{report.end:.1f} s of service time simulated in {wall_seconds:.3f} s",
        _row("final states", report.states()),
        _row("failures", report.errors()),
        _row("requests", endpoint_names) + f" · total {sum(stats.requests.values())}",
        _row("API errors", _labels(report, api_errors=True)),
        _row("network faults", _labels(report, api_errors=False)),
        f"{'retries':<22}{waits}, {counted(resubmits, 'resubmit')}",
        f"{'polls per solved task':<22}" + (f"{polls / len(solved):.2f}" if solved else "n/a"),
        f"{'time to solution':<22}"
        + (f"p50 {p50:.1f} s · p95 {p95:.1f} s" if p50 is not None and p95 is not None else "n/a"),
        f"{'billed':<22}{counted(stats.tasks_created, 'task')}, "
        f"{stats.tasks_billed_unseen} of them "
        "with the reply lost or mangled",
    ]
    return "\n".join(lines)


def _labels(report: SimulationReport, *, api_errors: bool) -> Counter[str]:
    """Replies that were not plain successes: API error codes by name, or network faults."""
    counts: Counter[str] = Counter()
    for key, count in report.api.stats.outcomes.items():
        label = key.split(" ", 1)[1].split("(")[0]
        if label in ("ok", "processing", "ready"):
            continue
        if label.startswith("code:") == api_errors:
            name = ErrorCode(int(label[5:])).name if api_errors else label
            counts[name] += count
    return counts


def format_failures(report: SimulationReport) -> str | None:
    """One line saying how many tasks failed and why, or None if none did."""
    errors = report.errors()
    if not errors:
        return None
    failed = sum(errors.values())
    total = counted(len(report.jobs), "task")
    return f"captchaflow demo: {failed} of {total} failed: {_joined(errors)}"
