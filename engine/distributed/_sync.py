"""`AccountSync`: the background task that keeps a worker's `SharedGate` in step with the
account's shared state in Redis (`SharedAccount`), every `period` seconds.

Each round: publish this worker's news (pauses, an opened circuit, slot and rate signals,
requests answered, the slot probe's answer), give back spare slots, lease the slots and
tokens jobs wait for (and the account's slot probe, when they still wait), read
the shared state with its server time (so the workers' clocks need not agree: Redis time is
turned into this worker's clock by the offset measured in the same round trip, accurate to
that round trip), and wake the jobs the change concerns. A round that cannot reach Redis
leaves the view as it was; the gate treats a view older than its `stale_after` as Redis
being away (see `SharedGate`). News that could not be published is kept for the next round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterable

import anyio

from captchaflow.engine._clock import Clock

from ._account import AccountStateUnavailable, SharedAccount, SharedState
from ._gate import SharedEvent, SharedGate

__all__ = ["AccountSync"]

_log = logging.getLogger("captchaflow")


class AccountSync:
    """Keeps `gate` in step with `account` on `clock`; `wake` re-runs jobs (an engine's
    `wake`). `slot_batch`: most slots leased in one round; `keep_slots`: slots kept in hand
    beyond those waited for."""

    def __init__(
        self,
        gate: SharedGate,
        account: SharedAccount,
        clock: Clock,
        wake: Callable[[Iterable[Hashable]], None],
        *,
        period: float = 0.025,
        slot_batch: int = 8,
        keep_slots: int = 0,
    ) -> None:
        if not (period > 0 and math.isfinite(period)):
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        self.gate, self.account, self.clock, self._wake = gate, account, clock, wake
        self.period, self.slot_batch, self.keep_slots = period, slot_batch, keep_slots
        self.rounds = 0
        self.failed_rounds = 0
        self._unavailable = False
        self._pending: list[SharedEvent] = []
        self._accepted = 0

    async def run(self) -> None:
        """Sync every `period` seconds until cancelled; never raises for Redis being away."""
        while True:
            await self.sync_once()
            await anyio.sleep(self.period)

    async def sync_once(self) -> SharedState | None:
        """One round (see the module docstring); the state read, or None if Redis could not
        be reached."""
        gate = self.gate
        self._pending.extend(gate.events)
        gate.events.clear()
        self._accepted += gate.take_accepted()
        try:
            state = await self._round()
        except AccountStateUnavailable as exc:
            self.failed_rounds += 1
            if not self._unavailable:
                _log.warning("captchaflow: shared account state unreachable (%s); retrying", exc)
                self._unavailable = True
            return None
        if self._unavailable:
            _log.warning("captchaflow: shared account state reachable again")
            self._unavailable = False
        self.rounds += 1
        self._wake(gate.wakeups())
        return state

    async def _round(self) -> SharedState:
        gate, account = self.gate, self.account
        view = gate.view
        # The lease Redis holds for us is what we hold (a grant whose reply was lost is
        # put right here).
        held = view.slots + len(gate.slot_holders) + gate.owed_slots
        state = await account.heartbeat(held=held)
        offset = self.clock.now() - state.server_time  # server time + offset = our time
        # Probe answers first: an accepted probe's slot joins the lease before any spare
        # slot (it may be that one, its task done) is given back.
        for event in [event for event in self._pending if event.kind == "probe"]:
            await account.probe_answered(event.reason)
            self._pending.remove(event)
        # Slots handed back first: a refusal's clamp to the slots in use must not count the
        # slots of the createTasks it refused.
        spare = gate.spare_slots(self.keep_slots)
        if spare:
            try:
                await account.release_slots(spare)
            except BaseException:
                gate.owed_slots += spare  # not given back yet: next round
                raise
        accepted_slots = sum(event.kind == "slot_accepted" for event in self._pending)
        while self._pending:
            event = self._pending[0]
            if event.kind != "slot_accepted":
                await self._publish(event, offset)
            self._pending.pop(0)
        if accepted_slots:
            await account.slot_accepted(accepted_slots)
        if self._accepted:
            await account.requests_accepted(self._accepted)
            self._accepted = 0
        wanted = gate.wanted_slots
        if wanted:
            gate.leased(slots=await account.acquire_slots(min(wanted, self.slot_batch)))
        if gate.wants_probe(self.clock.now()) and await account.acquire_probe():
            gate.probe_granted()
        state = account.last or state
        wanted_tokens = gate.wanted_tokens
        if state.rate is not None and wanted_tokens:
            gate.leased(tokens=await account.acquire_rate(wanted_tokens))
            state = account.last or state
        offset = self.clock.now() - state.server_time
        gate.synced(
            self.clock.now(),
            paused_until=state.paused_until + offset,
            pause_reason=state.pause_reason,
            circuit_until=state.circuit_open_until + offset,
            circuit_reason=state.circuit_reason,
            paced=state.rate is not None,
            over=state.over_limit,
        )
        return state

    async def _publish(self, event: SharedEvent, offset: float) -> None:
        account, now = self.account, self.clock.now()
        if event.kind == "pause":
            await account.pause(max(0.0, event.until - now), event.reason)
        elif event.kind == "circuit":
            await account.open_circuit(max(0.0, event.until - now), event.reason)
        elif event.kind == "slot_refused":
            await account.slot_refused(event.sent_at - offset)
        elif event.kind == "rate_limited":
            await account.rate_limited(event.sent_at - offset)
