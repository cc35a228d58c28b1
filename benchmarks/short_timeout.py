"""Scarce task slots and a short timeout: the default gate against no gate (`OpenGate`).

    python benchmarks/short_timeout.py [--seeds 1,2,3,4]

Outside `regret.py`'s matrix (where every task has the engine's 120-s timeout): far more
tasks arrive than an account of 5 slots can hold (tasks solve in 8 +- 3 s), and each task's
timeout is only a few solves long. Two loads, in virtual time:

- `burst`: 300 tasks at 10 a second, a 30-s timeout;
- `steady`: 300 tasks at 1 a second, a 60-s timeout.

Per load and gate it prints, summed over the seeds, the tasks solved, the tasks the service
created (and billed), the tasks paid for and never delivered, and the requests. Last line:
`short_timeout: worst_solved_vs_open=X` (the default gate's tasks solved over OpenGate's,
the lower of the two loads).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable

import attrs
from regret import _seeds  # the same --seeds option as regret.py's (this folder is on the path)

from captchaflow.engine import Simulation, default_gate
from captchaflow.policies import AccountGate, DocumentedPolicy, OpenGate
from captchaflow.transports.sim import AccountSpec, Scenario, SimulatedAPI, TaskTypeSpec

KEY = "bench-short-timeout-key"
TASK = {"type": "ImageToTextTask", "body": "aGk="}
TASKS = 300
SLOTS = 5
LOADS = {"burst": (10.0, 30.0), "steady": (1.0, 60.0)}
"""Load name: (tasks arriving per second, each task's timeout in seconds)."""
GATES: dict[str, Callable[[random.Random], AccountGate]] = {
    "default": default_gate,
    "open": lambda rng: OpenGate(),
}


@attrs.frozen
class Tally:
    """What one gate got on one load, summed over the seeds."""

    solved: int = 0
    billed: int = 0
    requests: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.solved + other.solved,
            self.billed + other.billed,
            self.requests + other.requests,
        )


def run_once(gate: AccountGate, per_second: float, timeout: float, seed: int) -> Tally:
    """One seeded run of `TASKS` tasks through `gate`."""
    scenario = Scenario(
        accounts=(AccountSpec(key=KEY, slots=SLOTS),),
        default_task=TaskTypeSpec(solve_seconds=8.0, solve_spread=3.0),
    )
    api = SimulatedAPI(scenario, seed=seed, keep_log=False)
    policy = DocumentedPolicy(rng=random.Random(seed))
    simulation = Simulation(api, key=KEY, policy=policy, timeout=timeout, gate=gate)
    for n in range(TASKS):
        simulation.submit(TASK, at=n / per_second)
    solved = simulation.run().states()["ready"]
    return Tally(solved, api.stats.tasks_created, sum(api.stats.requests.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_seeds, default=[1, 2, 3, 4])
    args = parser.parse_args()
    print(f"{TASKS} tasks per load, {SLOTS} slots, 8 +- 3-s solves; sums over seeds {args.seeds}")
    header = ("load", "gate", "solved", "billed", "undelivered", "requests")
    print("{:<8} {:<8} {:>7} {:>7} {:>12} {:>9}".format(*header))
    ratios = []
    for load, (per_second, timeout) in LOADS.items():
        tallies = {}
        for name, make in GATES.items():
            tally = Tally()
            for seed in args.seeds:
                tally += run_once(make(random.Random(seed)), per_second, timeout, seed)
            tallies[name] = tally
            print(
                f"{load:<8} {name:<8} {tally.solved:>7} {tally.billed:>7} "
                f"{tally.billed - tally.solved:>12} {tally.requests:>9}"
            )
        ratios.append(tallies["default"].solved / max(1, tallies["open"].solved))
    print(f"short_timeout: worst_solved_vs_open={min(ratios):.3f}")


if __name__ == "__main__":
    main()
