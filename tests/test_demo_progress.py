"""`captchaflow demo` shows live progress on a terminal (as `batch` does) and none
otherwise; and the hook behind it counts a simulation's jobs."""

from __future__ import annotations

import os
import pty
import subprocess
import time

from test_cli import CLI

from captchaflow.engine._demo import run_demo
from captchaflow.engine.cli._batch_tally import Tally
from captchaflow.engine.cli._progress import TallyHook


def _demo_with_stderr_on_a_terminal(tasks: int) -> tuple[int, str, str]:
    """Run the demo with stderr on a pseudo-terminal; its status, stdout, and what the
    terminal got."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*CLI, "demo", "--tasks", str(tasks)],
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    os.close(slave)
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    out, _ = proc.communicate(timeout=120)
    os.close(master)
    return proc.returncode, out, terminal.decode(errors="replace")


def test_demo_on_a_terminal_shows_the_live_display() -> None:
    """On a terminal, stderr gets the live bar labelled demo with the counts; stdout still
    gets the summary alone."""
    code, out, terminal = _demo_with_stderr_on_a_terminal(3000)
    assert code == 0
    assert out.startswith("captchaflow demo: 3000 tasks")
    assert "demo" in terminal and "ready" in terminal and "3000/3000" in terminal


def test_demo_off_a_terminal_prints_no_progress() -> None:
    """Off a terminal, nothing but the summary (and no stderr at all when every task is
    solved)."""
    done = subprocess.run([*CLI, "demo", "--tasks", "300"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""


class _Shown:
    """A display that counts how often it was shown."""

    period = 0.0

    def __init__(self) -> None:
        self.shown = 0

    def show(self) -> None:
        self.shown += 1

    def close(self) -> None:
        """Nothing to stop."""


def test_tally_hook_counts_every_job_and_request_of_a_simulation() -> None:
    """Fed a demo's records, the hook counts each job once in its final state, every
    request, no job still running at the end, and shows the display on the way."""
    tally = Tally(started=time.monotonic(), total=2000)
    display = _Shown()
    hook = TallyHook(tally, display)
    report, _ = run_demo(2000, seed=3, hooks=(hook,))
    assert tally.states == report.states()
    assert tally.requests == sum(report.api.stats.requests.values())
    assert tally.running == 0 and display.shown > 0
