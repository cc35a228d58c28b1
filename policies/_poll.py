"""Poll schedules: when to ask getTaskResult again."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs

__all__ = ["FixedInterval", "PollSchedule"]


@runtime_checkable
class PollSchedule(Protocol):
    """Decides the wait before each getTaskResult. Must be pure and must not raise."""

    def delay_before_poll(self, poll: int) -> float:
        """Seconds to wait before poll number `poll` (1 for the first poll after the task was
        accepted). A non-negative finite number."""
        ...


def _positive(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 < value < float("inf"):
        raise ValueError(f"{attribute.name} must be a positive finite number, got {value!r}")


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
