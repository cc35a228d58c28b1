"""Regret matrix: the default engine against no coordination and against a worker pool.

In virtual time (`Simulation` against `SimulatedAPI`; no wall clock inside the engine), a
matrix of scenarios, each a `Scenario` built below with a short name and a one-line
description, each run with seeds 1 and 2 (`--seeds`): 600 to 1,500 tasks arriving over time
(arrival times drawn from a `random.Random` seeded by the seed; some scenarios submit a
burst at t=0). For every scenario and seed, each strategy runs on a fresh
`SimulatedAPI(scenario, seed=seed, keep_log=False)`:

- `default`: the parts `Engine` uses by default (`default_engine_parts`): a
  `DocumentedPolicy` seeded with the seed, `FixedInterval()` polls, `default_gate()` seeded
  with the seed, timeout 120 s;
- `open`: the same with `OpenGate()` (no coordination: every job on its own);
- `pool-20`, `pool-50`, `pool-100`, `pool-200`, `pool-400`: the provider's strategy
  (`DocumentedPolicy`, `FixedInterval(2)`, no gate) behind a pool of N workers
  (`Simulation(max_in_flight=N)`): a task waits for a worker, and its deadline counts from
  when a worker takes it. The issue that set the targets names pools of 20, 50 and 100:
  the summary's Z is against those. 20 tasks a second of 8-s solves keep about 200 workers
  busy, so pools of 200 and 400 are what a user would size for this load; the line before
  the summary gives Z against all five, and the ratio table shows it per scenario.

Each row: tasks solved and failed, requests per solved task, the 95th percentile of time to
solution (from each task's arrival, queueing included), the makespan (from the first
arrival to the last job's finish) and the real seconds the simulation took.

Every simulation runs under a wall-time limit (`--wall-limit`, default 60 s; SIGALRM): a run
that hits it is a livelock. It is printed and counted, and its figures are left out of the
ratios below (a ratio whose side has no finished run is `n/a` and left out of the worst).

Definitions, per scenario, each side's figure being its mean over the seeds:

- X = default solved / open solved (1.0 if both are 0);
- Y = default requests per solved / open requests per solved; if either side solved nothing
  in some seed, both sides use requests per task instead (the row says `per task`);
- Z = default makespan / the best pool's makespan, the best pool being the one with the
  shortest makespan among the pools that solved at least as many tasks as the default (a
  pool that finishes sooner by losing tasks is not better); if no pool solved as many, the
  pool that solved the most (the shorter makespan breaking a tie).

    python benchmarks/regret.py [--scenarios a,b] [--seeds 1,2] [--tasks-scale F]
                                [--wall-limit S]

The last line is `regret: worst_solved_vs_open=X worst_requests_per_solved_vs_open=Y
worst_makespan_vs_best_pool=Z livelocks=N` (X the minimum over scenarios, Y and Z the
maximum; Z against the pools of 20, 50 and 100).

Where the gate is inert the default's run is OpenGate's, request for request, and a pool
sized to the load (200, 400) runs nearly the same jobs: Z against those is a draw whose
figure is the noise of the latest finish (a network fault on one of the last tasks), and
taking the quickest of several pools biases it above 1 (the least of several noisy
makespans). With six seeds it was 0.970-1.029 over those scenarios; see the README.
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Protocol

import attrs

from captchaflow.engine import DEFAULT_TIMEOUT, Simulation, SimulationReport, default_gate
from captchaflow.policies import (
    AccountGate,
    DocumentedPolicy,
    FixedInterval,
    OpenGate,
    PollSchedule,
    RetryPolicy,
)
from captchaflow.transports.sim import (
    AccountSpec,
    FaultKind,
    FaultRates,
    Outage,
    Scenario,
    ScheduledFault,
    SimulatedAPI,
    TaskTypeSpec,
)

KEY = "bench-regret-key"
TASK = {"type": "ImageToTextTask", "body": "aGVsbG8="}
POOLS = (20, 50, 100, 200, 400)
SMALL_POOLS = (20, 50, 100)
"""The pool sizes the issue that set the targets names (the summary's Z); 20 tasks a second
of 8-s solves keep about 200 busy, so the larger pools are what a user would size for this
load (printed beside it, and per scenario in the ratio table)."""
STRATEGIES = ("default", "open", *(f"pool-{n}" for n in POOLS))

# -- the default engine's parts --------------------------------------------------------------


@attrs.frozen
class EngineParts:
    """What a `Simulation` needs to run jobs as an engine would: the retry policy, the poll
    schedule, the account gate and each task's timeout."""

    policy: RetryPolicy
    poll_schedule: PollSchedule
    gate: AccountGate | None
    timeout: float


def default_engine_parts(seed: int) -> EngineParts:
    """The parts `Engine` uses when given none (seeded with `seed`): `DocumentedPolicy`,
    `FixedInterval()` polls, `default_gate()`, `DEFAULT_TIMEOUT` (120 s)."""
    return EngineParts(
        policy=DocumentedPolicy(rng=random.Random(seed)),
        poll_schedule=FixedInterval(),
        gate=default_gate(random.Random(seed)),
        timeout=DEFAULT_TIMEOUT,
    )


def strategy_parts(strategy: str, seed: int) -> tuple[EngineParts, int | None]:
    """The parts and the pool size (None: no pool) of `strategy` (one of `STRATEGIES`)."""
    if strategy == "default":
        return default_engine_parts(seed), None
    if strategy == "open":
        return attrs.evolve(default_engine_parts(seed), gate=OpenGate()), None
    size = int(strategy.removeprefix("pool-"))
    provider = EngineParts(
        policy=DocumentedPolicy(rng=random.Random(seed)),
        poll_schedule=FixedInterval(interval=2.0),
        gate=None,
        timeout=DEFAULT_TIMEOUT,
    )
    return provider, size


# -- the scenarios ---------------------------------------------------------------------------

ROOMY = AccountSpec(key=KEY, rate_limit=200, slots=400)
"""An account the demand does not strain."""

LIGHT = FaultRates(
    refused=0.001,
    timeout_before=0.001,
    timeout_after=0.001,
    non_json=0.001,
    slow=0.002,
    timeout_seconds=10.0,
    slow_seconds=4.0,
)
"""The everyday sprinkle of network faults: one request in 170."""


def _noise(total: float) -> Callable[[int], Scenario]:
    """Gateway noise of `total` (70% 5xx, 30% 429, no Retry-After) on a roomy account."""

    def build(_tasks: int) -> Scenario:
        return Scenario(
            accounts=(ROOMY,),
            faults=FaultRates(http_5xx=total * 0.7, http_429=total * 0.3),
            latency=0.05,
        )

    return build


def _sprinkled(
    account: AccountSpec = ROOMY,
    *,
    faults: FaultRates = LIGHT,
    task: TaskTypeSpec | None = None,
    outages: tuple[Outage, ...] = (),
    scheduled: tuple[ScheduledFault, ...] = (),
) -> Scenario:
    """A scenario with the light fault sprinkle, latency 0.05 s and the given differences."""
    return Scenario(
        accounts=(account,),
        default_task=task if task is not None else TaskTypeSpec(),
        outages=outages,
        faults=faults,
        scheduled_faults=scheduled,
        latency=0.05,
    )


@attrs.frozen
class Case:
    """One scenario of the matrix: `tasks` tasks, `burst` of them at t=0 and the rest
    arriving at random at `rate` per second; `build(tasks)` makes the service (limits that
    depend on the task count are computed from the scaled count)."""

    name: str
    description: str
    tasks: int
    rate: float
    build: Callable[[int], Scenario]
    burst: int = 0

    def count(self, scale: float) -> tuple[int, int]:
        """The task count and the burst, scaled by `scale` (at least one task)."""
        tasks = max(1, round(self.tasks * scale))
        return tasks, min(tasks, round(self.burst * scale))

    def span(self, scale: float) -> float:
        """Seconds over which the tasks after the burst arrive."""
        tasks, burst = self.count(scale)
        return (tasks - burst) / self.rate

    def arrivals(self, seed: int, scale: float) -> list[float]:
        """Each task's arrival time, sorted: the burst at 0, the rest uniform over the span."""
        tasks, burst = self.count(scale)
        rng = random.Random(seed * 1_000_003 + 0xA11)
        span = self.span(scale)
        return [0.0] * burst + sorted(rng.uniform(0.0, span) for _ in range(tasks - burst))


def cases() -> list[Case]:
    """The matrix, in the order it is printed."""
    middle = 1200 / 20 / 2  # the middle of a 1,200-task, 20-a-second arrival span
    return [
        Case("noise-1%", "1% gateway 5xx/429 without Retry-After", 1200, 20, _noise(0.01)),
        Case("noise-3%", "3% gateway 5xx/429 without Retry-After", 1200, 20, _noise(0.03)),
        Case("noise-15%", "15% gateway 5xx/429 without Retry-After", 1200, 20, _noise(0.15)),
        Case(
            "hinted-429",
            "3% gateway 429s with Retry-After: 2",
            1200,
            20,
            lambda n: _sprinkled(faults=attrs.evolve(LIGHT, http_429=0.03, retry_after_header=2)),
        ),
        Case(
            "long-solves",
            "tasks take 40 +- 15 s to solve (room for them: 1,000 slots)",
            1000,
            10,
            lambda n: _sprinkled(
                attrs.evolve(ROOMY, slots=1000),
                task=TaskTypeSpec(solve_seconds=40.0, solve_spread=15.0),
            ),
        ),
        Case(
            "scarce-slots",
            "40 slots where the demand needs ~160 (20/s x 8 s)",
            1200,
            20,
            lambda n: _sprinkled(attrs.evolve(ROOMY, slots=40)),
        ),
        Case(
            "tight-rate-burst",
            "20 requests/s; 600 tasks at t=0, then 300 more at 5/s",
            900,
            5,
            lambda n: _sprinkled(attrs.evolve(ROOMY, rate_limit=20)),
            burst=600,
        ),
        Case(
            "outage-hinted",
            "a 40-s outage mid-run, with retryAfterSec",
            1200,
            20,
            lambda n: _sprinkled(outages=(Outage(start=middle - 20, end=middle + 20),)),
        ),
        Case(
            "outage-unhinted",
            "the same 40-s outage, without retryAfterSec",
            1200,
            20,
            lambda n: _sprinkled(outages=(Outage(start=middle - 20, end=middle + 20, hint=False),)),
        ),
        Case(
            "refused-creates",
            "every createTask refused for 20 s mid-run",
            1200,
            20,
            lambda n: _sprinkled(
                scheduled=(
                    ScheduledFault(
                        start=middle - 10,
                        end=middle + 10,
                        kind=FaultKind.REFUSED,
                        endpoint="/createTask",
                    ),
                )
            ),
        ),
        Case(
            "zero-balance",
            "the balance pays for 30% of the tasks",
            1200,
            20,
            lambda n: _sprinkled(attrs.evolve(ROOMY, balance=round(0.3 * n) * ROOMY.price)),
        ),
        Case(
            "unsolvable-10%",
            "10% of the captchas are unsolvable (12)",
            1200,
            20,
            lambda n: _sprinkled(task=TaskTypeSpec(unsolvable_rate=0.10)),
        ),
        Case(
            "daily-quota",
            "a daily quota of 60% of the tasks (17 until tomorrow)",
            1200,
            20,
            lambda n: _sprinkled(attrs.evolve(ROOMY, daily_quota=max(1, round(0.6 * n)))),
        ),
        Case(
            "plan-quota",
            "a plan quota of 55% of the tasks, renewed 45 s in (18 with the wait)",
            1200,
            20,
            lambda n: _sprinkled(
                attrs.evolve(ROOMY, plan_quota=max(1, round(0.55 * n)), plan_quota_resets_at=45)
            ),
        ),
    ]


# -- running ---------------------------------------------------------------------------------


class _WallLimitHit(Exception):
    """Raised by the SIGALRM handler inside a simulation that ran out of wall time."""


class Runnable(Protocol):
    """What `run_with_wall_limit` runs: a `Simulation`, or anything with its `run`."""

    def run(self) -> SimulationReport:
        """Run to the end and report."""
        ...


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise _WallLimitHit


def run_with_wall_limit(
    simulation: Runnable, limit: float
) -> tuple[SimulationReport | None, float]:
    """Run `simulation` for at most `limit` real seconds (main thread only: SIGALRM); return
    its report (None if it hit the limit, i.e. livelocked) and the real seconds taken. Any
    timer or SIGALRM handler already set (e.g. pytest-timeout's) is put back afterwards."""
    previous_handler = signal.signal(signal.SIGALRM, _alarm)
    started = time.perf_counter()
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, limit)
    report: SimulationReport | None = None
    try:
        report = simulation.run()
    except _WallLimitHit:
        report = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        wall = time.perf_counter() - started
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:
            remaining = max(previous_delay - wall, 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)
    return report, wall


