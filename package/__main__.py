"""The `captchaflow` command's entry point: `python -m captchaflow` and the console script.

The command's imports take about a second on a busy machine. Before they start, SIGINT,
SIGTERM and SIGHUP (those not ignored) are set to end the process at once with the
command's one line, `captchaflow: interrupted`, and status 130: an interrupt during
start-up is never a traceback. Once it runs, the command sets its own handlers (which
cancel the job before exiting 130).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

__all__ = ["main"]

EXIT_INTERRUPTED = 130


def _exit_interrupted(signum: int, frame: FrameType | None) -> None:
    # Nothing has started that needs stopping: one line, and out without unwinding.
    os.write(2, b"captchaflow: interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `captchaflow` command in this process and return its exit status; a stop
    signal before the command has loaded ends the process with status 130 and one line.
    For a process's entry point only (it sets signal handlers for good); programs call
    `captchaflow.engine.cli.main`."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _exit_interrupted)
    from captchaflow.engine.cli._main import process_main

    return process_main(argv)


if __name__ == "__main__":
    sys.exit(main())
