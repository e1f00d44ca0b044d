"""Replay from the service's log (`adapters/replay.py`), on a database made by the service itself: acme corpus
events posted in sync mode to the real app, some classified by the LLM stand-in, the executors run by the real
outbox; then the app is closed and the log replayed with the recorded answers, read-only."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.replay import (
    Replay,
    ReplayError,
    ReplayProvider,
    load_replay,
    replay_decisions,
    replay_stage,
    state_at,
)
from engine.agent import Agent
from engine.models import Event
from engine.ports import LLMError, LLMRequest, StaticState
from engine.registry import build
from server.app import SERVICE, STORE
from tests.server.conftest import (  # noqa: F401  (the service's fixtures, shared with tests/server)
    auth,
    config_dirs,
    make_client,
    make_settings,
    service_env,
)

CORPUS = Path(__file__).resolve().parents[1] / "cases" / "acme" / "corpus.jsonl"
BOOKING = {"id": "replay-booking-1", "source": "WEBHOOK", "type": "booking:created",
           "data": {"form": "booking", "name": "Luca Bianchi", "email": "luca@example.com",
                    "requested_start": "2031-03-11T10:00:00-04:00", "duration_minutes": 30,
                    "purpose": "Discuss the new menu pages", "host": "u-sam"}}


def corpus(n: int, skip: int = 0) -> list[dict[str, Any]]:
    """`n` acme corpus events after the first `skip`, as posted (the org comes from the API key)."""
    lines = CORPUS.read_text(encoding="utf-8").splitlines()[skip:skip + n]
    return [{k: v for k, v in json.loads(x).items() if k != "org"} for x in lines]


def fingerprint(db: Path) -> dict[str, str]:
    """sha256 of the database file and of its -wal/-shm where present."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")) if p.exists()}


@dataclass
class Log:
    """A service database built by the service, and what happened while building it."""

    db: Path
    config: tuple[Path, Path]
    first: list[str]  # event ids posted before `mid`
    second: list[str]  # after `mid`
    mid: datetime  # between the two batches (state and since/until tests)
    end: datetime
    decisions: dict[str, dict[str, Any]]  # event id → the decision the API returned
    llm_requests: int  # what the stand-in counted while the log was made
    closed_intake: str
    cancelled_event: str