@attrs.frozen
class Row:
    """One strategy's figures on one scenario and seed (`livelock`: hit the wall limit, so
    only `tasks` and `wall` mean anything)."""

    scenario: str
    seed: int
    strategy: str
    tasks: int
    solved: int
    failed: int
    requests: int
    p95: float | None
    makespan: float
    wall: float
    livelock: bool = False

    @property
    def per_solved(self) -> float:
        """Requests per solved task (infinite when nothing was solved)."""
        return self.requests / self.solved if self.solved else math.inf

    @property
    def per_task(self) -> float:
        """Requests per task."""
        return self.requests / self.tasks


def run_strategy(case: Case, seed: int, strategy: str, scale: float, wall_limit: float) -> Row:
    """Run one strategy on one scenario and seed; a livelock gives a row marked so."""
    arrivals = case.arrivals(seed, scale)
    api = SimulatedAPI(case.build(len(arrivals)), seed=seed, keep_log=False)
    parts, pool = strategy_parts(strategy, seed)
    simulation = Simulation(
        api,
        key=KEY,
        policy=parts.policy,
        poll_schedule=parts.poll_schedule,
        timeout=parts.timeout,
        gate=parts.gate,
        max_in_flight=pool,
    )
    for at in arrivals:
        simulation.submit(TASK, at=at)
    report, wall = run_with_wall_limit(simulation, wall_limit)
    if report is None:
        return Row(case.name, seed, strategy, len(arrivals), 0, 0, 0, None, math.nan, wall, True)
    states = report.states()
    finished = max(report.finished_at.values(), default=0.0)
    return Row(
        case.name,
        seed,
        strategy,
        len(arrivals),
        states.get("ready", 0),
        states.get("failed", 0) + states.get("cancelled", 0),
        sum(api.stats.requests.values()),
        report.percentile(0.95),
        finished - min(arrivals),
        wall,
    )


