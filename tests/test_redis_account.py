"""`SharedAccount` against a real Redis: each script's rule, atomicity under concurrent
workers (and a deliberately non-atomic version that the same test catches), and Redis
going away and coming back."""

from __future__ import annotations

import asyncio
import math
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer

from captchaflow.engine._clock import VirtualClock
from captchaflow.engine.distributed._account import (
    AccountStateUnavailable,
    SharedAccount,
    SharedState,
    account_client,
)
from captchaflow.engine.distributed._gate import SharedGate
from captchaflow.engine.distributed._keys import account_id
from captchaflow.engine.distributed._sync import AccountSync
from captchaflow.policies import Admit, Bucket, Failure
from captchaflow.transports import ApiKey, Endpoint, ErrorCode

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """redis.asyncio runs on asyncio only."""
    return "asyncio"


ACCOUNT = "0123456789abcdef"


@asynccontextmanager
async def fleet(
    url: str,
    namespace: str,
    n: int = 1,
    kind: type[SharedAccount] = SharedAccount,
    **options: Any,
) -> AsyncIterator[list[SharedAccount]]:
    """`n` workers (`w0`...) of one account, each on its own connection (`kind`: the
    class of their `SharedAccount`, a deliberately broken one in the mutant checks)."""
    async with AsyncExitStack() as stack:
        accounts = []
        for i in range(n):
            client = await stack.enter_async_context(account_client(url))
            accounts.append(kind(client, ACCOUNT, namespace=namespace, worker=f"w{i}", **options))
        yield accounts


async def leases(account: SharedAccount) -> dict[str, int]:
    raw = await account.client.hgetall(account.keys[1])
    return {text(k): int(v) for k, v in raw.items()}


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def field(account: SharedAccount, name: str) -> float | None:
    value = await account.client.hget(account.keys[0], name)
    return None if value is None else float(value)


async def snapshot(account: SharedAccount) -> tuple[int, float | None, int, float]:
    """(in_use, slot_limit, sum of leases, paused_until), read in one MULTI/EXEC."""
    state, leases_key = account.keys[0], account.keys[1]
    async with account.client.pipeline(transaction=True) as pipe:
        pipe.hmget(state, ["in_use", "slot_limit", "paused_until"])
        pipe.hvals(leases_key)
        (in_use, limit, paused), values = await pipe.execute()
    return (
        int(in_use or 0),
        None if limit is None else float(limit),
        sum(int(v) for v in values),
        float(paused or 0),
    )


async def set_slot_limit(account: SharedAccount, limit: int) -> None:
    """Teach the account a limit of `limit` slots the way the service would (the slow start
    grown past it by accepted tasks first)."""
    await account.slot_accepted(limit)
    assert await account.acquire_slots(limit) == limit
    state = await account.slot_refused(sent_at=(await account.state()).server_time)
    assert state.slot_limit == limit
    assert await account.release_slots(limit) == limit


# -- each rule --------------------------------------------------------------------------------


async def test_a_fresh_account_is_unbounded_and_unpaused(
    redis_url: str, redis_namespace: str
) -> None:
    async with fleet(redis_url, redis_namespace) as [account]:
        state = await account.state()
    assert state == SharedState(
        server_time=state.server_time,
        paused_until=0.0,
        pause_reason="",
        circuit_open_until=0.0,
        circuit_reason="",
        slot_limit=None,
        slots_in_use=0,
        rate=None,
        workers=0,
        leased=0,
    )
    assert abs(state.server_time - time.time()) < 5  # Redis time, as a float
    assert not state.paused and not state.circuit_open


async def test_times_survive_the_trip_through_lua(redis_url: str, redis_namespace: str) -> None:
    async with fleet(redis_url, redis_namespace) as [account]:
        state = await account.pause(0.123456, "RATE_LIMITED")
    assert state.paused_until - state.server_time == pytest.approx(0.123456, abs=1e-6)
    assert state.server_time != int(state.server_time)  # not truncated to whole seconds


async def test_a_pause_only_ever_moves_later(redis_url: str, redis_namespace: str) -> None:
    async with fleet(redis_url, redis_namespace, 2) as [a, b]:
        first = await a.pause(5, "RATE_LIMITED")
        assert first.paused and first.pause_reason == "RATE_LIMITED"
        assert first.paused_until == pytest.approx(first.server_time + 5, abs=1e-6)
        shorter = await b.pause(1, "SERVICE_UNAVAILABLE")
        assert (shorter.paused_until, shorter.pause_reason) == (first.paused_until, "RATE_LIMITED")
        longer = await b.pause(10, "SERVICE_UNAVAILABLE")
        assert longer.paused_until > first.paused_until
        assert longer.pause_reason == "SERVICE_UNAVAILABLE"
        seen = await a.state()  # the other worker sees it at its next call
        assert (seen.paused_until, seen.pause_reason) == (longer.paused_until, longer.pause_reason)
        with pytest.raises(ValueError, match="non-negative"):
            await a.pause(-1, "x")


