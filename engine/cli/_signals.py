"""The stop signals while the command runs. SIGTERM and SIGHUP do what SIGINT does; none of
them is taken over when the command was started with it ignored (`nohup`, a background job).
The first stops the command; every later one is ignored, so a burst of them (an impatient
user, a supervisor escalating) never cuts the command's clean-up or its one line short.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeAlias

_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
_Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _stop(signum: int, frame: FrameType | None) -> None:
    """The first stop signal (SIGINT's handler; SIGTERM's and SIGHUP's through `_like_sigint`):
    every later one is ignored, since the command is stopping and a second signal must not
    cut its clean-up short (asyncio's own SIGINT handler raises KeyboardInterrupt at a
    second one, wherever the loop's clean-up then is). Then KeyboardInterrupt: at once, or,
    while an event loop runs in this thread, from the loop's next callback, so that it
    leaves the loop between two steps of its tasks, which the loop then cancels (each job
    ends `cancelled`) before it closes."""
    for sig in _STOP_SIGNALS:
        if signal.getsignal(sig) in (_stop, _like_sigint):
            signal.signal(sig, _stopping)
    asyncio = sys.modules.get("asyncio")  # not imported: no loop can be running
    if asyncio is None:
        raise KeyboardInterrupt
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise KeyboardInterrupt from None
    loop.call_soon_threadsafe(_interrupt)


def _interrupt() -> None:
    raise KeyboardInterrupt


def _stopping(signum: int, frame: FrameType | None) -> None:
    """A stop signal while the command stops: nothing to do. (A handler, not SIG_IGN: a
    signal that arrived before the switch would otherwise be reported on stderr, with a
    traceback, as "ignored due to race condition".)"""


def _like_sigint(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP: do what SIGINT does at this moment: `_stop`, or, while another
    handler has SIGINT (`serve-sim`'s event loop stops on it), raise SIGINT for it. If
    SIGINT is ignored, raise KeyboardInterrupt here."""
    handler = signal.getsignal(signal.SIGINT)
    if handler is _stop:
        _stop(signum, frame)
    elif handler in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt
    else:
        signal.raise_signal(signal.SIGINT)


def _take_stop_signals(previous: dict[int, _Handler]) -> None:
    """The stop signals stop the command (`_stop`), except for those that are ignored;
    record the handlers replaced in `previous`."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; an embedding program keeps its own
    for sig in _STOP_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is signal.SIG_IGN:
            continue
        previous[sig] = handler
        signal.signal(sig, _stop if sig == signal.SIGINT else _like_sigint)


def _ignore_stop_signals(taken: dict[int, _Handler]) -> None:
    """Ignore the stop signals we took (`_stopping`): the command is already stopping."""
    for sig in taken:
        signal.signal(sig, _stopping)


def _block_stop_signals_until_exit(taken: dict[int, _Handler]) -> None:
    """The process exits next: the stop signals we took go to `_stopping` (any that already
    arrived), and from now on are blocked (held by the system, never delivered). The
    interpreter gives every handler back to the default as it shuts down, after which a
    late SIGTERM or SIGHUP would kill the process instead of letting it exit with its
    status."""
    _ignore_stop_signals(taken)
    if taken and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, set(taken))


def _restore_signals(previous: dict[int, _Handler]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
