"""The engine: classification, the task state machine, sans-IO jobs, drivers, the facade.

The sans-IO core (`_classify`, `_fsm`, `_job`, `_errors`) imports no I/O library; drivers
(`_driver`, `_engine`, `_clock`) and the command line (`cli`) do the I/O.
"""

from ._classify import Accepted, Outcome, Processing, Solved, classify, parse_retry_after
from ._clock import Clock, SystemClock, VirtualClock
from ._driver import MoveHook, Waker, drive, log_move
from ._engine import DEFAULT_TIMEOUT, Engine, EngineOptions, solve, solve_many
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
    Edge,
    Move,
    TaskState,
    fire,
    machine_dot,
    machine_table,
)
from ._job import Action, Finished, Job, Send, Wait, validate_task
from ._simulation import ExchangeHook, Simulation, SimulationReport

__all__ = [
    "DEFAULT_TIMEOUT",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Accepted",
    "Action",
    "BadRequestError",
    "CaptchaflowError",
    "Clock",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "Edge",
    "Engine",
    "EngineOptions",
    "ExchangeHook",
    "Finished",
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
    "UnknownCodeError",
    "UnsolvableError",
    "VirtualClock",
    "Wait",
    "Waker",
    "classify",
    "drive",
    "error_class_for",
    "fire",
    "log_move",
    "machine_dot",
    "machine_table",
    "parse_retry_after",
    "solve",
    "solve_many",
    "validate_task",
]
