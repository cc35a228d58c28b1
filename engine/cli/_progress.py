"""Progress on stderr, for `captchaflow batch` and `captchaflow demo`: live on a terminal
(rich), a plain line every few seconds otherwise (a log, a pipe, CI); and a hook that counts
a simulation's finished jobs into the same display."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Protocol

import anyio

from captchaflow.engine.instrumentation import MoveRecord, RequestRecord

from ._batch_tally import FINAL_STATES, Tally
from ._output import PROG

PROGRESS_ENV = "CAPTCHAFLOW_PROGRESS_SECONDS"
"""Overrides `PLAIN_SECONDS` (for tests, which cannot wait long)."""

PLAIN_SECONDS = 5.0
"""Seconds between two plain progress lines."""

LIVE_SECONDS = 0.2
"""Seconds between two refreshes of the live display."""


class Display(Protocol):
    """Shows a batch's progress: `show` is called every `period` seconds, `close` once."""

    period: float

    def show(self) -> None:
        """Show the counts as they are now."""

    def close(self) -> None:
        """Show the last counts and stop."""


def plain_period() -> float:
    """`PLAIN_SECONDS`, or the positive number of seconds in `$CAPTCHAFLOW_PROGRESS_SECONDS`."""
    try:
        seconds = float(os.environ.get(PROGRESS_ENV, ""))
    except ValueError:
        return PLAIN_SECONDS
    return seconds if seconds > 0 and math.isfinite(seconds) else PLAIN_SECONDS


class PlainProgress:
    """A line on stderr every `period` seconds:
    `captchaflow: batch: 120/1000 done (ready 110, failed 10), 3 running, 12.3 tasks/s`."""

    def __init__(self, tally: Tally) -> None:
        self.period = plain_period()
        self._tally = tally

    def show(self) -> None:
        """Print the progress line."""
        line = self._tally.progress_line(time.monotonic())
        print(f"{PROG}: batch: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Nothing to stop: the summary follows."""


class LiveProgress:
    """A progress bar with the counts by state and the throughput, redrawn in place (rich);
    what else is printed on stderr meanwhile shows above it."""

    def __init__(self, tally: Tally, label: str = "batch") -> None:
        from rich.console import Console  # only on a terminal: rich takes time to import
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.period = LIVE_SECONDS
        self._tally = tally
        self._progress = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}", markup=False),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            auto_refresh=False,
        )
        self._task = self._progress.add_task(label, total=tally.total, counts="")
        self._progress.start()

    def show(self) -> None:
        """Redraw the bar and the counts."""
        tally, now = self._tally, time.monotonic()
        counts = f"{tally.breakdown()}, {tally.running} running, {tally.rate(now):.1f} tasks/s"
        total = None if tally.total is None else max(tally.total, tally.done)
        self._progress.update(self._task, completed=tally.done, total=total, counts=counts)
        self._progress.refresh()

    def close(self) -> None:
        """Draw the last counts and give the terminal back."""
        self.show()
        self._progress.stop()


def open_display(tally: Tally) -> Display:
    """The live display if stderr is a terminal, else the plain lines."""
    stderr = sys.stderr
    live = stderr is not None and stderr.isatty()
    return LiveProgress(tally) if live else PlainProgress(tally)


async def keep_showing(display: Display) -> None:
    """Call `display.show()` every `display.period` seconds, until cancelled."""
    while True:
        await anyio.sleep(display.period)
        display.show()


class TallyHook:
    """An instrumentation hook that counts jobs as they start and finish into `tally`, and
    refreshes `display` every `display.period` seconds of real time (checked once every 256
    moves, so a fast simulation pays almost nothing for it)."""

    CHECK_EVERY = 256

    def __init__(self, tally: Tally, display: Display) -> None:
        self._tally = tally
        self._display = display
        self._running: set[int] = set()
        self._moves = 0
        self._next_show = time.monotonic() + display.period

    def on_move(self, record: MoveRecord) -> None:
        """Count a job that starts or finishes; now and then, show the counts."""
        if record.dest in FINAL_STATES:
            self._running.discard(record.serial)
            self._tally.states[record.dest] += 1
        else:
            self._running.add(record.serial)
        self._tally.running = len(self._running)
        self._moves += 1
        if self._moves % self.CHECK_EVERY == 0 and time.monotonic() >= self._next_show:
            self._display.show()
            self._next_show = time.monotonic() + self._display.period

    def on_request(self, record: RequestRecord) -> None:
        """Count the request."""
        self._tally.requests += 1
