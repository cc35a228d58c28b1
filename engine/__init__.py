"""The engine: classification, the task state machine, sans-IO jobs, drivers, the facade.

The sans-IO core (`_classify`, `_fsm`, `_job`, `_errors`) imports no I/O library, and
importing this package loads only it: drivers (`_driver`, `_engine`, `_clock`), the
simulation and the command line (`cli`) do the I/O and are imported on first use.
"""

import typing

from captchaflow import _lazy

from ._balance import BalanceQuery
from ._classify import (
    Accepted,
    Balance,
    Outcome,
    Processing,
    Solved,
    classify,
    parse_retry_after,
)
from ._errors import (
    BadRequestError,
    CaptchaflowError,
    ConnectionFailedError,
    DeadlineExceededError,
    GaveUpError,
    HttpStatusError,
    IllegalTransitionError,
    InvalidTaskError,
    JobCancelledError,
    JobStateError,
    MalformedReplyError,
    NoReplyError,
    PermanentError,
    PolicyError,
    RetriesExhaustedError,
    UnknownCodeError,
    UnsolvableError,
    error_class_for,
)
from ._fsm import (
    TERMINAL_STATES,
    TRANSITIONS,
    Move,
    TaskState,
    Transition,
    apply_trigger,
    machine_dot,
    machine_mermaid,
    machine_table,
)
from ._job import MAX_HOLDS_AT_ONE_TIME, MIN_WAIT, Action, Finished, Job, Send, Wait, validate_task

if typing.TYPE_CHECKING:
    from ._clock import Clock, SystemClock, VirtualClock
    from ._driver import SEND_GRACE, GateWaker, MoveHook, drive_job, log_move
    from ._engine import (
        DEFAULT_TIMEOUT,
        Engine,
        EngineOptions,
        balance,
        default_gate,
        solve,
        solve_many,
    )
    from ._simulation import ExchangeHook, Simulation, SimulationReport

# Drivers (anyio), the facade (httpx) and the simulation (the simulated service) are imported
# on first use: the sans-IO core above loads no I/O library.
_LAZY = {
    "._clock": ("Clock", "SystemClock", "VirtualClock"),
    "._driver": ("SEND_GRACE", "MoveHook", "GateWaker", "drive_job", "log_move"),
    "._engine": (
        "DEFAULT_TIMEOUT",
        "Engine",
        "EngineOptions",
        "balance",
        "default_gate",
        "solve",
        "solve_many",
    ),
    "._simulation": ("ExchangeHook", "Simulation", "SimulationReport"),
}
__getattr__, __dir__ = _lazy.lazy_exports(
    __name__, globals(), {name: module for module, names in _LAZY.items() for name in names}
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_HOLDS_AT_ONE_TIME",
    "MIN_WAIT",
    "SEND_GRACE",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Accepted",
    "Action",
    "BadRequestError",
    "Balance",
    "BalanceQuery",
    "CaptchaflowError",
    "Clock",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "Engine",
    "EngineOptions",
    "ExchangeHook",
    "Finished",
    "GateWaker",
    "GaveUpError",
    "HttpStatusError",
    "IllegalTransitionError",
    "InvalidTaskError",
    "Job",
    "JobCancelledError",
    "JobStateError",
    "MalformedReplyError",
    "Move",
    "MoveHook",
    "NoReplyError",
    "Outcome",
    "PermanentError",
    "PolicyError",
    "Processing",
    "RetriesExhaustedError",
    "Send",
    "Simulation",
    "SimulationReport",
    "Solved",
    "SystemClock",
    "TaskState",
    "Transition",
    "UnknownCodeError",
    "UnsolvableError",
    "VirtualClock",
    "Wait",
    "apply_trigger",
    "balance",
    "classify",
    "default_gate",
    "drive_job",
    "error_class_for",
    "log_move",
    "machine_dot",
    "machine_mermaid",
    "machine_table",
    "parse_retry_after",
    "solve",
    "solve_many",
    "validate_task",
]
