"""The `captchaflow` command. The only module that reads argv, the environment and files.

Contract (README, "Command line"): the solution goes to stdout as one line of JSON and the
exit status is 0; any failure prints exactly one line to stderr, naming the error, and exits
with 2 (usage or invalid input), 3 (permanent account error), 4 (bad request),
5 (unsolvable), 6 (gave up: transient failures, transport failures or the deadline),
130 (interrupted) or 1 (a bug in captchaflow). Never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import logging
import math
import os
import stat
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, TextIO

import attrs

from captchaflow.transports import (
    DEFAULT_BASE_URL,
    AccountSpec,
    ApiKey,
    JsonValue,
    Scenario,
    ScenarioError,
    SimulatedAPI,
    SimulatorServer,
    check_base_url,
    is_loopback,
    serve_simulator,
)

from ._demo import format_failures, format_summary, run_demo
from ._engine import DEFAULT_TIMEOUT, solve
from ._errors import CaptchaflowError
from ._fsm import machine_dot
from ._job import validate_task

__all__ = ["EXIT_USAGE", "KEY_ENV", "main"]

KEY_ENV = "NOCAPTCHA_API_KEY"
EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
PROG = "captchaflow"


class UsageError(Exception):
    """Bad command-line input; exit 2 with the message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            # Never echo stray values: one of them may be a key pasted on the command line.
            words = message[len(prefix) :].split()
            message = prefix + " ".join(w if w.startswith("-") else "…" for w in words)
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: `--key VALUE` must not be taken for `--key-file VALUE`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _task_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000000: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"must be a port number in 0..65535: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `captchaflow` command."""
    parser = _Parser(
        prog=PROG,
        description="Solve captchas through the NoCaptcha task API, correctly.",
        epilog=f"The API key is read from ${KEY_ENV} or --key-file, never from an argument.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    solve_cmd = commands.add_parser(
        "solve",
        help="solve one task and print its solution as one line of JSON",
        description="Solve one task; print the solution as one line of JSON on stdout.",
        epilog="exit status: 0 solved, 2 usage or invalid input, 3 permanent account error "
        "(codes 1, 3, 14, 15), 4 bad request (10), 5 unsolvable (12), 6 gave up "
        "(transient or transport failures, deadline), 130 interrupted",
    )
    source = solve_cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", metavar="JSON", help="the task as a JSON object")
    source.add_argument(
        "--task-file", metavar="PATH", help="a file holding the task as JSON ('-' for stdin)"
    )
    source.add_argument("--image", metavar="PATH", help="an image file, sent as an ImageToTextTask")
    solve_cmd.add_argument(
        "--base-url", default=DEFAULT_BASE_URL, help=f"the API's base URL ({DEFAULT_BASE_URL})"
    )
    solve_cmd.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"overall deadline in seconds (default {DEFAULT_TIMEOUT:g})",
    )
    solve_cmd.add_argument(
        "--key-file", metavar="PATH", help=f"read the API key from this file instead of ${KEY_ENV}"
    )
    solve_cmd.add_argument(
        "--allow-shared-key-file",
        action="store_true",
        help="accept a --key-file that others can read (for containers that mount secrets so)",
    )
    solve_cmd.add_argument(
        "-v", "--verbose", action="store_true", help="log every state change to stderr"
    )

    demo_cmd = commands.add_parser(
        "demo",
        help="run a batch of tasks against the built-in simulated API (no key, no network)",
        description="Run a batch of tasks through the engine against the in-process "
        "simulated API, with a realistic mix of faults, in virtual time; print a summary.",
    )
    demo_cmd.add_argument(
        "--tasks", type=_task_count, default=200, metavar="N", help="how many tasks (200)"
    )
    demo_cmd.add_argument("--seed", type=int, default=0, help="the simulation's seed (0)")
    demo_cmd.add_argument(
        "--scenario",
        metavar="FILE",
        help="a scenario file (.json or .toml) instead of the built-in mix",
    )

    sim_cmd = commands.add_parser(
        "serve-sim",
        help="serve the simulated API over HTTP on loopback, for testing clients",
        description="Serve the simulated NoCaptcha API (/createTask, /getTaskResult, "
        "/getBalance) over HTTP/1.1. Prints its base URL as the first line of stdout, then "
        "serves until SIGINT or SIGTERM and exits 0.",
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
    sim_cmd.add_argument("--seed", type=int, default=0, help="the simulation's seed (0)")
    sim_cmd.add_argument(
        "--scenario",
        metavar="FILE",
        help="a scenario file (.json or .toml); --key and --solve-seconds override it",
    )

    commands.add_parser(
        "fsm",
        help="print the task state machine as a Graphviz digraph",
        description="Print the task state machine, read from the live machine, as DOT.",
    )
    return parser


def _read_key(key_file: str | None, *, allow_shared: bool = False) -> ApiKey:
    if key_file is not None:
        try:
            with open(key_file, encoding="utf-8") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if mode & 0o077 and not allow_shared:
                    raise UsageError(
                        f"--key-file {key_file!r} can be read by others "
                        f"(mode {stat.S_IMODE(mode):04o}); run 'chmod 600' on it, "
                        "or pass --allow-shared-key-file"
                    )
                secret = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --key-file {key_file!r}: {_os_reason(exc)}") from None
        where = f"--key-file {key_file!r}"
    else:
        secret = os.environ.get(KEY_ENV, "").strip()
        where = f"${KEY_ENV}"
        if not secret:
            raise UsageError(f"no API key: set ${KEY_ENV} or pass --key-file PATH")
    if not secret or any(ch.isspace() for ch in secret):
        raise UsageError(f"the API key in {where} is empty or contains whitespace")
    return ApiKey(secret)


def _read_task(args: argparse.Namespace) -> Mapping[str, JsonValue]:
    if args.image is not None:
        try:
            with open(args.image, "rb") as handle:
                image = handle.read()
        except OSError as exc:
            raise UsageError(f"cannot read --image {args.image!r}: {_os_reason(exc)}") from None
        if not image:
            raise UsageError(f"--image {args.image!r} is empty")
        return {"type": "ImageToTextTask", "body": base64.b64encode(image).decode("ascii")}
    if args.task_file is not None:
        try:
            if args.task_file == "-":
                text = sys.stdin.read()
            else:
                with open(args.task_file, encoding="utf-8") as handle:
                    text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"cannot read --task-file {args.task_file!r}: {_os_reason(exc)}"
            ) from None
        origin = "--task-file"
    else:
        text, origin = args.task, "--task"
    try:
        task = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{origin} is not valid JSON: {exc}") from None
    return validate_task(task)


