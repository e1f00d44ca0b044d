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
from datetime import datetime
from typing import Any

import asyncpg

from adapters import store_planning as planning
from adapters.pg_base import PGBase, arg
from adapters.pg_intakes import lock
from adapters.store_common import _iso
from adapters.store_planning import FEED_SECRET_KEY, CalendarEvent, CalendarFlows, _event
from engine.models import Event
from engine.ports import Busy


class PGCalendarTables(CalendarFlows, PGBase):
    """Calendar events of hosts (mixed into `PGStore`). Bookings, moves and cancellations are `CalendarFlows`';
    here is their SQL, with the host's lock and the event's row lock."""

    async def _cal_lock_host(self, db: asyncpg.Connection, org: str, host: str) -> None:
        await lock(db, "calendar", org, host)

    async def _cal_by_action(self, db: asyncpg.Connection, action_key: str) -> CalendarEvent | None:
        row = await db.fetchrow("SELECT * FROM calendar_events WHERE action_key = $1", action_key)
        return _event(row) if row is not None else None

    async def _cal_for_update(self, db: asyncpg.Connection, org: str, event_id: str) -> CalendarEvent | None:
        row = await db.fetchrow("SELECT * FROM calendar_events WHERE org = $1 AND id = $2 FOR UPDATE", org, event_id)
        return _event(row) if row is not None else None

    async def _cal_host_events(self, db: asyncpg.Connection, org: str, host: str, since: datetime,
                               until: datetime, exclude: str | None) -> list[Busy]:
        """The caller holds the host's lock."""
        rows = await db.fetch(
            "SELECT * FROM calendar_events WHERE org = $1 AND host = $2 AND status = 'confirmed' "
            "AND start_at < $3 AND end_at > $4 AND id != $5 ORDER BY start_at",
            org, host, _iso(until), _iso(since), exclude or "")
        return [_event(r).busy() for r in rows]

    async def _cal_insert(self, db: asyncpg.Connection, event: CalendarEvent, action_key: str, stamp: str) -> None:
        await db.execute(
            "INSERT INTO calendar_events (org, id, host, title, start_at, end_at, attendees, status, sequence, "
            "decision_id, action_key, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, 'confirmed', 0, $8, $9, $10, $10)",
            event.org, event.id, event.host, event.title, _iso(event.start), _iso(event.end),
            json.dumps(event.attendees), event.decision_id, action_key, stamp)

    async def _cal_write_times(self, db: asyncpg.Connection, event: CalendarEvent, stamp: str) -> None:
        await db.execute(
            "UPDATE calendar_events SET start_at = $1, end_at = $2, sequence = $3, updated_at = $4 "
            "WHERE org = $5 AND id = $6", _iso(event.start), _iso(event.end), event.sequence, stamp, event.org,
            event.id)

    async def _cal_write_cancelled(self, db: asyncpg.Connection, event: CalendarEvent, stamp: str) -> None:
        await db.execute(
            "UPDATE calendar_events SET status = 'cancelled', sequence = $1, updated_at = $2 "
            "WHERE org = $3 AND id = $4", event.sequence, stamp, event.org, event.id)

    async def _cal_add_timer(self, db: asyncpg.Connection, envelope: Event, due: datetime) -> None:
        await db.execute("INSERT INTO timers (org, id, due_at, envelope) VALUES ($1, $2, $3, $4) "
                         "ON CONFLICT DO NOTHING", envelope.org, envelope.id, _iso(due), envelope.model_dump_json())

    async def _cal_drop_reminders(self, db: asyncpg.Connection, org: str, event_id: str) -> None:
        """Delete the unfired reminder timers of an event (fired ones stay: they are history)."""
        await db.execute("DELETE FROM timers WHERE org = $1 AND id LIKE $2 ESCAPE '\\' AND fired_at IS NULL",
                         org, planning.reminder_pattern(event_id))

    async def _cal_applied(self, db: asyncpg.Connection, action_key: str) -> bool:
        return bool(await db.fetchval("SELECT true FROM calendar_changes WHERE action_key = $1", action_key))

    async def _cal_record_change(self, db: asyncpg.Connection, action_key: str, org: str, event_id: str,
                                 outcome: str, at: str) -> None:
        await db.execute("INSERT INTO calendar_changes (action_key, org, event_id, outcome, at) "
                         "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", action_key, org, event_id, outcome, at)

    async def get_calendar_event(self, org: str, event_id: str) -> CalendarEvent | None:
        """As `CalendarTables.get_calendar_event`."""
        async with self._read() as db:
            row = await db.fetchrow("SELECT * FROM calendar_events WHERE org = $1 AND id = $2", org, event_id)
        return _event(row) if row is not None else None

    async def list_calendar_events(self, org: str, host: str | None = None, since: datetime | None = None,
                                   until: datetime | None = None,
                                   include_cancelled: bool = False) -> list[CalendarEvent]:
        """As `CalendarTables.list_calendar_events`."""
        where, args = planning.calendar_filters(arg, org, host, since, until, include_cancelled)
        async with self._read() as db:
            rows = await db.fetch(
                f"SELECT * FROM calendar_events WHERE {' AND '.join(where)} ORDER BY start_at, id", *args)
        return [_event(r) for r in rows]

    async def calendar_reminders(self, org: str, event_id: str) -> list[dict[str, Any]]:
        """As `CalendarTables.calendar_reminders`."""
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT id, due_at, fired_at, envelope::jsonb #> '{data,minutes_before}' AS minutes FROM timers "
                "WHERE org = $1 AND envelope::jsonb #>> '{data,event_id}' = $2 "
                "AND envelope::jsonb ->> 'type' = 'reminder:due' ORDER BY due_at, id", org, event_id)
        return [planning.reminder_row(r, json.loads(r["minutes"]) if r["minutes"] is not None else None) for r in rows]

    async def feed_secret(self) -> bytes:
        """As `CalendarTables.feed_secret`."""
        async with self._read() as db:
            value = await db.fetchval("SELECT value FROM settings WHERE key = $1", FEED_SECRET_KEY)
        if value is not None:
            return bytes.fromhex(value)
        async with self._write() as db:  # another task or process may have made it meanwhile: theirs wins
            await db.execute("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                             FEED_SECRET_KEY, secrets.token_hex(32))
            value = await db.fetchval("SELECT value FROM settings WHERE key = $1", FEED_SECRET_KEY)
        return bytes.fromhex(value)
