"""The HTTP transports that the transport tests hold to the same promises, and the event
loops each runs on. A test that takes a `transport_type` argument runs once per transport
(and, if async, once per event loop that transport runs on): `conftest.py` parametrizes it
with `parametrize` below."""

from __future__ import annotations

from typing import TypeAlias

import pytest

from captchaflow.transports import AiohttpTransport, HttpxTransport

TransportType: TypeAlias = type[HttpxTransport] | type[AiohttpTransport]
TRANSPORTS: dict[str, TransportType] = {"httpx": HttpxTransport, "aiohttp": AiohttpTransport}
BACKENDS: dict[str, tuple[str, ...]] = {"httpx": ("asyncio", "trio"), "aiohttp": ("asyncio",)}
"""The event loops each transport runs on (aiohttp is asyncio's)."""


def pairs() -> list[tuple[str, str]]:
    """Every (transport, event loop) a transport test runs with."""
    return [(name, loop) for name in TRANSPORTS for loop in BACKENDS[name]]


def parametrize(metafunc: pytest.Metafunc) -> None:
    """Give a test that takes `transport_type` every transport, and an async one (an anyio
    test) every event loop its transport runs on, in place of `anyio_backend`'s own."""
    if "transport_type" not in metafunc.fixturenames:
        return
    if "anyio_backend" in metafunc.fixturenames:
        metafunc.parametrize(
            ("transport_type", "anyio_backend"),
            [(TRANSPORTS[name], loop) for name, loop in pairs()],
            ids=[f"{name}-{loop}" for name, loop in pairs()],
        )
    else:
        metafunc.parametrize("transport_type", list(TRANSPORTS.values()), ids=list(TRANSPORTS))
