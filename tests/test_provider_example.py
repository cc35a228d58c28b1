"""The provider's own example client solves a task against `captchaflow serve-sim`, run as a
real subprocess on 127.0.0.1 (the client is tests/provider_example_client.py, verbatim: held
to the provider's page, shipped as tests/fixtures/nocaptcha-error-handling.txt)."""

from __future__ import annotations

import contextlib
import importlib
import pathlib
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType

import pytest

ROOT = pathlib.Path(__file__).parents[1]
PAGE = ROOT / "tests" / "fixtures" / "nocaptcha-error-handling.txt"
"""The provider's Error Handling page, as text, shipped with the tests."""
REFERENCE = ROOT.parent / "shared" / "reference" / "nocaptcha-error-handling.txt"
"""The team's copy of the page, beside some checkouts (not in CI)."""
CLIENT_FILE = ROOT / "tests" / "provider_example_client.py"
KEY = "provider-example-key"
_EXE = shutil.which("captchaflow")
CLI = [_EXE] if _EXE else [sys.executable, "-m", "captchaflow.engine.cli"]

# One account allowing one request a second, and tasks solved in exactly 1.5 s (with the
# flags below): the example meets a 16 with `retryAfterSec`, then `processing`, then `ready`.
SCENARIO = """
[[accounts]]
key = "replaced-by-the-key-flag"
rate_limit = 1
rate_window = 1.0

[default_task]
solve_spread = 0.0
"""


def read_first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line `proc` prints on stdout, waiting at most `timeout` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"serve-sim printed nothing in {timeout} s")
    return proc.stdout.readline().strip()


def stop(proc: subprocess.Popen[str], how: signal.Signals) -> tuple[int, str]:
    """Send `how` to `proc`; return its exit status and stderr (killed if it lingers)."""
    proc.send_signal(how)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"serve-sim did not stop on {how.name}") from None
    return proc.returncode, err


@contextlib.contextmanager
def serve_sim(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run `captchaflow serve-sim ARGS`; yield the process and the base URL it printed. The
    process is killed on the way out if the test did not stop it."""
    proc = subprocess.Popen(
        [*CLI, "serve-sim", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = read_first_line(proc, timeout=20)
        assert url.startswith("http://127.0.0.1:"), (url, proc.stderr and proc.stderr.read())
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The provider's example module, imported fresh (its constants are patched per test)."""
    sys.modules.pop("provider_example_client", None)
    yield importlib.import_module("provider_example_client")
    sys.modules.pop("provider_example_client", None)


@pytest.mark.timeout(40)
def test_provider_example_solves_against_serve_sim(
    client: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """The provider's example solves a task against serve-sim, honouring its retryAfterSec
    and polling through `processing`; SIGTERM then stops the server with exit 0."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    flags = ["--scenario", str(scenario), "--key", KEY, "--solve-seconds", "1.5"]
    sleeps: list[float] = []
    real_sleep = time.sleep

    def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        real_sleep(seconds)

    with serve_sim(*flags) as (proc, url):
        monkeypatch.setattr(client, "BASE_URL", url)
        monkeypatch.setattr(client, "API_KEY", KEY)
        monkeypatch.setattr(client.time, "sleep", recording_sleep)
        solution = client.solve({"type": "ImageToTextTask", "body": "BASE64_IMAGE"})
        monkeypatch.undo()
        code, err = stop(proc, signal.SIGTERM)
    assert isinstance(solution, dict) and isinstance(solution["text"], str)
    assert sleeps == [1, 2]  # the 16's retryAfterSec, then one poll interval
    assert (code, err) == (0, "")


@pytest.mark.timeout(30)
def test_serve_sim_stops_cleanly_on_sigint() -> None:
    """SIGINT (Ctrl-C) stops serve-sim with exit 0 and nothing on stderr."""
    with serve_sim() as (proc, _url):
        assert stop(proc, signal.SIGINT) == (0, "")


@pytest.mark.timeout(30)
def test_serve_sim_usage_error_from_the_real_command() -> None:
    """The installed command rejects a bad option with exit 2 and one stderr line."""
    run = subprocess.run(
        [*CLI, "serve-sim", "--port", "-1"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert (run.returncode, run.stdout) == (2, "")
    assert len(run.stderr.splitlines()) == 1 and "--port" in run.stderr


def test_provider_example_is_verbatim() -> None:
    """tests/provider_example_client.py is the page's example, unchanged below its header."""
    code = CLIENT_FILE.read_text().split("# fmt: off\n\n", 1)[1]
    assert code.startswith("import time\n") and code.endswith("    print(solution)\n")
    assert code in PAGE.read_text()


def test_shipped_page_is_the_reference_copy() -> None:
    """The page shipped in tests/fixtures is the team's reference copy, where one is beside
    the checkout (so the fixture cannot drift from what the team reads)."""
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is not beside this checkout")
    assert PAGE.read_bytes() == REFERENCE.read_bytes()