# -- the ratios ------------------------------------------------------------------------------


@attrs.frozen
class Ratios:
    """One scenario's X, Y, Z (None: a side had no finished run) and what they rest on."""

    scenario: str
    solved_vs_open: float | None
    requests_vs_open: float | None
    per_task: bool
    """Y compares requests per task (a side solved nothing in some seed)."""
    makespan_vs_best_pool: float | None
    best_pool: str | None


def _finished(rows: Sequence[Row], strategy: str) -> list[Row]:
    return [row for row in rows if row.strategy == strategy and not row.livelock]


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return 1.0 if numerator == 0 else math.inf
    return numerator / denominator


def ratios(scenario: str, rows: Sequence[Row], pool_sizes: Sequence[int] = POOLS) -> Ratios:
    """X, Y and Z for one scenario's rows (see the module docstring); Z against the pools of
    `pool_sizes` (all of them by default)."""
    default, open_ = _finished(rows, "default"), _finished(rows, "open")
    x = y = z = None
    per_task = False
    if default and open_:
        x = _ratio(
            statistics.fmean(r.solved for r in default), statistics.fmean(r.solved for r in open_)
        )
        per_task = any(r.solved == 0 for r in (*default, *open_))
        figure: Callable[[Row], float] = (
            (lambda r: r.per_task) if per_task else (lambda r: r.per_solved)
        )
        y = _ratio(
            statistics.fmean(figure(r) for r in default), statistics.fmean(figure(r) for r in open_)
        )
    best: str | None = None
    if default:
        pools = {}
        for size in pool_sizes:
            runs = _finished(rows, f"pool-{size}")
            if runs:
                pools[f"pool-{size}"] = (
                    statistics.fmean(r.solved for r in runs),
                    statistics.fmean(r.makespan for r in runs),
                )
        solved = statistics.fmean(r.solved for r in default)
        as_many = [name for name, (got, _) in pools.items() if got >= solved]
        if as_many:
            best = min(as_many, key=lambda name: pools[name][1])
        elif pools:
            best = min(pools, key=lambda name: (-pools[name][0], pools[name][1]))
        if best is not None:
            z = _ratio(statistics.fmean(r.makespan for r in default), pools[best][1])
    return Ratios(scenario, x, y, per_task, z, best)


