"""The store port, on every store: each test runs on SQLite and on PostgreSQL (`any_store`) and expects the
same results from both — the inbox, decisions, approvals, the stream, keys, timers, the outbox, intakes,
calendars and notifications."""

# ruff: noqa: F811  (the store fixtures are imported from tests/stores.py, then named as arguments)

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from adapters.pg_store import PGStore
from adapters.sqlite_calendar import Change
from adapters.sqlite_inbox import InboxItem
from adapters.sqlite_intakes import Intake
from adapters.sqlite_store import MAX_PAGE, SCHEMA_VERSION, SQLiteStore
from engine.config import DecisionType, Intent, Source
from engine.models import Action, Decision, LLMTrace
from tests.stores import T0, MakeDecision, all_pages, any_store, event, make_decision, pg_database  # noqa: F401

Store = SQLiteStore | PGStore


def items(*ids: str, priority: int = 3, **kw: Any) -> list[InboxItem]:
    return [InboxItem(event(id=i), priority=priority, **kw) for i in ids]


# ---- schema and basic records ----------------------------------------------------------------------


async def test_schema_version(any_store: Store) -> None:
    assert await any_store.schema_version() == SCHEMA_VERSION


async def test_event_inbox_is_idempotent(any_store: Store) -> None:
    ev = event()
    assert await any_store.record_event(ev) is True
    assert await any_store.record_event(ev, status="processing") is False
    got = await any_store.get_event("acme", ev.id)
    assert got is not None
    assert got["envelope"] == ev.envelope()
    assert got["status"] == "accepted" and got["error"] is None
    assert got["received_at"].tzinfo is not None
    assert await any_store.get_event("globex", ev.id) is None
    assert await any_store.record_event(event(org="globex")) is True


async def test_event_status_updates(any_store: Store) -> None:
    await any_store.record_event(event())
    await any_store.set_event_status("acme", "evt_1", "failed", error="llm timeout")
    got = await any_store.get_event("acme", "evt_1")
    assert got is not None and (got["status"], got["error"]) == ("failed", "llm timeout")
    await any_store.set_event_status("acme", "evt_1", "decided")
    got = await any_store.get_event("acme", "evt_1")
    assert got is not None and (got["status"], got["error"]) == ("decided", None)
    with pytest.raises(KeyError):
        await any_store.set_event_status("globex", "evt_1", "decided")


async def test_decision_round_trip_is_lossless(any_store: Store, make_decision: MakeDecision) -> None:
    d = make_decision(
        decided_by="llm",
        confidence=0.1 + 0.2,
        input={"source": "EMAIL", "subject": "Réunion — 日本語 ✓", "body": "line1\nline2 \"quoted\" \\ \u0000"},
        actions=[Action(type=DecisionType.CREATE_EVENT, params={"start": "2026-03-02T10:00:00-05:00",
                                                                  "nested": {"n": None, "f": 1.5}},
                        idempotency_key="k:0"),
                 Action(type=DecisionType.SEND_NOTIFICATION)],
        status="EXECUTED",
        llm=LLMTrace(provider="openai", model="gpt-test", prompt="p", response='{"intent":"X"}',
                     input_tokens=12, output_tokens=34, latency_ms=123.456, attempts=2, error=None,
                     rejected=["bad json"]),
        execution_ms=7.25,
        created_at=datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-5))),
        executed_at=datetime(2026, 3, 1, 14, 31, tzinfo=UTC),
        trace={"rules": [{"name": "r", "matched": True}], "empty": {}, "big": 2**53 + 1},
    )
    await any_store.save_decision(d)
    back = await any_store.get_decision("acme", d.id)
    assert back is not None
    assert back.model_dump() == d.model_dump()
    assert back.created_at.utcoffset() == timedelta(hours=-5)


async def test_upsert_replaces_the_record(any_store: Store, make_decision: MakeDecision) -> None:
    d = make_decision()
    await any_store.save_decision(d)
    done = d.model_copy(update={"status": "FAILED", "error": "crm down", "execution_ms": 3.0})
    await any_store.save_decision(done)
    assert await any_store.get_decision("acme", d.id) == done
    assert (await any_store.list_decisions("acme"))[0] == [done]


async def test_org_scoping(any_store: Store, make_decision: MakeDecision) -> None:
    a = make_decision(org="acme", event_id="evt_shared")
    await any_store.save_decision(a)
    assert await any_store.get_decision("globex", a.id) is None
    assert await any_store.decision_for_event("globex", "evt_shared") is None
    assert await any_store.list_decisions("globex") == ([], None)
    with pytest.raises(ValueError, match="another org"):
        await any_store.save_decision(a.model_copy(update={"org": "globex", "status": "EXECUTED"}))
    assert await any_store.get_decision("acme", a.id) == a
    assert await any_store.counters("acme") == {"total_decisions": 1, "successful_decisions": 0}
    assert await any_store.counters("globex") == {"total_decisions": 0, "successful_decisions": 0}


