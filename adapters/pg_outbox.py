"""The outbox on PostgreSQL: actions of executed decisions, leased by runners in any number of processes, tried,
retried with backoff, or dead-lettered — the same methods and results as `adapters.sqlite_outbox.OutboxTables`.

Claims take due actions with `FOR UPDATE SKIP LOCKED`, so runners never take the same action twice; every
outcome is recorded only by the owner that still holds the lease (`lease_owner` in the UPDATE's WHERE).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters import store_common as common
from adapters.pg_base import PGBase, append_stream, arg, upsert_decision
from adapters.store_common import OUTBOX_STATUSES, _iso, _now, _parse_iso, action_row, outbox_filters
from engine.models import Decision
from engine.ports import ActionJob

APPEND_LOG = "attempt_log = (attempt_log::jsonb || jsonb_build_array({}::jsonb))::json"
"""Append one entry (a placeholder holding its JSON) to an action's attempt log."""


class PGOutboxTables(PGBase):
    """Claims, outcomes, recovery and listing of outbox actions (mixed into `PGStore`)."""

    async def claim_actions(self, owner: str, *, limit: int = 8, lease_seconds: float = 60.0,
                            now: datetime | None = None) -> list[ActionJob]:
        """As `OutboxTables.claim_actions`."""
        now_dt = now or datetime.now(UTC)
        stamp = _iso(now_dt)
        async with self._write() as db:
            rows = await db.fetch(
                # The pick is a CTE: evaluated once (an `IN (subquery)` may be rescanned, and then take more).
                """WITH picked AS (
                       SELECT a.key FROM actions a
                       WHERE a.status = 'pending' AND a.available_at <= $3
                         AND NOT EXISTS (SELECT 1 FROM actions b WHERE b.decision_id = a.decision_id
                                         AND b.idx < a.idx AND b.idx >= 0 AND b.status != 'done')
                       ORDER BY a.available_at, a.rowid LIMIT $4
                       FOR UPDATE OF a SKIP LOCKED)
                   UPDATE actions x SET status = 'running', lease_owner = $1, lease_until = $2,
                                        attempts = attempts + 1, started_at = $3, updated_at = $3
                   FROM picked WHERE x.key = picked.key
                   RETURNING x.key, x.org, x.decision_id, x.idx, x.type, x.params, x.attempts""",
                owner, _iso(now_dt + timedelta(seconds=lease_seconds)), stamp, limit)
            if not rows:
                return []
            records = {r["id"]: r for r in await db.fetch(
                "SELECT d.id, d.record, e.envelope FROM decisions d "
                "LEFT JOIN events e ON e.org = d.org AND e.id = d.event_id WHERE d.id = ANY($1::text[])",
                sorted({r["decision_id"] for r in rows}))}
        return common.action_jobs(rows, records)

    async def finish_action(self, key: str, owner: str, result: dict[str, Any], *, duration_ms: float) -> bool:
        """As `OutboxTables.finish_action`."""
        now = _now()
        async with self._write() as db:
            return await db.fetchval(
                "UPDATE actions SET status = 'done', result = $1, error = NULL, finished_at = $2, duration_ms = $3, "
                f"lease_owner = NULL, lease_until = NULL, updated_at = $2, {APPEND_LOG.format('$4')} "
                "WHERE key = $5 AND lease_owner = $6 AND status = 'running' RETURNING true",
                json.dumps(result, default=str), now, float(duration_ms), common.done_attempt(now, duration_ms), key,
                owner) or False

    async def defer_action(self, key: str, owner: str, until: datetime, reason: str) -> bool:
        """As `OutboxTables.defer_action`."""
        async with self._write() as db:
            return await db.fetchval(
                "UPDATE actions SET status = 'pending', attempts = attempts - 1, available_at = $1, "
                "lease_owner = NULL, lease_until = NULL, updated_at = $2, result = $3 "
                "WHERE key = $4 AND lease_owner = $5 AND status = 'running' RETURNING true",
                _iso(until), _now(), json.dumps({"deferred": reason, "until": _iso(until)}), key, owner) or False

    async def retry_action(self, key: str, owner: str, error: str, *, delay_seconds: float,
                           duration_ms: float) -> bool:
        """As `OutboxTables.retry_action`."""
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        async with self._write() as db:
            return await db.fetchval(
                "UPDATE actions SET status = 'pending', error = $1, available_at = $2, duration_ms = $3, "
                f"lease_owner = NULL, lease_until = NULL, updated_at = $4, {APPEND_LOG.format('$5')} "
                "WHERE key = $6 AND lease_owner = $7 AND status = 'running' RETURNING true",
                error[:2000], _iso(now_dt + timedelta(seconds=delay_seconds)), float(duration_ms), now,
                common.failed_attempt(now, error, duration_ms, delay_seconds), key, owner) or False

    async def kill_action(self, key: str, owner: str | None, error: str, *, duration_ms: float | None = None,
                          escalation: dict[str, Any] | None = None) -> Decision | None:
        """As `OutboxTables.kill_action`."""
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        async with self._write() as db:
            a = await db.fetchrow(
                "SELECT org, decision_id, idx, type, status, lease_owner FROM actions WHERE key = $1 FOR UPDATE", key)
            if a is None or (owner is not None and (a["lease_owner"] != owner or a["status"] != "running")):
                return None
            await db.execute(
                "UPDATE actions SET status = 'dead', error = $1, finished_at = $2, "
                "duration_ms = coalesce($3, duration_ms), lease_owner = NULL, lease_until = NULL, updated_at = $2, "
                f"{APPEND_LOG.format('$4')} WHERE key = $5",
                error[:2000], now, None if duration_ms is None else float(duration_ms),
                common.dead_attempt(now, error, duration_ms), key)
            await db.execute(
                "UPDATE actions SET status = 'cancelled', error = $1, updated_at = $2 "
                "WHERE decision_id = $3 AND idx > $4 AND status = 'pending'",
                common.cancelled_reason(a), now, a["decision_id"], a["idx"])
            record = await db.fetchval("SELECT record FROM decisions WHERE id = $1 FOR UPDATE", a["decision_id"])
            if record is None:
                return None
            decision = Decision.model_validate_json(record)
            if not common.record_action_failure(decision, a, key, error, now):
                # The failure notice itself failed: the decision already says why; nothing more to escalate.
                await upsert_decision(db, decision)
                return decision
            await upsert_decision(db, decision)
            if escalation is not None:
                await db.execute(
                    "INSERT INTO actions (key, org, decision_id, idx, type, params, status, available_at, created_at, "
                    "updated_at) VALUES ($1, $2, $3, $4, 'ESCALATE', $5, 'pending', $6, $6, $6) "
                    "ON CONFLICT (key) DO NOTHING",
                    *common.failure_notice(decision, escalation), now)
            await append_stream(db, decision, "failed", new=False, now=now)
        return decision

    async def renew_action_leases(self, owner: str, keys: Sequence[str], lease_seconds: float) -> int:
        """As `OutboxTables.renew_action_leases`."""
        if not keys:
            return 0
        until = _iso(datetime.now(UTC) + timedelta(seconds=lease_seconds))
        async with self._write() as db:
            return len(await db.fetch(
                "UPDATE actions SET lease_until = $1 WHERE lease_owner = $2 AND status = 'running' "
                "AND key = ANY($3::text[]) RETURNING 1", until, owner, list(keys)))

    async def recover_actions(self, *, dead_owners: Sequence[str] = (), release_owner: str | None = None) -> int:
        """As `OutboxTables.recover_actions`."""
        now = _now()
        owners = list(dead_owners) + ([release_owner] if release_owner else [])
        async with self._write() as db:
            return len(await db.fetch(
                "UPDATE actions SET status = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = $1, "
                f"{APPEND_LOG.format('$2')} "
                "WHERE status = 'running' AND (lease_until < $1 OR lease_owner = ANY($3::text[])) RETURNING 1",
                now, json.dumps({"attempt_at": now, "outcome": "interrupted"}), owners))

    async def action_owners(self) -> list[str]:
        """As `OutboxTables.action_owners`."""
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT DISTINCT lease_owner FROM actions WHERE status = 'running' AND lease_owner IS NOT NULL")
        return [r[0] for r in rows]

    async def outbox_depth(self) -> dict[str, int]:
        """As `OutboxTables.outbox_depth`."""
        async with self._read() as db:
            rows = await db.fetch("SELECT status, count(*) FROM actions GROUP BY status")
        return common.status_counts(OUTBOX_STATUSES, rows)

    async def next_action_due(self) -> datetime | None:
        """As `OutboxTables.next_action_due`."""
        async with self._read() as db:
            value = await db.fetchval("SELECT min(available_at) FROM actions WHERE status = 'pending'")
        return None if value is None else _parse_iso(value)

    async def list_actions(self, org: str, decision_id: str) -> list[dict[str, Any]]:
        """As `OutboxTables.list_actions`."""
        async with self._read() as db:
            rows = await db.fetch("SELECT * FROM actions WHERE org = $1 AND decision_id = $2 ORDER BY idx",
                                  org, decision_id)
        return [action_row(r) for r in rows]

    async def get_action(self, org: str, key: str) -> dict[str, Any] | None:
        """As `OutboxTables.get_action`."""
        async with self._read() as db:
            row = await db.fetchrow("SELECT * FROM actions WHERE org = $1 AND key = $2", org, key)
        return action_row(row) if row is not None else None

    async def list_outbox(self, org: str, *, status: str | None = None, limit: int = 50,
                          before: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """As `OutboxTables.list_outbox`."""
        where, args = outbox_filters(arg, org, status)
        return await self._page("actions", where, args, limit=limit, before=before, row=action_row)

    async def retry_dead_action(self, org: str, key: str, *, by: str) -> Decision | None:
        """As `OutboxTables.retry_dead_action`."""
        now = _now()
        async with self._write() as db:
            a = await db.fetchrow(
                "SELECT decision_id, idx FROM actions WHERE key = $1 AND org = $2 AND status = 'dead' FOR UPDATE",
                key, org)
            if a is None:
                return None
            decision_id, idx = a["decision_id"], a["idx"]
            await db.execute(
                "UPDATE actions SET status = 'pending', attempts = 0, available_at = $1, updated_at = $1 WHERE key = $2",
                now, key)
            await db.execute(
                "UPDATE actions SET status = 'pending', error = NULL, updated_at = $1 "
                "WHERE decision_id = $2 AND idx > $3 AND status = 'cancelled'", now, decision_id, idx)
            record = await db.fetchval("SELECT record FROM decisions WHERE id = $1 FOR UPDATE", decision_id)
            decision = Decision.model_validate_json(record)
            common.reopen_decision(decision, idx, key, by, now)
            await upsert_decision(db, decision)
        return decision
