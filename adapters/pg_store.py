"""PostgreSQL storage behind the same store port as `adapters.sqlite_store.SQLiteStore`: decisions, the event
inbox, the outbox, intakes, calendars, notifications, agent configs and counters — every public method with the
same name, arguments, results and guarantees, so that the service runs on either.

Use PostgreSQL where several processes (API servers, workers) share one store: claims use `FOR UPDATE SKIP
LOCKED`, and the guarantees SQLite gets from its single writer are kept with row locks, unique constraints and
advisory locks (see adapters/pg_base.py). The live stream also crosses processes: every stream entry is
announced with `NOTIFY astralis_stream, '<org>:<seq>'` in the transaction that wrote it, and `listen()`
subscribes to it, so a server need not poll for changes made by another. The same mechanism serves as a
DB_TRIGGER source for the host platform's own tables (`DB_TRIGGER_FUNCTION`, `listen_db_triggers()`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from adapters import store_common as common
from adapters.pg_base import (  # noqa: F401  (re-exported: the store's public names)
    PG_MIGRATIONS,
    PG_SCHEMA_VERSION,
    STREAM_CHANNEL,
    arg,
    upsert_decision,
)
from adapters.pg_calendar import PGCalendarTables
from adapters.pg_inbox import PGInboxTables
from adapters.pg_intakes import PGIntakeTables, lock
from adapters.pg_notifications import PGNotificationTables
from adapters.pg_outbox import PGOutboxTables
from adapters.store_common import MAX_PAGE, AgentConfigs, _bound, _decode_cursor, _now
from engine.models import Decision, Event

DB_TRIGGER_CHANNEL = "astralis_db_trigger"

DB_TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION astralis_notify_row_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    payload jsonb;
BEGIN
    payload := jsonb_build_object(
        'org', TG_ARGV[0],
        'table', TG_TABLE_NAME,
        'operation', TG_OP,
        'row', CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END,
        'old_row', CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) END,
        'occurred_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
    IF octet_length(payload::text) > 7900 THEN  -- NOTIFY payloads are limited to 8000 bytes
        payload := payload - 'row' - 'old_row' || jsonb_build_object('truncated', true);
    END IF;
    PERFORM pg_notify('astralis_db_trigger', payload::text);
    RETURN NULL;
END
$fn$;
"""
"""A trigger function for the host platform's own tables: each row change is announced on
`astralis_db_trigger` as JSON `{org, table, operation, row, old_row, occurred_at}` — the body of
`POST /api/agent/db-trigger` plus the org — when the change commits. Install it once, then attach it to a table
with the org as the trigger's argument:

    CREATE TRIGGER leads_to_astralis AFTER INSERT OR UPDATE OR DELETE ON leads
        FOR EACH ROW EXECUTE FUNCTION astralis_notify_row_change('acme');

A row too large for a NOTIFY (8000 bytes) is announced without `row` and `old_row`, with `"truncated": true`.
`PGStore.listen_db_triggers(callback)` receives the payloads."""


def _one_or_many(column: str, value: str | Sequence[str] | None, where: list[str], args: list[Any]) -> None:
    """Add `column = $n` (one value) or `column = ANY($n)` (several) to a WHERE clause."""
    if value is None:
        return
    values = common.filter_values(column, value)
    if len(values) == 1:
        where.append(f"{column} = {arg(args, values[0])}")
    else:
        where.append(f"{column} = ANY({arg(args, values)}::text[])")


