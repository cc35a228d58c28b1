"""Poll schedules: polls per solved task against detection latency, in virtual time.

Method. For each workload, `--tasks` tasks (default 10,000) arrive at random at 20 a second
(exponential gaps from a `random.Random` seeded by `--seed`), each with a solve time drawn
from the workload's distribution by its own seeded `random.Random` (the same tasks for
every schedule). Each schedule runs the whole workload alone, as one account whose jobs
share it. The model is what `Job` does with a poll schedule when nothing fails and replies
take no time (`tests/test_poll_benchmark.py` checks it against `Simulation` and
`SimulatedAPI` poll by poll): a task accepted at `a` is first polled at
`a + delay_before_poll(1)`; a poll at `t` finds it solved if `t >= a + solve`, else the next
poll comes at `t + delay_before_poll(n + 1)`; when a poll finds it solved, a learning
schedule is told `observe_solved((processing_at + t) / 2 - a)`, `processing_at` being the
last poll that found it processing (or `a`). Every poll is an event in one heap in virtual
time, so a schedule learns only from tasks solved before the moment it decides. There is
no deadline: every task is polled until it is found solved.

Workloads (lognormal solve times: `median * exp(sigma * N(0, 1))`, sigma 0.5):

- `lognormal-3s`, `lognormal-8s`, `lognormal-20s`: medians 3, 8 and 20 s;
- `bimodal`: 60% of tasks with median 4 s, 40% with median 24 s;
- `shift-5s-15s`: median 5 s for the first half of the tasks (by arrival), 15 s after.

Schedules:

- `fixed-2s`: `FixedInterval(interval=2.0)`, the provider's loop (the baseline);
- `fixed-10s`: `FixedInterval(interval=10.0)`;
- `adaptive`: `AdaptivePoll()`, the default (latency target `interval / 2` = 1 s);
- `adaptive-1.5s`: `AdaptivePoll(latency=1.5)`, trading latency for fewer polls;
- `oracle`: one poll at the moment each task is solved (the bound: 1 poll, latency 0).

Each row: polls per solved task, and the mean and 95th percentile of the detection latency
(the time of the poll that found a task solved minus the moment it was solved). On
`shift-5s-15s` a second row per schedule (`after shift`) counts only the tasks that arrived
after the shift, the time the schedule takes to adapt included.

The line `bound:` gives, for each workload, the fewest polls per task any poll schedule
could make at the mean latency of `fixed-2s` if it knew the workload's solve times in
advance (dynamic programming over poll times on a grid: the solve times' 1/400 quantiles,
and every 0.25 s where those are further apart; `shift-5s-15s` after the shift only), as
a ratio to `fixed-2s`: no `PollSchedule`, which is told only the poll number, can do
better at that latency (to within the grid). It is a Lagrangian bound: for every price p
of a second of latency, polls >= min over schedules of (polls + p x latency) - p x L.

Definitions, per workload, `fixed-2s` being the seed schedule:

- X = polls per solved task of `adaptive` / polls per solved task of `fixed-2s`;
- Y = mean detection latency of `adaptive` / mean detection latency of `fixed-2s`.

    python benchmarks/polling.py [--tasks N] [--seed S] [--plot [PATH]]

With `--plot` it also draws polls per task against mean latency per workload to PATH
(default `benchmarks/results/polling.png`); that needs matplotlib (the `plot` extra):
without it, it says so and skips the plot.

The last line is `polling: polls_vs_seed=X latency_vs_seed=Y after_shift_polls_vs_seed=X2
after_shift_latency_vs_seed=Y2`, X and Y the means over the workloads, X2 and Y2 the ratios
on `shift-5s-15s` after the shift.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import importlib
import math
import pathlib
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from captchaflow.policies import AdaptivePoll, FixedInterval, PollSchedule

RATE = 20.0
"""Tasks arriving per second."""
SIGMA = 0.5
"""The lognormal workloads' sigma (of the log of the solve time)."""
PLOT = pathlib.Path(__file__).parent / "results" / "polling.png"


# -- workloads -------------------------------------------------------------------------------


def _lognormal(median: float) -> Callable[[random.Random, float], float]:
    return lambda rng, _fraction: median * math.exp(rng.gauss(0.0, SIGMA))


def _bimodal(rng: random.Random, _fraction: float) -> float:
    median = 4.0 if rng.random() < 0.6 else 24.0
    return median * math.exp(rng.gauss(0.0, SIGMA))


def _shift(rng: random.Random, fraction: float) -> float:
    median = 5.0 if fraction < 0.5 else 15.0
    return median * math.exp(rng.gauss(0.0, SIGMA))


