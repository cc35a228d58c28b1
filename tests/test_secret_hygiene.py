"""The suite-wide secret scan works, and the key never shows in the engine's own texts."""

from __future__ import annotations

import logging
import pathlib

import pytest
from secret_scan import SECRETS, leaked_in

from captchaflow.engine import Engine, VirtualClock
from captchaflow.transports import ApiKey, ApiReply, ApiRequest, HandlerTransport


def test_scan_fails_a_test_that_logs_a_key(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutant check: a test that logs or prints a key is failed by the plugin."""
    monkeypatch.setenv("PYTHONPATH", str(pathlib.Path(__file__).parent))
    pytester.makepyfile(
        f"""
        import logging

        def test_logs():
            logging.getLogger("captchaflow").debug("key is %s", {SECRETS[0]!r})

        def test_prints():
            print({SECRETS[1]!r})

        def test_clean():
            print("nothing to see")
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "secret_scan", "-o", "log_level=DEBUG", "--show-capture=no", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, failed=2)
    assert SECRETS[0] not in result.stdout.str()


def test_leaked_in() -> None:
    """`leaked_in` finds every secret and nothing else."""
    assert leaked_in("a", f"x{SECRETS[2]}y") == [SECRETS[2]]
    assert leaked_in("sk-", "SECRET") == []


@pytest.mark.anyio
async def test_key_absent_from_every_engine_text(
    secret_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that echoes the key everywhere still never gets it into errors, history,
    reprs or log records."""
    caplog.set_level(logging.DEBUG)

    def echo(request: ApiRequest) -> ApiReply:
        if request.endpoint.value == "/createTask":
            return ApiReply.json({"taskId": f"id-{secret_key}"})
        return ApiReply.json({"code": 1, "msg": f"bad key {secret_key}"})

    engine = Engine(secret_key, transport=HandlerTransport(echo), clock=VirtualClock())
    job = await engine.run({"type": "T"})
    assert job.error is not None
    texts = [
        str(job.error),
        repr(job.error),
        job.error.summary(),
        repr(job.history),
        repr(job),
        repr(engine),
        repr(ApiKey(secret_key)),
        caplog.text,
    ]
    assert not any(secret_key in text for text in texts)