async def test_the_circuit_opens_extends_and_closes(redis_url: str, redis_namespace: str) -> None:
    async with fleet(redis_url, redis_namespace, 2) as [a, b]:
        opened = await a.open_circuit(60, "ZERO_BALANCE")
        assert opened.circuit_open and opened.circuit_reason == "ZERO_BALANCE"
        shorter = await b.open_circuit(1, "KEY_DOES_NOT_EXIST")
        assert (shorter.circuit_open_until, shorter.circuit_reason) == (
            opened.circuit_open_until,
            "ZERO_BALANCE",
        )
        assert (await b.state()).circuit_open
        closed = await b.close_circuit()
        assert not closed.circuit_open
        assert (closed.circuit_open_until, closed.circuit_reason) == (0.0, "")
        forever = await a.open_circuit(math.inf, "ZERO_BALANCE")
        assert forever.circuit_open_until == math.inf
        # A success sent before the failure that opened the circuit does not close it ...
        early = await b.close_circuit(sent_at=forever.server_time - 1)
        assert early.circuit_open
        # ... one sent after it does; and an older failure does not reopen it.
        late = await b.close_circuit(sent_at=forever.server_time + 0.001)
        assert not late.circuit_open
        stale = await a.open_circuit(60, "ZERO_BALANCE", sent_at=forever.server_time)
        assert not stale.circuit_open
        fresh = await a.open_circuit(60, "ZERO_BALANCE", sent_at=late.server_time + 1)
        assert fresh.circuit_open


async def test_slots_are_unbounded_until_the_service_refuses(
    redis_url: str, redis_namespace: str
) -> None:
    # slot_increase 5 on a limit of 10: 0.5 a task (the increase is per round of `limit`).
    async with fleet(redis_url, redis_namespace, 2, cooldown=0.2, slot_increase=5.0) as [a, b]:
        assert await a.acquire_slots(7) == 7
        assert await b.acquire_slots(3) == 3
        state = await b.slot_refused(sent_at=(await b.state()).server_time)
        assert (state.slot_limit, state.slots_in_use, state.leased) == (10, 10, 3)
        assert state.workers == 2
        assert await a.acquire_slots(1) == 0  # full
        assert (await a.slot_accepted()).slot_limit == 10.5
        assert await a.acquire_slots(1) == 0  # floor(10.5) == 10
        assert (await b.slot_accepted()).slot_limit == pytest.approx(10.5 + 5 / 10.5)
        assert await a.acquire_slots(5) == 0  # floor(10.98) == 10: never beyond the limit
        assert (await b.slot_accepted()).slot_limit >= 11
        assert await a.acquire_slots(5) == 1
        assert await b.release_slots(2) == 2
        assert await a.acquire_slots(5) == 2
        state = await a.state()
        assert (state.slots_in_use, state.leased) == (11, 10)
        assert await leases(a) == {"w0": 10, "w1": 1}


async def test_the_slot_limit_decreases_once_per_round(
    redis_url: str, redis_namespace: str
) -> None:
    async with fleet(
        redis_url, redis_namespace, cooldown=0.4, slot_increase=0.5, slot_decrease=0.9
    ) as [account]:
        first = await account.slot_refused(sent_at=0.0)  # in use: none; the limit is 1 at least
        assert first.slot_limit == 1
        learned_at = await field(account, "slot_decreased_at")
        assert learned_at == pytest.approx(first.server_time)
        await account.slot_accepted(39)  # 1 + 39 * 0.5 / 1 == 20.5 (one batch, at limit 1)
        assert await account.acquire_slots(30) == 20
        # Sent before the limit was learned: says nothing about it since.
        same = await account.slot_refused(sent_at=first.server_time - 0.01)
        assert same.slot_limit == 20.5
        # Sent after, but within the cool-down: no decrease (but never above the slots in use).
        cool = await account.slot_refused(sent_at=same.server_time)
        assert cool.slot_limit == 20
        await anyio.sleep(0.45)
        cut = await account.slot_refused(sent_at=cool.server_time)
        assert cut.slot_limit == pytest.approx(18)
        assert cut.slots_in_use == 20  # the leases stay; no slot is granted until below 18
        assert await account.acquire_slots(1) == 0
        # A request sent before that decrease is the same round: no second cut.
        await anyio.sleep(0.45)
        again = await account.slot_refused(sent_at=cool.server_time)
        assert again.slot_limit == pytest.approx(18)
        await account.release_slots(17)  # 3 in use
        low = await account.slot_refused(sent_at=(await account.state()).server_time)
        assert low.slot_limit == 3  # never above the slots in use
        assert await account.acquire_slots(1) == 0


