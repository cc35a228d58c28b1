"""`SharedAccount`: the state one API account's workers share in Redis, changed only by
atomic Lua scripts.

Several workers (processes, on one machine or many) run jobs on one API account: one
request-rate limit, one number of task slots, one balance. Each keeps a local, sans-IO gate
that decides from a local view; this module is the shared truth behind those views, and a
small async client for it.

Consistency. Every method is one `EVALSHA` of one Lua script, and Redis runs a script as
one atomic step: no other client's command runs in between. So each method is a
linearizable read-modify-write of the account's whole shared state, and every invariant a
script keeps (leases never granted beyond the learned limit, an accepted probe's slot
aside, see `acquire_probe`; `slots_in_use` equal to the
sum of the leases, a pause's end never moving earlier, ...) holds at every instant, however
many workers call at once. Every time in the shared state is Redis time (`TIME`, read
inside the script), so the workers' clocks need not agree; a worker turns it into its own
clock by the offset it measures (`SharedState.server_time`). What is *not* immediate is a
worker's local view: a pause, a circuit or a new limit published by one worker reaches the
others when they next call (their sync period, plus one round trip).

Keys (`redis_key(namespace, "account", account, ...)`, the account named by the digest
`account_id(key)`, never by the API key): `state` (a hash of the scalars), `leases` (a hash
worker -> slots held), `workers` (a sorted set worker -> lease expiry, Redis time) and
`accepted` (a hash of per-bucket counts of accepted requests). Every script that changes
them sets them to expire `expire_after` seconds (a day) later, so a finished run leaves
nothing behind for long. A script touches all four keys, which carry no hash tag: this
needs one Redis (or a primary with replicas), not Redis Cluster, where they could fall in
different slots.

Exactly once? A script runs once per call: the client must not retry it (`account_client`
makes one that does not), because a script whose reply was lost has taken effect and a
retry would apply it again. A call that fails may or may not have taken effect; the
caller's own count of its slots repairs its lease (`heartbeat(held=...)`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Any, Final

import attrs
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from ._keys import DEFAULT_NAMESPACE, redis_key

__all__ = [
    "AccountStateUnavailable",
    "SharedAccount",
    "SharedState",
    "account_client",
]

BUCKETS: Final = 10
"""Accepted requests are counted in buckets of `window / BUCKETS` seconds (Redis time)."""

_UNAVAILABLE: Final = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError (a restarting server)
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica after a failover
    TimeoutError,  # our own bound on a call (asyncio.timeout)
    OSError,
)


class AccountStateUnavailable(Exception):
    """The shared account state could not be read or changed (Redis unreachable, too slow,
    or read-only). The call may or may not have taken effect: a script that ran but whose
    reply was lost did change the state (see `SharedAccount.heartbeat(held=...)` for
    putting a lease right). Raised within `call_timeout` seconds of the call."""


@attrs.frozen
class SharedState:
    """A snapshot of the account's shared state, as one script saw it atomically.

    Times are Redis times (seconds since the epoch, `server_time` being when the snapshot
    was taken); `0.0` for a pause or circuit that never was."""

    server_time: float
    paused_until: float
    """Every request of the account waits until then (the latest end any worker published)."""
    pause_reason: str
    circuit_open_until: float
    """New tasks fail until then (a permanent account error); `inf` until closed by hand."""
    circuit_reason: str
    slot_limit: float | None
    """The learned number of task slots (None: unknown, no bound). Leases never take
    `slots_in_use` above `floor(slot_limit)`; a decrease may leave it above until slots free."""
    slots_in_use: int
    """The sum of the live workers' leases."""
    rate: float | None
    """The learned requests per second of the whole account (None: not paced)."""
    workers: int
    """Workers whose liveness lease has not expired."""
    leased: int
    """Slots the calling worker holds (0 after its lease expired and was reclaimed)."""

    @property
    def paused(self) -> bool:
        """True while the account is paused (at `server_time`)."""
        return self.server_time < self.paused_until

    @property
    def over_limit(self) -> int:
        """How many slots the leases are above the learned limit (0 with none learned)."""
        if self.slot_limit is None:
            return 0
        return max(0, self.slots_in_use - math.floor(self.slot_limit))

    @property
    def circuit_open(self) -> bool:
        """True while the circuit is open (at `server_time`)."""
        return self.server_time < self.circuit_open_until


# -- the Lua scripts -------------------------------------------------------------------------
#
# Every script gets the same KEYS (state, leases, workers, accepted) and starts with ARGV
# worker, lease_ttl, expire_after; its own arguments follow from ARGV[4]. Each returns
# {result, <snapshot>}: strings only, because a Lua number in a reply is truncated to an
# integer by Redis (floats go out as '%.17g', which reads back exactly). Numbers go into
# the hashes as '%.17g' too (a bare Lua number would be written with 14 digits).

