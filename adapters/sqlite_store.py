"""SQLite storage: decisions, the event inbox, agent configs and per-org counters in one WAL file.

One `aiosqlite` connection per store. SQLite serialises writers anyway, and one connection shared by many
asyncio tasks would interleave their transactions, so every operation holds `self._lock` for its whole
transaction. Writes use `BEGIN IMMEDIATE` so that a second process waits (busy_timeout) instead of failing
half-way through. Decisions are kept whole as JSON (`Decision.model_dump(mode="json")`) next to a few
indexed columns that exist only for filtering; reading a decision back always parses the JSON.

Timestamps in indexed columns are UTC ISO-8601 strings of fixed width (`2026-01-02T03:04:05.000006Z`)
so that text order is time order. Nothing secret is stored here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from adapters.sqlite_base import (  # noqa: F401  (re-exported: the store's public names)
    MAX_PAGE,
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    _bound,
    _iso,
    _now,
    _parse_iso,
    _upsert_decision,
)
from adapters.sqlite_calendar import CalendarTables
from adapters.sqlite_inbox import AWAITING, Accepted, Claimed, InboxItem, InboxTables  # noqa: F401
from adapters.sqlite_intakes import IntakeTables
from adapters.sqlite_notifications import NotificationTables
from adapters.sqlite_outbox import OutboxTables
from adapters.store_common import (  # noqa: F401  (re-exported: the cursor's codec)
    AgentConfigs,
    _decode_cursor,
    _encode_cursor,
    config_payload,
    config_row,
    counters_row,
    decisions_limit,
    decisions_page,
    event_record,
    filter_values,
    refuse_dry_runs,
    unknown_event,
)
from engine.models import Decision, Event


def _one_or_many(column: str, value: str | Sequence[str] | None, where: list[str], args: list[Any]) -> None:
    """Add `column = ?` (one value) or `column IN (...)` (several) to a WHERE clause."""
    if value is None:
        return
    values = filter_values(column, value)
    if len(values) == 1:
        where.append(f"{column} = ?")
    else:
        where.append(f"{column} IN ({', '.join('?' * len(values))})")
    args.extend(values)


class SQLiteStore(InboxTables, OutboxTables, IntakeTables, CalendarTables, NotificationTables, AgentConfigs):
    """Decisions, the event inbox, the outbox, intakes, calendars, notifications, agent configs and counters
    in one SQLite file (WAL)."""

    # ---- event inbox -----------------------------------------------------------------------------

    async def record_event(self, event: Event, *, status: str = "accepted") -> bool:
        """Put `event` in the inbox; False (and nothing changed) if (org, id) is already there."""
        now = _now()
        async with self._write() as db:
            cur = await db.execute(
                "INSERT INTO events (org, id, source, type, envelope, status, error, received_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?) ON CONFLICT (org, id) DO NOTHING",
                (event.org, event.id, str(event.source), event.type, event.model_dump_json(), status,
                 now, now))
            inserted = cur.rowcount == 1
            await cur.close()
        return inserted

    async def get_event(self, org: str, event_id: str) -> dict[str, Any] | None:
        """`{org, id, envelope, status, error, received_at, updated_at}` of an inbox event, or None."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                "SELECT org, id, envelope, status, error, received_at, updated_at FROM events "
                "WHERE org = ? AND id = ?", (org, event_id)))
        return event_record(rows[0]) if rows else None

    async def envelopes(self, org: str, event_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """`{event id: envelope}` of those of `event_ids` that `org`'s inbox holds (one query; at most 500 ids)."""
        ids = list(dict.fromkeys(event_ids))[:500]
        if not ids:
            return {}
        async with self._read() as db:
            rows = await db.execute_fetchall(
                f"SELECT id, envelope FROM events WHERE org = ? AND id IN ({', '.join('?' * len(ids))})", (org, *ids))
        return {r["id"]: json.loads(r["envelope"]) for r in rows}

    async def set_event_status(self, org: str, event_id: str, status: str, error: str | None = None) -> None:
        """Move an inbox event to `status` (with `error`, cleared when None); KeyError if unknown."""
        async with self._write() as db:
            cur = await db.execute("UPDATE events SET status = ?, error = ?, updated_at = ? "
                                   "WHERE org = ? AND id = ?", (status, error, _now(), org, event_id))
            found = cur.rowcount == 1
            await cur.close()
        if not found:
            raise unknown_event(org, event_id)

    # ---- decisions -------------------------------------------------------------------------------

    async def save_decision(self, decision: Decision) -> None:
        """Insert or update `decision` by id, and the org's counters, in one transaction.

        `total_decisions` grows on first insert only; `successful_decisions` the first time the decision
        is saved as EXECUTED. Dry-run decisions are refused (ValueError): the simulator has no side effects.
        """
        refuse_dry_runs([decision])
        async with self._write() as db:
            await _upsert_decision(db, decision)

    async def get_decision(self, org: str, decision_id: str) -> Decision | None:
        """The decision `decision_id` of `org`; None if absent or another org's."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                "SELECT record FROM decisions WHERE id = ? AND org = ?", (decision_id, org)))
        return Decision.model_validate_json(rows[0]["record"]) if rows else None

    async def decision_for_event(self, org: str, event_id: str) -> Decision | None:
        """The latest stored decision for an event of `org` (dry runs are never stored), or None."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                "SELECT record FROM decisions WHERE event_id = ? AND org = ? "
                "ORDER BY created_at DESC, rowid DESC LIMIT 1", (event_id, org)))
        return Decision.model_validate_json(rows[0]["record"]) if rows else None

    async def decisions_for_events(self, org: str, event_ids: Sequence[str]) -> dict[str, Decision]:
        """The latest stored decision of each of `org`'s events that has one, by event id (one query)."""
        if not event_ids:
            return {}
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT d.event_id, d.record FROM decisions d JOIN json_each(?) j ON j.value = d.event_id "
                "WHERE d.org = ? ORDER BY d.created_at, d.rowid", (json.dumps(list(event_ids)), org))
        # ordered oldest first: a later decision of the same event replaces an earlier one
        return {r["event_id"]: Decision.model_validate_json(r["record"]) for r in rows}

    async def list_decisions(
        self, org: str, *,
        status: str | Sequence[str] | None = None,
        intent: str | Sequence[str] | None = None,
        decision_type: str | Sequence[str] | None = None,
        source: str | Sequence[str] | None = None,
        decided_by: str | Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
        oldest_first: bool = False,
    ) -> tuple[list[Decision], str | None]:
        """A page of `org`'s decisions, newest first, and the cursor of the next page (None at the end).

        Filters take one value or several (any of). `since` is inclusive, `until` exclusive (both need a
        timezone). Ties on `created_at` are ordered by id, ascending. `limit` is capped at 500. Pass the
        same filters with the returned cursor to continue; ValueError on a malformed cursor. `oldest_first`
        reverses the order (ties still by id, ascending): an approvals queue is worked from its oldest end.
        """
        limit = decisions_limit(limit)
        where, args = ["org = ?"], [org]
        _one_or_many("status", status, where, args)
        _one_or_many("intent", intent, where, args)
        _one_or_many("decision_type", decision_type, where, args)
        _one_or_many("source", source, where, args)
        _one_or_many("decided_by", decided_by, where, args)
        if since is not None:
            where.append("created_at >= ?")
            args.append(_bound(since, "since"))
        if until is not None:
            where.append("created_at < ?")
            args.append(_bound(until, "until"))
        if cursor is not None:
            after_created, after_id = _decode_cursor(cursor)
            where.append(f"(created_at {'>' if oldest_first else '<'} ? OR (created_at = ? AND id > ?))")
            args.extend([after_created, after_created, after_id])
        sql = (f"SELECT id, created_at, record FROM decisions WHERE {' AND '.join(where)} "
               f"ORDER BY created_at {'ASC' if oldest_first else 'DESC'}, id ASC LIMIT ?")
        async with self._read() as db:
            rows = list(await db.execute_fetchall(sql, [*args, limit + 1]))
        return decisions_page(rows, limit)

    # ---- agent configs and counters ------------------------------------------------------------------

    async def save_agent_config(self, org: str, revision: str, files: dict[str, str], *,
                                by: str | None = None) -> None:
        """Record `org`'s agent configuration `revision` (file name → text) as its latest, changed `by` whom.

        Every save is kept as history; saving what is already the latest (same revision and files) is a
        no-op, saving an older revision again makes it the latest (a rollback).
        """
        payload = config_payload(files)
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                "SELECT revision, files FROM agent_configs WHERE org = ? ORDER BY seq DESC LIMIT 1", (org,)))
            if rows and rows[0]["revision"] == revision and rows[0]["files"] == payload:
                return
            await db.execute(
                "INSERT INTO agent_configs (org, revision, files, created_at, changed_by) VALUES (?, ?, ?, ?, ?)",
                (org, revision, payload, _now(), by))

    async def agent_config_history(self, org: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """`org`'s configurations, latest first, in the shape of `agent_config`."""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT org, revision, files, created_at, changed_by FROM agent_configs WHERE org = ? "
                "ORDER BY seq DESC LIMIT ?", (org, max(1, min(limit, MAX_PAGE))))
        return [config_row(r) for r in rows]

    async def counters(self, org: str) -> dict[str, int]:
        """`{"total_decisions", "successful_decisions"}` of `org` (zeros when it has none)."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                "SELECT total_decisions, successful_decisions FROM agent_counters WHERE org = ?", (org,)))
        return counters_row(rows[0] if rows else None)

    # ---- settings ------------------------------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        """A server-side setting (e.g. a publisher's cursor), or None."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall("SELECT value FROM settings WHERE key = ?", (key,)))
        return rows[0]["value"] if rows else None

    async def create_setting(self, key: str, value: str) -> None:
        """Set a server-side setting unless it is set already (of several processes, the first one wins)."""
        async with self._write() as db:
            await db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                             (key, value))

    async def set_setting(self, key: str, value: str) -> None:
        """Set a server-side setting."""
        async with self._write() as db:
            await db.execute("INSERT INTO settings (key, value) VALUES (?, ?) "
                             "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