async def test_release_gives_back_at_most_what_the_worker_holds(
    redis_url: str, redis_namespace: str
) -> None:
    async with fleet(redis_url, redis_namespace, 2) as [a, b]:
        assert await a.acquire_slots(4) == 4
        assert await b.acquire_slots(2) == 2
        assert await a.release_slots(10) == 4
        assert await a.release_slots(1) == 0
        state = await b.state()
        assert (state.slots_in_use, state.leased) == (2, 2)
        assert await leases(a) == {"w1": 2}


async def test_a_dead_workers_slots_come_back(redis_url: str, redis_namespace: str) -> None:
    async with fleet(redis_url, redis_namespace, 2, lease_ttl=0.3) as [a, b]:
        assert await a.acquire_slots(5) == 5
        state = await b.heartbeat()
        assert (state.workers, state.slots_in_use) == (2, 5)
        for _ in range(3):  # b stays alive, a goes silent
            await anyio.sleep(0.15)
            state = await b.heartbeat()
        assert (state.workers, state.slots_in_use) == (1, 0)
        assert await leases(b) == {}
        back = await a.heartbeat()
        assert (back.leased, back.workers) == (0, 2)  # a learns its lease is gone
        assert await a.release_slots(5) == 0  # and cannot give back what was reclaimed
        assert (await b.state()).slots_in_use == 0


async def test_heartbeat_lowers_a_lease_to_what_the_worker_holds(
    redis_url: str, redis_namespace: str
) -> None:
    async with fleet(redis_url, redis_namespace) as [account]:
        assert await account.acquire_slots(5) == 5
        state = await account.heartbeat(held=3)  # a reply was lost: 2 slots were never ours
        assert (state.leased, state.slots_in_use) == (3, 3)
        state = await account.heartbeat(held=10)  # never raised
        assert (state.leased, state.slots_in_use) == (3, 3)
        state = await account.heartbeat(held=0)
        assert (state.leased, state.slots_in_use) == (0, 0)
        assert await leases(account) == {}


async def learn_rate(account: SharedAccount, accepted: int) -> SharedState:
    await account.requests_accepted(accepted)
    return await account.rate_limited(sent_at=(await account.state()).server_time)


async def test_unpaced_grants_everything_and_a_pause_grants_nothing(
    redis_url: str, redis_namespace: str
) -> None:
    async with fleet(redis_url, redis_namespace) as [account]:
        assert await account.acquire_rate(1000) == 1000
        assert (await learn_rate(account, 20)).rate == pytest.approx(18)
        await anyio.sleep(0.2)
        await account.pause(0.3, "RATE_LIMITED")
        assert await account.acquire_rate(100) == 0
        await anyio.sleep(0.35)
        # Pacing restarts at the end of the pause: no bucket saved up during it.
        paused = await account.state()
        granted = await account.acquire_rate(100)
        assert account.last is not None
        assert granted <= 18 * (account.last.server_time - paused.paused_until) + 1e-6


async def test_the_bucket_grants_at_most_rate_times_elapsed(
    redis_url: str, redis_namespace: str
) -> None:
    async with fleet(redis_url, redis_namespace, 3) as workers:
        learned = await learn_rate(workers[0], 20)  # rate 18, bucket 18
        assert learned.rate == pytest.approx(18)
        granted = 0

        async def take(account: SharedAccount) -> None:
            nonlocal granted
            for _ in range(40):
                got = await account.acquire_rate(5)  # not `granted += await ...`: a lost update
                granted += got
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            for account in workers:
                tg.start_soon(take, account)
        end = await workers[0].state()
    elapsed = end.server_time - learned.server_time
    assert end.rate is not None and end.rate <= 0.95 * 20 * 1.001  # grew under demand, capped
    assert granted <= max(1, end.rate) + end.rate * elapsed + 1e-9
    assert granted >= 0.8 * 18 * elapsed - 1  # and it does grant


