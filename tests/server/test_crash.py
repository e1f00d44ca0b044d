"""Crash recovery of `astralis serve`: SIGKILL while events are being accepted and decided, then a restart on
the same database. Every acknowledged event is decided exactly once, nothing accepted is lost and no action
reaches the outbox twice.

`Serve`, `deliver`, `inbox` and `check_exactly_once` are shared with test_shutdown.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = [json.loads(line) for line in (ROOT / "tests" / "cases" / "acme" / "corpus.jsonl").read_text().splitlines()
          if line.strip()]
BASE_ARGS = ("--llm", "off", "--no-watch", "--no-schedules", "--rate-limit", "100000000", "--lease", "2")


def envelopes(prefix: str, n: int) -> list[dict[str, Any]]:
    """`n` acme events from the corpus, each with a unique id and without `org` (the API key says it)."""
    out = []
    for i in range(n):
        e = {k: v for k, v in CORPUS[i % len(CORPUS)].items() if k != "org"}
        e["id"] = f"{prefix}-{i:03d}"
        out.append(e)
    return out


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def connect(db: Path, *, readonly: bool = False) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the service's file (read-only: safe next to a running server, WAL)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro" if readonly else str(db), uri=readonly, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def inbox(db: Path) -> Counter[str]:
    """How many inbox events are in each status (read-only: the server may be running)."""
    with connect(db, readonly=True) as c:
        return Counter({r[0]: int(r[1]) for r in c.execute("SELECT status, count(*) FROM events GROUP BY status")})


class Serve:
    """`astralis serve` as a child process on one SQLite file, with an API key of org acme. Each start gets a
    fresh port and its own log file (stdout and stderr, JSON lines); `logs()` gives them all for a failure."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.dir = tmp_path
        self.db = tmp_path / "astralis.db"
        self.args = args
        self.runs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        out = subprocess.run([sys.executable, "-m", "server.cli", "keys", "create", "--org", "acme", "--db",
                              str(self.db)], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
        assert out.returncode == 0, out.stderr
        self.key = out.stdout.strip()

    @property
    def url(self) -> str:
        """The root URL of the current run."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str, env: dict[str, str] | None = None) -> None:
        """Start a run (later flags override earlier ones, e.g. `--llm policy`)."""
        assert self.proc is None or self.proc.poll() is not None, "the previous run is still going"
        self.port = free_port()
        log = self.dir / f"serve-{len(self.runs) + 1}.log"
        self.runs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--db", str(self.db), "--port", str(self.port),
                 *BASE_ARGS, *self.args, *extra],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    async def ready(self, within: float = 30.0) -> float:
        """Wait for GET /healthz 200; the seconds it took."""
        assert self.proc is not None
        t0 = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            while True:
                assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}\n{self.logs()}"
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with s.get(f"{self.url}/healthz") as r:
                        if r.status == 200:
                            return time.monotonic() - t0
                assert time.monotonic() - t0 < within, f"serve not ready after {within} s\n{self.logs()}"
                await asyncio.sleep(0.05)

    @property
    def pid(self) -> int:
        """The current run's process id."""
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as in a power cut of the process."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM and wait: (exit code, seconds until the process was gone)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - t0

    def stop(self) -> None:
        """Make sure nothing is left running (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_lines(self, run: int = -1) -> list[str]:
        """The lines one run wrote."""
        return self.runs[run].read_text(errors="replace").splitlines()

    def logs(self) -> str:
        """Every run's output, for a failure message."""
        return "\n".join(f"----- {p.name}\n{p.read_text(errors='replace')}" for p in self.runs if p.exists())

    def recovered(self, run: int = -1) -> int:
        """How many events the run took back from dead processes at start (its log line says so)."""
        for line in self.log_lines(run):
            msg = json.loads(line).get("msg", "")
            if msg.startswith("recovered ") and msg.endswith(" unfinished events from a previous run"):
                return int(msg.split()[1])
        return 0


def servers(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    """The body of the `serve` fixtures: `make(*args)` → a `Serve` on a temporary database; afterwards its runs
    are stopped and their logs printed (pytest shows them when the test fails)."""
    made: list[Serve] = []

    def make(*args: str) -> Serve:
        s = Serve(tmp_path, *args)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()
        print(s.logs())



@dataclass
class Delivery:
    """What a sender saw: the ids acknowledged (202, or 200 for a duplicate already decided), the ids whose
    request failed without an answer (connection reset or refused), and any other answer."""

    acked: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    other: dict[str, tuple[int, str]] = field(default_factory=dict)


async def deliver(url: str, key: str, events: list[dict[str, Any]], *, concurrency: int = 32,
                  on_ack: Callable[[int], None] | None = None) -> Delivery:
    """POST each event in queue mode, `concurrency` at a time; `on_ack(n)` after each acknowledgement."""
    got = Delivery()
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        async def one(e: dict[str, Any]) -> None:
            async with gate:
                try:
                    async with s.post(f"{url}/api/agent/process", params={"mode": "queue"}, json=e,
                                      headers=headers) as r:
                        text = await r.text()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    got.failed[e["id"]] = type(exc).__name__
                    return
            if r.status == 202 or (r.status == 200 and json.loads(text).get("duplicate")):
                got.acked.add(e["id"])
                if on_ack is not None:
                    on_ack(len(got.acked))
            else:
                got.other[e["id"]] = (r.status, text)

        await asyncio.gather(*(one(e) for e in events))
    return got


async def drain(db: Path, within: float = 30.0) -> float:
    """Wait until no inbox event is accepted or processing; the seconds it took."""
    t0 = time.monotonic()
    while True:
        counts = inbox(db)
        if counts["accepted"] == 0 and counts["processing"] == 0:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < within, f"inbox not drained after {within} s: {dict(counts)}"
        await asyncio.sleep(0.05)


async def when_busy(db: Path, *, min_decided: int = 0, within: float = 10.0) -> Counter[str]:
    """Poll the inbox (read-only) until a worker holds an event, others wait, and at least `min_decided` are
    decided; that snapshot."""
    t0 = time.monotonic()
    while True:
        with contextlib.suppress(sqlite3.OperationalError):  # the file or its tables may not exist yet
            counts = inbox(db)
            if counts["processing"] > 0 and counts["accepted"] > 0 and counts["decided"] >= min_decided:
                return counts
        assert time.monotonic() - t0 < within, "the workers were never seen busy"
        await asyncio.sleep(0.002)


def check_exactly_once(db: Path, acked: set[str]) -> dict[str, int]:
    """Every event in the inbox is decided by exactly one decision, every acknowledged event is in the inbox,
    and each EXECUTED decision has exactly its own actions in the outbox, once. Returns a few counts."""
    with connect(db) as c:
        statuses = Counter(r[0] for r in c.execute("SELECT status FROM events"))
        assert set(statuses) == {"decided"}, f"events not decided: {dict(statuses)}"
        events = {r["id"]: r["decision_id"] for r in c.execute("SELECT id, decision_id FROM events WHERE org = 'acme'")}
        assert not acked - events.keys(), f"acknowledged but not in the inbox: {sorted(acked - events.keys())}"

        per_event = Counter((r[0], r[1]) for r in c.execute("SELECT org, event_id FROM decisions"))
        twice = {k: n for k, n in per_event.items() if n != 1}
        assert not twice, f"events with more than one decision: {twice}"
        assert set(per_event) == {("acme", i) for i in events}, "decisions without an inbox event, or vice versa"

        decisions = {r["id"]: json.loads(r["record"]) for r in c.execute("SELECT id, record FROM decisions")}
        for event_id, decision_id in events.items():
            assert decisions[decision_id]["event_id"] == event_id, (event_id, decision_id)

        rows = c.execute("SELECT key, decision_id, idx FROM actions ORDER BY decision_id, idx").fetchall()
        keys = [r["key"] for r in rows]
        assert len(keys) == len(set(keys)), "an idempotency key is in the outbox twice"
        outbox: dict[str, list[str]] = defaultdict(list)
        for r in rows:
            outbox[r["decision_id"]].append(r["key"])
        assert not outbox.keys() - decisions.keys(), "outbox rows of a decision that was not stored"
        sets_per_event = Counter(decisions[d]["event_id"] for d in outbox)
        assert all(n == 1 for n in sets_per_event.values()), "an event with two sets of outbox rows"
        executed = 0
        for decision_id, d in decisions.items():
            expected = ([a.get("idempotency_key") or f"{decision_id}:{i}" for i, a in enumerate(d["actions"])]
                        if d["status"] == "EXECUTED" else [])
            executed += d["status"] == "EXECUTED"
            assert outbox.get(decision_id, []) == expected, f"outbox of {decision_id} ({d['status']})"

        stream = Counter(r[0] for r in c.execute("SELECT decision_id FROM stream"))
        assert set(stream) == decisions.keys() and set(stream.values()) == {1}, "a decision streamed twice"
        total, successful = c.execute(
            "SELECT total_decisions, successful_decisions FROM agent_counters WHERE org = 'acme'").fetchone()
        assert (total, successful) == (len(decisions), executed), "counters counted a decision twice"
    return {"events": len(events), "decisions": len(decisions), "executed": executed, "actions": len(rows)}


def assert_clean_log(server: Serve, run: int) -> None:
    """The run wrote JSON lines only, with no traceback and no error."""
    for line in server.log_lines(run):
        assert "Traceback" not in line, line
        record = json.loads(line)
        assert record["level"] not in ("ERROR", "CRITICAL"), line


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_sigkill_mid_stream_loses_nothing_and_decides_once(serve: Callable[..., Serve]) -> None:
    """Killed after ~150 of 300 acknowledgements, with requests in flight and workers holding events; the
    restart takes the dead worker's events back at once and decides everything the inbox holds."""
    server = serve()
    events = envelopes("crash", 300)
    server.start()
    await server.ready()

    enough = asyncio.Event()

    def on_ack(n: int) -> None:
        if n >= 150:
            enough.set()

    async def killer() -> Counter[str]:
        await enough.wait()
        busy = await when_busy(server.db)
        server.kill()
        return busy

    sending = asyncio.create_task(deliver(server.url, server.key, events, on_ack=on_ack))
    busy = await killer()
    sent = await sending

    assert not sent.other, f"unexpected answers: {sent.other}"
    assert sent.acked | sent.failed.keys() == {e["id"] for e in events}
    assert 150 <= len(sent.acked) < len(events), "the kill did not land mid-stream"
    assert set(sent.failed.values()) - {"ClientConnectorError"}, "no request in flight was cut off by the kill"
    at_kill = inbox(server.db)  # the file as the dead process left it
    with connect(server.db) as c:
        in_inbox = {r[0] for r in c.execute("SELECT id FROM events")}
    assert not sent.acked - in_inbox, f"acknowledged, yet not in the inbox: {sorted(sent.acked - in_inbox)}"
    assert busy["processing"] > 0 and at_kill["accepted"] + at_kill["processing"] > 0, dict(at_kill)

    server.start()
    await server.ready()
    drained = await drain(server.db)
    code, _ = server.terminate()
    assert code == 0, server.logs()

    assert server.recovered() == at_kill["processing"], "the restart did not take back the dead worker's events"
    counts = check_exactly_once(server.db, sent.acked)
    assert counts["events"] == len(in_inbox)
    assert_clean_log(server, -1)
    print(f"acked {len(sent.acked)}, in the inbox unacknowledged {len(in_inbox - sent.acked)}, "
          f"failed requests {len(sent.failed)} ({dict(Counter(sent.failed.values()))}); "
          f"seen just before the kill {dict(busy)}; left by the kill {dict(at_kill)}; "
          f"recovered at restart {server.recovered()}; drained in {drained:.2f} s; {counts}")


@pytest.mark.timeout(90)
async def test_three_sigkills_in_a_row_then_a_clean_run(serve: Callable[..., Serve]) -> None:
    """Killed once while accepting, twice more while deciding the backlog; a client resends what was never
    acknowledged on the last run. Every event is decided once."""
    server = serve("--max-attempts", "20")  # four claims of one event must not dead-letter it here
    events = envelopes("repeat", 300)
    server.start()
    await server.ready()
    enough = asyncio.Event()

    def on_ack(n: int) -> None:
        if n >= 100:
            enough.set()

    sending = asyncio.create_task(deliver(server.url, server.key, events, on_ack=on_ack))
    await enough.wait()
    seen = [await when_busy(server.db)]
    server.kill()
    first = await sending
    assert not first.other, f"unexpected answers: {first.other}"
    acked = first.acked
    left = [inbox(server.db)]
    recovered = []

    for _ in range(2):  # killed while deciding what the previous run left, before it is done
        decided = left[-1]["decided"]
        server.start()
        seen.append(await when_busy(server.db, min_decided=decided + 20, within=30))
        server.kill()
        left.append(inbox(server.db))
        recovered.append(server.recovered())
        assert left[-1]["decided"] > decided, "the run decided nothing before it was killed"

    server.start()
    await server.ready()
    missing = [e for e in events if e["id"] not in acked]
    resent = await deliver(server.url, server.key, missing)
    assert resent.acked == {e["id"] for e in missing}, (resent.failed, resent.other)
    drained = await drain(server.db)
    code, _ = server.terminate()
    assert code == 0, server.logs()
    recovered.append(server.recovered())

    for before, at_start in zip(left, recovered, strict=True):
        assert at_start == before["processing"], (left, recovered)
    counts = check_exactly_once(server.db, acked | resent.acked)
    assert counts["events"] == len(events)
    assert_clean_log(server, -1)
    print(f"acked on the first run {len(acked)}, resent {len(missing)}; seen before each kill "
          f"{[dict(s) for s in seen]}; left by each kill {[dict(x) for x in left]}; recovered at each start "
          f"{recovered}; drained in {drained:.2f} s; {counts}")
