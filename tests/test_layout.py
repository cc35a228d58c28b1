"""The public surface and the import layering are decisions, checked here."""

from __future__ import annotations

import ast
import importlib
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
PACKAGES = {
    "engine": "captchaflow.engine",
    "transports": "captchaflow.transports",
    "policies": "captchaflow.policies",
}
ALLOWED = {
    "transports": {"captchaflow._lazy"},
    "policies": {"captchaflow.transports", "captchaflow._lazy"},
    "engine": {"captchaflow.transports", "captchaflow.policies", "captchaflow._lazy"},
}
IO_LIBRARIES = {"httpx", "httpcore", "h11", "anyio", "sniffio", "trio", "asyncio", "socket", "ssl"}
"""Libraries that do I/O (or, like email.utils, import socket to): the core loads none."""
OPTIONAL_LIBRARIES = {"prometheus_client", "opentelemetry", "aiohttp"}
"""The libraries of optional extras: loaded only when a hook or transport that needs one is
built (or named)."""
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


def test_importing_the_packages_loads_no_io_library() -> None:
    """In a fresh interpreter, importing captchaflow.engine, .policies and .transports and
    using the sans-IO core (a job, classification) loads no I/O library: the drivers, the
    httpx transport and the simulator are imported only when used. Nor does importing the
    instrumentation and naming its hooks load an optional extra's library."""
    code = (
        "import sys, captchaflow.engine, captchaflow.policies, captchaflow.transports\n"
        "from captchaflow.engine.instrumentation import OpenTelemetryHook, PrometheusHook\n"
        "from captchaflow.engine import Job, classify, TaskState\n"
        "from captchaflow.transports import ApiKey, ApiReply, Endpoint\n"
        "reply = ApiReply(200, b'{\"taskId\": 1}', {})\n"
        "classify(Endpoint.CREATE_TASK, reply, secret=ApiKey('sk-layout-test'))\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert "captchaflow" in loaded
    assert not loaded & IO_LIBRARIES, loaded & IO_LIBRARIES
    assert not loaded & OPTIONAL_LIBRARIES, loaded & OPTIONAL_LIBRARIES
    sim = "import sys, captchaflow.engine\nprint('captchaflow.transports.sim' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", sim], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["--help"], set()),
        (["solve", "--help"], set()),
        (["batch", "--help"], set()),
        (["worker", "--help"], set()),
        # httpx imports rich (its own command line) and sniffio: the HTTP stack, whole.
        (
            ["solve", "--task", "{}"],
            {"httpx", "anyio", "sniffio", "socket", "ssl", "h11", "httpcore", "rich"},
        ),
    ],
    ids=["help", "solve-help", "batch-help", "worker-help", "solve"],
)
def test_the_command_imports_no_more_than_it_needs(argv: list[str], allowed: set[str]) -> None:
    """In a fresh interpreter, `captchaflow ARGV` loads no I/O library it does not use:
    `--help` and every command's help load none (no httpx, anyio, rich, sqlite3, redis, nor
    the simulator); `solve` loads the HTTP stack only, httpx's: never aiohttp (here it fails
    on the empty task)."""
    code = (
        "import sys\n"
        "from captchaflow.engine.cli._main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "names = {m.split('.')[0] for m in sys.modules} | set(sys.modules)\n"
        "print(' '.join(sorted(names)), file=sys.stderr)\n"
    )
    env = {**os.environ, "NOCAPTCHA_API_KEY": "sk-layout-test-key"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    loaded = set(done.stderr.strip().splitlines()[-1].split())
    heavy = IO_LIBRARIES | OPTIONAL_LIBRARIES | {"rich", "sqlite3", "redis"}
    heavy |= {"captchaflow.transports.sim", "captchaflow.engine._engine"}
    if "solve" in argv and "--help" not in argv:
        heavy -= allowed | {"captchaflow.engine._engine"}
    assert not loaded & heavy, sorted(loaded & heavy)


def test_lazy_names_load_on_first_use() -> None:
    """A lazily exported name is the real object once used (and listed by dir())."""
    import captchaflow.engine as engine
    import captchaflow.transports as transports

    assert "Engine" in dir(engine) and "HttpxTransport" in dir(transports)
    assert "AiohttpTransport" in dir(transports)
    assert engine.Engine.__module__ == "captchaflow.engine._engine"
    assert transports.HttpxTransport.__module__ == "captchaflow.transports._httpx"
    assert transports.AiohttpTransport.__module__ == "captchaflow.transports._aiohttp"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        engine.Nope  # noqa: B018


@pytest.mark.parametrize(
    "package",
    [
        *sorted(PACKAGES.values()),
        "captchaflow.transports.sim",
        "captchaflow.engine.cli",
        "captchaflow.engine.instrumentation",
    ],
)
def test_all_is_exactly_the_public_names(package: str) -> None:
    """`__all__` lists every public name the package defines (lazily or not), and only
    those, sorted."""
    module = importlib.import_module(package)
    public = {name for name in dir(module) if not name.startswith("_")}
    submodules = {name for name in public if type(getattr(module, name)).__name__ == "module"}
    assert set(module.__all__) == public - submodules
    assert list(module.__all__) == sorted(module.__all__, key=lambda n: (not n.isupper(), n))


@pytest.mark.parametrize("folder", [*sorted(PACKAGES), "engine/cli", "engine/instrumentation"])
def test_py_typed_shipped(folder: str) -> None:
    """Each subpackage ships a py.typed marker."""
    assert (ROOT / folder / "py.typed").exists()
