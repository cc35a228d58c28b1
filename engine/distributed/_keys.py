"""Redis key names: every key of captchaflow's starts with a namespace, and an account is
named by a digest of its key, never by the key."""

from __future__ import annotations

import hashlib

from captchaflow.transports import ApiKey

DEFAULT_NAMESPACE = "captchaflow"


def account_id(key: ApiKey) -> str:
    """A stable name for the account of `key` that does not reveal it (16 hex digits of the
    SHA-256 of the key)."""
    return hashlib.sha256(key.reveal().encode()).hexdigest()[:16]


def redis_key(namespace: str, *parts: str) -> str:
    """`namespace:part:part...`: the name of one Redis key."""
    if not namespace or ":" in namespace:
        raise ValueError(f"a namespace is a non-empty name without ':', got {namespace!r}")
    return ":".join((namespace, *parts))
