"""Benchmark of deciding with several worker processes: events/s with 1, 2 and 3 `astralis worker` processes on
BullMQ, their speed-up, and the per-event cost of BullMQ against the in-process queue.

Run from the repository root (`make bench` runs it)::

    .venv/bin/python -m bench.scale                 # 3,000 events per run, SQLite and PostgreSQL (~4 min)
    .venv/bin/python -m bench.scale --events 1000   # while developing

Each run starts from a fresh store — a SQLite file, or a PostgreSQL database made for the run (`--store`,
default both) — holding N acme events (tests/cases/acme/corpus.jsonl cycled, each
with a fresh id) accepted into the inbox, and a private `redis-server` on a free port (nothing on disk). For the
BullMQ runs the events are also queued as jobs (`adapters.bullmq_queue.EventQueue`, as `astralis serve` queues
them) before the workers start. Then K `astralis worker` processes start together (`--llm off`; rate limits
raised out of the way, so that every decision goes through the gate and its actions run), and the run lasts
until the inbox is drained. Throughput is measured between the first and the last decision recorded
(`decisions.created_at`), so process start-up is left out:

| run | queue | workers |
|---|---|---|
| inprocess-1 | the inbox, claimed by the worker's own dispatcher (the embedded default) | 1 |
| bullmq-1, -2, -3 | BullMQ on Redis (`--redis-url`: shared rate limits too) | 1, 2, 3 |

Reported: events/s per run, the speed-up of bullmq-K over bullmq-1, and BullMQ's per-event overhead
`1/bullmq-1 − 1/inprocess-1` in ms. No target is set by the issue; the run always exits 0 unless a run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "cases" / "acme" / "corpus.jsonl"
PG_ADMIN = os.environ.get("ASTRALIS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path) -> tuple[Path, Path]:
    rulesets, policies = tmp / "rulesets", tmp / "policies"
    shutil.copytree(REPO / "rulesets", rulesets)
    shutil.copytree(REPO / "policies", policies)
    acme = policies / "acme.yaml"
    acme.write_text(acme.read_text() + "\nrate_limits: {per_minute: 1000000, per_hour: 100000000}\n")
    return rulesets, policies


async def _fill(db: str, n: int, redis_url: str | None) -> None:
    from adapters.sqlite_store import InboxItem
    from adapters.stores import open_store
    from engine.models import Event

    corpus = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    events = [Event.model_validate({**corpus[i % len(corpus)], "id": f"sc-{i:06d}"}) for i in range(n)]
    store = await open_store(db, synchronous="NORMAL")
    try:
        for i in range(0, n, 1000):
            await store.accept_events([InboxItem(e) for e in events[i:i + 1000]])
    finally:
        await store.close()
    if redis_url is not None:
        from adapters.bullmq_queue import EventQueue

        queue = EventQueue(redis_url, name="astralis-events")
        try:
            for e in events:
                await queue.add(e, priority=3, attempts=5, backoff_seconds=1.0)
        finally:
            await queue.close()


_WAITING = "SELECT count(*) FROM events WHERE status IN ('accepted', 'processing')"
_SPAN = "SELECT count(*), min(created_at), max(created_at) FROM decisions"


def _query(db: str, sql: str) -> tuple[Any, ...]:
    """One row of `sql` on either store (read-only for SQLite)."""
    if db.startswith("postgresql://"):
        import asyncpg

        async def go() -> tuple[Any, ...]:
            conn = await asyncpg.connect(db)
            try:
                return tuple(await conn.fetchrow(sql))
            finally:
                await conn.close()

        return asyncio.run(go())
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return tuple(c.execute(sql).fetchone())


def _drained(db: str) -> bool:
    return _query(db, _WAITING)[0] == 0


def _rate(db: str) -> tuple[int, float]:
    n, first, last = _query(db, _SPAN)
    first, last = (x if isinstance(x, datetime) else datetime.fromisoformat(x) for x in (first, last))
    span = (last - first).total_seconds()
    return int(n), (n - 1) / span if span > 0 else float("nan")


def _pg_admin(sql: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def run(kind: str, workers: int, n: int, tmp: Path, store: str = "sqlite") -> dict[str, Any]:
    """One run: fill, start `workers` processes, wait for the drain, stop them; the figures."""
    run_dir = tmp / f"{store}-{kind}-{workers}"
    run_dir.mkdir()
    rulesets, policies = _config(run_dir)
    db = str(run_dir / "astralis.db")
    pg_name = None
    if store == "postgres":
        pg_name = f"astralis_scale_{run_dir.name.replace('-', '_')}_{int(time.time())}"
        _pg_admin(f'CREATE DATABASE "{pg_name}"')
        db = PG_ADMIN.rsplit("/", 1)[0] + f"/{pg_name}"
    redis = None
    redis_url = None
    if kind == "bullmq":
        port = _free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(run_dir)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        redis_url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.3)
    procs = []
    try:
        asyncio.run(_fill(db, n, redis_url))
        argv = [sys.executable, "-m", "server.cli", "worker", "--db", str(db), "--rulesets", str(rulesets),
                "--policies", str(policies), "--llm", "off", "--no-watch", "--no-schedules", "--log-level", "WARNING",
                "--synchronous", "NORMAL"]
        if redis_url:
            argv += ["--redis-url", redis_url]
        for i in range(workers):
            with (run_dir / f"worker-{i}.log").open("wb") as out:
                procs.append(subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT))
        t0 = time.monotonic()
        while not _drained(db):
            if time.monotonic() - t0 > 600:
                raise RuntimeError(f"{kind}-{workers}: not drained in 600 s")
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{kind}-{workers}: a worker exited early; see {run_dir}")
            time.sleep(0.2)
        decided, rate = _rate(db)
        return {"run": f"{kind}-{workers}", "store": store, "workers": workers, "decided": decided,
                "events_per_s": rate}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        if redis is not None:
            redis.kill()
            redis.wait(10)
        if pg_name is not None:
            _pg_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    """Run every configuration and print the table."""
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=3000, help="events per run (default 3,000)")
    ap.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both",
                    help=f"the shared store of the runs (postgres: a fresh database per run at {PG_ADMIN})")
    args = ap.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("bench.scale needs redis-server (Debian package redis-server)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="astralis-scale-"))
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    rows = []
    try:
        for store in stores:
            rows += [run("inprocess", 1, args.events, tmp, store)]
            rows += [run("bullmq", k, args.events, tmp, store) for k in (1, 2, 3)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{args.events:,} acme events per run; decisions between the first and the last recorded\n")
    print("| store | run | worker processes | decided | events/s | speed-up vs bullmq-1 |\n"
          "|---|---|---:|---:|---:|---:|")
    for store in stores:
        by = {r["run"]: r for r in rows if r["store"] == store}
        one = by["bullmq-1"]["events_per_s"]
        for r in by.values():
            speed = f"{r['events_per_s'] / one:.2f}x" if r["run"].startswith("bullmq") else "—"
            print(f"| {store} | {r['run']} | {r['workers']} | {r['decided']:,} | {r['events_per_s']:,.0f} | {speed} |")
    for store in stores:
        by = {r["run"]: r for r in rows if r["store"] == store}
        one, base = by["bullmq-1"]["events_per_s"], by["inprocess-1"]["events_per_s"]
        print(f"\n{store}: BullMQ per-event overhead against the in-process queue (1 worker): "
              f"{(1 / one - 1 / base) * 1000:+.2f} ms ({base:,.0f} → {one:,.0f} events/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
