"""What the SQLite and PostgreSQL stores share about intakes and calendars: the records, the history and events
a change writes, the slot placement and reminder logic, and the planning snapshot cache — all but the SQL.

The calendar's placement (`place`) reads the host's events through a function the store passes in, so that
each store runs it inside its own write transaction (and, on PostgreSQL, under the host's lock).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from adapters.store_common import Placeholder, StoreBase, _bound, _iso, _now, _parse_iso
from engine.config import Source
from engine.models import Event
from engine.ports import Busy, StaticState

# ---- intakes -------------------------------------------------------------------------------------------


@dataclass
class Intake:
    """A work item in a pipeline."""

    org: str
    id: str
    title: str
    pipeline: str
    stage: str
    assignee: str | None
    priority: int
    closed: bool
    contact: dict[str, Any] = field(default_factory=dict)
    decision_id: str | None = None
    event_id: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = ""
    updated_at: str = ""

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        return {"id": self.id, "org": self.org, "title": self.title, "contact": self.contact,
                "pipeline": self.pipeline, "stage": self.stage, "assignee": self.assignee,
                "priority": self.priority, "closed": self.closed, "decision_id": self.decision_id,
                "event_id": self.event_id, "history": self.history, "created_at": self.created_at,
                "updated_at": self.updated_at}


def _intake(r: Any) -> Intake:
    return Intake(org=r["org"], id=r["id"], title=r["title"], pipeline=r["pipeline"], stage=r["stage"],
                  assignee=r["assignee"], priority=r["priority"], closed=bool(r["closed"]),
                  contact=json.loads(r["contact"]), decision_id=r["decision_id"], event_id=r["event_id"],
                  history=json.loads(r["history"]), created_at=r["created_at"], updated_at=r["updated_at"])


def assignment_entry(intake: Intake, action_key: str, now: str) -> dict[str, Any]:
    """The history entry of an ASSIGN_PIPELINE action applied to `intake`."""
    return {"at": now, "by": intake.decision_id, "what": "assigned", "action": action_key,
            "pipeline": intake.pipeline, "stage": intake.stage, "assignee": intake.assignee}


def assigned_before(history: str, action_key: str) -> bool:
    """Whether an intake's history (JSON) shows `action_key` applied already."""
    return any(h.get("action") == action_key for h in json.loads(history))


def reassignment_values(intake: Intake, action_key: str, history: list[dict[str, Any]], now: str) -> tuple[Any, ...]:
    """What an assignment writes over an existing intake: pipeline, stage, assignee, assigned_at, priority, closed,
    decision_id, action_key, history, updated_at."""
    return (intake.pipeline, intake.stage, intake.assignee, now if intake.assignee else None, intake.priority,
            int(intake.closed), intake.decision_id, action_key, json.dumps(history), now)


def new_intake_values(intake: Intake, action_key: str, entry: dict[str, Any], now: str) -> tuple[Any, ...]:
    """A new intake's row but its timestamps: org, id, title, contact, pipeline, stage, assignee, assigned_at,
    priority, closed, decision_id, event_id, action_key, history."""
    return (intake.org, intake.id, intake.title[:300], json.dumps(intake.contact), intake.pipeline, intake.stage,
            intake.assignee, now if intake.assignee else None, intake.priority, int(intake.closed),
            intake.decision_id, intake.event_id, action_key, json.dumps([entry]))


def intake_filters(ph: Placeholder, org: str, pipeline: str | None, stage: str | None, assignee: str | None,
                   closed: bool | None) -> tuple[list[str], list[Any]]:
    """The conditions and arguments of `list_intakes`."""
    args: list[Any] = []
    where = [f"org = {ph(args, org)}"]
    for column, value in (("pipeline", pipeline), ("stage", stage), ("assignee", assignee)):
        if value is not None:
            where.append(f"{column} = {ph(args, value)}")
    if closed is not None:
        where.append(f"closed = {ph(args, int(closed))}")
    return where, args


@dataclass(frozen=True)
class Move:
    """A stage move to write: the new assignee, whether it stays the same, the new history, and the
    `pipeline:stage_changed` event it raises."""

    assignee: str | None
    same_assignee: bool
    history: list[dict[str, Any]]
    event: Event


