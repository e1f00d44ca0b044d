"""The SQLite store: WAL, migrations, the event inbox, lossless decisions, org scoping, paging, counters."""

# ruff: noqa: F811  (the `make_decision` fixture is imported from tests/stores.py, then named as an argument)

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from adapters.sqlite_store import MAX_PAGE, SCHEMA_VERSION, SQLiteStore
from engine.config import DecisionType, Intent, Source
from engine.models import Action, LLMTrace
from tests.stores import T0, MakeDecision, all_pages, event, make_decision  # noqa: F401


@pytest.fixture(params=["file", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """An open store on a temp file and on ":memory:", closed after the test."""
    path = tmp_path / "astralis.db" if request.param == "file" else ":memory:"
    s = await SQLiteStore.open(path)
    try:
        yield s
    finally:
        await s.close()


# ---- opening, pragmas, migrations ------------------------------------------------------------------


async def test_file_store_uses_wal_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dirs" / "a.db"
    async with await SQLiteStore.open(path) as s:
        assert path.exists()
        db = s._db
        assert (await db.execute_fetchall("PRAGMA journal_mode"))[0][0] == "wal"
        assert (await db.execute_fetchall("PRAGMA synchronous"))[0][0] == 2  # FULL
        assert (await db.execute_fetchall("PRAGMA foreign_keys"))[0][0] == 1
        assert (await db.execute_fetchall("PRAGMA busy_timeout"))[0][0] == 5000
    with sqlite3.connect(path) as raw:  # WAL is persistent: a fresh connection sees it too
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


async def test_synchronous_normal_on_request(tmp_path: Path) -> None:
    async with await SQLiteStore.open(tmp_path / "a.db", synchronous="NORMAL") as s:
        assert (await s._db.execute_fetchall("PRAGMA synchronous"))[0][0] == 1
    with pytest.raises(ValueError):
        await SQLiteStore.open(tmp_path / "b.db", synchronous="OFF")  # type: ignore[arg-type]


async def test_memory_store_works() -> None:
    async with await SQLiteStore.open(":memory:") as s:
        assert await s.schema_version() == SCHEMA_VERSION
        assert await s.record_event(event())


async def test_migrations_idempotent_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    for _ in range(3):
        async with await SQLiteStore.open(path) as s:
            assert await s.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(path) as raw:
        versions = [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY version")]
    raw.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))


V1_SCHEMA = """
CREATE TABLE schema_version (
    version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL);
INSERT INTO schema_version VALUES (1, 'event inbox and decisions', '2026-01-01T00:00:00.000000Z');
CREATE TABLE events (
    org TEXT NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL, type TEXT NOT NULL,
    envelope TEXT NOT NULL CHECK (json_valid(envelope)), status TEXT NOT NULL, error TEXT,
    received_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (org, id));
CREATE INDEX events_org_status ON events (org, status);
CREATE TABLE decisions (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, event_id TEXT NOT NULL, status TEXT NOT NULL,
    intent TEXT NOT NULL, decision_type TEXT NOT NULL, decided_by TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, record TEXT NOT NULL CHECK (json_valid(record)));
CREATE INDEX decisions_org_created ON decisions (org, created_at DESC, id);
CREATE INDEX decisions_org_status ON decisions (org, status);
CREATE INDEX decisions_org_intent ON decisions (org, intent);
CREATE INDEX decisions_org_type ON decisions (org, decision_type);
CREATE INDEX decisions_event ON decisions (event_id);
"""


async def test_upgrade_from_v1(tmp_path: Path, make_decision: MakeDecision) -> None:
    path = tmp_path / "old.db"
    executed = make_decision(status="EXECUTED")
    # No input.source: v2 backfills the source from the inbox.
    pending = make_decision(input={"subject": "no source here"}, event_id="evt_inbox")
    ev = event(id="evt_inbox", source=Source.DB_TRIGGER)
    raw = sqlite3.connect(path)
    raw.executescript(V1_SCHEMA)
    raw.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, 'accepted', NULL, ?, ?)",
                (ev.org, ev.id, "DB_TRIGGER", ev.type, ev.model_dump_json(), "2026-01-01T00:00:00.000000Z",
                 "2026-01-01T00:00:00.000000Z"))
    for d in (executed, pending):
        raw.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (d.id, d.org, d.event_id, d.status, d.intent, d.decision_type, d.decided_by,
                     d.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "2026-01-01T00:00:00.000000Z",
                     d.model_dump_json()))
    raw.commit()
    raw.close()

    async with await SQLiteStore.open(path) as s:
        assert await s.schema_version() == SCHEMA_VERSION
        assert await s.get_decision("acme", executed.id) == executed
        assert await s.counters("acme") == {"total_decisions": 2, "successful_decisions": 1}
        by_email, _ = await s.list_decisions("acme", source="EMAIL")
        by_trigger, _ = await s.list_decisions("acme", source="DB_TRIGGER")
        assert [d.id for d in by_email] == [executed.id]
        assert [d.id for d in by_trigger] == [pending.id]
        # Upgraded rows behave like new ones: re-saving the executed one does not count it again.
        await s.save_decision(executed)
        await s.save_decision(pending.model_copy(update={"status": "EXECUTED"}))
        assert await s.counters("acme") == {"total_decisions": 2, "successful_decisions": 2}
        await s.save_agent_config("acme", "r2", {"agent.yaml": "x: 1"})
    async with await SQLiteStore.open(path) as s:  # and re-opening the upgraded file changes nothing
        assert await s.schema_version() == SCHEMA_VERSION
        assert (await s.agent_config("acme") or {})["revision"] == "r2"


