"""How fast the discrete-event simulation driver runs jobs against the simulated API.

    python benchmarks/simulation.py [--tasks 1000,10000] [--seed 0]

For each batch size it runs `captchaflow demo`'s scenario (a rate limit, an outage, 3%
unsolvable captchas and every kind of network fault) and prints the real time, jobs per
second, how many times faster than real time the service's clock ran, and the cost per
request against a baseline measured in the same run: the bare wire work of the same number
of requests (encoding each request body and decoding each reply with `json`), which no
client can avoid. The last line is
`simulation: jobs=N wall_s=W x_real_time=X per_request_vs_json=R` for the largest batch.
"""

from __future__ import annotations

import argparse
import json
import time

from captchaflow.engine._demo import run_demo


def json_baseline(requests: int) -> float:
    """Seconds to encode a typical request body and decode a typical reply, `requests`
    times."""
    body = {"clientKey": "k", "taskId": 12345}
    reply = b'{"status": "ready", "solution": {"text": "w9h5k2"}}'
    started = time.perf_counter()
    for _ in range(requests):
        json.dumps(body).encode()
        json.loads(reply)
    return time.perf_counter() - started


def main() -> None:
    """Run the batches and print the table and the summary line."""
    parser = argparse.ArgumentParser(description="Simulation driver speed.")
    parser.add_argument("--tasks", default="1000,10000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(n) for n in args.tasks.split(",")]
    print(f"{'jobs':>7}{'requests':>10}{'wall s':>9}{'jobs/s':>10}{'x real':>9}{'vs json':>9}")
    line = ""
    for tasks in sizes:
        report, wall = run_demo(tasks, seed=args.seed)
        requests = sum(report.api.stats.requests.values())
        baseline = json_baseline(requests)
        ratio = wall / baseline
        speed = report.end / wall
        print(
            f"{tasks:>7}{requests:>10}{wall:>9.3f}{tasks / wall:>10.0f}{speed:>9.0f}{ratio:>9.1f}"
        )
        line = (
            f"simulation: jobs={tasks} wall_s={wall:.3f} x_real_time={speed:.0f} "
            f"per_request_vs_json={ratio:.1f}"
        )
    print(line)


if __name__ == "__main__":
    main()
