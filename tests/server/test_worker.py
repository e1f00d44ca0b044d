"""`astralis serve --workers 0` beside `astralis worker` processes: the front only accepts, the workers decide,
all through one SQLite inbox; a worker killed mid-way loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.test_crash import (
    BASE_ARGS,
    ROOT,
    check_exactly_once,
    deliver,
    drain,
    envelopes,
    inbox,
    when_busy,
)


def worker(db: Path, log: Path) -> subprocess.Popen[bytes]:
    """An `astralis worker` process on `db` (same flags as the front)."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "server.cli", "worker", "--db", str(db), *BASE_ARGS[:4],
                                 "--lease", "2"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.timeout(90)
async def test_front_accepts_and_separate_workers_decide_each_event_once(serve, tmp_path):
    front = serve("--workers", "0")
    front.start()
    await front.ready()
    events = envelopes("split", 200)
    got = await deliver(front.url, front.key, events)
    assert len(got.acked) == 200 and not got.failed and not got.other
    assert inbox(front.db)["accepted"] == 200  # the front decides nothing itself

    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log", tmp_path / "worker-3.log"]
    w1, w2 = worker(front.db, logs[0]), worker(front.db, logs[1])
    try:
        await when_busy(front.db, min_decided=20, within=30)
        os.kill(w1.pid, signal.SIGKILL)  # one worker dies holding leases; the other goes on
        w1.wait(10)
        await drain(front.db, within=45)
        counts = check_exactly_once(front.db, got.acked)
        assert counts
    finally:
        for w in (w1, w2):
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                assert w.wait(20) == 0
        for log in logs:
            if log.exists():
                print(log.read_text())
    assert "Traceback" not in logs[1].read_text()
