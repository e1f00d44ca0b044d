"""The intakes table on PostgreSQL — the same methods and results as `adapters.sqlite_intakes.IntakeTables`.

An assignment is applied once across processes: the transaction takes advisory locks on its action key and on
the intake (there may be no row to lock yet), then reads what is there; a second run waits, then finds the
first one's result. A stage move locks the intake's row.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import asyncpg

from adapters import store_planning as planning
from adapters.pg_base import PGBase, arg
from adapters.store_common import _iso, _now
from adapters.store_planning import Intake, SnapshotCache, _intake
from engine.models import Event
from engine.ports import StaticState


async def lock(db: asyncpg.Connection, *parts: str) -> None:
    """A transaction-scoped advisory lock on the name made of `parts` (64-bit hash of it)."""
    await db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "\x1f".join(parts))


class PGIntakeTables(SnapshotCache, PGBase):
    """Intakes (mixed into `PGStore`)."""

    async def assign_intake(self, intake: Intake, *, action_key: str) -> tuple[Intake, bool]:
        """As `IntakeTables.assign_intake`."""
        now = _now()
        async with self._write() as db:
            await lock(db, "assign", action_key)
            await lock(db, "intake", intake.org, intake.id)
            done = await db.fetchrow("SELECT * FROM intakes WHERE action_key = $1", action_key)
            if done is not None:
                return _intake(done), False
            entry = planning.assignment_entry(intake, action_key, now)
            existing = await db.fetchrow("SELECT * FROM intakes WHERE org = $1 AND id = $2 FOR UPDATE",
                                         intake.org, intake.id)
            if existing is not None and planning.assigned_before(existing["history"], action_key):
                # Applied before, and the intake was re-routed by a later action since: nothing to do again.
                return _intake(existing), False
            if existing is not None:
                history = [*json.loads(existing["history"]), entry]
                row = await db.fetchrow(
                    "UPDATE intakes SET pipeline = $1, stage = $2, assignee = $3, assigned_at = $4, priority = $5, "
                    "closed = $6, decision_id = $7, action_key = $8, history = $9, updated_at = $10 "
                    "WHERE org = $11 AND id = $12 RETURNING *",
                    *planning.reassignment_values(intake, action_key, history, now), intake.org, intake.id)
            else:
                row = await db.fetchrow(
                    "INSERT INTO intakes (org, id, title, contact, pipeline, stage, assignee, assigned_at, priority, "
                    "closed, decision_id, event_id, action_key, history, created_at, updated_at) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15) RETURNING *",
                    *planning.new_intake_values(intake, action_key, entry, now), now)
        self._state_changed(intake.org)
        return _intake(row), True

    async def get_intake(self, org: str, intake_id: str) -> Intake | None:
        """As `IntakeTables.get_intake`."""
        async with self._read() as db:
            row = await db.fetchrow("SELECT * FROM intakes WHERE org = $1 AND id = $2", org, intake_id)
        return _intake(row) if row is not None else None

    async def list_intakes(self, org: str, *, pipeline: str | None = None, stage: str | None = None,
                           assignee: str | None = None, closed: bool | None = None, limit: int = 50,
                           before: int | None = None) -> tuple[list[Intake], int | None]:
        """As `IntakeTables.list_intakes`."""
        where, args = planning.intake_filters(arg, org, pipeline, stage, assignee, closed)
        return await self._page("intakes", where, args, limit=limit, before=before, row=_intake)

    async def move_intake(self, org: str, intake_id: str, *, stage: str, closed: bool, assignee: str | None,
                          keep_assignee: bool, by: str, note: str | None) -> tuple[Intake, Event | None] | None:
        """As `IntakeTables.move_intake`."""
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        async with self._write() as db:
            row = await db.fetchrow("SELECT * FROM intakes WHERE org = $1 AND id = $2 FOR UPDATE", org, intake_id)
            if row is None:
                return None
            before = _intake(row)
            move = planning.plan_move(before, stage=stage, closed=closed, assignee=assignee,
                                      keep_assignee=keep_assignee, by=by, note=note, now_dt=now_dt)
            if move is None:
                return before, None
            row = await db.fetchrow(
                "UPDATE intakes SET stage = $1, closed = $2, assignee = $3, "
                "assigned_at = CASE WHEN $4 THEN assigned_at ELSE $5 END, history = $6, updated_at = $5 "
                "WHERE org = $7 AND id = $8 RETURNING *",
                stage, int(closed), move.assignee, move.same_assignee, now, json.dumps(move.history), org, intake_id)
            event = move.event
            await db.execute(
                "INSERT INTO events (org, id, source, type, envelope, status, error, received_at, updated_at, "
                "priority, channel) VALUES ($1, $2, $3, $4, $5, 'accepted', NULL, $6, $6, 3, 'internal') "
                "ON CONFLICT (org, id) DO NOTHING",
                org, event.id, str(event.source), event.type, event.model_dump_json(), now)
        self._state_changed(org)
        return _intake(row), event

    async def intake_counts(self, org: str) -> dict[tuple[str, str], int]:
        """As `IntakeTables.intake_counts`."""
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT pipeline, stage, count(*) FROM intakes WHERE org = $1 AND closed = 0 GROUP BY pipeline, stage",
                org)
        return {(r[0], r[1]): int(r[2]) for r in rows}

    async def _read_snapshot(self, org: str, since: datetime) -> StaticState:
        async with self._read() as db, db.transaction(readonly=True, isolation="repeatable_read"):
            loads = await db.fetch(
                "SELECT assignee, count(*) FILTER (WHERE closed = 0), max(assigned_at) FROM intakes "
                "WHERE org = $1 AND assignee IS NOT NULL GROUP BY assignee", org)
            events = await db.fetch(
                "SELECT id, host, title, start_at, end_at, attendees FROM calendar_events "
                "WHERE org = $1 AND status = 'confirmed' AND end_at >= $2 ORDER BY start_at", org, _iso(since))
        return planning.snapshot_state(loads, events)
