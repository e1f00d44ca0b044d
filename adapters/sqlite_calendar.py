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

import hashlib
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiosqlite

from adapters.sqlite_base import SQLiteBase, _bound, _iso, _now, _parse_iso
from engine.config import Source
from engine.models import Event
from engine.ports import Busy

FEED_SECRET_KEY = "calendar_feed_secret"
REPLAN_WINDOW = timedelta(days=40)
"""How far after the requested slot the host's events are read for `replan` (the planner scans 30 days)."""

Replan = Callable[[list[Busy]], "tuple[datetime, datetime, str] | str"]
"""Given the host's other events as they are now: a new (start, end, reason), or why there is none."""
Outcome = Literal["booked", "moved", "updated", "unchanged", "cancelled", "conflict"]


@dataclass
class CalendarEvent:
    """An event on a host's calendar (times aware, UTC)."""

    org: str
    id: str
    host: str
    title: str
    start: datetime
    end: datetime
    attendees: list[dict[str, Any]] = field(default_factory=list)
    status: str = "confirmed"
    sequence: int = 0
    decision_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """As the API shows it (ISO-8601 times in UTC)."""
        return {"id": self.id, "org": self.org, "host": self.host, "title": self.title,
                "start": self.start.isoformat(), "end": self.end.isoformat(), "attendees": self.attendees,
                "status": self.status, "sequence": self.sequence, "decision_id": self.decision_id,
                "created_at": self.created_at.isoformat() if self.created_at else None,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None}

    def busy(self) -> Busy:
        """The event as the planner sees it."""
        return Busy(host=self.host, start=self.start, end=self.end, title=self.title, id=self.id,
                    attendees=tuple(str(a.get("email", "")) for a in self.attendees))


@dataclass(frozen=True)
class Change:
    """What a calendar write did: `outcome`, and why when it moved or could not book."""

    outcome: Outcome
    reason: str = ""


def event_id_for(action_key: str) -> str:
    """The id of the event an action creates: derived from its idempotency key, so a re-run finds it."""
    return "cev_" + hashlib.sha256(action_key.encode()).hexdigest()[:20]


def _event(r: Any) -> CalendarEvent:
    return CalendarEvent(org=r["org"], id=r["id"], host=r["host"], title=r["title"], start=_parse_iso(r["start_at"]),
                         end=_parse_iso(r["end_at"]), attendees=json.loads(r["attendees"]), status=r["status"],
                         sequence=int(r["sequence"]), decision_id=r["decision_id"],
                         created_at=_parse_iso(r["created_at"]), updated_at=_parse_iso(r["updated_at"]))


def _overlaps(start: datetime, end: datetime, busy: Sequence[Busy], buffer_minutes: int) -> list[Busy]:
    pad = timedelta(minutes=buffer_minutes)
    return [b for b in busy if b.start - pad < end and start < b.end + pad]


async def _host_events(db: aiosqlite.Connection, org: str, host: str, since: datetime, until: datetime,
                       exclude: str | None = None) -> list[Busy]:
    rows = await db.execute_fetchall(
        "SELECT * FROM calendar_events WHERE org = ? AND host = ? AND status = 'confirmed' "
        "AND start_at < ? AND end_at > ? AND id != ? ORDER BY start_at",
        (org, host, _iso(until), _iso(since), exclude or ""))
    return [_event(r).busy() for r in rows]


async def _place(db: aiosqlite.Connection, org: str, host: str, start: datetime, end: datetime,
                 buffer_minutes: int, replan: Replan, exclude: str | None) -> tuple[datetime, datetime, Change]:
    """The slot to write: the requested one when it is free (with the buffer), else `replan`'s."""
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


