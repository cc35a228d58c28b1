"""Poll schedules: when to ask getTaskResult again."""

from __future__ import annotations

import bisect
import collections
import itertools
import math
from collections.abc import Iterable
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


_GRID: Final = 64
"""How finely a shaped schedule may place its polls: at the learned times' quantiles in steps
of 1/64 (and at the first poll's floor)."""

_SMOOTH: Final = 0.15
"""A remembered time is spread over at least this fraction of itself (centred on it)."""

_WINDOW: Final = 0.25
"""The density just after a first poll is measured over this fraction of its time."""

_LONGEST: Final = 86_400.0
"""Reported times over a day are ignored, like negative and non-finite ones."""

_SEARCH_STEPS: Final = 12
"""At most this many evaluations of the schedule when searching the poll price that meets
the latency target (the search starts from the price found last time)."""


@attrs.frozen
class _Point:
    """A candidate poll time `t`, the learned probability `cdf` that a task is solved by then,
    and `partial` = the integral of s dF(s) up to `t` (for the latency sums)."""

    t: float
    cdf: float
    partial: float


@attrs.frozen
class _Plan:
    """A schedule for one poll price: poll times (absolute, from acceptance) and the learned
    distribution's expected polls and detection latency under it."""

    times: tuple[float, ...]
    polls: float
    latency: float


def _changes(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Where the slope of the learned distribution function changes, and by how much, in
    time order: each span holds an equal share of the mass, spread evenly over it."""
    share = 1.0 / len(spans)
    changes: list[tuple[float, float]] = []
    for low, high in spans:
        slope = share / (high - low)
        changes.append((low, slope))
        changes.append((high, -slope))
    changes.sort()
    return changes


def _quantiles(changes: list[tuple[float, float]]) -> list[float]:
    """The learned distribution's quantiles at levels 1/`_GRID`, ..., 1 (the last: where it
    ends), by one sweep over the slope changes."""
    times: list[float] = []
    cdf = slope = 0.0
    at = changes[0][0]
    level = 1
    for where, change in changes:
        if where > at and slope > 0.0:
            gained = slope * (where - at)
            while level < _GRID and cdf + gained >= level / _GRID:
                times.append(at + (level / _GRID - cdf) / slope)
                level += 1
            cdf += gained
        at = max(at, where)
        slope += change
    times.append(at)
    return times


def _inverse(changes: list[tuple[float, float]], level: float) -> float:
    """The time by which the learned distribution reaches `level` (in [0, 1])."""
    cdf = slope = 0.0
    at = changes[0][0]
    for where, change in changes:
        if where > at and slope > 0.0:
            gained = slope * (where - at)
            if cdf + gained >= level:
                return at + max(0.0, level - cdf) / slope
            cdf += gained
        at = max(at, where)
        slope += change
    return at


def _points(changes: list[tuple[float, float]], times: list[float]) -> list[_Point]:
    """The learned distribution at each of the sorted `times`, by one sweep."""
    points: list[_Point] = []
    cdf = partial = slope = 0.0
    at = changes[0][0]
    queries = iter(times)
    query = next(queries, None)
    for where, change in [*changes, (math.inf, 0.0)]:
        while query is not None and query <= where:
            if query <= at:
                points.append(_Point(query, cdf, partial))
            else:
                points.append(
                    _Point(
                        query,
                        cdf + slope * (query - at),
                        partial + slope * (query * query - at * at) / 2,
                    )
                )
            query = next(queries, None)
        if query is None:
            break
        if where > at:
            cdf += slope * (where - at)
            partial += slope * (where * where - at * at) / 2
            at = where
        slope += change
    return points


def _candidates(changes: list[tuple[float, float]], first: float, fill: float) -> list[_Point]:
    """Where polls may go, under the learned distribution: `first` (the earliest the first
    poll may come), then the distribution's quantiles at steps of 1/`_GRID` after it, with
    points every `fill` seconds where quantiles are further apart (in the slow tail, say),
    the last one where the distribution ends (when that is after `first`)."""
    quantiles = _quantiles(changes)
    fill = max(fill, (quantiles[-1] - first) / _GRID)  # at most _GRID points filled in
    times = [first]
    for t in quantiles:
        if t <= times[-1]:
            continue
        gaps = math.ceil((t - times[-1]) / fill) - 1
        start = times[-1]
        times.extend(start + fill * k for k in range(1, gaps + 1))
        times.append(t)
    return _points(changes, times)


def _spans(samples: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The span each remembered time is spread over: `width` centred on it, except for a
    task found at its first poll (whose span starts at acceptance): nothing was seen before
    that poll, so its mass is put just before it, at the density learned just after it
    (over the whole span when nothing was learned there)."""
    spans: list[tuple[float, float]] = []
    firsts: list[float] = []  # the first poll of each task found at it
    for seconds, width in samples:
        low = seconds - width / 2
        if low <= 0.0:
            firsts.append(seconds + width / 2)
        else:
            spans.append((low, seconds + width / 2))
    if not firsts:
        return spans
    count = len(spans) + len(firsts)
    caught = len(firsts) / count
    density: dict[float, float] = {}
    for end in set(firsts):
        # the learned density just after `end` (over the next `_WINDOW * end` seconds), in
        # shares of all the remembered times
        reach = end + _WINDOW * end
        inside = sum(
            max(0.0, min(high, reach) - max(low, end)) / (high - low) for low, high in spans
        )
        density[end] = inside / count / (reach - end) if reach > end else 0.0
    for end in firsts:
        width = end if density[end] <= 0.0 else min(end, caught / density[end])
        spans.append((end - width, end))
    return spans


