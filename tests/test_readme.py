"""Every Python example in README.md compiles, and every one not marked no-run runs."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
BLOCK = re.compile(r"(<!-- (?:no-run|simulator) -->\n)?```python\n(.*?)```", re.DOTALL)
BLOCKS = [(bool(m.group(1)), m.group(2)) for m in BLOCK.finditer(README)]
SIMULATED = re.compile(r"<!-- simulator -->\n```python\n(.*?)```", re.DOTALL)
SIMULATED_BLOCKS = [m.group(1) for m in SIMULATED.finditer(README)]
"""Examples written against the real API (`api_key`, `image_b64`, `tasks`, the default base
URL), run against the simulated service instead."""


def test_readme_has_examples_and_quick_start() -> None:
    """The README has runnable examples and both marked quick-start commands."""
    assert sum(not skip for skip, _ in BLOCKS) >= 3
    assert "<!-- quickstart:main -->" in README
    assert "<!-- quickstart:test -->" in README


@pytest.mark.parametrize(("skip", "code"), BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example(skip: bool, code: str) -> None:
    """The example compiles; unless marked no-run, it runs without error."""
    compiled = compile(code, "README.md", "exec")
    if not skip:
        exec(compiled, {"__name__": "readme_example"})


REFERENCE_PACKAGES = (
    "captchaflow.engine",
    "captchaflow.engine.instrumentation",
    "captchaflow.engine.journal",
    "captchaflow.engine.distributed",
    "captchaflow.policies",
    "captchaflow.transports",
    "captchaflow.transports.sim",
    "captchaflow.engine.cli",
)


def _reference_names(package: str) -> set[str]:
    """The names the README's "Public API reference" lists under `package` (every
    backquoted identifier in the first column of its table)."""
    section = README.split("## Public API reference\n", 1)[1].split("\n## ", 1)[0]
    table = section.split(f"**`{package}`**", 1)[1].split("\n\n**", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`(\w+)`", row.split(" | ")[0])}


@pytest.mark.parametrize("package", REFERENCE_PACKAGES)
def test_every_exported_name_is_in_the_api_reference(package: str) -> None:
    """The README's reference lists exactly the package's `__all__` (error subclasses may
    be listed in the description column of the `CaptchaflowError` row)."""
    import importlib

    exported = set(importlib.import_module(package).__all__)
    listed = _reference_names(package)
    if package == "captchaflow.engine":
        errors_row = next(
            line for line in README.splitlines() if line.startswith("| `CaptchaflowError` and")
        )
        listed |= set(re.findall(r"`(\w+)`", errors_row))
    assert listed == exported, (sorted(exported - listed), sorted(listed - exported))


def test_driver_example_is_caught_without_the_gate_wake_ups() -> None:
    """Mutant check for the "Writing your own driver" example: the same loop without
    running the jobs the gate wakes leaves them asleep, and its own assertion fails."""
    section = README.split("## Writing your own driver\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    wake = "    for other in [*woken, *job.woken()]:"
    assert wake in code
    lines = code.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith(wake))
    mutant = "".join(lines[:at] + lines[at + 2 :])
    with pytest.raises(AssertionError):
        exec(compile(mutant, "README.md", "exec"), {"__name__": "readme_mutant"})


SIM_KEY = "sk-readme-example-key"


@pytest.mark.parametrize(
    "code", SIMULATED_BLOCKS, ids=[f"sim{i}" for i in range(len(SIMULATED_BLOCKS))]
)
def test_readme_example_against_the_simulator(
    code: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Each example written for the real API runs unchanged against the simulated service
    over HTTP: the engine's default base URL is pointed at it for the test, and the names the
    examples use are given (a real key's account, an image, a few tasks); files it writes go
    to a directory of its own."""
    monkeypatch.chdir(tmp_path)
    from captchaflow.engine._engine import Engine
    from captchaflow.transports.sim import (
        AccountSpec,
        Scenario,
        SimulatedAPI,
        TaskTypeSpec,
        simulator_in_thread,
    )

    quick = TaskTypeSpec(solve_seconds=0.2, solve_spread=0, min_solve_seconds=0)
    api = SimulatedAPI(Scenario(accounts=(AccountSpec(key=SIM_KEY),), default_task=quick))
    task = {"type": "ImageToTextTask", "body": "aGVsbG8="}
    names = {
        "__name__": "readme_example",
        "api_key": SIM_KEY,
        "image_b64": "aGVsbG8=",
        "other_task": dict(task),
        "tasks": [dict(task) for _ in range(3)],
    }
    with simulator_in_thread(api) as server:
        defaults = Engine.__init__.__kwdefaults__
        assert defaults is not None
        monkeypatch.setitem(defaults, "base_url", server.base_url)
        exec(compile(code, "README.md", "exec"), names)
        if "solve_all" in names:  # an example that only defines its coroutine
            import anyio

            anyio.run(names["solve_all"], names["tasks"])
    assert api.stats.tasks_created >= 1 and api.stats.solutions_delivered >= 1


