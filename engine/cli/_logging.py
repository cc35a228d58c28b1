"""`-v` and `--log-format`: what a command logs on stderr, and how; one set-up for every
command that runs jobs."""

from __future__ import annotations

import argparse
import logging
import sys

from captchaflow.engine.instrumentation import JsonLogFormatter
from captchaflow.transports import ApiKey

from ._output import TerminalFormatter

LOG_FORMATS = ("text", "json")
"""The values of `--log-format`; the first is the default."""


def _add_logging_options(parser: argparse.ArgumentParser) -> None:
    """Add `-v`/`--verbose` (repeatable) and `--log-format`."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log every state change to stderr; -vv also every request",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=LOG_FORMATS[0],
        help="text: one 'captchaflow: ...' line per record; json: one JSON object per line "
        "(default text)",
    )


class _JsonFormatter(JsonLogFormatter):
    """`--log-format json`: one JSON object per line (ASCII), never the key."""

    def __init__(self, key: ApiKey) -> None:
        super().__init__()
        self._key = key

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON without the key."""
        return self._key.redact(super().format(record))


def _setup_logging(args: argparse.Namespace, key: ApiKey) -> None:
    """Send the engine's log records to stderr as `args` ask: nothing without `-v`; with
    it every move of every job, with `-vv` every request too (the `captchaflow.requests`
    logger), in `--log-format`. The key is redacted from every line."""
    if not args.verbose:
        return
    handler = logging.StreamHandler(sys.stderr)
    text = args.log_format == "text"
    handler.setFormatter(TerminalFormatter(key) if text else _JsonFormatter(key))
    root = logging.getLogger("captchaflow")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    requests = logging.DEBUG if args.verbose > 1 else logging.INFO
    root.getChild("requests").setLevel(requests)
