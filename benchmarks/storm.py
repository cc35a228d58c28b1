"""Retry storm: 1,000 tasks at once on one account, the fleet gate against worker pools.

In virtual time, against the simulated API, with one seed:

- the account accepts R requests per second (more get 16 RATE_LIMITED with `retryAfterSec`
  to when its window frees) and solves S tasks at once (more get 2 NO_SLOT_AVAILABLE);
- `provider-example`: every job on its own with the provider's documented strategy and its
  example's 6 attempts per request (most tasks are lost: shown for reference);
- `pool-20`, `pool-50`, `pool-100`: what a sensible user runs instead: the provider's
  strategy, without the attempt cap (so every task completes), behind a fixed pool of N
  workers (`Simulation(max_in_flight=N)`); the best pool is the one with the shortest
  makespan;
- `best pool, learned polls`: the best pool with the account's poll schedule learned
  (`AdaptivePoll`): the effect of the poll schedule alone;
- `gate`: no pool, the engine's default gate (`default_gate`), 2-s polls: the effect of the
  gate alone, and what `Engine` does by default;
- `gate, learned polls`: the gate and `AdaptivePoll` together.

The bound is the least time the account's limits allow: each task needs at least one
createTask and one poll (2N / R seconds of requests) and holds a slot for its solve time
(N * mean solve / S seconds of slots); the larger of the two.

A second case submits the tasks ten a second to an account whose balance runs out after
100 tasks, and counts the requests sent, after the first ZERO_BALANCE reply, by jobs that
then fail (through the default gate).

    python benchmarks/storm.py [--tasks N] [--rate R] [--slots S] [--seed S]

The last line is `storm: makespan_vs_best_pool=X rejected_vs_best_pool=Y
makespan_vs_bound=Z requests_after_zero_balance=N`, for the `gate` row (the default engine).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import attrs

from captchaflow.engine import Job, Outcome, Simulation, SimulationReport, default_gate
from captchaflow.policies import (
    AccountGate,
    AdaptivePoll,
    DocumentedPolicy,
    Failure,
    FixedInterval,
    PollSchedule,
)
from captchaflow.transports import ApiRequest
from captchaflow.transports.sim import AccountSpec, Scenario, SimulatedAPI, TaskTypeSpec

KEY = "bench-storm-key"
TASK = {"type": "ImageToTextTask", "body": "aGVsbG8="}
SOLVE_SECONDS = 10.0


@attrs.frozen
class Row:
    """One strategy's figures."""

    name: str
    solved: int
    failed: int
    requests: int
    rejected: int
    retries: int
    makespan: float
    wall: float


def scenario(rate: int, slots: int, balance_tasks: int | None = None) -> Scenario:
    """The storm account."""
    return Scenario(
        accounts=(
            AccountSpec(
                key=KEY,
                rate_limit=rate,
                slots=slots,
                balance=balance_tasks * 0.001 if balance_tasks is not None else None,
            ),
        ),
        default_task=TaskTypeSpec(solve_seconds=SOLVE_SECONDS, solve_spread=3.0),
        latency=0.05,
    )


def run(
    name: str,
    world: Scenario,
    tasks: int,
    seed: int,
    *,
    max_attempts: int,
    gate: AccountGate | None,
    schedule: PollSchedule | None = None,
    on_exchange: Callable[[Job, ApiRequest, float, float, Outcome], None] | None = None,
    arrival_gap: float = 0.0,
    pool: int | None = None,
) -> tuple[Row, SimulationReport]:
    """Run `tasks` jobs, submitted `arrival_gap` seconds apart (all at t=0 by default),
    behind a pool of `pool` workers if given."""
    api = SimulatedAPI(world, seed=seed, keep_log=False)
    simulation = Simulation(
        api,
        key=KEY,
        policy=DocumentedPolicy(max_attempts=max_attempts, rng=random.Random(seed)),
        poll_schedule=schedule if schedule is not None else FixedInterval(interval=2.0),
        timeout=24 * 3600.0,
        gate=gate,
        on_exchange=on_exchange,
        max_in_flight=pool,
    )
    for n in range(tasks):
        simulation.submit(TASK, at=n * arrival_gap)
    started = time.perf_counter()
    report = simulation.run()
    wall = time.perf_counter() - started
    outcomes = api.stats.outcomes
    rejected = sum(n for label, n in outcomes.items() if label.endswith(("code:16", "code:2")))
    states = report.states()
    row = Row(
        name,
        states.get("ready", 0),
        states.get("failed", 0),
        sum(api.stats.requests.values()),
        rejected,
        report.retries(),
        max(report.finished_at.values(), default=0.0),
        wall,
    )
    return row, report


