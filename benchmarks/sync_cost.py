"""What a worker's account sync costs in CPU, with nothing else to do: per second, not per
task.

    python benchmarks/sync_cost.py [--seconds S] [--rounds N]

A `shared_engine` worker with no jobs, its `AccountSync` running (each round one Lua
script: the heartbeat), against the same worker with the account not shared (no sync), in
one run, alternating, `--rounds` times each. Printed per way: CPU milliseconds per second
of this process (`os.times`, user and system) and sync rounds per second. A worker with
jobs leases and reports in the same rounds, so its sync costs more (see README, "Scale-out:
many workers, one account"); what does not grow is its count: `period` rounds a second,
whatever the load. Redis: `$CAPTCHAFLOW_REDIS_URL`, else a `redis-server` started here.

Last line: `sync_cost: cpu_ms_per_second=X rounds_per_second=Y idle_cpu_ms_per_second=Z`
(X with the sync, Z without it: the worker's own idle cost, in the same run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import anyio
from workers import redis_for_benchmark  # this folder is on the path when run as a script

from captchaflow.engine.distributed import shared_engine

KEY = "bench-sync-cost-key"


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def measure(url: str, seconds: float, sync: bool) -> tuple[float, float]:
    """CPU ms per second and sync rounds per second of one idle worker over `seconds`."""
    namespace = f"bench-sync-cost-{time.time_ns()}"
    async with shared_engine(url, KEY, namespace=namespace, share_account=sync) as runtime:
        await anyio.sleep(0.5)  # past the first rounds
        cpu, rounds = cpu_seconds(), runtime.sync.rounds
        await anyio.sleep(seconds)
        cpu, rounds = cpu_seconds() - cpu, runtime.sync.rounds - rounds
    return cpu * 1000 / seconds, rounds / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with redis_for_benchmark() as url:
        for _ in range(args.rounds):
            for sync in (True, False):
                results[sync].append(anyio.run(measure, url, args.seconds, sync, backend="asyncio"))
    print(f"an idle worker, {args.seconds:g} s, {args.rounds} round(s) each way")
    print(f"{'way':<10}{'cpu ms/s':>10}{'rounds/s':>10}")
    for sync, label in ((True, "sync"), (False, "no sync")):
        print(
            f"{label:<10}{statistics.fmean(c for c, _ in results[sync]):>10.1f}"
            f"{statistics.fmean(r for _, r in results[sync]):>10.1f}"
        )
    with_sync = statistics.fmean(c for c, _ in results[True])
    rounds = statistics.fmean(r for _, r in results[True])
    idle = statistics.fmean(c for c, _ in results[False])
    print(
        f"sync_cost: cpu_ms_per_second={with_sync:.1f} rounds_per_second={rounds:.1f} "
        f"idle_cpu_ms_per_second={idle:.1f}"
    )


if __name__ == "__main__":
    main()