_PRELUDE: Final = """
local state_key, leases_key, workers_key, accepted_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local worker = ARGV[1]
local lease_ttl = tonumber(ARGV[2])
local expire_after = tonumber(ARGV[3])
local BUCKETS = 10
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local function fmt(x)
  return string.format('%.17g', x)
end

local function get(field)
  local value = redis.call('HGET', state_key, field)
  if value then
    return tonumber(value)
  end
  return nil
end

local function put(field, x)
  redis.call('HSET', state_key, field, fmt(x))
end

local function lease_of(name)
  return tonumber(redis.call('HGET', leases_key, name) or '0')
end

-- Workers whose liveness lease ended before now are dead: their slots come back.
local function reclaim()
  local dead = redis.call('ZRANGEBYSCORE', workers_key, '-inf', '(' .. fmt(now))
  for _, name in ipairs(dead) do
    local held = lease_of(name)
    if held ~= 0 then
      redis.call('HINCRBY', state_key, 'in_use', -held)
      redis.call('HDEL', leases_key, name)
    end
    redis.call('ZREM', workers_key, name)
  end
end

local function alive()
  redis.call('ZADD', workers_key, fmt(now + lease_ttl), worker)
end

local function touch()
  for _, key in ipairs(KEYS) do
    redis.call('EXPIRE', key, expire_after)
  end
end

local function int(x)
  return string.format('%d', x)
end

local function bucket_field(b)
  return int(b)
end

-- Accepted requests in the buckets first..last.
local function accepted_in(first, last)
  local fields = {}
  for b = first, last do
    fields[#fields + 1] = bucket_field(b)
  end
  local total = 0
  for _, count in ipairs(redis.call('HMGET', accepted_key, unpack(fields))) do
    total = total + tonumber(count or '0')
  end
  return total
end

local function snapshot(result)
  local s = redis.call('HMGET', state_key, 'paused_until', 'pause_reason', 'circuit_until',
    'circuit_reason', 'slot_limit', 'in_use', 'rate')
  local live = redis.call('ZCOUNT', workers_key, fmt(now), '+inf')
  return {result, fmt(now), s[1] or '0', s[2] or '', s[3] or '0', s[4] or '', s[5] or '',
    s[6] or '0', s[7] or '', int(live), int(lease_of(worker))}
end
"""

# Read the state (reclaiming dead workers' slots first, so the snapshot counts live leases).
STATE_LUA: Final = (
    _PRELUDE
    + """
reclaim()
return snapshot('')
"""
)

# Marks the worker alive until now + lease_ttl and reclaims the dead's slots. ARGV[4], when
# not empty, is the number of slots the worker knows it holds: its lease is lowered to it
# (never raised), which puts right a lease changed by a call whose reply was lost.
HEARTBEAT_LUA: Final = (
    _PRELUDE
    + """
reclaim()
alive()
if ARGV[4] ~= '' then
  local known = math.max(0, tonumber(ARGV[4]))
  local held = lease_of(worker)
  if known < held then
    redis.call('HINCRBY', state_key, 'in_use', known - held)
    if known == 0 then
      redis.call('HDEL', leases_key, worker)
    else
      redis.call('HSET', leases_key, worker, known)
    end
  end
end
touch()
return snapshot('')
"""
)

# paused_until = max(paused_until, now + ARGV[4]); the reason is that of the latest end. A
# pause that extends also empties the rate bucket and stops it filling until the end, so
# the requests it held do not all go at once when it ends (pacing restarts at its end).
PAUSE_LUA: Final = (
    _PRELUDE
    + """
local ends = now + tonumber(ARGV[4])
if ends > (get('paused_until') or 0) then
  put('paused_until', ends)
  redis.call('HSET', state_key, 'pause_reason', ARGV[5])
  put('tokens', 0)
  put('tokens_at', math.max(ends, get('tokens_at') or ends))
end
touch()
return snapshot('')
"""
)

# circuit_until = max(circuit_until, now + ARGV[4]), unless the failure (sent at ARGV[6],
# if given) is older than the success that last closed the circuit. `circuit_since` keeps
# the newest evidence that opened it.
OPEN_CIRCUIT_LUA: Final = (
    _PRELUDE
    + """
local sent = now
if ARGV[6] ~= '' then
  sent = tonumber(ARGV[6])
end
if sent >= (get('circuit_closed_at') or -math.huge) then
  local ends = now + tonumber(ARGV[4])
  if ends > (get('circuit_until') or 0) then
    put('circuit_until', ends)
    redis.call('HSET', state_key, 'circuit_reason', ARGV[5])
  end
  put('circuit_since', math.max(sent, get('circuit_since') or sent))
end
touch()
return snapshot('')
"""
)

# Closes the circuit, unless the success (a request sent at ARGV[4], if given) is older
# than the newest failure that opened it.
CLOSE_CIRCUIT_LUA: Final = (
    _PRELUDE
    + """
local sent = now
if ARGV[4] ~= '' then
  sent = tonumber(ARGV[4])
end
if sent >= (get('circuit_since') or -math.huge) then
  redis.call('HDEL', state_key, 'circuit_until', 'circuit_reason', 'circuit_since')
  put('circuit_closed_at', math.max(sent, get('circuit_closed_at') or sent))
end
touch()
return snapshot('')
"""
)

