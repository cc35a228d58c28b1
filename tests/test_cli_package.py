"""The top-level package: `captchaflow.__version__`, `captchaflow --version` and
`python -m captchaflow`, and an `import captchaflow` that costs nothing."""

from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess
import sys

import pytest
from test_cli import CLI

import captchaflow

ROOT = pathlib.Path(__file__).parents[1]
VERSION = importlib.metadata.version("captchaflow")


def test_version_attribute_is_the_distribution_version() -> None:
    """`captchaflow.__version__` is the installed distribution's version."""
    assert captchaflow.__version__ == VERSION
    assert captchaflow.__all__ == ["__version__"]


@pytest.mark.parametrize(
    "command", [CLI, [sys.executable, "-m", "captchaflow"]], ids=["script", "python-m"]
)
def test_version_option(command: list[str]) -> None:
    """`captchaflow --version` and `python -m captchaflow --version` print `captchaflow
    VERSION` on stdout and exit 0, even run from the repository's root."""
    proc = subprocess.run(
        [*command, "--version"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"captchaflow {VERSION}\n", "")


def test_python_m_captchaflow_runs_the_command() -> None:
    """`python -m captchaflow` is the command: `fsm` prints the machine, a usage error
    exits 2 with one line."""
    fsm = subprocess.run(
        [sys.executable, "-m", "captchaflow", "fsm"], capture_output=True, text=True, timeout=60
    )
    assert fsm.returncode == 0, fsm.stderr
    assert fsm.stdout.startswith("digraph")
    bad = subprocess.run(
        [sys.executable, "-m", "captchaflow", "nonsense"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "invalid choice" in bad.stderr


def test_importing_captchaflow_loads_nothing_else() -> None:
    """`import captchaflow` (and the entry point's module) loads no subpackage, no
    dependency and no metadata: the entry point sets its signal handlers before anything
    slow happens."""
    code = (
        "import sys; before = set(sys.modules); import captchaflow, captchaflow.__main__; "
        "print(*sorted(set(sys.modules) - before))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    new = set(proc.stdout.split())
    ours = {name for name in new if name.split(".")[0] == "captchaflow"}
    assert ours == {"captchaflow", "captchaflow.__main__"}
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in new - ours), new
    assert "importlib.metadata" not in new


def test_console_script_points_at_the_light_entry_point() -> None:
    """The installed `captchaflow` script starts in `captchaflow.__main__`, not in the
    command's module (whose imports would run before any handler is set)."""
    (script,) = [
        entry
        for entry in importlib.metadata.entry_points(group="console_scripts")
        if entry.name == "captchaflow"
    ]
    assert script.value == "captchaflow.__main__:main"
