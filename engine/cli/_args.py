"""Reading the command line: the parser, the types of option values, and usage errors that
never repeat a value given (any value may be a pasted key)."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from typing import Any, NoReturn, TypeAlias

import captchaflow

from ._output import PROG


class UsageError(Exception):
    """Bad command-line input; exit 2 with the message."""


# Messages of our own argument types: fixed texts, so they never hold the value given.
_NOT_A_NUMBER = "not a number"
_NOT_POSITIVE_SECONDS = "must be a positive number of seconds"
_NOT_AN_INTEGER = "not an integer"
_TASKS_OUT_OF_RANGE = "must be between 1 and 1000000"
_NOT_A_PORT = "must be a port number in 0..65535"
_OWN_MESSAGES = frozenset(
    {_NOT_A_NUMBER, _NOT_POSITIVE_SECONDS, _NOT_AN_INTEGER, _TASKS_OUT_OF_RANGE, _NOT_A_PORT}
)
# argparse messages that name only options, metavars or counts, never a value given.
_NAMES_ONLY = ("expected ", "not allowed with argument ")
_OPTION_NAME = re.compile(r"--[a-z]+(-[a-z]+)*|-[a-zA-Z]")


def value_free(message: str) -> str:
    """argparse's `message` rewritten so that it holds no value from the command line,
    only option names, metavars and choices of ours: any value may be a pasted key.

    `unrecognized arguments: --key=sk-1 sk-2` becomes `unrecognized arguments: --key=… …`;
    `argument --timeout: invalid float value: 'sk-1'` becomes `argument --timeout: invalid
    value`; an invalid command is reported with the valid ones, not with the one given.
    A message of a shape not known here becomes `invalid arguments`.
    """
    prefix = "unrecognized arguments: "
    if message.startswith(prefix):
        words = []
        for word in message[len(prefix) :].split():
            name, equals, _value = word.partition("=")
            # An option's name is shown (`--key=…`); anything else may be a value.
            words.append(name + ("=…" if equals else "") if _OPTION_NAME.fullmatch(name) else "…")
        return prefix + " ".join(words)
    if message.startswith(("the following arguments are required: ", "one of the arguments ")):
        return message
    argument = re.fullmatch(r"argument (\S+): (.*)", message, re.DOTALL)
    if argument is None:
        return "ambiguous option" if message.startswith("ambiguous option") else "invalid arguments"
    name, detail = argument.groups()
    if detail.startswith("invalid choice"):  # the choices are ours; the value given is not
        choices = re.search(r"\(choose from (.*)\)\Z", detail, re.DOTALL)
        listed = choices.group(1).replace("'", "") if choices else ""
        return f"argument {name}: invalid choice" + (f" (choose from {listed})" if listed else "")
    if detail.startswith("ignored explicit argument"):
        return f"argument {name}: takes no value"
    if detail in _OWN_MESSAGES or detail.startswith(_NAMES_ONLY):
        return message
    return f"argument {name}: invalid value"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Raise `UsageError` with argparse's message, made value-free (`value_free`)."""
        raise UsageError(f"{value_free(message)} (see '{self.prog} --help')")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: `--key VALUE` must not be taken for `--key-file VALUE`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


_Commands: TypeAlias = "argparse._SubParsersAction[_Parser]"
"""What a command adds its parser to (the `COMMAND` argument of the `captchaflow` parser)."""


def _add_simulation_options(parser: argparse.ArgumentParser, scenario_help: str) -> None:
    """Add `--seed` and `--scenario` (helped by `scenario_help`), the options of the
    commands that run the simulated API."""
    parser.add_argument("--seed", type=int, default=0, help="the simulation's seed (0)")
    parser.add_argument("--scenario", metavar="FILE", help=scenario_help)


class _Version(argparse.Action):
    """`--version`: print `captchaflow VERSION` on stdout and exit 0 (the version is looked
    up only when asked for: every other run skips reading the package metadata)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(f"{PROG} {captchaflow.__version__}")
        parser.exit()


REDIS_NAMESPACE = "captchaflow"
"""`--namespace`'s default: `captchaflow.engine.distributed.DEFAULT_NAMESPACE` (not imported
from there: that package loads redis, and `--help` must not)."""


def _add_queue_options(parser: argparse.ArgumentParser, *, when: str = "") -> None:
    """Add `--namespace` and `--queue`, which name the Redis work queue; `batch --redis` and
    its workers must agree on them, so both take them from here (`when`: a prefix of the
    help, e.g. which option they go with)."""
    parser.add_argument(
        "--namespace",
        default=REDIS_NAMESPACE,
        help=f"{when}the prefix of every Redis key ({REDIS_NAMESPACE})",
    )
    parser.add_argument("--queue", default="default", help=f"{when}the queue's name (default)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_NOT_A_NUMBER) from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(_NOT_POSITIVE_SECONDS)
    return value


def _task_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_NOT_AN_INTEGER) from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(_TASKS_OUT_OF_RANGE)
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_NOT_A_PORT) from None
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(_NOT_A_PORT)
    return value
