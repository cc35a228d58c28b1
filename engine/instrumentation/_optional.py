"""Optional dependencies: a hook that needs one says which extra to install."""

from __future__ import annotations

import importlib.util

__all__ = ["require"]


def require(module: str, hook: str, extra: str) -> None:
    """Raise `ImportError` naming `hook` and the `extra` that brings `module` unless
    `module` can be imported."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        found = False
    if not found:
        raise ImportError(f"{hook} needs {module}: pip install 'captchaflow[{extra}]'")