class PGStore(PGInboxTables, PGOutboxTables, PGIntakeTables, PGCalendarTables, PGNotificationTables, AgentConfigs):
    """Decisions, the event inbox, the outbox, intakes, calendars, notifications, agent configs and counters
    in one PostgreSQL database (or one schema of it), shared by any number of processes."""

    # ---- event inbox -----------------------------------------------------------------------------

    async def record_event(self, event: Event, *, status: str = "accepted") -> bool:
        """As `SQLiteStore.record_event`."""
        now = _now()
        async with self._write() as db:
            return await db.fetchval(
                "INSERT INTO events (org, id, source, type, envelope, status, error, received_at, updated_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $7) ON CONFLICT (org, id) DO NOTHING RETURNING true",
                event.org, event.id, str(event.source), event.type, event.model_dump_json(), status, now) or False

    async def get_event(self, org: str, event_id: str) -> dict[str, Any] | None:
        """As `SQLiteStore.get_event`."""
        async with self._read() as db:
            row = await db.fetchrow(
                "SELECT org, id, envelope, status, error, received_at, updated_at FROM events "
                "WHERE org = $1 AND id = $2", org, event_id)
        return common.event_record(row) if row is not None else None

    async def envelopes(self, org: str, event_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """As `SQLiteStore.envelopes`."""
        ids = list(dict.fromkeys(event_ids))[:500]
        if not ids:
            return {}
        async with self._read() as db:
            rows = await db.fetch("SELECT id, envelope FROM events WHERE org = $1 AND id = ANY($2::text[])", org, ids)
        return {r["id"]: json.loads(r["envelope"]) for r in rows}

    async def set_event_status(self, org: str, event_id: str, status: str, error: str | None = None) -> None:
        """As `SQLiteStore.set_event_status`."""
        async with self._write() as db:
            found = await db.fetchval("UPDATE events SET status = $1, error = $2, updated_at = $3 "
                                      "WHERE org = $4 AND id = $5 RETURNING true", status, error, _now(), org, event_id)
        if not found:
            raise common.unknown_event(org, event_id)

    # ---- decisions -------------------------------------------------------------------------------

    async def save_decision(self, decision: Decision) -> None:
        """As `SQLiteStore.save_decision`."""
        common.refuse_dry_runs([decision])
        async with self._write() as db:
            await upsert_decision(db, decision)

    async def get_decision(self, org: str, decision_id: str) -> Decision | None:
        """As `SQLiteStore.get_decision`."""
        async with self._read() as db:
            record = await db.fetchval("SELECT record FROM decisions WHERE id = $1 AND org = $2", decision_id, org)
        return Decision.model_validate_json(record) if record is not None else None

    async def decision_for_event(self, org: str, event_id: str) -> Decision | None:
        """As `SQLiteStore.decision_for_event`."""
        async with self._read() as db:
            record = await db.fetchval(
                "SELECT record FROM decisions WHERE event_id = $1 AND org = $2 "
                "ORDER BY created_at DESC, rowid DESC LIMIT 1", event_id, org)
        return Decision.model_validate_json(record) if record is not None else None

    async def decisions_for_events(self, org: str, event_ids: Sequence[str]) -> dict[str, Decision]:
        """As `SQLiteStore.decisions_for_events`."""
        if not event_ids:
            return {}
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT event_id, record FROM decisions WHERE org = $1 AND event_id = ANY($2::text[]) "
                "ORDER BY created_at, rowid", org, list(event_ids))
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
        """As `SQLiteStore.list_decisions`. Cursors are the SQLite store's: a cursor from one store continues on
        the other."""
        limit = common.decisions_limit(limit)
        args: list[Any] = []
        where = [f"org = {arg(args, org)}"]
        _one_or_many("status", status, where, args)
        _one_or_many("intent", intent, where, args)
        _one_or_many("decision_type", decision_type, where, args)
        _one_or_many("source", source, where, args)
        _one_or_many("decided_by", decided_by, where, args)
        if since is not None:
            where.append(f"created_at >= {arg(args, _bound(since, 'since'))}")
        if until is not None:
            where.append(f"created_at < {arg(args, _bound(until, 'until'))}")
        if cursor is not None:
            after_created, after_id = _decode_cursor(cursor)
            c, i = arg(args, after_created), arg(args, after_id)
            where.append(f"(created_at {'>' if oldest_first else '<'} {c} OR (created_at = {c} AND id > {i}))")
        sql = (f"SELECT id, created_at, record FROM decisions WHERE {' AND '.join(where)} "
               f"ORDER BY created_at {'ASC' if oldest_first else 'DESC'}, id ASC LIMIT {arg(args, limit + 1)}")
        async with self._read() as db:
            rows = await db.fetch(sql, *args)
        return common.decisions_page(rows, limit)

    # ---- agent configs and counters ------------------------------------------------------------------

    async def save_agent_config(self, org: str, revision: str, files: dict[str, str], *,
                                by: str | None = None) -> None:
        """As `SQLiteStore.save_agent_config`. Saves of one org are serialised (advisory lock), so two processes
        saving the same configuration record it once."""
        payload = common.config_payload(files)
        async with self._write() as db:
            await lock(db, "agent_config", org)
            row = await db.fetchrow(
                "SELECT revision, files::text AS files FROM agent_configs WHERE org = $1 ORDER BY seq DESC LIMIT 1", org)
            if row is not None and row["revision"] == revision and row["files"] == payload:
                return
            await db.execute("INSERT INTO agent_configs (org, revision, files, created_at, changed_by) "
                             "VALUES ($1, $2, $3, $4, $5)", org, revision, payload, _now(), by)

    async def agent_config_history(self, org: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """As `SQLiteStore.agent_config_history`."""
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT org, revision, files, created_at, changed_by FROM agent_configs WHERE org = $1 "
                "ORDER BY seq DESC LIMIT $2", org, max(1, min(limit, MAX_PAGE)))
        return [common.config_row(r) for r in rows]

    async def counters(self, org: str) -> dict[str, int]:
        """As `SQLiteStore.counters`."""
        async with self._read() as db:
            row = await db.fetchrow(
                "SELECT total_decisions, successful_decisions FROM agent_counters WHERE org = $1", org)
        return common.counters_row(row)

    # ---- settings ------------------------------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        """As `SQLiteStore.get_setting`."""
        async with self._read() as db:
            value = await db.fetchval("SELECT value FROM settings WHERE key = $1", key)
        return None if value is None else str(value)

    async def create_setting(self, key: str, value: str) -> None:
        """As `SQLiteStore.create_setting`."""
        async with self._write() as db:
            await db.execute("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                             key, value)

    async def set_setting(self, key: str, value: str) -> None:
        """As `SQLiteStore.set_setting`."""
        async with self._write() as db:
            await db.execute("INSERT INTO settings (key, value) VALUES ($1, $2) "
                             "ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value)

    # ---- LISTEN / NOTIFY -------------------------------------------------------------------------------

    async def listen(self, callback: Callable[[str, int], Any]) -> None:
        """Call `callback(org, seq)` for every stream entry committed from now on, by any process using this
        database. A coroutine function is run as a task. Notifications arrive on one dedicated connection
        (outside the pool), opened on first use; they carry no payload beyond the key: read the entry with
        `stream_after`. A dropped connection loses notifications, so a reader still polls, only less often."""

        def deliver(payload: str) -> None:
            org, _, seq = payload.rpartition(":")
            self._dispatch(callback, org, int(seq))

        await self._subscribe(STREAM_CHANNEL, callback, deliver)

    async def listen_db_triggers(self, callback: Callable[[dict[str, Any]], Any]) -> None:
        """Call `callback(change)` for every row change announced by `DB_TRIGGER_FUNCTION` (see there for how
        to attach it to a table): `change` is its JSON payload as a dict. A coroutine function is run as a
        task."""

        def deliver(payload: str) -> None:
            self._dispatch(callback, json.loads(payload))

        await self._subscribe(DB_TRIGGER_CHANNEL, callback, deliver)

    async def unlisten(self, callback: Callable[..., Any]) -> None:
        """Stop calling `callback` (given to `listen` or `listen_db_triggers`); a channel nobody listens to any
        more is released."""
        async with self._listener_lock:
            for channel, subscribed in list(self._callbacks.items()):
                for entry in [e for e in subscribed if e[0] is callback]:
                    subscribed.remove(entry)
                    if self._listener is not None:
                        await self._listener.remove_listener(channel, entry[1])
                if not subscribed:
                    del self._callbacks[channel]

    async def _subscribe(self, channel: str, callback: Callable[..., Any], deliver: Callable[[str], None]) -> None:
        async with self._listener_lock:
            if self._listener is None:
                self._listener = await asyncpg.connect(self.url, **self._connect_kw)

            def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                deliver(payload)

            await self._listener.add_listener(channel, on_notify)
            self._callbacks.setdefault(channel, []).append((callback, on_notify))

    def _dispatch(self, callback: Callable[..., Any], *args: Any) -> None:
        """Call a listener; a coroutine it returns runs as a task (kept referenced until done)."""
        result = callback(*args)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
