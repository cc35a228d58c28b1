"""`captchaflow serve-sim`: the simulated API served over HTTP until a stop signal."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import TYPE_CHECKING

import attrs

from captchaflow.transports import is_loopback

from ._args import UsageError, _add_simulation_options, _Commands, _port, _positive_seconds
from ._inputs import _os_reason, _read_scenario
from ._output import PROG, printable

if TYPE_CHECKING:
    from captchaflow.transports.sim import Scenario, SimulatorServer


def register(commands: _Commands) -> argparse.ArgumentParser:
    """Add `serve-sim` and its options to `commands`; return its parser."""
    sim_cmd = commands.add_parser(
        "serve-sim",
        help="serve the simulated API over HTTP on loopback, for testing clients",
        description="Serve the simulated NoCaptcha API (/createTask, /getTaskResult, "
        "/getBalance) over HTTP/1.1. Prints its base URL as the first line of stdout, then "
        "serves until SIGINT, SIGTERM or SIGHUP and exits 0.",
        epilog="exit status: 0 stopped by a signal, 2 usage, invalid scenario or cannot listen",
    )
    sim_cmd.add_argument("--host", default="127.0.0.1", help="the address to listen on (127.0.0.1)")
    sim_cmd.add_argument(
        "--port", type=_port, default=0, help="the port to listen on (0: any free port)"
    )
    sim_cmd.add_argument(
        "--key",
        help="the API key the server accepts (test-key, or the scenario's first account's); "
        "a test key of this local simulator, not a secret, so it may be an argument",
    )
    sim_cmd.add_argument(
        "--solve-seconds",
        type=_positive_seconds,
        metavar="S",
        help="mean solve time of a task (5, or the scenario's default task's); solve times "
        "are uniform in S +- min(spread, S/2)",
    )
    _add_simulation_options(
        sim_cmd, "a scenario file (.json or .toml); --key and --solve-seconds override it"
    )
    return sim_cmd


def _sim_scenario(args: argparse.Namespace) -> Scenario:
    """The scenario of `serve-sim`: the file's (or the default), with the flags applied."""
    from captchaflow.transports.sim import AccountSpec, Scenario

    scenario = _read_scenario(args.scenario) if args.scenario is not None else Scenario()
    solve_seconds = args.solve_seconds
    if solve_seconds is None and args.scenario is None:
        solve_seconds = 5.0
    if args.key is not None:
        accounts = scenario.accounts
        try:
            first = (
                attrs.evolve(accounts[0], key=args.key) if accounts else AccountSpec(key=args.key)
            )
            scenario = attrs.evolve(scenario, accounts=(first, *accounts[1:]))
        except ValueError as exc:
            raise UsageError(f"--key: {exc}") from None
    if solve_seconds is not None:
        # Capping the spread and the floor at S/2 keeps S the mean: no draw is clamped.
        task, half = scenario.default_task, solve_seconds / 2
        task = attrs.evolve(
            task,
            solve_seconds=solve_seconds,
            solve_spread=min(task.solve_spread, half),
            min_solve_seconds=min(task.min_solve_seconds, half),
        )
        scenario = attrs.evolve(scenario, default_task=task)
    return scenario


def run(args: argparse.Namespace) -> int:
    """Serve the simulated API until a stop signal; return the exit status (0)."""
    from captchaflow.transports.sim import SimulatedAPI, serve_simulator

    api = SimulatedAPI(_sim_scenario(args), seed=args.seed, keep_log=False)

    def announce(server: SimulatorServer) -> None:
        print(server.base_url, flush=True)
        if not is_loopback(args.host):  # warned once listening: a failure stays one line
            print(
                f"{PROG}: warning: --host {printable(repr(args.host))} is not a loopback "
                "address: anyone who can reach it can use the simulator",
                file=sys.stderr,
                flush=True,
            )

    try:
        serve_simulator(api, host=args.host, port=args.port, on_ready=announce)
    except BrokenPipeError:  # stdout closed: not a listening problem
        raise
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {_shown_host(args.host)} port {args.port}: {_os_reason(exc)}"
        ) from None
    return 0


def _shown_host(host: str) -> str:
    """`host` if it is an IP address; otherwise only the option (a value may be a key)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "the --host address"
