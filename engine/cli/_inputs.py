"""Reading the command's inputs: the API key, the task, scenario files. Every read is
capped, and errors about files name the option, never the path given (it may be a key)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import pathlib
import stat
import sys
import tomllib
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING

from captchaflow.engine._job import validate_task
from captchaflow.transports import ApiKey, JsonValue

from ._args import UsageError

KEY_ENV = "NOCAPTCHA_API_KEY"

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


if TYPE_CHECKING:
    from captchaflow.transports.sim import Scenario


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


def _read_scenario(path: str) -> Scenario:
    from captchaflow.transports.sim import Scenario, ScenarioError  # the simulator: only here

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
