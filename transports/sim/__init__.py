"""The simulated NoCaptcha service: a model of the API (accounts, limits, task solving and
network faults) in virtual time, its scenarios (TOML/JSON files or Python), an in-process
transport onto it, and an HTTP server (`captchaflow serve-sim`) that serves it on loopback.

It is not a transport: it is what the engine and your own tests are checked against. Import
it explicitly (`from captchaflow.transports.sim import SimulatedAPI`); nothing else in
captchaflow loads it until it is used."""

from ._api import (
    RequestFate,
    SimRequest,
    SimStats,
    SimTask,
    SimulatedAPI,
    SimulatedClock,
    SimulatedExchange,
    SimulatedTransport,
)
from ._scenario import (
    AccountSpec,
    FaultKind,
    FaultRates,
    Outage,
    PlanState,
    Scenario,
    ScenarioError,
    ScheduledFault,
    TaskTypeSpec,
)
from ._server import SimulatorServer, serve_simulator, simulator_in_thread

__all__ = [
    "AccountSpec",
    "FaultKind",
    "FaultRates",
    "Outage",
    "PlanState",
    "RequestFate",
    "Scenario",
    "ScenarioError",
    "ScheduledFault",
    "SimRequest",
    "SimStats",
    "SimTask",
    "SimulatedAPI",
    "SimulatedClock",
    "SimulatedExchange",
    "SimulatedTransport",
    "SimulatorServer",
    "TaskTypeSpec",
    "serve_simulator",
    "simulator_in_thread",
]
