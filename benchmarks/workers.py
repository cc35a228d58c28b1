"""Four workers on one account: sharing it through Redis, against each on its own.

The simulated service (`captchaflow serve-sim`'s server, `SimulatorServer`, run in this
process so its counters can be read) holds one account with a request-rate limit of `--rate`
requests per second and `--slots` task slots; tasks take 2 +- 1 s to solve. `--tasks` tasks
go into one Redis work queue, and 4 `captchaflow worker` processes (each `--concurrency` 50)
solve them, run two ways, alternately, `--rounds` times each, in the same run:

- `shared`: the workers share the account through Redis (`SharedGate` kept in step with the
  account's shared state: one learned rate, one slot count, one pause);
- `independent`: each worker has its own local gate (`--local-gate`), which learns the
  account's limits on its own, as four separately configured processes would.

Both share the work queue and the journal, so the only difference is the account. Printed
per way (mean over rounds): requests sent, rejected requests (RATE_LIMITED, 16, and
NO_SLOT_AVAILABLE, 2), makespan (first task queued to last result collected) and tasks
billed per task (and each round's figures as it ends: rounds vary by several seconds,
so compare means). Redis: `$CAPTCHAFLOW_REDIS_URL`, else a `redis-server` started here.

Last line: `workers: rejected_vs_independent=X makespan_vs_independent=Y billed_per_task=Z`
(Z the worst of both ways).

    python benchmarks/workers.py [--tasks N] [--rate R] [--slots S] [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import anyio
import attrs

from captchaflow.engine.distributed import WorkQueue
from captchaflow.transports.sim import (
    AccountSpec,
    Scenario,
    SimulatedAPI,
    TaskTypeSpec,
    simulator_in_thread,
)

KEY = "bench-workers-key-0123456789"
WORKERS = 4
TASK = {"type": "ImageToTextTask", "body": "aGk="}


@attrs.frozen
class Outcome:
    requests: int
    rejected: int
    rate_limited: int
    no_slot: int
    makespan: float
    billed_per_task: float
    solved: int


def start_redis() -> tuple[str, subprocess.Popen[bytes] | None, str | None]:
    url = os.environ.get("CAPTCHAFLOW_REDIS_URL")
    if url:
        return url, None, None
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("workers: needs Redis: install redis-server or set CAPTCHAFLOW_REDIS_URL")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="cf-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0", proc, directory


@contextlib.contextmanager
def redis_for_benchmark() -> Iterator[str]:
    """The URL of a Redis for a benchmark (see `start_redis`), stopped and removed after."""
    url, proc, directory = start_redis()
    try:
        yield url
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def run_once(way: str, args: argparse.Namespace, redis_url: str) -> Outcome:
    scenario = Scenario(
        accounts=(AccountSpec(key=KEY, rate_limit=args.rate, slots=args.slots),),
        default_task=TaskTypeSpec(solve_seconds=2.0, solve_spread=1.0, min_solve_seconds=0.5),
        latency=0.005,
    )
    api = SimulatedAPI(scenario, seed=args.seed, keep_log=args.trace)
    namespace = f"bench-{uuid.uuid4().hex[:10]}"
    with simulator_in_thread(api) as server:
        command = [sys.executable, "-m", "captchaflow.engine.cli", "worker"]
        command += ["--redis", redis_url, "--namespace", namespace, "--base-url", server.base_url]
        command += ["--concurrency", str(args.concurrency), "--timeout", "300"]
        if way == "independent":
            command.append("--local-gate")
        env = {**os.environ, "NOCAPTCHA_API_KEY": KEY}
        procs = [
            subprocess.Popen(
                [*command, "--name", f"w{n}"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for n in range(WORKERS)
        ]
        try:
            makespan, solved = anyio.run(
                collect, redis_url, namespace, args.tasks, args.trace, backend="asyncio"
            )
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if args.trace:
        trace(way, api)
    outcomes = api.stats.outcomes
    rate_limited = sum(n for label, n in outcomes.items() if label.endswith(" code:16"))
    no_slot = sum(n for label, n in outcomes.items() if label.endswith(" code:2"))
    return Outcome(
        requests=sum(api.stats.requests.values()),
        rejected=rate_limited + no_slot,
        rate_limited=rate_limited,
        no_slot=no_slot,
        makespan=makespan,
        billed_per_task=api.stats.tasks_created / args.tasks,
        solved=solved,
    )


def trace(way: str, api: SimulatedAPI) -> None:
    """Print the rejected requests per 2-s bucket of the run (`--trace`)."""
    import collections

    start = min((entry.at for entry in api.log), default=0.0)
    buckets: collections.Counter[tuple[int, str]] = collections.Counter()
    for entry in api.log:
        if entry.label in ("code:16", "code:2"):
            buckets[int((entry.at - start) // 2), entry.label] += 1
    last = max((b for b, _ in buckets), default=0)
    print(
        f"{way}: rejected per 2 s (16/2):",
        " ".join(f"{buckets[b, 'code:16']}/{buckets[b, 'code:2']}" for b in range(last + 1)),
    )


async def collect(
    redis_url: str, namespace: str, tasks: int, trace: bool = False
) -> tuple[float, int]:
    """Wait for the workers to be up, queue the tasks, collect every result; return the
    makespan and the tasks solved (`trace`: print the account's shared state after)."""
    queue = WorkQueue.from_url(redis_url, namespace=namespace)
    try:
        await queue.ensure_group()
        for _ in range(200):  # the workers join the group once their imports are done
            consumers = await queue.client.xinfo_consumers(queue.tasks_key, queue.group)
            if len(consumers) >= WORKERS:
                break
            await anyio.sleep(0.1)
        started = time.monotonic()
        await queue.enqueue_many((f"job-{n}", TASK) for n in range(tasks))
        after, states = "0", {}
        while len(states) < tasks:
            after, pairs = await queue.results(after, block=1.0)
            for job_id, record in pairs:
                states[job_id] = record.get("state")
            if time.monotonic() - started > 600:
                raise SystemExit("workers: the run did not finish within 600 s")
        makespan = time.monotonic() - started
        if trace:
            keys = await queue.client.keys(f"{namespace}:account:*:state")
            for key in keys:
                print("shared state:", await queue.client.hgetall(key))
        return makespan, sum(state == "ready" for state in states.values())
    finally:
        await queue.aclose()


def mean(outcomes: list[Outcome], field: str) -> float:
    return statistics.fmean(getattr(outcome, field) for outcome in outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--rate", type=int, default=30, help="requests/s the account allows")
    parser.add_argument("--slots", type=int, default=20, help="task slots of the account")
    parser.add_argument("--concurrency", type=int, default=50, help="per worker")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trace", action="store_true", help="rejections over time")
    parser.add_argument(
        "--ways", default="shared,independent", help="which ways to run (both for the summary)"
    )
    args = parser.parse_args()
    results: dict[str, list[Outcome]] = {way: [] for way in args.ways.split(",")}
    with redis_for_benchmark() as redis_url:
        for number in range(1, args.rounds + 1):
            for way in results:
                outcome = run_once(way, args, redis_url)
                results[way].append(outcome)
                print(
                    f"round {number} {way}: makespan {outcome.makespan:.1f} s, "
                    f"{outcome.requests} requests, {outcome.rejected} rejected",
                    flush=True,
                )
    print(
        f"{args.tasks} tasks, {WORKERS} workers x {args.concurrency}, account: "
        f"{args.rate} requests/s, {args.slots} slots; mean of {args.rounds} round(s)"
    )
    print(
        f"{'way':<12} {'solved':>7} {'requests':>9} {'rejected':>9} {'(16)':>6} {'(2)':>6} "
        f"{'makespan s':>11} {'billed/task':>12}"
    )
    for way, outcomes in results.items():
        print(
            f"{way:<12} {mean(outcomes, 'solved'):>7.0f} {mean(outcomes, 'requests'):>9.0f} "
            f"{mean(outcomes, 'rejected'):>9.0f} {mean(outcomes, 'rate_limited'):>6.0f} "
            f"{mean(outcomes, 'no_slot'):>6.0f} {mean(outcomes, 'makespan'):>11.1f} "
            f"{max(o.billed_per_task for o in outcomes):>12.3f}"
        )
    if set(results) != {"shared", "independent"}:
        return
    shared, independent = results["shared"], results["independent"]
    rejected = mean(shared, "rejected") / max(1.0, mean(independent, "rejected"))
    makespan = mean(shared, "makespan") / mean(independent, "makespan")
    billed = max(o.billed_per_task for o in shared + independent)
    print(
        f"workers: rejected_vs_independent={rejected:.3f} "
        f"makespan_vs_independent={makespan:.3f} billed_per_task={billed:.3f}"
    )


if __name__ == "__main__":
    main()
