"""Where the API is, and which hosts are this machine: plain data and `ipaddress`, so that
code that only names or checks an address loads no HTTP library."""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = ["DEFAULT_BASE_URL", "is_loopback"]

DEFAULT_BASE_URL: Final = "https://api.nocaptchaai.com"
"""The provider's API."""


def is_loopback(host: str) -> bool:
    """True for `localhost` and addresses in 127.0.0.0/8 or ::1."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