# Grants min(ARGV[4], floor(slot_limit) - in_use) slots to the worker's lease, after
# reclaiming the dead's; marks the worker alive. Before a limit is learned the bound is the
# slow start (ARGV[5] at first, one more per accepted task). So in_use never goes above the
# bound by a grant, and in_use == sum(leases) always.
ACQUIRE_SLOTS_LUA: Final = (
    _PRELUDE
    + """
local want = math.max(0, tonumber(ARGV[4]))
reclaim()
alive()
local limit = get('slot_limit') or get('slow_start') or tonumber(ARGV[5])
local granted = math.max(0, math.min(want, math.floor(limit) - (get('in_use') or 0)))
if granted > 0 then
  redis.call('HINCRBY', leases_key, worker, granted)
  redis.call('HINCRBY', state_key, 'in_use', granted)
end
touch()
return snapshot(int(granted))
"""
)

# Gives back min(ARGV[4], lease) of the worker's slots (never more than it holds: a lease
# already reclaimed is not given back twice).
RELEASE_SLOTS_LUA: Final = (
    _PRELUDE
    + """
local held = lease_of(worker)
local freed = math.max(0, math.min(tonumber(ARGV[4]), held))
if freed > 0 then
  if freed == held then
    redis.call('HDEL', leases_key, worker)
  else
    redis.call('HINCRBY', leases_key, worker, -freed)
  end
  redis.call('HINCRBY', state_key, 'in_use', -freed)
end
touch()
return snapshot(int(freed))
"""
)

# NO_SLOT_AVAILABLE for a createTask sent at ARGV[4]: the first sets slot_limit to the
# slots in use (at least 1); afterwards the limit is multiplied by ARGV[5] at most once per
# ARGV[6] seconds, and a refusal of a request sent before the last decrease changes nothing
# (once per round); the limit is kept within [1, max(1, in_use)] and at most ARGV[7].
SLOT_REFUSED_LUA: Final = (
    _PRELUDE
    + """
local sent_at, decrease, cooldown, max_slots =
  tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
reclaim()
local filled = math.max(1, get('in_use') or 0)
local limit = get('slot_limit')
local last = get('slot_decreased_at') or -math.huge
if not limit then
  limit = filled
  put('slot_decreased_at', now)
elseif sent_at < last then
  return snapshot('')
elseif now - last >= cooldown then
  limit = limit * decrease
  put('slot_decreased_at', now)
end
put('slot_limit', math.max(1, math.min(limit, filled, max_slots)))
touch()
return snapshot('')
"""
)

# ARGV[4] createTasks accepted: slot_limit += ARGV[4] * ARGV[5] / slot_limit, at most
# ARGV[6]: ARGV[5] slots per round of slot_limit accepted tasks, TCP's congestion
# avoidance. Before a limit is learned, the slow start (from ARGV[7]) grows by ARGV[4].
SLOT_ACCEPTED_LUA: Final = (
    _PRELUDE
    + """
local limit = get('slot_limit')
if limit then
  local grown = limit + tonumber(ARGV[4]) * tonumber(ARGV[5]) / limit
  put('slot_limit', math.min(tonumber(ARGV[6]), grown))
else
  local start = get('slow_start') or tonumber(ARGV[7])
  put('slow_start', math.min(tonumber(ARGV[6]), start + tonumber(ARGV[4])))
end
touch()
return snapshot('')
"""
)

# The account's one slot probe (see `SharedGate`): grants it to the worker (result '1')
# when a slot limit is learned, no other worker holds it (or its grant, ARGV[4] seconds
# long, expired unanswered) and the pacing allows (`next_probe`).
ACQUIRE_PROBE_LUA: Final = (
    _PRELUDE
    + """
reclaim()
alive()
local granted = '0'
if get('slot_limit') then
  local holder = redis.call('HGET', state_key, 'probe_holder')
  if (not holder or now >= (get('probe_expires') or 0)) and now >= (get('next_probe') or 0) then
    redis.call('HSET', state_key, 'probe_holder', worker)
    put('probe_expires', now + tonumber(ARGV[4]))
    granted = '1'
  end
end
touch()
return snapshot(granted)
"""
)

# The probe's answer (ARGV[4]): 'accepted' (the task exists: its slot joins the worker's
# lease and the next probe may go at once), 'refused' (NO_SLOT_AVAILABLE: the next waits
# twice as long as the last, from ARGV[5] up to ARGV[6] seconds) or 'void' (not sent, or
# surely not created: no change but the grant's end).
PROBE_ANSWERED_LUA: Final = (
    _PRELUDE
    + """
local outcome, every, cap = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('HGET', state_key, 'probe_holder') == worker then
  redis.call('HDEL', state_key, 'probe_holder', 'probe_expires')
end
if outcome == 'accepted' then
  alive()
  redis.call('HINCRBY', leases_key, worker, 1)
  redis.call('HINCRBY', state_key, 'in_use', 1)
  put('probe_gap', every)
  put('next_probe', now)
elseif outcome == 'refused' then
  local gap = math.max(every, math.min(cap, 2 * (get('probe_gap') or every)))
  put('probe_gap', gap)
  put('next_probe', now + gap)
end
touch()
return snapshot('')
"""
)

