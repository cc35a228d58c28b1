"""Counted nouns for what people read: `1 task`, `2 tasks`, `1 poll`, `0 polls`."""

from __future__ import annotations

__all__ = ["counted"]


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` and `noun`, singular for exactly 1 and plural (`plural`, or `noun` + "s")
    for any other count: `counted(1, "task") == "1 task"`, `counted(0, "task") ==
    "0 tasks"`."""
    return f"{count} {noun if count == 1 else (plural or noun + 's')}"
