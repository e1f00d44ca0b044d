"""Dry runs over many events on several cores.

A dry run decides each event on its own (nothing is written, nothing is rate-limited, the state is a fixed
snapshot), so a long replay splits into chunks of consecutive events decided in worker processes. The workers are
forked after the events are loaded and the rules compiled: they inherit both, and only a chunk's bounds go to a
worker and only its decisions come back. The results are put back in event order, so the output does not depend
on the number of workers.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

T = TypeVar("T")

MIN_EVENTS_PER_JOB = 2000
"""Below this many events per worker, forking costs more than it saves: the run stays in this process."""
CHUNKS_PER_JOB = 8
"""Chunks per worker: small enough to keep every worker busy to the end and the progress bar moving."""

_WORK: Callable[[int, int], Any] | None = None


def _call(lo: int, hi: int) -> Any:
    """In a worker: the inherited work on events [lo, hi)."""
    assert _WORK is not None, "the work is set before the workers are forked"
    return _WORK(lo, hi)


def can_fork() -> bool:
    """Whether worker processes can inherit this one's memory (the fork start method; not on Windows/macOS
    defaults)."""
    return "fork" in multiprocessing.get_all_start_methods()


def default_jobs(events: int) -> int:
    """Workers for a run of `events`: one per CPU, but none that would get fewer than `MIN_EVENTS_PER_JOB`."""
    if not can_fork():
        return 1
    return max(1, min(os.cpu_count() or 1, events // MIN_EVENTS_PER_JOB))


def in_chunks(work: Callable[[int, int], T], n: int, jobs: int, *, on_done: Callable[[int], None] | None = None,
              on_started: Callable[[], None] | None = None) -> list[T]:
    """`work(lo, hi)` over consecutive chunks covering [0, n), in `jobs` forked processes (in this one when
    `jobs` ≤ 1), and the results in chunk order. `on_done(k)` is called in this process as each chunk of `k`
    events finishes; `on_started()` once the workers exist (start threads, such as a progress bar's, only then:
    forking a process that runs threads can deadlock the child). A worker's exception is raised here."""
    done = on_done or (lambda _k: None)
    if jobs <= 1 or n < 2 or not can_fork():
        if on_started is not None:
            on_started()
        out = work(0, n)
        done(n)
        return [out]
    global _WORK
    size = max(1, -(-n // (jobs * CHUNKS_PER_JOB)))
    bounds = [(lo, min(lo + size, n)) for lo in range(0, n, size)]
    _WORK = work
    gc.freeze()  # what the workers inherit stays out of their collector's sight (and shared, page for page)
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {pool.submit(_call, lo, hi): lo for lo, hi in bounds}  # the fork happens here
            if on_started is not None:
                on_started()
            results: dict[int, T] = {}
            for f in as_completed(futures):
                lo = futures[f]
                results[lo] = f.result()
                done(min(lo + size, n) - lo)
    finally:
        _WORK = None
        gc.unfreeze()
    return [results[lo] for lo, _ in bounds]
