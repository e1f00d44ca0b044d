"""Calendar events in SQLite and the calendar executor (adapters/sqlite_calendar.py, adapters/calendar.py):
commit-time conflict checks, buffers, idempotent re-runs, reminders, and many bookings racing for one slot."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from adapters.calendar import CalendarManager
from adapters.sqlite_calendar import Change
from adapters.stores import open_store
from engine.config import Scheduling
from engine.loader import OrgBundle, load_org
from engine.ports import ActionFailed, ActionJob

ROOT = Path(__file__).resolve().parents[2]
NY = ZoneInfo("America/New_York")
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=NY)  # a Tuesday
SLOT = datetime(2026, 12, 8, 14, 0, tzinfo=NY)


@pytest.fixture(scope="module")
def acme() -> OrgBundle:
    return load_org(ROOT / "rulesets" / "acme", ROOT / "policies")


@pytest.fixture
async def store(store_url: str):
    s = await open_store(store_url)
    yield s
    await s.close()


def with_buffer(bundle: OrgBundle, minutes: int) -> OrgBundle:
    scheduling = Scheduling(**{**bundle.policy.scheduling.model_dump(), "buffer_minutes": minutes})
    return dataclasses.replace(bundle, policy=bundle.policy.model_copy(update={"scheduling": scheduling}))


def manager(store: Any, bundle: OrgBundle) -> CalendarManager:
    return CalendarManager(store, lambda org: bundle if org == "acme" else None, clock=lambda: NOW)


def job(kind: str, params: dict[str, Any], key: str = "dec_1:0", attempt: int = 1) -> ActionJob:
    return ActionJob(key=key, org="acme", decision_id=key.split(":")[0], index=0, type=kind, params=params,
                     attempt=attempt, decision=None)


def create(start: datetime = SLOT, minutes: int = 30, host: str = "u-sam", key: str = "dec_1:0") -> ActionJob:
    return job("CREATE_EVENT", {
        "host": host, "start": start.isoformat(), "end": (start + timedelta(minutes=minutes)).isoformat(),
        "duration_minutes": minutes, "title": "Intro call", "attendee": {"name": "Ada", "email": "ada@example.com"},
        "reminders": [], "moved": False}, key)


# ---- booking ------------------------------------------------------------------------------------------

async def test_a_booking_is_written_with_its_attendee(store: Any, acme: OrgBundle) -> None:
    result = await manager(store, acme).run(create())
    assert result["status"] == "booked" and result["host"] == "u-sam"
    assert result["start"] == SLOT.isoformat() and result["end"] == (SLOT + timedelta(minutes=30)).isoformat()
    event = await store.get_calendar_event("acme", result["event_id"])
    assert event is not None and event.start == SLOT and event.status == "confirmed" and event.sequence == 0
    assert event.attendees == [{"name": "Ada", "email": "ada@example.com"}] and event.decision_id == "dec_1"
    assert event.to_json()["start"] == SLOT.astimezone(UTC).isoformat()
    assert await store.get_calendar_event("other", result["event_id"]) is None


async def test_a_rerun_of_the_same_action_books_once(store: Any, acme: OrgBundle) -> None:
    cm = manager(store, acme)
    first = await cm.run(create())
    again = await cm.run(dataclasses.replace(create(), attempt=2))
    assert again == first
    assert len(await store.list_calendar_events("acme")) == 1


async def test_a_taken_slot_is_moved_at_commit_time(store: Any, acme: OrgBundle) -> None:
    cm = manager(store, acme)
    await cm.run(create(key="dec_a:0"))
    moved = await cm.run(create(key="dec_b:0"))
    assert moved["status"] == "moved" and moved["moved"] is True
    assert "taken meanwhile" in moved["reason"] and "u-sam is busy 14:00–14:30" in moved["reason"]
    assert moved["start"] == datetime(2026, 12, 8, 13, 30, tzinfo=NY).isoformat()  # nearest free: just before
    # another host's slot is not taken
    lee = await cm.run(create(host="u-lee", key="dec_c:0"))
    assert lee["status"] == "booked"


async def test_buffers_keep_time_free_around_events(store: Any, acme: OrgBundle) -> None:
    cm = manager(store, with_buffer(acme, 15))
    await cm.run(create(key="dec_a:0"))  # 14:00–14:30
    after = await cm.run(create(SLOT + timedelta(minutes=30), key="dec_b:0"))  # would touch it at 14:30
    assert after["status"] == "moved"
    assert "15 minutes are kept free around every event" in after["reason"]
    start = datetime.fromisoformat(after["start"])
    assert start >= SLOT + timedelta(minutes=45) or start + timedelta(minutes=30) <= SLOT - timedelta(minutes=15)
    # without a buffer the adjacent slot is free
    plain = await manager(store, acme).run(create(SLOT + timedelta(minutes=30), host="u-lee", key="dec_c:0"))
    assert plain["status"] == "booked"


async def test_no_free_slot_fails_permanently(store: Any, acme: OrgBundle) -> None:
    def never(busy: list[Any]) -> str:
        return "nothing fits"

    await store.book_event("acme", host="u-sam", title="x", start=SLOT, end=SLOT + timedelta(minutes=30),
                           attendees=[], decision_id=None, action_key="k1", buffer_minutes=0, replan=never)
    event, change = await store.book_event(
        "acme", host="u-sam", title="y", start=SLOT, end=SLOT + timedelta(minutes=30), attendees=[],
        decision_id=None, action_key="k2", buffer_minutes=0, replan=never)
    assert event is None and change == Change("conflict", "nothing fits")
    # through the executor: a slot far in the future whose requested day and the next 30 are full
    cm = manager(store, acme)
    day = datetime(2027, 3, 1, 9, 0, tzinfo=NY)
    for i in range(45):
        d = day + timedelta(days=i)
        await store.book_event("acme", host="u-lee", title="block", start=d, end=d + timedelta(hours=8),
                               attendees=[], decision_id=None, action_key=f"block{i}", buffer_minutes=0,
                               replan=never)
    with pytest.raises(ActionFailed) as err:
        await cm.run(create(day + timedelta(hours=1), host="u-lee", key="dec_full:0"))
    assert err.value.permanent and "no free slot" in str(err.value)


async def test_twenty_concurrent_bookings_of_one_slot(store: Any, acme: OrgBundle) -> None:
    cm = manager(store, with_buffer(acme, 5))
    jobs = [create(key=f"dec_{i:02d}:0") for i in range(20)]
    outcomes = await asyncio.gather(*(cm.run(j) for j in jobs), return_exceptions=True)
    done = [o for o in outcomes if isinstance(o, dict)]
    failed = [o for o in outcomes if not isinstance(o, dict)]
    assert all(isinstance(f, ActionFailed) and f.permanent for f in failed)
    assert [o["status"] for o in done].count("booked") == 1
    events = await store.list_calendar_events("acme", host="u-sam")
    assert len(events) == len(done)
    assert sum(1 for e in events if e.start == SLOT) == 1
    ordered = sorted(events, key=lambda e: e.start)
    for a, b in itertools.pairwise(ordered):
        assert a.end + timedelta(minutes=5) <= b.start, (a, b)  # no two overlap, buffers kept


# ---- reminders ----------------------------------------------------------------------------------------

async def test_reminders_are_timers_that_follow_the_event(store: Any, acme: OrgBundle) -> None:
    cm = manager(store, acme)  # reminders 1440 and 60 minutes before
    booked = await cm.run(create())
    eid = booked["event_id"]
    rems = await store.calendar_reminders("acme", eid)
    assert [(r["minutes_before"], r["due_at"]) for r in rems] == [
        (1440, SLOT - timedelta(days=1)), (60, SLOT - timedelta(hours=1))]
    assert all(r["id"].startswith(f"rem_{eid}_0_") for r in rems)

    new = SLOT + timedelta(days=1, hours=1)
    updated = await cm.run(job("UPDATE_EVENT", {"event_id": eid, "host": "u-sam", "start": new.isoformat(),
                                                "end": (new + timedelta(minutes=30)).isoformat()}, "dec_2:0"))
    assert updated["status"] == "updated" and updated["sequence"] == 1 and updated["start"] == new.isoformat()
    rems = await store.calendar_reminders("acme", eid)
    assert [(r["minutes_before"], r["due_at"]) for r in rems] == [
        (1440, new - timedelta(days=1)), (60, new - timedelta(hours=1))]
    assert all(r["id"].startswith(f"rem_{eid}_1_") for r in rems)

    fired = await store.fire_due_timers(new - timedelta(minutes=30))
    assert [(e.type, e.data["minutes_before"], e.data["event_id"]) for e in fired] == [
        ("reminder:due", 1440, eid), ("reminder:due", 60, eid)]
    assert str(fired[0].source) == "SCHEDULE" and fired[0].data["attendees"] == [{"name": "Ada", "email": "ada@example.com"}]
    assert await store.fire_due_timers(new) == []  # fired exactly once


async def test_past_reminders_are_skipped_and_cancel_removes_the_rest(store: Any, acme: OrgBundle) -> None:
    soon = datetime(2026, 12, 1, 15, 0, tzinfo=NY)  # today: the 24-hour reminder has passed
    cm = manager(store, acme)
    booked = await cm.run(create(soon))
    assert [r["minutes_before"] for r in await store.calendar_reminders("acme", booked["event_id"])] == [60]
    cancelled = await cm.run(job("CANCEL_EVENT", {"event_id": booked["event_id"], "host": "u-sam"}, "dec_3:0"))
    assert cancelled["status"] == "cancelled" and cancelled["sequence"] == 1
    assert await store.calendar_reminders("acme", booked["event_id"]) == []
    again = await cm.run(job("CANCEL_EVENT", {"event_id": booked["event_id"], "host": "u-sam"}, "dec_3:0"))
    assert again["sequence"] == 1 and again.get("unchanged") is True
    assert await store.list_calendar_events("acme") == []
    assert len(await store.list_calendar_events("acme", include_cancelled=True)) == 1


# ---- updates ------------------------------------------------------------------------------------------

async def test_update_checks_the_hosts_other_events(store: Any, acme: OrgBundle) -> None:
    cm = manager(store, acme)
    other = await cm.run(create(SLOT + timedelta(hours=1), key="dec_a:0"))  # 15:00–15:30
    mine = await cm.run(create(key="dec_b:0"))  # 14:00–14:30
    target = SLOT + timedelta(hours=1)
    params = {"event_id": mine["event_id"], "host": "u-sam", "start": target.isoformat(),
              "end": (target + timedelta(minutes=30)).isoformat()}
    moved = await cm.run(job("UPDATE_EVENT", params, "dec_c:0"))
    assert moved["status"] == "updated" and moved["moved"] is True
    assert moved["start"] == datetime(2026, 12, 8, 14, 30, tzinfo=NY).isoformat()  # nearest to 15:00, own slot freed
    assert "u-sam is busy 15:00–15:30" in moved["reason"]
    # a re-run of the same action changes nothing more
    again = await cm.run(job("UPDATE_EVENT", params, "dec_c:0"))
    assert again["start"] == moved["start"] and again["sequence"] == moved["sequence"] == 1
    assert other["event_id"] != mine["event_id"]


async def test_a_replayed_update_after_a_later_one_changes_nothing(store: Any, acme: OrgBundle) -> None:
    cm = manager(store, acme)
    booked = await cm.run(create())
    eid = booked["event_id"]

    def move_to(when: datetime, key: str) -> ActionJob:
        return job("UPDATE_EVENT", {"event_id": eid, "host": "u-sam", "start": when.isoformat(),
                                    "end": (when + timedelta(minutes=30)).isoformat()}, key)

    first, second = SLOT + timedelta(days=1), SLOT + timedelta(days=2)
    await cm.run(move_to(first, "dec_m1:0"))
    await cm.run(move_to(second, "dec_m2:0"))
    # the first action runs again (its runner died after the change, before recording it): the event stays put
    replay = await cm.run(move_to(first, "dec_m1:0"))
    assert replay.get("unchanged") is True and replay["start"] == second.isoformat() and replay["sequence"] == 2
    event = await store.get_calendar_event("acme", eid)
    assert event is not None and event.start == second and event.sequence == 2


async def test_update_and_cancel_of_unknown_events_fail_permanently(store: Any, acme: OrgBundle) -> None:
    cm = manager(store, acme)
    for kind in ("UPDATE_EVENT", "CANCEL_EVENT"):
        with pytest.raises(ActionFailed) as err:
            await cm.run(job(kind, {"event_id": "cev_nope", "host": "u-sam", "start": SLOT.isoformat(),
                                    "end": (SLOT + timedelta(minutes=30)).isoformat()}))
        assert err.value.permanent and "cev_nope" in str(err.value)


async def test_bad_params_and_unknown_orgs(store: Any, acme: OrgBundle) -> None:
    cm = manager(store, acme)
    with pytest.raises(ActionFailed) as err:
        await cm.run(create(host="u-ghost"))
    assert err.value.permanent and "u-ghost" in str(err.value)
    bad = create()
    with pytest.raises(ActionFailed) as err:
        await cm.run(dataclasses.replace(bad, params={**bad.params, "start": "soon"}))
    assert err.value.permanent and "params.start" in str(err.value)
    with pytest.raises(ActionFailed) as err:
        await cm.run(dataclasses.replace(bad, org="globex"))
    assert not err.value.permanent  # the org may be loaded later


async def test_the_feed_secret_is_made_once(store: Any) -> None:
    first = await store.feed_secret()
    assert len(first) == 32 and await store.feed_secret() == first
