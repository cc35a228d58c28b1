"""The counts of one `captchaflow batch` run, and what is made of them: the progress line,
the summary table and the exit status. Pure: times are given, nothing is printed."""

from __future__ import annotations

import collections

import attrs

from captchaflow.engine._demo import _row
from captchaflow.engine._errors import CaptchaflowError
from captchaflow.engine._words import counted

from ._batch_io import Result
from ._exit import EXIT_USAGE, commonest_exit_code

FINAL_STATES = ("ready", "failed", "cancelled")


@attrs.define
class Tally:
    """What a batch run has done so far. `total` is the number of lines of TASKS that are
    not blank, once known (at once for a file, at the end of the input for a pipe)."""

    started: float
    total: int | None = None
    running: int = 0
    already_solved: int = 0
    bad_lines: int = 0
    unread_input: bool = False
    requests: int = 0
    states: collections.Counter[str] = attrs.field(factory=collections.Counter)
    failures: collections.Counter[str] = attrs.field(factory=collections.Counter)
    _first_errors: dict[str, CaptchaflowError] = attrs.field(factory=dict)

    def add(self, result: Result, requests: int) -> None:
        """Count a task's `result`, which took `requests` requests."""
        self.states[result.state] += 1
        self.requests += requests
        if result.state == "failed" and result.error is not None:
            self.failures[result.error.name] += 1
            self._first_errors.setdefault(result.error.name, result.error)

    @property
    def finished(self) -> int:
        """Tasks run to the end by this run (ready, failed or cancelled)."""
        return sum(self.states.values())

    @property
    def done(self) -> int:
        """Lines dealt with: tasks finished, tasks already solved, bad lines."""
        return self.finished + self.already_solved + self.bad_lines

    def rate(self, now: float) -> float:
        """Tasks finished per second since the start."""
        elapsed = now - self.started
        return self.finished / elapsed if elapsed > 0 else 0.0

    def breakdown(self) -> str:
        """`ready 110, failed 10`, and the other counts that are not zero."""
        parts = [f"ready {self.states['ready']}", f"failed {self.states['failed']}"]
        others = (
            ("cancelled", self.states["cancelled"]),
            ("already solved", self.already_solved),
            ("bad lines", self.bad_lines),
        )
        parts += [f"{label} {count}" for label, count in others if count]
        return ", ".join(parts)

    def progress_line(self, now: float) -> str:
        """`120/1000 done (ready 110, failed 10), 3 running, 12.3 tasks/s` (`?` for a
        total not known yet)."""
        total = "?" if self.total is None else str(max(self.total, self.done))
        return (
            f"{self.done}/{total} done ({self.breakdown()}), {self.running} running, "
            f"{self.rate(now):.1f} tasks/s"
        )

    def summary(self, now: float) -> str:
        """The table printed at the end: counts by state, lines skipped, failures by error
        name, requests, wall time and throughput."""
        wall = now - self.started
        states = {state: self.states[state] for state in FINAL_STATES if self.states[state]}
        lines = [
            f"captchaflow batch: {counted(self.finished, 'task')} run in {wall:.1f} s, "
            f"{self.rate(now):.1f} tasks/s",
            _row("final states", states),
            f"{'already solved':<22}{self.already_solved}",
            f"{'bad lines skipped':<22}{self.bad_lines}",
            _row("failures", self.failures),
            f"{'requests':<22}{self.requests}",
        ]
        return "\n".join(lines)

    def exit_status(self) -> int:
        """0 if every task is solved (now or before) and no line was bad; else the status
        of the commonest error among failed tasks (ties: the first name), as `captchaflow
        solve` would end with it; else (lines skipped, input not all read) 2."""
        code = commonest_exit_code(self.failures, self._first_errors)
        if code is not None:
            return code
        if self.bad_lines or self.unread_input:
            return EXIT_USAGE
        return 0
