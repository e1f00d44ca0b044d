"""SCHEDULE events from the policy's cron schedules: fire times in local time across DST, deterministic
ids, windows that never lose a fire (server/scheduler.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.config import Schedule, Source
from engine.loader import OrgBundle, load_org
from engine.models import Event
from engine.rules import CompiledRules, compile_rules
from server.scheduler import CronScheduler, due_events, fire_times

ROOT = Path(__file__).resolve().parents[2]
NY = ZoneInfo("America/New_York")
WEEKDAYS_8AM = {"id": "digest", "cron": "0 8 * * mon-fri", "type": "schedule:daily_digest", "data": {"kind": "daily"}}


@pytest.fixture(scope="module")
def acme_bundle() -> OrgBundle:
    """The example org as shipped (time zone America/New_York)."""
    return load_org(ROOT / "rulesets" / "acme", ROOT / "policies")


CompiledFactory = Callable[..., CompiledRules]


@pytest.fixture
def compiled(acme_bundle: OrgBundle) -> CompiledFactory:
    """acme compiled (without the engine) with the given schedules in its policy."""

    def make(*schedules: dict[str, Any], org: str = "acme") -> CompiledRules:
        policy = acme_bundle.policy.model_copy(
            update={"schedules": [Schedule.model_validate(s) for s in schedules]})
        org_config = acme_bundle.org.model_copy(update={"org": org})
        result = compile_rules(dataclasses.replace(acme_bundle, policy=policy, org=org_config), load_engine=False)
        assert isinstance(result, CompiledRules), result
        return result

    return make


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


# --------------------------------------------------------------------------- fire times

def test_weekday_8am_stays_8am_local_across_the_spring_dst_change(compiled: CompiledFactory) -> None:
    # 2026-03-08 (a Sunday) New York moves from EST (-5) to EDT (-4)
    events = due_events({"acme": compiled(WEEKDAYS_8AM)}, utc(2026, 3, 5), utc(2026, 3, 12, 12))
    assert [e.id for e in events] == [
        "sched_digest_20260305T130000Z", "sched_digest_20260306T130000Z",  # Thu, Fri: 08:00 EST
        "sched_digest_20260309T120000Z", "sched_digest_20260310T120000Z",  # Mon, Tue: 08:00 EDT
        "sched_digest_20260311T120000Z", "sched_digest_20260312T120000Z",  # until is inclusive
    ]
    assert {e.occurred_at.astimezone(NY).strftime("%a %H:%M") for e in events if e.occurred_at} == {
        "Thu 08:00", "Fri 08:00", "Mon 08:00", "Tue 08:00", "Wed 08:00"}
    assert events[0].data["fired_at"] == "2026-03-05T08:00:00-05:00"
    assert events[-1].data["fired_at"] == "2026-03-12T08:00:00-04:00"


def test_weekday_8am_stays_8am_local_across_the_autumn_dst_change(compiled: CompiledFactory) -> None:
    events = due_events({"acme": compiled(WEEKDAYS_8AM)}, utc(2026, 10, 29), utc(2026, 11, 3))
    assert [e.data["fired_at"] for e in events] == [
        "2026-10-29T08:00:00-04:00", "2026-10-30T08:00:00-04:00",
        "2026-11-02T08:00:00-05:00"]


def test_window_is_open_at_the_start_and_closed_at_the_end(compiled: CompiledFactory) -> None:
    c = {"acme": compiled(WEEKDAYS_8AM)}
    at = utc(2026, 3, 9, 12)  # Mon 08:00 EDT
    assert [e.occurred_at for e in due_events(c, at - timedelta(minutes=1), at)] == [at]
    assert due_events(c, at, at + timedelta(minutes=1)) == []
    assert due_events(c, at, at) == []


@pytest.mark.parametrize(("cron", "since", "until", "expected"), [
    # 02:30 does not exist on 2026-03-08: it fires once, an hour later (03:30 EDT)
    ("30 2 * * *", utc(2026, 3, 8, 5), utc(2026, 3, 8, 9), ["2026-03-08T03:30:00-04:00"]),
    # 01:30 happens twice on 2026-11-01: a fixed hour fires once, the first time
    ("30 1 * * *", utc(2026, 11, 1, 4), utc(2026, 11, 1, 8), ["2026-11-01T01:30:00-04:00"]),
    # a wildcard hour fires in every real hour: both 01:30s, and nothing for the skipped 02:30
    ("30 * * * *", utc(2026, 11, 1, 5), utc(2026, 11, 1, 7, 30),
     ["2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00", "2026-11-01T02:30:00-05:00"]),
    ("30 * * * *", utc(2026, 3, 8, 6), utc(2026, 3, 8, 8),
     ["2026-03-08T01:30:00-05:00", "2026-03-08T03:30:00-04:00"]),
])
def test_skipped_and_repeated_local_times(cron: str, since: datetime, until: datetime, expected: list[str]) -> None:
    times = fire_times(Schedule(id="s", cron=cron), NY, since, until)
    assert [t.isoformat() for t in times] == expected


def test_a_schedule_may_name_its_own_time_zone(compiled: CompiledFactory) -> None:
    london = {**WEEKDAYS_8AM, "timezone": "Europe/London"}
    events = due_events({"acme": compiled(london)}, utc(2026, 6, 1), utc(2026, 6, 2))  # a Monday, BST (+1)
    assert [e.id for e in events] == ["sched_digest_20260601T070000Z"]
    assert events[0].data["fired_at"] == "2026-06-01T08:00:00+01:00"


def test_the_event(compiled: CompiledFactory) -> None:
    [event] = due_events({"acme": compiled(WEEKDAYS_8AM)}, utc(2026, 6, 1), utc(2026, 6, 2))
    assert event == Event(id="sched_digest_20260601T120000Z", org="acme", source=Source.SCHEDULE,
                          type="schedule:daily_digest",
                          data={"kind": "daily", "schedule": "digest", "fired_at": "2026-06-01T08:00:00-04:00"},
                          occurred_at=datetime(2026, 6, 1, 8, tzinfo=NY))
    [tick] = due_events({"acme": compiled({"id": "t", "cron": "0 12 * * *"})}, utc(2026, 6, 1), utc(2026, 6, 2))
    assert tick.type == "schedule:tick" and tick.data == {"schedule": "t", "fired_at": "2026-06-01T12:00:00-04:00"}


def test_ids_are_deterministic_and_overlapping_windows_agree(compiled: CompiledFactory) -> None:
    every_20 = {"id": "often", "cron": "*/20 * * * *"}
    orgs = {"acme": compiled(every_20, WEEKDAYS_8AM), "beta": compiled(every_20, org="beta")}
    first = due_events(orgs, utc(2026, 6, 1, 11), utc(2026, 6, 1, 13))
    again = due_events(orgs, utc(2026, 6, 1, 11), utc(2026, 6, 1, 13))
    overlap = due_events(orgs, utc(2026, 6, 1, 12), utc(2026, 6, 1, 14))
    assert first == again
    shared = {(e.org, e.id) for e in first} & {(e.org, e.id) for e in overlap}
    # the digest at 12:00Z (08:00 EDT) is in `first` only: `overlap` is open at its start, 12:00
    assert shared == {(org, f"sched_often_20260601T{h}Z") for org in ("acme", "beta")
                      for h in ("122000", "124000", "130000")}
    assert [e for e in first if (e.org, e.id) in shared] == [e for e in overlap if (e.org, e.id) in shared]
    # oldest first, the same id in two orgs is two events (the inbox keys by org and id)
    assert [e.occurred_at for e in first] == sorted(e.occurred_at for e in first if e.occurred_at)
    assert len({e.id for e in first}) < len(first)


def test_a_tiny_cron_over_a_long_window_keeps_only_the_latest_fires(
        compiled: CompiledFactory, caplog: pytest.LogCaptureFixture) -> None:
    until = utc(2026, 6, 30)
    events = due_events({"acme": compiled({"id": "minutely", "cron": "* * * * *"})}, utc(2026, 6, 1), until)
    assert len(events) == 1000
    assert events[-1].occurred_at == until and events[0].occurred_at == until - timedelta(minutes=999)
    assert "fires more than 1000 times" in caplog.text


def test_naive_datetimes_are_refused(compiled: CompiledFactory) -> None:
    with pytest.raises(ValueError, match="has no UTC offset"):
        due_events({"acme": compiled(WEEKDAYS_8AM)}, datetime(2026, 6, 1), utc(2026, 6, 2))


# --------------------------------------------------------------------------- the scheduler

class Inbox:
    """Collects emitted events, keyed like the real inbox; fails while `down` is set."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], Event] = {}
        self.calls = 0
        self.down = False

    async def emit(self, event: Event) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("inbox unavailable")
        self.events.setdefault((event.org, event.id), event)