def _plan(points: list[_Point], price: float, gap: float) -> _Plan:
    """The poll times, among `points`, that minimise expected polls + `price` x expected
    detection latency under the learned distribution: the first poll at some point, each
    later one at least `gap` after the one before (the last point is always allowed: it
    ends the plan), the last at the last point.

    Exact dynamic programming over the points (node 0 is acceptance, at t = 0). A poll at
    point j after one at point i is made by every task not solved by i (1 - cdf_i) and
    catches the tasks solved in between, each `t_j - s` after it was solved. That cost
    satisfies the quadrangle (Monge) inequality, so the best next poll after point i is
    never after the best one after point i + 1: the search for i stops there."""
    count = len(points)
    t = [0.0] + [p.t for p in points]
    cdf = [0.0] + [p.cdf for p in points]
    partial = [0.0] + [p.partial for p in points]
    last = count
    value = [0.0] * (count + 1)
    best_next = [last] * (count + 1)
    for i in range(count - 1, -1, -1):
        ti, ci, ai = t[i], cdf[i], partial[i]
        # node 0 (acceptance) may go to any point; later ones keep the gap
        j = i + 1 if i == 0 else max(i + 1, bisect.bisect_left(t, ti + gap, i + 1, last))
        stop = best_next[i + 1] if i + 1 < last else last
        best, choice = math.inf, last
        for k in range(j, max(stop, j) + 1):
            cost = price * (t[k] * (cdf[k] - ci) - (partial[k] - ai)) + value[k]
            if cost < best:
                best, choice = cost, k
        if choice != last:  # stopping short: the last point closes the plan
            closing = price * (t[last] * (cdf[last] - ci) - (partial[last] - ai))
            if closing < best:
                best, choice = closing, last
        value[i] = best + (1.0 - ci)
        best_next[i] = choice
    times: list[float] = []
    polls = latency = 0.0
    i = 0
    while i != last:
        k = best_next[i]
        polls += 1.0 - cdf[i]
        latency += t[k] * (cdf[k] - cdf[i]) - (partial[k] - partial[i])
        times.append(t[k])
        i = k
    return _Plan(tuple(times), polls, latency)


