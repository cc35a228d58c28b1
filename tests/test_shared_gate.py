"""`SharedGate`, sans-IO: a worker's local gate bound by the shared view (pauses, circuit,
leased slots and tokens), and the news it queues for the other workers."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from captchaflow.engine import Simulation
from captchaflow.engine.distributed._gate import SharedGate
from captchaflow.policies import (
    AdaptiveConcurrency,
    Admit,
    Bucket,
    Failure,
    FleetGate,
    Hold,
    Refuse,
    SlotQueueGate,
    StartupWindow,
    TaskDurations,
    TimingGate,
)
from captchaflow.transports import Endpoint, ErrorCode
from captchaflow.transports.sim import AccountSpec, Scenario, SimulatedAPI

CREATE, POLL = Endpoint.CREATE_TASK, Endpoint.GET_TASK_RESULT


def synced(gate: SharedGate, now: float = 0.0, **changes: object) -> SharedGate:
    state: dict[str, object] = {
        "paused_until": -math.inf,
        "pause_reason": "",
        "circuit_until": -math.inf,
        "circuit_reason": "",
        "paced": False,
    }
    state.update(changes)
    gate.synced(now, **state)  # type: ignore[arg-type]
    return gate


def failure(
    code: ErrorCode, endpoint: Endpoint = CREATE, bucket: Bucket = Bucket.RETRYABLE
) -> Failure:
    return Failure(bucket, code.name, "", endpoint, code=int(code))


def test_a_create_waits_for_a_leased_slot_and_keeps_it_until_the_job_ends() -> None:
    gate = synced(SharedGate())
    gate.register("a", 0)
    held = gate.admit("a", CREATE, retry=False, now=0)
    assert isinstance(held, Hold) and held.until is None and gate.wanted_slots == 1
    gate.leased(slots=1)
    assert gate.wakeups() == ["a"]
    assert isinstance(gate.admit("a", CREATE, retry=False, now=0), Admit)
    assert gate.view.slots == 0 and gate.wanted_slots == 0
    gate.observe("a", CREATE, None, sent_at=0, now=0.1)
    assert isinstance(gate.admit("a", POLL, retry=False, now=1), Admit)  # polls need none
    gate.release("a", 2)
    assert gate.view.slots == 1  # back in hand, for the next job or to give back
    assert gate.spare_slots(keep=0) == 1 and gate.view.slots == 0


def test_a_create_that_created_nothing_gives_its_slot_back() -> None:
    gate = synced(SharedGate())
    gate.register("a", 0)
    gate.leased(slots=1)
    assert isinstance(gate.admit("a", CREATE, retry=False, now=0), Admit)
    zero = failure(ErrorCode.ZERO_BALANCE, bucket=Bucket.PERMANENT)
    gate.observe("a", CREATE, zero, sent_at=0, now=0.1)
    assert gate.view.slots == 1 and gate.owed_slots == 0


def test_a_slot_the_service_refused_goes_back_to_the_account_not_to_the_next_job() -> None:
    """NO_SLOT_AVAILABLE says the leased slot is not there: the next job here must not take
    it (it would be refused too); the sync gives it back to the account."""
    gate = synced(SharedGate())
    gate.register("a", 0)
    gate.leased(slots=1)
    assert isinstance(gate.admit("a", CREATE, retry=False, now=0), Admit)
    gate.observe("a", CREATE, failure(ErrorCode.NO_SLOT_AVAILABLE), sent_at=0, now=0.1)
    assert gate.view.slots == 0 and gate.owed_slots == 1
    assert [event.kind for event in gate.events] == ["slot_refused"]
    assert gate.spare_slots(keep=0) == 1 and gate.owed_slots == 0


def test_a_shared_pause_holds_every_request_until_its_end() -> None:
    gate = synced(SharedGate(), paused_until=30.0, pause_reason="RATE_LIMITED")
    gate.leased(slots=1)
    for endpoint in (CREATE, POLL):
        held = gate.admit("a", endpoint, retry=False, now=10)
        assert isinstance(held, Hold) and held.until == 30.0 and "RATE_LIMITED" in held.reason
    assert isinstance(gate.admit("a", CREATE, retry=False, now=30), Admit)


def test_a_shared_circuit_refuses_new_tasks_and_lets_polls_go() -> None:
    gate = synced(SharedGate(), circuit_until=100.0, circuit_reason="ZERO_BALANCE")
    gate.leased(slots=1)
    refused = gate.admit("a", CREATE, retry=False, now=1)
    assert isinstance(refused, Refuse) and refused.failure.name == "ZERO_BALANCE"
    assert refused.failure.bucket is Bucket.PERMANENT
    assert isinstance(gate.admit("b", POLL, retry=False, now=1), Admit)


def test_paced_requests_spend_leased_tokens_and_stale_polls_go_without() -> None:
    gate = synced(SharedGate(stale_after=2.0), paced=True)
    held = gate.admit("a", POLL, retry=False, now=0.5)
    assert isinstance(held, Hold) and gate.wanted_tokens == 1
    gate.leased(tokens=1)
    assert isinstance(gate.admit("a", POLL, retry=False, now=0.6), Admit)
    assert gate.view.tokens == 0
    # Redis away (no sync for more than stale_after): polls go, paced by the local gate only;
    # new tasks wait.
    assert isinstance(gate.admit("a", POLL, retry=False, now=5), Admit)
    held = gate.admit("b", CREATE, retry=False, now=5)
    assert isinstance(held, Hold) and "Redis unreachable" in held.reason


def test_tokens_no_job_waits_for_lapse_at_the_next_sync() -> None:
    """After a sync a worker holds no more tokens than jobs wait for: a token leased for a
    job the local gate then held is not kept to be spent later, in a burst with others."""
    gate = synced(SharedGate(local=FleetGate(startup=StartupWindow(requests=1))), paced=True)
    for job in ("a", "b", "c"):
        assert isinstance(gate.admit(job, POLL, retry=False, now=0.1), Hold)
    gate.leased(tokens=3)
    assert isinstance(gate.admit("a", POLL, retry=False, now=0.2), Admit)  # spends one
    held = gate.admit("b", POLL, retry=False, now=0.2)  # the start-up window holds it
    assert isinstance(held, Hold) and "token" not in held.reason
    assert gate.view.tokens == 2 and list(gate.waiting_token) == ["c"]
    synced(gate, 0.225, paced=True)
    assert gate.view.tokens == 1  # c's; b's lapsed
    assert isinstance(gate.admit("c", POLL, retry=False, now=0.23), Hold)  # window still full
    synced(gate, 0.25, paced=True)
    assert gate.view.tokens == 0 and gate.wanted_tokens == 0
    # The window opens (an answer came back): b waits for a token again, and gets one.
    gate.observe("a", POLL, None, sent_at=0.2, now=0.3)
    assert isinstance(gate.admit("b", POLL, retry=False, now=0.3), Hold)
    assert gate.wanted_tokens == 1


def test_only_jobs_that_can_send_want_tokens() -> None:
    """Tokens wanted are those the waiting jobs can spend: a poll's, and one per slot in
    hand for the createTasks that wait for one. A job that waits for a slot wants none (it
    would keep the account's tokens from the polls of the other workers)."""
    gate = synced(SharedGate(), paced=True)
    for job in ("a", "b", "c"):
        assert isinstance(gate.admit(job, CREATE, retry=False, now=0.1), Hold)
    assert gate.wanted_tokens == 0 and gate.wanted_slots == 3
    gate.leased(slots=1)
    for job in gate.wakeups():
        assert isinstance(gate.admit(job, CREATE, retry=False, now=0.2), Hold)
    assert gate.wanted_tokens == 1  # one slot in hand: one createTask can go
    assert isinstance(gate.admit("p", POLL, retry=False, now=0.2), Hold)
    assert gate.wanted_tokens == 2  # and the poll
    gate.leased(tokens=2)
    woken = gate.wakeups()
    decisions = {
        job: gate.admit(job, POLL if job == "p" else CREATE, retry=False, now=0.3) for job in woken
    }
    assert sum(isinstance(d, Admit) for d in decisions.values()) == 2  # a create and p
    assert gate.view.slots == 0 and gate.view.tokens == 0
    assert gate.wanted_tokens == 0 and gate.wanted_slots == 2
    synced(gate, 0.35, paced=True)
    assert gate.wanted_tokens == 0


def test_a_create_waiting_for_a_token_keeps_the_slot_in_hand_for_it() -> None:
    """Progress: a createTask that found a slot in hand but no token still counts as waiting
    for a slot, so the sync gives that slot back to no one else and leases it a token."""
    gate = synced(SharedGate(), paced=True)
    gate.leased(slots=1)
    assert isinstance(gate.admit("a", CREATE, retry=False, now=0.1), Hold)
    assert gate.spare_slots(0) == 0 and gate.view.slots == 1
    assert gate.wanted_tokens == 1 and gate.wanted_slots == 0
    gate.leased(tokens=1)
    assert gate.wakeups() == ["a"]
    assert isinstance(gate.admit("a", CREATE, retry=False, now=0.2), Admit)
    assert gate.waiting_slot == {} and gate.waiting_token_with_slot == {}


def test_a_slot_wakes_one_waiting_job_first_come_first() -> None:
    """A slot leased or freed wakes as many jobs waiting for one as there are slots, not all
    of them (which re-ran them all, to hold all but one again)."""
    gate = synced(SharedGate())
    jobs = [f"j{n}" for n in range(10)]
    for job in jobs:
        assert isinstance(gate.admit(job, CREATE, retry=False, now=0.1), Hold)
    gate.leased(slots=2)
    assert gate.wakeups() == ["j0", "j1"]
    assert isinstance(gate.admit("j0", CREATE, retry=False, now=0.2), Admit)
    gate.release("j0", 0.3)  # its slot back in hand: the next waiting job, j1 still woken
    assert gate.wakeups() == ["j1", "j2"]


def test_a_woken_job_that_cannot_take_its_slot_passes_it_on() -> None:
    local = FleetGate(startup=StartupWindow(requests=1))
    gate = synced(SharedGate(local=local))
    assert isinstance(gate.admit("x", POLL, retry=False, now=0.0), Admit)  # fills the window
    for job in ("a", "b", "c"):
        assert isinstance(gate.admit(job, CREATE, retry=False, now=0.1), Hold)
    gate.leased(slots=1)
    assert gate.wakeups() == ["a"]
    held = gate.admit("a", CREATE, retry=False, now=0.2)  # the local window holds it
    assert isinstance(held, Hold) and "slot" not in held.reason
    assert gate.wakeups() == ["b"]
    gate.release("b", 0.3)  # b ends before it runs: c is next
    assert gate.wakeups() == ["c"]
    assert held.until is not None  # the local gate's own hold ends by itself
    gate.observe("x", POLL, None, sent_at=0.0, now=0.4)  # the first reply: the window opens
    assert isinstance(gate.admit("a", CREATE, retry=False, now=held.until), Admit)
    assert gate.held_locally == {} and list(gate.waiting_slot) == ["c"]


_GATE_STEPS = st.lists(
    st.tuples(st.sampled_from(["start", "end", "slots", "tokens"]), st.integers(0, 5)),
    max_size=40,
)


@given(steps=_GATE_STEPS, paced=st.booleans())
def test_a_slot_in_hand_always_reaches_a_job_waiting_for_one(
    steps: list[tuple[str, int]], paced: bool
) -> None:
    """Progress: whatever the order of starts, ends and leases, once the woken jobs have run
    no slot (and, paced, no token) is left in hand while a job waits to create a task."""
    gate = synced(SharedGate(), paced=paced)
    waiting: set[str] = set()
    holding: set[str] = set()

    def run(job: str) -> None:
        if isinstance(gate.admit(job, CREATE, retry=False, now=0.1), Admit):
            waiting.discard(job)
            holding.add(job)

    for step, n in steps:
        job = f"j{n}"
        if step == "start" and job not in waiting | holding:
            waiting.add(job)
            run(job)
        elif step == "end" and job in waiting | holding:
            gate.release(job, 0.1)
            waiting.discard(job)
            holding.discard(job)
        elif step in ("slots", "tokens") and n:
            gate.leased(**{step: n})
        for _ in range(100):
            woken = [job for job in gate.wakeups() if job in waiting]
            if not woken:
                break
            for job in woken:
                run(job)
        can_send = gate.view.slots > 0 and (gate.view.tokens > 0 or not paced)
        assert not (can_send and waiting), (gate.view, waiting)


def test_a_sync_wakes_every_job_only_on_news() -> None:
    """Every sync turns Redis's times into this worker's clock by a freshly measured offset,
    so an unchanged state reads a little differently each time: that wakes no one (it
    woke every job of the worker 40 times a second). A pause, a circuit opening or closing,
    and pacing starting wake every job."""
    gate = synced(SharedGate(), 1.0, paused_until=-5.0, circuit_until=-5.0)
    for job in ("a", "b"):
        gate.register(job, 1.0)
    gate.wakeups()
    for n, jitter in enumerate((0.001, -0.002, 0.003)):  # a past pause, no circuit: no news
        now = 1.0 + n * 0.025
        synced(gate, now, paused_until=-5.0 + jitter, circuit_until=-5.0 + jitter)
        assert gate.wakeups() == []
    synced(gate, 1.1, paused_until=3.0, circuit_until=-5.0)  # a pause begins
    assert gate.wakeups() == ["a", "b"]
    synced(gate, 1.125, paused_until=3.002, circuit_until=-5.0)  # the same pause
    assert gate.wakeups() == []
    synced(gate, 1.15, paused_until=3.002, circuit_until=60.0)  # a circuit opens
    assert gate.wakeups() == ["a", "b"]
    synced(gate, 1.175, paused_until=3.002, circuit_until=60.001)
    assert gate.wakeups() == []
    synced(gate, 1.2, paused_until=3.002, circuit_until=-5.0)  # and closes
    assert gate.wakeups() == ["a", "b"]
    synced(gate, 1.225, paused_until=3.002, circuit_until=-5.0, paced=True)
    assert gate.wakeups() == ["a", "b"]


def test_account_wide_signals_become_news_for_the_other_workers() -> None:
    gate = synced(SharedGate())
    gate.register("a", 0)
    hinted = Failure(
        Bucket.RETRYABLE, "RATE_LIMITED", "", POLL, code=int(ErrorCode.RATE_LIMITED), retry_after=20
    )
    gate.observe("a", POLL, hinted, sent_at=1, now=1.5)
    kinds = [event.kind for event in gate.events]
    assert kinds == ["pause", "rate_limited"]
    assert gate.events[0].until == 21.5 and gate.events[1].sent_at == 1
    gate.events.clear()
    zero = failure(ErrorCode.ZERO_BALANCE, bucket=Bucket.PERMANENT)
    gate.observe("a", CREATE, zero, sent_at=2, now=2.1)
    assert [event.kind for event in gate.events] == ["circuit"]
    assert gate.events[0].until == 2.1 + gate.circuit_seconds


def test_noise_is_not_news() -> None:
    gate = synced(SharedGate())
    noise = Failure(Bucket.TRANSIENT_HTTP, "HTTP_502", "", POLL, http_status=502)
    gate.observe("a", POLL, noise, sent_at=0, now=0.1)
    assert gate.events == [] and gate.take_accepted() == 0
    gate.observe("a", POLL, None, sent_at=0, now=0.2)
    assert gate.take_accepted() == 1 and gate.take_accepted() == 0


def test_a_simulation_whose_view_never_gets_a_lease_ends() -> None:
    """Progress: with Redis never reached, no slot is ever leased, and every job ends at its
    deadline (no spin, no hang), having sent nothing."""
    api = SimulatedAPI(Scenario(accounts=(AccountSpec(key="k" * 12),)), keep_log=False)
    simulation = Simulation(api, key="k" * 12, gate=SharedGate(local=FleetGate()), timeout=30)
    for n in range(20):
        simulation.submit({"type": "ImageToTextTask", "body": "aGk="}, at=n * 0.1)
    report = simulation.run()
    assert report.states() == {"failed": 20}
    assert sum(api.stats.requests.values()) == 0


def test_a_worker_gate_expects_what_its_local_gate_learned_of_task_times() -> None:
    local = FleetGate(
        durations=TaskDurations(min_samples=1), concurrency=AdaptiveConcurrency(limit=5.0)
    )
    gate = synced(SharedGate(local=local))
    assert isinstance(gate, TimingGate) and gate.expected_task_seconds() is None
    gate.register("a", 0)
    gate.leased(slots=1)
    assert isinstance(gate.admit("a", CREATE, retry=False, now=0), Admit)
    gate.observe("a", CREATE, None, sent_at=0, now=0.5)
    gate.release("a", 9.5)
    assert gate.expected_task_seconds() == 9.0


def test_a_worker_gate_always_queues_creates_for_slots() -> None:
    """Every createTask waits for a slot leased from the account, from the start (before its
    local gate learned any slot limit): a job refused for want of a slot does not escalate
    its backoff (see `SlotQueueGate`)."""
    gate = SharedGate()
    assert isinstance(gate, SlotQueueGate) and gate.local.queues_for_slots() is False
    assert gate.queues_for_slots() is True


def waiting(gate: SharedGate, *jobs: str, now: float = 0.0) -> None:
    """Register `jobs` and have each ask to create (none has a slot: they wait)."""
    for job in jobs:
        gate.register(job, now)
        assert isinstance(gate.admit(job, CREATE, retry=False, now=now), Hold)


def test_the_account_probe_is_wanted_only_while_jobs_wait_with_no_slot_in_hand() -> None:
    gate = synced(SharedGate())
    assert not gate.wants_probe(0)  # nobody waits
    waiting(gate, "a")
    assert gate.wants_probe(0)
    assert not gate.wants_probe(10)  # the view is stale: Redis away, no probes
    gate.leased(slots=1)
    assert not gate.wants_probe(0)  # a slot in hand comes first
    assert not synced(SharedGate(probes=False), now=0).wants_probe(0)


def test_the_probe_goes_to_the_first_waiting_job_without_a_slot() -> None:
    """Granted the account's probe, the first job waiting sends its createTask with no slot
    in hand; accepted, it holds a slot of this worker's lease, and the answer is news."""
    gate = synced(SharedGate())
    waiting(gate, "a", "b")
    gate.probe_granted()
    assert gate.probing == "a" and gate.wakeups() == ["a"]
    assert not gate.wants_probe(0)  # one probe at a time
    assert isinstance(gate.admit("b", CREATE, retry=False, now=0), Hold)  # b still waits
    assert isinstance(gate.admit("a", CREATE, retry=False, now=0), Admit)
    assert gate.view.slots == 0  # no leased slot was spent
    gate.observe("a", CREATE, None, sent_at=0, now=0.1)
    assert gate.probing is None and "a" in gate.slot_holders
    assert [(e.kind, e.reason) for e in gate.events] == [
        ("probe", "accepted"),
        ("slot_accepted", ""),
    ]


def test_a_granted_probe_wants_its_token_in_the_same_sync() -> None:
    """On a paced account the prober wants a token as soon as the probe is granted, so the
    sync round that got the probe leases its token too; otherwise the probe (one for the
    whole account) waits a round for it. The other waiting jobs still want none."""
    gate = synced(SharedGate(), paced=True)
    waiting(gate, "a", "b")
    assert gate.wanted_tokens == 0  # no slot in hand: nobody could send
    gate.probe_granted()
    assert gate.wanted_tokens == 1
    gate.leased(tokens=1)
    assert gate.wakeups() == ["a"]
    assert isinstance(gate.admit("a", CREATE, retry=False, now=0), Admit)
    assert gate.view.tokens == 0 and gate.wanted_tokens == 0
    assert isinstance(gate.admit("b", CREATE, retry=False, now=0), Hold)
    assert gate.wanted_tokens == 0


def test_a_granted_probe_waits_while_redis_is_unreachable() -> None:
    """No new task goes while the view is stale (Redis away), the probe included; it goes
    once a sync brings the view back."""
    gate = synced(SharedGate())
    waiting(gate, "a")
    gate.probe_granted()
    held = gate.admit("a", CREATE, retry=False, now=10)
    assert isinstance(held, Hold) and "Redis unreachable" in held.reason
    synced(gate, now=11)
    assert isinstance(gate.admit("a", CREATE, retry=False, now=11), Admit)


def test_a_refused_probe_is_not_news_and_owes_nothing() -> None:
    """NO_SLOT_AVAILABLE to the probe says only that no slot was free beyond the limit: no
    slot_refused (which would lower the account's limit) and no slot owed back."""
    gate = synced(SharedGate())
    waiting(gate, "a")
    gate.probe_granted()
    assert isinstance(gate.admit("a", CREATE, retry=False, now=0), Admit)
    gate.observe("a", CREATE, failure(ErrorCode.NO_SLOT_AVAILABLE), sent_at=0, now=0.1)
    assert [(e.kind, e.reason) for e in gate.events] == [("probe", "refused")]
    assert (gate.view.slots, gate.owed_slots, gate.slot_holders) == (0, 0, {})
    assert gate.probing is None
    assert isinstance(gate.admit("a", CREATE, retry=True, now=0.2), Hold)  # waits again
    assert gate.wants_probe(0.2)


def test_a_probe_unused_or_unsent_goes_back_void() -> None:
    gate = synced(SharedGate())
    gate.probe_granted()  # nobody waits any more
    waiting(gate, "a", "b")
    gate.probe_granted()
    gate.release("a", 1)  # the probing job ends unsent
    gate.probe_granted()
    gate.leased(slots=1)  # a leased slot arrives before b's probe goes
    assert isinstance(gate.admit("b", CREATE, retry=False, now=0), Admit)
    assert gate.view.slots == 0 and "b" in gate.slot_holders
    assert [e.reason for e in gate.events if e.kind == "probe"] == ["void", "void", "void"]


def test_a_probe_sent_and_never_answered_counts_as_accepted() -> None:
    """The job ended with its probe in flight: the service may have made its task, so its
    slot stays counted (the sync gives it back as the job's slot)."""
    gate = synced(SharedGate())
    waiting(gate, "a")
    gate.probe_granted()
    assert isinstance(gate.admit("a", CREATE, retry=False, now=0), Admit)
    gate.release("a", 1)
    assert [e.reason for e in gate.events] == ["accepted"]
    assert gate.view.slots == 1


def test_slots_freed_while_the_account_is_over_its_limit_go_back_to_it() -> None:
    """An accepted probe leaves the account one slot over its limit: the next slot freed on
    any worker goes back to the account, not to the next job there (which the service
    would refuse: the probe took the slot that task had freed)."""
    gate = synced(SharedGate(), over=1)
    gate.leased(slots=2)
    for job in ("a", "b"):
        gate.register(job, 0)
        assert isinstance(gate.admit(job, CREATE, retry=False, now=0), Admit)
        gate.observe(job, CREATE, None, sent_at=0, now=0)
    waiting(gate, "c")
    gate.wakeups()
    gate.release("a", 1)
    assert (gate.view.slots, gate.owed_slots, gate.wakeups()) == (0, 1, [])
    gate.release("b", 2)  # over by one only: this one is the next job's
    assert (gate.view.slots, gate.owed_slots, gate.wakeups()) == (1, 1, ["c"])
