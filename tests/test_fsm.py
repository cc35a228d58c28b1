"""The task state machine: equal to specs/task-fsm.json, every legal move works, every
illegal move raises, and jobs share one machine."""

from __future__ import annotations

import itertools
import json
import pathlib
import sys
from collections.abc import Callable

import pytest
from transitions import MachineError

from captchaflow.engine import (
    TERMINAL_STATES,
    TRANSITIONS,
    IllegalTransitionError,
    TaskState,
    apply_trigger,
    machine_dot,
    machine_mermaid,
    machine_table,
)
from captchaflow.engine import _fsm as fsm_module

SPEC = json.loads((pathlib.Path(__file__).parents[1] / "specs" / "task-fsm.json").read_text())


def spec_table() -> dict[str, dict[str, str]]:
    """The spec's transitions as `{trigger: {source: dest}}`."""
    table: dict[str, dict[str, str]] = {}
    for t in SPEC["transitions"]:
        table.setdefault(t["trigger"], {}).update(dict.fromkeys(t["source"], t["dest"]))
    return table


class Model:
    """The least a job needs to be moved by the machine."""

    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state


def test_states_match_spec() -> None:
    """The code's states, initial and terminal states are exactly the spec's."""
    assert [s.value for s in TaskState] == SPEC["states"]
    assert fsm_module.INITIAL_STATE.value == SPEC["initial"]
    assert sorted(s.value for s in TERMINAL_STATES) == sorted(SPEC["terminal"])
    assert fsm_module._MACHINE.initial == SPEC["initial"]
    assert sorted(fsm_module._MACHINE.states) == sorted(SPEC["states"])


def test_live_machine_matches_spec() -> None:
    """The transitions read back out of the live `transitions.Machine` equal the spec's."""
    assert machine_table() == spec_table()


def test_table_data_matches_spec() -> None:
    """The data table handed to the machine equals the spec, meanings included."""
    assert [
        {
            "trigger": e.trigger,
            "source": [s.value for s in e.sources],
            "dest": e.dest.value,
            "meaning": e.meaning,
        }
        for e in TRANSITIONS
    ] == SPEC["transitions"]


def test_spec_comparison_catches_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant check: a machine with one extra edge no longer equals the spec."""
    original = fsm_module._MACHINE
    mutant = type(original)(
        model=None,
        states=list(original.states),
        transitions=[
            *(
                {"trigger": t, "source": list(m), "dest": next(iter(m.values()))}
                for t, m in machine_table().items()
            ),
            {"trigger": "solve", "source": "backoff", "dest": "ready"},
        ],
        initial=original.initial,
        auto_transitions=False,
    )
    monkeypatch.setattr(fsm_module, "_MACHINE", mutant)
    assert machine_table() != spec_table()


def test_only_hold_is_reflexive() -> None:
    """Only `hold` leaves a state where it is (it records a wait, not a change)."""
    for trigger, moves in machine_table().items():
        reflexive = {src for src, dst in moves.items() if src == dst}
        assert reflexive == (set(moves) if trigger == "hold" else set())


def test_terminal_states_have_no_way_out() -> None:
    """No transition leaves ready, failed or cancelled."""
    for moves in machine_table().values():
        assert not set(moves) & {s.value for s in TERMINAL_STATES}


def test_every_state_reachable_from_initial() -> None:
    """Every state can be reached from `submitted` along the spec's edges."""
    reached = {SPEC["initial"]}
    frontier = [SPEC["initial"]]
    while frontier:
        here = frontier.pop()
        for moves in spec_table().values():
            there = moves.get(here)
            if there is not None and there not in reached:
                reached.add(there)
                frontier.append(there)
    assert reached == set(SPEC["states"])


@pytest.mark.parametrize(
    ("trigger", "source", "dest"),
    [(t, s, d) for t, moves in spec_table().items() for s, d in moves.items()],
)
def test_every_legal_move(trigger: str, source: str, dest: str) -> None:
    """Each edge of the spec moves a model from its source to its destination."""
    model = Model(source)
    apply_trigger(model, trigger)
    assert model.state == dest


