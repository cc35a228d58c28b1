"""`python benchmarks/http.py`: what a request costs the client (see `http_cost.py`, which
it runs; the last line is `http: cpu_per_request_vs_httpx_bare=X fastest_vs_aiohttp_bare=Y`).

This file is only an entry point under the name the benchmark is known by. Run as a script,
every file of this folder has the folder first on `sys.path`, where a module named `http`
stands in for the standard library's (which httpx, aiohttp and requests import). So when it
is imported as `http` it puts the standard library's package in its place and does nothing
else; run as a script it runs `http_cost.py`.
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "http":
    _saved = sys.path[:]
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != _HERE]
    try:
        del sys.modules["http"]
        sys.modules["http"] = importlib.import_module("http")
    finally:
        sys.path[:] = _saved
elif __name__ == "__main__":
    runpy.run_path(os.path.join(_HERE, "http_cost.py"), run_name="__main__")
