"""`captchaflow batch`: solve the tasks of a JSON Lines file on one account, many at once;
append one result line per task to RESULTS as each finishes; skip the tasks an earlier run
solved. Here are the options; the run is in `_batch_run` (with `--redis`, `_batch_redis`),
imported only when the command runs, so `captchaflow --help` loads no I/O library.
"""

from __future__ import annotations

import argparse

from captchaflow.engine.journal import AmbiguousCreate

from ._account import _add_account_options
from ._args import _add_queue_options, _Commands, _task_count
from ._batch_io import MAX_LINE_BYTES
from ._inputs import _size

DEFAULT_CONCURRENCY = 50


def register(commands: _Commands) -> argparse.ArgumentParser:
    """Add `batch` and its options to `commands`; return its parser."""
    parser = commands.add_parser(
        "batch",
        help="solve the tasks of a JSON Lines file; append a result line for each",
        description='Solve every task of TASKS, one a line ({"id": ID, "task": {...}}, or a '
        "bare task object; without an id, line-N), at most N at a time, on one account; "
        "append each result to RESULTS as one line of JSON as soon as it is known. Tasks "
        "whose last result in RESULTS is ready are skipped, and tasks created by an earlier run "
        "(see --journal) are polled, not created again: the same command again resumes, even "
        "after a crash. "
        "Bad lines are reported by number and skipped. --timeout is each task's deadline.",
        epilog="exit status: 0 every task solved (by this run or an earlier one) and no bad "
        "line; else, if tasks failed, the status solve gives their commonest error: 3 "
        "permanent account error, 4 bad request, 5 unsolvable, 6 gave up; else 2 (bad lines "
        "skipped, usage, TASKS unreadable, RESULTS unwritable); 130 interrupted (the tasks "
        "in flight are recorded as cancelled)",
    )
    parser.add_argument(
        "tasks",
        metavar="TASKS",
        help=f"the tasks, JSON Lines ('-' for stdin; a line at most {_size(MAX_LINE_BYTES)})",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="RESULTS",
        required=True,
        help="the results file, appended to (created if missing)",
    )
    parser.add_argument(
        "--concurrency",
        type=_task_count,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"tasks in flight at most ({DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--journal",
        metavar="PATH",
        help="where each task's createTask and taskId are recorded, so that the same command "
        "after a crash polls the tasks already created instead of paying for them again "
        "(default: RESULTS.journal; an SQLite file)",
    )
    parser.add_argument(
        "--ambiguous",
        choices=[rule.value for rule in AmbiguousCreate],
        default=AmbiguousCreate.RECREATE.value,
        help="what a rerun does with a task whose createTask was in flight when the last run "
        "died, its reply lost (the task may exist and be billed): create it again "
        "(recreate, the default) or record it as failed, AMBIGUOUS_CREATE (fail)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="queue the tasks on this Redis for `captchaflow worker`s to solve, and collect "
        "their results (the workers' own options set the account's URL and deadline)",
    )
    _add_queue_options(parser, when="with --redis: ")
    _add_account_options(parser, timeout_is="each task's deadline")
    return parser


def journal_path(args: argparse.Namespace) -> str:
    """The journal's path: `--journal`, else RESULTS with `.journal` appended."""
    return str(args.journal) if args.journal else f"{args.output}.journal"


def run(args: argparse.Namespace) -> int:
    """Run the batch `args` describe; print the summary; return the exit status."""
    from ._batch_run import run_batch

    return run_batch(args)
