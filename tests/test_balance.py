"""The account's balance: classification of getBalance, the sans-IO `BalanceQuery`,
`Engine.balance()` over HTTP against the simulated service, and `captchaflow balance` in a
real process (a good key, a bad key, a dead server)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time

import pytest
from test_cli import CLI, KEY_ENV, Run

from captchaflow.engine import (
    Balance,
    BalanceQuery,
    DeadlineExceededError,
    Engine,
    Finished,
    JobStateError,
    PermanentError,
    PolicyError,
    Send,
    Wait,
    classify,
)
from captchaflow.policies import Bucket, DocumentedPolicy, Failure, RetryContext
from captchaflow.transports import ApiKey, ApiReply, Endpoint
from captchaflow.transports.sim import AccountSpec, Scenario, SimulatedAPI, simulator_in_thread

KEY = ApiKey("sk-balance-test-SECRET")
BALANCE = Endpoint.GET_BALANCE


def query(timeout: float = 30.0) -> BalanceQuery:
    """A query on the test key with the documented policy (seeded)."""
    return BalanceQuery(
        KEY, policy=DocumentedPolicy(rng=random.Random(1)), now=0.0, timeout=timeout
    )


def api_error(code: int, retry_after: int | None = None) -> Failure:
    """What classification makes of the API's error `code` on getBalance."""
    body: dict[str, object] = {"code": code, "msg": "m"}
    if retry_after is not None:
        body["retryAfterSec"] = retry_after
    outcome = classify(BALANCE, ApiReply.json(body))
    assert isinstance(outcome, Failure)
    return outcome


# -- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(("amount", "expected"), [(12.5, 12.5), (40, 40.0), (-1, -1.0), (0, 0.0)])
def test_a_balance_reply_is_a_balance(amount: float, expected: float) -> None:
    """`{"balance": N}` is `Balance(N)`, as a float."""
    assert classify(BALANCE, ApiReply.json({"balance": amount})) == Balance(expected)


@pytest.mark.parametrize("body", [{}, {"balance": "12"}, {"balance": True}, {"balance": None}])
def test_a_reply_without_a_usable_balance_is_malformed(body: dict[str, object]) -> None:
    """A missing balance, a string, a bool or null is a malformed reply, not a number."""
    outcome = classify(BALANCE, ApiReply.json(body))
    assert isinstance(outcome, Failure)
    assert (outcome.bucket, outcome.name) == (Bucket.MALFORMED, "MISSING_BALANCE")


def test_a_non_finite_balance_is_malformed() -> None:
    """NaN or Infinity (which lenient JSON parsers accept) is not a balance."""
    outcome = classify(BALANCE, ApiReply(200, b'{"balance": NaN}', {}))
    assert isinstance(outcome, Failure) and outcome.bucket is Bucket.MALFORMED


# -- the sans-IO query ------------------------------------------------------------------------


def test_query_sends_getbalance_and_keeps_the_amount() -> None:
    """One request to /getBalance; its balance ends the query."""
    call = query()
    action = call.next_action(0.0)
    assert isinstance(action, Send) and action.request.endpoint is BALANCE
    call.feed(Balance(3.25), 0.1)
    assert call.finished and call.balance == 3.25 and call.error is None
    assert call.next_action(0.2) == Finished()
    assert call.requests_sent == 1


def test_query_waits_out_a_rate_limit_hint_then_retries() -> None:
    """A RATE_LIMITED with retryAfterSec 5 is retried no sooner than 5 s later."""
    call = query()
    call.next_action(0.0)
    call.feed(api_error(16, retry_after=5), 0.0)
    action = call.next_action(0.0)
    assert isinstance(action, Wait) and action.until >= 5.0
    assert isinstance(call.next_action(action.until), Send)
    call.feed(Balance(1.0), action.until)
    assert call.balance == 1.0 and call.requests_sent == 2


def test_query_never_retries_a_bad_key() -> None:
    """KEY_DOES_NOT_EXIST (1) ends the query after one request, as a PermanentError."""
    call = query()
    call.next_action(0.0)
    call.feed(api_error(1), 0.0)
    assert isinstance(call.error, PermanentError) and call.error.code == 1
    assert call.next_action(0.0) == Finished() and call.requests_sent == 1


def test_query_gives_up_at_its_deadline() -> None:
    """A wait that would pass the deadline ends the query with the failure behind it, and a
    query still unanswered at its deadline fails DEADLINE_EXCEEDED."""
    call = query(timeout=2.0)
    call.next_action(0.0)
    call.feed(api_error(16, retry_after=5), 0.0)
    assert call.error is not None and call.error.name == "RATE_LIMITED"
    late = query(timeout=1.0)
    late.next_action(0.0)
    late.feed(api_error(21, retry_after=1), 0.0)
    assert late.next_action(1.0) == Finished()
    assert isinstance(late.error, DeadlineExceededError)


