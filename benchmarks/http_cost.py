"""What a request costs the client: the engine over each transport against bare HTTP clients
doing the same requests, in one run, against `captchaflow serve-sim` on loopback.

The server (a separate process, whose CPU is not counted) solves every task at once and
answers after `--latency` seconds (default 0), so each task is one createTask and one
getTaskResult. Every client runs `--tasks` tasks (default 1,000), at most `--in-flight`
(default 100) at a time, over a pool of `--connections` connections (default 100, the
transports' default), and polls `--poll` seconds (default 0.01) after each createTask:

- `engine+httpx`, `engine+aiohttp`: `Engine.solve_many` over `HttpxTransport` and
  `AiohttpTransport`, the engine's defaults otherwise (account gate, log hooks);
- `httpx-bare`, `aiohttp-bare`: a hand-written client (`client.post(url, json=...)`, the
  reply parsed as JSON), its tasks started as `solve_many` starts them (one task group, one
  `CapacityLimiter` token per task);
- `requests`: the provider's example (tests/provider_example_client.py: one `requests.post`
  per call, a new connection each), in `--in-flight` threads.

Printed per client: CPU seconds of this process per 1,000 requests (`time.process_time`,
every thread included) and requests per second, each the best of `--rounds` rounds (default
5); the clients alternate within each round, after one untimed warm-up run each. Last line:
`http: cpu_per_request_vs_httpx_bare=X fastest_vs_aiohttp_bare=Y` (X: `engine+httpx` against
`httpx-bare`; Y: the cheaper engine transport against `aiohttp-bare`; both in CPU per
request). `--profile CLIENT` runs one client once under cProfile instead and prints where
its time goes.

(The file is not named `http.py`: beside the other benchmarks it would stand in for the
standard library's `http` in every one of them.)

    python benchmarks/http_cost.py [--tasks N] [--in-flight N] [--connections N] [--rounds N]
                                   [--poll S] [--latency S] [--profile CLIENT]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import cProfile
import gc
import importlib
import itertools
import pathlib
import pstats
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import httpx
from sim_server import serve_sim  # this folder is on the path when run as a script

from captchaflow.engine import Engine
from captchaflow.policies import FixedInterval
from captchaflow.transports import AiohttpTransport, HttpxTransport, Transport

ROOT = pathlib.Path(__file__).parents[1]
KEY = "bench-http-key-5c1e"
TASK = {"type": "ImageToTextTask", "body": "aGk="}
SCENARIO = {
    "latency": 0,
    "accounts": [{"key": KEY}],
    "default_task": {"solve_seconds": 0, "solve_spread": 0, "min_solve_seconds": 0},
}
CLIENTS = ("engine+httpx", "engine+aiohttp", "httpx-bare", "aiohttp-bare", "requests")


class Run:
    """One client's run: what it is given and, once done, how many requests it sent."""

    def __init__(self, base_url: str, tasks: int, in_flight: int, connections: int, poll: float):
        self.base_url = base_url
        self.tasks = tasks
        self.in_flight = in_flight
        self.connections = connections
        self.poll = poll
        self.requests = 0
        self.solved = 0


async def start_like_solve_many(run: Run, one: Callable[[], Awaitable[None]]) -> None:
    """Run `one` `run.tasks` times, at most `run.in_flight` at once, started as
    `Engine.solve_many` starts its tasks."""
    limiter = anyio.CapacityLimiter(run.in_flight)

    async def task(token: object) -> None:
        try:
            await one()
        finally:
            limiter.release_on_behalf_of(token)

    async with anyio.create_task_group() as group:
        for _ in range(run.tasks):
            token = object()
            await limiter.acquire_on_behalf_of(token)
            group.start_soon(task, token)


async def engine_client(run: Run, transport: Transport) -> None:
    """`Engine.solve_many` over `transport`."""
    async with transport:
        engine = Engine(KEY, transport=transport, poll_schedule=FixedInterval(interval=run.poll))
        async with engine.solve_many([TASK] * run.tasks, max_in_flight=run.in_flight) as done:
            async for job in done:
                run.requests += job.requests_sent
                run.solved += job.solution is not None


async def engine_httpx(run: Run) -> None:
    await engine_client(run, HttpxTransport(run.base_url, max_connections=run.connections))


async def engine_aiohttp(run: Run) -> None:
    await engine_client(run, AiohttpTransport(run.base_url, max_connections=run.connections))