def _os_reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _fail(message: str, code: int, key: ApiKey | None = None) -> int:
    line = " ".join(message.split())
    if key is not None:
        line = key.redact(line)
    print(f"{PROG}: {line}", file=sys.stderr)
    return code


def _solve(args: argparse.Namespace) -> int:
    task = _read_task(args)
    key = _read_key(args.key_file, allow_shared=args.allow_shared_key_file)
    try:
        base_url = check_base_url(args.base_url)
    except ValueError as exc:
        raise UsageError(f"--base-url: {exc}") from None
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        logging.getLogger("captchaflow").addHandler(handler)
        logging.getLogger("captchaflow").setLevel(logging.DEBUG)
    try:
        solution = solve(task, key=key, base_url=base_url, timeout=args.timeout)
    except CaptchaflowError as exc:
        return _fail(exc.summary(), exc.exit_code, key)
    # ASCII-only JSON prints on any terminal encoding: a paid-for solution is never lost to
    # a UnicodeEncodeError.
    print(json.dumps(solution, separators=(",", ":")))
    return 0


def _read_scenario(path: str) -> Scenario:
    try:
        return Scenario.load(path)
    except OSError as exc:
        raise UsageError(f"cannot read --scenario {path!r}: {_os_reason(exc)}") from None
    except (ScenarioError, UnicodeDecodeError, RecursionError) as exc:
        raise UsageError(f"--scenario {path!r}: {exc}") from None


def _demo(args: argparse.Namespace) -> int:
    scenario = _read_scenario(args.scenario) if args.scenario is not None else None
    report, wall = run_demo(args.tasks, seed=args.seed, scenario=scenario)
    print(format_summary(report, wall, seed=args.seed))
    failures = format_failures(report)
    if failures is None:
        return 0
    print(failures, file=sys.stderr)
    # The exit status of the commonest error (ties: the first by name), as `solve` would.
    errors = [job.error for job in report.jobs if job.error is not None]
    counts = collections.Counter(error.name for error in errors)
    name = min(counts, key=lambda n: (-counts[n], n))
    return next(error.exit_code for error in errors if error.name == name)


def _sim_scenario(args: argparse.Namespace) -> Scenario:
    """The scenario of `serve-sim`: the file's (or the default), with the flags applied."""
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


def _serve_sim(args: argparse.Namespace) -> int:
    api = SimulatedAPI(_sim_scenario(args), seed=args.seed, keep_log=False)

    def announce(server: SimulatorServer) -> None:
        print(server.base_url, flush=True)
        if not is_loopback(args.host):  # warned once listening: a failure stays one line
            print(
                f"{PROG}: warning: --host {args.host!r} is not a loopback address: anyone "
                "who can reach it can use the simulator",
                file=sys.stderr,
                flush=True,
            )

    try:
        serve_simulator(api, host=args.host, port=args.port, on_ready=announce)
    except BrokenPipeError:  # stdout closed: not a listening problem
        raise
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {args.host} port {args.port}: {_os_reason(exc)}"
        ) from None
    return 0


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (the console script exits with it)."""
    warnings.showwarning = _show_warning  # one line per warning, like every other message
    try:
        args = build_parser().parse_args(argv)
        if args.command == "demo":
            return _demo(args)
        if args.command == "serve-sim":
            return _serve_sim(args)
        if args.command == "fsm":
            sys.stdout.write(machine_dot())
            return 0
        return _solve(args)
    except UsageError as exc:
        return _fail(f"error: {exc}", EXIT_USAGE)
    except CaptchaflowError as exc:  # invalid task: nothing was sent
        return _fail(exc.summary(), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:  # stdout closed early (`| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: still one line, still no key
        return _fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
