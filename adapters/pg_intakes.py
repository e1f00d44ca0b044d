"""The intakes table on PostgreSQL — the same methods and results as `adapters.sqlite_intakes.IntakeTables`.

An assignment is applied once across processes: the transaction takes advisory locks on its action key and on
the intake (there may be no row to lock yet), then reads what is there; a second run waits, then finds the
first one's result. A stage move locks the intake's row.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from adapters.pg_base import PGBase, arg
from adapters.sqlite_base import _iso, _now, _parse_iso
from adapters.sqlite_intakes import Intake, IntakeTables, _intake
from engine.models import Event
from engine.ports import Busy, StaticState


async def lock(db: asyncpg.Connection, *parts: str) -> None:
    """A transaction-scoped advisory lock on the name made of `parts` (64-bit hash of it)."""
    await db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "\x1f".join(parts))


class PGIntakeTables(PGBase):
    """Intakes (mixed into `PGStore`)."""

    async def assign_intake(self, intake: Intake, *, action_key: str) -> tuple[Intake, bool]:
        """Record the outcome of an ASSIGN_PIPELINE action: a new intake, or (an intake of that id exists
        already, e.g. the host platform's own intake) the same intake moved to this pipeline, stage and
        assignee. Idempotent under `action_key`: a second run returns the intake as the first left it, with
        False."""
        now = _now()
        async with self._write() as db:
            await lock(db, "assign", action_key)
            await lock(db, "intake", intake.org, intake.id)
            done = await db.fetchrow("SELECT * FROM intakes WHERE action_key = $1", action_key)
            if done is not None:
                return _intake(done), False
            entry = {"at": now, "by": intake.decision_id, "what": "assigned", "action": action_key,
                     "pipeline": intake.pipeline, "stage": intake.stage, "assignee": intake.assignee}
            existing = await db.fetchrow("SELECT * FROM intakes WHERE org = $1 AND id = $2 FOR UPDATE",
                                         intake.org, intake.id)
            if existing is not None and any(h.get("action") == action_key for h in json.loads(existing["history"])):
                # Applied before, and the intake was re-routed by a later action since: nothing to do again.
                return _intake(existing), False
            if existing is not None:
                history = [*json.loads(existing["history"]), entry]
                row = await db.fetchrow(
                    "UPDATE intakes SET pipeline = $1, stage = $2, assignee = $3, assigned_at = $4, priority = $5, "
                    "closed = $6, decision_id = $7, action_key = $8, history = $9, updated_at = $10 "
                    "WHERE org = $11 AND id = $12 RETURNING *",
                    intake.pipeline, intake.stage, intake.assignee, now if intake.assignee else None,
                    intake.priority, int(intake.closed), intake.decision_id, action_key, json.dumps(history), now,
                    intake.org, intake.id)
            else:
                row = await db.fetchrow(
                    "INSERT INTO intakes (org, id, title, contact, pipeline, stage, assignee, assigned_at, priority, "
                    "closed, decision_id, event_id, action_key, history, created_at, updated_at) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15) RETURNING *",
                    intake.org, intake.id, intake.title[:300], json.dumps(intake.contact), intake.pipeline,
                    intake.stage, intake.assignee, now if intake.assignee else None, intake.priority,
                    int(intake.closed), intake.decision_id, intake.event_id, action_key, json.dumps([entry]), now)
        self._state_changed(intake.org)
        return _intake(row), True

    async def get_intake(self, org: str, intake_id: str) -> Intake | None:
        """One intake of `org`; None if absent."""
        async with self._read() as db:
            row = await db.fetchrow("SELECT * FROM intakes WHERE org = $1 AND id = $2", org, intake_id)
        return _intake(row) if row is not None else None

    async def list_intakes(self, org: str, *, pipeline: str | None = None, stage: str | None = None,
                           assignee: str | None = None, closed: bool | None = None, limit: int = 50,
                           before: int | None = None) -> tuple[list[Intake], int | None]:
        """A page of `org`'s intakes, newest first (cursor: a rowid), filtered."""
        args: list[Any] = []
        where = [f"org = {arg(args, org)}"]
        for column, value in (("pipeline", pipeline), ("stage", stage), ("assignee", assignee)):
            if value is not None:
                where.append(f"{column} = {arg(args, value)}")
        if closed is not None:
            where.append(f"closed = {arg(args, int(closed))}")
        return await self._page("intakes", where, args, limit=limit, before=before, row=_intake)

    async def move_intake(self, org: str, intake_id: str, *, stage: str, closed: bool, assignee: str | None,
                          keep_assignee: bool, by: str, note: str | None) -> tuple[Intake, Event | None] | None:
        """Move an intake to `stage` (and to `assignee` unless `keep_assignee`), append the move to its history
        and, when anything changed, put a `pipeline:stage_changed` event into the inbox — one transaction, so
        the event is never lost and never raised twice. None if the intake does not exist."""
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        async with self._write() as db:
            row = await db.fetchrow("SELECT * FROM intakes WHERE org = $1 AND id = $2 FOR UPDATE", org, intake_id)
            if row is None:
                return None
            before = _intake(row)
            new_assignee = before.assignee if keep_assignee else assignee
            if before.stage == stage and new_assignee == before.assignee:
                return before, None
            entry = {"at": now, "by": by, "what": "moved", "from_stage": before.stage, "stage": stage,
                     "from_assignee": before.assignee, "assignee": new_assignee, "note": note}
            history = [*before.history, entry]
            row = await db.fetchrow(
                "UPDATE intakes SET stage = $1, closed = $2, assignee = $3, "
                "assigned_at = CASE WHEN $4 THEN assigned_at ELSE $5 END, history = $6, updated_at = $5 "
                "WHERE org = $7 AND id = $8 RETURNING *",
                stage, int(closed), new_assignee, new_assignee == before.assignee, now, json.dumps(history),
                org, intake_id)
            name = intake_id if len(intake_id) <= 160 else hashlib.sha256(intake_id.encode()).hexdigest()[:24]
            event = Event(id=f"stage_{name}_{len(history)}", org=org, source="API", type="pipeline:stage_changed",
                          occurred_at=now_dt, data={
                              "intakeId": intake_id, "title": before.title, "pipeline": before.pipeline,
                              "from_stage": before.stage, "stage": stage, "from_assignee": before.assignee,
                              "assignee": new_assignee, "by": by, "note": note, "closed": closed})
            await db.execute(
                "INSERT INTO events (org, id, source, type, envelope, status, error, received_at, updated_at, "
                "priority, channel) VALUES ($1, $2, $3, $4, $5, 'accepted', NULL, $6, $6, 3, 'internal') "
                "ON CONFLICT (org, id) DO NOTHING",
                org, event.id, str(event.source), event.type, event.model_dump_json(), now)
        self._state_changed(org)
        return _intake(row), event

    async def intake_counts(self, org: str) -> dict[tuple[str, str], int]:
        """Open intakes of `org` per (pipeline, stage)."""
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT pipeline, stage, count(*) FROM intakes WHERE org = $1 AND closed = 0 GROUP BY pipeline, stage",
                org)
        return {(r[0], r[1]): int(r[2]) for r in rows}

    SNAPSHOT_SECONDS = IntakeTables.SNAPSHOT_SECONDS
    snapshot = IntakeTables.snapshot  # the same single-flight cache; only `_read_snapshot` below reads SQL

    async def _read_snapshot(self, org: str, since: datetime) -> StaticState:
        async with self._read() as db, db.transaction(readonly=True, isolation="repeatable_read"):
            loads = await db.fetch(
                "SELECT assignee, count(*) FILTER (WHERE closed = 0), max(assigned_at) FROM intakes "
                "WHERE org = $1 AND assignee IS NOT NULL GROUP BY assignee", org)
            events = await db.fetch(
                "SELECT id, host, title, start_at, end_at, attendees FROM calendar_events "
                "WHERE org = $1 AND status = 'confirmed' AND end_at >= $2 ORDER BY start_at", org, _iso(since))
        calendar = [Busy(host=r["host"], start=_parse_iso(r["start_at"]), end=_parse_iso(r["end_at"]), title=r["title"],
                         id=r["id"], attendees=tuple(a.get("email", "") if isinstance(a, dict) else str(a)
                                                     for a in json.loads(r["attendees"])))
                    for r in events]
        return StaticState(calendar=calendar, loads={r[0]: int(r[1] or 0) for r in loads},
                           last_assigned={r[0]: _parse_iso(r[2]) for r in loads if r[2]})