async def httpx_bare(run: Run) -> None:
    """A hand-written httpx client."""
    limits = httpx.Limits(
        max_connections=run.connections, max_keepalive_connections=run.connections
    )
    async with httpx.AsyncClient(limits=limits) as client:

        async def post(path: str, payload: dict[str, Any]) -> Any:
            run.requests += 1
            return (await client.post(run.base_url + path, json=payload)).json()

        await start_like_solve_many(run, lambda: solve_one(run, post))


async def aiohttp_bare(run: Run) -> None:
    """A hand-written aiohttp client."""
    connector = aiohttp.TCPConnector(limit=run.connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(path: str, payload: dict[str, Any]) -> Any:
            run.requests += 1
            async with session.post(run.base_url + path, json=payload) as reply:
                return await reply.json(content_type=None)  # serve-sim names no type

        await start_like_solve_many(run, lambda: solve_one(run, post))


async def solve_one(run: Run, post: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> None:
    """One task as a bare client solves it: create, then poll every `run.poll` s."""
    created = await post("/createTask", {"clientKey": KEY, "task": TASK})
    while True:
        await anyio.sleep(run.poll)
        result = await post("/getTaskResult", {"clientKey": KEY, "taskId": created["taskId"]})
        if result.get("status") == "ready":
            run.solved += 1
            return


def requests_example(run: Run) -> None:
    """The provider's example client, one thread per task in flight."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        example = importlib.import_module("provider_example_client")
    finally:
        sys.path.remove(str(ROOT / "tests"))
    example.BASE_URL, example.API_KEY = run.base_url, KEY
    counter = itertools.count()
    post = example.post

    def counted(path: str, payload: dict[str, Any]) -> Any:
        next(counter)
        return post(path, payload)

    example.post = counted
    try:
        with concurrent.futures.ThreadPoolExecutor(run.in_flight) as pool:
            run.solved = sum(1 for _ in pool.map(example.solve, [TASK] * run.tasks))
    finally:
        example.post = post
    run.requests = next(counter)


ASYNC_CLIENTS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "engine+httpx": engine_httpx,
    "engine+aiohttp": engine_aiohttp,
    "httpx-bare": httpx_bare,
    "aiohttp-bare": aiohttp_bare,
}


def run_client(name: str, run: Run) -> tuple[float, float]:
    """Run client `name`; return (CPU seconds of this process, wall seconds)."""
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    if name == "requests":
        requests_example(run)
    else:
        anyio.run(ASYNC_CLIENTS[name], run)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if run.solved != run.tasks:
        raise SystemExit(f"{name} solved {run.solved} of {run.tasks} tasks")
    return cpu, wall


def profile(name: str, make_run: Callable[[], Run]) -> None:
    """Run client `name` once under cProfile; print the top of its profile."""
    profiler = cProfile.Profile()
    profiler.enable()
    run_client(name, make_run())
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.01)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--profile", choices=CLIENTS)
    args = parser.parse_args()
    with serve_sim({**SCENARIO, "latency": args.latency}) as url:

        def make_run(tasks: int = args.tasks) -> Run:
            return Run(url, tasks, args.in_flight, args.connections, args.poll)

        if args.profile:
            profile(args.profile, make_run)
            return
        for name in CLIENTS:  # warm-up: imports, first connections, caches
            run_client(name, make_run(min(args.tasks, 50)))
        cpu = {name: float("inf") for name in CLIENTS}
        rate = dict.fromkeys(CLIENTS, 0.0)
        for round_ in range(args.rounds):
            order = CLIENTS if round_ % 2 == 0 else CLIENTS[::-1]
            for name in order:
                run = make_run()
                used, wall = run_client(name, run)
                cpu[name] = min(cpu[name], used / run.requests * 1000)
                rate[name] = max(rate[name], run.requests / wall)
    print(
        f"{args.tasks} tasks, {args.in_flight} in flight, pools of {args.connections} "
        f"connections, best of {args.rounds} rounds (serve-sim on loopback, solved at once, "
        f"{args.latency:g} s latency)"
    )
    print(f"{'client':<16} {'cpu s/1000 req':>15} {'req/s':>8}")
    for name in CLIENTS:
        print(f"{name:<16} {cpu[name]:>15.3f} {rate[name]:>8.0f}")
    fastest = min(cpu["engine+httpx"], cpu["engine+aiohttp"])
    print(
        f"http: cpu_per_request_vs_httpx_bare={cpu['engine+httpx'] / cpu['httpx-bare']:.2f} "
        f"fastest_vs_aiohttp_bare={fastest / cpu['aiohttp-bare']:.2f}"
    )


if __name__ == "__main__":
    main()
