"""The benchmark scripts run (small sizes), print their summary line, and never print a key."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
KEYS = (
    "bench-storm-key",
    "bench-regret-key",
    "demo-key",
    "bench-workers-key",
    "bench-journal-key",
    "bench-in-doubt-key",
    "bench-sync-cost-key",
    "bench-http-key",
    "bench-scale-key",
    "bench-short-timeout-key",
    "bench-slot-refusals-key",
)


@pytest.mark.parametrize(
    ("script", "args", "summary"),
    [
        (
            "storm.py",
            ["--tasks", "60", "--rate", "10", "--slots", "8"],
            "storm: makespan_vs_best_pool=",
        ),
        (
            "regret.py",
            ["--scenarios", "noise-3%,outage-unhinted", "--seeds", "1", "--tasks-scale", "0.05"],
            "regret: worst_solved_vs_open=",
        ),
        ("jitter.py", ["--clients", "5,10", "--runs", "2"], "jitter: calls_vs_no_jitter"),
        ("simulation.py", ["--tasks", "50"], "simulation: jobs=50"),
        ("journal.py", ["--jobs", "40", "--rounds", "1"], "journal: sqlite_vs_none="),
        (
            "in_doubt.py",
            ["--tasks", "10", "--concurrency", "5", "--rounds", "1", "--latency", "0"],
            "in_doubt: window_ms=",
        ),
        ("imports.py", ["--runs", "1"], "imports: engine_vs_httpx="),
        ("scale.py", ["--sizes", "100,300", "--runs", "1"], "scale: jobs=300 bytes_per_job="),
        ("short_timeout.py", ["--seeds", "1"], "short_timeout: worst_solved_vs_open="),
        (
            "slot_refusals.py",
            ["--seeds", "1", "--tasks-scale", "0.1"],
            "slot_refusals: makespan_vs_escalating=",
        ),
        (
            "http.py",  # the entry point, which runs http_cost.py
            ["--tasks", "20", "--in-flight", "5", "--connections", "5", "--rounds", "1"],
            "http: cpu_per_request_vs_httpx_bare=",
        ),
    ],
)
def test_benchmark_runs_and_prints_its_summary(script: str, args: list[str], summary: str) -> None:
    """The script exits 0 with its summary as the last line, and no account key anywhere."""
    check_benchmark(script, args, summary)


def test_the_workers_benchmark_runs_and_prints_its_summary(redis_url: str) -> None:
    """`benchmarks/workers.py` at a small size (4 worker processes each way, on the test
    Redis): exit 0, its summary as the last line, no key."""
    check_benchmark(
        "workers.py", ["--tasks", "12"], "workers: rejected_vs_independent=", redis_url, 240
    )


def test_the_sync_cost_benchmark_runs_and_prints_its_summary(redis_url: str) -> None:
    """`benchmarks/sync_cost.py` briefly, on the test Redis: exit 0, its summary last, no key."""
    summary = "sync_cost: cpu_ms_per_second="
    check_benchmark("sync_cost.py", ["--seconds", "0.3"], summary, redis_url)


def check_benchmark(
    script: str, args: list[str], summary: str, redis_url: str | None = None, timeout: int = 120
) -> None:
    """Run `benchmarks/<script>` (on the Redis at `redis_url`, if given): it exits 0, prints
    `summary` at the start of its last line, and no account key anywhere."""
    env = {**os.environ, "CAPTCHAFLOW_REDIS_URL": redis_url} if redis_url else None
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith(summary)
    assert not any(key in proc.stdout + proc.stderr for key in KEYS)
