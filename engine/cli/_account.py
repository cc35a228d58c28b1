"""The options of the commands that talk to the real API with the account's key
(`solve`, `balance`): where the API is, the deadline, and where the key comes from."""

from __future__ import annotations

import argparse
import os

from captchaflow.engine._job import DEFAULT_TIMEOUT
from captchaflow.transports import DEFAULT_BASE_URL, ApiKey

from ._args import _positive_seconds
from ._base_url import _checked_base_url
from ._inputs import KEY_ENV, _read_key

BASE_URL_ENV = "NOCAPTCHA_BASE_URL"
"""Where `--base-url` comes from when it is not given (e.g. a local `serve-sim`)."""


def _add_account_options(
    parser: argparse.ArgumentParser, *, timeout_is: str = "overall deadline"
) -> None:
    """Add `--base-url`, `--timeout` (helped as `timeout_is` in seconds), `--key-file` and
    `--allow-shared-key-file`."""
    parser.add_argument(
        "--base-url",
        help=f"the API's base URL (${BASE_URL_ENV}, else {DEFAULT_BASE_URL})",
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
    """The key (from the environment or `--key-file`) and the checked base URL (`--base-url`,
    else `$NOCAPTCHA_BASE_URL`, else the provider's); raises `UsageError` for a missing or
    unreadable key or a bad URL."""
    key = _read_key(args.key_file, allow_shared=args.allow_shared_key_file)
    if args.base_url is not None:
        return key, _checked_base_url(args.base_url)
    from_env = os.environ.get(BASE_URL_ENV)
    if from_env:
        return key, _checked_base_url(from_env, source=f"${BASE_URL_ENV}")
    return key, DEFAULT_BASE_URL
