"""The PostgreSQL store: migrations, opening by URL, and what SQLite never had to prove — several processes
(or stores with pools of their own) at once: claims, completions, approvals, bookings, timers and counters
without double effects; the live stream and DB triggers over LISTEN/NOTIFY. The store port's behaviour on
both stores is in test_store_port.py."""

# ruff: noqa: F811  (the store fixtures are imported from tests/stores.py, then named as arguments)

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from adapters.pg_store import DB_TRIGGER_FUNCTION, PG_MIGRATIONS, PGStore
from adapters.sqlite_inbox import InboxItem
from adapters.sqlite_store import MIGRATIONS, SCHEMA_VERSION, SQLiteStore
from adapters.stores import open_store, store_kind
from engine.models import LLMTrace
from tests.stores import (  # noqa: F401
    T0,
    MakeDecision,
    PGTarget,
    event,
    make_decision,
    pg_database,
    pg_target,
)


async def _until(predicate: Any) -> None:
    """Wait (at most 5 s) until `predicate()` is true: notifications arrive asynchronously."""
    for _ in range(250):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


# ---- opening, migrations -------------------------------------------------------------------------------


def test_migrations_follow_the_sqlite_steps() -> None:
    # A step added to one store and not the other would make their schema versions mean different things.
    assert [(m.version, m.description) for m in PG_MIGRATIONS] == [(m.version, m.description) for m in MIGRATIONS]


