"""The outbox: actions of executed decisions, leased by a runner, tried, retried with backoff, or
dead-lettered — every attempt recorded with its outcome and timing.

Actions of one decision run in index order: an action is only claimed once every action before it is done
(a booking's confirmation waits for the booking). When an action is dead-lettered, the decision's later
actions are cancelled, the decision becomes FAILED with the reason, and (when given) a notice to the org's
escalation address is queued as one more action, keyed `<decision id>:failure`, that runs at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.sqlite_base import SQLiteBase, _iso, _now, _parse_iso, _upsert_decision
from adapters.sqlite_inbox import _append_stream
from adapters.store_common import (  # noqa: F401  (re-exported: the outbox's names since the start)
    FAILURE_INDEX,
    OUTBOX_STATUSES,
    action_jobs,
    action_row,
    cancelled_reason,
    dead_attempt,
    done_attempt,
    failed_attempt,
    failure_notice,
    outbox_filters,
    qmark,
    record_action_failure,
    reopen_decision,
    status_counts,
)
from engine.models import Decision
from engine.ports import ActionJob


class OutboxTables(SQLiteBase):
    """Claims, outcomes, recovery and listing of outbox actions (mixed into `SQLiteStore`)."""

    async def claim_actions(self, owner: str, *, limit: int = 8, lease_seconds: float = 60.0,
                            now: datetime | None = None) -> list[ActionJob]:
        """Lease up to `limit` actions that are due and whose earlier siblings are done; each claim counts
        an attempt. Returns them with their decision and event."""
        now_dt = now or datetime.now(UTC)
        stamp = _iso(now_dt)
        async with self._read() as db:
            # A read first: most wake-ups find nothing due, and a write transaction would queue behind the inbox's.
            due = list(await db.execute_fetchall(
                "SELECT 1 FROM actions WHERE status = 'pending' AND available_at <= ? LIMIT 1", (stamp,)))
        if not due:
            return []
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                """UPDATE actions SET status = 'running', lease_owner = ?, lease_until = ?, attempts = attempts + 1,
                                      started_at = ?, updated_at = ?
                   WHERE key IN (
                       SELECT a.key FROM actions a
                       WHERE a.status = 'pending' AND a.available_at <= ?
                         AND NOT EXISTS (SELECT 1 FROM actions b WHERE b.decision_id = a.decision_id
                                         AND b.idx < a.idx AND b.idx >= 0 AND b.status != 'done')
                       ORDER BY a.available_at, a.rowid LIMIT ?)
                   RETURNING key, org, decision_id, idx, type, params, attempts""",
                (owner, _iso(now_dt + timedelta(seconds=lease_seconds)), stamp, stamp, stamp, limit)))
            if not rows:
                return []
            ids = sorted({r["decision_id"] for r in rows})
            marks = ",".join("?" * len(ids))
            records = {r["id"]: r for r in await db.execute_fetchall(
                f"SELECT d.id, d.record, e.envelope FROM decisions d "
                f"LEFT JOIN events e ON e.org = d.org AND e.id = d.event_id WHERE d.id IN ({marks})", ids)}
        return action_jobs(rows, records)

    async def finish_action(self, key: str, owner: str, result: dict[str, Any], *, duration_ms: float) -> bool:
        """Mark a leased action done with its result. False if this owner no longer holds it (its lease
        expired and it was taken again): the outcome is then not recorded twice."""
        now = _now()
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE actions SET status = 'done', result = ?, error = NULL, finished_at = ?, duration_ms = ?, "
                "lease_owner = NULL, lease_until = NULL, updated_at = ?, "
                "attempt_log = json_insert(attempt_log, '$[#]', json(?)) "
                "WHERE key = ? AND lease_owner = ? AND status = 'running'",
                (json.dumps(result, default=str), now, duration_ms, now, done_attempt(now, duration_ms), key, owner))
            ok = cur.rowcount == 1
            await cur.close()
        return ok

    async def defer_action(self, key: str, owner: str, until: datetime, reason: str) -> bool:
        """Give a leased action back, to run at `until`, without counting the attempt."""
        now = _now()
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE actions SET status = 'pending', attempts = attempts - 1, available_at = ?, "
                "lease_owner = NULL, lease_until = NULL, updated_at = ?, "
                "result = json_object('deferred', ?, 'until', ?) "
                "WHERE key = ? AND lease_owner = ? AND status = 'running'",
                (_iso(until), now, reason, _iso(until), key, owner))
            ok = cur.rowcount == 1
            await cur.close()
        return ok

    async def retry_action(self, key: str, owner: str, error: str, *, delay_seconds: float,
                           duration_ms: float) -> bool:
        """Record a transient failure; the action is tried again after `delay_seconds`."""
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE actions SET status = 'pending', error = ?, available_at = ?, duration_ms = ?, "
                "lease_owner = NULL, lease_until = NULL, updated_at = ?, "
                "attempt_log = json_insert(attempt_log, '$[#]', json(?)) "
                "WHERE key = ? AND lease_owner = ? AND status = 'running'",
                (error[:2000], _iso(now_dt + timedelta(seconds=delay_seconds)), duration_ms, now,
                 failed_attempt(now, error, duration_ms, delay_seconds), key, owner))
            ok = cur.rowcount == 1
            await cur.close()
        return ok

    async def kill_action(self, key: str, owner: str | None, error: str, *, duration_ms: float | None = None,
                          escalation: dict[str, Any] | None = None) -> Decision | None:
        """Dead-letter an action (a permanent failure, or its last attempt failed): its decision's later
        actions are cancelled, the decision becomes FAILED with the reason, and `escalation` (the params of an
        ESCALATE action) is queued as the decision's failure notice. All in one transaction. Returns the
        updated decision, or None when this owner no longer holds the action."""
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                "SELECT org, decision_id, idx, type, status, lease_owner FROM actions WHERE key = ?", (key,)))
            if not rows or (owner is not None and (rows[0]["lease_owner"] != owner or rows[0]["status"] != "running")):
                return None
            a = rows[0]
            await db.execute(
                "UPDATE actions SET status = 'dead', error = ?, finished_at = ?, duration_ms = coalesce(?, duration_ms), "
                "lease_owner = NULL, lease_until = NULL, updated_at = ?, "
                "attempt_log = json_insert(attempt_log, '$[#]', json(?)) WHERE key = ?",
                (error[:2000], now, duration_ms, now, dead_attempt(now, error, duration_ms), key))
            await db.execute(
                "UPDATE actions SET status = 'cancelled', error = ?, updated_at = ? "
                "WHERE decision_id = ? AND idx > ? AND status = 'pending'",
                (cancelled_reason(a), now, a["decision_id"], a["idx"]))
            recs = list(await db.execute_fetchall("SELECT record FROM decisions WHERE id = ?", (a["decision_id"],)))
            if not recs:
                return None
            decision = Decision.model_validate_json(recs[0]["record"])
            if not record_action_failure(decision, a, key, error, now):
                # The failure notice itself failed: the decision already says why; nothing more to escalate.
                await _upsert_decision(db, decision)
                return decision
            await _upsert_decision(db, decision)
            if escalation is not None:
                await db.execute(
                    "INSERT INTO actions (key, org, decision_id, idx, type, params, status, available_at, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, 'ESCALATE', ?, 'pending', ?6, ?6, ?6) "
                    "ON CONFLICT (key) DO NOTHING",
                    (*failure_notice(decision, escalation), now))
            await _append_stream(db, decision, "failed", new=False, now=now)
        return decision

    async def renew_action_leases(self, owner: str, keys: Sequence[str], lease_seconds: float) -> int:
        """Extend this owner's leases on `keys` (actions still running here)."""
        if not keys:
            return 0
        until = _iso(datetime.now(UTC) + timedelta(seconds=lease_seconds))
        marks = ",".join("?" * len(keys))
        async with self._write() as db:
            cur = await db.execute(
                f"UPDATE actions SET lease_until = ? WHERE lease_owner = ? AND status = 'running' AND key IN ({marks})",
                (until, owner, *keys))
            n = cur.rowcount
            await cur.close()
        return n

    async def recover_actions(self, *, dead_owners: Sequence[str] = (), release_owner: str | None = None) -> int:
        """Actions whose runner died (its lease expired, or its owner is known dead) or that `release_owner` gives
        back go back to pending. The attempt they used stays counted: an action that crashes its runner every
        time still reaches its maximum attempts."""
        now = _now()
        owners = list(dead_owners) + ([release_owner] if release_owner else [])
        marks = ",".join("?" * len(owners))
        who = f" OR lease_owner IN ({marks})" if owners else ""
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE actions SET status = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = ?, "
                "attempt_log = json_insert(attempt_log, '$[#]', json_object('attempt_at', ?, 'outcome', 'interrupted')) "
                f"WHERE status = 'running' AND (lease_until < ?{who})", (now, now, now, *owners))
            n = cur.rowcount
            await cur.close()
        return n

    async def action_owners(self) -> list[str]:
        """Owners currently holding action leases."""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT DISTINCT lease_owner FROM actions WHERE status = 'running' AND lease_owner IS NOT NULL")
        return [r[0] for r in rows]

    async def outbox_depth(self) -> dict[str, int]:
        """How many actions are in each status (for /metrics and /healthz)."""
        async with self._read() as db:
            rows = await db.execute_fetchall("SELECT status, count(*) FROM actions GROUP BY status")
        return status_counts(OUTBOX_STATUSES, rows)

    async def next_action_due(self) -> datetime | None:
        """When the earliest pending action becomes due (None: nothing pending)."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                "SELECT min(available_at) FROM actions WHERE status = 'pending'"))
        value = rows[0][0] if rows else None
        return None if value is None else _parse_iso(value)

    async def list_actions(self, org: str, decision_id: str) -> list[dict[str, Any]]:
        """The outbox rows of one decision, in the order they run (a failure notice first)."""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT rowid, * FROM actions WHERE org = ? AND decision_id = ? ORDER BY idx", (org, decision_id))
        return [action_row(r) for r in rows]

    async def get_action(self, org: str, key: str) -> dict[str, Any] | None:
        """One outbox row of `org`; None if absent."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall("SELECT rowid, * FROM actions WHERE org = ? AND key = ?", (org, key)))
        return action_row(rows[0]) if rows else None

    async def list_outbox(self, org: str, *, status: str | None = None, limit: int = 50,
                          before: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """A page of `org`'s outbox actions, newest first (cursor: a rowid)."""
        where, args = outbox_filters(qmark, org, status)
        return await self._page("actions", where, args, limit=limit, before=before, row=action_row)

    async def retry_dead_action(self, org: str, key: str, *, by: str) -> Decision | None:
        """Give a dead-lettered action of `org` a fresh set of attempts: it and the actions cancelled after it
        go back to pending and the decision back to EXECUTED. None if the action is not dead."""
        now = _now()
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                "SELECT decision_id, idx FROM actions WHERE key = ? AND org = ? AND status = 'dead'", (key, org)))
            if not rows:
                return None
            decision_id, idx = rows[0]["decision_id"], rows[0]["idx"]
            await db.execute(
                "UPDATE actions SET status = 'pending', attempts = 0, available_at = ?, updated_at = ? WHERE key = ?",
                (now, now, key))
            await db.execute(
                "UPDATE actions SET status = 'pending', error = NULL, updated_at = ? "
                "WHERE decision_id = ? AND idx > ? AND status = 'cancelled'", (now, decision_id, idx))
            recs = list(await db.execute_fetchall("SELECT record FROM decisions WHERE id = ?", (decision_id,)))
            decision = Decision.model_validate_json(recs[0]["record"])
            reopen_decision(decision, idx, key, by, now)
            await _upsert_decision(db, decision)
        return decision

