"""Import time: what `captchaflow` costs before it does anything, against `import httpx`,
measured in the same run.

Each case is a fresh interpreter (`python -c ...`), timed from start to exit, best of
`--runs` (default 15), alternating the cases; `python -c pass` is measured too and taken
off every case, so the figures are the imports' own cost:

- `import httpx`: the baseline (the HTTP client every `solve` needs anyway);
- `import captchaflow.engine`: the sans-IO core (no I/O library: see `tests/test_layout.py`);
- `captchaflow --help`: the command's parser, every command registered;
- `captchaflow solve`'s imports: the parser and the HTTP engine (`captchaflow.engine._engine`).

Last line: `imports: engine_vs_httpx=A help_vs_httpx=B solve_vs_httpx=C`.

    python benchmarks/imports.py [--runs N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

CASES = {
    "python": "pass",
    "httpx": "import httpx",
    "engine": "import captchaflow.engine",
    "help": "from captchaflow.engine.cli._commands import build_parser; build_parser()",
    "solve": (
        "from captchaflow.engine.cli._commands import build_parser; build_parser(); "
        "import captchaflow.engine._engine"
    ),
}


def timed(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    best = {name: float("inf") for name in CASES}
    for _run in range(args.runs):
        for name, code in CASES.items():
            best[name] = min(best[name], timed(code))
    base = best.pop("python")
    cost = {name: max(0.0, seconds - base) for name, seconds in best.items()}
    print(
        f"best of {args.runs} fresh interpreters, python -c pass ({base * 1000:.0f} ms) taken off"
    )
    for name, seconds in cost.items():
        print(f"{name:<8} {seconds * 1000:7.1f} ms  {seconds / cost['httpx']:5.2f}x httpx")
    print(
        f"imports: engine_vs_httpx={cost['engine'] / cost['httpx']:.2f} "
        f"help_vs_httpx={cost['help'] / cost['httpx']:.2f} "
        f"solve_vs_httpx={cost['solve'] / cost['httpx']:.2f}"
    )


if __name__ == "__main__":
    main()
