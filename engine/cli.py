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
import ipaddress
import json
import logging
import math
import os
import pathlib
import re
import signal
import stat
import sys
import threading
import tomllib
import urllib.parse
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import IO, Any, NoReturn, TextIO, TypeAlias

import attrs

import captchaflow
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
from ._driver import MoveHook, log_move
from ._engine import DEFAULT_TIMEOUT, solve
from ._errors import CaptchaflowError, MalformedReplyError
from ._fsm import Move, machine_dot
from ._job import Job, validate_task

__all__ = [
    "EXIT_USAGE",
    "KEY_ENV",
    "MAX_IMAGE_BYTES",
    "MAX_KEY_FILE_BYTES",
    "MAX_SCENARIO_BYTES",
    "MAX_TASK_BYTES",
    "TerminalFormatter",
    "main",
    "printable",
    "value_free",
]

KEY_ENV = "NOCAPTCHA_API_KEY"
EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
PROG = "captchaflow"

MIB = 1 << 20
MAX_TASK_BYTES = 8 * MIB
"""The largest task JSON `--task-file` reads (a larger one is refused, exit 2)."""
MAX_IMAGE_BYTES = 6 * MIB
"""The largest `--image` file: base64 makes it 4/3 larger, so it becomes a task of about
`MAX_TASK_BYTES`, the same bound as a task given as JSON."""
MAX_KEY_FILE_BYTES = 4096
"""The largest `--key-file` (a key is a few dozen bytes)."""
MAX_SCENARIO_BYTES = 1 * MIB
"""The largest `--scenario` file."""


class UsageError(Exception):
    """Bad command-line input; exit 2 with the message."""


# Messages of our own argument types: fixed texts, so they never hold the value given.
_NOT_A_NUMBER = "not a number"
_NOT_POSITIVE_SECONDS = "must be a positive number of seconds"
_NOT_AN_INTEGER = "not an integer"
_TASKS_OUT_OF_RANGE = "must be between 1 and 1000000"
_NOT_A_PORT = "must be a port number in 0..65535"
_OWN_MESSAGES = frozenset(
    {_NOT_A_NUMBER, _NOT_POSITIVE_SECONDS, _NOT_AN_INTEGER, _TASKS_OUT_OF_RANGE, _NOT_A_PORT}
)
# argparse messages that name only options, metavars or counts, never a value given.
_NAMES_ONLY = ("expected ", "not allowed with argument ")
_OPTION_NAME = re.compile(r"--[a-z]+(-[a-z]+)*|-[a-zA-Z]")


def value_free(message: str) -> str:
    """argparse's `message` rewritten so that it holds no value from the command line,
    only option names, metavars and choices of ours: any value may be a pasted key.

    `unrecognized arguments: --key=sk-1 sk-2` becomes `unrecognized arguments: --key=… …`;
    `argument --timeout: invalid float value: 'sk-1'` becomes `argument --timeout: invalid
    value`; an invalid command is reported with the valid ones, not with the one given.
    A message of a shape not known here becomes `invalid arguments`.
    """
    prefix = "unrecognized arguments: "
    if message.startswith(prefix):
        words = []
        for word in message[len(prefix) :].split():
            name, equals, _value = word.partition("=")
            # An option's name is shown (`--key=…`); anything else may be a value.
            words.append(name + ("=…" if equals else "") if _OPTION_NAME.fullmatch(name) else "…")
        return prefix + " ".join(words)
    if message.startswith(("the following arguments are required: ", "one of the arguments ")):
        return message
    argument = re.fullmatch(r"argument (\S+): (.*)", message, re.DOTALL)
    if argument is None:
        return "ambiguous option" if message.startswith("ambiguous option") else "invalid arguments"
    name, detail = argument.groups()
    if detail.startswith("invalid choice"):  # the choices are ours; the value given is not
        choices = re.search(r"\(choose from (.*)\)\Z", detail, re.DOTALL)
        listed = choices.group(1).replace("'", "") if choices else ""
        return f"argument {name}: invalid choice" + (f" (choose from {listed})" if listed else "")
    if detail.startswith("ignored explicit argument"):
        return f"argument {name}: takes no value"
    if detail in _OWN_MESSAGES or detail.startswith(_NAMES_ONLY):
        return message
    return f"argument {name}: invalid value"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Raise `UsageError` with argparse's message, made value-free (`value_free`)."""
        raise UsageError(f"{value_free(message)} (see '{self.prog} --help')")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: `--key VALUE` must not be taken for `--key-file VALUE`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