def plan_move(before: Intake, *, stage: str, closed: bool, assignee: str | None, keep_assignee: bool, by: str,
              note: str | None, now_dt: datetime) -> Move | None:
    """What moving `before` to `stage` (and to `assignee` unless `keep_assignee`) writes; None when nothing
    changes."""
    now = _iso(now_dt)
    new_assignee = before.assignee if keep_assignee else assignee
    if before.stage == stage and new_assignee == before.assignee:
        return None
    entry = {"at": now, "by": by, "what": "moved", "from_stage": before.stage, "stage": stage,
             "from_assignee": before.assignee, "assignee": new_assignee, "note": note}
    history = [*before.history, entry]
    name = before.id if len(before.id) <= 160 else hashlib.sha256(before.id.encode()).hexdigest()[:24]
    event = Event(id=f"stage_{name}_{len(history)}", org=before.org, source="API", type="pipeline:stage_changed",
                  occurred_at=now_dt, data={
                      "intakeId": before.id, "title": before.title, "pipeline": before.pipeline,
                      "from_stage": before.stage, "stage": stage, "from_assignee": before.assignee,
                      "assignee": new_assignee, "by": by, "note": note, "closed": closed})
    return Move(new_assignee, new_assignee == before.assignee, history, event)


def snapshot_state(loads: Sequence[Any], events: Sequence[Any]) -> StaticState:
    """The planning state from rows of loads (assignee, open count, last assigned) and of confirmed calendar
    events (id, host, title, start_at, end_at, attendees)."""
    calendar = [Busy(host=r["host"], start=_parse_iso(r["start_at"]), end=_parse_iso(r["end_at"]), title=r["title"],
                     id=r["id"], attendees=tuple(a.get("email", "") if isinstance(a, dict) else str(a)
                                                 for a in json.loads(r["attendees"])))
                for r in events]
    return StaticState(calendar=calendar, loads={r[0]: int(r[1] or 0) for r in loads},
                       last_assigned={r[0]: _parse_iso(r[2]) for r in loads if r[2]})


class SnapshotCache(StoreBase):
    """The planning snapshot of an org, read by the store's `_read_snapshot` and reused for a second."""

    SNAPSHOT_SECONDS = 1.0
    """How long a planning snapshot is reused: this process's own changes drop it at once; other processes'
    changes are seen within this time (the calendar's commit-time check is what prevents double bookings)."""

    async def snapshot(self, org: str, now: datetime) -> StaticState:
        """The org's state for planning (`engine.ports.StateSource`): open intakes per assignee, when each was
        last assigned one, and every confirmed calendar event that has not ended before the day of `now` (or of
        today, if `now` is later).

        One read serves every plan of the org for `SNAPSHOT_SECONDS`, and concurrent plans that find no fresh
        copy wait for the same read (single flight): under load, reads queue behind the store's lock, and one
        read per request would stall every request behind them."""
        since = min(now, datetime.now(UTC)).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        cached = self._snapshots.get(org)
        if cached is not None and cached[0] > time.monotonic() and cached[1] <= since:
            state: StaticState = await asyncio.shield(cached[2])
            return state
        task = asyncio.ensure_future(self._read_snapshot(org, since))
        self._snapshots[org] = (time.monotonic() + self.SNAPSHOT_SECONDS, since, task)
        try:
            return await asyncio.shield(task)
        except BaseException:
            if self._snapshots.get(org, (0, 0, None))[2] is task:
                del self._snapshots[org]
            raise

    async def _read_snapshot(self, org: str, since: datetime) -> StaticState:
        raise NotImplementedError


# ---- calendar ------------------------------------------------------------------------------------------

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


def calendar_filters(ph: Placeholder, org: str, host: str | None, since: datetime | None, until: datetime | None,
                     include_cancelled: bool) -> tuple[list[str], list[Any]]:
    """The conditions and arguments of `list_calendar_events`: events overlapping [since, until)."""
    args: list[Any] = []
    where = [f"org = {ph(args, org)}"]
    if host is not None:
        where.append(f"host = {ph(args, host)}")
    if since is not None:
        where.append(f"end_at > {ph(args, _bound(since, 'since'))}")
    if until is not None:
        where.append(f"start_at < {ph(args, _bound(until, 'until'))}")
    if not include_cancelled:
        where.append("status = 'confirmed'")
    return where, args


HostEvents = Callable[[datetime, datetime], Awaitable[list[Busy]]]
"""The host's confirmed events (but the one being moved) overlapping [since, until), read by the store."""


async def place(host_events: HostEvents, start: datetime, end: datetime, buffer_minutes: int,
                replan: Replan) -> tuple[datetime, datetime, Change]:
    """The slot to write: the requested one when it is free (with the buffer), else `replan`'s."""
    pad = timedelta(minutes=buffer_minutes)
    near = await host_events(start - pad - timedelta(days=1), end + pad + timedelta(days=1))
    if not _overlaps(start, end, near, buffer_minutes):
        return start, end, Change("booked")
    busy = await host_events(min(start, datetime.now(UTC)) - timedelta(days=1), start + REPLAN_WINDOW)
    got = replan(busy)
    if isinstance(got, str):
        return start, end, Change("conflict", got)
    new_start, new_end, reason = got
    if _overlaps(new_start, new_end, busy, buffer_minutes):  # a replan that ignored the calendar it was given
        return start, end, Change("conflict", f"the slot found instead ({new_start.isoformat()}) is taken too")
    return new_start, new_end, Change("moved", reason)


