"""benchmarks/regret.py: one small scenario end to end, the figures of each row consistent,
and the wall-time limit turning a run that never ends into a counted livelock."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import signal
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from captchaflow.engine import Simulation, SimulationReport

ROOT = pathlib.Path(__file__).parents[1]
SUMMARY = re.compile(
    r"regret: worst_solved_vs_open=\d+\.\d{3} worst_requests_per_solved_vs_open=\d+\.\d{3} "
    r"worst_makespan_vs_best_pool=\d+\.\d{3} livelocks=(\d+)"
)


@pytest.fixture(scope="module")
def regret() -> Iterator[ModuleType]:
    """The script, imported from its file (benchmarks/ is not a package)."""
    name = "captchaflow_benchmark_regret"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "regret.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def test_one_small_scenario_end_to_end(
    regret: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """A small run of one scenario: one finished row per strategy and seed whose figures
    add up, the ratios computed, no livelock, the summary line last, and no key printed."""
    regret.main(["--scenarios", "noise-3%", "--seeds", "1,2", "--tasks-scale", "0.05"])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    match = SUMMARY.fullmatch(lines[-1])
    assert match is not None, lines[-1]
    assert match.group(1) == "0"
    assert regret.KEY not in out

    (case,) = [case for case in regret.cases() if case.name == "noise-3%"]
    rows, (ratios,), summary = regret.run_matrix([case], [1, 2], 0.05, 60.0, out=lambda _: None)
    figures = {line.rsplit(maxsplit=1)[0] for line in lines if line.strip()}
    assert summary == lines[-1]  # the same run twice: the same figures
    assert [(row.seed, row.strategy) for row in rows] == [
        (seed, strategy) for seed in (1, 2) for strategy in regret.STRATEGIES
    ]
    for row in rows:
        assert not row.livelock
        assert row.tasks == 60
        assert row.solved + row.failed == row.tasks
        assert row.requests >= 2 * row.solved  # a createTask and a poll at least
        assert row.makespan > 0
        assert row.p95 is None or 0 < row.p95 <= row.makespan
        # the printed row, but for its wall time
        assert regret.format_row(row).rsplit(maxsplit=1)[0] in figures
    assert ratios.solved_vs_open is not None
    assert ratios.requests_vs_open is not None
    assert ratios.best_pool in {f"pool-{n}" for n in regret.POOLS}
    # The summary's Z is against the pools the targets name; the line before, against all.
    small = regret.ratios(case.name, rows, regret.SMALL_POOLS)
    assert summary.split()[3] == f"worst_makespan_vs_best_pool={small.makespan_vs_best_pool:.3f}"
    assert lines[-2].endswith(f"worst_makespan_vs_best_pool={ratios.makespan_vs_best_pool:.3f}")
    assert small.best_pool in {f"pool-{n}" for n in regret.SMALL_POOLS}


def test_ratios_follow_the_definitions(regret: ModuleType) -> None:
    """X, Y and Z on made-up rows: means over seeds, requests per task once a side solved
    nothing, and the best pool the quickest of those solving as many as the default."""
    row = regret.Row

    def rows(default: tuple[int, int, float], pools: dict[str, tuple[int, float]]) -> list[Any]:
        solved, requests, makespan = default
        made = [
            row("s", 1, "default", 10, solved, 10 - solved, requests, None, makespan, 0.0),
            row("s", 1, "open", 10, 8, 2, 40, None, 50.0, 0.0),
        ]
        for name, (got, span) in pools.items():
            made.append(row("s", 1, name, 10, got, 10 - got, 60, None, span, 0.0))
        return made

    ratios = regret.ratios("s", rows((4, 20, 100.0), {"pool-20": (10, 80.0), "pool-50": (3, 10.0)}))
    assert ratios.solved_vs_open == pytest.approx(0.5)
    assert ratios.requests_vs_open == pytest.approx((20 / 4) / (40 / 8))
    assert not ratios.per_task
    assert ratios.best_pool == "pool-20"  # pool-50 is quicker but lost tasks
    assert ratios.makespan_vs_best_pool == pytest.approx(100.0 / 80.0)

    ratios = regret.ratios("s", rows((0, 30, 100.0), {"pool-20": (0, 50.0), "pool-50": (0, 40.0)}))
    assert ratios.solved_vs_open == 0.0
    assert ratios.per_task
    assert ratios.requests_vs_open == pytest.approx(3.0 / 4.0)
    assert ratios.best_pool == "pool-50"

    ratios = regret.ratios("s", rows((9, 30, 100.0), {"pool-20": (5, 50.0), "pool-50": (7, 60.0)}))
    assert ratios.best_pool == "pool-50"  # none solved as many: the one that solved most


class Forever(Simulation):
    """A simulation whose run never ends (a livelock)."""

    def run(self) -> SimulationReport:
        """Spin."""
        spins = 0
        while True:
            spins += 1


def test_wall_limit_turns_a_run_that_never_ends_into_none(regret: ModuleType) -> None:
    """`run_with_wall_limit` stops a run that never ends after the limit and reports None;
    the SIGALRM handler and any timer set before (pytest-timeout's) are put back."""
    handler = signal.getsignal(signal.SIGALRM)
    timer_before = signal.getitimer(signal.ITIMER_REAL)[0]
    api = regret.SimulatedAPI(seed=1)
    report, wall = regret.run_with_wall_limit(Forever(api, key="k"), 0.2)
    assert report is None
    assert 0.2 <= wall < 10
    assert signal.getsignal(signal.SIGALRM) is handler
    if timer_before > 0:
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= timer_before
    else:
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_livelocked_runs_are_printed_and_counted(
    regret: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the pool-20 runs never end, the matrix goes on: each is printed as a livelock,
    counted in the summary, and left out of the ratios."""

    class StuckPools(Forever):
        def run(self) -> SimulationReport:
            if self.max_in_flight == 20:
                return super().run()
            return Simulation.run(self)

    monkeypatch.setattr(regret, "Simulation", StuckPools)
    (case,) = [case for case in regret.cases() if case.name == "zero-balance"]
    printed: list[str] = []
    rows, (ratios,), summary = regret.run_matrix([case], [1, 2], 0.05, 0.2, out=printed.append)
    stuck = [row for row in rows if row.livelock]
    assert [(row.seed, row.strategy) for row in stuck] == [(1, "pool-20"), (2, "pool-20")]
    assert sum("LIVELOCK" in line for line in printed) == 2
    assert summary.endswith(" livelocks=2")
    assert printed[-1] == summary
    assert ratios.best_pool in ("pool-50", "pool-100")