async def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    async with await SQLiteStore.open(path):
        pass
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO schema_version VALUES (99, 'from the future', '2030-01-01T00:00:00Z')")
    raw.close()
    with pytest.raises(RuntimeError, match="newer"):
        await SQLiteStore.open(path)


async def test_list_query_walks_the_created_index(store: SQLiteStore) -> None:
    plan = await store._db.execute_fetchall(
        "EXPLAIN QUERY PLAN SELECT id, created_at, record FROM decisions WHERE org = ? "
        "AND (created_at < ? OR (created_at = ? AND id > ?)) ORDER BY created_at DESC, id ASC LIMIT ?",
        ("acme", "x", "x", "y", 51))
    details = " | ".join(str(r[3]) for r in plan)
    assert "decisions_org_created" in details
    assert "TEMP B-TREE" not in details


# ---- event inbox -----------------------------------------------------------------------------------


async def test_event_inbox_is_idempotent(store: SQLiteStore) -> None:
    ev = event()
    assert await store.record_event(ev) is True
    assert await store.record_event(ev, status="processing") is False  # no change on a repeat
    got = await store.get_event("acme", ev.id)
    assert got is not None
    assert got["envelope"] == ev.envelope()
    assert got["status"] == "accepted" and got["error"] is None
    assert got["received_at"].tzinfo is not None
    # Same event id in another org is another event.
    assert await store.get_event("globex", ev.id) is None
    assert await store.record_event(event(org="globex")) is True


async def test_event_status_updates(store: SQLiteStore) -> None:
    await store.record_event(event())
    await store.set_event_status("acme", "evt_1", "failed", error="llm timeout")
    got = await store.get_event("acme", "evt_1")
    assert got is not None and (got["status"], got["error"]) == ("failed", "llm timeout")
    await store.set_event_status("acme", "evt_1", "decided")
    got = await store.get_event("acme", "evt_1")
    assert got is not None and (got["status"], got["error"]) == ("decided", None)
    with pytest.raises(KeyError):
        await store.set_event_status("globex", "evt_1", "decided")


# ---- decisions -------------------------------------------------------------------------------------


