"""The calendar tables on PostgreSQL — the same methods and results as `adapters.sqlite_calendar.CalendarTables`.

SQLite checks a slot at commit time because it lets one writer in at a time. Here bookings run in parallel,
so every write to a host's calendar first takes a transaction-scoped advisory lock on (org, host): the conflict
check and the write that follows it are then atomic with respect to every other booking or move on that host,
in any process, and two bookings can never both take a slot. An update or cancellation also locks the event's
row (before the host: always the same order, so two writers never wait for each other in a cycle).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from adapters.pg_base import PGBase, arg
from adapters.pg_intakes import lock
from adapters.sqlite_base import _bound, _iso, _now, _parse_iso
from adapters.sqlite_calendar import (
    FEED_SECRET_KEY,
    REPLAN_WINDOW,
    CalendarEvent,
    Change,
    Replan,
    _event,
    _overlaps,
    event_id_for,
)
from engine.config import Source
from engine.models import Event
from engine.ports import Busy


async def _host_events(db: asyncpg.Connection, org: str, host: str, since: datetime, until: datetime,
                       exclude: str | None = None) -> list[Busy]:
    rows = await db.fetch(
        "SELECT * FROM calendar_events WHERE org = $1 AND host = $2 AND status = 'confirmed' "
        "AND start_at < $3 AND end_at > $4 AND id != $5 ORDER BY start_at",
        org, host, _iso(until), _iso(since), exclude or "")
    return [_event(r).busy() for r in rows]


async def _place(db: asyncpg.Connection, org: str, host: str, start: datetime, end: datetime,
                 buffer_minutes: int, replan: Replan, exclude: str | None) -> tuple[datetime, datetime, Change]:
    """The slot to write: the requested one when it is free (with the buffer), else `replan`'s. The caller holds
    the host's lock."""
    pad = timedelta(minutes=buffer_minutes)
    near = await _host_events(db, org, host, start - pad - timedelta(days=1), end + pad + timedelta(days=1), exclude)
    if not _overlaps(start, end, near, buffer_minutes):
        return start, end, Change("booked")
    busy = await _host_events(db, org, host, min(start, datetime.now(UTC)) - timedelta(days=1),
                              start + REPLAN_WINDOW, exclude)
    got = replan(busy)
    if isinstance(got, str):
        return start, end, Change("conflict", got)
    new_start, new_end, reason = got
    if _overlaps(new_start, new_end, busy, buffer_minutes):  # a replan that ignored the calendar it was given
        return start, end, Change("conflict", f"the slot found instead ({new_start.isoformat()}) is taken too")
    return new_start, new_end, Change("moved", reason)


async def _add_reminders(db: asyncpg.Connection, event: CalendarEvent, reminders: Sequence[int],
                         now: datetime) -> None:
    """`reminder:due` timers `minutes` before the start, for those still in the future."""
    for minutes in dict.fromkeys(reminders):
        due = event.start - timedelta(minutes=minutes)
        if due <= now:
            continue
        envelope = Event(
            id=f"rem_{event.id}_{event.sequence}_{minutes}", org=event.org, source=Source.SCHEDULE,
            type="reminder:due", occurred_at=due,
            data={"event_id": event.id, "host": event.host, "title": event.title, "start": event.start.isoformat(),
                  "end": event.end.isoformat(), "attendees": event.attendees, "minutes_before": minutes})
        await db.execute("INSERT INTO timers (org, id, due_at, envelope) VALUES ($1, $2, $3, $4) "
                         "ON CONFLICT DO NOTHING", event.org, envelope.id, _iso(due), envelope.model_dump_json())


async def _drop_reminders(db: asyncpg.Connection, org: str, event_id: str) -> None:
    """Delete the unfired reminder timers of an event (fired ones stay: they are history)."""
    await db.execute("DELETE FROM timers WHERE org = $1 AND id LIKE $2 ESCAPE '\\' AND fired_at IS NULL",
                     org, "rem\\_" + event_id.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "\\_%")


async def _applied(db: asyncpg.Connection, action_key: str) -> bool:
    return bool(await db.fetchval("SELECT true FROM calendar_changes WHERE action_key = $1", action_key))


async def _record_change(db: asyncpg.Connection, action_key: str, org: str, event_id: str, outcome: str,
                         at: str) -> None:
    await db.execute("INSERT INTO calendar_changes (action_key, org, event_id, outcome, at) "
                     "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", action_key, org, event_id, outcome, at)