def test_query_fails_with_policy_error_when_the_policy_raises() -> None:
    """A retry policy that raises fails the query with PolicyError naming it."""

    class Broken:
        def decide(self, failure: Failure, context: RetryContext) -> object:
            raise RuntimeError("boom")

    call = BalanceQuery(KEY, policy=Broken(), now=0.0, timeout=10.0)  # type: ignore[arg-type]
    call.next_action(0.0)
    call.feed(api_error(16), 0.0)
    assert isinstance(call.error, PolicyError) and "Broken" in str(call.error)


def test_query_refuses_misuse() -> None:
    """Asking again while a reply is awaited, or feeding without a request, is a bug."""
    call = query()
    with pytest.raises(JobStateError):
        call.feed(Balance(1.0), 0.0)
    call.next_action(0.0)
    with pytest.raises(JobStateError):
        call.next_action(0.0)


# -- Engine.balance over HTTP -----------------------------------------------------------------

SIM_KEY = "sk-sim-balance-key"


def sim(balance: float | None) -> SimulatedAPI:
    """The simulated service with one account holding `balance` (None: no limit)."""
    return SimulatedAPI(Scenario(accounts=(AccountSpec(key=SIM_KEY, balance=balance),)))


@pytest.mark.anyio
async def test_engine_balance_reads_the_account_over_http() -> None:
    """Engine.balance() returns the account's credit through the httpx transport."""
    with simulator_in_thread(sim(2.5)) as server:
        async with Engine(SIM_KEY, base_url=server.base_url) as engine:
            assert await engine.balance() == 2.5


@pytest.mark.anyio
async def test_engine_balance_with_a_bad_key_is_a_permanent_error() -> None:
    """An unknown key raises PermanentError (code 1) after one request."""
    with simulator_in_thread(sim(2.5)) as server:
        async with Engine("sk-not-an-account-key", base_url=server.base_url) as engine:
            with pytest.raises(PermanentError) as caught:
                await engine.balance()
    assert caught.value.code == 1


# -- captchaflow balance ----------------------------------------------------------------------


def run_balance(base_url: str, key: str, *extra: str) -> Run:
    """Run `captchaflow balance` against `base_url` with `key` in the environment."""
    env = {**os.environ, KEY_ENV: key}
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, "balance", "--base-url", base_url, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    run = Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    assert "Traceback" not in run.err and key not in run.out + run.err
    return run


def test_cli_prints_the_balance() -> None:
    """A good key: the balance on stdout, exit 0."""
    with simulator_in_thread(sim(12.5)) as server:
        run = run_balance(server.base_url, SIM_KEY)
    assert (run.code, run.out, run.err) == (0, "12.5\n", "")


def test_cli_prints_a_whole_balance_without_a_fraction() -> None:
    """A whole number prints as one (the simulator's -1: no balance limit)."""
    with simulator_in_thread(sim(None)) as server:
        run = run_balance(server.base_url, SIM_KEY)
    assert (run.code, run.out) == (0, "-1\n")


def test_cli_with_a_bad_key_exits_3_with_one_line() -> None:
    """A key the account does not know: one line naming KEY_DOES_NOT_EXIST, exit 3."""
    with simulator_in_thread(sim(12.5)) as server:
        run = run_balance(server.base_url, "sk-not-an-account-key")
    assert run.code == 3 and run.out == ""
    assert len(run.err.splitlines()) == 1 and "KEY_DOES_NOT_EXIST" in run.err


def test_cli_with_a_dead_server_gives_up_at_the_deadline() -> None:
    """Nothing listening: retried until the deadline, then one line and exit 6."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = run_balance(f"http://127.0.0.1:{port}", SIM_KEY, "--timeout", "2")
    assert run.code == 6 and run.out == ""
    assert len(run.err.splitlines()) == 1 and "NOT_SENT" in run.err


def test_base_url_comes_from_the_environment_when_not_given() -> None:
    """Without --base-url the command uses $NOCAPTCHA_BASE_URL; a bad one is a usage error
    naming the variable, not repeating its value; --base-url wins over it."""
    with simulator_in_thread(sim(7.5)) as server:
        env = {**os.environ, KEY_ENV: SIM_KEY, "NOCAPTCHA_BASE_URL": server.base_url}
        done = subprocess.run([*CLI, "balance"], capture_output=True, text=True, env=env)
        assert (done.returncode, done.stdout) == (0, "7.5\n"), done.stderr
        env["NOCAPTCHA_BASE_URL"] = "ftp://secret-host.test/"
        bad = subprocess.run([*CLI, "balance"], capture_output=True, text=True, env=env)
        assert bad.returncode == 2 and "$NOCAPTCHA_BASE_URL must start with" in bad.stderr
        assert "secret-host" not in bad.stderr
        given = subprocess.run(
            [*CLI, "balance", "--base-url", server.base_url],
            capture_output=True,
            text=True,
            env=env,
        )
        assert (given.returncode, given.stdout) == (0, "7.5\n")