async def test_decision_for_event_is_the_latest(any_store: Store, make_decision: MakeDecision) -> None:
    first = make_decision(event_id="evt_x", created_at=T0)
    second = make_decision(event_id="evt_x", created_at=T0 + timedelta(seconds=1), status="EXECUTED")
    other = make_decision(event_id="evt_y", created_at=T0 + timedelta(hours=1))
    for d in (second, first, other):
        await any_store.save_decision(d)
    assert await any_store.decision_for_event("acme", "evt_x") == second
    assert await any_store.decision_for_event("acme", "evt_none") is None
    assert await any_store.decisions_for_events("acme", ["evt_x", "evt_y", "evt_none"]) == {
        "evt_x": second, "evt_y": other}
    assert await any_store.decisions_for_events("acme", []) == {}


async def test_dry_run_is_rejected(any_store: Store, make_decision: MakeDecision) -> None:
    d = make_decision(dry_run=True, status="EXECUTED")
    with pytest.raises(ValueError, match="dry run"):
        await any_store.save_decision(d)
    with pytest.raises(ValueError, match="dry run"):
        await any_store.complete_event(d)
    assert await any_store.get_decision("acme", d.id) is None


async def test_filters(any_store: Store, make_decision: MakeDecision) -> None:
    sales = make_decision(status="EXECUTED")
    support = make_decision(intent=Intent.SUPPORT_REQUEST, decision_type=DecisionType.ESCALATE,
                            input={"source": "WEBHOOK"}, status="REQUIRES_APPROVAL")
    billing = make_decision(intent=Intent.BILLING_QUESTION, decision_type=DecisionType.SEND_NOTIFICATION,
                            input={"source": "API"}, status="FAILED")
    await any_store.record_event(event(id="evt_sched", source=Source.SCHEDULE, type="schedule:tick"))
    scheduled = make_decision(event_id="evt_sched", input={}, intent=Intent.SCHEDULING,
                              decision_type=DecisionType.CREATE_EVENT)
    unknown_source = make_decision(event_id="evt_not_in_inbox", input={}, intent=Intent.OTHER,
                                   decision_type=DecisionType.NO_ACTION)
    other_org = make_decision(org="globex", status="EXECUTED")
    for d in (sales, support, billing, scheduled, unknown_source, other_org):
        await any_store.save_decision(d)

    async def ids(**filters: Any) -> list[str]:
        page, cursor = await any_store.list_decisions("acme", **filters)
        assert cursor is None
        return [d.id for d in page]

    assert await ids() == [unknown_source.id, scheduled.id, billing.id, support.id, sales.id]
    assert await ids(status="EXECUTED") == [sales.id]
    assert await ids(status=["FAILED", "REQUIRES_APPROVAL"]) == [billing.id, support.id]
    assert await ids(intent="BILLING_QUESTION") == [billing.id]
    assert await ids(decision_type=DecisionType.ESCALATE) == [support.id]
    assert await ids(source=Source.SCHEDULE) == [scheduled.id]
    assert await ids(source="WEBHOOK", status="EXECUTED") == []
    assert await ids(since=billing.created_at) == [unknown_source.id, scheduled.id, billing.id]
    assert await ids(until=billing.created_at) == [support.id, sales.id]
    est = timezone(timedelta(hours=-5))
    assert await ids(since=billing.created_at.astimezone(est), until=scheduled.created_at.astimezone(est)) \
        == [billing.id]
    with pytest.raises(ValueError, match="UTC offset"):
        await any_store.list_decisions("acme", since=datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        await any_store.list_decisions("acme", status=[])


async def test_cursor_paging(any_store: Store, make_decision: MakeDecision) -> None:
    same = [make_decision(created_at=T0) for _ in range(30)]
    for d in reversed(same):
        await any_store.save_decision(d)
    for limit in (1, 7, 29, 30, 31):
        assert [d.id for d in await all_pages(any_store, "acme", limit)] == sorted(d.id for d in same)
    made = [make_decision(created_at=T0 + timedelta(minutes=i // 3), status=("EXECUTED", "PENDING")[i % 2])
            for i in range(30)]
    for d in made:
        await any_store.save_decision(d)
    executed = sorted((d for d in made if d.status == "EXECUTED" and d.created_at > T0), key=lambda d: d.id)
    executed.sort(key=lambda d: d.created_at, reverse=True)
    assert await all_pages(any_store, "acme", 4, status="EXECUTED", since=T0 + timedelta(seconds=1)) == executed
    for bad in ("not base64 !!", "e30", "eyJjIjogMX0"):
        with pytest.raises(ValueError, match="cursor"):
            await any_store.list_decisions("acme", cursor=bad)
    with pytest.raises(ValueError):
        await any_store.list_decisions("acme", limit=0)
    page, cursor = await any_store.list_decisions("acme", limit=MAX_PAGE + 100)
    assert len(page) == 60 and cursor is None


async def test_counters(any_store: Store, make_decision: MakeDecision) -> None:
    d = make_decision(status="PENDING")
    await any_store.save_decision(d)
    await any_store.save_decision(d)
    assert await any_store.counters("acme") == {"total_decisions": 1, "successful_decisions": 0}
    executed = d.model_copy(update={"status": "EXECUTED", "executed_at": T0})
    await any_store.save_decision(executed)
    await any_store.save_decision(d.model_copy(update={"status": "FAILED"}))
    await any_store.save_decision(executed)
    assert await any_store.counters("acme") == {"total_decisions": 1, "successful_decisions": 1}
    await any_store.save_decision(make_decision(status="EXECUTED"))
    assert await any_store.counters("acme") == {"total_decisions": 2, "successful_decisions": 2}


async def test_concurrent_saves_all_land(any_store: Store, make_decision: MakeDecision) -> None:
    decisions = [make_decision(status="EXECUTED" if i % 2 else "PENDING") for i in range(20)]
    await asyncio.gather(*(any_store.save_decision(d) for d in decisions))
    await asyncio.gather(*(any_store.save_decision(d) for d in decisions))  # the same again: counted once
    page, _ = await any_store.list_decisions("acme", limit=100)
    assert sorted(d.id for d in page) == sorted(d.id for d in decisions)
    assert await any_store.counters("acme") == {"total_decisions": 20, "successful_decisions": 10}


async def test_agent_config_history(any_store: Store) -> None:
    assert await any_store.agent_config("acme") is None
    await any_store.save_agent_config("acme", "r1", {"policy.yaml": "a: 1", "rules.yaml": "- x"})
    await any_store.save_agent_config("acme", "r1", {"policy.yaml": "a: 1", "rules.yaml": "- x"})  # no-op
    await any_store.save_agent_config("acme", "r2", {"policy.yaml": "a: 2 # ünïcode"})
    latest = await any_store.agent_config("acme")
    assert latest is not None and latest["files"] == {"policy.yaml": "a: 2 # ünïcode"}
    assert latest["created_at"].tzinfo is not None
    await any_store.save_agent_config("acme", "r1", {"policy.yaml": "a: 1", "rules.yaml": "- x"})  # rollback
    assert [c["revision"] for c in await any_store.agent_config_history("acme")] == ["r1", "r2", "r1"]
    assert await any_store.agent_config("globex") is None


# ---- durable inbox -----------------------------------------------------------------------------------


async def test_accept_and_duplicates(any_store: Store) -> None:
    got = await any_store.accept_events([*items("e1", "e2"), *items("e1")])
    assert [(a.id, a.new, a.status) for a in got] == [("e1", True, "accepted"), ("e2", True, "accepted"),
                                                     ("e1", False, "accepted")]
    got = await any_store.accept_events(items("e2", "e3", lease_owner="w1"))
    assert [(a.id, a.new, a.status) for a in got] == [("e2", False, "accepted"), ("e3", True, "processing")]
    assert await any_store.inbox_depth() == {"accepted": 2, "processing": 1, "decided": 0, "dead": 0}
    # A replayed webhook signature is refused, even under another event id; a new one is accepted.
    got = await any_store.accept_events([InboxItem(event(id="e4"), signature="sig1")])
    assert got[0].new is True
    got = await any_store.accept_events([InboxItem(event(id="e5"), signature="sig1"),
                                         InboxItem(event(id="e6"), signature="sig2")])
    assert [(a.id, a.new, a.status) for a in got] == [("e5", False, "replayed"), ("e6", True, "accepted")]
    assert await any_store.get_event("acme", "e5") is None
    assert await any_store.accept_events([]) == []


async def test_claim_order_and_priority(any_store: Store) -> None:
    await any_store.accept_events(items("low1", "low2", priority=1))
    await any_store.accept_events(items("mid1", priority=3))
    await any_store.accept_events(items("high1", "high2", priority=5))
    await any_store.accept_events(items("mid2", priority=3))
    first = await any_store.claim_events("w1", limit=3)
    # The claimed batch comes back in arrival order; the choice is by priority, then age.
    assert sorted(c.event.id for c in first) == ["high1", "high2", "mid1"]
    assert [c.event.id for c in first] == ["mid1", "high1", "high2"]
    assert all(c.attempts == 1 and c.channel == "api" for c in first)
    rest = await any_store.claim_events("w2", limit=10)
    assert [c.event.id for c in rest] == ["low1", "low2", "mid2"]
    assert await any_store.claim_events("w3") == []
    assert sorted(await any_store.lease_owners()) == ["w1", "w2"]
    info = await any_store.event_info("acme", "high1")
    assert info is not None and (info["status"], info["attempts"]) == ("processing", 1)


async def test_claim_one_named_event_and_waiting_events(any_store: Store, make_decision: MakeDecision) -> None:
    await any_store.accept_events([*items("e0", "e1", "e2"), *items("urgent", priority=5)])
    waiting = await any_store.waiting_events(received_before=datetime.now(UTC) + timedelta(seconds=1))
    assert [(e.id, p) for e, p in waiting] == [("urgent", 5), ("e0", 3), ("e1", 3), ("e2", 3)]
    assert await any_store.waiting_events(received_before=datetime.now(UTC) - timedelta(minutes=1)) == []
    assert len(await any_store.waiting_events(received_before=datetime.now(UTC) + timedelta(seconds=1), limit=2)) == 2
    claimed, status = await any_store.claim_event("acme", "e1", "w1", lease_seconds=30)
    assert status == "claimed" and claimed is not None and claimed.event.id == "e1" and claimed.attempts == 1
    assert await any_store.claim_event("acme", "e1", "w2") == (None, "processing")
    assert await any_store.claim_event("acme", "nope", "w2") == (None, "missing")
    await any_store.complete_event(make_decision(event_id="e1"))
    assert await any_store.claim_event("acme", "e1", "w2") == (None, "decided")
    assert (await any_store.claim_event("acme", "e2", "w1", lease_seconds=0.05))[1] == "claimed"
    await asyncio.sleep(0.1)
    again, status = await any_store.claim_event("acme", "e2", "w2")
    assert status == "claimed" and again is not None and again.attempts == 2
    both = await asyncio.gather(*(any_store.claim_event("acme", "e0", f"r{i}") for i in range(3)))
    assert sorted(status for _, status in both) == ["claimed", "processing", "processing"]


async def test_lease_renew_release_expiry_and_recover(any_store: Store) -> None:
    await any_store.accept_events(items("a", "b", "c"))
    await any_store.claim_events("w1", limit=2, lease_seconds=0.05)
    await any_store.claim_events("w2", limit=1, lease_seconds=60)
    assert await any_store.renew_leases("w1", [("acme", "a"), ("acme", "c")], 60) == 1  # c is w2's
    assert await any_store.renew_leases("w1", [], 60) == 0
    assert await any_store.release_events("w2") == 1
    info = await any_store.event_info("acme", "c")
    assert info is not None and (info["status"], info["attempts"]) == ("accepted", 0)
    await asyncio.sleep(0.1)
    # a's lease was renewed; b's expired and is taken back. A dead owner's leases are taken back too.
    assert await any_store.recover_events() == 1
    assert (await any_store.event_info("acme", "b") or {})["status"] == "accepted"
    assert await any_store.recover_events(dead_owners=["w1"]) == 1
    assert (await any_store.event_info("acme", "a") or {})["status"] == "accepted"
    claimed = await any_store.claim_events("w3", limit=10)
    assert sorted((c.event.id, c.attempts) for c in claimed) == [("a", 2), ("b", 2), ("c", 1)]
    assert await any_store.release_events("w3", [("acme", "a"), ("acme", "zz")]) == 1


async def test_dead_letter_after_max_attempts(any_store: Store) -> None:
    await any_store.accept_events(items("poison", "flaky"))
    await any_store.claim_events("w1", limit=2, lease_seconds=0)
    await asyncio.sleep(0.01)
    assert await any_store.recover_events(max_attempts=1) == 2  # both were being decided when w1 died
    assert (await any_store.event_info("acme", "poison") or {})["status"] == "dead"
    assert "died while deciding this event, 1 times" in (await any_store.event_info("acme", "poison") or {})["error"]
    assert await any_store.retry_event("acme", "poison") is True
    assert await any_store.retry_event("acme", "poison") is False  # not dead any more
    # fail_event: back to the queue (after retry_in), then dead once max_attempts claims failed.
    [c] = await any_store.claim_events("w2", limit=1)
    assert c.event.id == "poison" and c.attempts == 1
    assert await any_store.fail_event("acme", "poison", "w2", "boom", max_attempts=2, retry_in=0) == "accepted"
    assert await any_store.fail_event("acme", "poison", "w2", "boom", max_attempts=2, retry_in=0) == "accepted"
    [c] = await any_store.claim_events("w2", limit=1)
    assert c.attempts == 2
    assert await any_store.fail_event("acme", "poison", "other", "x", max_attempts=2, retry_in=0) == "processing"
    assert await any_store.fail_event("acme", "poison", "w2", "boom" * 1000, max_attempts=2, retry_in=0) == "dead"
    assert len((await any_store.event_info("acme", "poison") or {})["error"]) == 2000
    assert await any_store.fail_event("acme", "nope", "w2", "x", max_attempts=2, retry_in=0) == "missing"
    # retry_in holds an event back.
    assert await any_store.retry_event("acme", "flaky") is True
    [c] = await any_store.claim_events("w2", limit=1)
    assert await any_store.fail_event("acme", c.event.id, "w2", "later", max_attempts=5, retry_in=60) == "accepted"
    assert await any_store.claim_events("w2") == []


async def test_complete_events_refuses_a_second_decision(any_store: Store, make_decision: MakeDecision) -> None:
    await any_store.accept_events(items("e1", "e2"))
    await any_store.claim_events("w1")
    first = make_decision(event_id="e1", status="EXECUTED")
    other = make_decision(event_id="e2", status="REQUIRES_APPROVAL")
    assert await any_store.complete_events([first, other]) == [(first, True), (other, True)]
    late = make_decision(event_id="e1", status="FAILED")
    assert await any_store.complete_event(late) == (first, False)
    # Within one batch too: the second decision of an event is refused.
    await any_store.accept_events(items("e3"))
    a, b = make_decision(event_id="e3"), make_decision(event_id="e3")
    assert await any_store.complete_events([a, b]) == [(a, True), (a, False)]
    assert await any_store.get_decision("acme", late.id) is None
    info = await any_store.event_info("acme", "e1")
    assert info is not None and (info["status"], info["decision_id"]) == ("decided", first.id)
    assert [x["key"] for x in await any_store.list_actions("acme", first.id)] == [f"{first.id}:0"]
    assert await any_store.list_actions("acme", other.id) == []  # awaiting approval: nothing to run yet
    assert await any_store.counters("acme") == {"total_decisions": 3, "successful_decisions": 1}
    # A decision of an event that is not in the inbox is still recorded.
    loose = make_decision(event_id="not_in_inbox")
    assert await any_store.complete_event(loose) == (loose, True)
    assert [e[1] for e in await any_store.stream_after("acme", 0)] == [
        "executed", "awaiting_approval", "awaiting_approval", "awaiting_approval"]


async def test_approve_reject_idempotent(any_store: Store, make_decision: MakeDecision) -> None:
    a = make_decision(status="REQUIRES_APPROVAL")
    r = make_decision(status="PENDING")
    await any_store.complete_events([a, r])
    approved, outcome = await any_store.resolve_decision("acme", a.id, "approve", "ann", "ok")
    assert outcome == "done" and approved is not None and approved.status == "EXECUTED"
    assert approved.trace["review"]["previous_status"] == "REQUIRES_APPROVAL"
    assert [x["status"] for x in await any_store.list_actions("acme", a.id)] == ["pending"]
    again, outcome = await any_store.resolve_decision("acme", a.id, "approve", "bob", None)
    assert outcome == "repeat" and again == approved
    _, outcome = await any_store.resolve_decision("acme", a.id, "reject", "bob", None)
    assert outcome == "conflict"  # the API answers 409
    rejected, outcome = await any_store.resolve_decision("acme", r.id, "reject", "ann", "no")
    assert outcome == "done" and rejected is not None and rejected.status == "REJECTED"
    assert (await any_store.resolve_decision("acme", r.id, "reject", "ann", "no"))[1] == "repeat"
    assert (await any_store.resolve_decision("acme", r.id, "approve", "ann", None))[1] == "conflict"
    assert await any_store.resolve_decision("globex", a.id, "approve", "x", None) == (None, "missing")
    assert await any_store.get_decision("acme", a.id) == approved
    assert await any_store.counters("acme") == {"total_decisions": 2, "successful_decisions": 1}
    analytics = await any_store.analytics("acme", T0, T0 + timedelta(days=1))
    assert analytics["approvals"]["reviewed"] == 2 and analytics["approvals"]["approved"] == 1
    assert analytics["by_status"] == {"EXECUTED": 1, "REJECTED": 1}


async def test_stream_order_head_and_prune(any_store: Store, make_decision: MakeDecision) -> None:
    assert await any_store.stream_head("acme") == 0
    d1, d2 = make_decision(status="EXECUTED"), make_decision(status="REQUIRES_APPROVAL")
    g = make_decision(org="globex", status="FAILED")
    await any_store.complete_events([d1, g, d2])
    await any_store.resolve_decision("acme", d2.id, "approve", "ann", None)
    entries = await any_store.stream_after("acme", 0)
    seqs = [e[0] for e in entries]
    assert seqs == sorted(seqs) and len(seqs) == 3
    assert [(e[1], e[2]["kind"], e[2]["new"], e[2]["decision"]["id"]) for e in entries] == [
        ("executed", "executed", True, d1.id), ("awaiting_approval", "awaiting_approval", True, d2.id),
        ("approved", "approved", False, d2.id)]
    assert entries[0][2]["decision"] == d1.model_dump(mode="json")
    assert await any_store.stream_after("acme", seqs[0]) == entries[1:]
    assert await any_store.stream_after("acme", 0, limit=1) == entries[:1]
    assert await any_store.stream_head("acme") == seqs[-1]
    assert [e[1] for e in await any_store.stream_after("globex", 0)] == ["failed"]
    assert await any_store.prune_stream(datetime.now(UTC) - timedelta(hours=1)) == 0
    assert await any_store.prune_stream(datetime.now(UTC) + timedelta(seconds=1)) == 4
    assert await any_store.stream_after("acme", 0) == []


async def test_api_keys(any_store: Store) -> None:
    await any_store.add_api_key("k1", "acme", "ci", "hash1")
    await any_store.add_api_key("k2", "globex", "ops", "hash2")
    assert await any_store.api_key_by_hash("hash1") == {"id": "k1", "org": "acme", "name": "ci"}
    assert await any_store.api_key_by_hash("nope") is None
    with pytest.raises(Exception):  # the hash is unique  # noqa: B017
        await any_store.add_api_key("k3", "acme", "dup", "hash1")
    assert [k["id"] for k in await any_store.list_api_keys()] == ["k1", "k2"]
    assert await any_store.revoke_api_key("k1") is True
    assert await any_store.revoke_api_key("k1") is False
    assert await any_store.api_key_by_hash("hash1") is None
    [k1] = await any_store.list_api_keys("acme")
    assert set(k1) == {"id", "org", "name", "created_at", "revoked_at"} and k1["revoked_at"] is not None


async def test_timers_fire_once(any_store: Store) -> None:
    now = datetime.now(UTC)
    assert await any_store.add_timer(event(id="t1"), now - timedelta(minutes=1)) is True
    assert await any_store.add_timer(event(id="t1"), now) is False
    await any_store.add_timer(event(id="t2"), now + timedelta(hours=1))
    await any_store.record_event(event(id="t3"))  # already in the inbox: the timer fires but adds nothing
    await any_store.add_timer(event(id="t3"), now - timedelta(minutes=2))
    with pytest.raises(ValueError):
        await any_store.add_timer(event(id="t4"), datetime(2026, 1, 1))
    fired = await any_store.fire_due_timers(now)
    assert [e.id for e in fired] == ["t1"]
    assert await any_store.fire_due_timers(now) == []
    info = await any_store.event_info("acme", "t1")
    assert info is not None and (info["channel"], info["status"]) == ("timer", "accepted")
    assert [e.id for e in await any_store.fire_due_timers(now + timedelta(hours=2))] == ["t2"]


async def test_list_events_paging(any_store: Store) -> None:
    await any_store.accept_events(items(*(f"e{i}" for i in range(7))))
    await any_store.claim_events("w", limit=2)
    page, cursor = await any_store.list_events("acme", limit=3)
    assert [e["id"] for e in page] == ["e6", "e5", "e4"] and cursor is not None
    page2, cursor2 = await any_store.list_events("acme", limit=3, before=cursor)
    page3, cursor3 = await any_store.list_events("acme", limit=3, before=cursor2)
    assert [e["id"] for e in page2 + page3] == ["e3", "e2", "e1", "e0"] and cursor3 is None
    assert [e["id"] for e in (await any_store.list_events("acme", status="processing"))[0]] == ["e1", "e0"]
    assert (await any_store.list_events("acme", since=datetime.now(UTC) + timedelta(minutes=1)))[0] == []
    assert len((await any_store.list_events("acme", until=datetime.now(UTC) + timedelta(minutes=1)))[0]) == 7
    assert page[0]["envelope"]["id"] == "e6" and page[0]["priority"] == 3


# ---- outbox ------------------------------------------------------------------------------------------


def _three_actions(make_decision: MakeDecision) -> Decision:
    return make_decision(status="EXECUTED", actions=[
        Action(type=DecisionType.ASSIGN_PIPELINE, params={"pipeline": "sales"}),
        Action(type=DecisionType.SEND_NOTIFICATION, params={"to": "a@x.io"}),
        Action(type=DecisionType.TRIGGER_AUTOMATION, params={"title": "call"})])


async def test_outbox_claim_finish_retry(any_store: Store, make_decision: MakeDecision) -> None:
    d = _three_actions(make_decision)
    await any_store.accept_events(items(d.event_id))
    await any_store.complete_event(d)
    jobs = await any_store.claim_actions("r1")
    assert [(j.key, j.index, j.attempt) for j in jobs] == [(f"{d.id}:0", 0, 1)]  # later ones wait for it
    assert jobs[0].decision == d and jobs[0].event is not None and jobs[0].event["id"] == d.event_id
    assert jobs[0].params == {"pipeline": "sales"}
    assert await any_store.claim_actions("r2") == []
    assert await any_store.finish_action(jobs[0].key, "r2", {"ok": 1}, duration_ms=1.0) is False
    assert await any_store.finish_action(jobs[0].key, "r1", {"ok": 1}, duration_ms=12.34) is True
    assert await any_store.finish_action(jobs[0].key, "r1", {"ok": 1}, duration_ms=12.34) is False
    [job] = await any_store.claim_actions("r1")
    assert job.index == 1
    assert await any_store.retry_action(job.key, "r1", "smtp down", delay_seconds=60, duration_ms=3) is True
    assert await any_store.claim_actions("r1") == []
    due = await any_store.next_action_due()  # action 2 is pending (due now), waiting for action 1
    assert due is not None and due <= datetime.now(UTC)
    held = await any_store.get_action("acme", job.key)
    assert held is not None and held["available_at"] > (datetime.now(UTC) + timedelta(seconds=50)).isoformat()
    [job] = await any_store.claim_actions("r1", now=datetime.now(UTC) + timedelta(seconds=61))
    assert (job.index, job.attempt) == (1, 2)
    assert await any_store.defer_action(job.key, "r1", datetime.now(UTC) + timedelta(hours=1), "quiet hours")
    row = await any_store.get_action("acme", job.key)
    assert row is not None and row["status"] == "pending" and row["attempts"] == 1
    assert row["result"]["deferred"] == "quiet hours"
    assert [(e["outcome"], e.get("error")) for e in row["attempt_log"]] == [("failed", "smtp down")]
    done = await any_store.get_action("acme", f"{d.id}:0")
    assert done is not None and done["result"] == {"ok": 1} and done["duration_ms"] == 12.34
    assert done["attempt_log"][0]["outcome"] == "done" and done["attempt_log"][0]["ms"] == 12.3
    assert await any_store.outbox_depth() == {"pending": 2, "running": 0, "done": 1, "dead": 0, "cancelled": 0}
    page, cursor = await any_store.list_outbox("acme", limit=2)
    assert [a["index"] for a in page] == [2, 1] and cursor is not None
    assert [a["index"] for a in (await any_store.list_outbox("acme", status="done"))[0]] == [0]


async def test_outbox_kill_escalate_and_retry(any_store: Store, make_decision: MakeDecision) -> None:
    d = _three_actions(make_decision)
    await any_store.complete_event(d)
    [job] = await any_store.claim_actions("r1", lease_seconds=60)
    assert await any_store.renew_action_leases("r1", [job.key, "other"], 120) == 1
    assert await any_store.action_owners() == ["r1"]
    assert await any_store.kill_action(job.key, "r2", "nope") is None  # not r2's
    failed = await any_store.kill_action(job.key, "r1", "crm said 400", duration_ms=5,
                                         escalation={"to": "ops@x.io"})
    assert failed is not None and failed.status == "FAILED" and "crm said 400" in (failed.error or "")
    assert await any_store.get_decision("acme", d.id) == failed
    rows = await any_store.list_actions("acme", d.id)
    assert [(r["index"], r["status"], r["type"]) for r in rows] == [
        (-1, "pending", "ESCALATE"), (0, "dead", "ASSIGN_PIPELINE"), (1, "cancelled", "SEND_NOTIFICATION"),
        (2, "cancelled", "TRIGGER_AUTOMATION")]
    [notice] = await any_store.claim_actions("r1")
    assert notice.key == f"{d.id}:failure" and notice.params == {"to": "ops@x.io"}
    assert (await any_store.stream_after("acme", 0))[-1][1] == "failed"
    back = await any_store.retry_dead_action("acme", job.key, by="ann")
    assert back is not None and back.status == "EXECUTED" and back.error is None
    assert await any_store.retry_dead_action("acme", job.key, by="ann") is None  # not dead any more
    assert [r["status"] for r in await any_store.list_actions("acme", d.id)] == [
        "running", "pending", "pending", "pending"]
    # A runner that died: its action goes back to pending, the attempt stays counted.
    assert await any_store.recover_actions(dead_owners=["r1"]) == 1
    row = await any_store.get_action("acme", notice.key)
    assert row is not None and row["status"] == "pending" and row["attempts"] == 1
    assert row["attempt_log"][-1]["outcome"] == "interrupted"
    assert await any_store.recover_actions() == 0
    assert await any_store.get_action("globex", notice.key) is None


# ---- intakes, calendar, notifications ------------------------------------------------------------------


async def test_intake_assignment_is_idempotent(any_store: Store) -> None:
    intake = Intake(org="acme", id="lead-1", title="Zoë", pipeline="sales", stage="new", assignee="ann",
                    priority=2, closed=False, contact={"email": "z@x.io"}, decision_id="dec_1", event_id="evt_1")
    first, applied = await any_store.assign_intake(intake, action_key="dec_1:0")
    assert applied and (first.pipeline, first.assignee, len(first.history)) == ("sales", "ann", 1)
    again, applied = await any_store.assign_intake(intake, action_key="dec_1:0")
    assert not applied and again == first
    results = await asyncio.gather(*(any_store.assign_intake(
        Intake(org="acme", id="lead-1", title="Zoë", pipeline="support", stage="triage", assignee="bob",
               priority=1, closed=False), action_key="dec_2:0") for _ in range(4)))
    assert sorted(applied for _, applied in results) == [False, False, False, True]
    got = await any_store.get_intake("acme", "lead-1")
    assert got is not None and (got.pipeline, got.assignee, len(got.history)) == ("support", "bob", 2)
    moved = await any_store.move_intake("acme", "lead-1", stage="won", closed=True, assignee=None,
                                        keep_assignee=True, by="ann", note="signed")
    assert moved is not None and moved[1] is not None and moved[1].type == "pipeline:stage_changed"
    assert (await any_store.event_info("acme", moved[1].id) or {})["channel"] == "internal"
    assert await any_store.move_intake("acme", "lead-1", stage="won", closed=True, assignee=None,
                                       keep_assignee=True, by="ann", note=None) == (moved[0], None)
    assert await any_store.move_intake("acme", "nope", stage="x", closed=False, assignee=None,
                                       keep_assignee=True, by="ann", note=None) is None
    assert await any_store.intake_counts("acme") == {}
    page, _ = await any_store.list_intakes("acme", closed=True)
    assert [i.id for i in page] == ["lead-1"]
    state = await any_store.snapshot("acme", datetime.now(UTC))
    assert state.loads == {"bob": 0}


async def test_calendar_conflict_check(any_store: Store) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    end = start + timedelta(minutes=30)

    def no_slot(busy: list[Any]) -> str:
        return f"{len(busy)} busy, no other slot"

    def later(busy: list[Any]) -> tuple[datetime, datetime, str]:
        return end + timedelta(hours=1), end + timedelta(hours=1, minutes=30), "an hour later"

    booked, change = await any_store.book_event(
        "acme", host="ann", title="Demo", start=start, end=end, attendees=[{"email": "z@x.io"}],
        decision_id="d1", action_key="d1:0", buffer_minutes=10, replan=no_slot, reminders=[15, 60])
    assert booked is not None and change == Change("booked")
    assert [r["minutes_before"] for r in await any_store.calendar_reminders("acme", booked.id)] == [60, 15]
    again, change = await any_store.book_event(
        "acme", host="ann", title="Demo", start=start, end=end, attendees=[], decision_id="d1",
        action_key="d1:0", buffer_minutes=10, replan=no_slot)
    assert again == booked and change.outcome == "booked"
    # The buffer makes the slot right after it taken too.
    none, change = await any_store.book_event(
        "acme", host="ann", title="Other", start=end + timedelta(minutes=5), end=end + timedelta(minutes=35),
        attendees=[], decision_id="d2", action_key="d2:0", buffer_minutes=10, replan=no_slot)
    assert none is None and change == Change("conflict", "1 busy, no other slot")
    moved, change = await any_store.book_event(
        "acme", host="ann", title="Other", start=start, end=end, attendees=[], decision_id="d3",
        action_key="d3:0", buffer_minutes=10, replan=later)
    assert moved is not None and change == Change("moved", "an hour later")
    # Two bookings of the same slot at once: one books it, the other one is moved.
    slot = start + timedelta(days=2)
    both = await asyncio.gather(*(any_store.book_event(
        "acme", host="bob", title=f"race {i}", start=slot, end=slot + timedelta(minutes=30), attendees=[],
        decision_id=None, action_key=f"race:{i}", buffer_minutes=0, replan=no_slot) for i in range(2)))
    assert sorted(c.outcome for _, c in both) == ["booked", "conflict"]
    # Updates are checked against the host's other events; cancellation is idempotent.
    updated, change = await any_store.update_event(
        "acme", booked.id, start=slot, end=slot + timedelta(minutes=30), action_key="u1", buffer_minutes=0,
        replan=no_slot)
    assert updated is not None and change.outcome == "updated" and updated.sequence == 1
    assert (await any_store.update_event("acme", booked.id, start=start, end=end, action_key="u1",
                                         buffer_minutes=0, replan=no_slot))[1].outcome == "unchanged"
    cancelled, change = await any_store.cancel_event("acme", booked.id, "c1")
    assert cancelled is not None and change.outcome == "cancelled" and cancelled.status == "cancelled"
    assert (await any_store.cancel_event("acme", booked.id, "c1"))[1].outcome == "unchanged"
    assert (await any_store.cancel_event("acme", "nope", "c2"))[0] is None
    listed = await any_store.list_calendar_events("acme", host="ann", include_cancelled=True)
    assert [e.id for e in listed] == [moved.id, booked.id]  # by start: booked was moved later
    assert await any_store.get_calendar_event("acme", booked.id) == cancelled
    assert await any_store.get_calendar_event("globex", booked.id) is None
    secret = await any_store.feed_secret()
    assert len(secret) == 32 and await any_store.feed_secret() == secret


async def test_notifications(any_store: Store) -> None:
    rows = [{"org": "acme", "id": f"n{i}", "user_id": user, "template": "t", "subject": "s", "body": "b",
             "priority": 2, "decision_id": "d1"} for i, user in enumerate(["ann", "bob"])]
    stored = await any_store.add_notifications(rows, "d1:0")
    assert [(n["id"], n["user_id"], n["read"]) for n in stored] == [("n0", "ann", False), ("n1", "bob", False)]
    assert await any_store.add_notifications(rows, "d1:0") == stored
    assert await any_store.unread_count("acme", "ann") == 1
    read = await any_store.mark_notification_read("acme", "n0")
    assert read is not None and read["read"]
    assert await any_store.mark_notification_read("acme", "n0") == read
    assert await any_store.mark_notification_read("globex", "n0") is None
    assert await any_store.unread_count("acme", "ann") == 0
    page, cursor = await any_store.list_notifications("acme", "ann")
    assert [n["id"] for n in page] == ["n0"] and cursor is None
    assert (await any_store.list_notifications("acme", "ann", unread_only=True))[0] == []
    assert await any_store.get_notification("acme", "n1") == stored[1]