ILLEGAL = [
    (trigger, state.value)
    for trigger, state in itertools.product(spec_table(), TaskState)
    if state.value not in spec_table()[trigger]
]


@pytest.mark.parametrize(("trigger", "state"), ILLEGAL)
def test_every_illegal_move_raises(trigger: str, state: str) -> None:
    """Every (trigger, state) pair without an edge raises and leaves the state unchanged."""
    model = Model(state)
    with pytest.raises(IllegalTransitionError) as caught:
        apply_trigger(model, trigger)
    assert model.state == state
    assert caught.value.trigger == trigger
    assert caught.value.state == state
    assert trigger in str(caught.value)
    assert state in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def dispatched_by_transitions(trigger: str, state: str) -> str | None:
    """Where transitions' own `Event.trigger` moves a model in `state` (None: it refuses)."""
    model = Model(state)
    try:
        fsm_module._MACHINE.events[trigger].trigger(model)
    except MachineError:
        return None
    return model.state


@pytest.mark.parametrize(("trigger", "state"), list(itertools.product(spec_table(), TaskState)))
def test_fire_moves_as_the_machines_own_dispatch_would(trigger: str, state: TaskState) -> None:
    """`apply_trigger` reads moves from the machine's table instead of running its
    dispatch: on every (trigger, state) it makes the move `Event.trigger` makes, and refuses
    the ones it refuses."""
    model = Model(state.value)
    try:
        apply_trigger(model, trigger)
    except IllegalTransitionError:
        moved_to = None
    else:
        moved_to = model.state
    assert moved_to == dispatched_by_transitions(trigger, state.value)


def test_machine_has_no_callbacks_or_conditions() -> None:
    """`apply_trigger` reads moves from the table and skips transitions' dispatch, which is
    only sound while the machine has nothing for that dispatch to run: no conditions, no
    callbacks."""
    machine = fsm_module._MACHINE
    for event in machine.events.values():
        for moves in event.transitions.values():
            for move in moves:
                hooks = (move.conditions, move.prepare, move.before, move.after)
                assert not any(hooks), (event.name, move.source)
    for state in machine.states.values():
        assert not state.on_enter and not state.on_exit, state.name
    machine_hooks = (
        machine.prepare_event,
        machine.before_state_change,
        machine.after_state_change,
        machine.finalize_event,
        machine.on_exception,
    )
    assert not any(machine_hooks)
    assert not machine.has_queue


def test_unknown_trigger_raises() -> None:
    """A trigger the machine does not know raises the same typed error."""
    model = Model("submitted")
    with pytest.raises(IllegalTransitionError, match="unknown event 'teleport'"):
        apply_trigger(model, "teleport")


def test_jobs_share_one_machine_and_carry_no_triggers() -> None:
    """Models stay plain: the machine adds no per-model methods or references."""
    model = Model("submitted")
    apply_trigger(model, "accept")
    assert not hasattr(model, "accept")
    assert not hasattr(model, "trigger")
    assert fsm_module._MACHINE.models == []
    assert sys.getsizeof(model) < 64


def test_dot_drawn_from_machine() -> None:
    """The Graphviz drawing has one edge per (source, trigger) of the live machine."""
    dot = machine_dot()
    edges = [line for line in dot.splitlines() if "label=" in line]
    assert len(edges) == sum(len(m) for m in machine_table().values())
    assert '"submitted" -> "polling" [label="accept"];' in dot


# -- boundaries pinned for mutants that survived benchmarks/mutation.py --------------------


class _Model:
    """The least a job needs to be moved by the machine."""

    def __init__(self, state: str) -> None:
        self.state = state


