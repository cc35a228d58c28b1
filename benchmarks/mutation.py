"""Mutation testing of the decision logic: `policies/`, `engine/_classify.py`, `engine/_fsm.py`.

Runs cosmic-ray over a throw-away copy of the repository (never the working tree: other people
edit it, and cosmic-ray rewrites files in place). Steps:

1. copy the working-tree versions of every tracked and untracked-but-not-ignored file into a
   temporary directory, once per worker;
2. give each copy its own venv with `pip install -e '<copy>[dev,mutation]'
   --config-settings editable_mode=strict`, so `captchaflow.*` imports resolve to that copy's
   files and a mutation written into the copy is what the tests import;
3. check that the unmutated tests pass in every copy, and derive the per-mutant timeout;
4. one cosmic-ray session per module (so each module's own test file runs first and `-x`
   stops early); mutations inside type annotations are skipped (with
   `from __future__ import annotations` they are never evaluated, so every such mutant is
   equivalent), and `--limit` keeps a seeded sample;
5. execute every session on cosmic-ray's HTTP distributor with one worker per copy, on
   127.0.0.1;
6. report the survivors (with their diffs) and print, as the last line,
   `mutation: killed=K total=T score=S`.

Usage:
    python benchmarks/mutation.py                  # everything (about an hour on 2 cores)
    python benchmarks/mutation.py --quick          # a seeded sample of 30 mutants
    python benchmarks/mutation.py --limit 100 --seed 7
    python benchmarks/mutation.py --modules engine/_fsm.py policies/_poll.py
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODULES = ("policies", "engine/_classify.py", "engine/_fsm.py")
BASE_TESTS = ("tests/test_classify.py", "tests/test_policies.py", "tests/test_fsm.py")
BASE_TESTS += ("tests/test_job.py",)
OPTIONAL_TESTS = ("tests/test_conformance.py",)
KILLER_TESTS = "tests/test_mutation_killers.py"
QUICK_LIMIT = 30
VENV = ".venv-mutation"
PYTEST_ARGS = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")
DEFAULT_REPORT = ROOT / "benchmarks" / "results" / "mutation-survivors.tmp"

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


def log(message: str) -> None:
    """Progress goes to stderr, so stdout ends with the one summary line."""
    print(f"[mutation {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Mutant:
    """One cosmic-ray work item and, once run, its outcome."""

    session: str
    job_id: str
    module: str
    operator: str
    occurrence: int
    start: tuple[int, int]
    end: tuple[int, int]
    worker_outcome: str | None = None
    test_outcome: str | None = None
    output: str = ""
    diff: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        """A stable identity (job ids are random uuids), used for sorting and sampling."""
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


def repository_files(root: Path) -> list[str]:
    """Tracked files plus untracked files git does not ignore, as in the working tree."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted({name for name in out.split("\0") if name and (root / name).is_file()})


def copy_repository(files: Sequence[str], source: Path, dest: Path) -> None:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target)


