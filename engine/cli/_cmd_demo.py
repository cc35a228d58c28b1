"""`captchaflow demo`: a batch of tasks against the in-process simulated API, summarised
(the simulation and the summary are the engine's, in `captchaflow.engine._demo`)."""

from __future__ import annotations

import argparse
import collections
import sys
import time

from ._args import _add_simulation_options, _Commands, _task_count
from ._exit import commonest_exit_code
from ._inputs import _read_scenario


def register(commands: _Commands) -> argparse.ArgumentParser:
    """Add `demo` and its options to `commands`; return its parser."""
    demo_cmd = commands.add_parser(
        "demo",
        help="run a batch of tasks against the built-in simulated API (no key, no network)",
        description="Run a batch of tasks through the engine against the in-process "
        "simulated API, with a realistic mix of faults, in virtual time; print a summary.",
    )
    demo_cmd.add_argument(
        "--tasks", type=_task_count, default=200, metavar="N", help="how many tasks (200)"
    )
    _add_simulation_options(
        demo_cmd, "a scenario file (.json or .toml) instead of the built-in mix"
    )
    return demo_cmd


def run(args: argparse.Namespace) -> int:
    """Run the demo; print its summary (failures on stderr); return the exit status."""
    # The simulation and the display: only when the command runs.
    from captchaflow.engine._demo import format_failures, format_summary, run_demo

    from ._batch_tally import Tally
    from ._progress import LiveProgress, TallyHook

    scenario = _read_scenario(args.scenario) if args.scenario is not None else None
    if sys.stderr is not None and sys.stderr.isatty():
        # On a terminal, the same live display as `batch` (a long demo shows it is alive).
        tally = Tally(started=time.monotonic(), total=args.tasks)
        display = LiveProgress(tally, label="demo")
        try:
            report, wall = run_demo(
                args.tasks, seed=args.seed, scenario=scenario, hooks=(TallyHook(tally, display),)
            )
        finally:
            display.close()
    else:
        report, wall = run_demo(args.tasks, seed=args.seed, scenario=scenario)
    print(format_summary(report, wall, seed=args.seed))
    failures = format_failures(report)
    if failures is None:
        return 0
    print(failures, file=sys.stderr)
    errors = [job.error for job in report.jobs if job.error is not None]
    counts = collections.Counter(error.name for error in errors)
    code = commonest_exit_code(counts, {error.name: error for error in reversed(errors)})
    return code if code is not None else 0