@attrs.frozen
class Workload:
    """A name, a one-line description, and how to draw a task's solve time given the
    fraction of the tasks that arrived before it (for the shift); `shift` is the fraction
    at which the distribution changes (None: it never does)."""

    name: str
    description: str
    draw: Callable[[random.Random, float], float]
    shift: float | None = None


WORKLOADS = (
    Workload("lognormal-3s", "lognormal, median 3 s, sigma 0.5", _lognormal(3.0)),
    Workload("lognormal-8s", "lognormal, median 8 s, sigma 0.5", _lognormal(8.0)),
    Workload("lognormal-20s", "lognormal, median 20 s, sigma 0.5", _lognormal(20.0)),
    Workload("bimodal", "60% median 4 s, 40% median 24 s, sigma 0.5", _bimodal),
    Workload("shift-5s-15s", "median 5 s, then 15 s from the middle task on", _shift, 0.5),
)


@attrs.frozen
class Tasks:
    """A workload's tasks: arrival times (sorted) and solve times, in arrival order."""

    arrivals: tuple[float, ...]
    solves: tuple[float, ...]


def make_tasks(workload: Workload, count: int, seed: int) -> Tasks:
    """`count` tasks arriving at `RATE` a second, solve times drawn from `workload`."""
    arrivals_rng = random.Random(seed * 1_000_003 + 0xA11)
    solves_rng = random.Random(seed * 1_000_003 + 0x501)
    arrivals: list[float] = []
    now = 0.0
    for _ in range(count):
        now += arrivals_rng.expovariate(RATE)
        arrivals.append(now)
    solves = [workload.draw(solves_rng, index / count) for index in range(count)]
    return Tasks(tuple(arrivals), tuple(solves))