# -- printing --------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_row(row: Row, description: str = "") -> str:
    """One table line."""
    lead = f"{row.scenario:<17}{row.seed:>5} {row.strategy:<9}"
    if row.livelock:
        return f"{lead}{'LIVELOCK: hit the wall limit':>52}{row.wall:>8.2f}"
    per_solved = f"{row.per_solved:.2f}" if row.solved else "-"
    p95 = f"{row.p95:.1f}" if row.p95 is not None else "-"
    return (
        f"{lead}{row.solved:>7}{row.failed:>7}{per_solved:>11}{p95:>9}{row.makespan:>10.1f}"
        f"{row.wall:>8.2f}"
    )


HEADER = (
    f"{'scenario':<17}{'seed':>5} {'strategy':<9}{'solved':>7}{'failed':>7}{'req/solved':>11}"
    f"{'p95 s':>9}{'makespan':>10}{'wall s':>8}"
)


def run_matrix(
    selected: Sequence[Case],
    seeds: Sequence[int],
    scale: float,
    wall_limit: float,
    out: Callable[[str], Any] = print,
) -> tuple[list[Row], list[Ratios], str]:
    """Run every strategy on every selected scenario and seed, printing with `out` as it
    goes; return the rows, the ratios and the summary line (printed last)."""
    out(
        f"regret: {len(selected)} scenarios x seeds {','.join(map(str, seeds))}, "
        f"tasks x{scale:g}, wall limit {wall_limit:g} s a run (virtual time)"
    )
    out(HEADER)
    rows: list[Row] = []
    for case in selected:
        tasks, burst = case.count(scale)
        arriving = f"{tasks} tasks" + (f", {burst} at t=0" if burst else "")
        out(f"# {case.name}: {case.description} ({arriving}, then {case.rate:g}/s)")
        for seed in seeds:
            for strategy in STRATEGIES:
                row = run_strategy(case, seed, strategy, scale, wall_limit)
                rows.append(row)
                out(format_row(row))
    table = [ratios(case.name, [r for r in rows if r.scenario == case.name]) for case in selected]
    out("")
    out("ratios (mean over seeds of each side): X solved default/open, Y requests per solved")
    out("default/open, Z makespan default/best pool (the quickest pool solving as many, of all")
    out("five pools here; the summary's Z is against pools of 20, 50 and 100)")
    out(f"{'scenario':<17}{'X':>8}{'Y':>8}{'Z':>8}  best pool")
    for item in table:
        note = "  (Y per task: a side solved nothing)" if item.per_task else ""
        out(
            f"{item.scenario:<17}{_fmt(item.solved_vs_open):>8}{_fmt(item.requests_vs_open):>8}"
            f"{_fmt(item.makespan_vs_best_pool):>8}  {item.best_pool or 'n/a'}{note}"
        )
    livelocks = sum(row.livelock for row in rows)
    xs = [t.solved_vs_open for t in table if t.solved_vs_open is not None]
    ys = [t.requests_vs_open for t in table if t.requests_vs_open is not None]
    zs = [t.makespan_vs_best_pool for t in table if t.makespan_vs_best_pool is not None]
    small = [
        ratios(case.name, [r for r in rows if r.scenario == case.name], SMALL_POOLS)
        for case in selected
    ]
    small_zs = [t.makespan_vs_best_pool for t in small if t.makespan_vs_best_pool is not None]
    sizes = ", ".join(map(str, POOLS))
    out(
        f"against pools of {sizes} (sized to the load too): "
        f"worst_makespan_vs_best_pool={max(zs, default=math.nan):.3f}"
    )
    summary = (
        f"regret: worst_solved_vs_open={min(xs, default=math.nan):.3f} "
        f"worst_requests_per_solved_vs_open={max(ys, default=math.nan):.3f} "
        f"worst_makespan_vs_best_pool={max(small_zs, default=math.nan):.3f} "
        f"livelocks={livelocks}"
    )
    out(summary)
    return rows, table, summary


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ints: {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("at least one seed")
    return seeds


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options, run the matrix and print the table, the ratios and the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [case.name for case in cases()]
    parser.add_argument("--scenarios", default=",".join(names), help="comma-separated names")
    parser.add_argument("--seeds", type=_seeds, default=[1, 2])
    parser.add_argument("--tasks-scale", type=_positive, default=1.0)
    parser.add_argument("--wall-limit", type=_positive, default=60.0, help="seconds per run")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown or not wanted:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(names)}")
    selected = [case for case in cases() if case.name in wanted]
    run_matrix(selected, args.seeds, args.tasks_scale, args.wall_limit)


if __name__ == "__main__":
    main()
