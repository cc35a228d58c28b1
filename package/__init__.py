"""captchaflow: drives captcha tasks through the NoCaptcha task API as explicit state machines.

The library is in three subpackages, imported by name: `captchaflow.engine` (the state
machine, jobs, drivers, `Engine`, the command line), `captchaflow.transports` (the wire and
the httpx transport; the simulated API is `captchaflow.transports.sim`) and
`captchaflow.policies` (retry policies, poll schedules, account gates). Importing
`captchaflow` itself loads none of them and reads no metadata, so it costs nothing: the
command's entry point (`__main__`) relies on that to set
its signal handlers before the slow imports.
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    """`captchaflow.__version__`: the installed distribution's version (PEP 440), read from
    its metadata on first use."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("captchaflow")
    except PackageNotFoundError:  # running from files that were never installed
        found = "0+unknown"
    globals()["__version__"] = found
    return found
