"""`captchaflow balance`: the account's remaining credit, through getBalance."""

from __future__ import annotations

import argparse

from captchaflow.engine._errors import CaptchaflowError

from ._account import _account, _add_account_options
from ._args import _Commands
from ._exit import _fail_with


def register(commands: _Commands) -> argparse.ArgumentParser:
    """Add `balance` and its options to `commands`; return its parser."""
    parser = commands.add_parser(
        "balance",
        help="print the account's remaining credit",
        description="Ask the API for the account's balance (getBalance), with the same "
        "retries as every other call; print it on stdout as a number.",
        epilog="exit status: 0 printed, 2 usage, 3 permanent account error (codes 1, 14, "
        "15), 6 gave up (transient or transport failures, deadline), 130 interrupted",
    )
    _add_account_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the balance of the account whose key `args` point to; return the status."""
    from captchaflow.engine._engine import balance  # httpx: only when the command runs

    key, base_url = _account(args)
    try:
        amount = balance(key=key, base_url=base_url, timeout=args.timeout)
    except CaptchaflowError as exc:
        return _fail_with(exc, key)
    # As the API sent it: 12.5, or 40 for a whole number (not 40.0); -1 from the simulator
    # means an account without a balance limit.
    print(str(int(amount)) if amount.is_integer() else repr(amount))
    return 0
