"""The durable processing path without HTTP: group commit, leases, recovery, one decision per event."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from adapters.sqlite_store import InboxItem
from adapters.stores import open_store
from engine.agent import Agent
from engine.llm import LLMStage
from engine.models import Event
from engine.registry import Registry
from server.metrics import Metrics
from server.service import GroupCommit, OutboxHandoff, Processing, Service, owner_is_dead

ROOT = Path(__file__).resolve().parents[2]


def sales(i: int) -> Event:
    return Event(id=f"e{i}", org="acme", source="EMAIL", type="email:received",
                 data={"subject": "Pricing", "text": "How much is the pro plan? Please send a quote."})


@pytest.fixture
async def store(store_url: str):
    s = await open_store(store_url)
    yield s
    await s.close()


@pytest.fixture(scope="module")
def registry() -> Registry:
    r = Registry(ROOT / "rulesets", ROOT / "policies")
    r.load_all()
    return r


def make_service(store: Any, registry: Registry, **processing: Any) -> Service:
    agent = Agent(registry.get, LLMStage(None), executor=OutboxHandoff())
    cfg = Processing(**{"workers": 4, "lease_seconds": 5, "poll_seconds": 0.05, "retry_base_seconds": 0.01,
                        **processing})
    return Service(store, agent, Metrics(), processing=cfg)


async def test_group_commit_batches_concurrent_submissions():
    batches: list[list[int]] = []

    async def write(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)  # a commit in flight: later arrivals wait for the next batch
        return [i * 10 for i in items]

    gc: GroupCommit[int, int] = GroupCommit(write)
    results = await asyncio.gather(*[gc.submit(i) for i in range(100)])
    assert results == [i * 10 for i in range(100)]
    assert sum(len(b) for b in batches) == 100
    assert len(batches) <= 3  # one for the first arrival, then the rest together


async def test_group_commit_failure_reaches_every_waiter_of_the_batch():
    async def write(items: list[int]) -> list[int]:
        raise OSError("disk full")

    gc: GroupCommit[int, int] = GroupCommit(write)
    results = await asyncio.gather(*[gc.submit(i) for i in range(5)], return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)


async def test_duplicates_in_one_batch_make_one_event(store):
    out = await store.accept_events([InboxItem(sales(1)), InboxItem(sales(1)), InboxItem(sales(2))])
    assert [a.new for a in out] == [True, False, True]
    rows, _ = await store.list_events("acme")
    assert sorted(r["id"] for r in rows) == ["e1", "e2"]


async def test_workers_decide_each_event_once(store, registry):
    service = make_service(store, registry)
    await service.start()
    try:
        await asyncio.gather(*[service.accept(sales(i), channel="test") for i in range(40)])
        for _ in range(200):
            depth = await store.inbox_depth()
            if depth["decided"] == 40:
                break
            await asyncio.sleep(0.02)
        assert depth == {"accepted": 0, "processing": 0, "decided": 40, "dead": 0}
    finally:
        await service.stop()
    decisions, _ = await store.list_decisions("acme", limit=500)
    assert sorted(d.event_id for d in decisions) == sorted(f"e{i}" for i in range(40))


async def test_second_decision_for_an_event_is_refused(store, registry):
    service = make_service(store, registry)
    await store.accept_events([InboxItem(sales(1), lease_owner=service.owner)])
    first = await service.agent.process(sales(1))
    second = await service.agent.process(sales(1))
    stored, new = await store.complete_event(first)
    assert new and stored.id == first.id
    stored, new = await store.complete_event(second)
    assert not new and stored.id == first.id
    decisions, _ = await store.list_decisions("acme")
    assert [d.id for d in decisions] == [first.id]
    assert len(await store.list_actions("acme", second.id)) == 0


async def test_expired_lease_is_taken_back(store):
    await store.accept_events([InboxItem(sales(1))])
    (claimed,) = await store.claim_events("w1", lease_seconds=0.05)
    assert claimed.attempts == 1
    assert await store.claim_events("w2") == []  # still leased
    await asyncio.sleep(0.1)
    assert await store.recover_events() == 1
    (again,) = await store.claim_events("w2")
    assert again.event.id == "e1" and again.attempts == 2


async def test_leases_of_a_dead_process_are_taken_back_at_once(store):
    await store.accept_events([InboxItem(sales(1))])
    dead = f"{socket.gethostname()}:999999999:abcd"
    await store.claim_events(dead, lease_seconds=600)
    assert owner_is_dead(dead)
    assert not owner_is_dead(f"{socket.gethostname()}:{os.getpid()}:x")
    assert not owner_is_dead("another-host:1:x")  # cannot tell: wait for the lease
    assert await store.recover_events(dead_owners=[dead]) == 1
    assert (await store.event_info("acme", "e1"))["status"] == "accepted"


async def test_graceful_stop_gives_unfinished_events_back(store, registry):
    service = make_service(store, registry, shutdown_grace_seconds=0.1)
    gate = asyncio.Event()
    real = service.agent.process

    async def slow(event, **kw):
        await gate.wait()
        return await real(event, **kw)

    service.agent.process = slow  # type: ignore[method-assign]
    await service.start()
    await service.accept(sales(1), channel="test")
    for _ in range(100):
        if (await store.inbox_depth())["processing"] == 1:
            break
        await asyncio.sleep(0.01)
    await service.stop()
    info = await store.event_info("acme", "e1")
    assert info["status"] == "accepted" and info["attempts"] == 0  # not counted as a failed attempt


async def test_an_event_that_kills_its_process_every_time_is_dead_lettered(store):
    await store.accept_events([InboxItem(sales(1))])
    for i in range(3):
        dead = f"{socket.gethostname()}:99999999{i}:x"
        (claimed,) = await store.claim_events(dead, lease_seconds=600)
        assert claimed.attempts == i + 1
        await store.recover_events(dead_owners=[dead], max_attempts=3)
    info = await store.event_info("acme", "e1")
    assert info["status"] == "dead" and "died while deciding this event, 3 times" in info["error"]
    assert await store.claim_events("w") == []


async def test_internal_events_take_the_same_path(store, registry):
    # What the agent's own actions cause (a stage change, an automation finishing) is queued like any event.
    service = make_service(store, registry)
    await service.start()
    try:
        stage = Event(id="stage-1", org="acme", source="WORKER", type="pipeline:stage_changed",
                      data={"intakeId": "INT-1", "pipeline": "sales-inquiries", "from": "new", "to": "qualified"})
        acc = await service.emit(stage)
        assert acc.new
        assert not (await service.emit(stage)).new  # emitted twice (a retried action): one event
        for _ in range(200):
            info = await store.event_info("acme", "stage-1")
            if info["status"] == "decided":
                break
            await asyncio.sleep(0.02)
        assert info["status"] == "decided" and info["channel"] == "internal"
        assert (await store.get_decision("acme", info["decision_id"])).input == {
            "source": "WORKER", "type": "pipeline:stage_changed"}
    finally:
        await service.stop()


@pytest.mark.sqlite_only
async def test_claiming_reads_the_index_in_order_without_sorting_the_backlog(store):
    async with store._read() as db:
        plan = [r[3] for r in await db.execute_fetchall(
            "EXPLAIN QUERY PLAN SELECT rowid FROM events WHERE status = 'accepted' "
            "AND (available_at IS NULL OR available_at <= ?) ORDER BY priority DESC, rowid LIMIT ?", ("x", 8))]
    assert any("USING INDEX events_ready" in p for p in plan) and not any("TEMP B-TREE" in p for p in plan), plan


async def test_claims_take_the_most_urgent_first_then_the_oldest(store):
    await store.accept_events([InboxItem(sales(i), priority=5 if i in (3, 7) else 3) for i in range(10)])
    assert [c.event.id for c in await store.claim_events("w", limit=2)] == ["e3", "e7"]
    assert [c.event.id for c in await store.claim_events("w", limit=3)] == ["e0", "e1", "e2"]


async def test_a_queue_job_claims_its_own_event_once(store, registry):
    service = make_service(store, registry)
    await store.accept_events([InboxItem(sales(i)) for i in range(3)])
    claimed, status = await store.claim_event("acme", "e1", "w1", lease_seconds=30)
    assert status == "claimed" and claimed is not None and claimed.event.id == "e1" and claimed.attempts == 1
    assert await store.claim_event("acme", "e1", "w2") == (None, "processing")  # a live lease: later
    assert await store.claim_event("acme", "nope", "w2") == (None, "missing")
    await store.complete_event(await service.agent.process(sales(1)))
    assert await store.claim_event("acme", "e1", "w2") == (None, "decided")
    # a holder that died: its lease runs out and the event can be claimed again
    assert (await store.claim_event("acme", "e2", "w1", lease_seconds=0.05))[1] == "claimed"
    await asyncio.sleep(0.1)
    again, status = await store.claim_event("acme", "e2", "w2")
    assert status == "claimed" and again is not None and again.attempts == 2
    assert [c.event.id for c in await store.claim_events("w3")] == ["e0"]  # the others are not waiting


def test_providers_are_made_on_first_use_when_their_key_is_set(monkeypatch):
    from server.app import Providers

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real-0123456789")
    p = Providers("policy")
    assert p.get("none") is None and p.get("anthropic") is None
    openai = p.get("openai")
    assert openai is not None and openai.name == "openai" and p.get("openai") is openai
    assert Providers("off").get("openai") is None


async def test_old_stream_entries_are_pruned(store, registry):
    from datetime import UTC, datetime, timedelta

    service = make_service(store, registry)
    await store.accept_events([InboxItem(sales(1), lease_owner=service.owner)])
    await store.complete_event(await service.agent.process(sales(1)))
    assert len(await store.stream_after("acme", 0)) == 1
    assert await store.prune_stream(datetime.now(UTC) - timedelta(days=1)) == 0
    assert await store.prune_stream(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert await store.stream_after("acme", 0) == []