def reminder_timers(event: CalendarEvent, reminders: Sequence[int], now: datetime) -> list[tuple[datetime, Event]]:
    """The `reminder:due` timers (due time, event) `minutes` before the start, for those still in the future."""
    timers = []
    for minutes in dict.fromkeys(reminders):
        due = event.start - timedelta(minutes=minutes)
        if due <= now:
            continue
        timers.append((due, Event(
            id=f"rem_{event.id}_{event.sequence}_{minutes}", org=event.org, source=Source.SCHEDULE,
            type="reminder:due", occurred_at=due,
            data={"event_id": event.id, "host": event.host, "title": event.title, "start": event.start.isoformat(),
                  "end": event.end.isoformat(), "attendees": event.attendees, "minutes_before": minutes})))
    return timers


def reminder_pattern(event_id: str) -> str:
    """A LIKE pattern (escape character `\\`) matching the ids of an event's reminder timers."""
    return "rem\\_" + event_id.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "\\_%"


def booked_before(event: CalendarEvent, start: datetime, end: datetime) -> Change:
    """What a second run of a booking reports about the event the first one booked."""
    return Change("booked") if event.start == start and event.end == end else \
        Change("moved", "booked earlier under this action key")


def new_event(org: str, *, host: str, title: str, start: datetime, end: datetime, attendees: list[dict[str, Any]],
              decision_id: str | None, action_key: str, stamp: str) -> CalendarEvent:
    """The event a booking writes at [start, end), made at `stamp`."""
    return CalendarEvent(org=org, id=event_id_for(action_key), host=host, title=title,
                         start=start.astimezone(UTC), end=end.astimezone(UTC), attendees=attendees,
                         decision_id=decision_id, created_at=_parse_iso(stamp), updated_at=_parse_iso(stamp))


def no_such_event(org: str, event_id: str) -> Change:
    return Change("conflict", f"there is no calendar event {event_id!r} in org {org!r}")


def update_refused(event: CalendarEvent, *, applied: bool, start: datetime, end: datetime) -> Change | None:
    """Why moving `event` to [start, end) changes nothing (the change was applied before, the event is not
    confirmed, or it is there already); None when it is to be placed."""
    if applied:
        return Change("unchanged", "this change was applied before")
    if event.status != "confirmed":
        return Change("conflict", f"calendar event {event.id!r} is {event.status}; it cannot be moved")
    if event.start == start and event.end == end:
        return Change("unchanged")
    return None


def apply_move(event: CalendarEvent, start: datetime, end: datetime, change: Change, stamp: str) -> Change | None:
    """Move `event` to the slot `place` found (`change`) at `stamp`, with its sequence one up, and say what it did;
    None (the event untouched) when the slot is where the event already is (a re-run after the first run
    moved it)."""
    if event.start == start and event.end == end:
        return None
    event.start, event.end = start.astimezone(UTC), end.astimezone(UTC)
    event.sequence += 1
    event.updated_at = _parse_iso(stamp)
    return Change("updated" if change.outcome == "booked" else "moved", change.reason)


def apply_cancel(event: CalendarEvent, stamp: str) -> None:
    """`event` cancelled at `stamp`, its sequence one up."""
    event.status, event.sequence, event.updated_at = "cancelled", event.sequence + 1, _parse_iso(stamp)


def reminder_row(r: Any, minutes: Any) -> dict[str, Any]:
    """A reminder timer `{id, due_at, fired_at, minutes_before}` from its row."""
    return {"id": r["id"], "due_at": _parse_iso(r["due_at"]),
            "fired_at": _parse_iso(r["fired_at"]) if r["fired_at"] else None, "minutes_before": minutes}