async def test_at_the_default_rate_no_window_gets_more_than_the_ceiling(
    redis_url: str, redis_namespace: str
) -> None:
    """A service counting requests over a sliding window of `window` seconds refuses the
    one beyond its limit in any window. At the highest rate the defaults let the shared
    bucket reach (`rate_headroom` times the ceiling learned), a full bucket plus a window
    of refills stays within the ceiling: grants taken as fast as three workers can, from a
    full bucket, total at most the ceiling in every window. (The old default bucket, 0.2 s
    of the rate, gave 27 + 5.4 tokens in one window on a ceiling of 30: each one over it a
    RATE_LIMITED, and a pause every worker shares.)"""
    async with fleet(redis_url, redis_namespace, 3) as workers:
        account = workers[0]
        learned = await learn_rate(account, 30)  # ceiling 30/s
        assert learned.rate == pytest.approx(account.rate_headroom * 30)
        await anyio.sleep(0.3)  # the bucket fills
        # Each grant with the span it happened in: from before the call to its reply. Only
        # grants whose whole span lies in a window count for it, so a slow reply on a busy
        # machine cannot crowd one window with grants Redis made in two.
        grants: list[tuple[float, float, int]] = []

        async def take(worker: SharedAccount) -> None:
            deadline = time.monotonic() + 1.4 * account.window
            while time.monotonic() < deadline:
                asked = time.monotonic()
                got = await worker.acquire_rate(50)
                if got:
                    grants.append((asked, time.monotonic(), got))
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            for worker in workers:
                tg.start_soon(take, worker)
    window = account.window
    busiest = max(
        sum(n for asked, answered, n in grants if start <= asked and answered < start + window)
        for start, _, _ in grants
    )
    assert busiest <= 30
    assert busiest >= 0.8 * 30  # and the bucket does grant


async def test_the_rate_grows_under_demand_only(redis_url: str, redis_namespace: str) -> None:
    async with fleet(redis_url, redis_namespace, window=0.1, min_evidence=1) as [account]:
        learned = await learn_rate(account, 10)  # ceiling 100/s, rate 90/s
        assert learned.rate == pytest.approx(90)
        await anyio.sleep(0.25)  # no demand: no growth
        await account.acquire_rate(1)
        assert (await account.state()).rate == pytest.approx(90)
        for _ in range(30):
            await account.acquire_rate(1000)
            await anyio.sleep(0.02)
        grown = await account.state()
        assert grown.rate is not None and 90 < grown.rate <= 0.95 * 100 * 1.01


async def test_the_rate_learned_never_falls_below_the_peak(
    redis_url: str, redis_namespace: str
) -> None:
    async with fleet(redis_url, redis_namespace, window=0.5) as [account]:
        await account.requests_accepted(30)  # the account took 30 in one window
        assert await field(account, "peak") == 30
        await anyio.sleep(0.6)  # more than a window later
        state = await learn_rate(account, 6)  # 6 in the last window; the peak says 30
        assert state.rate == pytest.approx(0.9 * 30 / 0.5)
        assert await field(account, "ceiling") == pytest.approx(60)
        # Sent before that decrease: the same round, nothing new.
        again = await account.rate_limited(sent_at=state.server_time - 0.01)
        assert again.rate == state.rate
        # After it: the peak still holds the rate up.
        later = await account.rate_limited(sent_at=again.server_time)
        assert later.rate == state.rate


async def test_a_rate_limit_teaches_the_measured_rate(redis_url: str, redis_namespace: str) -> None:
    async with fleet(redis_url, redis_namespace, 2) as [a, b]:
        await a.requests_accepted(3)
        quiet = await b.rate_limited(sent_at=(await b.state()).server_time)
        assert quiet.rate is None  # too little evidence: the pause suffices
        await b.requests_accepted(7)  # 10 in the window, across both workers
        state = await a.rate_limited(sent_at=(await a.state()).server_time)
        assert state.rate == pytest.approx(9)
        assert (await b.state()).rate == pytest.approx(9)


async def test_a_peak_above_the_ceiling_raises_the_learned_rate(
    redis_url: str, redis_namespace: str
) -> None:
    """A refusal is measured with what the workers had reported by then; the others' reports
    of the same window come after it. When they show the account accepted more in one
    window than the ceiling, the ceiling and the rate rise to it (else a rate learned in
    the first burst stays short of the account's for the whole run)."""
    async with fleet(redis_url, redis_namespace, 2) as [a, b]:
        state = await learn_rate(a, 10)
        assert state.rate == pytest.approx(9)
        state = await b.requests_accepted(12)  # b's report of the same window
        assert await field(a, "ceiling") == pytest.approx(22)
        assert state.rate == pytest.approx(0.9 * 22)
        await anyio.sleep(1.1)  # a later, quieter window lowers nothing
        assert (await b.requests_accepted(3)).rate == pytest.approx(0.9 * 22)


