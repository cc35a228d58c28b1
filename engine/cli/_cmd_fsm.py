"""`captchaflow fsm`: the task state machine as DOT (the older name of `captchaflow diagram
--format dot`, kept)."""

from __future__ import annotations

import argparse
import sys

from captchaflow.engine._fsm import machine_dot

from ._args import _Commands


def register(commands: _Commands) -> argparse.ArgumentParser:
    """Add `fsm` to `commands`; return its parser."""
    return commands.add_parser(
        "fsm",
        help="print the task state machine as a Graphviz digraph (diagram --format dot)",
        description="Print the task state machine, read from the live machine, as DOT.",
    )


def run(args: argparse.Namespace) -> int:
    """Print the machine as a Graphviz digraph; return 0."""
    sys.stdout.write(machine_dot())
    return 0
