"""The command's exit statuses, and which one each error of the library ends it with.

The statuses are the command's, not the errors': the library's exceptions know nothing of
them. A class not in the table gets the status of its nearest ancestor that is, so every
subclass of `GaveUpError` ends the command with 6, and `CaptchaflowError` itself with 1.
"""

from __future__ import annotations

from collections.abc import Mapping

from captchaflow.engine._errors import (
    BadRequestError,
    CaptchaflowError,
    GaveUpError,
    InvalidTaskError,
    JobCancelledError,
    PermanentError,
    UnsolvableError,
)
from captchaflow.transports import ApiKey

from ._output import _fail

EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

_EXIT_STATUS: Mapping[type, int] = {
    CaptchaflowError: EXIT_INTERNAL,
    InvalidTaskError: EXIT_USAGE,
    PermanentError: 3,
    BadRequestError: 4,
    UnsolvableError: 5,
    GaveUpError: 6,
    JobCancelledError: EXIT_INTERRUPTED,
}


def exit_code_for(error: CaptchaflowError) -> int:
    """The `captchaflow` command's exit status for `error`: its class's in the table above,
    else its nearest ancestor's (the first one found along the class's MRO)."""
    return next(_EXIT_STATUS[cls] for cls in type(error).__mro__ if cls in _EXIT_STATUS)


def _fail_with(error: CaptchaflowError, key: ApiKey | None = None) -> int:
    """Print `error`'s one-line summary (the key redacted); return its exit status."""
    return _fail(error.summary(), exit_code_for(error), key)


def commonest_exit_code(
    counts: Mapping[str, int], examples: Mapping[str, CaptchaflowError]
) -> int | None:
    """The exit status of the commonest error name in `counts` (ties: the first name in
    alphabetical order), as `solve` would end with `examples[name]`; None if `counts` is
    empty: how a command that ran many tasks (`demo`, `batch`) ends when some failed."""
    if not counts:
        return None
    name = min(counts, key=lambda n: (-counts[n], n))
    return exit_code_for(examples[name])