# -- the model -------------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    """What one schedule did with each task: polls, detection latency, and (for tests) the
    times to solution the schedule was told, in the order it was told them."""

    polls: tuple[int, ...]
    latency: tuple[float, ...]
    observed: tuple[float, ...]


def run_schedule(schedule: PollSchedule, tasks: Tasks) -> Outcome:
    """Drive `schedule` over `tasks` as `Job` would (see the module docstring)."""
    count = len(tasks.arrivals)
    observe: Callable[[float], None] | None = getattr(schedule, "observe_solved", None)
    if not callable(observe):
        observe = None
    delay = schedule.delay_before_poll
    polls = [0] * count
    latency = [0.0] * count
    processing_at = list(tasks.arrivals)
    ready_at = [a + s for a, s in zip(tasks.arrivals, tasks.solves, strict=True)]
    observed: list[float] = []
    # (time, kind, task): kind 0 = arrival (accepted), 1 = poll; the index breaks ties
    events: list[tuple[float, int, int]] = [(a, 0, i) for i, a in enumerate(tasks.arrivals)]
    heapq.heapify(events)
    push, pop = heapq.heappush, heapq.heappop
    while events:
        now, kind, task = pop(events)
        if kind == 1:
            polls[task] += 1
            if now >= ready_at[task]:
                latency[task] = now - ready_at[task]
                if observe is not None:
                    seconds = (processing_at[task] + now) / 2 - tasks.arrivals[task]
                    observed.append(seconds)
                    observe(seconds)
                continue
            processing_at[task] = now
        push(events, (now + delay(polls[task] + 1), 1, task))
    return Outcome(tuple(polls), tuple(latency), tuple(observed))


def oracle(tasks: Tasks) -> Outcome:
    """One poll at the moment each task is solved."""
    count = len(tasks.arrivals)
    return Outcome((1,) * count, (0.0,) * count, ())


# -- the bound -------------------------------------------------------------------------------

_BOUND_GRID = 400
_BOUND_STEP = 0.25


def _bound_plan(solves: Sequence[float], price: float) -> tuple[float, float]:
    """Expected polls and latency of the schedule minimising polls + `price` x latency for
    the empirical distribution of `solves`, poll times restricted to a grid: its quantiles
    at steps of 1/`_BOUND_GRID`, and points every `_BOUND_STEP` seconds where those are
    further apart (a poll at the slowest time last; exact dynamic programming, with the
    Monge property of the cost bounding each search)."""
    ordered = sorted(solves)
    n = len(ordered)
    prefix = [0.0]
    for seconds in ordered:
        prefix.append(prefix[-1] + seconds)
    quantiles = sorted({ordered[min(n - 1, (k * n) // _BOUND_GRID)] for k in range(_BOUND_GRID)})
    quantiles.append(ordered[-1])
    grid: list[float] = []
    for q in quantiles:  # and every _BOUND_STEP seconds where quantiles are further apart
        start = grid[-1] if grid else 0.0
        if q <= start:
            continue
        grid.extend(start + _BOUND_STEP * k for k in range(1, math.ceil((q - start) / _BOUND_STEP)))
        grid.append(q)
    t = [0.0, *grid]
    solved = [0] + [bisect.bisect_right(ordered, x) for x in grid]  # tasks solved by t
    last = len(t) - 1
    value = [0.0] * (last + 1)
    best_next = [last] * (last + 1)
    for i in range(last - 1, -1, -1):
        stop = best_next[i + 1] if i + 1 < last else last
        best, choice = math.inf, last
        for k in range(i + 1, stop + 1):
            caught = solved[k] - solved[i]
            cost = price * (t[k] * caught - (prefix[solved[k]] - prefix[solved[i]])) / n
            cost += value[k]
            if cost < best:
                best, choice = cost, k
        value[i] = best + (n - solved[i]) / n
        best_next[i] = choice
    polls = latency = 0.0
    i = 0
    while i != last:
        k = best_next[i]
        polls += (n - solved[i]) / n
        caught = solved[k] - solved[i]
        latency += (t[k] * caught - (prefix[solved[k]] - prefix[solved[i]])) / n
        i = k
    return polls, latency


def bound(solves: Sequence[float], latency: float) -> float:
    """A lower bound on the expected polls per task of any poll schedule whose mean latency
    on `solves` is at most `latency`, even one knowing `solves` in advance (poll times on
    the quantile grid of `_bound_plan`): for every price p of a second of latency, no
    schedule beats min(polls + p x latency), so polls >= min(...) - p x `latency`; the
    largest of these over the prices searched (the price is bisected to where the best
    plan's latency crosses `latency`, where the bound is tightest), and never below one
    poll."""
    low, high = 1e-4, 1e4
    best = 1.0
    for _ in range(24):
        price = math.sqrt(low * high)
        polls, got = _bound_plan(solves, price)
        best = max(best, polls + price * (got - latency))
        if got <= latency:
            high = price
        else:
            low = price
    return best


# -- figures ---------------------------------------------------------------------------------


@attrs.frozen
class Row:
    """One schedule's figures on one workload (`part`: "all" or "after shift")."""

    workload: str
    schedule: str
    part: str
    tasks: int
    polls_per_task: float
    mean_latency: float
    p95_latency: float
    wall: float


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def rows_of(
    workload: Workload, schedule: str, outcome: Outcome, wall: float, tasks: Tasks
) -> list[Row]:
    """The row for all the tasks, and for a shifting workload the row after the shift."""
    parts = [("all", 0)]
    if workload.shift is not None:
        parts.append(("after shift", math.ceil(workload.shift * len(tasks.arrivals))))
    rows = []
    for part, start in parts:
        polls, latency = outcome.polls[start:], outcome.latency[start:]
        rows.append(
            Row(
                workload.name,
                schedule,
                part,
                len(polls),
                sum(polls) / len(polls),
                statistics.fmean(latency),
                _p95(latency),
                wall,
            )
        )
    return rows


SCHEDULES: tuple[tuple[str, Callable[[], PollSchedule] | None], ...] = (
    ("fixed-2s", lambda: FixedInterval(interval=2.0)),
    ("fixed-10s", lambda: FixedInterval(interval=10.0)),
    ("adaptive", AdaptivePoll),
    ("adaptive-1.5s", lambda: AdaptivePoll(latency=1.5)),
    ("oracle", None),
)
SEED_SCHEDULE, DEFAULT_SCHEDULE = "fixed-2s", "adaptive"


def _ratio(rows: Sequence[Row], workload: str, part: str, figure: str) -> float:
    mine = next(r for r in rows if (r.workload, r.schedule, r.part) == (workload, "adaptive", part))
    seed = next(r for r in rows if (r.workload, r.schedule, r.part) == (workload, "fixed-2s", part))
    num, den = getattr(mine, figure), getattr(seed, figure)
    return float(num / den) if den else math.nan


HEADER = (
    f"{'workload':<15}{'schedule':<15}{'part':<12}{'tasks':>7}{'polls/task':>11}"
    f"{'mean lat s':>11}{'p95 lat s':>10}{'wall s':>8}"
)


def format_row(row: Row) -> str:
    """One table line."""
    return (
        f"{row.workload:<15}{row.schedule:<15}{row.part:<12}{row.tasks:>7}"
        f"{row.polls_per_task:>11.3f}{row.mean_latency:>11.3f}{row.p95_latency:>10.3f}"
        f"{row.wall:>8.2f}"
    )


def run(
    count: int, seed: int, out: Callable[[str], Any] = print
) -> tuple[list[Row], dict[str, float], str]:
    """Run every schedule on every workload, printing with `out` as it goes; return the
    rows, the bound per workload (a polls ratio to fixed-2s) and the summary line."""
    out(f"polling: {len(WORKLOADS)} workloads x {count} tasks at {RATE:g}/s, seed {seed}")
    out(HEADER)
    rows: list[Row] = []
    bounds: dict[str, float] = {}
    for workload in WORKLOADS:
        out(f"# {workload.name}: {workload.description}")
        tasks = make_tasks(workload, count, seed)
        for name, make in SCHEDULES:
            started = time.perf_counter()
            outcome = oracle(tasks) if make is None else run_schedule(make(), tasks)
            made = rows_of(workload, name, outcome, time.perf_counter() - started, tasks)
            rows.extend(made)
            for row in made:
                out(format_row(row))
        part = "all" if workload.shift is None else "after shift"
        start = 0 if workload.shift is None else math.ceil(workload.shift * count)
        seed_row = next(
            r for r in rows if (r.workload, r.schedule, r.part) == (workload.name, "fixed-2s", part)
        )
        best = bound(tasks.solves[start:], seed_row.mean_latency)
        bounds[workload.name] = best / seed_row.polls_per_task
    names = [w.name for w in WORKLOADS]
    xs = {name: _ratio(rows, name, "all", "polls_per_task") for name in names}
    ys = {name: _ratio(rows, name, "all", "mean_latency") for name in names}
    shifted = next(w.name for w in WORKLOADS if w.shift is not None)
    x2 = _ratio(rows, shifted, "after shift", "polls_per_task")
    y2 = _ratio(rows, shifted, "after shift", "mean_latency")
    out("")
    out("adaptive against fixed-2s: X polls per task, Y mean latency; bound: the least X")
    out("at Y <= 1 of a schedule that knew the solve times in advance")
    out(f"{'workload':<15}{'X':>8}{'Y':>8}{'bound':>8}")
    for name in names:
        out(f"{name:<15}{xs[name]:>8.3f}{ys[name]:>8.3f}{bounds[name]:>8.3f}")
    out(f"{shifted + ' after':<15}{x2:>8.3f}{y2:>8.3f}{bounds[shifted]:>8.3f}")
    x, y = statistics.fmean(xs.values()), statistics.fmean(ys.values())
    out(
        f"mean over workloads: X={x:.3f} Y={y:.3f} bound={statistics.fmean(bounds.values()):.3f}"
        f"; after the shift: X={x2:.3f} Y={y2:.3f}"
    )
    summary = (
        f"polling: polls_vs_seed={x:.3f} latency_vs_seed={y:.3f} "
        f"after_shift_polls_vs_seed={x2:.3f} after_shift_latency_vs_seed={y2:.3f}"
    )
    return rows, bounds, summary


def plot(rows: Sequence[Row], path: pathlib.Path) -> bool:
    """Draw polls per task against mean latency, one panel per workload, to `path`; False
    (and nothing drawn) without matplotlib."""
    try:  # optional: the `plot` extra
        mpl: Any = importlib.import_module("matplotlib")
        mpl.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    names = [w.name for w in WORKLOADS]
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        for row in rows:
            if row.workload != name or row.part != "all":
                continue
            axis.scatter(row.mean_latency, row.polls_per_task)
            axis.annotate(row.schedule, (row.mean_latency, row.polls_per_task), fontsize=8)
        axis.set_title(name)
        axis.set_xlabel("mean detection latency (s)")
        axis.set_ylabel("polls per solved task")
        axis.grid(visible=True, alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an int: {text!r}") from None
    if value < 10:
        raise argparse.ArgumentTypeError(f"at least 10 tasks, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options, run the workloads, print the table, the ratios and the summary;
    draw the plot when asked."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=_count, default=10_000, help="tasks per workload")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--plot",
        nargs="?",
        const=PLOT,
        type=pathlib.Path,
        metavar="PATH",
        help=f"draw the plot to PATH (default {PLOT.relative_to(PLOT.parents[2])})",
    )
    args = parser.parse_args(argv)
    rows, _bounds, summary = run(args.tasks, args.seed)
    if args.plot is not None:
        if plot(rows, args.plot):
            print(f"plot: wrote {args.plot}")
        else:
            print("plot: matplotlib is not installed; skipped (pip install matplotlib)")
    print(summary)


if __name__ == "__main__":
    main()