# A token bucket at `rate` (ARGV[5] window, ARGV[6] increase, ARGV[7] headroom): grants
# min(ARGV[4], floor(tokens)) tokens, the bucket refilling at `rate` by Redis time up to
# max(1, rate * ARGV[8]); everything while no rate is known, nothing while paused. While
# requests want more than the bucket holds, the rate grows by `increase` (a fraction) once
# per window, up to `headroom` times the ceiling, and the ceiling by increase / 100 (as
# AdaptiveRate does: an idle account never drifts to an untried rate).
ACQUIRE_RATE_LUA: Final = (
    _PRELUDE
    + """
local want = math.max(0, tonumber(ARGV[4]))
local window, increase, headroom = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local burst = tonumber(ARGV[8])
local rate = get('rate')
if not rate then
  return snapshot(int(want))
end
if now < (get('paused_until') or 0) then
  return snapshot('0')
end
local changed = get('rate_changed_at') or now
if now - changed >= window then
  local short, ceiling = get('rate_short_at'), get('ceiling')
  if short and ceiling and now - short < window then
    ceiling = ceiling * (1 + increase / 100)
    rate = math.max(rate, math.min(rate * (1 + increase), ceiling * headroom))
    put('ceiling', ceiling)
    put('rate', rate)
  end
  put('rate_changed_at', now)
end
local capacity = math.max(1, rate * burst)
local tokens = get('tokens') or 0
local at = get('tokens_at') or now
if now > at then
  tokens = math.min(capacity, tokens + (now - at) * rate)
  at = now
end
local granted = math.max(0, math.min(want, math.floor(tokens + 1e-9)))
put('tokens', tokens - granted)
put('tokens_at', at)
if granted < want then
  put('rate_short_at', now)
end
touch()
return snapshot(int(granted))
"""
)

# RATE_LIMITED for a request sent at ARGV[4] (ARGV[5] window, ARGV[6] safety, ARGV[7]
# min_rate, ARGV[8] min_evidence). Ignored when sent before the last decrease (once per
# round) or when fewer than min_evidence requests were accepted in the last window (too
# little evidence: the pause suffices). Else ceiling = max(min_rate, measured / window,
# peak / window) (and no higher than the previous ceiling, but never below peak / window),
# and the rate becomes max(min_rate, safety * ceiling) if that is lower; the bucket keeps
# no more than its new capacity.
RATE_LIMITED_LUA: Final = (
    _PRELUDE
    + """
local sent_at, window, safety, min_rate, min_evidence =
  tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local cut = get('rate_cut_at')
if cut and sent_at < cut then
  return snapshot('')
end
local current = math.floor(now / (window / BUCKETS))
local measured = accepted_in(current - BUCKETS + 1, current)
local peak = math.max(get('peak') or 0, measured)
put('peak', peak)
if measured < min_evidence then
  touch()
  return snapshot('')
end
local lowest = math.max(min_rate, peak / window)
local ceiling = math.max(lowest, measured / window)
local previous = get('ceiling')
if previous then
  ceiling = math.max(lowest, math.min(previous, ceiling))
end
put('ceiling', ceiling)
put('rate_changed_at', now)
local learned = math.max(min_rate, safety * ceiling)
local rate = get('rate')
if not rate or learned < rate then
  put('rate', learned)
  put('rate_cut_at', now)
  put('tokens', math.min(get('tokens') or 0, 1))
  put('tokens_at', math.max(now, get('tokens_at') or now))
end
touch()
return snapshot('')
"""
)

# Counts accepted requests (ARGV[4] window, ARGV[5] safety, ARGV[6] counted now, ARGV[7..]
# one each at the given send times) in buckets of window / BUCKETS, keeping two windows of
# buckets, and raises `peak` to the most counted in any BUCKETS consecutive buckets (an
# exact count over an interval of one window: a lower bound of the most accepted in one
# window). A peak above the ceiling raises it, and the rate to at least `safety` times it:
# the refusal that set the ceiling was measured before every worker had reported.
REQUESTS_ACCEPTED_LUA: Final = (
    _PRELUDE
    + """
local width = tonumber(ARGV[4]) / BUCKETS
local current = math.floor(now / width)
local oldest = current - 2 * BUCKETS + 1
local counts = {}
local lowest = current
local n = tonumber(ARGV[6])
if n > 0 then
  counts[current] = n
end
for i = 7, #ARGV do
  local b = math.floor(math.min(tonumber(ARGV[i]), now) / width)
  if b >= oldest then
    counts[b] = (counts[b] or 0) + 1
    lowest = math.min(lowest, b)
  end
end
if next(counts) == nil then
  return snapshot('')
end
for b, count in pairs(counts) do
  redis.call('HINCRBY', accepted_key, bucket_field(b), count)
end
for _, field in ipairs(redis.call('HKEYS', accepted_key)) do
  if tonumber(field) < oldest then
    redis.call('HDEL', accepted_key, field)
  end
end
local fields = {}
for b = lowest - BUCKETS + 1, current do
  fields[#fields + 1] = bucket_field(b)
end
local values = redis.call('HMGET', accepted_key, unpack(fields))
local peak = get('peak') or 0
local sum = 0
for i = 1, #values do
  sum = sum + tonumber(values[i] or '0')
  if i > BUCKETS then
    sum = sum - tonumber(values[i - BUCKETS] or '0')
  end
  if i >= BUCKETS and sum > peak then
    peak = sum
  end
end
put('peak', peak)
local ceiling = get('ceiling')
local window = tonumber(ARGV[4])
if ceiling and peak / window > ceiling then
  put('ceiling', peak / window)
  local rate = get('rate')
  local floor = tonumber(ARGV[5]) * peak / window
  if rate and floor > rate then
    put('rate', floor)
  end
end
touch()
return snapshot('')
"""
)

