"""What the job journal costs: jobs run through `Engine.run_recorded` with a `SqliteJournal`
(and a `MemoryJournal`) against the same jobs run with no journal, in one process, in the
same run.

Each job is one createTask, one poll that finds it processing and one that finds it ready,
answered at once by an in-process handler (`HandlerTransport`) in virtual time
(`VirtualClock`): what is left is the engine's own work, so the journal's share is as large
as it can be. A real service's replies take tens of milliseconds, beside which the journal's
cost is small. `--concurrency` jobs run at once (default 50), so writes can be grouped.

Per job the journal writes three changes (`sending` before the createTask, `created` with
the taskId, fsynced, and `finished`) plus `add`. Printed per variant: wall seconds per 1,000
jobs, CPU seconds per 1,000 jobs, and fsync-backed commits per job (`created` commits, each
grouped with whatever arrived meanwhile); the best of `--rounds` rounds, alternating the
variants. Last line: `journal: sqlite_vs_none=X memory_vs_none=Y commits_per_job=Z` (X and
Y: wall time per job against no journal).

    python benchmarks/journal.py [--jobs N] [--concurrency N] [--rounds N]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from captchaflow.engine import Engine, VirtualClock
from captchaflow.engine.journal import Journal, MemoryJournal, SqliteJournal
from captchaflow.engine.journal import _sqlite as sqlite_journal
from captchaflow.policies import OpenGate
from captchaflow.transports import ApiReply, ApiRequest, Endpoint, HandlerTransport

TASK = {"type": "ImageToTextTask", "body": "aGk="}
VARIANTS = ("none", "memory", "sqlite")


def handler() -> Callable[[ApiRequest], ApiReply]:
    """Create answers a new task id; each task is processing at its first poll, ready at
    its second."""
    polls: collections.Counter[object] = collections.Counter()
    counter = iter(range(1, 1 << 62))

    def answer(request: ApiRequest) -> ApiReply:
        if request.endpoint is Endpoint.CREATE_TASK:
            return ApiReply.json({"taskId": next(counter)})
        task_id = request.payload.get("taskId")
        polls[task_id] += 1
        if polls[task_id] < 2:
            return ApiReply.json({"status": "processing"})
        return ApiReply.json({"status": "ready", "solution": {"text": "x"}})

    return answer


class CommitCounter:
    """Counts the group commits that carried a durable (fsynced) change."""

    def __init__(self) -> None:
        self.durable = 0
        self._original = sqlite_journal._commit

    def __enter__(self) -> CommitCounter:
        original = self._original

        def counting(db: object, *, batch: list[sqlite_journal._Change]) -> None:
            if any(change.durable for change in batch):
                self.durable += 1
            original(db, batch=batch)  # type: ignore[arg-type]

        sqlite_journal._commit = counting  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        sqlite_journal._commit = self._original


async def run_jobs(variant: str, jobs: int, concurrency: int, directory: Path) -> float:
    """Run `jobs` jobs with the journal `variant`; return wall seconds."""
    journal: Journal | None = None
    if variant == "memory":
        journal = MemoryJournal()
    elif variant == "sqlite":
        path = directory / f"journal-{time.monotonic_ns()}.db"
        journal = await SqliteJournal.open(path)
    engine = Engine(
        "bench-journal-key",
        transport=HandlerTransport(handler()),
        clock=VirtualClock(),
        gate=OpenGate(),
        hooks=(),
        journal=journal,
    )
    limiter = anyio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with limiter:
            if journal is None:
                await engine.run(TASK)
            else:
                await engine.run_recorded(f"job-{n}", TASK)

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for n in range(jobs):
            group.start_soon(one, n)
    wall = time.perf_counter() - started
    if journal is not None:
        await journal.aclose()
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best_wall = {variant: float("inf") for variant in VARIANTS}
    best_cpu = dict(best_wall)
    commits = 0
    with tempfile.TemporaryDirectory() as tmp:
        for _round in range(args.rounds):
            for variant in VARIANTS:
                cpu = time.process_time()
                with CommitCounter() as counter:
                    wall = anyio.run(run_jobs, variant, args.jobs, args.concurrency, Path(tmp))
                cpu = time.process_time() - cpu
                best_wall[variant] = min(best_wall[variant], wall)
                best_cpu[variant] = min(best_cpu[variant], cpu)
                if variant == "sqlite":
                    commits = counter.durable
    per_thousand = 1000 / args.jobs
    print(f"{args.jobs} jobs, {args.concurrency} at a time, best of {args.rounds} rounds")
    print(f"{'journal':<8} {'wall s/1000 jobs':>17} {'cpu s/1000 jobs':>16}")
    for variant in VARIANTS:
        print(
            f"{variant:<8} {best_wall[variant] * per_thousand:>17.3f} "
            f"{best_cpu[variant] * per_thousand:>16.3f}"
        )
    print(f"fsynced commits: {commits} for {args.jobs} jobs")
    print(
        f"journal: sqlite_vs_none={best_wall['sqlite'] / best_wall['none']:.2f} "
        f"memory_vs_none={best_wall['memory'] / best_wall['none']:.2f} "
        f"commits_per_job={commits / args.jobs:.3f}"
    )


if __name__ == "__main__":
    main()
