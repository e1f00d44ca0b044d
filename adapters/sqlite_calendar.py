"""The calendar tables: hosts' events (create, update, cancel with a conflict check at commit time), their
reminder timers, and the secret that signs calendar feed URLs.

A booking is planned from a snapshot of the calendar, so by the time it is written another booking may have
taken the slot. The check is therefore repeated inside the write transaction (`BEGIN IMMEDIATE`: SQLite lets
one writer in at a time, across processes too), and when the slot is taken a `replan` callback — pure, no I/O —
picks another one from the host's events as they are at that moment. Two bookings can never both take a slot.

Reminders are `reminder:due` timers (adapters/sqlite_inbox.py fires them) written in the same transaction as
the event; their ids carry the event's sequence, so a moved event gets fresh timers and the old unfired ones
are deleted with the change.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

import aiosqlite

from adapters.sqlite_base import SQLiteBase, _iso
from adapters.store_common import qmark
from adapters.store_planning import (  # noqa: F401  (re-exported: the calendar's names since the start)
    FEED_SECRET_KEY,
    REPLAN_WINDOW,
    CalendarEvent,
    CalendarFlows,
    Change,
    Outcome,
    Replan,
    _event,
    _overlaps,
    calendar_filters,
    event_id_for,
    reminder_pattern,
    reminder_row,
)
from engine.models import Event
from engine.ports import Busy


class CalendarTables(CalendarFlows, SQLiteBase):
    """Calendar events of hosts (mixed into `SQLiteStore`). Bookings, moves and cancellations are
    `CalendarFlows`'; here is their SQL. `BEGIN IMMEDIATE` lets one writer in at a time, so no host lock is
    needed."""

    async def _cal_by_action(self, db: aiosqlite.Connection, action_key: str) -> CalendarEvent | None:
        rows = list(await db.execute_fetchall("SELECT * FROM calendar_events WHERE action_key = ?", (action_key,)))
        return _event(rows[0]) if rows else None

    async def _cal_for_update(self, db: aiosqlite.Connection, org: str, event_id: str) -> CalendarEvent | None:
        rows = list(await db.execute_fetchall("SELECT * FROM calendar_events WHERE org = ? AND id = ?",
                                              (org, event_id)))
        return _event(rows[0]) if rows else None

    async def _cal_host_events(self, db: aiosqlite.Connection, org: str, host: str, since: datetime,
                               until: datetime, exclude: str | None) -> list[Busy]:
        rows = await db.execute_fetchall(
            "SELECT * FROM calendar_events WHERE org = ? AND host = ? AND status = 'confirmed' "
            "AND start_at < ? AND end_at > ? AND id != ? ORDER BY start_at",
            (org, host, _iso(until), _iso(since), exclude or ""))
        return [_event(r).busy() for r in rows]

    async def _cal_insert(self, db: aiosqlite.Connection, event: CalendarEvent, action_key: str, stamp: str) -> None:
        await db.execute(
            "INSERT INTO calendar_events (org, id, host, title, start_at, end_at, attendees, status, sequence, "
            "decision_id, action_key, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'confirmed', 0, ?, ?, ?, ?)",
            (event.org, event.id, event.host, event.title, _iso(event.start), _iso(event.end),
             json.dumps(event.attendees), event.decision_id, action_key, stamp, stamp))

    async def _cal_write_times(self, db: aiosqlite.Connection, event: CalendarEvent, stamp: str) -> None:
        await db.execute(
            "UPDATE calendar_events SET start_at = ?, end_at = ?, sequence = ?, updated_at = ? WHERE org = ? AND id = ?",
            (_iso(event.start), _iso(event.end), event.sequence, stamp, event.org, event.id))

    async def _cal_write_cancelled(self, db: aiosqlite.Connection, event: CalendarEvent, stamp: str) -> None:
        await db.execute(
            "UPDATE calendar_events SET status = 'cancelled', sequence = ?, updated_at = ? WHERE org = ? AND id = ?",
            (event.sequence, stamp, event.org, event.id))

    async def _cal_add_timer(self, db: aiosqlite.Connection, envelope: Event, due: datetime) -> None:
        await db.execute("INSERT INTO timers (org, id, due_at, envelope) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         (envelope.org, envelope.id, _iso(due), envelope.model_dump_json()))

    async def _cal_drop_reminders(self, db: aiosqlite.Connection, org: str, event_id: str) -> None:
        """Delete the unfired reminder timers of an event (fired ones stay: they are history)."""
        await db.execute("DELETE FROM timers WHERE org = ? AND id LIKE ? ESCAPE '\\' AND fired_at IS NULL",
                         (org, reminder_pattern(event_id)))

    async def _cal_applied(self, db: aiosqlite.Connection, action_key: str) -> bool:
        rows = await db.execute_fetchall("SELECT 1 FROM calendar_changes WHERE action_key = ?", (action_key,))
        return bool(list(rows))

    async def _cal_record_change(self, db: aiosqlite.Connection, action_key: str, org: str, event_id: str,
                                 outcome: str, at: str) -> None:
        await db.execute("INSERT INTO calendar_changes (action_key, org, event_id, outcome, at) VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT DO NOTHING", (action_key, org, event_id, outcome, at))

    async def get_calendar_event(self, org: str, event_id: str) -> CalendarEvent | None:
        """One event of `org` (None if absent or another org's)."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                "SELECT * FROM calendar_events WHERE org = ? AND id = ?", (org, event_id)))
        return _event(rows[0]) if rows else None

    async def list_calendar_events(self, org: str, host: str | None = None, since: datetime | None = None,
                                   until: datetime | None = None,
                                   include_cancelled: bool = False) -> list[CalendarEvent]:
        """`org`'s events overlapping [since, until) (either bound optional), of one host or all, by start."""
        where, args = calendar_filters(qmark, org, host, since, until, include_cancelled)
        async with self._read() as db:
            rows = await db.execute_fetchall(
                f"SELECT * FROM calendar_events WHERE {' AND '.join(where)} ORDER BY start_at, id", args)
        return [_event(r) for r in rows]

    async def calendar_reminders(self, org: str, event_id: str) -> list[dict[str, Any]]:
        """The reminder timers of an event: `{id, due_at, fired_at, minutes_before}`, by due time."""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT id, due_at, fired_at, json_extract(envelope, '$.data.minutes_before') AS minutes "
                "FROM timers WHERE org = ? AND json_extract(envelope, '$.data.event_id') = ? "
                "AND json_extract(envelope, '$.type') = 'reminder:due' ORDER BY due_at, id", (org, event_id))
        return [reminder_row(r, r["minutes"]) for r in rows]

    async def feed_secret(self) -> bytes:
        """The key that signs calendar feed URLs: 32 random bytes, made on first use and kept in `settings`."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall("SELECT value FROM settings WHERE key = ?", (FEED_SECRET_KEY,)))
        if rows:
            return bytes.fromhex(rows[0]["value"])
        async with self._write() as db:  # another task or process may have made it meanwhile: theirs wins
            await db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                             (FEED_SECRET_KEY, secrets.token_hex(32)))
            rows = list(await db.execute_fetchall("SELECT value FROM settings WHERE key = ?", (FEED_SECRET_KEY,)))
        return bytes.fromhex(rows[0]["value"])
