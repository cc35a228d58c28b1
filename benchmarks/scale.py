"""What a job costs when many are in flight at once: CPU per lifecycle and memory per job,
at 1,000, 10,000 and 100,000 jobs, against a bare dict table doing the same moves.

    python benchmarks/scale.py [--sizes 1000,10000,100000] [--runs 3] [--seed 0]

Every job lives the same life, in virtual time: a createTask (accepted), then polls every
2 s; one of the first three (which one depends on the job) meets a gateway 503 that the
policy retries after its backoff; the fifth poll finds the task ready. Six requests, and the
moves accept, defer, retry_poll, solve. All N jobs are created at time 0 and every one of
them is in flight (its task accepted, not yet solved) before any finishes.

The jobs are `Job` objects driven the sans-IO way (`next_action`, then `feed` of the
classified outcome, by a driver that takes events in time order from a calendar and runs
again at once the jobs the account gate wakes), with the engine's defaults:
`DocumentedPolicy`, 2-s polls, the 120-s deadline, and the account gate `default_gate()`,
which is what an `Engine` gives you unless told otherwise (the headline). A second row
runs them without a gate. Replies are given as outcomes, already classified (`classify`
is the same per reply whatever follows).

The baseline, run in the same process beside them: the same number of jobs making the same
moves as plain dicts, with a transition table (`{(state, trigger): state}`) and a history of
tuples, driven by the same calendar of events. It has no policy, no gate and no checks: the
floor that any state machine pays.

Per size and variant it prints CPU microseconds per job lifecycle (`time.process_time`, the
best of `--runs` runs; a run at a smaller size is as many jobs as at the largest, in batches
of N one after the other; garbage collector on, as a user has it; the driver's own work is
in every row, the table's included), peak memory per job (`tracemalloc`'s peak over a
separate run, divided by N: everything the run allocated and kept, history included) and
the ratio to the table. Growth is CPU per
job at the largest size over CPU per job at the smallest. The last line is
`scale: jobs=N bytes_per_job=B cpu_vs_table=R growth=G` for the largest size, with the
default gate.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import heapq
import itertools
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any, Final, TypeAlias

from captchaflow.engine import (
    Accepted,
    Finished,
    Job,
    Outcome,
    Processing,
    Send,
    Solved,
    default_gate,
)
from captchaflow.policies import AccountGate, Bucket, DocumentedPolicy, Failure, FixedInterval
from captchaflow.transports import ApiKey, Endpoint

TODAY_CPU_VS_TABLE = 4.09
"""cpu_vs_table with the default gate at 100,000 jobs measured at commit 311476a, before the
costs were cut, on the machine these figures come from (AMD EPYC, 2 cores): this script,
run on that commit's code (a `git worktree` of it whose `package` folder is copied, and
whose engine, transports and policies folders are linked, into a folder `captchaflow`
under /tmp/cf/base-shim):

    PYTHONPATH=/tmp/cf/base-shim python benchmarks/scale.py

