"""A pytest plugin that fails any test whose captured output reveals a test API key.

Loaded by conftest for the whole suite: for every test phase it scans captured stdout,
stderr and log records (the suite captures logs at DEBUG, so every state-change record is
scanned), and turns the test into a failure if any of `SECRETS` appears. Tests that run
subprocesses (the CLI, the benchmarks) check those outputs themselves.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

SECRETS = (
    "sk-test-7f3c9a1e-DO-NOT-LEAK",
    "sk-transport-SECRET",
    "sk-job-test-SECRET",
    "sk-property-KEY",
    "sk-sim-3b9f0c2d-NEVER-IN-ANY-REPR",
)
"""Every distinctive key the suite uses; none may ever be printed or logged."""


def leaked_in(*texts: str) -> list[str]:
    """The secrets that occur in any of `texts`."""
    return [secret for secret in SECRETS if any(secret in text for text in texts)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Fail the phase whose captured output or report contains a secret."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    # Only this phase's sections: later phases' reports repeat the earlier ones. (A failed
    # test's own report is not scanned: pytest prints the test's arguments there, keys
    # included, and hiding the real failure would help nobody.)
    texts = [content for title, content in report.sections if title.endswith(report.when)]
    leaked = leaked_in(*texts)
    if leaked:
        report.outcome = "failed"
        masked = ", ".join(f"{s[:5]}…" for s in leaked)
        report.longrepr = f"test API key(s) {masked} appeared in captured output ({report.when})"
