"""The intakes table: work items of the pipelines, who holds them, and their history; the open load per user
(what assignment by load reads) and stage moves, which raise `pipeline:stage_changed` in the same transaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from adapters.sqlite_base import SQLiteBase, _iso, _now
from adapters.store_common import qmark
from adapters.store_planning import (
    Intake,
    SnapshotCache,
    _intake,
    assigned_before,
    assignment_entry,
    intake_filters,
    new_intake_values,
    plan_move,
    reassignment_values,
    snapshot_state,
)
from engine.models import Event
from engine.ports import StaticState


class IntakeTables(SnapshotCache, SQLiteBase):
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
            entry = assignment_entry(intake, action_key, now)
            existing = list(await db.execute_fetchall(
                "SELECT * FROM intakes WHERE org = ? AND id = ?", (intake.org, intake.id)))
            if existing and assigned_before(existing[0]["history"], action_key):
                # Applied before, and the intake was re-routed by a later action since: nothing to do again.
                return _intake(existing[0]), False
            if existing:
                history = [*json.loads(existing[0]["history"]), entry]
                await db.execute(
                    "UPDATE intakes SET pipeline = ?, stage = ?, assignee = ?, assigned_at = ?, priority = ?, closed = ?, "
                    "decision_id = ?, action_key = ?, history = ?, updated_at = ? WHERE org = ? AND id = ?",
                    (*reassignment_values(intake, action_key, history, now), intake.org, intake.id))
            else:
                await db.execute(
                    "INSERT INTO intakes (org, id, title, contact, pipeline, stage, assignee, assigned_at, priority, "
                    "closed, decision_id, event_id, action_key, history, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?15, ?15)",
                    (*new_intake_values(intake, action_key, entry, now), now))
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
        where, args = intake_filters(qmark, org, pipeline, stage, assignee, closed)
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
            move = plan_move(before, stage=stage, closed=closed, assignee=assignee, keep_assignee=keep_assignee,
                             by=by, note=note, now_dt=now_dt)
            if move is None:
                return before, None
            await db.execute(
                "UPDATE intakes SET stage = ?, closed = ?, assignee = ?, "
                "assigned_at = CASE WHEN ? THEN assigned_at ELSE ? END, history = ?, updated_at = ? "
                "WHERE org = ? AND id = ?",
                (stage, int(closed), move.assignee, int(move.same_assignee), now, json.dumps(move.history), now, org,
                 intake_id))
            event = move.event
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

    async def _read_snapshot(self, org: str, since: datetime) -> StaticState:
        async with self._read() as db:
            loads = list(await db.execute_fetchall(
                "SELECT assignee, sum(closed = 0), max(assigned_at) FROM intakes "
                "WHERE org = ? AND assignee IS NOT NULL GROUP BY assignee", (org,)))
            events = list(await db.execute_fetchall(
                "SELECT id, host, title, start_at, end_at, attendees FROM calendar_events "
                "WHERE org = ? AND status = 'confirmed' AND end_at >= ? ORDER BY start_at",
                (org, _iso(since))))
        return snapshot_state(loads, events)
