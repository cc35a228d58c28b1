"""Shared fixtures and hypothesis profiles.

Profiles: `ci` (the default; fixed seed-free derandomised runs, bounded examples) and `dev`
(many more examples, for long local runs: `HYPOTHESIS_PROFILE=dev pytest`).
"""

from __future__ import annotations

import logging
import os
import signal

import pytest
import transport_kinds
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The suite captures (and scans) log records at DEBUG; `transitions` logs every move at
# DEBUG, which costs a millisecond a move and says nothing our own records do not.
logging.getLogger("transitions").setLevel(logging.WARNING)

pytest_plugins = ["secret_scan", "pytester", "redis_server"]

# A shell without job control starts a background command with SIGINT ignored, and every
# process a test starts would inherit that: the Ctrl-C tests would find the signal never
# delivered. A handler set here becomes the default disposition in those processes.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SECRET_KEY = "sk-test-7f3c9a1e-DO-NOT-LEAK"
"""The API key most tests use; `secret_scan` fails any test whose output shows it."""


@pytest.hookimpl(tryfirst=True)  # before anyio_backend's own params are applied
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes `transport_type` runs against every HTTP transport (see
    `transport_kinds`)."""
    transport_kinds.parametrize(metafunc)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every `@pytest.mark.anyio` test under both asyncio and trio."""
    return str(request.param)


@pytest.fixture
def secret_key() -> str:
    """The test API key."""
    return SECRET_KEY
