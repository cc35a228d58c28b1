"""Clocks for drivers. The sans-IO core never reads one; drivers pass it the time."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

__all__ = ["Clock", "SystemClock", "VirtualClock"]


@runtime_checkable
class Clock(Protocol):
    """Where a driver gets the time and how it waits."""

    def now(self) -> float:
        """Monotonic seconds; only differences matter."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, used only to read `Retry-After` HTTP-dates."""
        ...

    async def sleep_until(self, until: float) -> None:
        """Return once `now() >= until`."""
        ...


class SystemClock:
    """The real clocks: `time.monotonic`, `time.time`, and `anyio.sleep`."""

    __slots__ = ()

    def now(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()

    def wall(self) -> float:
        """`time.time()`."""
        return time.time()

    async def sleep_until(self, until: float) -> None:
        """Sleep with anyio (works under asyncio and trio)."""
        delay = until - time.monotonic()
        if delay > 0:
            await anyio.sleep(delay)


class VirtualClock:
    """A clock that jumps: `sleep_until` sets the time instead of waiting.

    Makes a single job's minutes of backoff run in microseconds. `wall()` is `epoch` plus
    the virtual time. (For many jobs in one virtual timeline, use the simulation driver.)
    """

    __slots__ = ("_now", "epoch")

    def __init__(self, start: float = 0.0, *, epoch: float = 1_700_000_000.0) -> None:
        self._now = start
        self.epoch = epoch

    def now(self) -> float:
        """The virtual time."""
        return self._now

    def wall(self) -> float:
        """`epoch + now()`."""
        return self.epoch + self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (e.g. to model a request's latency)."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds

    async def sleep_until(self, until: float) -> None:
        """Jump to `until` (if it is ahead) and yield once to the event loop."""
        self._now = max(self._now, until)
        await anyio.lowlevel.checkpoint()
