"""A createTask refused for want of a slot: waiting in the gate's queue, against escalating.

    python benchmarks/slot_refusals.py [--seeds 1,2,3] [--tasks-scale 1.0]

On an account whose task slots bind (30 requests/s, tasks solve in 2 +- 1 s), in virtual
time, all tasks arrive at once and a worker pool keeps `in flight` jobs going. Three gates:

- `queue`: the default gate (`default_gate()`), which queues createTasks for slots once the
  service has said NO_SLOT_AVAILABLE, so that a refusal is retried after the policy's first
  backoff and counts as no attempt (`SlotQueueGate`);
- `escalate`: the same gate answering `queues_for_slots()` False, so that each refusal in a
  row is a failed attempt whose backoff doubles (and the sixth fails the task), as before;
- `open`: no gate (`OpenGate`), for reference.

Per scenario and gate, summed over the seeds: tasks solved, requests, NO_SLOT_AVAILABLE
refusals, and the makespan (mean over the seeds: the last job's end). Last line:
`slot_refusals: makespan_vs_escalating=X solved_vs_escalating=Y` (`queue` over `escalate`:
the worst scenario's makespan ratio, the lowest ratio of tasks solved).
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable

import attrs
from regret import _seeds  # the same --seeds option as regret.py's (this folder is on the path)

from captchaflow.engine import Simulation, default_gate
from captchaflow.policies import AccountGate, DocumentedPolicy, FleetGate, OpenGate
from captchaflow.transports.sim import AccountSpec, Scenario, SimulatedAPI, TaskTypeSpec

KEY = "bench-slot-refusals-key"
TASK = {"type": "ImageToTextTask", "body": "aGk="}
RATE = 30
SCENARIOS = {
    "400 tasks, 20 slots": (400, 20, 200),
    "2000 tasks, 20 slots": (2000, 20, 200),
    "400 tasks, 10 slots": (400, 10, 200),
    "400 tasks, 20 slots, 50 in flight": (400, 20, 50),
}
"""Scenario name: (tasks, task slots of the account, jobs in flight)."""


class EscalatingGate(FleetGate):
    """The default gate, except that it never says it queues createTasks for slots."""

    def queues_for_slots(self) -> bool:
        """Never: every NO_SLOT_AVAILABLE is a failed attempt, as before the queue rule."""
        return False


GATES: dict[str, Callable[[random.Random], AccountGate]] = {
    "queue": default_gate,
    "escalate": lambda rng: EscalatingGate(rng=rng),
    "open": lambda rng: OpenGate(),
}


@attrs.frozen
class Run:
    """What one gate got on one scenario with one seed."""

    solved: int
    requests: int
    refused: int
    makespan: float


def run_once(gate: AccountGate, tasks: int, slots: int, in_flight: int, seed: int) -> Run:
    """One seeded run of `tasks` tasks, all arriving at 0, through `gate`."""
    scenario = Scenario(
        accounts=(AccountSpec(key=KEY, rate_limit=RATE, slots=slots),),
        default_task=TaskTypeSpec(solve_seconds=2.0, solve_spread=1.0, min_solve_seconds=0.5),
        latency=0.005,
    )
    api = SimulatedAPI(scenario, seed=seed, keep_log=False)
    simulation = Simulation(
        api,
        key=KEY,
        policy=DocumentedPolicy(rng=random.Random(seed)),
        timeout=300.0,
        gate=gate,
        max_in_flight=in_flight,
    )
    for _ in range(tasks):
        simulation.submit(TASK)
    report = simulation.run()
    refused = sum(n for label, n in api.stats.outcomes.items() if label.endswith(" code:2"))
    return Run(
        solved=report.states()["ready"],
        requests=sum(api.stats.requests.values()),
        refused=refused,
        makespan=max(report.finished_at.values()),
    )


def main() -> None:
    """Run every scenario with every gate; print the table and the summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_seeds, default=[1, 2, 3])
    parser.add_argument(
        "--tasks-scale", type=float, default=1.0, help="scale every scenario's task count"
    )
    args = parser.parse_args()
    print(f"account: {RATE} requests/s, 2 +- 1-s solves; seeds {args.seeds} (virtual time)")
    print(
        f"{'scenario':<36}{'gate':<10}{'solved':>7}{'requests':>10}{'refused':>9}{'makespan':>10}"
    )
    makespan_ratios, solved_ratios = [], []
    for name, (tasks, slots, in_flight) in SCENARIOS.items():
        tasks = max(1, round(tasks * args.tasks_scale))
        results: dict[str, list[Run]] = {}
        for gate_name, make in GATES.items():
            runs = [
                run_once(make(random.Random(seed)), tasks, slots, in_flight, seed)
                for seed in args.seeds
            ]
            results[gate_name] = runs
            makespan = statistics.fmean(run.makespan for run in runs)
            print(
                f"{name:<36}{gate_name:<10}{sum(r.solved for r in runs):>7}"
                f"{sum(r.requests for r in runs):>10}{sum(r.refused for r in runs):>9}"
                f"{makespan:>9.1f}s"
            )
        queue, escalate = results["queue"], results["escalate"]
        makespan_ratios.append(
            statistics.fmean(r.makespan for r in queue)
            / statistics.fmean(r.makespan for r in escalate)
        )
        solved_ratios.append(sum(r.solved for r in queue) / sum(r.solved for r in escalate))
    print(
        f"slot_refusals: makespan_vs_escalating={max(makespan_ratios):.3f} "
        f"solved_vs_escalating={min(solved_ratios):.3f}"
    )


if __name__ == "__main__":
    main()
