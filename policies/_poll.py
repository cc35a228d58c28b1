"""Poll schedules: when to ask getTaskResult again."""

from __future__ import annotations

import collections
import math
from typing import Final, Protocol, runtime_checkable

import attrs

__all__ = [
    "MIN_POLL_DELAY",
    "AdaptivePoll",
    "FixedInterval",
    "LearningPollSchedule",
    "PollSchedule",
]

MIN_POLL_DELAY: Final = 0.01
"""Seconds: the least wait before a poll. A job whose schedule answers less (or anything but
a number: a string or a bool is refused, not coerced) fails with `PolicyError`, so no
schedule can make a driver poll in a tight loop."""


@runtime_checkable
class PollSchedule(Protocol):
    """Decides the wait before each getTaskResult. Must be pure and must not raise."""

    def delay_before_poll(self, poll: int) -> float:
        """Seconds to wait before poll number `poll` (1 for the first poll after the task was
        accepted): an int or float, finite and at least `MIN_POLL_DELAY`."""
        ...


def _positive(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number of seconds, got {value!r}")
    if not MIN_POLL_DELAY <= value < float("inf"):
        raise ValueError(
            f"{attribute.name} must be a finite number of seconds >= {MIN_POLL_DELAY}, "
            f"got {value!r}"
        )


@attrs.frozen(kw_only=True)
class FixedInterval:
    """Polls every `interval` seconds (the provider's 2 s), the first poll after `first`
    seconds (default: `interval`, since no task is solved the instant it is created)."""

    interval: float = attrs.field(default=2.0, validator=_positive)
    first: float | None = attrs.field(default=None, validator=attrs.validators.optional(_positive))

    def delay_before_poll(self, poll: int) -> float:
        """`first` before the first poll, `interval` before every other."""
        if poll <= 1 and self.first is not None:
            return self.first
        return self.interval


@runtime_checkable
class LearningPollSchedule(PollSchedule, Protocol):
    """A poll schedule that learns: jobs report how long each solved task took."""

    def observe_solved(self, seconds: float) -> None:
        """A task was found solved; `seconds` estimates how long after its acceptance it was
        solved (the job reports the middle of the interval between the last poll that found
        it processing, or its acceptance, and the poll that found it solved)."""
        ...


@attrs.define(kw_only=True)
class AdaptivePoll:
    """Learns how long this account's tasks take, and stops polling in the dead time.

    Until `min_samples` solved tasks have been seen it polls every `interval`, the first
    poll after `interval`. From then on the first poll waits the `quantile` of the last
    `memory` observed times to solution (at least `interval`), and the rest every
    `interval`. One schedule is meant to be shared by the jobs of an account.
    """

    interval: float = attrs.field(default=2.0, validator=_positive)
    quantile: float = attrs.field(default=0.1)
    min_samples: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    memory: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    _samples: collections.deque[float] = attrs.field(init=False, factory=collections.deque)
    _first: float | None = attrs.field(init=False, default=None)

    @quantile.validator
    def _check_quantile(self, _attribute: attrs.Attribute[float], value: float) -> None:
        if not 0 <= value <= 1:
            raise ValueError(f"quantile must be in [0, 1], got {value!r}")

    def delay_before_poll(self, poll: int) -> float:
        """The learned first wait before poll 1, `interval` before every other."""
        if poll <= 1 and self._first is not None:
            return max(self.interval, self._first)
        return self.interval

    def observe_solved(self, seconds: float) -> None:
        """Remember one time to solution and update the first wait."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            return
        samples = self._samples
        samples.append(seconds)
        if len(samples) > self.memory:
            samples.popleft()
        if len(samples) >= self.min_samples:
            ordered = sorted(samples)
            self._first = ordered[min(len(ordered) - 1, int(self.quantile * len(ordered)))]