async def test_the_slot_probe_is_one_at_a_time_and_paced_by_its_answers(
    redis_url: str, redis_namespace: str
) -> None:
    options = {"probe_every": 0.2, "probe_backoff_cap": 0.6}
    async with fleet(redis_url, redis_namespace, 2, **options) as [a, b]:
        assert await a.acquire_slots(3) == 3
        assert not await a.acquire_probe()  # no limit learned: no probe beyond it
        await a.slot_refused(sent_at=(await a.state()).server_time)  # the limit: 3
        assert await a.acquire_probe()
        assert not await b.acquire_probe()  # one at a time for the whole account
        state = await a.probe_answered("accepted")
        # Its slot joins a's lease: one over the limit, so no lease is granted.
        assert (state.slots_in_use, state.leased, state.slot_limit) == (4, 4, 3)
        assert await b.acquire_slots(1) == 0
        assert await b.acquire_probe()  # accepted: the next may go at once
        await b.probe_answered("refused")
        assert await field(b, "probe_gap") == pytest.approx(0.4)
        assert not await a.acquire_probe()  # not within 0.4 s of the refusal
        await anyio.sleep(0.45)
        assert await a.acquire_probe()
        state = await a.probe_answered("refused")
        assert await field(a, "probe_gap") == pytest.approx(0.6)  # doubled, to its cap
        assert (state.slots_in_use, state.slot_limit) == (4, 3)  # a refused probe: no news
        await anyio.sleep(0.65)
        assert await b.acquire_probe()
        await b.probe_answered("void")  # not sent: the next may go, no change of pace
        assert await a.acquire_probe()
        assert await field(a, "probe_gap") == pytest.approx(0.6)
        with pytest.raises(ValueError, match="accepted, refused or void"):
            await a.probe_answered("maybe")


async def test_an_unanswered_probe_lapses_after_the_lease_ttl(
    redis_url: str, redis_namespace: str
) -> None:
    async with fleet(redis_url, redis_namespace, 2, lease_ttl=0.3) as [a, b]:
        assert await a.acquire_slots(1) == 1
        await a.slot_refused(sent_at=(await a.state()).server_time)
        assert await a.acquire_probe()  # and a dies with it
        assert not await b.acquire_probe()
        await anyio.sleep(0.35)
        assert await b.acquire_probe()


async def test_accepted_requests_count_at_their_send_times(
    redis_url: str, redis_namespace: str
) -> None:
    async with fleet(redis_url, redis_namespace) as [account]:
        now = (await account.state()).server_time
        # Two bursts of 10, 1.3 s apart: at most 10 in any one window.
        await account.requests_accepted(sent_at=[now - 1.5] * 10 + [now - 0.2] * 10)
        assert await field(account, "peak") == 10
        await account.requests_accepted(sent_at=[now - 60.0] * 100)  # too old: dropped
        assert await field(account, "peak") == 10
        await account.requests_accepted(sent_at=[now + 60.0] * 5)  # from the future: now
        assert await field(account, "peak") == 15


async def test_the_retry_budget_is_shared(redis_url: str, redis_namespace: str) -> None:
    options: dict[str, Any] = {"retry_floor_per_second": 0.0}
    async with fleet(redis_url, redis_namespace, 2, **options) as [a, b]:
        assert await a.acquire_retries(15) == 10  # the initial tokens
        assert await b.acquire_retries(1) == 0
        assert await b.first_attempts(10) == pytest.approx(2)  # 0.2 each
        assert await a.acquire_retries(5) == 2
        assert await a.first_attempts(10_000) == 100  # at most max_tokens
    async with fleet(redis_url, redis_namespace + "f") as [c]:
        assert await c.acquire_retries(100) == 10
        started = time.monotonic()
        await anyio.sleep(0.3)  # accrue at 10/s
        accrued = await c.acquire_retries(100)
        assert 2 <= accrued <= 10 * (time.monotonic() - started) + 1


async def test_keys_are_named_by_the_digest_and_expire(
    redis_url: str, redis_namespace: str
) -> None:
    key = ApiKey("sk-test-7f3c9a1e-DO-NOT-LEAK")
    async with account_client(redis_url) as client:
        account = SharedAccount(
            client, account_id(key), namespace=redis_namespace, worker="w", expire_after=3600
        )
        await account.heartbeat()
        assert await account.acquire_slots(1) == 1
        await account.requests_accepted(1)
        names = sorted(text(k) for k in await client.keys(f"{redis_namespace}:*"))
        assert names == sorted(account.keys) and len(names) == 4
        assert all(f"{redis_namespace}:account:{account_id(key)}:" in n for n in names)
        for name in names:
            assert 3500 < await client.ttl(name) <= 3600
            assert key.reveal() not in name


# -- atomicity under concurrent workers ---------------------------------------------------


class NonAtomicAccount(SharedAccount):
    """A deliberately broken `acquire_slots`: reads, awaits, then writes from Python."""

    async def acquire_slots(self, want: int) -> int:
        state_key, leases_key = self.keys[0], self.keys[1]
        limit, in_use = await self.client.hmget(state_key, ["slot_limit", "in_use"])
        await asyncio.sleep(0)  # another worker's call may run here: a lost update
        used = int(in_use or 0)
        room = want if limit is None else math.floor(float(limit)) - used
        granted = max(0, min(want, room))
        if granted:
            await self.client.hincrby(leases_key, self.worker, granted)
            await self.client.hset(state_key, "in_use", used + granted)
        return granted