async def test_decision_round_trip_is_lossless(store: SQLiteStore, make_decision: MakeDecision) -> None:
    d = make_decision(
        decided_by="llm",
        confidence=0.1 + 0.2,  # not representable exactly: must come back bit for bit
        input={"source": "EMAIL", "subject": "Réunion — 日本語 ✓", "body": "line1\nline2 \"quoted\""},
        actions=[Action(type=DecisionType.CREATE_EVENT, params={"start": "2026-03-02T10:00:00-05:00",
                                                                  "attendees": ["a@x.io", "b@x.io"],
                                                                  "nested": {"n": None, "f": 1.5}},
                        idempotency_key="k:0"),
                 Action(type=DecisionType.SEND_NOTIFICATION)],
        status="EXECUTED",
        llm=LLMTrace(provider="openai", model="gpt-test", prompt="p", response='{"intent":"X"}',
                     input_tokens=12, output_tokens=34, latency_ms=123.456, attempts=2, error=None,
                     rejected=["bad json"]),
        execution_ms=7.25,
        error=None,
        created_at=datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-5))),
        executed_at=datetime(2026, 3, 1, 14, 31, tzinfo=UTC),
        trace={"rules": [{"name": "r", "matched": True}], "empty": {}, "big": 2**53 + 1},
    )
    await store.save_decision(d)
    back = await store.get_decision("acme", d.id)
    assert back is not None
    assert back.model_dump() == d.model_dump()
    assert back.model_dump(mode="json") == d.model_dump(mode="json")
    assert back.created_at.utcoffset() == timedelta(hours=-5)  # the offset is kept, not only the instant
    raw = await store._db.execute_fetchall("SELECT record FROM decisions WHERE id = ?", (d.id,))
    assert json.loads(raw[0][0]) == d.model_dump(mode="json")


async def test_upsert_replaces_the_record(store: SQLiteStore, make_decision: MakeDecision) -> None:
    d = make_decision()
    await store.save_decision(d)
    done = d.model_copy(update={"status": "FAILED", "error": "crm down", "execution_ms": 3.0})
    await store.save_decision(done)
    assert await store.get_decision("acme", d.id) == done
    page, _ = await store.list_decisions("acme")
    assert page == [done]


async def test_org_scoping(store: SQLiteStore, make_decision: MakeDecision) -> None:
    a = make_decision(org="acme", event_id="evt_shared")
    await store.save_decision(a)
    assert await store.get_decision("acme", a.id) == a
    assert await store.get_decision("globex", a.id) is None
    assert await store.decision_for_event("globex", "evt_shared") is None
    assert await store.list_decisions("globex") == ([], None)
    assert await store.counters("globex") == {"total_decisions": 0, "successful_decisions": 0}
    # Org B cannot take over org A's decision by saving the same id.
    with pytest.raises(ValueError, match="another org"):
        await store.save_decision(a.model_copy(update={"org": "globex", "status": "EXECUTED"}))
    assert await store.get_decision("acme", a.id) == a
    assert await store.counters("acme") == {"total_decisions": 1, "successful_decisions": 0}


async def test_decision_for_event_is_the_latest(store: SQLiteStore, make_decision: MakeDecision) -> None:
    first = make_decision(event_id="evt_x", created_at=T0)
    second = make_decision(event_id="evt_x", created_at=T0 + timedelta(seconds=1), status="EXECUTED")
    other = make_decision(event_id="evt_y", created_at=T0 + timedelta(hours=1))
    for d in (second, first, other):
        await store.save_decision(d)
    assert await store.decision_for_event("acme", "evt_x") == second
    assert await store.decision_for_event("acme", "evt_none") is None


async def test_dry_run_is_rejected(store: SQLiteStore, make_decision: MakeDecision) -> None:
    d = make_decision(dry_run=True, status="EXECUTED")
    with pytest.raises(ValueError, match="dry run"):
        await store.save_decision(d)
    assert await store.get_decision("acme", d.id) is None
    assert await store.decision_for_event("acme", d.event_id) is None
    assert await store.counters("acme") == {"total_decisions": 0, "successful_decisions": 0}


# ---- listing ---------------------------------------------------------------------------------------


