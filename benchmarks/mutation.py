"""Mutation testing of the decision logic: `policies/`, `engine/_classify.py`, `engine/_fsm.py`.

Runs cosmic-ray over a throw-away copy of the repository (never the working tree: other people
edit it, and cosmic-ray rewrites files in place). Steps:

1. copy the working-tree versions of every tracked and untracked-but-not-ignored file into a
   temporary directory, once per worker;
2. give each copy its own venv with `pip install -e '<copy>[dev,mutation]'
   --config-settings editable_mode=strict`, so `captchaflow.*` imports resolve to that copy's
   files and a mutation written into the copy is what the tests import;
3. check that the unmutated tests pass in every copy (this also sets the per-mutant timeout),
   and record which `captchaflow` modules each test file imports: a file that never imports a
   module, or never names anything it defines, is left out of that module's test command;
4. one cosmic-ray session per module, its own test file first so `-x` stops early; mutations
   inside type annotations are skipped (with `from __future__ import annotations` they are
   never evaluated, so every such mutant is equivalent), and `--limit` keeps a seeded sample;
5. execute every session on cosmic-ray's HTTP distributor, one worker per copy, on 127.0.0.1;
6. write the survivors (with their diffs) and a JSON record of every outcome, and print, as
   the last line, `mutation: killed=K total=T score=S`.

`--reuse RESULTS.json` counts as killed, without running them again, the mutants that an
earlier run killed in a module whose source is byte-for-byte unchanged. That is sound only if
no test was removed or weakened since (adding tests, e.g. those pinned for survivors, is
fine): a full run is the default.

Usage:
    python benchmarks/mutation.py                  # everything (~1-2 h on 2 idle cores)
    python benchmarks/mutation.py --quick          # a seeded sample of 30 mutants
    python benchmarks/mutation.py --limit 100 --seed 7
    python benchmarks/mutation.py --modules engine/_fsm.py policies/_poll.py
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODULES = ("policies", "engine/_classify.py", "engine/_fsm.py")
# The conformance kit is test code shipped to users (hypothesis strategies and law checks), not
# decision logic; its ~1300 mutants are only seen by tests/test_conformance.py (~50 s a run),
# i.e. many hours on 2 cores. Name it in --modules to include it.
DEFAULT_EXCLUDED = ("policies/conformance.py",)
TESTS = (
    "tests/test_classify.py",
    "tests/test_policies.py",
    "tests/test_fsm.py",
    "tests/test_job.py",
    "tests/test_conformance.py",  # optional: used when it exists
    "tests/test_gate.py",  # optional: the account gate's parts, one at a time
    "tests/test_fleet.py",  # optional: the gate's laws over whole fleets
)
QUICK_LIMIT = 30
VENV = ".venv-mutation"
PYTEST_ARGS = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")
RESULTS = ROOT / "benchmarks" / "results"
ANNOTATION = "in a type annotation (never evaluated)"
REUSED = "killed by an earlier run of the unchanged module (--reuse)"
NOT_SAMPLED = "not in the sample"

# Run inside a worker copy's venv (where cosmic_ray is importable): mark the given jobs of
# one session as skipped, the way cosmic-ray's own cr-filter-* tools do.
_MARK_SKIPPED = """
import json, sys
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkResult, WorkerOutcome
request = json.load(sys.stdin)
with use_db(request["session"], WorkDB.Mode.open) as db:
    for reason, job_ids in request["skip"].items():
        db.set_multiple_results(
            job_ids, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=reason)
        )
"""

# A pytest plugin: after collection, write which captchaflow modules are imported.
_PROBE = """
import json, os, sys
def pytest_collection_finish(session):
    with open(os.environ["MUTATION_PROBE_OUT"], "w") as out:
        json.dump(sorted(m for m in sys.modules if m.startswith("captchaflow")), out)