async def contend(
    accounts: Sequence[SharedAccount], rounds: int, limit: int, seed: int = 0
) -> tuple[int, list[str]]:
    """Every account acquires one slot `rounds` times at once, giving some back at random,
    while a checker reads Redis atomically. Returns the most slots the workers held at once
    (by their own count) and the invariant violations seen."""
    held = 0
    most = 0
    violations: list[str] = []
    done = anyio.Event()

    async def work(account: SharedAccount, rng: random.Random) -> None:
        nonlocal held, most
        mine = 0
        for _ in range(rounds):
            granted = await account.acquire_slots(1)
            mine, held = mine + granted, held + granted
            most = max(most, held)
            if mine and rng.random() < 0.5:
                mine, held = mine - 1, held - 1  # before the release: `held` <= Redis's count
                await account.release_slots(1)
        held -= mine  # counted as given back before it is (so `held` never runs ahead)
        await account.release_slots(mine)

    async def check(account: SharedAccount) -> None:
        while not done.is_set():
            in_use, _, leased, _ = await snapshot(account)
            if in_use > limit or in_use != leased:
                violations.append(f"in use {in_use}, leases {leased}, limit {limit}")

    async with anyio.create_task_group() as checker:
        checker.start_soon(check, accounts[0])
        async with anyio.create_task_group() as tg:
            for i, account in enumerate(accounts):
                tg.start_soon(work, account, random.Random(seed * 100 + i))
        done.set()
    in_use, _, leased, _ = await snapshot(accounts[0])
    if in_use != leased:
        violations.append(f"at the end: in use {in_use}, leases {leased}")
    if most > limit:
        violations.append(f"the workers held {most} slots at once, over {limit}")
    return most, violations


async def test_concurrent_workers_never_exceed_the_slot_limit(
    redis_url: str, redis_namespace: str
) -> None:
    async with fleet(redis_url, redis_namespace, 8) as accounts:
        await set_slot_limit(accounts[0], 40)
        most, violations = await contend(accounts, rounds=200, limit=40)
        assert violations == []
        assert most == 40  # the contention did reach the limit
        state = await accounts[0].state()
        assert (state.slots_in_use, await leases(accounts[0])) == (0, {})


async def test_the_concurrency_test_catches_a_non_atomic_acquire(
    redis_url: str, redis_namespace: str
) -> None:
    async with fleet(redis_url, redis_namespace, 8) as accounts:
        await set_slot_limit(accounts[0], 40)
        mutants = [
            NonAtomicAccount(a.client, ACCOUNT, namespace=redis_namespace, worker=a.worker)
            for a in accounts
        ]
        _, violations = await contend(mutants, rounds=60, limit=40)
    assert violations, "a GET-then-SET acquire must break the invariant under contention"


async def test_concurrent_pauses_end_at_the_latest(redis_url: str, redis_namespace: str) -> None:
    async with fleet(redis_url, redis_namespace, 8) as accounts:
        results: list[SharedState] = []

        async def pause(account: SharedAccount, seconds: float) -> None:
            for _ in range(10):
                results.append(await account.pause(seconds, account.worker))

        async with anyio.create_task_group() as tg:
            for i, account in enumerate(accounts):
                tg.start_soon(pause, account, 10.0 * (i + 1))
        final = await accounts[0].state()
    assert final.paused_until == max(r.paused_until for r in results)
    assert final.pause_reason == "w7"  # 80 s: the longest by far


INTERLEAVING_OPTIONS: dict[str, Any] = {
    "cooldown": 0.02,
    "window": 0.2,
    "min_evidence": 1,
    "probe_every": 0.001,
    "probe_backoff_cap": 0.002,
}
"""Short windows and a probe paced at 1 ms, so that 150 random steps meet every rule."""


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_interleavings_keep_the_invariants(
    redis_url: str, redis_namespace: str, seed: int
) -> None:
    async with fleet(redis_url, redis_namespace, 4, **INTERLEAVING_OPTIONS) as accounts:
        await interleave(accounts, random.Random(seed))


class GreedyProbeAccount(SharedAccount):
    """A deliberately broken probe: an accepted one adds two slots to the lease and to
    the slots in use (the invariant `in_use == sum(leases)` still holds)."""

    async def probe_answered(self, outcome: str) -> SharedState:
        state = await super().probe_answered(outcome)
        if outcome == "accepted":
            await self.client.hincrby(self.keys[1], self.worker, 1)
            await self.client.hincrby(self.keys[0], "in_use", 1)
        return state