class _Version(argparse.Action):
    """`--version`: print `captchaflow VERSION` on stdout and exit 0 (the version is looked
    up only when asked for: every other run skips reading the package metadata)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(f"{PROG} {captchaflow.__version__}")
        parser.exit()


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_NOT_A_NUMBER) from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(_NOT_POSITIVE_SECONDS)
    return value


def _task_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_NOT_AN_INTEGER) from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(_TASKS_OUT_OF_RANGE)
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_NOT_A_PORT) from None
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(_NOT_A_PORT)
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `captchaflow` command."""
    parser = _Parser(
        prog=PROG,
        description="Solve captchas through the NoCaptcha task API, correctly.",
        epilog=f"The API key is read from ${KEY_ENV} or --key-file, never from an argument.",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
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
        "--task-file",
        metavar="PATH",
        help=f"a file holding the task as JSON ('-' for stdin; at most {_size(MAX_TASK_BYTES)})",
    )
    source.add_argument(
        "--image",
        metavar="PATH",
        help=f"an image file, sent as an ImageToTextTask (at most {_size(MAX_IMAGE_BYTES)})",
    )
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


def _read_capped(handle: IO[bytes], limit: int, what: str) -> bytes:
    """All of `handle`, read as at most `limit + 1` bytes; `UsageError` if it holds more
    than `limit` (so /dev/zero or an endless pipe costs `limit` bytes, not all memory)."""
    data = handle.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{what} is larger than {_size(limit)}, the most captchaflow reads")
    return data


def _size(count: int) -> str:
    return f"{count // MIB} MiB" if count % MIB == 0 else f"{count} bytes"


# Errors about files name the option, never the path given: it may be a pasted key.
def _read_key(key_file: str | None, *, allow_shared: bool = False) -> ApiKey:
    if key_file is not None:
        try:
            with open(key_file, "rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if mode & 0o077 and not allow_shared:
                    raise UsageError(
                        f"--key-file can be read by others (mode {stat.S_IMODE(mode):04o}); "
                        "run 'chmod 600' on it, or pass --allow-shared-key-file"
                    )
                secret = _read_capped(handle, MAX_KEY_FILE_BYTES, "--key-file").decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --key-file: {_os_reason(exc)}") from None
        secret, where = secret.strip(), "--key-file"
    else:
        secret = os.environ.get(KEY_ENV, "").strip()
        where = f"${KEY_ENV}"
        if not secret:
            raise UsageError(f"no API key: set ${KEY_ENV} or pass --key-file PATH")
    if not secret or any(ch.isspace() or not ch.isprintable() for ch in secret):
        raise UsageError(
            f"the API key in {where} is empty or contains whitespace or control characters"
        )
    return ApiKey(secret)


def _read_input(path: str, option: str, limit: int) -> bytes:
    """The bytes of file `path` (stdin for '-' where allowed), at most `limit` of them."""
    try:
        if path == "-" and option == "--task-file":
            stdin = sys.stdin
            if stdin is None:
                raise UsageError(f"{option} -: there is no stdin")
            return _read_capped(stdin.buffer, limit, f"{option} - (stdin)")
        with open(path, "rb") as handle:
            return _read_capped(handle, limit, option)
    except OSError as exc:
        raise UsageError(f"cannot read {option}: {_os_reason(exc)}") from None


def _read_task(args: argparse.Namespace) -> Mapping[str, JsonValue]:
    if args.image is not None:
        image = _read_input(args.image, "--image", MAX_IMAGE_BYTES)
        if not image:
            raise UsageError("--image is an empty file")
        return {"type": "ImageToTextTask", "body": base64.b64encode(image).decode("ascii")}
    if args.task_file is not None:
        origin = "--task-file"
        try:
            text = _read_input(args.task_file, origin, MAX_TASK_BYTES).decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{origin} is not UTF-8 text") from None
    else:
        text, origin = args.task, "--task"
    try:
        task = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{origin} is not valid JSON: {exc}") from None
    return validate_task(task)


def _os_reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


_HOST_NAME = re.compile(r"[\w.-]+")  # letters (IDN too), digits, '-', '.', '_'


def _checked_base_url(text: str) -> str:
    """`text` normalised, if it is an http(s) URL with a host, no user name or password, a
    port in 1..65535 if it has one, no query or fragment and no whitespace or control
    character; else `UsageError` saying what is wrong without repeating the URL (it may
    hold a password, or be a key pasted in the wrong place)."""
    shape = "it must look like https://host[:port][/path]"
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise UsageError("--base-url must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        raise UsageError(f"--base-url is not a valid URL: {shape}") from None
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"--base-url must start with https:// or http://: {shape}")
    if "@" in parts.netloc:
        raise UsageError(
            "--base-url must not hold a user name or password (the API key authenticates "
            "every request; credentials in the URL would be sent to the server as well)"
        )
    netloc = re.fullmatch(r"(\[[^\[\]]*\]|[^:\[\]]*)(?::([^:]*))?", parts.netloc)
    if not parts.netloc or (netloc is not None and not netloc.group(1)):
        raise UsageError(f"--base-url has no host: {shape}")
    if netloc is None or not _valid_host(netloc.group(1)):
        raise UsageError(f"--base-url has an invalid host: {shape}")
    port = netloc.group(2)
    if port is not None and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65_535):
        raise UsageError("--base-url has an invalid port: it must be a number in 1..65535")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise UsageError(f"--base-url must not have a query or a fragment: {shape}")
    try:
        return check_base_url(text)
    except ValueError:
        raise UsageError(f"--base-url is not a valid URL: {shape}") from None


