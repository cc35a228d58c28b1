"""Every Python example in README.md compiles, and every one not marked no-run runs."""

from __future__ import annotations

import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
BLOCK = re.compile(r"(<!-- no-run -->\n)?```python\n(.*?)```", re.DOTALL)
BLOCKS = [(bool(m.group(1)), m.group(2)) for m in BLOCK.finditer(README)]


def test_readme_has_examples_and_quick_start() -> None:
    """The README has runnable examples and both marked quick-start commands."""
    assert sum(not skip for skip, _ in BLOCKS) >= 3
    assert "<!-- quickstart:main -->" in README
    assert "<!-- quickstart:test -->" in README


@pytest.mark.parametrize(("skip", "code"), BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example(skip: bool, code: str) -> None:
    """The example compiles; unless marked no-run, it runs without error."""
    compiled = compile(code, "README.md", "exec")
    if not skip:
        exec(compiled, {"__name__": "readme_example"})
