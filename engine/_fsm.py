"""The task state machine: one `transitions.Machine`, defined once, shared by every job.

Theory of operation. A task moves through these states:

    submitted --accept--> polling --solve--> ready
        |                  |
        +--defer--> backoff <--defer--+
                     |  |
      submitted <-retry_submit  retry_poll-> polling

and from any live state (submitted, polling, backoff) `fail` leads to failed and `cancel`
to cancelled. `hold` leaves a live state where it is: it records that the account gate (see
`captchaflow.policies.FleetGate`) made the job wait before its next request.

`submitted` means "a createTask is due or in flight", `polling` "the provider has the task;
a getTaskResult is due or in flight", `backoff` "waiting after a failure before the next
request". Waiting between polls is not a state of its own: it is part of
polling.

The table `TRANSITIONS` below is plain data, handed to `transitions.Machine` once. Jobs do
not get a machine, nor bound trigger methods (thousands of jobs would cost hundreds of
microseconds and kilobytes each); a job is just an object with a `state` attribute, moved by
`apply_trigger(job, trigger)`, which looks the trigger up in the shared machine (a `Job` reads
the same moves from `_DESTINATIONS`, a table taken out of the machine once). Illegal moves raise
`IllegalTransitionError`. `specs/task-fsm.json` states the same machine and a test compares
it with what `machine_table()` reads back out of the live machine.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple, Protocol

from transitions import Machine

from ._errors import IllegalTransitionError

__all__ = [
    "INITIAL_STATE",
    "LIVE_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Transition",
    "Move",
    "TaskState",
    "apply_trigger",
    "machine_dot",
    "machine_mermaid",
    "machine_table",
]


class TaskState(enum.StrEnum):
    """The states of a task. Jobs store the plain string value."""

    SUBMITTED = "submitted"
    POLLING = "polling"
    BACKOFF = "backoff"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"


INITIAL_STATE: Final = TaskState.SUBMITTED
TERMINAL_STATES: Final = frozenset({TaskState.READY, TaskState.FAILED, TaskState.CANCELLED})
LIVE_STATES: Final = frozenset(TaskState) - TERMINAL_STATES


class Transition(NamedTuple):
    """One row of the transition table: `trigger` moves a job from any of `sources` to `dest`."""

    trigger: str
    sources: tuple[TaskState, ...]
    dest: TaskState
    meaning: str


_S = TaskState
_LIVE = (_S.SUBMITTED, _S.POLLING, _S.BACKOFF)

TRANSITIONS: Final[tuple[Transition, ...]] = (
    Transition("accept", (_S.SUBMITTED,), _S.POLLING, "createTask returned a task id"),
    Transition("solve", (_S.POLLING,), _S.READY, "getTaskResult returned the solution"),
    Transition(
        "defer", (_S.SUBMITTED, _S.POLLING), _S.BACKOFF, "a failure the policy retries later"
    ),
    Transition("retry_submit", (_S.BACKOFF,), _S.SUBMITTED, "the wait is over; create the task"),
    Transition("retry_poll", (_S.BACKOFF,), _S.POLLING, "the wait is over; poll the task again"),
    Transition("hold", (_S.SUBMITTED,), _S.SUBMITTED, "the account gate holds the next createTask"),
    Transition("hold", (_S.POLLING,), _S.POLLING, "the account gate holds the next poll"),
    Transition("hold", (_S.BACKOFF,), _S.BACKOFF, "the account gate holds the retry"),
    Transition("fail", _LIVE, _S.FAILED, "the policy gave up, or the deadline passed"),
    Transition("cancel", _LIVE, _S.CANCELLED, "the caller cancelled the job"),
)

_MACHINE: Final = Machine(
    model=None,
    states=[state.value for state in TaskState],
    transitions=[
        {"trigger": e.trigger, "source": [s.value for s in e.sources], "dest": e.dest.value}
        for e in TRANSITIONS
    ],
    initial=INITIAL_STATE.value,
    auto_transitions=False,
    ignore_invalid_triggers=False,
)


class Move(NamedTuple):
    """One entry of a job's history: at `at`, `trigger` moved it from `source` to `dest`
    because of `cause`. `at` is seconds on the driver's clock (`Clock.now()`:
    `time.monotonic()` with `SystemClock`, virtual time in simulations), not wall time."""

    at: float
    source: str
    dest: str
    trigger: str
    cause: str


class _HasState(Protocol):
    state: str


def apply_trigger(model: _HasState, trigger: str) -> None:
    """Move `model` along `trigger` in the shared machine, or raise `IllegalTransitionError`
    naming the trigger and the state (the model is left unchanged).

    The move is read from the live machine's own transition table. The machine defines no
    callbacks, conditions or queueing, so for a model in one of its states (a `str`, as
    `Job.state` is) `Event.trigger` would make the same move; its dispatch (event data,
    callback resolution, logging) took a fifth of a simulation's time. A state the machine
    does not know is refused like any move it does not have."""
    event = _MACHINE.events.get(trigger)
    if event is None:
        raise IllegalTransitionError(trigger, model.state, known=False)
    moves = event.transitions.get(model.state)
    if not moves:
        raise IllegalTransitionError(trigger, model.state, known=True)
    dest = moves[0].dest  # None only for transitions' internal moves, which this machine lacks
    model.state = model.state if dest is None else dest


def _destinations() -> dict[tuple[str, str], str]:
    """`{(source, trigger): dest}` for every move of the live machine: where `apply_trigger`
    takes a model in `source` along `trigger` (read from the same table, once)."""
    return {
        (source, name): source if moves[0].dest is None else moves[0].dest
        for name, event in _MACHINE.events.items()
        for source, moves in event.transitions.items()
        if moves
    }


_DESTINATIONS: Final = _destinations()
"""Where each legal move leads, `{(source, trigger): dest}`: what `apply_trigger` does,
without its two lookups (a job's `_move` reads it; anything absent goes through
`apply_trigger`, which raises)."""


def machine_table() -> dict[str, dict[str, str]]:
    """Read the transitions back out of the live machine: `{trigger: {source: dest}}`."""
    return {
        name: {source: str(moves[0].dest) for source, moves in event.transitions.items()}
        for name, event in _MACHINE.events.items()
    }


def machine_dot() -> str:
    """The machine as a Graphviz digraph, drawn from the live machine itself."""
    lines = ["digraph task {", "  rankdir=LR;", f'  "" -> "{INITIAL_STATE.value}";']
    lines.append('  "" [shape=none];')
    for state in TaskState:
        shape = "doublecircle" if state in TERMINAL_STATES else "circle"
        lines.append(f'  "{state.value}" [shape={shape}];')
    for trigger, moves in machine_table().items():
        lines.extend(f'  "{src}" -> "{dst}" [label="{trigger}"];' for src, dst in moves.items())
    lines.append("}")
    return "\n".join(lines) + "\n"


def machine_mermaid() -> str:
    """The machine as a Mermaid state diagram (`stateDiagram-v2`), drawn from the live
    machine itself: the initial state from `[*]`, every move labelled with its trigger,
    and each terminal state into `[*]`."""
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL_STATE.value}"]
    for trigger, moves in machine_table().items():
        lines.extend(f"    {src} --> {dst}: {trigger}" for src, dst in moves.items())
    lines.extend(f"    {state.value} --> [*]" for state in TaskState if state in TERMINAL_STATES)
    return "\n".join(lines) + "\n"
