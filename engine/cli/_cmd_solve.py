"""`captchaflow solve`: solve one task against the real API; print its solution as JSON."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from captchaflow.engine._errors import CaptchaflowError
from captchaflow.engine._fsm import Move
from captchaflow.engine._job import Job
from captchaflow.transports import ApiKey

from ._account import _account, _add_account_options
from ._args import _Commands
from ._exit import _fail_with
from ._inputs import MAX_IMAGE_BYTES, MAX_TASK_BYTES, _read_task, _size
from ._logging import _add_logging_options, _setup_logging
from ._output import _fail, strict_json, unencodable_solution

if TYPE_CHECKING:
    from captchaflow.engine._driver import MoveHook


def register(commands: _Commands) -> argparse.ArgumentParser:
    """Add `solve` and its options to `commands`; return its parser."""
    solve_cmd = commands.add_parser(
        "solve",
        help="solve one task and print its solution as one line of JSON",
        description="Solve one task; print the solution as one line of JSON on stdout.",
        epilog="exit status: 0 solved, 2 usage or invalid input, 3 permanent account error "
        "(codes 1, 3, 14, 15), 4 bad request (10), 5 unsolvable (12), 6 gave up "
        "(transient or transport failures, deadline), 130 interrupted",
    )
    source = solve_cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", metavar="JSON", help="the task as a JSON object")
    source.add_argument(
        "--task-file",
        metavar="PATH",
        help=f"a file holding the task as JSON ('-' for stdin; at most {_size(MAX_TASK_BYTES)})",
    )
    source.add_argument(
        "--image",
        metavar="PATH",
        help=f"an image file, sent as an ImageToTextTask (at most {_size(MAX_IMAGE_BYTES)})",
    )
    _add_account_options(solve_cmd)
    _add_logging_options(solve_cmd)
    return solve_cmd


def _warn_unresolved_host(key: ApiKey) -> MoveHook:
    """The move hook of `solve`: the first time a request fails because the host cannot
    be resolved, it says so on stderr at once, instead of retrying in silence until the
    deadline. (The engine's hooks log the moves.)"""
    warned = False

    def hook(job: Job, move: Move) -> None:
        nonlocal warned
        failure = job.last_failure
        if warned or move.trigger != "defer" or failure is None:
            return
        if failure.message.startswith("cannot resolve host"):
            warned = True
            _fail(f"warning: {failure.message}; retrying until the deadline", 0, key)

    return hook


def run(args: argparse.Namespace) -> int:
    """Solve the task `args` name; print the solution; return the exit status."""
    from captchaflow.engine._engine import solve  # httpx, anyio: only when the command runs

    task = _read_task(args)
    key, base_url = _account(args)
    _setup_logging(args, key)
    try:
        solution = solve(
            task,
            key=key,
            base_url=base_url,
            timeout=args.timeout,
            on_move=_warn_unresolved_host(key),
        )
    except CaptchaflowError as exc:
        return _fail_with(exc, key)
    try:
        # Strict JSON (no NaN or Infinity), ASCII only: it prints on any terminal encoding,
        # so a paid-for solution is never lost to a UnicodeEncodeError.
        line = strict_json(solution)
    except ValueError:
        return _fail_with(unencodable_solution("printed"), key)
    print(line)
    return 0