# The retry budget's tokens (ARGV[5] floor_per_second, ARGV[6] max_tokens, ARGV[7] initial),
# brought up to date: they accrue at floor_per_second from the first use, up to max_tokens.
_RETRY_TOKENS: Final = """
local floor_rate, max_tokens = tonumber(ARGV[5]), tonumber(ARGV[6])
local tokens = get('retry_tokens') or math.min(tonumber(ARGV[7]), max_tokens)
local at = get('retry_at')
if at and now > at then
  tokens = math.min(max_tokens, tokens + (now - at) * floor_rate)
end
"""

# Grants min(ARGV[4], floor(tokens)) retries from the shared budget.
ACQUIRE_RETRIES_LUA: Final = (
    _PRELUDE
    + _RETRY_TOKENS
    + """
local granted = math.max(0, math.min(tonumber(ARGV[4]), math.floor(tokens + 1e-9)))
put('retry_tokens', tokens - granted)
put('retry_at', math.max(now, at or now))
touch()
return snapshot(int(granted))
"""
)

# ARGV[4] first attempts went: each earns ARGV[8] (the ratio) of a token, up to max_tokens.
FIRST_ATTEMPTS_LUA: Final = (
    _PRELUDE
    + _RETRY_TOKENS
    + """
tokens = math.min(max_tokens, tokens + tonumber(ARGV[4]) * tonumber(ARGV[8]))
put('retry_tokens', tokens)
put('retry_at', math.max(now, at or now))
touch()
return snapshot(fmt(tokens))
"""
)


# -- the client ------------------------------------------------------------------------------


