"""Checking `--base-url` (or `$NOCAPTCHA_BASE_URL`) before anything is sent, without ever
repeating the URL given."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

from ._args import UsageError

_HOST_NAME = re.compile(r"[\w.-]+")  # letters (IDN too), digits, '-', '.', '_'


def _checked_base_url(text: str, source: str = "--base-url") -> str:
    """`text` normalised, if it is an http(s) URL with a host, no user name or password, a
    port in 1..65535 if it has one, no query or fragment and no whitespace or control
    character; else `UsageError` saying what is wrong, naming `source` (the option, or the
    environment variable it came from) without repeating the URL (it may hold a password,
    or be a key pasted in the wrong place)."""
    shape = "it must look like https://host[:port][/path]"
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise UsageError(f"{source} must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        raise UsageError(f"{source} is not a valid URL: {shape}") from None
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"{source} must start with https:// or http://: {shape}")
    if "@" in parts.netloc:
        raise UsageError(
            f"{source} must not hold a user name or password (the API key authenticates "
            "every request; credentials in the URL would be sent to the server as well)"
        )
    netloc = re.fullmatch(r"(\[[^\[\]]*\]|[^:\[\]]*)(?::([^:]*))?", parts.netloc)
    if not parts.netloc or (netloc is not None and not netloc.group(1)):
        raise UsageError(f"{source} has no host: {shape}")
    if netloc is None or not _valid_host(netloc.group(1)):
        raise UsageError(f"{source} has an invalid host: {shape}")
    port = netloc.group(2)
    if port is not None and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65_535):
        raise UsageError(f"{source} has an invalid port: it must be a number in 1..65535")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise UsageError(f"{source} must not have a query or a fragment: {shape}")
    try:
        from captchaflow.transports import check_base_url  # httpx parses it: only here

        return check_base_url(text)
    except ValueError:
        raise UsageError(f"{source} is not a valid URL: {shape}") from None


def _valid_host(host: str) -> bool:
    if host.startswith("["):  # an IPv6 literal, maybe with a zone (%25eth0)
        try:
            return ipaddress.ip_address(urllib.parse.unquote(host[1:-1])).version == 6
        except ValueError:
            return False
    return _HOST_NAME.fullmatch(host) is not None