async def test_migrations_idempotent_on_reopen(pg_target: PGTarget) -> None:
    for _ in range(3):
        store = await pg_target.open()
        assert await store.schema_version() == SCHEMA_VERSION
        await store.close()
    store = await pg_target.open()
    async with store._read() as db:
        versions = [r[0] for r in await db.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_concurrent_opens_migrate_once(pg_target: PGTarget) -> None:
    stores = await asyncio.gather(*(pg_target.open() for _ in range(3)))
    assert [await s.schema_version() for s in stores] == [SCHEMA_VERSION] * 3


async def test_refuses_a_newer_schema(pg_target: PGTarget) -> None:
    store = await pg_target.open()
    async with store._write() as db:
        await db.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', '2030-01-01T00:00:00Z')")
    with pytest.raises(RuntimeError, match="newer"):
        await pg_target.open()


async def test_synchronous_setting(pg_target: PGTarget) -> None:
    full = await pg_target.open()
    normal = await pg_target.open(synchronous="NORMAL")
    for store, expected in ((full, "on"), (normal, "off")):
        async with store._read() as db:
            assert await db.fetchval("SHOW synchronous_commit") == expected
    with pytest.raises(ValueError):
        await pg_target.open(synchronous="OFF")  # type: ignore[arg-type]


async def test_data_survives_close_and_reopen(pg_target: PGTarget, make_decision: MakeDecision) -> None:
    d = make_decision(status="EXECUTED")
    store = await pg_target.open()
    await store.record_event(event())
    await store.save_decision(d)
    await store.close()
    await store.close()  # idempotent
    again = await pg_target.open()
    assert await again.get_decision("acme", d.id) == d
    assert (await again.get_event("acme", "evt_1") or {})["status"] == "accepted"
    assert await again.counters("acme") == {"total_decisions": 1, "successful_decisions": 1}


async def test_open_store_by_url(tmp_path: Path, pg_database: str) -> None:
    assert store_kind("postgresql://u@h/db") == store_kind("postgres://h/db") == "postgres"
    assert store_kind("/var/lib/astralis.db") == store_kind("sqlite:///a.db") == store_kind(":memory:") == "sqlite"
    with pytest.raises(ValueError, match="scheme"):
        store_kind("mysql://h/db")
    for url in (str(tmp_path / "a.db"), f"sqlite:///{tmp_path / 'b.db'}", "sqlite://"):
        store = await open_store(url, synchronous="NORMAL")
        assert isinstance(store, SQLiteStore)
        await store.close()
    assert (tmp_path / "a.db").exists() and (tmp_path / "b.db").exists()
    pg = await open_store(pg_database, schema="by_url")
    try:
        assert isinstance(pg, PGStore) and await pg.schema_version() == SCHEMA_VERSION
    finally:
        await pg.close()


# ---- several processes at once ---------------------------------------------------------------------------


async def test_three_pools_claim_every_event_exactly_once(pg_target: PGTarget) -> None:
    stores = [await pg_target.open(max_size=3) for _ in range(3)]
    await stores[0].accept_events([InboxItem(event(id=f"e{i:03d}"), priority=i % 3) for i in range(300)])

    async def worker(store: PGStore, name: str) -> list[str]:
        got: list[str] = []
        while claimed := await store.claim_events(name, limit=7):
            got.extend(c.event.id for c in claimed)
        return got

    results = await asyncio.gather(*(worker(s, f"w{i}") for i, s in enumerate(stores)))
    every = [i for r in results for i in r]
    assert len(every) == 300 and len(set(every)) == 300
    assert all(results), "each worker claimed some"
    assert await stores[1].inbox_depth() == {"accepted": 0, "processing": 300, "decided": 0, "dead": 0}


COMPLETE = """
import asyncio, sys
from adapters.pg_store import PGStore
from engine.models import Decision

async def main(url, schema, record):
    store = await PGStore.open(url, schema=schema)
    print("ready", flush=True)
    sys.stdin.readline()  # both processes go at the same moment
    _, new = await store.complete_event(Decision.model_validate_json(record))
    await store.close()
    print("new" if new else "refused", flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_two_processes_completing_one_event_record_one_decision(
        pg_target: PGTarget, make_decision: MakeDecision) -> None:
    store = await pg_target.open()
    await store.accept_events([InboxItem(event(id="shared"))])
    await store.claim_events("w1")
    decisions = [make_decision(event_id="shared", status="EXECUTED"), make_decision(event_id="shared")]
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", COMPLETE, pg_target.url, pg_target.schema, d.model_dump_json(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).parents[2])) for d in decisions]
    for p in procs:
        assert p.stdout is not None and await asyncio.wait_for(p.stdout.readline(), 30) == b"ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
    outputs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err.decode() for _, err in outputs]
    said = [out.decode().strip() for out, _ in outputs]
    assert sorted(said) == ["new", "refused"]
    winner = decisions[said.index("new")]
    loser = decisions[1 - decisions.index(winner)]
    info = await store.event_info("acme", "shared")
    assert info is not None and (info["status"], info["decision_id"]) == ("decided", winner.id)
    assert await store.get_decision("acme", loser.id) is None
    assert await store.counters("acme") == {"total_decisions": 1, "successful_decisions": int(
        winner.status == "EXECUTED")}
    assert len(await store.stream_after("acme", 0)) == 1


async def test_concurrent_completions_and_approvals_across_pools(
        pg_target: PGTarget, make_decision: MakeDecision) -> None:
    a, b = await pg_target.open(), await pg_target.open()
    await a.accept_events([InboxItem(event(id=f"e{i}")) for i in range(20)])
    mine = [make_decision(event_id=f"e{i}", status="REQUIRES_APPROVAL") for i in range(20)]
    theirs = [make_decision(event_id=f"e{i}", status="EXECUTED") for i in range(20)]
    # Overlapping batches in opposite orders: no deadlock, one decision per event.
    got = await asyncio.gather(a.complete_events(mine), b.complete_events(list(reversed(theirs))))
    assert sum(new for batch in got for _, new in batch) == 20
    assert (await a.counters("acme"))["total_decisions"] == 20
    awaiting = [d for batch in got for d, new in batch if new and d.status == "REQUIRES_APPROVAL"]
    for d in awaiting:
        outcomes = await asyncio.gather(a.resolve_decision("acme", d.id, "approve", "ann", None),
                                        b.resolve_decision("acme", d.id, "reject", "bob", None))
        assert sorted(o for _, o in outcomes) == ["conflict", "done"]


async def test_concurrent_saves_count_once_across_pools(pg_target: PGTarget, make_decision: MakeDecision) -> None:
    a, b = await pg_target.open(), await pg_target.open()
    decisions = [make_decision(status="EXECUTED") for _ in range(15)]
    await asyncio.gather(*(s.save_decision(d) for d in decisions for s in (a, b)))
    assert await a.counters("acme") == {"total_decisions": 15, "successful_decisions": 15}


async def test_outbox_timers_and_bookings_across_pools(pg_target: PGTarget, make_decision: MakeDecision) -> None:
    stores = [await pg_target.open() for _ in range(3)]
    for _ in range(30):
        await stores[0].complete_event(make_decision(status="EXECUTED"))
    claimed = await asyncio.gather(*(s.claim_actions(f"r{i}", limit=30) for i, s in enumerate(stores)))
    keys = [j.key for jobs in claimed for j in jobs]
    assert len(keys) == len(set(keys)) == 30
    now = datetime.now(UTC)
    for i in range(50):
        await stores[0].add_timer(event(id=f"t{i}"), now - timedelta(seconds=1))
    fired = await asyncio.gather(*(s.fire_due_timers(now, limit=20) for s in stores),
                                 *(s.fire_due_timers(now, limit=20) for s in stores))
    ids = [e.id for batch in fired for e in batch]
    assert len(ids) == len(set(ids)) == 50
    slot = now.replace(microsecond=0) + timedelta(days=3)
    booked = await asyncio.gather(*(s.book_event(
        "acme", host="ann", title=f"b{i}", start=slot, end=slot + timedelta(hours=1), attendees=[],
        decision_id=None, action_key=f"book:{i}", buffer_minutes=0, replan=lambda busy: "taken")
        for i, s in enumerate(stores)))
    assert sorted(c.outcome for _, c in booked) == ["booked", "conflict", "conflict"]
    assert len(await stores[2].list_calendar_events("acme", host="ann")) == 1


async def test_analytics_equal_on_both_stores(pg_target: PGTarget, tmp_path: Path,
                                              make_decision: MakeDecision) -> None:
    llm = LLMTrace(provider="openai", model="m", prompt="p", response="r", input_tokens=10, output_tokens=3,
                   latency_ms=250.5, attempts=1)
    decisions = [make_decision(status="REQUIRES_APPROVAL", llm=llm, execution_ms=12.5),
                 make_decision(status="EXECUTED", execution_ms=3.0),
                 make_decision(status="PENDING", llm=llm.model_copy(update={"latency_ms": 99.0})),
                 make_decision(status="FAILED", org="globex")]
    sqlite = await SQLiteStore.open(tmp_path / "a.db")
    pg = await pg_target.open()
    try:
        results = []
        for store in (sqlite, pg):
            await store.complete_events(decisions)
            await store.resolve_decision("acme", decisions[0].id, "approve", "ann", None)
            results.append(await store.analytics("acme", T0, T0 + timedelta(days=1)))
        assert results[0]["approvals"]["turnaround_seconds"]["max"] is not None
        for r in results:  # the review happened now, the decisions "in March": turnaround differs by the run time
            r["approvals"].pop("turnaround_seconds")
        assert results[0] == results[1]
        assert results[1]["llm"]["calls"] == 2 and results[1]["total"] == 3
    finally:
        await sqlite.close()


# ---- LISTEN / NOTIFY -------------------------------------------------------------------------------------


async def test_stream_notifications_cross_stores(pg_target: PGTarget, make_decision: MakeDecision) -> None:
    reader, writer = await pg_target.open(), await pg_target.open()
    heard: list[tuple[str, int]] = []
    heard_async: list[tuple[str, int]] = []

    async def on_async(org: str, seq: int) -> None:
        heard_async.append((org, seq))

    def on_entry(org: str, seq: int) -> None:
        heard.append((org, seq))

    await reader.listen(on_entry)
    await reader.listen(on_async)
    d = make_decision(status="REQUIRES_APPROVAL", org="org:with:colons")
    await writer.complete_event(d)
    await writer.resolve_decision(d.org, d.id, "approve", "ann", None)
    await _until(lambda: len(heard) == 2 and len(heard_async) == 2)
    entries = await reader.stream_after(d.org, 0)
    assert heard == heard_async == [(d.org, seq) for seq, _, _ in entries]
    await reader.unlisten(on_entry)
    async with writer._pool.acquire() as db:  # a transaction that rolls back announces nothing
        tx = db.transaction()
        await tx.start()
        await db.execute("SELECT pg_notify('astralis_stream', 'x:1')")
        await tx.rollback()
    await writer.complete_event(make_decision(org=d.org))
    await _until(lambda: len(heard_async) == 3)
    assert len(heard) == 2
    await reader.unlisten(on_async)
    assert reader._callbacks == {}


async def test_db_trigger_function(pg_target: PGTarget) -> None:
    store = await pg_target.open()
    changes: list[dict[str, Any]] = []
    await store.listen_db_triggers(changes.append)
    conn = await asyncpg.connect(pg_target.url, server_settings={"search_path": pg_target.schema})
    try:
        await conn.execute(DB_TRIGGER_FUNCTION)
        await conn.execute("CREATE TABLE leads (id int PRIMARY KEY, name text, notes text)")
        await conn.execute("CREATE TRIGGER leads_to_astralis AFTER INSERT OR UPDATE OR DELETE ON leads "
                           "FOR EACH ROW EXECUTE FUNCTION astralis_notify_row_change('acme')")
        await conn.execute("INSERT INTO leads VALUES (1, 'Zoë', NULL)")
        await conn.execute("UPDATE leads SET name = 'Zoe' WHERE id = 1")
        await conn.execute("INSERT INTO leads VALUES (2, 'Big', $1)", "x" * 9000)  # too large for a NOTIFY
        await conn.execute("DELETE FROM leads WHERE id = 1")
    finally:
        await conn.close()
    await _until(lambda: len(changes) == 4)
    assert [(c["org"], c["table"], c["operation"]) for c in changes] == [
        ("acme", "leads", "INSERT"), ("acme", "leads", "UPDATE"), ("acme", "leads", "INSERT"),
        ("acme", "leads", "DELETE")]
    assert changes[0]["row"] == {"id": 1, "name": "Zoë", "notes": None} and changes[0]["old_row"] is None
    assert changes[1]["old_row"]["name"] == "Zoë" and changes[1]["row"]["name"] == "Zoe"
    assert changes[2]["truncated"] is True and "row" not in changes[2]
    assert changes[3]["row"] == {"id": 1, "name": "Zoe", "notes": None}
    assert datetime.fromisoformat(changes[0]["occurred_at"].replace("Z", "+00:00")).tzinfo is not None
    assert json.dumps(changes[0])  # plain JSON, ready for POST /api/agent/db-trigger