"""


def log(message: str) -> None:
    """Progress goes to stderr, so stdout ends with the one summary line."""
    print(f"[mutation {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Mutant:
    """One cosmic-ray work item and, once run, its outcome."""

    module: str
    operator: str
    occurrence: int
    line: int
    job_id: str = ""
    start: tuple[int, int] = (0, 0)
    end: tuple[int, int] = (0, 0)
    outcome: str = "pending"  # killed | survived | incompetent | skipped | ...
    reason: str = ""
    diff: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        """A stable identity (job ids are random uuids), used for sorting, sampling, reuse."""
        return (self.module, self.operator, self.occurrence)


@dataclass
class Worker:
    """One copy of the repository, its venv and its cosmic-ray HTTP worker."""

    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    @property
    def python(self) -> Path:
        return self.root / VENV / "bin" / "python"

    @property
    def cosmic_ray(self) -> Path:
        return self.root / VENV / "bin" / "cosmic-ray"


def run(
    cmd: Sequence[str | Path],
    cwd: Path,
    *,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, raising with its output if it fails."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def in_parallel(fn: Callable[[Worker], object], workers: Sequence[Worker]) -> list[object]:
    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        return list(pool.map(fn, workers))


# --- the copies ---------------------------------------------------------------------------


def repository_files(root: Path) -> list[str]:
    """Tracked files plus untracked files git does not ignore, as in the working tree."""
    out = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], root)
    return sorted({name for name in out.stdout.split("\0") if name and (root / name).is_file()})


def copy_repository(files: Sequence[str], source: Path, dest: Path) -> None:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target)


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["HYPOTHESIS_PROFILE"] = "ci"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # cosmic-ray sets it too: no stale .pyc of a mutant
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    return env


def install(worker: Worker) -> None:
    """A fresh venv with the copy installed strict-editable, plus the dev and mutation extras."""
    run([sys.executable, "-m", "venv", VENV], worker.root)
    pip: list[str | Path] = [worker.python, "-m", "pip", "install", "-q"]
    run([*pip, "--upgrade", "pip"], worker.root)
    run([*pip, "-e", ".[dev,mutation]", "--config-settings", "editable_mode=strict"], worker.root)
    # The installed package must be the copy's files (a link tree), or mutants are invisible.
    probe = "import captchaflow.engine._fsm as m; print(m.__file__)"
    imported = Path(run([worker.python, "-c", probe], worker.root).stdout.strip())
    if not imported.samefile(worker.root / "engine" / "_fsm.py"):
        raise RuntimeError(f"captchaflow.engine imports {imported}, not the copy in {worker.root}")


def own_test(module: str) -> str:
    """`engine/_fsm.py` -> `tests/test_fsm.py`; policies without a file of their own share one."""
    own = f"tests/test_{Path(module).stem.lstrip('_')}.py"
    if module.startswith("policies/") and not (ROOT / own).exists():
        return "tests/test_policies.py"
    return own


def available_tests(root: Path, modules: Sequence[str]) -> list[str]:
    """The brief's test files, plus each mutated module's own test file (if it has one)."""
    wanted = [*TESTS[:-1], *(own_test(m) for m in modules), TESTS[-1]]
    return [t for t in dict.fromkeys(wanted) if (root / t).exists()]


def baseline(worker: Worker, tests: Sequence[str]) -> float:
    """Run every unmutated test file once; return the seconds taken."""
    start = time.monotonic()
    cmd = [str(worker.python), *PYTEST_ARGS, *tests]
    proc = subprocess.run(
        cmd, cwd=worker.root, env=worker_env(), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the unmutated tests fail in {worker.root}:\n{proc.stdout[-4000:]}")
    return time.monotonic() - start


def imported_modules(worker: Worker, test_file: str, probe_dir: Path) -> set[str]:
    """The captchaflow modules that collecting `test_file` imports."""
    out = probe_dir / (test_file.replace("/", "_") + ".json")
    env = worker_env() | {"PYTHONPATH": str(probe_dir), "MUTATION_PROBE_OUT": str(out)}
    cmd: list[str | Path] = [
        worker.python,
        *PYTEST_ARGS,
        "--collect-only",
        "-p",
        "_mutation_probe",
        test_file,
    ]
    run(cmd, worker.root, env=env)
    return set(json.loads(out.read_text()))


def dotted_name(module: str) -> str:
    """`engine/_fsm.py` -> `captchaflow.engine._fsm`; `policies/__init__.py` -> the package."""
    parts = Path(module).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("captchaflow", *parts))


def defined_names(source: str) -> set[str]:
    """The names a module defines at its top level (classes, functions, assignments)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def names_any(root: Path, test_file: str, names: set[str]) -> bool:
    """Whether the test file's text names any of `names` (as a whole word)."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", (root / test_file).read_text()))
    return bool(words & names)


def test_files(root: Path, module: str, imports: dict[str, set[str]]) -> list[str]:
    """The test files that import `module` and name something it defines (every test file
    imports the whole `policies` package, but the conformance tests never touch the gates): its
    own file first (most mutants die there), then the killers, then the rest; `-x` stops at the
    first failure. The module's own file and the killers are always kept."""
    names = defined_names((root / module).read_text())
    relevant = [
        t
        for t in imports
        if dotted_name(module) in imports[t]
        and (t in (TESTS[-1], own_test(module)) or names_any(root, t, names))
    ]
    first = [t for t in (own_test(module), TESTS[-1]) if t in relevant]
    return first + [t for t in relevant if t not in first]


