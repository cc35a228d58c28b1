"""`main`: parse the command line, run the command, and turn whatever ends it into one
line on stderr and an exit status."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from captchaflow.engine._errors import CaptchaflowError

from ._args import UsageError
from ._commands import build_parser
from ._exit import EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, _fail_with
from ._output import _fail, _show_warning
from ._signals import (
    _block_stop_signals_until_exit,
    _Handler,
    _ignore_stop_signals,
    _restore_signals,
    _take_stop_signals,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (the console script exits with it).

    While it runs, SIGINT, SIGTERM and SIGHUP (those not ignored) interrupt it: the job is
    cancelled, one line says `interrupted`, and the status is 130. The previous signal
    handlers are back when it returns.
    """
    return _main(argv, restore=True)


def process_main(argv: Sequence[str] | None = None) -> int:
    """`main` for a process's entry point: at the end, the stop signals are not given back
    to the handlers they had but ignored, since the process exits next (a late signal of
    a burst must neither kill it nor print a second line)."""
    return _main(argv, restore=False)


def _main(argv: Sequence[str] | None, *, restore: bool) -> int:
    warnings.showwarning = _show_warning  # one line per warning, like every other message
    taken: dict[int, _Handler] = {}
    try:
        _take_stop_signals(taken)
        return _run(argv)
    except KeyboardInterrupt:
        _ignore_stop_signals(taken)  # a second Ctrl-C must not cut the one line short
        return _fail("interrupted", EXIT_INTERRUPTED)
    finally:
        if restore:
            _restore_signals(taken)
        else:
            _block_stop_signals_until_exit(taken)


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except UsageError as exc:
        return _fail(f"error: {exc}", EXIT_USAGE)
    except CaptchaflowError as exc:  # invalid task: nothing was sent
        return _fail_with(exc)
    except BrokenPipeError:  # stdout closed early (`| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: still one line, still no key
        return _fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)