def account_client(url: str, *, timeout: float = 0.5) -> aioredis.Redis:
    """A Redis client fit for `SharedAccount`: `timeout`-second connect and socket timeouts,
    and no automatic retries (a script retried after its reply was lost would apply twice;
    the caller's next call, a sync period later, is the retry)."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return client


def _number(value: float, name: str, *, infinite: bool = False) -> str:
    """`value` as a Lua-readable number (exact: repr round-trips), checked."""
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not (infinite and value > 0)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return repr(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(text: str) -> float | None:
    return float(text) if text else None


class SharedAccount:
    """One worker's handle on the shared state of `account` (an `account_id`) in Redis.

    Every method is one atomic script call (see the module docstring): its rule holds
    across all workers at every instant, and its result (a `SharedState` snapshot, or a
    grant) is the state just after it, in Redis time. `last` is the newest snapshot any
    call returned. A call that cannot reach Redis raises `AccountStateUnavailable` within
    `call_timeout` seconds (whatever the client's own retries), and calls work again once
    Redis is back (a Redis restarted without persistence starts from an empty state).

    All workers of an account should use the same parameters: they travel with each call,
    so a call applies its own. `worker` names this worker (unique among the account's);
    its liveness lease lasts `lease_ttl` seconds from its last `heartbeat` or
    `acquire_slots`, after which its slots are reclaimed by the next call of anyone.
    Use a client that does not retry commands (`account_client`): a retried script whose
    first reply was lost applies twice.

    The defaults that differ from a lone `FleetGate`'s were measured with four workers on
    one account (`benchmarks/workers.py`): the slot limit grows by half a slot per round
    (`slot_increase=0.5`, per `slot_limit` accepted tasks) with no multiplicative cut
    (`slot_decrease=1.0`: the clamp to the slots in use at a refusal finds the limit), from
    a slow start of 16; the rate probes up to 90% of the learned ceiling
    (`rate_headroom=0.9`) with a bucket of 0.1 s (`rate_burst`): at that highest rate a
    full bucket plus a window of refills stays within the ceiling (0.9 * (1 + 0.1) < 1), so a
    service counting requests over a sliding window refuses none of the grants (a bucket of
    0.2 s let 27 + 5.4 through in one window on a ceiling of 30). Each probe above a limit
    costs a refusal that every worker shares the pause of.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        account: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        worker: str,
        lease_ttl: float = 10.0,
        slot_increase: float = 0.5,
        slot_start: float = 16.0,
        slot_decrease: float = 1.0,
        cooldown: float = 5.0,
        max_slots: float = 10_000.0,
        rate_safety: float = 0.9,
        rate_increase: float = 0.05,
        rate_headroom: float = 0.9,
        rate_burst: float = 0.1,
        window: float = 1.0,
        min_rate: float = 0.1,
        min_evidence: int = 5,
        retry_ratio: float = 0.2,
        retry_floor_per_second: float = 10.0,
        retry_max_tokens: float = 100.0,
        retry_initial_tokens: float = 10.0,
        probe_every: float = 0.25,
        probe_backoff_cap: float = 1.0,
        call_timeout: float = 2.0,
        expire_after: int = 86_400,
    ) -> None:
        if not account or not worker:
            raise ValueError("account and worker must be non-empty names")
        for name, value in (
            ("lease_ttl", lease_ttl),
            ("window", window),
            ("probe_every", probe_every),
            ("probe_backoff_cap", probe_backoff_cap),
        ):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not 0 < slot_decrease <= 1:
            raise ValueError(f"slot_decrease must be in (0, 1], got {slot_decrease!r}")
        if not 0 < rate_safety <= 1:
            raise ValueError(f"rate_safety must be in (0, 1], got {rate_safety!r}")
        if not (call_timeout > 0 and expire_after >= 1):
            raise ValueError("call_timeout and expire_after must be positive")
        if min_rate <= 0 or max_slots < 1 or retry_max_tokens < 1:
            raise ValueError("min_rate must be positive, max_slots and retry_max_tokens >= 1")
        self.client = client
        self.account = account
        self.worker = worker
        self.keys: Final = tuple(
            redis_key(namespace, "account", account, part)
            for part in ("state", "leases", "workers", "accepted")
        )
        """The account's keys: state, leases, workers, accepted."""
        self.lease_ttl = lease_ttl
        self.slot_increase, self.slot_decrease = slot_increase, slot_decrease
        self.slot_start = slot_start
        """Slots in use at most across all workers before the service has refused one
        (TCP's slow start): each accepted createTask adds one, so the bound doubles every
        round until the first NO_SLOT_AVAILABLE sets the learned limit. Without it four
        workers' first bursts each meet the account's limit before anyone has learned it."""
        self.cooldown, self.max_slots = cooldown, max_slots
        self.rate_safety, self.rate_increase = rate_safety, rate_increase
        self.rate_headroom, self.window = rate_headroom, window
        self.rate_burst = rate_burst
        """Seconds of the rate the bucket holds at most: a service that counts requests
        over a sliding window is never sent twice its rate within one (a bucket of a whole
        window would allow that: a full bucket and a window's refill)."""
        self.min_rate, self.min_evidence = min_rate, min_evidence
        self.retry_ratio = retry_ratio
        self.retry_floor_per_second = retry_floor_per_second
        self.retry_max_tokens = retry_max_tokens
        self.retry_initial_tokens = retry_initial_tokens
        self.probe_every, self.probe_backoff_cap = probe_every, probe_backoff_cap
        """The pacing of the account's slot probe (`acquire_probe`): the next after a
        refused one waits twice as long as the last, from `probe_every` up to
        `probe_backoff_cap` seconds; after an accepted one, none."""
        self.call_timeout = call_timeout
        self.expire_after = expire_after
        self.last: SharedState | None = None
        register = client.register_script
        self._state = register(STATE_LUA)
        self._heartbeat = register(HEARTBEAT_LUA)
        self._pause = register(PAUSE_LUA)
        self._open_circuit = register(OPEN_CIRCUIT_LUA)
        self._close_circuit = register(CLOSE_CIRCUIT_LUA)
        self._acquire_slots = register(ACQUIRE_SLOTS_LUA)
        self._release_slots = register(RELEASE_SLOTS_LUA)
        self._slot_refused = register(SLOT_REFUSED_LUA)
        self._slot_accepted = register(SLOT_ACCEPTED_LUA)
        self._acquire_rate = register(ACQUIRE_RATE_LUA)
        self._acquire_probe = register(ACQUIRE_PROBE_LUA)
        self._probe_answered = register(PROBE_ANSWERED_LUA)
        self._rate_limited = register(RATE_LIMITED_LUA)
        self._requests_accepted = register(REQUESTS_ACCEPTED_LUA)
        self._acquire_retries = register(ACQUIRE_RETRIES_LUA)
        self._first_attempts = register(FIRST_ATTEMPTS_LUA)

    async def _run(self, script: AsyncScript, *args: str) -> tuple[str, SharedState]:
        """Run `script` (one EVALSHA; EVAL once more if Redis lost it) within
        `call_timeout`; return its result and the snapshot."""
        head = (self.worker, repr(float(self.lease_ttl)), str(int(self.expire_after)))
        try:
            async with asyncio.timeout(self.call_timeout):
                reply = await script(keys=self.keys, args=(*head, *args))
        except _UNAVAILABLE as exc:
            raise AccountStateUnavailable(
                f"shared account state unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        values = [_text(value) for value in reply]
        state = SharedState(
            server_time=float(values[1]),
            paused_until=float(values[2]),
            pause_reason=values[3],
            circuit_open_until=float(values[4]),
            circuit_reason=values[5],
            slot_limit=_optional(values[6]),
            slots_in_use=int(values[7]),
            rate=_optional(values[8]),
            workers=int(values[9]),
            leased=int(values[10]),
        )
        self.last = state
        return values[0], state

    async def state(self) -> SharedState:
        """The shared state now (dead workers' slots reclaimed first)."""
        return (await self._run(self._state))[1]

    async def heartbeat(self, *, held: int | None = None) -> SharedState:
        """Mark this worker alive for `lease_ttl` seconds and reclaim the slots of workers
        whose liveness lease ended. `held`: the slots this worker knows it holds; a larger
        shared lease (left by a call whose reply was lost) is lowered to it, never raised."""
        known = "" if held is None else str(max(0, int(held)))
        return (await self._run(self._heartbeat, known))[1]

    async def pause(self, seconds: float, reason: str) -> SharedState:
        """Pause the account until `seconds` from now (Redis time), unless it already is
        paused longer: `paused_until` only ever moves later. The others see it at their
        next call. Pacing restarts at the pause's end (the rate bucket is emptied)."""
        if seconds < 0:
            raise ValueError(f"a pause lasts a non-negative time, got {seconds!r}")
        duration = _number(seconds, "seconds", infinite=True)
        return (await self._run(self._pause, duration, reason))[1]

    async def open_circuit(
        self, seconds: float, reason: str, *, sent_at: float | None = None
    ) -> SharedState:
        """Open the circuit until `seconds` from now (`inf`: until `close_circuit`), unless
        it is open longer already. `sent_at` (Redis time the failing request left): a
        failure older than the success that last closed the circuit does not reopen it."""
        if seconds < 0:
            raise ValueError(f"a circuit opens for a non-negative time, got {seconds!r}")
        sent = "" if sent_at is None else _number(sent_at, "sent_at")
        duration = _number(seconds, "seconds", infinite=True)
        return (await self._run(self._open_circuit, duration, reason, sent))[1]

    async def close_circuit(self, *, sent_at: float | None = None) -> SharedState:
        """Close the circuit (the account works again). `sent_at` (Redis time the
        successful request left): a success older than the newest failure that opened the
        circuit does not close it."""
        sent = "" if sent_at is None else _number(sent_at, "sent_at")
        return (await self._run(self._close_circuit, sent))[1]

    async def acquire_slots(self, want: int) -> int:
        """Lease up to `want` task slots to this worker; return how many. Atomically,
        `slots_in_use + granted <= floor(slot_limit)` (no bound while the limit is
        unknown); also marks this worker alive, like `heartbeat`."""
        return int(
            (
                await self._run(
                    self._acquire_slots, str(max(0, int(want))), repr(float(self.slot_start))
                )
            )[0]
        )

    async def release_slots(self, count: int) -> int:
        """Give back up to `count` of this worker's leased slots; return how many it held
        and gave back (a lease already reclaimed gives nothing back)."""
        return int((await self._run(self._release_slots, str(max(0, int(count)))))[0])

    async def slot_refused(self, sent_at: float) -> SharedState:
        """NO_SLOT_AVAILABLE for a createTask sent at `sent_at` (Redis time). The first sets
        `slot_limit` to the slots in use (at least 1); later ones multiply it by
        `slot_decrease`, at most once per `cooldown` seconds and only for requests sent
        after the last decrease (once per round, as TCP); it never exceeds the slots in
        use. Leases above a lowered limit stay (the callers give back what they do not
        need); no new slot is granted until `slots_in_use` is below the limit."""
        return (
            await self._run(
                self._slot_refused,
                _number(sent_at, "sent_at"),
                repr(float(self.slot_decrease)),
                repr(float(self.cooldown)),
                repr(float(self.max_slots)),
            )
        )[1]

    async def slot_accepted(self, n: int = 1) -> SharedState:
        """`n` createTasks were accepted: `slot_limit` grows by `slot_increase / slot_limit`
        each (`slot_increase` per round of `slot_limit` tasks), up to `max_slots` (nothing
        while no limit is known). Per round, not per task: the probe above the limit costs
        one refusal per round across all the workers, where a fixed step per task (what a
        lone `AdaptiveConcurrency` takes, to climb back fast) made the shared limit
        overshoot by half the create rate (measured by `benchmarks/workers.py`)."""
        return (
            await self._run(
                self._slot_accepted,
                str(max(0, int(n))),
                repr(float(self.slot_increase)),
                repr(float(self.max_slots)),
                repr(float(self.slot_start)),
            )
        )[1]

    async def acquire_rate(self, want: int) -> int:
        """Take up to `want` request tokens from the account's bucket; return how many.

        With no learned rate, all of them. With one, the bucket refills at `rate` per second
        of Redis time and holds at most `max(1, rate * rate_burst)`, so over any interval of
        Redis time the grants total at most `rate * elapsed` plus one bucket, across all
        workers. Nothing is granted while the account is paused. A call that wants more
        than the bucket holds is demand: the rate then grows by `rate_increase` per window,
        up to `rate_headroom` times the ceiling (see `rate_limited`). A granted token is
        spent (a worker that dies with tokens in hand loses at most that capacity)."""
        return int(
            (
                await self._run(
                    self._acquire_rate,
                    str(max(0, int(want))),
                    repr(float(self.window)),
                    repr(float(self.rate_increase)),
                    repr(float(self.rate_headroom)),
                    repr(float(self.rate_burst)),
                )
            )[0]
        )

    async def acquire_probe(self) -> bool:
        """Take the account's one slot probe: the right to send one createTask without a
        leased slot, beyond the learned limit (see `SharedGate`). Granted only once a slot
        limit is learned, to one worker at a time (a grant unanswered for `lease_ttl`
        seconds lapses), and paced by the answers (`probe_answered`). Also marks this
        worker alive."""
        reply = await self._run(self._acquire_probe, repr(float(self.lease_ttl)))
        return reply[0] == "1"

    async def probe_answered(self, outcome: str) -> SharedState:
        """The probe's outcome: `accepted` (its slot joins this worker's lease, which may
        take `slots_in_use` one above the limit; the next probe may go at once),
        `refused` (NO_SLOT_AVAILABLE: the next waits twice as long as the last, from
        `probe_every` up to `probe_backoff_cap`; the limit is unchanged, the probe being
        beyond it) or `void` (not sent or surely not created: the grant ends)."""
        if outcome not in ("accepted", "refused", "void"):
            raise ValueError(f"a probe is accepted, refused or void, got {outcome!r}")
        every, cap = repr(float(self.probe_every)), repr(float(self.probe_backoff_cap))
        return (await self._run(self._probe_answered, outcome, every, cap))[1]

    async def rate_limited(self, sent_at: float) -> SharedState:
        """RATE_LIMITED (16) for a request sent at `sent_at` (Redis time): learn the rate.

        The measure is the requests reported accepted (`requests_accepted`, all workers)
        in the last `window`; `peak` the most ever accepted within one window. With fewer
        than `min_evidence` accepted in the window, nothing is learned (the pause
        suffices); a request sent before the last decrease teaches nothing new (once per
        round). Else the ceiling is `max(min_rate, measured / window, peak / window)` (no
        higher than before, never below `peak / window`), and `rate` becomes
        `max(min_rate, rate_safety * ceiling)` if that is lower: a learned rate never falls
        below `rate_safety` times what the account was seen to accept."""
        return (
            await self._run(
                self._rate_limited,
                _number(sent_at, "sent_at"),
                repr(float(self.window)),
                repr(float(self.rate_safety)),
                repr(float(self.min_rate)),
                str(int(self.min_evidence)),
            )
        )[1]

    async def requests_accepted(self, n: int = 0, *, sent_at: Iterable[float] = ()) -> SharedState:
        """Count requests the service accepted (answered in the API's own words), for the
        rate measurement: `n` of them at the server's now, plus one at each of `sent_at`
        (Redis times they were sent; older than two windows: dropped).

        Requests are counted when reported, not when granted a token: a token whose request
        was refused must not raise the peak, which is a floor of the learned rate. Counting
        a batch at the time of its report may count up to one report period's requests in
        a window too many: report at most every `window * (1 / rate_safety - 1)` seconds
        (0.11 s by default), or give `sent_at`.

        A peak above the learned ceiling raises the ceiling to it, and the rate to at least
        `rate_safety` times it: the refusal that set the ceiling was measured before every
        worker had reported what the account accepted just before it."""
        times = [_number(at, "sent_at") for at in sent_at]
        window = repr(float(self.window))
        safety = repr(float(self.rate_safety))
        count = str(max(0, int(n)))
        return (await self._run(self._requests_accepted, window, safety, count, *times))[1]

    async def acquire_retries(self, want: int) -> int:
        """Take up to `want` tokens from the account's shared retry budget; return how many.
        As `RetryBudget`: each first attempt earns `retry_ratio` of a token, tokens accrue
        at `retry_floor_per_second` from the first use, at most `retry_max_tokens`."""
        reply = await self._run(self._acquire_retries, str(max(0, int(want))), *self._budget())
        return int(reply[0])

    async def first_attempts(self, n: int = 1) -> float:
        """`n` first attempts went: the budget earns `retry_ratio` of a token each (up to
        `retry_max_tokens`). Returns the tokens now in the budget."""
        reply = await self._run(
            self._first_attempts,
            str(max(0, int(n))),
            *self._budget(),
            repr(float(self.retry_ratio)),
        )
        return float(reply[0])

    def _budget(self) -> tuple[str, str, str]:
        return (
            repr(float(self.retry_floor_per_second)),
            repr(float(self.retry_max_tokens)),
            repr(float(self.retry_initial_tokens)),
        )
