"""The commands and the parser built from them. A command is a module of this package with
`register(commands)`, which adds its subparser, and `run(args)`, which runs it and returns
the exit status; adding a command is adding its module to `COMMANDS`."""

from __future__ import annotations

import argparse
from typing import Protocol

from . import (
    _cmd_balance,
    _cmd_batch,
    _cmd_demo,
    _cmd_diagram,
    _cmd_fsm,
    _cmd_serve_sim,
    _cmd_solve,
    _cmd_worker,
)
from ._args import _Commands, _Parser, _Version
from ._inputs import KEY_ENV
from ._output import PROG


class Command(Protocol):
    """One subcommand of `captchaflow`."""

    def register(self, commands: _Commands) -> argparse.ArgumentParser:
        """Add the command's parser (name, help, arguments) to `commands`; return it."""

    def run(self, args: argparse.Namespace) -> int:
        """Run the command with the parsed `args`; return the exit status."""


COMMANDS: tuple[Command, ...] = (
    _cmd_solve,
    _cmd_batch,
    _cmd_balance,
    _cmd_demo,
    _cmd_serve_sim,
    _cmd_worker,
    _cmd_diagram,
    _cmd_fsm,
)
"""The commands, in the order `captchaflow --help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `captchaflow` command. The parsed arguments' `run` is the
    chosen command's `run`."""
    parser = _Parser(
        prog=PROG,
        description="Solve captchas through the NoCaptcha task API, correctly.",
        epilog=f"The API key is read from ${KEY_ENV} or --key-file, never from an argument.",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for command in COMMANDS:
        command.register(commands).set_defaults(run=command.run)
    return parser