# --- sessions -----------------------------------------------------------------------------


def expand_modules(root: Path, modules: Sequence[str]) -> list[str]:
    """Each argument as one or more .py paths relative to the repository root."""
    found: list[str] = []
    for module in modules:
        path = root / module
        if path.is_dir():
            found.extend(str(p.relative_to(root)) for p in sorted(path.rglob("*.py")))
        elif path.suffix == ".py" and path.is_file():
            found.append(str(path.relative_to(root)))
        else:
            raise SystemExit(f"no such module or folder: {module}")
    return sorted(dict.fromkeys(found))


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the type annotations are, if the module never evaluates them.

    With `from __future__ import annotations` an annotation is kept as a string and never
    evaluated (attrs reads field names only), so a mutant inside one cannot change behaviour.
    """
    tree = ast.parse(source)
    postponed = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )
    if not postponed:
        return []
    nodes: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign | ast.arg) and node.annotation is not None:
            nodes.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            nodes.append(node.returns)
    return [
        ((n.lineno, n.col_offset), (n.end_lineno or n.lineno, n.end_col_offset or 0)) for n in nodes
    ]


def write_config(
    path: Path, module: str, command: str, timeout: float, workers: Sequence[Worker]
) -> None:
    urls = ", ".join(f'"http://127.0.0.1:{w.port}"' for w in workers)
    path.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        f"timeout = {timeout:.1f}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n\n'
        "[cosmic-ray.distributor]\n"
        'name = "http"\n\n'
        "[cosmic-ray.distributor.http]\n"
        f"worker-urls = [{urls}]\n"
    )


def dump(worker: Worker, session: Path, module: str) -> list[Mutant]:
    """Every work item of `session` with its result, if any (cosmic-ray's JSON dump)."""
    mutants = []
    for line in run([worker.cosmic_ray, "dump", session], worker.root).stdout.splitlines():
        item, result = json.loads(line)
        (spec,) = item["mutations"]
        mutant = Mutant(
            module=module,
            operator=spec["operator_name"],
            occurrence=int(spec["occurrence"]),
            line=int(spec["start_pos"][0]),
            job_id=item["job_id"],
            start=(int(spec["start_pos"][0]), int(spec["start_pos"][1])),
            end=(int(spec["end_pos"][0]), int(spec["end_pos"][1])),
        )
        if result is not None:
            if result["worker_outcome"] == "normal":
                mutant.outcome = str(result["test_outcome"])
            else:
                mutant.outcome = str(result["worker_outcome"])
            mutant.reason = (result["output"] or "") if mutant.outcome == "skipped" else ""
            mutant.diff = result["diff"] or ""
            if mutant.outcome not in ("killed", "survived", "skipped"):
                mutant.reason = "\n".join((result["output"] or "").splitlines()[-5:])
        mutants.append(mutant)
    return mutants


def mark_skipped(worker: Worker, session: Path, skip: dict[str, list[str]]) -> None:
    if any(skip.values()):
        request = json.dumps({"session": str(session), "skip": skip})
        run([worker.python, "-c", _MARK_SKIPPED], worker.root, stdin=request)


def count_results(sessions: Sequence[Path]) -> int:
    done = 0
    for session in sessions:
        with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as db:
            done += int(db.execute("SELECT count(*) FROM work_results").fetchone()[0])
    return done


def progress(sessions: Sequence[Path], total: int, stop: threading.Event, start: float) -> None:
    while not stop.wait(120):
        try:
            done = count_results(sessions)
        except sqlite3.Error as exc:  # the db may be busy; try again later
            log(f"progress unavailable: {exc}")
            continue
        log(f"{done}/{total} mutants settled, {time.monotonic() - start:.0f}s elapsed")


# --- workers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(worker: Worker, logs: Path) -> None:
    worker.port = free_port()
    worker.log_path = logs / f"worker-{worker.port}.log"
    with worker.log_path.open("wb") as out:
        worker.process = subprocess.Popen(
            [str(worker.cosmic_ray), "http-worker", "--port", str(worker.port)],
            cwd=worker.root,
            env=worker_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker exited: {worker.log_path.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", worker.port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"worker on port {worker.port} did not start")


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc; elsewhere none are found)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def stop_worker(worker: Worker) -> None:
    """Stop the worker and the test run it may have in flight (its own process group)."""
    proc = worker.process
    if proc is None or proc.poll() is not None:
        return
    tests = children_of(proc.pid)
    proc.kill()  # it is blocked in a test run; a polite SIGTERM would wait for that run
    proc.wait()
    for pid in tests:
        with contextlib.suppress(OSError):  # cosmic-ray starts each test run in a new session
            os.killpg(pid, signal.SIGKILL)


# --- results ------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reusable(path: Path | None, hashes: dict[str, str]) -> set[tuple[str, str, int]]:
    """Keys of the mutants that the run recorded in `path` killed in an unchanged module."""
    if path is None:
        return set()
    old = json.loads(path.read_text())
    same = {m for m, digest in old["modules"].items() if hashes.get(m) == digest}
    return {
        (m["module"], m["operator"], m["occurrence"])
        for m in old["mutants"]
        if m["module"] in same and m["outcome"] == "killed"
    }


def write_results(
    json_path: Path,
    report_path: Path,
    mutants: Sequence[Mutant],
    hashes: dict[str, str],
    summary: str,
) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "summary": summary,
        "modules": hashes,
        "mutants": [
            {k: v for k, v in asdict(m).items() if k not in ("job_id", "start", "end")}
            for m in sorted(mutants, key=lambda m: m.key)
        ],
    }
    json_path.write_text(json.dumps(record, indent=1) + "\n")
    lines = [summary, ""]
    for m in sorted(mutants, key=lambda m: m.key):
        if m.outcome in ("killed", "skipped"):
            continue
        lines.append(f"{m.outcome.upper()} {m.module}:{m.line} {m.operator} #{m.occurrence}")
        lines += ["    " + d for d in m.diff.splitlines() if d.startswith(("+", "-", "@"))]
        lines += ["    " + r for r in m.reason.splitlines()]
        lines.append("")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text("\n".join(lines) + "\n")


# --- main ---------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--modules",
        nargs="+",
        help="files or folders to mutate, relative to the repository root (default: "
        f"{' '.join(DEFAULT_MODULES)}, without {' '.join(DEFAULT_EXCLUDED)})",
    )
    parser.add_argument("--limit", type=int, help="run a seeded sample of N mutants")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: same as --limit {QUICK_LIMIT}"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--workers", type=int, default=2, help="parallel workers (default: 2)")
    parser.add_argument(
        "--timeout", type=float, help="per-mutant seconds (default: 3x the baseline, >= 60)"
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=RESULTS / "mutation-survivors.tmp",
        help="survivors and their diffs (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS / "mutation-results.tmp",
        help="every mutant's outcome, as JSON, for --reuse (default: %(default)s)",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        help="a --json file of an earlier run: its kills in unchanged modules are not re-run",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    limit = QUICK_LIMIT if args.quick and args.limit is None else args.limit
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()

    if args.modules:
        modules = expand_modules(ROOT, args.modules)
    else:
        modules = [m for m in expand_modules(ROOT, DEFAULT_MODULES) if m not in DEFAULT_EXCLUDED]
    tmp = Path(tempfile.mkdtemp(prefix="captchaflow-mutation-"))
    log(f"working in {tmp}; modules: {', '.join(modules)}")
    workers = [Worker(tmp / f"copy{i}") for i in range(max(1, args.workers))]
    try:
        files = repository_files(ROOT)
        for w in workers:
            copy_repository(files, ROOT, w.root)
        head = workers[0]
        hashes = {m: sha256(head.root / m) for m in modules}
        log(f"copied {len(files)} files into {len(workers)} copies; installing their venvs")
        in_parallel(install, workers)
        tests = available_tests(head.root, modules)
        times = in_parallel(lambda w: baseline(w, tests), workers)
        baseline_time = max(float(t) for t in times)  # type: ignore[arg-type]
        timeout = args.timeout or max(60.0, 3 * baseline_time)
        probe_dir = tmp / "probe"
        probe_dir.mkdir()
        (probe_dir / "_mutation_probe.py").write_text(_PROBE)
        imports = {t: imported_modules(head, t, probe_dir) for t in tests}
        log(f"baseline passes in {baseline_time:.0f}s; per-mutant timeout {timeout:.0f}s")

        sessions_dir = tmp / "sessions"
        sessions_dir.mkdir()
        for w in workers:
            start_worker(w, tmp)
        sessions: dict[str, Path] = {}
        configs: dict[str, Path] = {}
        everything: list[Mutant] = []
        for module in modules:
            name = module.replace("/", "_").removesuffix(".py")
            configs[module] = sessions_dir / f"{name}.toml"
            sessions[module] = sessions_dir / f"{name}.sqlite"
            selected = test_files(head.root, module, imports)
            log(f"{module}: tests {' '.join(selected)}")
            command = " ".join([f"{VENV}/bin/python", *PYTEST_ARGS, *selected])
            write_config(configs[module], module, command, timeout, workers)
            run([head.cosmic_ray, "init", configs[module], sessions[module]], head.root)
            everything.extend(dump(head, sessions[module], module))

        # Skip mutants inside never-evaluated annotations, sample, and reuse earlier kills.
        spans = {m: annotation_spans((head.root / m).read_text()) for m in modules}
        skip: dict[str, dict[str, list[str]]] = {m: {} for m in modules}

        def set_skipped(mutant: Mutant, reason: str) -> None:
            mutant.outcome, mutant.reason = "skipped", reason
            skip[mutant.module].setdefault(reason, []).append(mutant.job_id)

        eligible = []
        for m in sorted(everything, key=lambda m: m.key):
            if any(lo <= m.start and m.end <= hi for lo, hi in spans[m.module]):
                set_skipped(m, ANNOTATION)
            else:
                eligible.append(m)
        chosen = eligible
        if limit is not None and limit < len(eligible):
            chosen = random.Random(args.seed).sample(eligible, limit)
            sampled = {m.job_id for m in chosen}
            for m in eligible:
                if m.job_id not in sampled:
                    set_skipped(m, NOT_SAMPLED)
        carried = reusable(args.reuse, hashes)
        reused = [m for m in chosen if m.key in carried]
        for m in reused:
            set_skipped(m, REUSED)
        to_run = {m.module for m in chosen if m.outcome != "skipped"}
        for module in modules:
            mark_skipped(head, sessions[module], skip[module])
        log(
            f"{len(everything)} mutants: {len(everything) - len(eligible)} in annotations "
            f"(skipped), {len(chosen)} chosen, {len(reused)} killed before (reused), "
            f"{len(chosen) - len(reused)} to run"
        )

        stop = threading.Event()
        watcher = threading.Thread(
            target=progress,
            args=(list(sessions.values()), len(everything), stop, started),
            daemon=True,
        )
        watcher.start()
        results: dict[tuple[str, str, int], Mutant] = {}
        try:
            for module in sorted(to_run):
                log(f"mutating {module}")
                run([head.cosmic_ray, "exec", configs[module], sessions[module]], head.root)
                done = [m for m in dump(head, sessions[module], module) if m.outcome != "skipped"]
                results.update((m.key, m) for m in done)
                killed = sum(m.outcome == "killed" for m in done)
                log(f"{module}: {killed}/{len(done)} killed")
        finally:
            stop.set()
            for w in workers:
                stop_worker(w)

        for m in reused:
            m.outcome = "killed"
        final = [results.get(m.key, m) for m in everything]
        killed = sum(m.outcome == "killed" for m in final)
        survived = [m for m in final if m.outcome == "survived"]
        total = killed + len(survived)
        broken = [m for m in final if m.outcome not in ("killed", "survived", "skipped")]
        elapsed = time.monotonic() - started
        summary = (
            f"cosmic-ray, {len(everything)} mutants in {', '.join(modules)}: "
            f"{len(everything) - len(eligible)} in annotations skipped, "
            f"{len(eligible) - len(chosen)} not sampled, {killed} killed "
            f"({len(reused)} reused from {args.reuse}), {len(survived)} survived, "
            f"{len(broken)} incompetent or errored; {elapsed:.0f}s"
        )
        write_results(args.json, args.report, final, hashes, summary)
        for m in survived:
            log(f"survived: {m.module}:{m.line} {m.operator} #{m.occurrence}")
        log(summary)
        log(f"survivors: {args.report}; all outcomes: {args.json}")
        score = killed / total if total else 0.0
        print(f"mutation: killed={killed} total={total} score={score:.3f}", flush=True)
        return 0
    finally:
        for w in workers:
            stop_worker(w)
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