def requests_after_zero_balance(tasks: int, seed: int, gate: AccountGate | None) -> int:
    """Requests sent after the first ZERO_BALANCE reply by jobs that then failed."""
    first_seen: list[float] = []
    sends: list[tuple[Job, float]] = []

    def watch(job: Job, request: ApiRequest, sent: float, seen: float, outcome: Outcome) -> None:
        sends.append((job, sent))
        if isinstance(outcome, Failure) and outcome.code == 3:
            first_seen.append(seen)

    run(
        "zero-balance",
        scenario(rate=10_000, slots=10_000, balance_tasks=100),
        tasks,
        seed,
        max_attempts=6,
        gate=gate,
        on_exchange=watch,
        arrival_gap=0.1,
    )
    if not first_seen:
        return 0
    cutoff = min(first_seen)
    return sum(1 for job, sent in sends if sent > cutoff and job.state == "failed")


def main() -> None:
    """Run both cases and print the table and the summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=20, help="account requests per second")
    parser.add_argument("--slots", type=int, default=50, help="account task slots")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    world = scenario(args.rate, args.slots)
    uncapped = 10**9

    def pooled(size: int, schedule: PollSchedule | None = None, name: str = "") -> Row:
        label = name or f"pool-{size}"
        return run(
            label,
            world,
            args.tasks,
            args.seed,
            max_attempts=uncapped,
            gate=None,
            pool=size,
            schedule=schedule,
        )[0]

    reference = run("provider-example", world, args.tasks, args.seed, max_attempts=6, gate=None)
    pools = [pooled(size) for size in (20, 50, 100)]
    best = min(pools, key=lambda row: row.makespan)
    best_size = int(best.name.removeprefix("pool-"))
    learned_pool = pooled(best_size, AdaptivePoll(), f"pool-{best_size}, learned polls")

    def gated(name: str, schedule: PollSchedule | None = None) -> Row:
        gate = default_gate(random.Random(args.seed))
        return run(
            name, world, args.tasks, args.seed, max_attempts=uncapped, gate=gate, schedule=schedule
        )[0]

    gate_row = gated("gate")
    both = gated("gate, learned polls", AdaptivePoll())
    rows = [reference[0], *pools, learned_pool, gate_row, both]
    bound = max(2 * args.tasks / args.rate, args.tasks * SOLVE_SECONDS / args.slots)
    print(
        f"storm: {args.tasks} tasks at once; account {args.rate} req/s, {args.slots} slots; "
        f"tasks solve in {SOLVE_SECONDS:g}±3 s; bound {bound:.1f} s (virtual time)"
    )
    header = f"{'strategy':<26}{'solved':>7}{'failed':>7}{'requests':>10}{'rejected':>10}"
    header += f"{'retries':>9}{'makespan':>10}{'wall':>8}"
    print(header)
    for row in rows:
        print(
            f"{row.name:<26}{row.solved:>7}{row.failed:>7}{row.requests:>10}{row.rejected:>10}"
            f"{row.retries:>9}{row.makespan:>9.1f}s{row.wall:>7.2f}s"
        )
    after_none = requests_after_zero_balance(args.tasks, args.seed, None)
    after_gate = requests_after_zero_balance(
        args.tasks, args.seed, default_gate(random.Random(args.seed))
    )
    print(
        f"zero balance after 100 tasks: requests after the first ZERO_BALANCE by jobs that "
        f"then failed: no gate {after_none}, gate {after_gate}"
    )
    print(f"best pool: {best.name}; the summary compares the `gate` row (the default engine)")
    print(
        f"storm: makespan_vs_best_pool={gate_row.makespan / best.makespan:.3f} "
        f"rejected_vs_best_pool={gate_row.rejected / max(best.rejected, 1):.3f} "
        f"makespan_vs_bound={gate_row.makespan / bound:.3f} "
        f"requests_after_zero_balance={after_gate}"
    )


if __name__ == "__main__":
    main()
