"""`SharedGate`: one worker's account gate when many workers share an account through Redis.

Theory of operation. Each worker keeps its own `FleetGate` (its local signals: pauses on
the API's word, the failure-rate breaker, the circuit, its own pacing) and adds what the
account's other workers know, from a local view: `SharedView`. The gate never does I/O; a
background task (`AccountSync`) keeps the view in step with the shared state in Redis and
carries this worker's news the other way. So decisions stay sans-IO and fast, and Redis is
asked once per sync, not once per request.

What the view holds, and how it binds the worker:

- a pause published by any worker (`paused_until`, in this worker's clock): every request
  waits for its end; an open circuit (`circuit_until`: a permanent account error met by
  some worker) fails every new task at once, as the local circuit does. Either reaches the
  other workers at their next sync: within one sync period plus a round trip.
- task slots: a createTask needs a slot leased from the account's shared count (granted in
  small leases, never beyond the learned limit across all workers); the slot is the job's
  until it finishes; slots left over go back.
- the slot probe: the account learns that a slot is free only when some worker's poll
  finds its task done, up to a poll interval after the service freed it. So while jobs
  wait for a slot and none is in hand, the sync task asks Redis for the account's one
  probe (`SharedAccount.acquire_probe`: one worker at a time, paced by the answers); the
  first waiting job then sends its createTask without a slot (on a paced account with a
  token leased in the same sync round). Accepted, its slot joins
  the worker's lease, and the next slot freed here goes back to the account (`over`);
  refused, it is not news (it was beyond the limit). So the leases go beyond the learned
  limit only by accepted probes (tasks the service took) or a lowered limit, and come
  back as slots free.
- request tokens: once the account has a learned rate, every request needs a token leased
  from the shared bucket; a worker spends at most what it leased. Tokens are leased for
  jobs that wait for one and could spend it (polls; createTasks, no more of them than the
  slots in hand), and lapse at the next sync when no job waits for them (a job the local
  gate holds waits for the local gate, and a createTask with no slot waits for a slot, not
  for a token): kept for later, they would go out together in a burst beyond the bucket's
  size, which a service counting requests over a sliding window refuses; leased for jobs
  that cannot spend them, they would starve the other workers' polls.

When Redis cannot be reached (the view is older than `stale_after`), the worker keeps its
jobs: requests for tasks that exist (polls) go without tokens, paced by the local gate, and
createTasks wait for slots (no new tasks until Redis is back).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Final

import attrs

from captchaflow.policies import (
    Admit,
    FleetGate,
    GateDecision,
    Hold,
    Refuse,
)
from captchaflow.policies._failure import Bucket, Failure
from captchaflow.transports import Endpoint, ErrorCode

__all__ = ["SharedEvent", "SharedGate", "SharedView"]

_CREATE = Endpoint.CREATE_TASK


@attrs.define
class SharedView:
    """The account's shared state as this worker last saw it, in the engine clock's time,
    and the leases in hand."""

    paused_until: float = -math.inf
    pause_reason: str = ""
    circuit_until: float = -math.inf
    circuit_reason: str = ""
    paced: bool = False
    """The account has a learned rate: every request needs a leased token."""
    slots: int = 0
    """Slots leased to this worker and not taken by a job."""
    over: int = 0
    """How many slots the account's leases were above its learned limit (an accepted
    probe's, or a lowered limit's): slots freed here go back to the account, not to the
    next job here, until that many have."""
    tokens: int = 0
    """Request tokens leased to this worker and not spent (never more than jobs wait for
    after a sync: see `SharedGate.synced`)."""
    synced_at: float | None = None
    """When the view was last brought in step with Redis (None: never)."""

    def stale(self, now: float, stale_after: float) -> bool:
        """True when the view is older than `stale_after` seconds (or was never synced)."""
        return self.synced_at is None or now - self.synced_at > stale_after


@attrs.frozen
class SharedEvent:
    """News for the other workers, which the sync task publishes: `kind` is `pause`,
    `circuit`, `slot_refused`, `slot_accepted`, `rate_limited` or `probe` (`reason`: the
    probe's answer, `accepted`, `refused` or `void`); `until` the end of a pause or
    circuit, `sent_at` when the refused request left (engine time). (Requests answered are
    counted apart: `take_accepted`.)"""

    kind: str
    until: float = 0.0
    reason: str = ""
    sent_at: float = 0.0


SAME_TIME: Final = 0.05
"""Seconds within which two readings of one shared time (a pause's or a circuit's end) are the
same time: the clock offset each sync measures jitters by a round trip to Redis."""


@attrs.define(kw_only=True)
class SharedGate:
    """An `AccountGate` for one worker of many on an account: the local `FleetGate`'s
    decisions, bound by the shared `view` (pauses, circuit, leased slots and tokens). The
    sync task reads `wanted_slots`/`wanted_tokens`, drains `events`, returns `spare_slots()`
    and calls `leased(...)` / `synced(...)`; see the module docstring."""

    local: FleetGate = attrs.field(factory=FleetGate)
    view: SharedView = attrs.field(factory=SharedView)
    stale_after: float = 2.0
    """Seconds without a sync after which the view counts as stale (Redis unreachable)."""
    circuit_seconds: float = 300.0
    """How long a circuit this worker opens refuses new tasks on the other workers."""
    events: list[SharedEvent] = attrs.field(factory=list)
    slot_holders: dict[Hashable, None] = attrs.field(factory=dict)
    """Jobs holding a shared slot (from admission of their createTask to their end)."""
    waiting_slot: dict[Hashable, None] = attrs.field(factory=dict)
    """Jobs whose createTask waits for a slot (first come, first woken)."""
    held_locally: dict[Hashable, None] = attrs.field(factory=dict)
    """CreateTasks that found a slot in hand and were held by the local gate (which wakes
    them): no use waking them for a slot."""
    waiting_token: dict[Hashable, None] = attrs.field(factory=dict)
    """Jobs that would send once given a token: polls, and createTasks holding a slot."""
    waiting_token_with_slot: dict[Hashable, None] = attrs.field(factory=dict)
    """CreateTasks that found a slot in hand but no token: as many of them as there are
    slots in hand can send once given tokens (the others will wait for a slot)."""
    owed_slots: int = 0
    """Leased slots owed back to the account: those the service refused a createTask with
    (NO_SLOT_AVAILABLE), and those freed while the account was over its limit."""
    probes: bool = True
    """Whether to ask for the account's slot probe while jobs wait for a slot (see the
    module docstring)."""
    probing: Hashable | None = None
    """The job the account's probe was granted to, until its answer."""
    _wake: list[Hashable] = attrs.field(factory=list, alias="_wake")
    _accepted: int = attrs.field(default=0, alias="_accepted")

    # -- what the sync task reads and feeds ------------------------------------------------

    @property
    def wanted_slots(self) -> int:
        """Slots jobs are waiting for beyond those in hand."""
        return max(0, len(self.waiting_slot) - self.view.slots)

    def wants_probe(self, now: float) -> bool:
        """Whether the sync task should ask for the account's slot probe: probes on, jobs
        waiting for a slot, none in hand, no probe here already, and the view fresh."""
        view = self.view
        return (
            self.probes
            and self.probing is None
            and bool(self.waiting_slot)
            and view.slots <= 0
            and not view.stale(now, self.stale_after)
        )

    def probe_granted(self) -> None:
        """The sync task got the account's probe: the first job waiting for a slot sends it
        (woken); with none waiting any more, the grant goes back unused. On a paced account
        the prober wants a token at once, so that the same sync round can lease it one
        (else it would wait a round for it, and the account's one probe with it)."""
        if not self.waiting_slot:
            self.events.append(SharedEvent("probe", reason="void"))
            return
        self.probing = prober = next(iter(self.waiting_slot))
        if self.view.paced:
            self.waiting_token[prober] = None
        self._wake.append(prober)

    @property
    def wanted_tokens(self) -> int:
        """Tokens jobs are waiting for and could spend, beyond those in hand."""
        return max(0, self._spendable_tokens() - self.view.tokens)

    def take_accepted(self) -> int:
        """Requests the service answered since the last call (for the shared measurement)."""
        accepted, self._accepted = self._accepted, 0
        return accepted

    def spare_slots(self, keep: int) -> int:
        """Give back the slots in hand beyond `keep` plus those waited for, and those owed
        (`owed_slots`); return how many (the sync task releases them in Redis)."""
        spare = max(0, self.view.slots - keep - len(self.waiting_slot))
        self.view.slots -= spare
        spare += self.owed_slots
        self.owed_slots = 0
        return spare

    def leased(self, *, slots: int = 0, tokens: int = 0) -> None:
        """Slots and tokens the sync task leased for this worker: wake who waited."""
        self.view.slots += slots
        self.view.tokens += tokens
        if slots:
            self._wake_for_slots()
        if tokens:  # polls first: their answers free slots
            self._wake.extend(self.waiting_token)
            self._wake.extend(self.waiting_token_with_slot)

    def synced(
        self,
        now: float,
        *,
        paused_until: float,
        pause_reason: str,
        circuit_until: float,
        circuit_reason: str,
        paced: bool,
        over: int = 0,
    ) -> None:
        """The shared state as just read (times in this worker's clock): adopt it, and wake
        every job when a pause began or grew, a circuit opened, closed or grew, or pacing
        started or stopped. Times that moved by less than `SAME_TIME` count as unchanged:
        each sync turns Redis's times into this worker's clock by an offset measured anew,
        so they jitter by a round trip (and a past pause or a closed circuit is no news)."""
        view = self.view
        circuit_open = circuit_until > now
        changed = (
            (paused_until > now and paused_until > view.paused_until + SAME_TIME)
            or circuit_open != (view.circuit_until > now)
            or (circuit_open and abs(circuit_until - view.circuit_until) > SAME_TIME)
            or paced != view.paced
        )
        view.paused_until, view.pause_reason = max(paused_until, view.paused_until), pause_reason
        view.circuit_until, view.circuit_reason = circuit_until, circuit_reason
        view.paced = paced
        view.over = max(0, over)
        # Tokens are the account's rate now, not savings: those no job waits for lapse, so
        # that no worker can later spend more at once than the shared bucket holds.
        view.tokens = min(view.tokens, self._spendable_tokens()) if paced else 0
        view.synced_at = now
        if changed:
            self._wake.extend(self.local.live)

    # -- the AccountGate protocol ----------------------------------------------------------

    def register(self, job: Hashable, now: float) -> None:
        self.local.register(job, now)

    def standing(self, job: Hashable, endpoint: Endpoint, now: float) -> Refuse | Hold | None:
        held = self._shared_hold(endpoint, now)
        return held if held is not None else self.local.standing(job, endpoint, now)

    def admit(self, job: Hashable, endpoint: Endpoint, *, retry: bool, now: float) -> GateDecision:
        held = self._shared_hold(endpoint, now)
        if held is not None:
            return held
        view = self.view
        stale = view.stale(now, self.stale_after)
        no_slot = endpoint is _CREATE and job not in self.slot_holders and view.slots <= 0
        # The probe waits, as every createTask without a slot, while Redis is unreachable.
        probe = no_slot and job is self.probing and not stale
        if no_slot and not probe:
            self.waiting_slot[job] = None
            self.held_locally.pop(job, None)
            # Not waiting for a token now: a token leased for it would be kept from the
            # jobs that can spend it (polls, above all, whose answers free slots).
            self._stop_waiting_for_token(job)
            reason = "Redis unreachable: no new tasks" if stale else "waiting for a slot"
            return Hold(None, f"{reason} (shared account)")
        needs_token = view.paced and not (stale and endpoint is not _CREATE)
        if needs_token and view.tokens <= 0:
            self._stop_waiting_for_token(job)
            if no_slot or job in self.slot_holders or endpoint is not _CREATE:
                self.waiting_token[job] = None
            else:  # it needs one of the slots in hand too: keep one for it
                self.waiting_token_with_slot[job] = None
                self.waiting_slot[job] = None
            return Hold(None, "paced to the shared account's rate")
        decision = self.local.admit(job, endpoint, retry=retry, now=now)
        if not isinstance(decision, Admit):
            # Held by the local gate, not for want of a token: a token leased for it would
            # be kept unspent (and spent later with others, in a burst).
            self._stop_waiting_for_token(job)
            if job in self.waiting_slot:  # the slot it was woken for goes to the next job
                self.held_locally[job] = None
                self._wake_for_slots()
            return decision
        if endpoint is _CREATE and job not in self.slot_holders:
            if not probe:
                view.slots -= 1
                if job is self.probing:  # a slot came first: the probe is not needed
                    self._probe_answer("void")
            self.slot_holders[job] = None
            self.waiting_slot.pop(job, None)
            self.held_locally.pop(job, None)
        if needs_token:
            view.tokens -= 1
            self._stop_waiting_for_token(job)
        return decision

    def observe(
        self,
        job: Hashable,
        endpoint: Endpoint,
        failure: Failure | None,
        *,
        sent_at: float,
        now: float,
    ) -> None:
        local = self.local
        pause_before = local.pause.until if local.pause is not None else -math.inf
        circuit_before = local.circuit is not None and local.circuit.is_open
        local.observe(job, endpoint, failure, sent_at=sent_at, now=now)
        if failure is None or (
            failure.code is not None and failure.code != ErrorCode.RATE_LIMITED
        ):  # the account took the request (a RATE_LIMITED one it refused; noise says nothing)
            self._accepted += 1
        if local.pause is not None and local.pause.until > pause_before:
            reason = failure.name if failure is not None else "paused"
            self.events.append(SharedEvent("pause", until=local.pause.until, reason=reason))
        if local.circuit is not None and local.circuit.is_open and not circuit_before:
            reason = failure.name if failure is not None else "circuit open"
            until = now + self.circuit_seconds
            self.events.append(SharedEvent("circuit", until=until, reason=reason))
        if failure is not None and failure.code == ErrorCode.RATE_LIMITED:
            self.events.append(SharedEvent("rate_limited", sent_at=sent_at))
        if endpoint is not _CREATE:
            return
        if job is self.probing:
            if failure is None or failure.may_have_billed:
                self._probe_answer("accepted")  # the task is there (or may be): its slot
            else:
                del self.slot_holders[job]  # no task: nothing to give back, nothing learned
                refused = failure.code == ErrorCode.NO_SLOT_AVAILABLE
                self._probe_answer("refused" if refused else "void")
                return
        if failure is None:
            self.events.append(SharedEvent("slot_accepted"))
            return
        if failure.code == ErrorCode.NO_SLOT_AVAILABLE:
            self.events.append(SharedEvent("slot_refused", sent_at=sent_at))
            if job in self.slot_holders:
                # The service is full: this slot is not there. Hand it back to the account
                # rather than to the next job here, which would only be refused too.
                del self.slot_holders[job]
                self.owed_slots += 1
        elif not failure.may_have_billed:
            self._give_back_slot(job)  # no task: the slot is free (it may be taken again)
            self._wake_for_slots()

    def release(self, job: Hashable, now: float) -> None:
        if job is self.probing:  # sent and never answered: it may have made a task
            self._probe_answer("accepted" if job in self.slot_holders else "void")
        self.local.release(job, now)
        self.waiting_slot.pop(job, None)
        self.held_locally.pop(job, None)
        self._stop_waiting_for_token(job)
        self._give_back_slot(job)
        self._wake_for_slots()  # for its slot, or the one it was woken for

    def expected_task_seconds(self) -> float | None:
        """What the local gate learned of this worker's tasks (see `TimingGate`)."""
        return self.local.expected_task_seconds()

    def queues_for_slots(self) -> bool:
        """Always: every createTask waits for a slot leased from the account (see
        `SlotQueueGate`)."""
        return True

    def task_left_running(self, job: Hashable, now: float) -> None:
        """Tell the local gate (see `TimingGate`); the shared slot goes back when the job
        is released, as before."""
        self.local.task_left_running(job, now)

    def wakeups(self) -> list[Hashable]:
        woken = self.local.wakeups()
        if self._wake:
            woken = list(dict.fromkeys([*woken, *self._wake]))
            self._wake.clear()
        return woken

    # -- internals -------------------------------------------------------------------------

    def _shared_hold(self, endpoint: Endpoint, now: float) -> Refuse | Hold | None:
        view = self.view
        if endpoint is _CREATE and now < view.circuit_until:
            failure = Failure(
                Bucket.PERMANENT,
                view.circuit_reason or "ACCOUNT_CIRCUIT_OPEN",
                "another worker of the account met a permanent account error",
                endpoint,
            )
            return Refuse(failure, "account circuit open (shared): no new tasks")
        if now < view.paused_until:
            return Hold(view.paused_until, f"account paused (shared): {view.pause_reason}")
        return None

    def _spendable_tokens(self) -> int:
        """How many tokens the jobs waiting for one could spend now."""
        with_slot = min(max(0, self.view.slots), len(self.waiting_token_with_slot))
        return len(self.waiting_token) + with_slot

    def _stop_waiting_for_token(self, job: Hashable) -> None:
        self.waiting_token.pop(job, None)
        self.waiting_token_with_slot.pop(job, None)

    def _probe_answer(self, outcome: str) -> None:
        self.probing = None
        self.events.append(SharedEvent("probe", reason=outcome))

    def _give_back_slot(self, job: Hashable) -> None:
        if job not in self.slot_holders:
            return
        del self.slot_holders[job]
        view = self.view
        if view.over > 0:  # the account is over its limit: this slot is its own again
            view.over -= 1
            self.owed_slots += 1
            return
        view.slots += 1

    def _wake_for_slots(self) -> None:
        """Wake, first come first, as many jobs waiting for a slot as there are slots in
        hand that no createTask waiting for a token will take, skipping those the local gate
        holds. (Waking every waiting job for each slot re-ran them all to hold all but one
        again; a woken job that does not take its slot passes it on: see `admit` and
        `release`.)"""
        free = self.view.slots - len(self.waiting_token_with_slot)
        if free <= 0:
            return
        held_locally, with_slot = self.held_locally, self.waiting_token_with_slot
        for job in self.waiting_slot:
            if job not in held_locally and job not in with_slot:
                self._wake.append(job)
                free -= 1
                if free == 0:
                    return
