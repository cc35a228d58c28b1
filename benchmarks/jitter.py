"""Exponential backoff and jitter: the AWS contention experiment, with the engine's policies.

Reproduces the experiment behind the AWS Architecture Blog post "Exponential Backoff And
Jitter" (Marc Brooker, 2015), following its simulator, aws-samples/aws-arch-backoff-simulator
(`src/backoff_simulator.py`), with the retry delays chosen by `captchaflow.policies` instead
of the simulator's own backoff classes.

The model (the simulator's, in virtual time; no sleeping, no I/O):

- one contended resource: a single row with a version number, written with optimistic
  concurrency control (OCC);
- N clients start at t=0 and each needs exactly one successful write; a client reads the
  version, then writes conditionally on it; the write succeeds only if the version is still
  the one it read, i.e. no other client's write committed in between; so clients whose
  read-write cycles overlap conflict, and all but the first to commit fail and must retry;
- every network hop (read request, read reply, write request, write reply) takes
  |Normal(10 ms, 2 ms)|;
- after a failed write the client asks the policy (`decide()` with a transient failure that
  carries no retry hint: an HTTP 503, the failure the engine would see) and starts its next
  read after one network hop plus the returned `RetryAfter.delay`;
- policies: `Exponential` (no jitter), `FullJitter`, `EqualJitter`, `DecorrelatedJitter`, all
  with base 5 ms and cap 2 s as in the post, `max_attempts` high enough that every client
  finishes, and a seeded `random.Random`;
- measured per run: calls (writes sent, i.e. the work done by the resource) and completion
  time (when the last client learned its write had succeeded); each figure is the mean
  over `--runs` runs, run r using seed `--seed + r` for both the policies and the network.

One deliberate difference from the simulator: the engine counts `attempt` from 1 at the
first failure and waits `base * 2 ** (attempt - 1)`, so its first retry waits up to 5 ms
where the simulator's waits up to 10 ms. (Decorrelated jitter starts from `base` in both.)

`--via-simulator` adds the same experiment run by the engine itself: `Simulation` jobs
(the real `Job` state machine and retry loop) against a `SimulatedAPI` whose createTask is
the contended resource. A createTask fails with an HTTP 503 without `Retry-After` (so the
policy alone chooses the wait) when another createTask succeeded less than one read round
trip (20 ms) before it: the conflict window of the OCC write. Latency there is one request
and reply (two hops), as the simulated API has no separate read. It is slower (the whole
engine runs for every request): about 20 s of CPU with the defaults, against 3 s without.

Usage:

    python benchmarks/jitter.py [--clients 10,20,30,40,50] [--runs 20] [--seed 1]
                                [--via-simulator]

How to read the output: two tables (one per model with `--via-simulator`), one row per
client count, columns `calls` (mean writes per run) and `time` (mean completion time, ms)
for each policy. The post's shape: the no-jitter `exponential` column needs far more calls
than any jittered one, and `full` and `decorrelated` need the fewest. The last line is

    jitter: calls_vs_no_jitter full=X equal=Y decorrelated=Z

the mean calls of each jittered policy at the largest client count divided by those of
`exponential` in the same run (lower is better; 1 would mean jitter does not help).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeAlias

import attrs

from captchaflow.engine import Accepted, Job, Outcome, Simulation
from captchaflow.policies import (
    BackoffPolicy,
    Bucket,
    DecorrelatedJitter,
    EqualJitter,
    Exponential,
    Failure,
    FixedInterval,
    FullJitter,
    GiveUp,
    RetryContext,
)
from captchaflow.transports import ApiReply, ApiRequest, Endpoint
from captchaflow.transports.sim import (
    AccountSpec,
    RequestFate,
    Scenario,
    SimulatedAPI,
    SimulatedExchange,
    TaskTypeSpec,
)

BASE: Final = 0.005
"""Seconds: the post's 5 ms base."""
CAP: Final = 2.0
"""Seconds: the post's 2 s cap."""
HOP_MEAN: Final = 0.010
HOP_SD: Final = 0.002
"""One network hop: |Normal(10 ms, 2 ms)|, the simulator's `Net(10, 2)`."""
MAX_ATTEMPTS: Final = 100_000
"""Far above what any client needs: every client must finish."""
KEY: Final = "bench-jitter-key"
TASK: Final = {"type": "ImageToTextTask", "body": "aGVsbG8="}

PolicyFactory: TypeAlias = Callable[[random.Random], BackoffPolicy]

