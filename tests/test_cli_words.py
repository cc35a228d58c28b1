"""Counted nouns in what the command prints (`1 task`, not `1 tasks`)."""

from __future__ import annotations

import pytest

from captchaflow.engine._words import counted


@pytest.mark.parametrize(
    ("count", "noun", "plural", "expected"),
    [
        (1, "task", None, "1 task"),
        (0, "task", None, "0 tasks"),
        (2, "poll", None, "2 polls"),
        (-1, "poll", None, "-1 polls"),
        (1, "wait after failures", "waits after failures", "1 wait after failures"),
        (3, "wait after failures", "waits after failures", "3 waits after failures"),
    ],
)
def test_counted(count: int, noun: str, plural: str | None, expected: str) -> None:
    """Singular for exactly one, plural (given, or with an s) for any other count."""
    assert counted(count, noun, plural) == expected


def test_demo_of_one_task_says_one_task(capsys: pytest.CaptureFixture[str]) -> None:
    """`captchaflow demo --tasks 1` reads `1 task`, not `1 tasks`."""
    from captchaflow.engine import cli

    assert cli.main(["demo", "--tasks", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("captchaflow demo: 1 task, seed 0: "), out
    assert "1 tasks" not in out