def test_the_constructor_fails_fast() -> None:
    with pytest.raises(ValueError, match="interval must be positive, got 0"):
        CronScheduler(dict, Inbox().emit, interval=0)
    with pytest.raises(ValueError, match="catch_up must not be negative"):
        CronScheduler(dict, Inbox().emit, catch_up=timedelta(minutes=-1))


async def test_first_window_catches_up_then_windows_follow_on(compiled: CompiledFactory) -> None:
    orgs = {"acme": compiled({"id": "q", "cron": "*/15 * * * *"})}
    clock, inbox = Clock(utc(2026, 6, 1, 12, 5)), Inbox()
    scheduler = CronScheduler(lambda: orgs, inbox.emit, catch_up=timedelta(minutes=30), clock=clock)

    first = await scheduler.tick()  # (11:35, 12:05]
    assert [e.id for e in first] == ["sched_q_20260601T114500Z", "sched_q_20260601T120000Z"]
    assert await scheduler.tick() == []  # no time passed
    clock.advance(minutes=10)  # (12:05, 12:15]
    assert [e.id for e in await scheduler.tick()] == ["sched_q_20260601T121500Z"]
    clock.advance(seconds=15)
    assert await scheduler.tick() == []
    assert len(inbox.events) == inbox.calls == 3  # nothing emitted twice