async def test_the_interleavings_test_catches_a_probe_taking_two_slots(
    redis_url: str, redis_namespace: str
) -> None:
    options = {**INTERLEAVING_OPTIONS, "kind": GreedyProbeAccount}
    async with fleet(redis_url, redis_namespace, 4, **options) as accounts:
        with pytest.raises(AssertionError, match="probe"):
            await interleave(accounts, random.Random(1))


async def interleave(accounts: Sequence[SharedAccount], rng: random.Random) -> None:
    """150 random operations by random workers of one account; after each, assert the
    invariants: the slots in use equal the leases (all positive), never exceed the limit
    but by a lowered limit or an accepted probe's one task, a learned limit and a pause's
    end never go back, and the rate never falls below 0.9 times the peak."""
    probes: list[str] = []
    before = await snapshot(accounts[0])
    rate_before = math.inf
    ops: dict[str, Callable[[SharedAccount], Awaitable[object]]] = {
        "acquire": lambda a: a.acquire_slots(rng.randint(0, 6)),
        "release": lambda a: a.release_slots(rng.randint(0, 6)),
        "refused": lambda a: refused(a, rng.uniform(0, 0.05)),
        "accepted": lambda a: a.slot_accepted(rng.randint(1, 3)),
        "pause": lambda a: a.pause(rng.uniform(0, 0.5), a.worker),
        "heartbeat": lambda a: a.heartbeat(),
        "requests": lambda a: a.requests_accepted(rng.randint(0, 20)),
        "rate_limited": lambda a: refused(a, rng.uniform(0, 0.05), rate=True),
        "tokens": lambda a: a.acquire_rate(rng.randint(0, 10)),
        "probe": lambda a: probe(a, rng.choice(["accepted", "refused", "void"]), probes),
    }
    for step in range(150):
        account = rng.choice(accounts)
        name = rng.choice(list(ops))
        await ops[name](account)
        after = await snapshot(account)
        in_use, limit, leased, paused_until = after
        where = f"step {step} ({name} by {account.worker}): {after}"
        assert in_use == leased, where
        assert all(v > 0 for v in (await leases(account)).values()), where
        if limit is not None:
            assert limit >= 1, where
        if name == "probe":
            # Only an accepted probe (a task the service took) adds a slot: exactly one.
            assert in_use == before[0] + (probes[-1] == "accepted"), where
        elif limit is not None:
            # A grant never takes the slots in use above the limit; only a lower limit
            # (a decrease) leaves them above it, until slots are given back.
            assert in_use <= max(before[0], math.floor(limit)), where
        if before[1] is not None:
            assert limit is not None, where  # a learned limit is never forgotten
        assert paused_until >= before[3], where
        rate, peak = await field(account, "rate"), await field(account, "peak")
        if rate is not None:
            # A rate limit lowers the rate, but never below 0.9 times the peak.
            assert rate >= min(rate_before, 0.9 * (peak or 0) / 0.2) - 1e-9, where
            rate_before = rate
        before = after
    assert "accepted" in probes  # the probes did take slots beyond the limit


async def probe(account: SharedAccount, outcome: str, answered: list[str]) -> None:
    """Take the account's probe and answer `outcome`; record the answer in `answered`
    (`none`: the probe was not granted)."""
    if await account.acquire_probe():
        await account.probe_answered(outcome)
        answered.append(outcome)
    else:
        answered.append("none")


async def refused(account: SharedAccount, ago: float, *, rate: bool = False) -> SharedState:
    sent_at = (await account.state()).server_time - ago
    return await (account.rate_limited(sent_at) if rate else account.slot_refused(sent_at))


# -- Redis unavailable ----------------------------------------------------------------------