SHELL_SIMULATED = re.compile(r"<!-- shell-simulator -->\n```bash\n(.*?)```", re.DOTALL)


def test_readme_shell_example_against_the_simulator(tmp_path: pathlib.Path) -> None:
    """The quick start's shell lines run as written (the key's `...` filled in, an image
    file at hand) against the simulated service, pointed at through $NOCAPTCHA_BASE_URL:
    each command prints one solution line and the whole block exits 0."""
    import os
    import subprocess
    import sys

    from captchaflow.transports.sim import (
        AccountSpec,
        Scenario,
        SimulatedAPI,
        TaskTypeSpec,
        simulator_in_thread,
    )

    (block,) = SHELL_SIMULATED.findall(README)
    script = block.replace("NOCAPTCHA_API_KEY=...", f"NOCAPTCHA_API_KEY={SIM_KEY}")
    (tmp_path / "captcha.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    quick = TaskTypeSpec(solve_seconds=0.2, solve_spread=0, min_solve_seconds=0)
    api = SimulatedAPI(Scenario(accounts=(AccountSpec(key=SIM_KEY),), default_task=quick))
    bin_dir = str(pathlib.Path(sys.executable).parent)  # where the console script is
    with simulator_in_thread(api) as server:
        env = {
            **os.environ,
            "NOCAPTCHA_BASE_URL": server.base_url,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(json.loads(line)["text"] for line in lines)
    assert api.stats.tasks_created == 2


SESSION = re.compile(r"<!-- session -->\n```bash\n(.*?)```", re.DOTALL)


def _session_steps(block: str) -> list[tuple[str, list[str]]]:
    """The session's commands (continuation lines joined) and the output lines each shows."""
    steps: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        command = lines[i].removeprefix("$ ")
        while command.endswith("\\"):
            i += 1
            command = command[:-1] + lines[i].strip()
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        steps.append((command, output))
    return steps


def test_readme_serve_sim_session_replays() -> None:
    """The `serve-sim` session in the README, replayed against a real `serve-sim` process:
    it prints a URL first, and each later command prints what the README shows (the URL
    being the one this server got)."""
    import os
    import shutil
    import subprocess
    import sys

    (block,) = SESSION.findall(README)
    steps = _session_steps(block)
    start, *middle, stop = steps
    assert start[0].endswith("&") and stop[0] == "kill %1"
    shown_url = start[1][0]
    bin_dir = str(pathlib.Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("NOCAPTCHA_BASE_URL", None)
    server = subprocess.Popen(
        ["bash", "-c", start[0].removesuffix("&").strip()],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        for command, shown in middle:
            if command.startswith("curl") and shutil.which("curl") is None:
                continue
            done = subprocess.run(
                ["bash", "-c", command.replace(shown_url, url)],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert (done.stdout + done.stderr).splitlines() == shown, command
    finally:
        server.terminate()
        server.communicate(timeout=10)  # reaps it and closes its stdout
