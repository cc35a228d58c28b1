"""The public surface and the import layering are decisions, checked here."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).parents[1]
PACKAGES = {
    "engine": "captchaflow.engine",
    "transports": "captchaflow.transports",
    "policies": "captchaflow.policies",
}
ALLOWED = {
    "transports": set(),
    "policies": {"captchaflow.transports"},
    "engine": {"captchaflow.transports", "captchaflow.policies"},
}
SANS_IO_CORE = ["_classify.py", "_fsm.py", "_job.py", "_errors.py"]
IO_MODULES = {
    "httpx",
    "anyio",
    "trio",
    "asyncio",
    "socket",
    "time",
    "os",
    "sys",
    "io",
    "subprocess",
    "threading",
    "logging",
    "random",
}


def imports_of(path: pathlib.Path) -> set[str]:
    """Every module name `path` imports (absolute names; relative ones resolved to siblings)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_imports_point_down(folder: str) -> None:
    """transports imports neither policies nor engine; policies imports only transports."""
    for path in (ROOT / folder).rglob("*.py"):
        own = {n for n in imports_of(path) if n.startswith("captchaflow.")}
        outside = {n for n in own if not n.startswith(PACKAGES[folder])}
        assert all(any(n.startswith(a) for a in ALLOWED[folder]) for n in outside), (path, outside)
        bare = {n.split(".")[0] for n in imports_of(path)} & set(PACKAGES)
        assert not bare, f"{path} imports {bare} directly; use captchaflow.<package>"


@pytest.mark.parametrize("module", SANS_IO_CORE)
def test_sans_io_core_imports_no_io(module: str) -> None:
    """The FSM, job, classification and errors import no I/O, clock or randomness module."""
    roots = {n.split(".")[0] for n in imports_of(ROOT / "engine" / module)}
    assert not roots & IO_MODULES, roots & IO_MODULES


@pytest.mark.parametrize("package", sorted(PACKAGES.values()))
def test_all_is_exactly_the_public_names(package: str) -> None:
    """`__all__` lists every public name the package defines, and only those, sorted."""
    module = importlib.import_module(package)
    public = {name for name in vars(module) if not name.startswith("_")}
    submodules = {name for name in public if type(getattr(module, name)).__name__ == "module"}
    assert set(module.__all__) == public - submodules
    assert list(module.__all__) == sorted(module.__all__, key=lambda n: (not n.isupper(), n))


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_py_typed_shipped(folder: str) -> None:
    """Each subpackage ships a py.typed marker."""
    assert (ROOT / folder / "py.typed").exists()
