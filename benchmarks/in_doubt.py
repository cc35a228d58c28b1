"""How long a journalled createTask stays in doubt, and how many are in doubt at a random
moment: what a SIGKILL may cost with `--ambiguous recreate` (one extra charge per task in
doubt) or fail with `--ambiguous fail`.

    python benchmarks/in_doubt.py [--tasks N] [--concurrency N] [--rounds N] [--latency S]

A task is in doubt from the moment its `SENDING` record is committed (its createTask may
leave at any time after it) until its `taskId` is committed (fsynced): a process killed in
between leaves a createTask that may have created a billed task no one can find. The
engine (`Engine.run_recorded` with a `SqliteJournal`, the default gate and transport, as
`captchaflow batch` runs them) solves `--tasks` tasks, `--concurrency` at a time, against
`captchaflow serve-sim` in another process (tasks solve in 1 +- 0.5 s, `--latency` seconds
per request), as in `tests/test_crash.py`. Each createTask's time in doubt is split into
its round trip (the `SENDING` commit's end to the reply handed to the journal: the request
itself) and the fsynced commit of its `taskId` (the journal's share).

Printed: mean, median and 90th percentile of each part (in milliseconds, pooled over
`--rounds`), and the tasks in doubt at moments spread evenly from each run's first
createTask to its last `taskId` (mean and most). Last line: `in_doubt: window_ms=W
round_trip_ms=R window_vs_round_trip=X mean_in_doubt=M max_in_doubt=N`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from sim_server import serve_sim  # this folder is on the path when run as a script

from captchaflow.engine import Engine
from captchaflow.engine.journal import SqliteJournal
from captchaflow.transports import TaskId

KEY = "bench-in-doubt-key"
SAMPLES = 2000
"""Moments drawn per run to count the tasks in doubt."""


class TimedJournal(SqliteJournal):
    """A `SqliteJournal` that notes when each job's `SENDING` commit ended, when its
    `taskId` arrived and when that commit ended (`time.perf_counter`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.sent: dict[str, float] = {}
        self.replied: dict[str, float] = {}
        self.created_at: dict[str, float] = {}

    async def sending(self, job_id: str) -> None:
        """Commit `SENDING`, then note the time: the task is in doubt from here."""
        await super().sending(job_id)
        self.sent[job_id] = time.perf_counter()

    async def created(self, job_id: str, task_id: TaskId) -> None:
        """Note the reply's arrival, commit the `taskId`, note the time: no longer in doubt."""
        self.replied[job_id] = time.perf_counter()
        await super().created(job_id, task_id)
        self.created_at[job_id] = time.perf_counter()


def scenario(latency: float) -> dict[str, Any]:
    """The crash test's account and tasks, `latency` seconds per request."""
    return {
        "accounts": [{"key": KEY, "rate_limit": 1000, "slots": 1000}],
        "default_task": {"solve_seconds": 1.0, "solve_spread": 0.5, "min_solve_seconds": 0.2},
        "latency": latency,
    }


async def run(url: str, path: Path, tasks: int, concurrency: int) -> TimedJournal:
    """Solve `tasks` tasks through a `TimedJournal` at `path`; return the journal."""
    journal = await anyio.to_thread.run_sync(TimedJournal, path)
    limiter = anyio.Semaphore(concurrency)
    async with Engine(KEY, base_url=url, journal=journal, hooks=()) as engine:

        async def one(n: int) -> None:
            async with limiter:
                await engine.run_recorded(str(n), {"type": "ImageToTextTask", "body": f"t{n}"})

        async with anyio.create_task_group() as group:
            for n in range(tasks):
                group.start_soon(one, n)
    await journal.aclose()
    return journal


def in_doubt_counts(intervals: Sequence[tuple[float, float]]) -> list[int]:
    """The tasks in doubt at `SAMPLES` evenly spread moments of the run."""
    start = min(begin for begin, _ in intervals)
    end = max(finish for _, finish in intervals)
    moments = [start + (end - start) * (i + 0.5) / SAMPLES for i in range(SAMPLES)]
    return [sum(begin <= t < finish for begin, finish in intervals) for t in moments]


def describe(name: str, seconds: list[float]) -> str:
    ordered = sorted(seconds)
    return (
        f"{name:<26}{statistics.fmean(ordered) * 1000:>8.1f}"
        f"{ordered[len(ordered) // 2] * 1000:>8.1f}{ordered[int(0.9 * len(ordered))] * 1000:>8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.01, help="seconds per request")
    args = parser.parse_args()
    windows: list[float] = []
    trips: list[float] = []
    commits: list[float] = []
    counts: list[int] = []
    with tempfile.TemporaryDirectory() as tmp, serve_sim(scenario(args.latency)) as url:
        for round_ in range(args.rounds):
            path = Path(tmp) / f"journal-{round_}.db"
            journal = anyio.run(run, url, path, args.tasks, args.concurrency)
            done = [job for job in journal.sent if job in journal.created_at]
            windows += [journal.created_at[job] - journal.sent[job] for job in done]
            trips += [journal.replied[job] - journal.sent[job] for job in done]
            commits += [journal.created_at[job] - journal.replied[job] for job in done]
            counts += in_doubt_counts([(journal.sent[j], journal.created_at[j]) for j in done])
    print(
        f"{args.tasks} tasks, {args.concurrency} at a time, {args.rounds} round(s), "
        f"{args.latency * 1000:g} ms per request (serve-sim on loopback)"
    )
    print(f"{'ms':<26}{'mean':>8}{'p50':>8}{'p90':>8}")
    print(describe("in doubt (SENDING->taskId)", windows))
    print(describe("  round trip", trips))
    print(describe("  taskId commit (fsync)", commits))
    print(
        f"tasks in doubt at a random moment: mean {statistics.fmean(counts):.2f}, "
        f"most {max(counts)} (createTasks per second x time in doubt)"
    )
    window, trip = statistics.fmean(windows), statistics.fmean(trips)
    print(
        f"in_doubt: window_ms={window * 1000:.1f} round_trip_ms={trip * 1000:.1f} "
        f"window_vs_round_trip={window / trip:.2f} mean_in_doubt={statistics.fmean(counts):.2f} "
        f"max_in_doubt={max(counts)}"
    )


if __name__ == "__main__":
    main()
