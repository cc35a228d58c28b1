"""`shared_engine`: an `Engine` wired to Redis for one worker of many: its gate kept in step
with the account's shared state, its journal and its work queue in Redis."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator

import anyio
import attrs
import redis.asyncio as redis_asyncio

from captchaflow.engine._engine import DEFAULT_TIMEOUT, Engine
from captchaflow.engine.journal import AmbiguousCreate
from captchaflow.policies import FleetGate
from captchaflow.transports import DEFAULT_BASE_URL, ApiKey, Transport

from ._account import SharedAccount, account_client
from ._gate import SharedGate
from ._journal import RedisJournal
from ._keys import DEFAULT_NAMESPACE, account_id
from ._queue import WorkQueue
from ._sync import AccountSync

__all__ = ["SharedRuntime", "default_worker_name", "shared_engine"]


def default_worker_name() -> str:
    """`host-pid`: unique among the workers running at one time."""
    return f"{socket.gethostname()}-{os.getpid()}"


@attrs.frozen
class SharedRuntime:
    """What `shared_engine` yields: the engine, and the Redis pieces behind it."""

    engine: Engine
    queue: WorkQueue
    journal: RedisJournal
    account: SharedAccount
    gate: SharedGate
    sync: AccountSync
    worker: str


@contextlib.asynccontextmanager
async def shared_engine(
    redis_url: str,
    key: str | ApiKey,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    run: str = "default",
    worker: str | None = None,
    base_url: str = DEFAULT_BASE_URL,
    transport: Transport | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    local_gate: FleetGate | None = None,
    sync_period: float = 0.025,
    idle_takeover: float = 30.0,
    ambiguous: AmbiguousCreate = AmbiguousCreate.RECREATE,
    share_account: bool = True,
) -> AsyncIterator[SharedRuntime]:
    """An engine for one worker of the account of `key`, sharing through the Redis at
    `redis_url`: its gate (a `SharedGate` around `local_gate`) synced every `sync_period`
    seconds, its journal and its work queue (`run` names the queue and the journal) under
    `namespace`. Runs on asyncio (redis-py's client). `share_account=False` leaves the
    account out of it: the engine's gate is `local_gate` alone, which learns the account on
    its own as if no other worker existed (the queue and journal are still shared)."""
    api_key = key if isinstance(key, ApiKey) else ApiKey(key)
    name = worker or default_worker_name()
    client = redis_asyncio.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    account_redis = account_client(redis_url)
    try:
        account = SharedAccount(
            account_redis, account_id(api_key), namespace=namespace, worker=name
        )
        gate = SharedGate(local=local_gate if local_gate is not None else FleetGate())
        journal = RedisJournal(client, namespace=namespace, run=run)
        queue = WorkQueue(client, namespace=namespace, run=run, idle_takeover=idle_takeover)
        await queue.ensure_group()
        engine = Engine(
            api_key,
            base_url=base_url,
            transport=transport,
            timeout=timeout,
            gate=gate if share_account else gate.local,
            journal=journal,
            ambiguous=ambiguous,
        )
        async with engine, anyio.create_task_group() as group:
            sync = AccountSync(gate, account, engine.clock, engine.wake, period=sync_period)
            if share_account:
                group.start_soon(sync.run)
            yield SharedRuntime(engine, queue, journal, account, gate, sync, name)
            group.cancel_scope.cancel()
    finally:
        await client.aclose()
        await account_redis.aclose()
