"""Reading query logs into a Collector: in-process for small logs, in byte-range pieces by forked worker
processes for large ones (same groups, order and first-record-wins choices as one sequential pass)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from robust_api.errors import LogError
from robust_api.query_logs.store import count_lines_before, read_log_range, split_log
from robust_api.replay.grouping import Collector, Rule

log = logging.getLogger("robust_api.replay")

# Pieces of about this size are read by worker processes; smaller logs are read in-process.
PARALLEL_PIECE_BYTES = 32 << 20

_worker_rule: Rule | None = None
_worker_sigma: float | None = None


def _worker_init(rule: Rule, sigma: float | None) -> None:
    global _worker_rule, _worker_sigma
    _worker_rule, _worker_sigma = rule, sigma


def _worker_scan(task: tuple[str, int, int | None]) -> tuple[str, Any]:
    """Collect one byte range of one log in a worker; a LogError comes back as data (it does not pickle)."""
    path, start, end = task
    collector = Collector(_worker_rule, _worker_sigma)
    try:
        collector.add_records(read_log_range(path, start, end, on_torn=collector.on_torn), path)
    except LogError as exc:
        return "log_error", (exc.path, exc.line, exc.reason)
    collector.rule = None
    collector._settings_cache.clear()
    collector._labels.clear()
    return "ok", collector


def _fork_context():
    import multiprocessing
    import threading

    # fork shares the rule (any callable) with the workers without pickling it. Forking a process that runs
    # other threads can deadlock the child on a lock held at fork time, so then read in-process instead.
    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        log.debug("reading query logs in-process (fork unavailable or other threads running)")
        return None
    return multiprocessing.get_context("fork")


def default_workers() -> int:
    """Worker processes the CLI uses for large logs: one per core, at most 8."""
    import os

    return max(1, min(8, os.cpu_count() or 1))


def collect(paths: Sequence[str | Path], rule: Rule, sigma: float | None, workers: int) -> Collector:
    """Read and decide every record; large logs are cut into pieces read by `workers` processes."""
    collector = Collector(rule, sigma)
    ctx = _fork_context() if workers > 1 else None
    tasks: list[tuple[str, int, int | None]] = []
    for path in paths:
        p = Path(path)
        size = p.stat().st_size if p.is_file() else 0
        if ctx is None or size < 2 * PARALLEL_PIECE_BYTES:
            tasks.append((str(path), 0, None))
        else:
            pieces = max(workers, size // PARALLEL_PIECE_BYTES)
            tasks.extend((str(path), a, b) for a, b in split_log(p, int(pieces)))
    if ctx is None or len(tasks) == len(paths):
        for path, _, _ in tasks:
            collector.add_records(read_log_range(path, on_torn=collector.on_torn), path)
        return collector

    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(rule, sigma))
    try:
        futures = [pool.submit(_worker_scan, task) for task in tasks]
        for (path, start, _), future in zip(tasks, futures):  # merged in file order: first record wins
            status, payload = future.result()
            if status == "log_error":
                err_path, line, reason = payload
                if line is not None and start:  # line numbers are relative to the piece
                    line += count_lines_before(path, start)
                raise LogError(err_path, line, reason)
            if start:
                payload.torn = [(p, ln + count_lines_before(p, start), nb, r) for p, ln, nb, r in payload.torn]
            collector.merge(payload)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return collector