def test_live_states_are_exactly_the_non_terminal_ones() -> None:
    """LIVE_STATES is submitted, polling and backoff: every state that is not terminal."""
    live = fsm_module.LIVE_STATES
    assert live == {TaskState.SUBMITTED, TaskState.POLLING, TaskState.BACKOFF}
    assert live | TERMINAL_STATES == set(TaskState)


def test_illegal_move_of_a_known_trigger_is_not_called_unknown() -> None:
    """Firing a known trigger in the wrong state names it an event, not an unknown event."""
    with pytest.raises(IllegalTransitionError) as caught:
        apply_trigger(_Model("ready"), "accept")
    assert str(caught.value).endswith(": can't handle event 'accept' in state 'ready'")
    assert (caught.value.trigger, caught.value.state) == ("accept", "ready")


def test_dot_draws_every_state_with_its_shape() -> None:
    """The drawing has one node per state: terminal ones double circles, live ones circles."""
    dot = machine_dot()
    for state in TaskState:
        shape = "doublecircle" if state in TERMINAL_STATES else "circle"
        assert f'  "{state.value}" [shape={shape}];' in dot.splitlines()


# -- the diagram --------------------------------------------------------------------------------


def _readme_mermaid() -> str:
    """The README's one ```mermaid block."""
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = text.split("```mermaid\n")[1:]
    assert len(blocks) == 1, "the README holds exactly one mermaid diagram"
    return blocks[0].split("```", 1)[0]


def test_readme_diagram_is_the_live_machine() -> None:
    """The Mermaid diagram in the README is what the live machine draws, line for line."""
    assert _readme_mermaid() == machine_mermaid()


def test_mermaid_draws_every_move_of_the_live_machine() -> None:
    """Every (source, trigger, dest) of the live machine is one labelled arrow; the initial
    state comes from [*] and every terminal state goes to it; nothing else is drawn."""
    lines = machine_mermaid().splitlines()
    assert lines[0] == "stateDiagram-v2"
    arrows = {line.strip() for line in lines[1:]}
    expected = {
        f"{src} --> {dst}: {trigger}"
        for trigger, moves in machine_table().items()
        for src, dst in moves.items()
    }
    expected.add(f"[*] --> {fsm_module.INITIAL_STATE.value}")
    expected |= {f"{state.value} --> [*]" for state in TERMINAL_STATES}
    assert arrows == expected and len(lines) - 1 == len(expected)


@pytest.mark.parametrize(
    ("argv", "render"),
    [
        (["diagram"], machine_mermaid),
        (["diagram", "--format", "mermaid"], machine_mermaid),
        (["diagram", "--format", "dot"], machine_dot),
        (["fsm"], machine_dot),
    ],
)
def test_diagram_command_prints_the_live_machine(
    argv: list[str], render: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`captchaflow diagram` prints Mermaid by default, DOT with --format dot; `fsm` is DOT."""
    from captchaflow.engine.cli import main

    assert main(argv) == 0
    assert capsys.readouterr().out == render()


def test_mutant_machine_without_a_move_no_longer_matches_the_readme(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutant check: a machine that lost a move draws a diagram the README test rejects."""
    table = machine_table()
    del table["hold"]
    monkeypatch.setattr(fsm_module, "machine_table", lambda: table)
    assert fsm_module.machine_mermaid() != _readme_mermaid()


@pytest.mark.parametrize("state", [*(s.value for s in TaskState), "nowhere"])
def test_the_destination_table_moves_as_apply_trigger_moves(state: str) -> None:
    """`Job._move` reads `_DESTINATIONS` instead of calling `apply_trigger` (its inlined
    copy): for every state, and every trigger of the machine or not, the table names the
    state `apply_trigger` moves a model to, and lacks exactly the moves it refuses."""
    for trigger in [*machine_table(), "nothing"]:
        model = Model(state)
        dest = fsm_module._DESTINATIONS.get((state, trigger))
        if dest is None:
            with pytest.raises(IllegalTransitionError):
                apply_trigger(model, trigger)
            assert model.state == state
        else:
            apply_trigger(model, trigger)
            assert model.state == dest