async def test_filters(store: SQLiteStore, make_decision: MakeDecision) -> None:
    sales = make_decision(status="EXECUTED")
    support = make_decision(intent=Intent.SUPPORT_REQUEST, decision_type=DecisionType.ESCALATE,
                            input={"source": "WEBHOOK"}, status="REQUIRES_APPROVAL")
    billing = make_decision(intent=Intent.BILLING_QUESTION, decision_type=DecisionType.SEND_NOTIFICATION,
                            input={"source": "API"}, status="FAILED")
    # No input.source: the source comes from the inbox entry of its event.
    await store.record_event(event(id="evt_sched", source=Source.SCHEDULE, type="schedule:tick"))
    scheduled = make_decision(event_id="evt_sched", input={}, intent=Intent.SCHEDULING,
                              decision_type=DecisionType.CREATE_EVENT)
    unknown_source = make_decision(event_id="evt_not_in_inbox", input={}, intent=Intent.OTHER,
                                   decision_type=DecisionType.NO_ACTION)
    other_org = make_decision(org="globex", status="EXECUTED")
    for d in (sales, support, billing, scheduled, unknown_source, other_org):
        await store.save_decision(d)

    async def ids(**filters: Any) -> list[str]:
        page, cursor = await store.list_decisions("acme", **filters)
        assert cursor is None
        return [d.id for d in page]

    newest_first = [unknown_source.id, scheduled.id, billing.id, support.id, sales.id]
    assert await ids() == newest_first
    assert await ids(status="EXECUTED") == [sales.id]
    assert await ids(status=["FAILED", "REQUIRES_APPROVAL"]) == [billing.id, support.id]
    assert await ids(intent=Intent.SUPPORT_REQUEST) == [support.id]
    assert await ids(intent="BILLING_QUESTION") == [billing.id]
    assert await ids(decision_type=DecisionType.ESCALATE) == [support.id]
    assert await ids(source="EMAIL") == [sales.id]
    assert await ids(source=Source.SCHEDULE) == [scheduled.id]
    assert await ids(source="WEBHOOK", status="REQUIRES_APPROVAL") == [support.id]
    assert await ids(source="WEBHOOK", status="EXECUTED") == []
    assert await ids(since=billing.created_at) == [unknown_source.id, scheduled.id, billing.id]
    assert await ids(until=billing.created_at) == [support.id, sales.id]  # until is exclusive
    # Bounds in another timezone mean the same instant.
    est = timezone(timedelta(hours=-5))
    assert await ids(since=billing.created_at.astimezone(est), until=scheduled.created_at.astimezone(est)) \
        == [billing.id]
    with pytest.raises(ValueError, match="UTC offset"):
        await store.list_decisions("acme", since=datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        await store.list_decisions("acme", status=[])


async def test_cursor_paging_with_identical_timestamps(store: SQLiteStore,
                                                       make_decision: MakeDecision) -> None:
    same = [make_decision(created_at=T0) for _ in range(120)]
    for d in reversed(same):
        await store.save_decision(d)
    for limit in (1, 7, 50, 119, 120, 121):
        got = await all_pages(store, "acme", limit)
        assert [d.id for d in got] == sorted(d.id for d in same)  # ties: by id, ascending
    page, cursor = await store.list_decisions("acme", limit=120)
    assert len(page) == 120 and cursor is None


async def test_cursor_paging_newest_first_with_filter(store: SQLiteStore,
                                                      make_decision: MakeDecision) -> None:
    # Three decisions per minute, alternating status, with an unrelated org interleaved.
    made = [make_decision(created_at=T0 + timedelta(minutes=i // 3),
                          status=("EXECUTED", "PENDING")[i % 2]) for i in range(60)]
    made += [make_decision(org="globex", created_at=T0 + timedelta(minutes=i)) for i in range(10)]
    for d in made:
        await store.save_decision(d)
    mine = [d for d in made if d.org == "acme"]
    expected = sorted(mine, key=lambda d: d.id)
    expected.sort(key=lambda d: d.created_at, reverse=True)  # stable: ids ascending within a timestamp
    assert await all_pages(store, "acme", 4) == expected
    executed = [d for d in expected if d.status == "EXECUTED"]
    assert await all_pages(store, "acme", 5, status="EXECUTED") == executed


async def test_limit_cap_and_bad_arguments(make_decision: MakeDecision) -> None:
    async with await SQLiteStore.open(":memory:") as s:
        for _ in range(MAX_PAGE + 5):
            await s.save_decision(make_decision())
        page, cursor = await s.list_decisions("acme", limit=10_000)
        assert len(page) == MAX_PAGE and cursor is not None
        rest, cursor = await s.list_decisions("acme", limit=10_000, cursor=cursor)
        assert len(rest) == 5 and cursor is None
        for bad in ("not base64 !!", "e30", "eyJjIjogMX0"):  # garbage, {}, {"c": 1}
            with pytest.raises(ValueError, match="cursor"):
                await s.list_decisions("acme", cursor=bad)
        with pytest.raises(ValueError):
            await s.list_decisions("acme", limit=0)


# ---- counters --------------------------------------------------------------------------------------


async def test_counters(store: SQLiteStore, make_decision: MakeDecision) -> None:
    d = make_decision(status="PENDING")
    await store.save_decision(d)
    await store.save_decision(d)
    assert await store.counters("acme") == {"total_decisions": 1, "successful_decisions": 0}
    executed = d.model_copy(update={"status": "EXECUTED", "executed_at": T0})
    await store.save_decision(executed)
    assert await store.counters("acme") == {"total_decisions": 1, "successful_decisions": 1}
    await store.save_decision(executed)
    assert await store.counters("acme") == {"total_decisions": 1, "successful_decisions": 1}
    # Leaving EXECUTED and coming back still counts once.
    await store.save_decision(d.model_copy(update={"status": "FAILED"}))
    await store.save_decision(executed)
    assert await store.counters("acme") == {"total_decisions": 1, "successful_decisions": 1}
    # Executed on first insert counts both at once.
    await store.save_decision(make_decision(status="EXECUTED"))
    assert await store.counters("acme") == {"total_decisions": 2, "successful_decisions": 2}
    assert await store.counters("globex") == {"total_decisions": 0, "successful_decisions": 0}


async def test_concurrent_saves_all_land(store: SQLiteStore, make_decision: MakeDecision) -> None:
    decisions = [make_decision(status="EXECUTED" if i % 2 else "PENDING") for i in range(20)]
    await asyncio.gather(*(store.save_decision(d) for d in decisions))
    page, _ = await store.list_decisions("acme", limit=100)
    assert sorted(d.id for d in page) == sorted(d.id for d in decisions)
    assert await store.counters("acme") == {"total_decisions": 20, "successful_decisions": 10}


async def test_two_connections_on_one_file(tmp_path: Path, make_decision: MakeDecision) -> None:
    path = tmp_path / "shared.db"
    decisions = [make_decision() for _ in range(20)]
    async with await SQLiteStore.open(path) as a, await SQLiteStore.open(path) as b:
        await asyncio.gather(*((a if i % 2 else b).save_decision(d) for i, d in enumerate(decisions)))
        page, _ = await a.list_decisions("acme", limit=100)
        assert len(page) == 20
        assert await b.counters("acme") == {"total_decisions": 20, "successful_decisions": 0}


# ---- agent configs, persistence --------------------------------------------------------------------


async def test_agent_config_history(store: SQLiteStore) -> None:
    assert await store.agent_config("acme") is None
    await store.save_agent_config("acme", "r1", {"policy.yaml": "a: 1", "rules.yaml": "- x"})
    await store.save_agent_config("acme", "r1", {"policy.yaml": "a: 1", "rules.yaml": "- x"})  # no-op
    await store.save_agent_config("acme", "r2", {"policy.yaml": "a: 2 # ünïcode"})
    latest = await store.agent_config("acme")
    assert latest is not None
    assert (latest["org"], latest["revision"]) == ("acme", "r2")
    assert latest["files"] == {"policy.yaml": "a: 2 # ünïcode"}
    assert latest["created_at"].tzinfo is not None
    await store.save_agent_config("acme", "r1", {"policy.yaml": "a: 1", "rules.yaml": "- x"})  # rollback
    assert [c["revision"] for c in await store.agent_config_history("acme")] == ["r1", "r2", "r1"]
    assert (await store.agent_config("acme") or {})["revision"] == "r1"
    assert await store.agent_config("globex") is None


async def test_data_survives_close_and_reopen(tmp_path: Path, make_decision: MakeDecision) -> None:
    path = tmp_path / "a.db"
    d = make_decision(status="EXECUTED")
    s = await SQLiteStore.open(path)
    await s.record_event(event())
    await s.save_decision(d)
    await s.save_agent_config("acme", "r9", {"f": "x"})
    await s.close()
    await s.close()  # idempotent
    async with await SQLiteStore.open(str(path)) as s2:
        assert await s2.get_decision("acme", d.id) == d
        assert (await s2.get_event("acme", "evt_1") or {})["status"] == "accepted"
        assert (await s2.agent_config("acme") or {})["files"] == {"f": "x"}
        assert await s2.counters("acme") == {"total_decisions": 1, "successful_decisions": 1}
