"""The stop signals while the command runs. SIGTERM and SIGHUP do what SIGINT does; none of
them is taken over when the command was started with it ignored (`nohup`, a background job).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeAlias

_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
_Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _like_sigint(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP: raise SIGINT, so they do exactly what it does at this moment:
    cancel the running job through the event loop's SIGINT handler (the job ends
    `cancelled`), stop `serve-sim`, or raise KeyboardInterrupt. If SIGINT is ignored,
    raise KeyboardInterrupt here."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def _take_stop_signals(previous: dict[int, _Handler]) -> None:
    """SIGINT raises KeyboardInterrupt, SIGTERM and SIGHUP do what SIGINT does, except for
    those that are ignored; record the handlers replaced in `previous`."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; an embedding program keeps its own
    for sig in _STOP_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is signal.SIG_IGN:
            continue
        previous[sig] = handler
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else _like_sigint)


def _ignore_stop_signals(taken: dict[int, _Handler]) -> None:
    """Ignore the stop signals we took: the command is already stopping."""
    for sig in taken:
        signal.signal(sig, signal.SIG_IGN)


def _restore_signals(previous: dict[int, _Handler]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
