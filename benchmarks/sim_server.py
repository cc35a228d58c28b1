"""`captchaflow serve-sim` in a subprocess, for the benchmarks that measure a client over
real HTTP on loopback (`http_cost.py`, `in_doubt.py`)."""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def serve_sim(scenario: dict[str, Any]) -> Iterator[str]:
    """`captchaflow serve-sim` serving `scenario` (a scenario file's JSON) in a subprocess;
    yields its URL, and stops it after."""
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "scenario.json"
        path.write_text(json.dumps(scenario))
        server = subprocess.Popen(
            [sys.executable, "-m", "captchaflow", "serve-sim", "--scenario", str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            if not url.startswith("http://"):
                raise SystemExit(f"serve-sim did not start (exit {server.wait()})")
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)
