"""The options of the commands that talk to the real API with the account's key
(`solve`, `balance`): where the API is, the deadline, and where the key comes from."""

from __future__ import annotations

import argparse

from captchaflow.engine._engine import DEFAULT_TIMEOUT
from captchaflow.transports import DEFAULT_BASE_URL, ApiKey

from ._args import _positive_seconds
from ._base_url import _checked_base_url
from ._inputs import KEY_ENV, _read_key


def _add_account_options(
    parser: argparse.ArgumentParser, *, timeout_is: str = "overall deadline"
) -> None:
    """Add `--base-url`, `--timeout` (helped as `timeout_is` in seconds), `--key-file` and
    `--allow-shared-key-file`."""
    parser.add_argument(
        "--base-url", default=DEFAULT_BASE_URL, help=f"the API's base URL ({DEFAULT_BASE_URL})"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"{timeout_is} in seconds (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--key-file", metavar="PATH", help=f"read the API key from this file instead of ${KEY_ENV}"
    )
    parser.add_argument(
        "--allow-shared-key-file",
        action="store_true",
        help="accept a --key-file that others can read (for containers that mount secrets so)",
    )


def _account(args: argparse.Namespace) -> tuple[ApiKey, str]:
    """The key (from the environment or `--key-file`) and the checked base URL; raises
    `UsageError` for a missing or unreadable key or a bad URL."""
    key = _read_key(args.key_file, allow_shared=args.allow_shared_key_file)
    return key, _checked_base_url(args.base_url)