async def test_an_emit_failure_is_retried_next_tick_and_nothing_is_lost(
        compiled: CompiledFactory, caplog: pytest.LogCaptureFixture) -> None:
    orgs = {"acme": compiled({"id": "q", "cron": "*/15 * * * *"})}
    clock, inbox = Clock(utc(2026, 6, 1, 12, 1)), Inbox()
    scheduler = CronScheduler(lambda: orgs, inbox.emit, catch_up=timedelta(minutes=20), clock=clock)
    await scheduler.tick()  # 11:45, 12:00
    inbox.down = True
    for _ in range(3):  # 12:15 and 12:30 come due while the inbox is down
        clock.advance(minutes=10)
        assert await scheduler.tick() == []
    assert "could not emit sched_q_20260601T121500Z for org 'acme'; it is retried next tick" in caplog.text
    assert caplog.records[-1].levelno == logging.ERROR and caplog.records[-1].exc_info
    inbox.down = False
    clock.advance(minutes=10)  # 12:41
    assert [e.id for e in await scheduler.tick()] == ["sched_q_20260601T121500Z", "sched_q_20260601T123000Z"]
    assert sorted(i for _, i in inbox.events) == [f"sched_q_20260601T{t}00Z" for t in ("1145", "1200", "1215", "1230")]