printed `scale: jobs=100000 bytes_per_job=2198 cpu_vs_table=4.09 growth=1.66` (96.2 us
per job with the default gate, 23.5 us for the table, at 100,000 jobs). On the machine
before it printed `cpu_vs_table=5.23 growth=1.27` (175.1 and 33.5 us): compare runs on one
machine only."""

KEY = ApiKey("bench-scale-key")
TASK = {"type": "ImageToTextTask", "body": "aGVsbG8="}
LATENCY = 0.1
REQUESTS = 6
"""Requests per job: the createTask and five polls (one of them the retry after the 503)."""

PROCESSING: Outcome = Processing()
SOLVED: Outcome = Solved({"text": "abc123"})
GATEWAY_503: Outcome = Failure(
    Bucket.TRANSIENT_HTTP,
    "HTTP_503",
    "HTTP 503 without an API error code",
    Endpoint.GET_TASK_RESULT,
    http_status=503,
)


def script(index: int, request: int) -> Outcome:
    """The reply to request number `request` (0: the createTask) of job `index`: accepted,
    then processing, with a 503 at poll 1, 2 or 3 (by job), and ready at the fifth poll."""
    if request == 0:
        return Accepted(index + 1)
    if request == 1 + index % 3:
        return GATEWAY_503
    return SOLVED if request == REQUESTS - 1 else PROCESSING


Event: TypeAlias = tuple[float, int, int, Outcome | None, int]
"""(virtual time, sequence, job index, the outcome to feed or None, the timer's epoch or -1)."""

SLOT: Final = 0.05
"""Seconds of virtual time per slot of the drivers' calendar."""


class Calendar:
    """The drivers' event queue: events in (time, sequence) order, kept as one list per
    `SLOT` of virtual time, sorted when its turn comes. A heap of a hundred thousand
    distinct times costs more per event the more there are (each step compares floats
    scattered in memory); this costs the same per event at any size, so what grows with the
    number of jobs is the jobs' own cost."""

    __slots__ = ("current", "lists", "order", "position", "slot", "slots")

    def __init__(self, n: int) -> None:
        self.lists: dict[int, list[Event]] = {}
        self.slots: list[int] = []
        self.current: list[Event] = []
        self.order = itertools.count()
        self.position = 0
        self.slot = -1
        for i in range(n):
            self.add(0.0, i, None, 0)

    def add(self, at: float, index: int, outcome: Outcome | None, epoch: int) -> None:
        """Queue an event at `at` (never before the event being processed)."""
        event = (at, next(self.order), index, outcome, epoch)
        slot = int(at / SLOT)
        if slot == self.slot:
            bisect.insort_right(self.current, event, lo=self.position)
            return
        events = self.lists.get(slot)
        if events is None:
            self.lists[slot] = [event]
            heapq.heappush(self.slots, slot)
        else:
            events.append(event)

    def pop(self) -> Event | None:
        """The next event, or None when there are none left."""
        while self.position >= len(self.current):
            if not self.slots:
                return None
            self.slot = heapq.heappop(self.slots)
            self.current = self.lists.pop(self.slot)
            self.current.sort()
            self.position = 0
        self.position += 1
        return self.current[self.position - 1]


def run_jobs(n: int, gate: AccountGate | None, seed: int) -> list[Job]:
    """Drive `n` jobs created at time 0 through their lives; return them, all finished."""
    policy = DocumentedPolicy(rng=random.Random(seed))
    schedule = FixedInterval()
    jobs = [
        Job(TASK, key=KEY, policy=policy, schedule=schedule, now=0.0, timeout=120.0, gate=gate)
        for _ in range(n)
    ]
    index = {id(job): i for i, job in enumerate(jobs)} if gate is not None else {}
    sent = [0] * n
    waiting = [False] * n  # a request is out
    done = [False] * n
    epochs = [0] * n  # a timer of an older epoch was made void by a later one
    calendar = Calendar(n)
    while (event := calendar.pop()) is not None:
        now, _, i, outcome, epoch = event
        job = jobs[i]
        if outcome is not None:
            waiting[i] = False
            job.feed(outcome, now)
        elif epoch != epochs[i] or waiting[i] or done[i]:
            continue  # a void timer, or woken while its request is out, or finished
        action = job.next_action(now)
        if isinstance(action, Send):
            waiting[i] = True
            calendar.add(now + LATENCY, i, script(i, sent[i]), -1)
            sent[i] += 1
        elif isinstance(action, Finished):
            done[i] = True
        else:
            epochs[i] += 1
            calendar.add(action.until, i, None, epochs[i])
        if gate is not None:
            for woken in gate.wakeups():  # run them again now
                other = index[id(woken)]
                epochs[other] += 1
                calendar.add(now, other, None, epochs[other])
    return jobs


# -- the baseline: the same moves in plain dicts ----------------------------------------------

TABLE = {
    ("submitted", "accept"): "polling",
    ("polling", "defer"): "backoff",
    ("backoff", "retry_poll"): "polling",
    ("polling", "solve"): "ready",
}


def _move(job: dict[str, Any], trigger: str, now: float, cause: str) -> None:
    source = job["state"]
    dest = TABLE[source, trigger]
    job["state"] = dest
    job["history"].append((now, source, dest, trigger, cause))


def run_table(n: int, seed: int) -> list[dict[str, Any]]:
    """The same lives as `run_jobs`, as dicts moved through a transition table."""
    rng = random.Random(seed)
    jobs: list[dict[str, Any]] = [
        {"state": "submitted", "task_id": None, "polls": 0, "attempt": 0, "history": []}
        for _ in range(n)
    ]
    sent = [0] * n
    calendar = Calendar(n)
    while (event := calendar.pop()) is not None:
        now, _, i, outcome, _ = event
        job = jobs[i]
        if outcome is None:  # a wait is over: send the next request
            if job["state"] == "backoff":
                _move(job, "retry_poll", now, "wait over")
            calendar.add(now + LATENCY, i, script(i, sent[i]), -1)
            sent[i] += 1
        elif type(outcome) is Accepted:
            job["task_id"] = outcome.task_id
            _move(job, "accept", now, "accepted")
            calendar.add(now + 2.0, i, None, 0)
        elif outcome is GATEWAY_503:
            job["attempt"] += 1
            _move(job, "defer", now, "retry")
            calendar.add(now + 1.0 + rng.random(), i, None, 0)
        elif outcome is SOLVED:
            job["solution"] = SOLVED
            _move(job, "solve", now, "solved")
        else:
            job["attempt"] = 0
            job["polls"] += 1
            calendar.add(now + 2.0, i, None, 0)
    return jobs


# -- measuring ---------------------------------------------------------------------------------

VARIANTS: dict[str, Callable[[int, int], object]] = {
    "job, default gate": lambda n, seed: run_jobs(n, default_gate(random.Random(seed)), seed),
    "job, no gate": lambda n, seed: run_jobs(n, None, seed),
    "dict table": run_table,
}


def check(result: object, n: int) -> None:
    """Refuse a run whose jobs did not all live the scripted life."""
    if isinstance(result, list) and result and isinstance(result[0], Job):
        states = {job.state for job in result}
        moves = {len([m for m in job.history if m.trigger != "hold"]) for job in result}
        sent = {job.requests_sent for job in result}
        if states != {"ready"} or moves != {4} or sent != {REQUESTS}:
            raise SystemExit(f"the jobs did not live the scripted life: {states} {moves} {sent}")
    elif {job["state"] for job in result} != {"ready"}:  # type: ignore[attr-defined]
        raise SystemExit("the table's jobs did not all finish")


def cpu_seconds(variant: str, n: int, seed: int, batches: int) -> float:
    """CPU seconds of `batches` runs of `variant` on `n` jobs, one after the other (each
    run's result checked and dropped, untimed)."""
    spent = 0.0
    for _ in range(batches):
        gc.collect()
        started = time.process_time()
        result = VARIANTS[variant](n, seed)
        spent += time.process_time() - started
        check(result, n)
        del result
    gc.collect()
    return spent


def peak_bytes(variant: str, n: int, seed: int) -> int:
    """The most memory a run of `variant` on `n` jobs held at once, by `tracemalloc`."""
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    result = VARIANTS[variant](n, seed)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    gc.collect()
    return peak - base


def main() -> None:
    """Measure every size and variant; print the table and the summary line."""
    parser = argparse.ArgumentParser(description="Job cost at scale, against a dict table.")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--runs", type=int, default=3, help="CPU: the best of this many runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    for variant in VARIANTS:  # warm up: imports, caches, the allocator's arenas
        cpu_seconds(variant, min(sizes), args.seed, 1)
    per_job: dict[tuple[str, int], float] = {}
    memory: dict[tuple[str, int], float] = {}
    print(f"{'jobs':>8}  {'variant':<18}{'cpu us/job':>11}{'bytes/job':>11}{'vs table':>10}")
    for n in sizes:
        best = dict.fromkeys(VARIANTS, float("inf"))
        # Every measurement covers as many jobs at every size (batches of N, one after the
        # other), so each is as exposed to the machine's noise as the largest size's.
        batches = max(1, sizes[-1] // n)
        for _ in range(args.runs):
            for variant in VARIANTS:  # alternated: the machine's noise hits every variant
                spent = cpu_seconds(variant, n, args.seed, batches)
                best[variant] = min(best[variant], spent / batches)
        for variant in VARIANTS:
            per_job[variant, n] = best[variant] / n * 1e6
            memory[variant, n] = peak_bytes(variant, n, args.seed) / n
        table = per_job["dict table", n]
        for variant in VARIANTS:
            us = per_job[variant, n]
            print(f"{n:>8}  {variant:<18}{us:>11.2f}{memory[variant, n]:>11.0f}{us / table:>10.2f}")
    headline = "job, default gate"
    small, large = sizes[0], sizes[-1]
    print()
    for variant in VARIANTS:
        growth = per_job[variant, large] / per_job[variant, small]
        print(f"growth {variant:<18}{growth:>6.2f}  (cpu per job at {large} / at {small})")
    ratio = per_job[headline, large] / per_job["dict table", large]
    growth = per_job[headline, large] / per_job[headline, small]
    print(
        f"cpu_vs_table with the default gate at {large} jobs: {ratio:.2f} now; "
        f"{TODAY_CPU_VS_TABLE:.2f} at 311476a, at 100000 jobs (the target: at most half, "
        f"{TODAY_CPU_VS_TABLE / 2:.2f})"
    )
    print(
        f"scale: jobs={large} bytes_per_job={memory[headline, large]:.0f} "
        f"cpu_vs_table={ratio:.2f} growth={growth:.2f}"
    )


if __name__ == "__main__":
    main()
