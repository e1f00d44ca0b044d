"""The intakes table: work items of the pipelines, who holds them, and their history; the open load per user
(what assignment by load reads) and stage moves, which raise `pipeline:stage_changed` in the same transaction."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapters.sqlite_base import SQLiteBase, _iso, _now, _parse_iso
from engine.models import Event
from engine.ports import Busy, StaticState


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


class IntakeTables(SQLiteBase):
    """Intakes (mixed into `SQLiteStore`)."""

    async def assign_intake(self, intake: Intake, *, action_key: str) -> tuple[Intake, bool]:
        """Record the outcome of an ASSIGN_PIPELINE action: a new intake, or (an intake of that id exists
        already, e.g. the host platform's own intake) the same intake moved to this pipeline, stage and
        assignee. Idempotent under `action_key`: a second run returns the intake as the first left it, with
        False."""
        now = _now()
        async with self._write() as db:
            done = list(await db.execute_fetchall("SELECT * FROM intakes WHERE action_key = ?", (action_key,)))
            if done:
                return _intake(done[0]), False
            entry = {"at": now, "by": intake.decision_id, "what": "assigned", "action": action_key,
                     "pipeline": intake.pipeline, "stage": intake.stage, "assignee": intake.assignee}
            existing = list(await db.execute_fetchall(
                "SELECT * FROM intakes WHERE org = ? AND id = ?", (intake.org, intake.id)))
            if existing and any(h.get("action") == action_key for h in json.loads(existing[0]["history"])):
                # Applied before, and the intake was re-routed by a later action since: nothing to do again.
                return _intake(existing[0]), False
            if existing:
                history = [*json.loads(existing[0]["history"]), entry]
                await db.execute(
                    "UPDATE intakes SET pipeline = ?, stage = ?, assignee = ?, assigned_at = ?, priority = ?, closed = ?, "
                    "decision_id = ?, action_key = ?, history = ?, updated_at = ? WHERE org = ? AND id = ?",
                    (intake.pipeline, intake.stage, intake.assignee, now if intake.assignee else None,
                     intake.priority, int(intake.closed), intake.decision_id, action_key, json.dumps(history), now,
                     intake.org, intake.id))
            else:
                await db.execute(
                    "INSERT INTO intakes (org, id, title, contact, pipeline, stage, assignee, assigned_at, priority, "
                    "closed, decision_id, event_id, action_key, history, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (intake.org, intake.id, intake.title[:300], json.dumps(intake.contact), intake.pipeline,
                     intake.stage, intake.assignee, now if intake.assignee else None, intake.priority,
                     int(intake.closed), intake.decision_id, intake.event_id, action_key, json.dumps([entry]), now, now))
            rows = list(await db.execute_fetchall(
                "SELECT * FROM intakes WHERE org = ? AND id = ?", (intake.org, intake.id)))
        self._state_changed(intake.org)
        return _intake(rows[0]), True

    async def get_intake(self, org: str, intake_id: str) -> Intake | None:
        """One intake of `org`; None if absent."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall("SELECT * FROM intakes WHERE org = ? AND id = ?", (org, intake_id)))
        return _intake(rows[0]) if rows else None

    async def list_intakes(self, org: str, *, pipeline: str | None = None, stage: str | None = None,
                           assignee: str | None = None, closed: bool | None = None, limit: int = 50,
                           before: int | None = None) -> tuple[list[Intake], int | None]:
        """A page of `org`'s intakes, newest first (cursor: a rowid), filtered."""
        where, args = ["org = ?"], [org]
        for column, value in (("pipeline", pipeline), ("stage", stage), ("assignee", assignee)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if closed is not None:
            where.append("closed = ?")
            args.append(int(closed))
        return await self._page("intakes", where, args, limit=limit, before=before, row=_intake)

    async def move_intake(self, org: str, intake_id: str, *, stage: str, closed: bool, assignee: str | None,
                          keep_assignee: bool, by: str, note: str | None) -> tuple[Intake, Event | None] | None:
        """Move an intake to `stage` (and to `assignee` unless `keep_assignee`), append the move to its history
        and, when anything changed, put a `pipeline:stage_changed` event into the inbox — one transaction, so
        the event is never lost and never raised twice. None if the intake does not exist."""
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        async with self._write() as db:
            rows = list(await db.execute_fetchall("SELECT * FROM intakes WHERE org = ? AND id = ?", (org, intake_id)))
            if not rows:
                return None
            before = _intake(rows[0])
            new_assignee = before.assignee if keep_assignee else assignee
            if before.stage == stage and new_assignee == before.assignee:
                return before, None
            entry = {"at": now, "by": by, "what": "moved", "from_stage": before.stage, "stage": stage,
                     "from_assignee": before.assignee, "assignee": new_assignee, "note": note}
            history = [*before.history, entry]
            await db.execute(
                "UPDATE intakes SET stage = ?, closed = ?, assignee = ?, "
                "assigned_at = CASE WHEN ? THEN assigned_at ELSE ? END, history = ?, updated_at = ? "
                "WHERE org = ? AND id = ?",
                (stage, int(closed), new_assignee, int(new_assignee == before.assignee), now,
                 json.dumps(history), now, org, intake_id))
            name = intake_id if len(intake_id) <= 160 else hashlib.sha256(intake_id.encode()).hexdigest()[:24]
            event = Event(id=f"stage_{name}_{len(history)}", org=org, source="API", type="pipeline:stage_changed",
                          occurred_at=now_dt, data={
                              "intakeId": intake_id, "title": before.title, "pipeline": before.pipeline,
                              "from_stage": before.stage, "stage": stage, "from_assignee": before.assignee,
                              "assignee": new_assignee, "by": by, "note": note, "closed": closed})
            await db.execute(
                "INSERT INTO events (org, id, source, type, envelope, status, error, received_at, updated_at, "
                "priority, channel) VALUES (?, ?, ?, ?, ?, 'accepted', NULL, ?, ?, 3, 'internal') "
                "ON CONFLICT (org, id) DO NOTHING",
                (org, event.id, str(event.source), event.type, event.model_dump_json(), now, now))
            rows = list(await db.execute_fetchall("SELECT * FROM intakes WHERE org = ? AND id = ?", (org, intake_id)))
        self._state_changed(org)
        return _intake(rows[0]), event

    async def intake_counts(self, org: str) -> dict[tuple[str, str], int]:
        """Open intakes of `org` per (pipeline, stage)."""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT pipeline, stage, count(*) FROM intakes WHERE org = ? AND closed = 0 GROUP BY pipeline, stage",
                (org,))
        return {(r[0], r[1]): int(r[2]) for r in rows}

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
        async with self._read() as db:
            loads = list(await db.execute_fetchall(
                "SELECT assignee, sum(closed = 0), max(assigned_at) FROM intakes "
                "WHERE org = ? AND assignee IS NOT NULL GROUP BY assignee", (org,)))
            events = list(await db.execute_fetchall(
                "SELECT id, host, title, start_at, end_at, attendees FROM calendar_events "
                "WHERE org = ? AND status = 'confirmed' AND end_at >= ? ORDER BY start_at",
                (org, _iso(since))))
        calendar = [Busy(host=r["host"], start=_parse_iso(r["start_at"]), end=_parse_iso(r["end_at"]), title=r["title"],
                         id=r["id"], attendees=tuple(a.get("email", "") if isinstance(a, dict) else str(a)
                                                     for a in json.loads(r["attendees"])))
                    for r in events]
        return StaticState(calendar=calendar, loads={r[0]: int(r[1] or 0) for r in loads},
                           last_assigned={r[0]: _parse_iso(r[2]) for r in loads if r[2]})
