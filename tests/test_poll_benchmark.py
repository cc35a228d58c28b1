"""benchmarks/polling.py: a small run end to end (its summary line well formed), its model of
a job's polling agreeing poll for poll with the real engine (`Simulation` against
`SimulatedAPI`), its bound, and the optional plot. No timing or ratio targets: a benchmark
is not a test."""

from __future__ import annotations

import importlib.util
import math
import pathlib
import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

from captchaflow.engine import Simulation
from captchaflow.policies import AdaptivePoll, FixedInterval, PollSchedule
from captchaflow.transports.sim import AccountSpec, Scenario, SimulatedAPI, TaskTypeSpec

ROOT = pathlib.Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "polling.py"
RATIO = r"(\d+\.\d{3})"
SUMMARY = re.compile(
    rf"polling: polls_vs_seed={RATIO} latency_vs_seed={RATIO} "
    rf"after_shift_polls_vs_seed={RATIO} after_shift_latency_vs_seed={RATIO}"
)
KEY = "bench-polling-key"


@pytest.fixture(scope="module")
def polling() -> Iterator[ModuleType]:
    """The script, imported from its file (benchmarks/ is not a package)."""
    name = "captchaflow_benchmark_polling"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def test_small_run_prints_a_well_formed_summary_last() -> None:
    """`--tasks 300` exits 0; every workload and schedule has a row; the last line is the
    summary, its four ratios positive and finite."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tasks", "300", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    match = SUMMARY.fullmatch(lines[-1])
    assert match is not None, lines[-1]
    assert all(0 < float(ratio) < math.inf for ratio in match.groups())
    for workload in ("lognormal-3s", "lognormal-8s", "lognormal-20s", "bimodal", "shift-5s-15s"):
        for schedule in ("fixed-2s", "fixed-10s", "adaptive", "adaptive-1.5s", "oracle"):
            assert any(line.split()[:2] == [workload, schedule] for line in lines)
    assert sum(line.startswith("shift-5s-15s") and "after shift" in line for line in lines) == 5


def _figures(row: object) -> tuple[object, ...]:
    names = ("workload", "schedule", "part", "polls_per_task", "mean_latency", "p95_latency")
    return tuple(getattr(row, name) for name in names)


def test_same_seed_same_figures(polling: ModuleType) -> None:
    """The run is a pure function of the task count and the seed (wall times aside)."""
    first = polling.run(200, 5, out=lambda _: None)
    again = polling.run(200, 5, out=lambda _: None)
    assert [_figures(r) for r in first[0]] == [_figures(r) for r in again[0]]
    assert first[1:] == again[1:]


def test_oracle_and_fixed_rows_follow_their_definitions(polling: ModuleType) -> None:
    """The oracle polls once with no latency; polling every 2 s finds a task solved in `s`
    seconds at poll ceil(s / 2), less than 2 s after it was solved, and teaches nothing."""
    tasks = polling.make_tasks(polling.WORKLOADS[1], 500, 1)
    oracle = polling.oracle(tasks)
    assert set(oracle.polls) == {1} and set(oracle.latency) == {0.0}
    fixed = polling.run_schedule(FixedInterval(interval=2.0), tasks)
    assert all(0 <= lat < 2.0 for lat in fixed.latency)
    assert fixed.observed == ()
    for polls, solve in zip(fixed.polls, tasks.solves, strict=True):
        if abs(solve / 2.0 - round(solve / 2.0)) > 1e-6:  # not on a poll, give or take
            assert polls == math.ceil(solve / 2.0)


def test_bound_of_one_solve_time_is_one_poll(polling: ModuleType) -> None:
    """Tasks that all take 5 s: one poll at 5 s catches them all, so the bound is 1."""
    assert polling.bound([5.0] * 50, 1.0) == pytest.approx(1.0)
    spread = [1.0 + 0.1 * k for k in range(100)]
    assert 1.0 < polling.bound(spread, 0.5) < polling.bound(spread, 0.1)


# -- the model against the engine -------------------------------------------------------------


class Recording:
    """Wraps a schedule and records the times to solution the driver reports to it."""

    def __init__(self, inner: PollSchedule) -> None:
        self.inner = inner
        self.observed: list[float] = []

    def delay_before_poll(self, poll: int) -> float:
        return self.inner.delay_before_poll(poll)

    def observe_solved(self, seconds: float) -> None:
        self.observed.append(seconds)
        observe = getattr(self.inner, "observe_solved", None)
        if callable(observe):
            observe(seconds)


SCHEDULES: list[tuple[str, Callable[[], PollSchedule]]] = [
    ("fixed-2s", lambda: FixedInterval(interval=2.0)),
    ("fixed-first", lambda: FixedInterval(interval=1.5, first=4.0)),
    ("adaptive", lambda: AdaptivePoll(min_samples=5, shape_samples=20, memory=48)),
]


@pytest.mark.parametrize("make", [make for _, make in SCHEDULES], ids=[n for n, _ in SCHEDULES])
def test_model_agrees_with_the_engine_poll_for_poll(
    polling: ModuleType, make: Callable[[], PollSchedule]
) -> None:
    """The benchmark's model and the real engine (`Simulation` with `SimulatedAPI`, fixed
    solve times, no latency, no faults) make the same number of polls for every task and
    tell a learning schedule the same times to solution in the same order, so the model
    cannot drift from what `Job` does."""
    rng = random.Random(7)
    count = 160
    arrivals, now = [], 0.0
    for _ in range(count):
        now += rng.expovariate(20.0)
        arrivals.append(now)
    solves = [3.0 * math.exp(rng.gauss(0.0, 0.6)) for _ in range(count)]
    tasks = polling.Tasks(tuple(arrivals), tuple(solves))

    kinds = {
        f"t{i}": TaskTypeSpec(solve_seconds=solve, solve_spread=0.0, min_solve_seconds=0.0)
        for i, solve in enumerate(solves)
    }
    scenario = Scenario(accounts=(AccountSpec(key=KEY),), task_types=kinds, latency=0.0)
    engine_schedule = Recording(make())
    simulation = Simulation(
        SimulatedAPI(scenario, seed=1, keep_log=False), key=KEY, poll_schedule=engine_schedule
    )
    for i, at in enumerate(arrivals):
        simulation.submit({"type": f"t{i}", "body": "aGVsbG8="}, at=at)
    report = simulation.run()
    assert report.states() == {"ready": count}

    model_schedule = Recording(make())
    outcome = polling.run_schedule(model_schedule, tasks)
    assert [job.polls for job in report.jobs] == list(outcome.polls)
    assert engine_schedule.observed == model_schedule.observed == list(outcome.observed)
    assert len(outcome.observed) == count


# -- the plot ------------------------------------------------------------------------------


def test_plot_is_drawn_or_skipped_without_matplotlib(
    polling: ModuleType, tmp_path: pathlib.Path
) -> None:
    """With matplotlib the plot is a PNG at the path given; without it nothing is written
    and the script says it skipped the plot (matplotlib is an optional extra)."""
    rows, _, _ = polling.run(100, 1, out=lambda _: None)
    target = tmp_path / "polling.png"
    drawn = polling.plot(rows, target)
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert drawn is has_matplotlib
    assert target.exists() is has_matplotlib
    if drawn:
        assert target.read_bytes().startswith(b"\x89PNG")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tasks", "100", "--plot", str(tmp_path / "cli.png")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    note = "plot: wrote" if has_matplotlib else "plot: matplotlib is not installed; skipped"
    assert note in proc.stdout
    assert SUMMARY.fullmatch(proc.stdout.strip().splitlines()[-1])