def _valid_host(host: str) -> bool:
    if host.startswith("["):  # an IPv6 literal, maybe with a zone (%25eth0)
        try:
            return ipaddress.ip_address(urllib.parse.unquote(host[1:-1])).version == 6
        except ValueError:
            return False
    return _HOST_NAME.fullmatch(host) is not None


def printable(text: str) -> str:
    """`text` with every character that is not printable written as an escape: control
    characters (ESC, BEL, CR...) as `\\xNN`, other non-printable characters (bidi
    controls, zero-width and line separators, unassigned code points) as `\\uNNNN` or
    `\\UNNNNNNNN`. The result is only printable characters, so no text from a server can
    move the cursor, clear the screen, retitle the window or hide part of a line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _fail(message: str, code: int, key: ApiKey | None = None) -> int:
    line = " ".join(message.split())
    if key is not None:
        line = key.redact(line)
    print(f"{PROG}: {printable(line)}", file=sys.stderr)
    return code


class TerminalFormatter(logging.Formatter):
    """`-v` log lines: `captchaflow: message`, one line, the key redacted, printable."""

    def __init__(self, key: ApiKey) -> None:
        super().__init__(f"{PROG}: %(message)s")
        self._key = key

    def format(self, record: logging.LogRecord) -> str:
        """The record as one printable line without the key."""
        return printable(" ".join(self._key.redact(super().format(record)).split()))


def _warn_unresolved_host(key: ApiKey) -> MoveHook:
    """The move hook of `solve`: logs every move (for `-v`) and, the first time a request
    fails because the host cannot be resolved, says so on stderr at once, instead of
    retrying in silence until the deadline."""
    warned = False

    def hook(job: Job, move: Move) -> None:
        nonlocal warned
        log_move(job, move)
        failure = job.last_failure
        if warned or move.trigger != "defer" or failure is None:
            return
        if failure.message.startswith("cannot resolve host"):
            warned = True
            _fail(f"warning: {failure.message}; retrying until the deadline", 0, key)

    return hook


def _solve(args: argparse.Namespace) -> int:
    task = _read_task(args)
    key = _read_key(args.key_file, allow_shared=args.allow_shared_key_file)
    base_url = _checked_base_url(args.base_url)
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TerminalFormatter(key))
        logging.getLogger("captchaflow").addHandler(handler)
        logging.getLogger("captchaflow").setLevel(logging.DEBUG)
    try:
        solution = solve(
            task,
            key=key,
            base_url=base_url,
            timeout=args.timeout,
            on_move=_warn_unresolved_host(key),
        )
    except CaptchaflowError as exc:
        return _fail(exc.summary(), exc.exit_code, key)
    try:
        # Strict JSON (no NaN or Infinity), ASCII only: it prints on any terminal encoding,
        # so a paid-for solution is never lost to a UnicodeEncodeError.
        line = json.dumps(solution, separators=(",", ":"), allow_nan=False)
    except ValueError:
        error = MalformedReplyError(
            "the solution holds NaN or an infinite number, which JSON cannot carry; "
            "it was not printed",
            name="NON_FINITE_NUMBER",
        )
        return _fail(error.summary(), error.exit_code, key)
    print(line)
    return 0


def _read_scenario(path: str) -> Scenario:
    kind = pathlib.PurePath(path).suffix.lower()
    if kind not in (".json", ".toml"):  # not named: it may be a key typed in the wrong place
        raise UsageError("--scenario: only .json and .toml scenario files are supported")
    where = f"--scenario {path!r}"  # a .json or .toml file of test settings: named
    try:
        with open(path, "rb") as handle:
            raw = _read_capped(handle, MAX_SCENARIO_BYTES, where)
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {_os_reason(exc)}") from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text) if kind == ".toml" else json.loads(text)
    except UnicodeDecodeError:
        raise UsageError(f"{where} is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise UsageError(f"{where} is not valid {kind[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: a scenario must be an object/table")
    try:
        return Scenario.from_dict(data)
    except (ScenarioError, RecursionError) as exc:
        raise UsageError(f"{where}: {exc}") from None


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


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    print(f"{PROG}: warning: {printable(' '.join(str(message).split()))}", file=sys.stderr)


# Signals that stop the command. SIGTERM and SIGHUP do what SIGINT does; none of them is
# taken over when the command was started with it ignored (`nohup`, a background job).
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
_Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _like_sigint(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP: raise SIGINT, so they do exactly what it does at this moment:
    cancel the running job through the event loop's SIGINT handler (the job ends
    `cancelled`), stop `serve-sim`, or raise KeyboardInterrupt. If SIGINT is ignored,
    raise KeyboardInterrupt here."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def _take_stop_signals(previous: dict[int, _Handler]) -> None:
    """SIGINT raises KeyboardInterrupt, SIGTERM and SIGHUP do what SIGINT does, except for
    those that are ignored; record the handlers replaced in `previous`."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; an embedding program keeps its own
    for sig in _STOP_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is signal.SIG_IGN:
            continue
        previous[sig] = handler
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else _like_sigint)


def _ignore_stop_signals(taken: dict[int, _Handler]) -> None:
    """Ignore the stop signals we took: the command is already stopping."""
    for sig in taken:
        signal.signal(sig, signal.SIG_IGN)


def _restore_signals(previous: dict[int, _Handler]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (the console script exits with it).

    While it runs, SIGINT, SIGTERM and SIGHUP (those not ignored) interrupt it: the job is
    cancelled, one line says `interrupted`, and the status is 130. The previous signal
    handlers are back when it returns.
    """
    warnings.showwarning = _show_warning  # one line per warning, like every other message
    taken: dict[int, _Handler] = {}
    try:
        _take_stop_signals(taken)
        return _run(argv)
    except KeyboardInterrupt:
        _ignore_stop_signals(taken)  # a second Ctrl-C must not cut the one line short
        return _fail("interrupted", EXIT_INTERRUPTED)
    finally:
        _restore_signals(taken)


def _run(argv: Sequence[str] | None) -> int:
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
    except BrokenPipeError:  # stdout closed early (`| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: still one line, still no key
        return _fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
