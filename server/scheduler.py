"""SCHEDULE events: each org's policy `schedules` (cron) turned into events at their fire times.

Fire times are computed in the schedule's time zone (the org's by default), so `0 8 * * mon-fri`
fires at 08:00 local time on both sides of a DST change. A local time that does not exist that day
(the hour skipped in spring) fires once, an hour later; one that happens twice (the hour repeated in
autumn) fires once, unless the hour field is a wildcard (`*`, `*/2`), which fires in every real hour.

Event ids are deterministic (`sched_<schedule>_<UTC time>`): a restart, an overlapping window or a
second instance emitting the same fire is de-duplicated by the inbox, which keys events by (org, id).
Delivery is therefore at-least-once per fire, and exactly-once after the inbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from engine.config import Schedule, Source
from engine.models import Event, utcnow
from engine.rules import CompiledRules

log = logging.getLogger("astralis.scheduler")

MAX_FIRES = 1000
"""Fires kept per schedule per window: a tiny cron over a long window keeps only its latest fires."""

_EPSILON = timedelta(microseconds=1)  # fire times are whole minutes: this reopens a window just before one


def _aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} {value.isoformat()} has no UTC offset; pass an aware datetime")


def _instants(wall: datetime, tz: ZoneInfo, wildcard_hour: bool) -> list[datetime]:
    """The real instants (UTC) at which a local wall-clock time happens, as cron should fire them."""
    first = wall.replace(tzinfo=tz)
    second = wall.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return [first.astimezone(UTC)]
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall:  # happens twice (autumn)
        return [first.astimezone(UTC), second.astimezone(UTC)] if wildcard_hour else [first.astimezone(UTC)]
    # Does not happen (spring): fold=0 reads it with the offset before the change, i.e. an hour later.
    # A wildcard hour loses nothing by skipping it: it fires in the real hours either side.
    return [] if wildcard_hour else [first.astimezone(UTC)]


def fire_times(schedule: Schedule, tz: ZoneInfo, since: datetime, until: datetime,
               *, limit: int = MAX_FIRES) -> list[datetime]:
    """When `schedule` fires with since < t <= until, oldest first, each in `tz`; at most `limit` (the latest)."""
    _aware("since", since)
    _aware("until", until)
    if until <= since:
        return []
    wildcard_hour = schedule.cron.split()[1].startswith("*")
    # cron reads wall-clock time: walk naive local times backwards (the latest fires first, so the limit
    # keeps the newest) between the walls of the window's ends, then map each to its real instants.
    offsets = [t.astimezone(tz).utcoffset() or timedelta(0) for t in (since, until)]
    lo = since.astimezone(UTC).replace(tzinfo=None) + min(offsets) - timedelta(minutes=1)
    hi = until.astimezone(UTC).replace(tzinfo=None) + max(offsets) + timedelta(minutes=1)
    walls = croniter(schedule.cron, hi)
    found: set[datetime] = set()
    while len(found) <= limit:
        wall = walls.get_prev(datetime)
        if wall < lo:
            break
        found.update(t for t in _instants(wall, tz, wildcard_hour) if since < t <= until)
    times = sorted(found)
    if len(times) > limit:
        log.warning("schedule '%s' fires more than %d times between %s and %s; only the latest %d are kept",
                    schedule.id, limit, since.isoformat(), until.isoformat(), limit)
        times = times[-limit:]
    return [t.astimezone(tz) for t in times]


def schedule_event(org: str, schedule: Schedule, fired_at: datetime) -> Event:
    """The event one fire of a schedule raises; its id depends only on the schedule and the fire time."""
    stamp = fired_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Event(id=f"sched_{schedule.id}_{stamp}", org=org, source=Source.SCHEDULE, type=schedule.type,
                 data={**schedule.data, "schedule": schedule.id, "fired_at": fired_at.isoformat()},
                 occurred_at=fired_at)


def due_events(compiled_by_org: Mapping[str, CompiledRules], since: datetime, until: datetime) -> list[Event]:
    """Every schedule fire with since < t <= until across the orgs' active revisions, oldest first.

    A schedule that cannot be evaluated is logged and skipped; the other schedules still fire.
    """
    _aware("since", since)
    _aware("until", until)
    events: list[Event] = []
    for org, compiled in compiled_by_org.items():
        bundle = compiled.bundle
        for schedule in bundle.policy.schedules:
            try:
                tz = ZoneInfo(schedule.timezone or bundle.org.timezone)
                events.extend(schedule_event(org, schedule, t) for t in fire_times(schedule, tz, since, until))
            except Exception:  # one broken schedule must not silence the others
                log.exception("schedule '%s' of org '%s' could not be evaluated", schedule.id, org,
                              extra={"org": org})
    events.sort(key=lambda e: (e.occurred_at or since, e.org, e.id))
    return events


class CronScheduler:
    """Emits each org's schedule fires as events, window by window, without losing one.

    The first window is (now - catch_up, now]; each later one starts where the org's last one ended.
    When `emit` fails, that org's next window starts again at the failed fire (earlier fires are not
    re-emitted; later ones may be, and the inbox drops them by id). Orgs are independent: one whose
    events cannot be emitted does not hold the others back.
    """

    def __init__(self, orgs: Callable[[], Mapping[str, CompiledRules]], emit: Callable[[Event], Awaitable[object]],
                 *, interval: float = 15.0, catch_up: timedelta = timedelta(hours=1),
                 clock: Callable[[], datetime] = utcnow) -> None:
        if interval <= 0:
            raise ValueError(f"CronScheduler interval must be positive, got {interval} s")
        if catch_up < timedelta(0):
            raise ValueError(f"CronScheduler catch_up must not be negative, got {catch_up}")
        self._orgs = orgs
        self._emit = emit
        self.interval = interval
        self.catch_up = catch_up
        self._clock = clock
        self._last_tick: datetime | None = None
        self._since: dict[str, datetime] = {}  # org -> start of its next window

    def window(self, org: str) -> datetime | None:
        """Where the org's next window starts (None before the first tick)."""
        return self._since.get(org, self._last_tick)

    async def tick(self) -> list[Event]:
        """Emit the fires due since the last tick (or the catch-up period); return those emitted."""
        now = self._clock()
        _aware("the scheduler's clock returned", now)
        start = self._last_tick if self._last_tick is not None else now - self.catch_up
        orgs = self._orgs()
        emitted: list[Event] = []
        since_by_org: dict[str, datetime] = {}
        for org, compiled in orgs.items():
            since = self._since.get(org, start)
            if now <= since:  # the clock went back: wait until it passes this org's window again
                since_by_org[org] = since
                continue
            resume = now
            for event in due_events({org: compiled}, since, now):
                try:
                    await self._emit(event)
                except Exception:
                    log.exception("could not emit %s for org '%s'; it is retried next tick", event.id, org,
                                  extra={"org": org})
                    resume = min(resume, (event.occurred_at or now) - _EPSILON)
                else:
                    log.info("schedule '%s' fired for org '%s' at %s (event %s)", event.data["schedule"], org,
                             event.data["fired_at"], event.id, extra={"org": org})
                    emitted.append(event)
            since_by_org[org] = resume
        self._since = since_by_org  # an org that is gone forgets its window; back, it resumes from the last tick
        self._last_tick = max(now, self._last_tick) if self._last_tick is not None else now
        return emitted

    async def run(self) -> None:
        """Tick every `interval` seconds until cancelled; a failed tick is logged and retried."""
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("scheduler tick failed; retrying in %s s", self.interval)
            await asyncio.sleep(self.interval)