async def test_a_failure_after_some_fires_resumes_at_the_failed_one(compiled: CompiledFactory) -> None:
    orgs = {"acme": compiled({"id": "q", "cron": "*/15 * * * *"})}
    clock, emitted = Clock(utc(2026, 6, 1, 13)), []

    async def flaky(event: Event) -> None:
        if event.id.endswith("T120000Z") and not emitted.count(event.id):
            emitted.append(event.id)
            raise ConnectionError("once")
        emitted.append(event.id)

    scheduler = CronScheduler(lambda: orgs, flaky, catch_up=timedelta(hours=1, minutes=20), clock=clock)
    first = await scheduler.tick()  # 11:45 ok, 12:00 fails, 12:15 … 13:00 ok
    assert len(first) == 5
    clock.advance(seconds=15)
    # the window reopens at 12:00: 12:00 is retried; later fires are emitted again (the inbox drops them by id)
    assert [e.id[-7:-1] for e in await scheduler.tick()] == ["120000", "121500", "123000", "124500", "130000"]
    clock.advance(seconds=15)
    assert await scheduler.tick() == []


async def test_one_failing_org_does_not_hold_the_others_back(compiled: CompiledFactory) -> None:
    q = {"id": "q", "cron": "*/15 * * * *"}
    orgs = {"acme": compiled(q), "beta": compiled(q, org="beta")}
    clock, inbox = Clock(utc(2026, 6, 1, 12, 1)), Inbox()

    async def emit(event: Event) -> None:
        if event.org == "acme":
            raise ConnectionError("acme's inbox is down")
        await inbox.emit(event)

    scheduler = CronScheduler(lambda: orgs, emit, catch_up=timedelta(minutes=5), clock=clock)
    assert [e.org for e in await scheduler.tick()] == ["beta"]
    clock.advance(minutes=15)
    assert [e.id for e in await scheduler.tick()] == ["sched_q_20260601T121500Z"]  # beta: only the new one
    assert scheduler.window("acme") == utc(2026, 6, 1, 12) - timedelta(microseconds=1)  # acme waits at 12:00


async def test_an_org_appearing_later_starts_at_the_last_tick_and_the_clock_going_back_waits(
        compiled: CompiledFactory) -> None:
    q = {"id": "q", "cron": "*/15 * * * *"}
    orgs = {"acme": compiled(q)}
    clock, inbox = Clock(utc(2026, 6, 1, 12, 1)), Inbox()
    scheduler = CronScheduler(lambda: orgs, inbox.emit, catch_up=timedelta(hours=1), clock=clock)
    assert len(await scheduler.tick()) == 4
    orgs["beta"] = compiled(q, org="beta")
    clock.advance(minutes=15)
    assert [(e.org, e.id[-7:-1]) for e in await scheduler.tick()] == [("acme", "121500"), ("beta", "121500")]
    clock.advance(minutes=-30)  # e.g. an NTP step
    assert await scheduler.tick() == []
    clock.advance(minutes=45)  # 12:31
    assert [e.id[-7:-1] for e in await scheduler.tick()] == ["123000", "123000"]
    assert len(inbox.events) == inbox.calls


async def test_run_ticks_until_cancelled_and_survives_a_failing_tick(
        compiled: CompiledFactory, caplog: pytest.LogCaptureFixture) -> None:
    orgs = {"acme": compiled({"id": "m", "cron": "* * * * *"})}
    clock, inbox = Clock(utc(2026, 6, 1, 12, 0, 30)), Inbox()
    calls = 0

    def source() -> dict[str, CompiledRules]:
        nonlocal calls
        calls += 1
        clock.advance(minutes=1)
        if calls == 2:
            raise RuntimeError("registry hiccup")
        return orgs

    five = asyncio.Event()

    async def emit(event: Event) -> None:
        await inbox.emit(event)
        if len(inbox.events) >= 5:
            five.set()

    scheduler = CronScheduler(source, emit, interval=0.005, catch_up=timedelta(0), clock=clock)
    task = asyncio.create_task(scheduler.run())
    async with asyncio.timeout(2):
        await five.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert "scheduler tick failed" in caplog.text
    ids = sorted(i for _, i in inbox.events)
    assert ids == [f"sched_m_20260601T12{m:02d}00Z" for m in range(1, len(ids) + 1)]  # none lost, none twice
