"""The `captchaflow` command. The only package that reads argv, the environment and files.

Contract (README, "Command line"): the solution goes to stdout as one line of JSON and the
exit status is 0; any failure prints exactly one line to stderr, naming the error, and exits
with 2 (usage or invalid input), 3 (permanent account error), 4 (bad request),
5 (unsolvable), 6 (gave up: transient failures, transport failures or the deadline),
130 (interrupted) or 1 (a bug in captchaflow). Never a traceback.

One module per command (`_cmd_*`, listed in `_commands.COMMANDS`); what they share is in
the other private modules: the parser and option types (`_args`), reading inputs
(`_inputs`, `_base_url`), output (`_output`), exit statuses (`_exit`), stop signals
(`_signals`) and `main` (`_main`).
"""

from ._args import UsageError, value_free
from ._commands import build_parser
from ._exit import EXIT_USAGE, exit_code_for
from ._inputs import (
    KEY_ENV,
    MAX_IMAGE_BYTES,
    MAX_KEY_FILE_BYTES,
    MAX_SCENARIO_BYTES,
    MAX_TASK_BYTES,
)
from ._main import main
from ._output import TerminalFormatter, printable

__all__ = [
    "EXIT_USAGE",
    "KEY_ENV",
    "MAX_IMAGE_BYTES",
    "MAX_KEY_FILE_BYTES",
    "MAX_SCENARIO_BYTES",
    "MAX_TASK_BYTES",
    "TerminalFormatter",
    "UsageError",
    "build_parser",
    "exit_code_for",
    "main",
    "printable",
    "value_free",
]