def _finite_positive_or_none(
    instance: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None:
        _positive(instance, attribute, value)  # type: ignore[arg-type]


@attrs.define(kw_only=True)
class AdaptivePoll:
    """Learns how long this account's tasks take, and polls when they are likely done.

    Until `min_samples` solved tasks have been seen it polls every `interval`, the first
    poll after `interval`. From then on the first poll waits the `quantile` of the last
    `memory` observed times to solution (at least `interval`), and the rest every
    `interval`. Once `shape_samples` times are remembered it shapes every poll: from the
    learned distribution it picks the poll times with the fewest expected polls per task
    whose expected detection latency (from the moment a task is solved to the poll that
    sees it) is at most `latency` (default `interval / 2`, what polling every `interval`
    gives): polls are sparse where few tasks finish and dense where many do. It never polls
    before `interval` or before the learned `quantile`, never two polls of a task less than
    `min_interval` apart (default `interval / 4`), and after the slowest remembered time it
    polls every `interval` again. The shape is recomputed every `memory / 16` solved tasks
    (rounded up), so a change in the tasks is followed within a few hundred solves.

    A reported time is the middle of the span between two polls (see
    `LearningPollSchedule`); the schedule remembers each one spread over the span of its own
    schedule that holds it, so that its own poll times do not show up as clusters in what
    it learns. Negative, NaN and infinite times, times over a day, and non-numbers are
    ignored. Learning is deterministic (the same times in the same order give the same
    delays), memory is bounded by `memory`, and `delay_before_poll` is a lookup. One
    schedule is meant to be shared by the jobs of an account.
    """

    interval: float = attrs.field(default=2.0, validator=_positive)
    quantile: float = attrs.field(default=0.1)
    min_samples: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    memory: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    latency: float | None = attrs.field(default=None, validator=_finite_positive_or_none)
    shape_samples: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    min_interval: float | None = attrs.field(default=None, validator=_finite_positive_or_none)
    # each remembered time with the width of the span it is spread over
    _samples: collections.deque[tuple[float, float]] = attrs.field(
        init=False, factory=collections.deque
    )
    _first: float | None = attrs.field(init=False, default=None)
    _delays: tuple[float, ...] = attrs.field(init=False, default=())
    _times: tuple[float, ...] = attrs.field(init=False, default=())
    _since_shaped: int = attrs.field(init=False, default=0)
    _price: float = attrs.field(init=False, default=1.0)

    @quantile.validator
    def _check_quantile(self, _attribute: attrs.Attribute[float], value: float) -> None:
        if not 0 <= value <= 1:
            raise ValueError(f"quantile must be in [0, 1], got {value!r}")

    @property
    def shaped_delays(self) -> tuple[float, ...]:
        """The shaped waits before polls 1, 2, ... (empty until shaped); after them, every
        `interval`."""
        return self._delays

    def delay_before_poll(self, poll: int) -> float:
        """The learned wait before poll number `poll`: a lookup; finite, at least
        `MIN_POLL_DELAY`."""
        delays = self._delays
        index = max(poll, 1) - 1
        if index < len(delays):
            return delays[index]
        if poll <= 1 and self._first is not None:
            return max(self.interval, self._first)
        return self.interval

    def observe_solved(self, seconds: float) -> None:
        """Remember one time to solution; update the first wait, and every `memory / 16`
        times (once `shape_samples` are remembered) the shape of every poll."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            return
        if not 0 <= seconds <= _LONGEST:  # NaN too
            return
        samples = self._samples
        samples.append((float(seconds), max(self._span_width(seconds), _SMOOTH * seconds)))
        if len(samples) > self.memory:
            samples.popleft()
        count = len(samples)
        if count < self.min_samples:
            return
        if count < self.shape_samples:
            ordered = sorted(seconds for seconds, _ in samples)
            self._first = ordered[min(count - 1, int(self.quantile * count))]
            self._times = (max(self.interval, self._first),)
            return
        self._since_shaped += 1
        if self._delays and self._since_shaped < -(-self.memory // 16):
            return
        self._since_shaped = 0
        self._shape()

    def _span_width(self, seconds: float) -> float:
        """The width of the span between two polls of the current schedule that holds
        `seconds` (after the last planned poll, `interval`)."""
        times = self._times
        k = bisect.bisect_left(times, seconds)
        if k == len(times):
            return self.interval
        return times[k] - (times[k - 1] if k else 0.0)

    def _shape(self) -> None:
        """Recompute the poll times from the remembered times."""
        samples = self._samples
        changes = _changes(_spans(samples))
        self._first = _inverse(changes, self.quantile)
        first = max(self.interval, self._first)
        gap = self.min_interval if self.min_interval is not None else self.interval / 4
        target = self.latency if self.latency is not None else self.interval / 2
        points = _candidates(changes, first, self.interval)
        plan = self._search(points, gap, target)
        delays: list[float] = []
        previous = 0.0
        for t in plan.times:
            delay = max(t - previous, gap if delays else first)
            delays.append(delay)
            previous += delay
        self._delays = tuple(delays)
        self._times = tuple(itertools.accumulate(delays))

    def _search(self, points: list[_Point], gap: float, target: float) -> _Plan:
        """The plan with the fewest expected polls whose expected latency is at most
        `target`, found by searching the poll price (what a second of latency is worth in
        polls) from the last price found; the plan with the least latency tried if none
        meets the target."""
        low, high = 0.0, math.inf
        price = self._price
        fallback: _Plan | None = None
        chosen: _Plan | None = None
        for _ in range(_SEARCH_STEPS):
            plan = _plan(points, price, gap)
            if plan.latency <= target:
                high, chosen = price, plan
                if plan.latency >= 0.97 * target:
                    break
                price = price / 4 if low == 0.0 else math.sqrt(low * price)
            else:
                low = price
                if fallback is None or plan.latency < fallback.latency:
                    fallback = plan
                price = price * 4 if high == math.inf else math.sqrt(price * high)
            price = min(max(price, 1e-6), 1e9)
        if chosen is not None:
            self._price = high
            return chosen
        assert fallback is not None
        return fallback