async def test_unavailable_redis_fails_fast_and_recovers(private_redis: RedisServer) -> None:
    async with account_client(private_redis.url, timeout=0.3) as client:
        account = SharedAccount(client, ACCOUNT, worker="w", call_timeout=1.0)
        assert await account.acquire_slots(2) == 2
        private_redis.stop()
        calls: list[Callable[[], Awaitable[object]]] = [
            account.state,
            account.heartbeat,
            lambda: account.pause(1, "x"),
            lambda: account.open_circuit(1, "x"),
            account.close_circuit,
            lambda: account.acquire_slots(1),
            lambda: account.release_slots(1),
            lambda: account.slot_refused(0.0),
            account.slot_accepted,
            lambda: account.acquire_rate(1),
            lambda: account.rate_limited(0.0),
            lambda: account.requests_accepted(1),
            lambda: account.acquire_retries(1),
            account.first_attempts,
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(AccountStateUnavailable):
                await call()
            assert time.monotonic() - started < 1.5
        private_redis.start()  # an empty Redis: the scripts and the state are gone
        deadline = time.monotonic() + 5
        while True:
            try:
                state = await account.heartbeat()
                break
            except AccountStateUnavailable:
                assert time.monotonic() < deadline, "Redis is back but calls still fail"
                await anyio.sleep(0.05)
        assert (state.workers, state.slots_in_use) == (1, 0)
        assert await account.acquire_slots(3) == 3
        assert (await account.pause(1, "back")).paused


async def test_a_silent_redis_is_bounded_by_the_call_timeout() -> None:
    """A server that accepts connections and never answers, and a client with redis-py's
    default timeouts and retries: the call still ends within `call_timeout`."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        async with aioredis.Redis(host="127.0.0.1", port=port) as client:
            account = SharedAccount(client, ACCOUNT, worker="w", call_timeout=0.3)
            started = time.monotonic()
            with pytest.raises(AccountStateUnavailable):
                await account.state()
            assert time.monotonic() - started < 1.0


async def test_before_any_refusal_slots_grow_by_slow_start(
    redis_url: str, redis_namespace: str
) -> None:
    """Until the service refuses a slot, all workers together hold at most `slot_start`
    slots plus one per accepted createTask (doubling per round, as TCP's slow start)."""
    async with fleet(redis_url, redis_namespace, 2) as [a, b]:
        assert await a.acquire_slots(100) == 16
        assert await b.acquire_slots(1) == 0
        await a.slot_accepted(16)
        assert await b.acquire_slots(100) == 16
        assert (await b.state()).slot_limit is None


async def test_a_sync_round_learns_the_slots_in_use_without_the_refused_ones(
    redis_url: str, redis_namespace: str
) -> None:
    """A worker held 5 slots, and the service refused 2 of the 5 createTasks: the slot limit
    learned is the 3 tasks that exist, not 5: the refused slots go back to the account
    before the refusal is published (else the limit stays above what the service holds,
    and every round meets more refusals)."""
    create = Endpoint.CREATE_TASK
    no_slot = Failure(
        Bucket.RETRYABLE, "NO_SLOT_AVAILABLE", "", create, code=int(ErrorCode.NO_SLOT_AVAILABLE)
    )
    async with fleet(redis_url, redis_namespace) as [account]:
        gate, clock = SharedGate(), VirtualClock()
        sync = AccountSync(gate, account, clock, lambda jobs: None)
        jobs = [f"job{n}" for n in range(5)]
        for job in jobs:
            gate.register(job, clock.now())
            gate.admit(job, create, retry=False, now=clock.now())  # waits for a slot
        await sync.sync_once()  # leases the 5 slots
        for job in jobs:
            assert isinstance(gate.admit(job, create, retry=False, now=clock.now()), Admit)
        for job in jobs[:2]:
            gate.observe(job, create, no_slot, sent_at=clock.now(), now=clock.now())
        for job in jobs[2:]:
            gate.observe(job, create, None, sent_at=clock.now(), now=clock.now())
        await sync.sync_once()
        state = await account.state()
        # 3, then half a slot per round of 3 for the 3 tasks accepted
        assert (state.slot_limit, state.slots_in_use) == (3.5, 3)


async def test_a_sync_round_carries_the_probe_and_the_slot_it_took(
    redis_url: str, redis_namespace: str
) -> None:
    """End to end through `AccountSync`: a job waiting with the limit full gets the
    account's probe; accepted, its slot joins the lease (one over the limit), and the next
    slot a job here frees goes back to the account rather than to the next waiting job."""
    create = Endpoint.CREATE_TASK
    async with fleet(redis_url, redis_namespace) as [account]:
        gate, clock = SharedGate(), VirtualClock()
        sync = AccountSync(gate, account, clock, lambda jobs: None)
        for job in ("a", "b", "c", "d"):
            gate.register(job, clock.now())
        assert await account.acquire_slots(2) == 2
        gate.leased(slots=2)
        for job in ("a", "b"):
            assert isinstance(gate.admit(job, create, retry=False, now=0), Admit)
            gate.observe(job, create, None, sent_at=0, now=0)
        await account.slot_refused(sent_at=(await account.state()).server_time)  # limit 2
        gate.admit("c", create, retry=False, now=0)  # waits: the limit is full
        await sync.sync_once()  # (a view never synced is stale: no probe yet)
        await sync.sync_once()
        assert gate.probing == "c"
        assert isinstance(gate.admit("c", create, retry=False, now=0), Admit)
        gate.observe("c", create, None, sent_at=0, now=0)
        gate.admit("d", create, retry=False, now=0)  # waits
        await sync.sync_once()
        state = await account.state()
        assert (state.slots_in_use, state.leased, gate.view.over) == (3, 3, 1)
        gate.release("a", 1)
        assert gate.owed_slots == 1 and gate.view.slots == 0  # not d's
        await sync.sync_once()
        state = await account.state()
        assert (state.slots_in_use, state.leased, gate.view.over) == (2, 2, 0)
