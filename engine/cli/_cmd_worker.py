"""`captchaflow worker`: run jobs from a Redis work queue, sharing the account's limits,
journal and queue with every other worker on the same Redis (the `redis` extra)."""

from __future__ import annotations

import argparse

from ._account import _account, _add_account_options
from ._args import UsageError, _add_queue_options, _Commands, _positive_seconds, _task_count
from ._batch_io import worker_record

DEFAULT_WORKER_CONCURRENCY = 50


def register(commands: _Commands) -> argparse.ArgumentParser:
    """Add `worker` and its options to `commands`; return its parser."""
    parser = commands.add_parser(
        "worker",
        help="run tasks from a Redis queue, sharing one account with other workers",
        description="Take tasks from the Redis work queue (filled by `captchaflow batch "
        "--redis`) and solve them, at most N at a time, on one account shared with every "
        "worker on the same Redis: one rate, one set of task slots, one pause, one journal. "
        "A worker's jobs outlive it: killed, its tasks are taken over by the others after "
        "--idle-takeover seconds and resumed from the journal, never created twice.",
        epilog="exit status: 130 stopped by a signal (its tasks stay in the queue, to be "
        "resumed); 2 usage (no redis extra, a bad URL); 1 a bug",
    )
    parser.add_argument("--redis", required=True, metavar="URL", help="redis://host:port/db")
    parser.add_argument(
        "--concurrency",
        type=_task_count,
        default=DEFAULT_WORKER_CONCURRENCY,
        metavar="N",
        help=f"tasks in flight at most ({DEFAULT_WORKER_CONCURRENCY})",
    )
    parser.add_argument("--name", help="this worker's name in the queue (default: host-pid)")
    _add_queue_options(parser)
    parser.add_argument(
        "--idle-takeover",
        type=_positive_seconds,
        default=30.0,
        metavar="S",
        help="take over a task another worker left untouched this long (30)",
    )
    parser.add_argument(
        "--local-gate",
        action="store_true",
        help="share nothing of the account with the other workers: this worker learns the "
        "account's limits on its own, as if it were alone (for comparison)",
    )
    _add_account_options(parser, timeout_is="each task's deadline")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a worker until a signal stops it."""
    key, base_url = _account(args)
    try:
        from captchaflow.engine.distributed import RedisUnavailableError, Worker, shared_engine
    except ImportError as exc:
        raise UsageError(
            f"worker needs the redis extra (pip install 'captchaflow[redis]'): {exc}"
        ) from None

    async def main() -> None:
        async with shared_engine(
            args.redis,
            key,
            namespace=args.namespace,
            run=args.queue,
            worker=args.name,
            base_url=base_url,
            timeout=args.timeout,
            idle_takeover=args.idle_takeover,
            share_account=not args.local_gate,
        ) as runtime:
            worker = Worker(
                runtime.engine,
                runtime.queue,
                consumer=runtime.worker,
                concurrency=args.concurrency,
                record=worker_record,
            )
            await worker.run()

    import anyio

    try:
        anyio.run(main, backend="asyncio")
    except (RedisUnavailableError, ValueError) as exc:  # at start: an unusable --redis
        raise UsageError(f"--redis: {exc}") from None
    return 0