class CalendarFlows(StoreBase):
    """Booking, moving and cancelling calendar events, each in one write transaction of the store; the store
    supplies the SQL through the `_cal_*` methods (each runs inside that transaction, on its connection `db`)."""

    _write: Callable[[], AbstractAsyncContextManager[Any]]

    async def _cal_lock_host(self, db: Any, org: str, host: str) -> None:
        """Serialise writes to `host`'s calendar until the transaction ends (nothing to do where one writer at a
        time is let in)."""

    async def _cal_by_action(self, db: Any, action_key: str) -> CalendarEvent | None:
        raise NotImplementedError

    async def _cal_for_update(self, db: Any, org: str, event_id: str) -> CalendarEvent | None:
        raise NotImplementedError

    async def _cal_host_events(self, db: Any, org: str, host: str, since: datetime, until: datetime,
                               exclude: str | None) -> list[Busy]:
        raise NotImplementedError

    async def _cal_insert(self, db: Any, event: CalendarEvent, action_key: str, stamp: str) -> None:
        raise NotImplementedError

    async def _cal_write_times(self, db: Any, event: CalendarEvent, stamp: str) -> None:
        raise NotImplementedError

    async def _cal_write_cancelled(self, db: Any, event: CalendarEvent, stamp: str) -> None:
        raise NotImplementedError

    async def _cal_add_timer(self, db: Any, envelope: Event, due: datetime) -> None:
        raise NotImplementedError

    async def _cal_drop_reminders(self, db: Any, org: str, event_id: str) -> None:
        raise NotImplementedError

    async def _cal_applied(self, db: Any, action_key: str) -> bool:
        raise NotImplementedError

    async def _cal_record_change(self, db: Any, action_key: str, org: str, event_id: str, outcome: str,
                                 at: str) -> None:
        raise NotImplementedError

    async def _cal_place(self, db: Any, org: str, host: str, start: datetime, end: datetime, buffer_minutes: int,
                         replan: Replan, exclude: str | None) -> tuple[datetime, datetime, Change]:
        async def host_events(since: datetime, until: datetime) -> list[Busy]:
            return await self._cal_host_events(db, org, host, since, until, exclude)

        return await place(host_events, start, end, buffer_minutes, replan)

    async def _cal_add_reminders(self, db: Any, event: CalendarEvent, reminders: Sequence[int],
                                 now: datetime) -> None:
        for due, envelope in reminder_timers(event, reminders, now):
            await self._cal_add_timer(db, envelope, due)

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
            await self._cal_lock_host(db, org, host)
            done = await self._cal_by_action(db, action_key)
            if done is not None:
                return done, booked_before(done, start, end)
            slot_start, slot_end, change = await self._cal_place(db, org, host, start, end, buffer_minutes, replan,
                                                                 None)
            if change.outcome == "conflict":
                return None, change
            stamp = _now()
            event = new_event(org, host=host, title=title, start=slot_start, end=slot_end, attendees=attendees,
                              decision_id=decision_id, action_key=action_key, stamp=stamp)
            await self._cal_insert(db, event, action_key, stamp)
            await self._cal_add_reminders(db, event, reminders, now)
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
            event = await self._cal_for_update(db, org, event_id)
            if event is None:
                return None, no_such_event(org, event_id)
            refused = update_refused(event, applied=await self._cal_applied(db, action_key), start=start, end=end)
            if refused is not None:
                return event, refused
            await self._cal_lock_host(db, org, event.host)
            slot_start, slot_end, change = await self._cal_place(db, org, event.host, start, end, buffer_minutes,
                                                                 replan, event_id)
            if change.outcome == "conflict":
                return event, change
            stamp = _now()
            moved = apply_move(event, slot_start, slot_end, change, stamp)
            if moved is None:
                # The replanned slot is where the event already is (a re-run after the first run moved it).
                return event, Change("unchanged", change.reason)
            await self._cal_write_times(db, event, stamp)
            await self._cal_drop_reminders(db, org, event_id)
            await self._cal_add_reminders(db, event, reminders, now)
            await self._cal_record_change(db, action_key, org, event_id, moved.outcome, stamp)
        self._state_changed(org)
        return event, moved

    async def cancel_event(self, org: str, event_id: str, action_key: str) -> tuple[CalendarEvent | None, Change]:
        """Cancel an event: status cancelled, sequence + 1, unfired reminders deleted, in one transaction.
        Cancelling a cancelled event changes nothing ("unchanged"), so a re-run is a no-op. None when there is
        no such event."""
        async with self._write() as db:
            event = await self._cal_for_update(db, org, event_id)
            if event is None:
                return None, no_such_event(org, event_id)
            if event.status == "cancelled" or await self._cal_applied(db, action_key):
                return event, Change("unchanged")
            stamp = _now()
            apply_cancel(event, stamp)
            await self._cal_write_cancelled(db, event, stamp)
            await self._cal_drop_reminders(db, org, event_id)
            await self._cal_record_change(db, action_key, org, event_id, "cancelled", stamp)
        self._state_changed(org)
        return event, Change("cancelled")