def run(cmd: Sequence[str | Path], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, raising with its output if it fails."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def install(worker: Worker) -> None:
    """A fresh venv with the copy installed strict-editable, plus the dev and mutation extras."""
    run([sys.executable, "-m", "venv", VENV], worker.root)
    run([worker.python, "-m", "pip", "install", "-q", "--upgrade", "pip"], worker.root)
    run(
        [
            worker.python,
            "-m",
            "pip",
            "install",
            "-q",
            "-e",
            ".[dev,mutation]",
            "--config-settings",
            "editable_mode=strict",
        ],
        worker.root,
    )
    # The installed package must be the copy's files (a link tree), or mutants are invisible.
    probe = "import captchaflow.engine._fsm as m; print(m.__file__)"
    imported = Path(run([worker.python, "-c", probe], worker.root).stdout.strip())
    if not imported.samefile(worker.root / "engine" / "_fsm.py"):
        raise RuntimeError(f"captchaflow.engine imports {imported}, not the copy in {worker.root}")


def test_files(root: Path, module: str) -> list[str]:
    """The test files for mutants of `module`, the most likely killers first (`-x` stops there)."""
    available = [t for t in (*BASE_TESTS, *OPTIONAL_TESTS) if (root / t).exists()]
    stem = Path(module).stem.lstrip("_")
    own = "tests/test_policies.py" if module.startswith("policies") else f"tests/test_{stem}.py"
    first = [own] if own in available else []
    killers = [KILLER_TESTS] if (root / KILLER_TESTS).exists() else []
    return first + killers + [t for t in available if t not in first]


def test_command(root: Path, module: str) -> str:
    # cosmic-ray runs this with cwd = the worker's copy, so the relative venv path is the copy's.
    return " ".join([f"{VENV}/bin/python", *PYTEST_ARGS, *test_files(root, module)])


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["HYPOTHESIS_PROFILE"] = "ci"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    return env


def baseline(worker: Worker, modules: Sequence[str]) -> float:
    """Run the unmutated tests (the union of all modules' commands); return the seconds taken."""
    files = sorted({t for m in modules for t in test_files(worker.root, m)})
    start = time.monotonic()
    proc = subprocess.run(
        [str(worker.python), *PYTEST_ARGS, *files],
        cwd=worker.root,
        env=worker_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the unmutated tests fail in {worker.root}:\n{proc.stdout[-4000:]}")
    return time.monotonic() - start


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
        if isinstance(node, ast.AnnAssign):
            nodes.append(node.annotation)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            nodes.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            nodes.append(node.returns)
    return [
        ((n.lineno, n.col_offset), (n.end_lineno or n.lineno, n.end_col_offset or 0)) for n in nodes
    ]


def in_spans(
    start: tuple[int, int], end: tuple[int, int], spans: list[tuple[tuple[int, int], ...]]
) -> bool:
    return any(lo <= start and end <= hi for lo, hi in spans)


def dump(worker: Worker, session: Path, module: str) -> list[Mutant]:
    """Every work item of `session` with its result, if any (cosmic-ray's JSON dump)."""
    out = run([worker.cosmic_ray, "dump", session], worker.root).stdout
    mutants = []
    for line in out.splitlines():
        item, result = json.loads(line)
        (spec,) = item["mutations"]
        mutant = Mutant(
            session=str(session),
            job_id=item["job_id"],
            module=module,
            operator=spec["operator_name"],
            occurrence=int(spec["occurrence"]),
            start=tuple(spec["start_pos"]),  # type: ignore[arg-type]
            end=tuple(spec["end_pos"]),  # type: ignore[arg-type]
        )
        if result is not None:
            mutant.worker_outcome = result["worker_outcome"]
            mutant.test_outcome = result["test_outcome"]
            mutant.output = result["output"] or ""
            mutant.diff = result["diff"] or ""
        mutants.append(mutant)
    return mutants


def mark_skipped(worker: Worker, session: Path, skip: dict[str, list[str]]) -> None:
    if any(skip.values()):
        request = json.dumps({"session": str(session), "skip": skip})
        run([worker.python, "-c", _MARK_SKIPPED], worker.root, input=request)


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


def stop_worker(worker: Worker) -> None:
    if worker.process is not None and worker.process.poll() is None:
        worker.process.terminate()
        try:
            worker.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


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


def count_results(sessions: Sequence[Path]) -> int:
    import sqlite3

    done = 0
    for session in sessions:
        with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as db:
            done += int(db.execute("SELECT count(*) FROM work_results").fetchone()[0])
    return done


def progress(sessions: Sequence[Path], total: int, stop: threading.Event, start: float) -> None:
    while not stop.wait(60):
        try:
            done = count_results(sessions)
        except Exception as exc:  # the db may be busy; try again next minute
            log(f"progress unavailable: {exc}")
            continue
        log(f"{done}/{total} results recorded, {time.monotonic() - start:.0f}s elapsed")


def chunks_of(mutants: Sequence[Mutant]) -> Iterator[tuple[str, list[Mutant]]]:
    by_module: dict[str, list[Mutant]] = {}
    for m in mutants:
        by_module.setdefault(m.module, []).append(m)
    yield from sorted(by_module.items())


def write_report(path: Path, ran: Sequence[Mutant], skipped: int, elapsed: float) -> None:
    killed = [m for m in ran if m.test_outcome == "killed"]
    survived = [m for m in ran if m.test_outcome == "survived"]
    other = [m for m in ran if m.test_outcome not in ("killed", "survived")]
    lines = [
        f"cosmic-ray run: {len(ran)} mutants run, {len(killed)} killed, {len(survived)} survived,"
        f" {len(other)} incompetent/errored, {skipped} skipped; {elapsed:.0f}s",
        "",
    ]
    for m in sorted(survived, key=lambda m: m.key):
        lines += [
            f"SURVIVED {m.module}:{m.start[0]} {m.operator} #{m.occurrence}",
            *("    " + d for d in m.diff.splitlines() if d.startswith(("+", "-", "@"))),
            "",
        ]
    for m in sorted(other, key=lambda m: m.key):
        lines += [f"{m.worker_outcome}/{m.test_outcome} {m.module}:{m.start[0]} {m.operator}"]
        lines += ["    " + d for d in m.output.splitlines()[-5:]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modules",
        nargs="+",
        default=list(DEFAULT_MODULES),
        help="files or folders to mutate, relative to the repository root (default: %(default)s)",
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
        default=DEFAULT_REPORT,
        help="where to write the survivors and their diffs (default: %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    limit = QUICK_LIMIT if args.quick and args.limit is None else args.limit
    started = time.monotonic()

    modules = expand_modules(ROOT, args.modules)
    tmp = Path(tempfile.mkdtemp(prefix="captchaflow-mutation-"))
    log(f"working in {tmp}; modules: {', '.join(modules)}")
    workers = [Worker(tmp / f"copy{i}") for i in range(max(1, args.workers))]
    try:
        files = repository_files(ROOT)
        for w in workers:
            copy_repository(files, ROOT, w.root)
        log(f"copied {len(files)} files into {len(workers)} copies; installing venvs")
        errors: list[BaseException] = []

        def guarded(fn: object, w: Worker) -> None:
            try:
                fn(w)  # type: ignore[operator]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=guarded, args=(install, w)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

        times: list[float] = []
        threads = [
            threading.Thread(
                target=guarded, args=(lambda w: times.append(baseline(w, modules)), w)
            )
            for w in workers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        timeout = args.timeout or max(60.0, 3 * max(times))
        log(f"baseline passes in {max(times):.1f}s; per-mutant timeout {timeout:.0f}s")

        sessions_dir = tmp / "sessions"
        sessions_dir.mkdir()
        head = workers[0]
        for w in workers:
            start_worker(w, tmp)
        sessions: dict[str, tuple[Path, Path]] = {}
        everything: list[Mutant] = []
        for module in modules:
            name = module.replace("/", "_").removesuffix(".py")
            config, session = sessions_dir / f"{name}.toml", sessions_dir / f"{name}.sqlite"
            write_config(config, module, test_command(head.root, module), timeout, workers)
            run([head.cosmic_ray, "init", config, session], head.root)
            sessions[module] = (config, session)
            everything.extend(dump(head, session, module))

        # Skip mutants inside never-evaluated annotations, then sample what is left.
        spans = {m: annotation_spans((head.root / m).read_text()) for m in modules}
        skip: dict[str, dict[str, list[str]]] = {m: {} for m in modules}
        eligible = []
        for m in everything:
            if in_spans(m.start, m.end, spans[m.module]):  # type: ignore[arg-type]
                skip[m.module].setdefault("in a type annotation (never evaluated)", [])
                skip[m.module]["in a type annotation (never evaluated)"].append(m.job_id)
            else:
                eligible.append(m)
        annotation_skips = len(everything) - len(eligible)
        eligible.sort(key=lambda m: m.key)
        chosen = eligible
        if limit is not None and limit < len(eligible):
            chosen = sorted(random.Random(args.seed).sample(eligible, limit), key=lambda m: m.key)
            chosen_ids = {m.job_id for m in chosen}
            for m in eligible:
                if m.job_id not in chosen_ids:
                    skip[m.module].setdefault("not in the sample", []).append(m.job_id)
        for module, (_, session) in sessions.items():
            mark_skipped(head, session, skip[module])
        log(
            f"{len(everything)} mutants, {annotation_skips} in annotations skipped, "
            f"{len(chosen)} to run"
        )

        stop = threading.Event()
        watcher = threading.Thread(
            target=progress,
            args=([s for _, s in sessions.values()], len(everything), stop, started),
            daemon=True,
        )
        watcher.start()
        ran: list[Mutant] = []
        try:
            for module, _ in chunks_of(chosen):
                config, session = sessions[module]
                log(f"mutating {module}")
                run([head.cosmic_ray, "exec", config, session], head.root, env=worker_env())
                results = [m for m in dump(head, session, module) if m.worker_outcome != "skipped"]
                ran.extend(results)
                k = sum(m.test_outcome == "killed" for m in results)
                log(f"{module}: {k}/{len(results)} killed")
        finally:
            stop.set()
            for w in workers:
                stop_worker(w)

        elapsed = time.monotonic() - started
        write_report(args.report, ran, len(everything) - len(chosen), elapsed)
        killed = sum(m.test_outcome == "killed" for m in ran)
        total = sum(m.test_outcome in ("killed", "survived") for m in ran)
        for m in sorted(ran, key=lambda m: m.key):
            if m.test_outcome == "survived":
                log(f"survived: {m.module}:{m.start[0]} {m.operator} #{m.occurrence}")
        log(f"report: {args.report}; {elapsed:.0f}s in all")
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
