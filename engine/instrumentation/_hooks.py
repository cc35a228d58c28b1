"""The hook protocol, and handing records to hooks so that a failing hook breaks no job."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, Protocol

from captchaflow.transports import ApiKey

from ._logging import LoggingHook
from ._records import MoveRecord, RequestRecord

__all__ = ["DEFAULT_HOOKS", "Hook", "emit"]

logger = logging.getLogger("captchaflow")

_FAILED: dict[int, Hook] = {}
"""Every hook that has raised (by id), so that each is warned about once; kept here, so
that no other hook can be given its id."""


class Hook(Protocol):
    """What the engine tells about every job: each move (`on_move`) and each request
    (`on_request`), as frozen records, in the order they happen. A hook must not block (it
    runs in the event loop); what it raises is logged once as a WARNING and otherwise
    ignored: it never breaks a job."""

    def on_move(self, record: MoveRecord) -> None:
        """A job moved in the state machine."""
        ...

    def on_request(self, record: RequestRecord) -> None:
        """A request came back (or failed) with `record.outcome`."""
        ...


DEFAULT_HOOKS: Final[tuple[Hook, ...]] = (LoggingHook(),)
"""The hooks of an engine (and of `drive_job`) given none: one DEBUG log record per move on the
`captchaflow` logger, and one per request on `captchaflow.requests`."""


def listening(hooks: Sequence[Hook], kind: type[MoveRecord | RequestRecord]) -> bool:
    """Whether any of `hooks` would do something with a record of `kind` now: False only
    when every hook is a plain `LoggingHook` whose logger for it is off (the default hook
    with DEBUG off), so that a driver can skip building records nobody reads."""
    return any(type(hook) is not LoggingHook or hook.logs(kind) for hook in hooks)


def emit(hooks: Sequence[Hook], record: MoveRecord | RequestRecord, key: ApiKey) -> None:
    """Hand `record` to every hook of `hooks`; a hook that raises is warned about (with
    `key` redacted from what it raised) the first time, and skipped."""
    for hook in hooks:
        try:
            if isinstance(record, MoveRecord):
                hook.on_move(record)
            else:
                hook.on_request(record)
        except Exception as exc:
            _warn_once(hook, exc, key)


def _warn_once(hook: Hook, exc: Exception, key: ApiKey) -> None:
    if id(hook) in _FAILED:
        return
    _FAILED[id(hook)] = hook
    logger.warning(
        "instrumentation hook %s raised %s; jobs go on, and its further errors are ignored",
        type(hook).__name__,
        key.redact(repr(exc)),
    )
