"""Scale-out on Redis: many workers, on one or many machines, share one account's limits,
one work queue and one job journal (the `redis` extra: `pip install 'captchaflow[redis]'`;
redis-py's asyncio client, so these pieces run on asyncio).

- `SharedAccount`: the account's shared state (pause, circuit, learned slot limit and rate,
  slots in use, retry budget) in Redis, changed only by atomic Lua scripts;
- `SharedGate`: one worker's account gate, a local `FleetGate` bound by a local view of that
  state, which `AccountSync` keeps in step in the background (decisions stay sans-IO);
- `RedisJournal`: the job journal in Redis (one hash per job);
- `WorkQueue`: the work, through a Redis Stream and a consumer group (`XREADGROUP`, `XACK`,
  a dead worker's items taken over with `XAUTOCLAIM`), and the results stream;
- `Worker` and `shared_engine`: a worker process's loop, and the engine wired to all of it.
"""

from ._account import AccountStateUnavailable, SharedAccount, SharedState, account_client
from ._gate import SharedEvent, SharedGate, SharedView
from ._journal import JournalUnavailableError, RedisJournal
from ._keys import DEFAULT_NAMESPACE, account_id, redis_key
from ._queue import QueueError, QueueUnavailableError, RedisUnavailableError, WorkItem, WorkQueue
from ._runtime import SharedRuntime, default_worker_name, shared_engine
from ._sync import AccountSync
from ._worker import Worker, default_record

__all__ = [
    "DEFAULT_NAMESPACE",
    "AccountStateUnavailable",
    "AccountSync",
    "JournalUnavailableError",
    "QueueError",
    "QueueUnavailableError",
    "RedisJournal",
    "RedisUnavailableError",
    "SharedAccount",
    "SharedEvent",
    "SharedGate",
    "SharedRuntime",
    "SharedState",
    "SharedView",
    "WorkItem",
    "WorkQueue",
    "Worker",
    "account_client",
    "account_id",
    "default_record",
    "default_worker_name",
    "redis_key",
    "shared_engine",
]