VARIANTS: Final[Mapping[str, PolicyFactory]] = {
    "exponential": lambda rng: Exponential(base=BASE, cap=CAP, max_attempts=MAX_ATTEMPTS, rng=rng),
    "full": lambda rng: FullJitter(base=BASE, cap=CAP, max_attempts=MAX_ATTEMPTS, rng=rng),
    "equal": lambda rng: EqualJitter(base=BASE, cap=CAP, max_attempts=MAX_ATTEMPTS, rng=rng),
    "decorrelated": lambda rng: DecorrelatedJitter(
        base=BASE, cap=CAP, max_attempts=MAX_ATTEMPTS, rng=rng
    ),
}
"""The policies compared; `exponential` is the no-jitter reference."""

CONFLICT: Final = Failure(
    Bucket.TRANSIENT_HTTP,
    "HTTP_503",
    "write conflict: the row changed since it was read",
    Endpoint.CREATE_TASK,
    http_status=503,
)
"""What a failed write looks like to the policy: transient, no retry hint. (A 503 rather
than a 409: the engine classifies 409 as unexpected HTTP, which no built-in retries.)"""


@attrs.frozen
class Result:
    """One run of one policy: writes sent, and when the last client succeeded (seconds)."""

    calls: int
    completion: float


class _Net:
    """Network hops: |Normal(mean, sd)| seconds, from a seeded generator."""

    __slots__ = ("rng",)

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def hop(self) -> float:
        return abs(self.rng.normalvariate(HOP_MEAN, HOP_SD))


def _next_delay(policy: BackoffPolicy, attempt: int, now: float, previous: float | None) -> float:
    """Ask the engine's policy how long to wait after failure number `attempt`."""
    context = RetryContext(
        attempt=attempt, resubmits=0, now=now, deadline=math.inf, previous_delay=previous
    )
    decision = policy.decide(CONFLICT, context)
    if isinstance(decision, GiveUp):
        raise RuntimeError(f"the policy gave up ({decision.reason}); raise MAX_ATTEMPTS")
    return decision.delay


# Event kinds of the OCC model.
_READ, _READ_REPLY, _WRITE, _WRITE_REPLY = range(4)


def run_occ(clients: int, policy: BackoffPolicy, net: _Net) -> Result:
    """The simulator's OCC experiment: `clients` clients, one write each, `policy` backoff."""
    version = 0
    calls = 0
    completion = 0.0
    attempts = [0] * clients
    previous: list[float | None] = [None] * clients
    sequence = itertools.count()
    # (time, tie-breaker, event kind, client, payload: a version or a write's success)
    events: list[tuple[float, int, int, int, int]] = [
        (net.hop(), next(sequence), _READ, client, 0) for client in range(clients)
    ]
    heapq.heapify(events)
    while events:
        now, _, kind, client, payload = heapq.heappop(events)
        if kind == _READ:  # the server reads the row; the reply carries its version
            event = (now + net.hop(), next(sequence), _READ_REPLY, client, version)
        elif kind == _READ_REPLY:  # the client writes, conditional on the version it read
            event = (now + net.hop(), next(sequence), _WRITE, client, payload)
        elif kind == _WRITE:  # the server commits only if nobody wrote since the read
            calls += 1
            success = payload == version
            if success:
                version += 1
            event = (now + net.hop(), next(sequence), _WRITE_REPLY, client, int(success))
        elif payload:  # the write reply: success, this client is done
            completion = now
            continue
        else:  # the write reply: a conflict; back off and read again
            attempts[client] += 1
            delay = _next_delay(policy, attempts[client], now, previous[client])
            previous[client] = delay
            event = (now + net.hop() + delay, next(sequence), _READ, client, 0)
        heapq.heappush(events, event)
    return Result(calls, completion)


class ContendedAPI(SimulatedAPI):
    """The simulated API with createTask as an OCC-contended resource.

    A createTask fails with an HTTP 503 and no `Retry-After` when another one succeeded
    less than `window` seconds before it; otherwise the service handles it as usual. Every
    exchange takes two network hops (request and reply) drawn from `net`.
    """

    def __init__(self, scenario: Scenario, *, seed: int, net: _Net, window: float) -> None:
        super().__init__(scenario, seed=seed, keep_log=False)
        self.net = net
        self.window = window
        self.writes = 0
        self._last_success = -math.inf

    def handle(self, request: ApiRequest, now: float) -> SimulatedExchange:
        """As `SimulatedAPI.handle`, with write conflicts on createTask."""
        latency = self.net.hop() + self.net.hop()
        if request.endpoint is Endpoint.CREATE_TASK:
            self.writes += 1
            if now - self._last_success < self.window:
                self.stats.requests["/createTask"] += 1
                body = b"<html><body><h1>503</h1>write conflict</body></html>"
                reply = ApiReply(503, body, {"content-type": "text/html"})
                self.stats.outcomes["/createTask http:503"] += 1
                return SimulatedExchange(
                    RequestFate.REPLY, latency, reply, server_acted=False, label="http:503"
                )
            self._last_success = now
        return attrs.evolve(super().handle(request, now), latency=latency)