async def _add_reminders(db: aiosqlite.Connection, event: CalendarEvent, reminders: Sequence[int],
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
        await db.execute("INSERT INTO timers (org, id, due_at, envelope) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         (event.org, envelope.id, _iso(due), envelope.model_dump_json()))


async def _drop_reminders(db: aiosqlite.Connection, org: str, event_id: str) -> None:
    """Delete the unfired reminder timers of an event (fired ones stay: they are history)."""
    await db.execute("DELETE FROM timers WHERE org = ? AND id LIKE ? ESCAPE '\\' AND fired_at IS NULL",
                     (org, "rem\\_" + event_id.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "\\_%"))


async def _stored_event(db: aiosqlite.Connection, org: str, event_id: str) -> CalendarEvent | None:
    rows = list(await db.execute_fetchall("SELECT * FROM calendar_events WHERE org = ? AND id = ?", (org, event_id)))
    return _event(rows[0]) if rows else None


async def _applied(db: aiosqlite.Connection, action_key: str) -> bool:
    rows = await db.execute_fetchall("SELECT 1 FROM calendar_changes WHERE action_key = ?", (action_key,))
    return bool(list(rows))


async def _record_change(db: aiosqlite.Connection, action_key: str, org: str, event_id: str, outcome: str,
                         at: str) -> None:
    await db.execute("INSERT INTO calendar_changes (action_key, org, event_id, outcome, at) VALUES (?, ?, ?, ?, ?) "
                     "ON CONFLICT DO NOTHING", (action_key, org, event_id, outcome, at))


class CalendarTables(SQLiteBase):
    """Calendar events of hosts (mixed into `SQLiteStore`)."""

    async def book_event(self, org: str, *, host: str, title: str, start: datetime, end: datetime,
                         attendees: list[dict[str, Any]], decision_id: str | None, action_key: str,
                         buffer_minutes: int, replan: Replan, reminders: Sequence[int] = (),
                         now: datetime | None = None) -> tuple[CalendarEvent | None, Change]:
        """Book [start, end) on `host`'s calendar in ONE transaction: the slot (with `buffer_minutes` free on
        each side) is checked against the host's confirmed events as they are now; when taken, `replan(busy)`
        picks another slot ("moved") or says why there is none ("conflict": nothing is written, no event).
        Reminder timers are written with the event. Idempotent under `action_key`: a second run returns the
        event the first one booked (outcome "booked", or "moved" when it is not at `start`)."""
        _bound(start, "start"), _bound(end, "end")
        now = now or datetime.now(UTC)
        async with self._write() as db:
            done = list(await db.execute_fetchall(
                "SELECT * FROM calendar_events WHERE action_key = ?", (action_key,)))
            if done:
                event = _event(done[0])
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
                "decision_id, action_key, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'confirmed', 0, ?, ?, ?, ?)",
                (org, event.id, host, title, _iso(slot_start), _iso(slot_end), json.dumps(attendees), decision_id,
                 action_key, stamp, stamp))
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
            event = await _stored_event(db, org, event_id)
            if event is None:
                return None, Change("conflict", f"there is no calendar event {event_id!r} in org {org!r}")
            if await _applied(db, action_key):
                return event, Change("unchanged", "this change was applied before")
            if event.status != "confirmed":
                return event, Change("conflict", f"calendar event {event_id!r} is {event.status}; it cannot be moved")
            if event.start == start and event.end == end:
                return event, Change("unchanged")
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
                "UPDATE calendar_events SET start_at = ?, end_at = ?, sequence = ?, updated_at = ? "
                "WHERE org = ? AND id = ?", (_iso(slot_start), _iso(slot_end), event.sequence, stamp, org, event_id))
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
            event = await _stored_event(db, org, event_id)
            if event is None:
                return None, Change("conflict", f"there is no calendar event {event_id!r} in org {org!r}")
            if event.status == "cancelled" or await _applied(db, action_key):
                return event, Change("unchanged")
            stamp = _now()
            event.status, event.sequence, event.updated_at = "cancelled", event.sequence + 1, _parse_iso(stamp)
            await db.execute(
                "UPDATE calendar_events SET status = 'cancelled', sequence = ?, updated_at = ? WHERE org = ? AND id = ?",
                (event.sequence, stamp, org, event_id))
            await _drop_reminders(db, org, event_id)
            await _record_change(db, action_key, org, event_id, "cancelled", stamp)
        self._state_changed(org)
        return event, Change("cancelled")

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
        where, args = ["org = ?"], [org]
        if host is not None:
            where.append("host = ?")
            args.append(host)
        if since is not None:
            where.append("end_at > ?")
            args.append(_bound(since, "since"))
        if until is not None:
            where.append("start_at < ?")
            args.append(_bound(until, "until"))
        if not include_cancelled:
            where.append("status = 'confirmed'")
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
        return [{"id": r["id"], "due_at": _parse_iso(r["due_at"]),
                 "fired_at": _parse_iso(r["fired_at"]) if r["fired_at"] else None,
                 "minutes_before": r["minutes"]} for r in rows]

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
