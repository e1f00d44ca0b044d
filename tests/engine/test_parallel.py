"""engine.parallel: chunks of a dry run decided in forked processes, put back in order."""

import os

import pytest

from engine.parallel import can_fork, default_jobs, in_chunks

pytestmark = pytest.mark.skipif(not can_fork(), reason="worker processes need the fork start method")


def test_chunks_cover_every_event_once_in_order_and_run_in_other_processes():
    done: list[int] = []
    started: list[bool] = []
    chunks = in_chunks(lambda lo, hi: [(i, os.getpid()) for i in range(lo, hi)], 1001, 3,
                       on_done=done.append, on_started=lambda: started.append(True))
    flat = [i for chunk in chunks for i, _ in chunk]
    assert flat == list(range(1001))
    pids = {pid for chunk in chunks for _, pid in chunk}
    assert os.getpid() not in pids and 1 <= len(pids) <= 3
    assert sum(done) == 1001 and len(done) == len(chunks) == 24 and started == [True]


def test_one_job_runs_here_in_one_chunk():
    assert in_chunks(lambda lo, hi: [os.getpid(), lo, hi], 50, 1) == [[os.getpid(), 0, 50]]


def test_a_failing_chunk_raises_here():
    def work(lo: int, hi: int) -> list[int]:
        if lo <= 500 < hi:
            raise ValueError(f"event {500} is bad")
        return list(range(lo, hi))

    with pytest.raises(ValueError, match="event 500 is bad"):
        in_chunks(work, 1000, 2)


def test_default_jobs_keeps_short_runs_in_one_process():
    assert default_jobs(10) == 1
    assert default_jobs(1_000_000) == (os.cpu_count() or 1)
