"""`captchaflow diagram`: the task state machine, read from the live machine, as Mermaid
(the default) or Graphviz DOT; `captchaflow fsm` is the DOT form under its old name."""

from __future__ import annotations

import argparse
import sys

from captchaflow.engine._fsm import machine_dot, machine_mermaid

from ._args import _Commands

FORMATS = {"mermaid": machine_mermaid, "dot": machine_dot}
"""Each format's renderer."""


def register(commands: _Commands) -> argparse.ArgumentParser:
    """Add `diagram` and its `--format` to `commands`; return its parser."""
    parser = commands.add_parser(
        "diagram",
        help="print the task state machine as a Mermaid (or Graphviz) diagram",
        description="Print the task state machine, read from the live machine: Mermaid "
        "(renders on GitHub and in most Markdown viewers) or Graphviz DOT.",
    )
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default="mermaid", help="the notation (mermaid)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the machine in `args.format`; return 0."""
    sys.stdout.write(FORMATS[args.format]())
    return 0