class PGCalendarTables(PGBase):
    """Calendar events of hosts (mixed into `PGStore`)."""

    async def book_event(self, org: str, *, host: str, title: str, start: datetime, end: datetime,
                         attendees: list[dict[str, Any]], decision_id: str | None, action_key: str,
                         buffer_minutes: int, replan: Replan, reminders: Sequence[int] = (),
                         now: datetime | None = None) -> tuple[CalendarEvent | None, Change]:
        """Book [start, end) on `host`'s calendar in ONE transaction: the slot (with `buffer_minutes` free on
        each side) is checked against the host's confirmed events as they are now, under the host's lock; when
        taken, `replan(busy)` picks another slot ("moved") or says why there is none ("conflict": nothing is
        written, no event). Reminder timers are written with the event. Idempotent under `action_key`: a second
        run returns the event the first one booked (outcome "booked", or "moved" when it is not at `start`)."""
        _bound(start, "start"), _bound(end, "end")
        now = now or datetime.now(UTC)
        async with self._write() as db:
            await lock(db, "calendar", org, host)
            done = await db.fetchrow("SELECT * FROM calendar_events WHERE action_key = $1", action_key)
            if done is not None:
                event = _event(done)
                same = event.start == start and event.end == end
                return event, Change("booked") if same else Change("moved", "booked earlier under this action key")
            slot_start, slot_end, change = await _place(db, org, host, start, end, buffer_minutes, replan, None)
            if change.outcome == "conflict":
                return None, change
            stamp = _now()
            event = CalendarEvent(org=org, id=event_id_for(action_key), host=host, title=title,
                                  start=slot_start.astimezone(UTC), end=slot_end.astimezone(UTC),
                                  attendees=attendees, decision_id=decision_id,
                                  created_at=_parse_iso(stamp), updated_at=_parse_iso(stamp))
            await db.execute(
                "INSERT INTO calendar_events (org, id, host, title, start_at, end_at, attendees, status, sequence, "
                "decision_id, action_key, created_at, updated_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, 'confirmed', 0, $8, $9, $10, $10)",
                org, event.id, host, title, _iso(slot_start), _iso(slot_end), json.dumps(attendees), decision_id,
                action_key, stamp)
            await _add_reminders(db, event, reminders, now)
        self._state_changed(org)
        return event, change

    async def update_event(self, org: str, event_id: str, *, start: datetime, end: datetime, action_key: str,
                           buffer_minutes: int, replan: Replan, reminders: Sequence[int] = (),
                           now: datetime | None = None) -> tuple[CalendarEvent | None, Change]:
        """Move an event to [start, end) in ONE transaction, checked against the host's *other* events like
        `book_event` ("updated", "moved" by `replan`, or "conflict" with nothing changed). The sequence goes up
        by one, unfired reminders of the old time are deleted and new ones written. Moving an event to where it
        already is changes nothing ("unchanged"), which makes a re-run of the same action a no-op. (None,
        conflict) when the event does not exist or is cancelled. The change is recorded under `action_key`: a
        replay of an action already applied changes nothing, even after a later change to the event."""
        _bound(start, "start"), _bound(end, "end")
        now = now or datetime.now(UTC)
        async with self._write() as db:
            row = await db.fetchrow("SELECT * FROM calendar_events WHERE org = $1 AND id = $2 FOR UPDATE", org, event_id)
            if row is None:
                return None, Change("conflict", f"there is no calendar event {event_id!r} in org {org!r}")
            event = _event(row)
            if await _applied(db, action_key):
                return event, Change("unchanged", "this change was applied before")
            if event.status != "confirmed":
                return event, Change("conflict", f"calendar event {event_id!r} is {event.status}; it cannot be moved")
            if event.start == start and event.end == end:
                return event, Change("unchanged")
            await lock(db, "calendar", org, event.host)
            slot_start, slot_end, change = await _place(db, org, event.host, start, end, buffer_minutes, replan,
                                                        event_id)
            if change.outcome == "conflict":
                return event, change
            if event.start == slot_start and event.end == slot_end:
                # The replanned slot is where the event already is (a re-run after the first run moved it).
                return event, Change("unchanged", change.reason)
            event.start, event.end = slot_start.astimezone(UTC), slot_end.astimezone(UTC)
            event.sequence += 1
            stamp = _now()
            event.updated_at = _parse_iso(stamp)
            await db.execute(
                "UPDATE calendar_events SET start_at = $1, end_at = $2, sequence = $3, updated_at = $4 "
                "WHERE org = $5 AND id = $6", _iso(slot_start), _iso(slot_end), event.sequence, stamp, org, event_id)
            await _drop_reminders(db, org, event_id)
            await _add_reminders(db, event, reminders, now)
            outcome = "updated" if change.outcome == "booked" else "moved"
            await _record_change(db, action_key, org, event_id, outcome, stamp)
        self._state_changed(org)
        return event, Change(outcome, change.reason)

    async def cancel_event(self, org: str, event_id: str, action_key: str) -> tuple[CalendarEvent | None, Change]:
        """Cancel an event: status cancelled, sequence + 1, unfired reminders deleted, in one transaction.
        Cancelling a cancelled event changes nothing ("unchanged"), so a re-run is a no-op. None when there is
        no such event."""
        async with self._write() as db:
            row = await db.fetchrow("SELECT * FROM calendar_events WHERE org = $1 AND id = $2 FOR UPDATE", org, event_id)
            if row is None:
                return None, Change("conflict", f"there is no calendar event {event_id!r} in org {org!r}")
            event = _event(row)
            if event.status == "cancelled" or await _applied(db, action_key):
                return event, Change("unchanged")
            stamp = _now()
            event.status, event.sequence, event.updated_at = "cancelled", event.sequence + 1, _parse_iso(stamp)
            await db.execute(
                "UPDATE calendar_events SET status = 'cancelled', sequence = $1, updated_at = $2 "
                "WHERE org = $3 AND id = $4", event.sequence, stamp, org, event_id)
            await _drop_reminders(db, org, event_id)
            await _record_change(db, action_key, org, event_id, "cancelled", stamp)
        self._state_changed(org)
        return event, Change("cancelled")

    async def get_calendar_event(self, org: str, event_id: str) -> CalendarEvent | None:
        """One event of `org` (None if absent or another org's)."""
        async with self._read() as db:
            row = await db.fetchrow("SELECT * FROM calendar_events WHERE org = $1 AND id = $2", org, event_id)
        return _event(row) if row is not None else None

    async def list_calendar_events(self, org: str, host: str | None = None, since: datetime | None = None,
                                   until: datetime | None = None,
                                   include_cancelled: bool = False) -> list[CalendarEvent]:
        """`org`'s events overlapping [since, until) (either bound optional), of one host or all, by start."""
        args: list[Any] = []
        where = [f"org = {arg(args, org)}"]
        if host is not None:
            where.append(f"host = {arg(args, host)}")
        if since is not None:
            where.append(f"end_at > {arg(args, _bound(since, 'since'))}")
        if until is not None:
            where.append(f"start_at < {arg(args, _bound(until, 'until'))}")
        if not include_cancelled:
            where.append("status = 'confirmed'")
        async with self._read() as db:
            rows = await db.fetch(
                f"SELECT * FROM calendar_events WHERE {' AND '.join(where)} ORDER BY start_at, id", *args)
        return [_event(r) for r in rows]

    async def calendar_reminders(self, org: str, event_id: str) -> list[dict[str, Any]]:
        """The reminder timers of an event: `{id, due_at, fired_at, minutes_before}`, by due time."""
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT id, due_at, fired_at, envelope::jsonb #> '{data,minutes_before}' AS minutes FROM timers "
                "WHERE org = $1 AND envelope::jsonb #>> '{data,event_id}' = $2 "
                "AND envelope::jsonb ->> 'type' = 'reminder:due' ORDER BY due_at, id", org, event_id)
        return [{"id": r["id"], "due_at": _parse_iso(r["due_at"]),
                 "fired_at": _parse_iso(r["fired_at"]) if r["fired_at"] else None,
                 "minutes_before": json.loads(r["minutes"]) if r["minutes"] is not None else None} for r in rows]

    async def feed_secret(self) -> bytes:
        """The key that signs calendar feed URLs: 32 random bytes, made on first use and kept in `settings`."""
        async with self._read() as db:
            value = await db.fetchval("SELECT value FROM settings WHERE key = $1", FEED_SECRET_KEY)
        if value is not None:
            return bytes.fromhex(value)
        async with self._write() as db:  # another task or process may have made it meanwhile: theirs wins
            await db.execute("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                             FEED_SECRET_KEY, secrets.token_hex(32))
            value = await db.fetchval("SELECT value FROM settings WHERE key = $1", FEED_SECRET_KEY)
        return bytes.fromhex(value)