def run_simulator(clients: int, policy: BackoffPolicy, net: _Net, seed: int) -> Result:
    """The same experiment run by the engine: `Simulation` jobs against `ContendedAPI`."""
    world = Scenario(
        accounts=(AccountSpec(key=KEY),),
        default_task=TaskTypeSpec(solve_seconds=0.0, solve_spread=0.0, min_solve_seconds=0.0),
        latency=2 * HOP_MEAN,
    )
    api = ContendedAPI(world, seed=seed, net=net, window=2 * HOP_MEAN)
    accepted: list[float] = []

    def watch(job: Job, request: ApiRequest, sent: float, seen: float, outcome: Outcome) -> None:
        if isinstance(outcome, Accepted):
            accepted.append(seen)

    simulation = Simulation(
        api,
        key=KEY,
        policy=policy,
        poll_schedule=FixedInterval(interval=1.0),
        timeout=365 * 86_400.0,
        on_exchange=watch,
    )
    for _ in range(clients):
        simulation.submit(TASK, at=0.0)
    report = simulation.run()
    states = report.states()
    if states.get("ready", 0) != clients or len(accepted) != clients:
        raise RuntimeError(f"not every client finished: {dict(states)}")
    return Result(api.writes, max(accepted))


Runner: TypeAlias = Callable[[int, BackoffPolicy, _Net, int], Result]


def _occ(clients: int, policy: BackoffPolicy, net: _Net, _seed: int) -> Result:
    return run_occ(clients, policy, net)


def measure(
    runner: Runner, client_counts: Sequence[int], runs: int, seed: int
) -> dict[tuple[str, int], tuple[float, float]]:
    """Mean (calls, completion seconds) per (policy, client count), over `runs` seeds."""
    table: dict[tuple[str, int], tuple[float, float]] = {}
    for clients in client_counts:
        for name, factory in VARIANTS.items():
            results = []
            for run in range(runs):
                run_seed = seed + run
                policy = factory(random.Random(run_seed))
                net = _Net(random.Random(f"net-{run_seed}"))
                results.append(runner(clients, policy, net, run_seed))
            table[name, clients] = (
                sum(r.calls for r in results) / runs,
                sum(r.completion for r in results) / runs,
            )
    return table


def print_table(
    title: str, table: Mapping[tuple[str, int], tuple[float, float]], client_counts: Sequence[int]
) -> None:
    """One row per client count; calls and completion time (ms) for each policy."""
    print(title)
    names = list(VARIANTS)
    print(f"{'':>7}" + "".join(f"{name:>22}" for name in names))
    print(f"{'clients':>7}" + "".join(f"{'calls':>11}{'time ms':>11}" for _ in names))
    for clients in client_counts:
        cells = "".join(
            f"{table[name, clients][0]:>11.1f}{table[name, clients][1] * 1000:>11.0f}"
            for name in names
        )
        print(f"{clients:>7}{cells}")


def _client_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("client counts must be positive integers")
    return counts


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main() -> None:
    """Run the experiment(s), print the tables and the summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=_client_counts, default=[10, 20, 30, 40, 50])
    parser.add_argument("--runs", type=_positive, default=20, help="runs (seeds) averaged")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first run")
    parser.add_argument(
        "--via-simulator",
        action="store_true",
        help="also run the experiment through Simulation and the simulated API",
    )
    args = parser.parse_args()
    counts: list[int] = args.clients
    started = time.perf_counter()
    occ = measure(_occ, counts, args.runs, args.seed)
    print(
        f"jitter: OCC contention (aws-arch-backoff-simulator model), base {BASE * 1000:g} ms, "
        f"cap {CAP:g} s, hops |N({HOP_MEAN * 1000:g}, {HOP_SD * 1000:g}) ms|; "
        f"mean of {args.runs} runs from seed {args.seed}"
    )
    print_table("in-benchmark OCC loop (engine policies' decide())", occ, counts)
    if args.via_simulator:
        sim = measure(run_simulator, counts, args.runs, args.seed)
        print_table(
            "via Simulation + SimulatedAPI (createTask conflicts: 503, no hint)", sim, counts
        )
    largest = max(counts)
    print(f"wall {time.perf_counter() - started:.1f} s")
    reference_calls, reference_time = occ["exponential", largest]
    print(
        f"jitter: time_vs_no_jitter at {largest} clients "
        + " ".join(
            f"{name}={occ[name, largest][1] / reference_time:.3f}"
            for name in VARIANTS
            if name != "exponential"
        )
    )
    print(
        "jitter: calls_vs_no_jitter "
        + " ".join(
            f"{name}={occ[name, largest][0] / reference_calls:.3f}"
            for name in VARIANTS
            if name != "exponential"
        )
    )


if __name__ == "__main__":
    main()