async def post(client: Any, key: str, event: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/api/agent/process?mode=sync", json=event, headers=auth(key))
    assert r.status == 200, await r.text()
    return await r.json()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A replay reads the service's SQLite file (`--from-db PATH`): the logs made here are SQLite ones."""
    return str(tmp_path / "astralis.db")


@pytest.fixture
async def log(make_client: Callable[..., Any], config_dirs: tuple[Path, Path], tmp_path: Path,  # noqa: F811
              standin: Any, monkeypatch: pytest.MonkeyPatch) -> Log:
    """30 corpus events and a booking through the real app with the LLM on (the stand-in); then an intake
    closed and the booking cancelled; then 10 more events. The app is closed at the end."""
    for k, v in standin.env().items():
        monkeypatch.setenv(k, v)
    client, key_for = await make_client(llm="policy")
    key = await key_for()
    decisions: dict[str, dict[str, Any]] = {}
    for event in [*corpus(30), BOOKING]:
        decisions[event["id"]] = await post(client, key, event)
    assert await client.app[SERVICE].outbox.idle(15)
    store = client.app[STORE]
    mid = datetime.now(UTC)
    # after `mid`: an open intake goes to a closed stage and the booking is cancelled
    intakes, _ = await store.list_intakes("acme", closed=False)
    intake = next(i for i in intakes if i.assignee)
    pipeline = next(p for p in build(config_dirs[0] / "acme", config_dirs[1])[0].bundle.org.pipelines
                    if p.id == intake.pipeline)
    await store.move_intake("acme", intake.id, stage=pipeline.closed_stages[0], closed=True, assignee=None,
                            keep_assignee=True, by="u-omar", note="done")
    [booked] = [b for b in await store.list_calendar_events("acme", host="u-sam")
                if b.decision_id == decisions[BOOKING["id"]]["id"]]
    await store.cancel_event("acme", booked.id, "test-cancel")
    second = corpus(10, skip=30)
    for event in second:
        decisions[event["id"]] = await post(client, key, event)
    assert await client.app[SERVICE].outbox.idle(15)
    end = datetime.now(UTC)
    requests = len(standin.requests)
    await client.close()
    db = tmp_path / "astralis.db"
    assert db.exists()
    return Log(db, config_dirs, [*(e["id"] for e in corpus(30)), BOOKING["id"]], [e["id"] for e in second],
               mid, end, decisions, requests, intake.id, booked.id)


def agent_for(log: Log, provider: ReplayProvider, state: StaticState | None = None) -> Agent:
    compiled, findings = build(log.config[0] / "acme", log.config[1])
    assert compiled is not None, findings
    return Agent(lambda org: compiled if org == "acme" else None, replay_stage(provider), state=state)


def replay_all(log: Log) -> Replay:
    return load_replay(log.db, "acme", None, None)


async def test_events_and_recordings_come_back_in_arrival_order(log: Log) -> None:
    replay = replay_all(log)
    ids = [e.id for e in replay.events]
    # stage moves raise internal events of their own: they are in the log too, in their place
    assert [i for i in ids if i in log.decisions] == [*log.first, *log.second]
    assert all(isinstance(e, Event) for e in replay.events)
    for event_id, original in log.decisions.items():
        assert replay.decisions[event_id].id == original["id"]
        trace = replay.recorded[event_id]
        if original["llm"] is None:
            assert trace is None
        else:
            assert trace is not None and trace.response == original["llm"]["response"]
            assert trace.prompt == original["llm"]["prompt"] and trace.input_tokens == original["llm"]["input_tokens"]
    consulted = [i for i, d in log.decisions.items() if d["llm"] is not None]
    assert consulted and len(consulted) < len(log.decisions), "the log needs rules-only and LLM decisions"
    assert log.llm_requests >= len(consulted)


async def test_replay_decides_like_the_original_without_calling_the_llm(log: Log, standin: Any) -> None:
    standin.reset()
    replay = replay_all(log)
    provider = ReplayProvider(replay.recorded)
    events = [e for e in replay.events if e.id in log.decisions]
    decisions = await replay_decisions(agent_for(log, provider, state_at(log.db, "acme", log.mid)), events,
                                       provider)
    assert standin.requests == []  # not one request reached the stand-in during the replay
    consulted = sum(d["llm"] is not None for d in log.decisions.values())
    assert provider.calls == provider.answered == consulted
    for d in decisions:
        original = log.decisions[d.event_id]
        got = {"intent": d.intent, "decision_type": d.decision_type, "decided_by": d.decided_by}
        assert got == {k: original[k] for k in got}, d.event_id
        assert d.dry_run and d.executed_at is None
        if original["llm"] is not None:
            assert d.llm is not None and d.llm.provider == "replay" and d.llm.error is None
            assert (d.llm.input_tokens, d.llm.output_tokens) == (original["llm"]["input_tokens"],
                                                                 original["llm"]["output_tokens"])
            assert d.llm.latency_ms == original["llm"]["latency_ms"]


async def test_a_missing_recording_goes_to_the_fallback_and_says_so(log: Log, standin: Any) -> None:
    standin.reset()
    replay = replay_all(log)
    consulted = [e for e in replay.events if replay.recorded.get(e.id) is not None]
    removed = {e.id for e in consulted[:6]}  # more than the breaker's 5 failures in a row
    recorded = {k: (None if k in removed else v) for k, v in replay.recorded.items()}
    provider = ReplayProvider(recorded)
    decisions = {d.event_id: d for d in await replay_decisions(agent_for(log, provider), consulted, provider)}
    assert standin.requests == []
    for event_id in removed:
        d = decisions[event_id]
        assert d.decided_by == "fallback"
        assert d.llm is not None and d.llm.error is not None
        assert f"no recorded LLM answer for event {event_id}" in d.llm.error
        assert f"no recorded LLM answer for event {event_id}" in d.reasoning
    # the events after them still get their own answers: the breaker did not open on the missing ones
    for event_id in {e.id for e in consulted} - removed:
        assert decisions[event_id].llm.error is None  # type: ignore[union-attr]
        assert decisions[event_id].decided_by == log.decisions[event_id]["decided_by"]


async def test_without_an_event_the_prompt_finds_the_recording(log: Log) -> None:
    replay = replay_all(log)
    event_id, trace = next((k, v) for k, v in replay.recorded.items() if v is not None)
    provider = ReplayProvider(replay.recorded)
    reply = await provider.complete(LLMRequest(system="s", user=trace.prompt, model="m"))
    assert reply.text == trace.response and reply.provider == "replay"
    # a candidate ruleset changes the reason and the scores in the prompt: the event's data still finds it
    _, data = trace.prompt.split("<<<EVENT DATA", 1)
    reply = await provider.complete(LLMRequest(system="s", user="Task: changed\n<<<EVENT DATA" + data, model="m"))
    assert reply.text == trace.response
    with pytest.raises(LLMError, match="no recorded LLM answer for this prompt") as info:
        await provider.complete(LLMRequest(system="s", user="something else", model="m"))
    assert info.value.kind == "config"
    with provider.event("no-such-event"), pytest.raises(LLMError, match=r"no-such-event \(the log has no decision"):
        await provider.complete(LLMRequest(system="s", user=trace.prompt, model="m"))
    assert event_id


async def test_nothing_is_written_to_the_database(log: Log, standin: Any) -> None:
    before = fingerprint(log.db)
    names = sorted(p.name for p in log.db.parent.iterdir())
    replay = replay_all(log)
    provider = ReplayProvider(replay.recorded)
    await replay_decisions(agent_for(log, provider), replay.events, provider)
    state_at(log.db, "acme", log.mid)
    assert fingerprint(log.db) == before
    assert sorted(p.name for p in log.db.parent.iterdir()) == names  # not even a -wal or -shm appears


async def test_a_database_in_use_is_read_without_changing_it(log: Log) -> None:
    writer = sqlite3.connect(log.db)  # the service running: a -wal holds its latest commits
    try:
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("UPDATE events SET updated_at = updated_at")
        writer.commit()
        before = fingerprint(log.db)
        assert f"{log.db.name}-wal" in before
        replay = replay_all(log)
        after = fingerprint(log.db)
        assert len(replay.events) >= len(log.decisions)
        # the database and its WAL are unchanged; the -shm is the readers' shared index, not data
        assert {k: v for k, v in after.items() if not k.endswith("-shm")} == \
            {k: v for k, v in before.items() if not k.endswith("-shm")}
    finally:
        writer.close()


async def test_since_and_until_select_by_arrival(log: Log) -> None:
    first = load_replay(log.db, "acme", None, log.mid)
    second = load_replay(log.db, "acme", log.mid, None)
    assert [e.id for e in first.events] == log.first
    assert [e.id for e in second.events if e.id in log.decisions] == log.second
    assert load_replay(log.db, "acme", log.end + timedelta(seconds=1), None).events == []
    assert load_replay(log.db, "other-org", None, None).events == []
    with pytest.raises(ValueError, match="since needs a UTC offset"):
        load_replay(log.db, "acme", datetime(2026, 1, 1), None)


async def test_events_without_a_decision_are_listed_as_missing(log: Log) -> None:
    # the stage move raised pipeline:stage_changed; decided or not, it is accounted for
    replay = replay_all(log)
    assert set(replay.missing) == {e.id for e in replay.events} - set(replay.decisions)
    copy = log.db.with_name("copy.db")
    copy.write_bytes(log.db.read_bytes())
    with sqlite3.connect(copy) as conn:
        conn.execute("DELETE FROM decisions WHERE event_id = ?", (log.second[0],))
        conn.execute("UPDATE events SET decision_id = NULL WHERE id = ?", (log.second[0],))
    replay = load_replay(copy, "acme", None, None)
    assert log.second[0] in replay.missing and replay.recorded[log.second[0]] is None
    assert log.second[0] not in replay.decisions


def test_a_missing_database_is_refused_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "astralis.db"
    with pytest.raises(ReplayError, match=f"{path}: no such database"):
        load_replay(path, "acme", None, None)
    with pytest.raises(ReplayError, match="no such database"):
        state_at(path, "acme", datetime.now(UTC))
    assert not path.parent.exists()
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    with pytest.raises(ReplayError, match=r"junk\.db: cannot read the service log"):
        load_replay(junk, "acme", None, None)


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


async def test_state_at_reflects_intakes_and_calendar_at_the_time(log: Log) -> None:
    closed = {p.id: p.closed_stages for p in build(log.config[0] / "acme", log.config[1])[0].bundle.org.pipelines}
    empty = state_at(log.db, "acme", datetime(2000, 1, 1, tzinfo=UTC))
    assert (empty.loads, empty.calendar, empty.last_assigned) == ({}, [], {})
    at_mid = state_at(log.db, "acme", log.mid, closed_stages=closed)
    at_end = state_at(log.db, "acme", log.end, closed_stages=closed)
    assert state_at(log.db, "acme", log.end).loads == at_end.loads  # closed stages inferred from closed intakes
    mid = log.mid.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # loads: at the end, what is open now; at mid, also the intake closed after mid, and none of the later ones
    assert at_end.loads == dict(rows(log.db, "SELECT assignee, count(*) FROM intakes WHERE org = 'acme' AND "
                                             "closed = 0 AND assignee IS NOT NULL GROUP BY assignee"))
    assert at_mid.loads == dict(rows(log.db, "SELECT assignee, count(*) FROM intakes WHERE org = 'acme' AND "
                                             "(closed = 0 OR id = ?) AND assignee IS NOT NULL AND created_at < ? "
                                             "GROUP BY assignee", log.closed_intake, mid))
    [(assignee,)] = rows(log.db, "SELECT assignee FROM intakes WHERE id = ?", log.closed_intake)
    assert at_mid.loads[assignee] >= 1
    assert at_end.loads != at_mid.loads
    # when each user was last given an intake, as of then
    assert at_end.last_assigned == {u: datetime.fromisoformat(t.replace("Z", "+00:00")) for u, t in rows(
        log.db, "SELECT assignee, max(assigned_at) FROM intakes WHERE org = 'acme' AND assignee IS NOT NULL "
                "GROUP BY assignee")}
    assert at_mid.last_assigned and all(t < log.mid for t in at_mid.last_assigned.values())
    # the booking was on u-sam's calendar at mid, and is gone (cancelled) at the end
    day = (datetime(2031, 3, 11, tzinfo=UTC), datetime(2031, 3, 12, tzinfo=UTC))
    assert [b.id for b in at_mid.busy("u-sam", *day)] == [log.cancelled_event]
    assert at_end.busy("u-sam", *day) == []
    confirmed_before_mid = {r[0] for r in rows(log.db, "SELECT id FROM calendar_events WHERE created_at < ? AND "
                                                       "status = 'confirmed'", mid)}
    assert {b.id for b in at_mid.calendar} == confirmed_before_mid | {log.cancelled_event}
    assert log.cancelled_event not in {b.id for b in at_end.calendar}
