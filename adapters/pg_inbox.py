"""The service's tables on PostgreSQL: the durable inbox (group-committed accepts, leases, recovery, dead
letters), the outbox rows and stream entries written with each decision, approvals, API keys, timers and
analytics — the same methods, arguments and results as `adapters.sqlite_inbox.InboxTables`.

Several worker processes share the inbox: claims take ready rows with `FOR UPDATE SKIP LOCKED` (no event is
leased twice, and no claimer waits for another), and completing an event locks its row first, so exactly one
decision is recorded per event however many workers finish it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from adapters import store_common as common
from adapters.pg_base import PGBase, append_stream, arg, upsert_decision
from adapters.store_common import (
    SIGNATURE_MEMORY_SECONDS,
    Accepted,
    Claimed,
    InboxItem,
    _bound,
    _iso,
    _now,
    event_filters,
    event_row,
)
from engine.models import Decision, Event


async def insert_actions(db: asyncpg.Connection, decision: Decision, now: str, *, base: int = 0) -> None:
    """The decision's actions into the outbox at positions `base`.. (a correction's compensation at n*1000..); an
    action already there (same key) is left alone."""
    if not decision.actions:
        return
    await db.executemany(
        "INSERT INTO actions (key, org, decision_id, idx, type, params, status, available_at, created_at, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7, $7) ON CONFLICT (key) DO NOTHING",
        [(*values, now) for values in common.action_values(decision, base)])


class PGInboxTables(common.DecisionFlows, PGBase):
    """Inbox, outbox, stream, approvals, keys, timers and analytics (mixed into `PGStore`)."""

    # ---- durable inbox ---------------------------------------------------------------------------------

    async def accept_events(self, items: Sequence[InboxItem]) -> list[Accepted]:
        """As `InboxTables.accept_events`."""
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        out: dict[int, Accepted] = {}
        bulk: list[tuple[int, InboxItem]] = []
        async with self._write() as db:
            if any(it.signature for it in items):
                await db.execute("DELETE FROM seen_signatures WHERE seen_at < $1",
                                 _iso(now_dt - timedelta(seconds=SIGNATURE_MEMORY_SECONDS)))
            for i, it in enumerate(items):
                if it.signature and not await db.fetchval(
                        "INSERT INTO seen_signatures (digest, org, seen_at) VALUES ($1, $2, $3) "
                        "ON CONFLICT DO NOTHING RETURNING true", it.signature, it.event.org, now):
                    out[i] = Accepted(it.event.org, it.event.id, False, "replayed", None)
                else:
                    bulk.append((i, it))
            # One statement for the whole batch: the columns travel as arrays, RETURNING names the new rows.
            # A second copy of an event within the batch conflicts with the first and is skipped.
            inserted: set[tuple[str, str]] = set()
            if bulk:
                columns = [list(c) for c in zip(*(common.accept_values(it, now_dt) for _, it in bulk), strict=True)]
                returned = await db.fetch(
                    """INSERT INTO events (org, id, source, type, envelope, status, error, received_at, updated_at,
                                           priority, channel, attempts, lease_owner, lease_until)
                       SELECT org, id, source, type, envelope::json, status, NULL, $12, $12, priority, channel,
                              attempts, lease_owner, lease_until
                       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                   $7::int[], $8::text[], $9::int[], $10::text[], $11::text[]) WITH ORDINALITY
                            AS b(org, id, source, type, envelope, status, priority, channel, attempts, lease_owner,
                                 lease_until, ord)
                       ORDER BY ord
                       ON CONFLICT (org, id) DO NOTHING
                       RETURNING org, id""", *columns, now)
                inserted = {(r["org"], r["id"]) for r in returned}
            stored: dict[tuple[str, str], Any] = {}
            if len(inserted) < len(bulk):  # duplicates: report the stored rows (this batch's own ones included)
                keys = [(it.event.org, it.event.id) for _, it in bulk]
                stored = {(r["org"], r["id"]): r for r in await db.fetch(
                    "SELECT e.org, e.id, e.status, e.decision_id FROM events e "
                    "JOIN unnest($1::text[], $2::text[]) AS k(org, id) ON e.org = k.org AND e.id = k.id",
                    [k[0] for k in keys], [k[1] for k in keys])}
            for i, it in bulk:
                key = (it.event.org, it.event.id)
                if key in inserted:
                    inserted.discard(key)  # a second copy later in the batch is a duplicate of this one
                    out[i] = common.accepted_new(it)
                else:
                    out[i] = Accepted(key[0], key[1], False, stored[key]["status"], stored[key]["decision_id"])
        return [out[i] for i in range(len(items))]

    async def claim_events(self, owner: str, *, limit: int = 8, lease_seconds: float = 30.0) -> list[Claimed]:
        """As `InboxTables.claim_events`. Rows another process is claiming at the same moment are skipped (`SKIP
        LOCKED`), never claimed twice."""
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        async with self._write() as db:
            rows = await db.fetch(
                # The pick is a CTE: evaluated once (an `IN (subquery)` may be rescanned, and then take more).
                """WITH picked AS (SELECT rowid FROM events
                                   WHERE status = 'accepted' AND (available_at IS NULL OR available_at <= $3)
                                   ORDER BY priority DESC, rowid LIMIT $4
                                   FOR UPDATE SKIP LOCKED)
                   UPDATE events e SET status = 'processing', lease_owner = $1, lease_until = $2,
                                       attempts = attempts + 1, updated_at = $3
                   FROM picked WHERE e.rowid = picked.rowid
                   RETURNING e.envelope, e.attempts, e.channel, e.rowid""",
                owner, _iso(now_dt + timedelta(seconds=lease_seconds)), now, limit)
        return [common.claimed(r) for r in sorted(rows, key=lambda r: r["rowid"])]

    async def waiting_events(self, *, received_before: datetime, limit: int = 500) -> list[tuple[Event, int]]:
        """As `InboxTables.waiting_events`."""
        async with self._read() as db:
            rows = await db.fetch(
                """SELECT envelope, priority FROM events
                   WHERE status = 'accepted' AND (available_at IS NULL OR available_at <= $1) AND received_at < $2
                   ORDER BY priority DESC, rowid LIMIT $3""", _now(), _iso(received_before), limit)
        return [(Event.model_validate_json(r["envelope"]), int(r["priority"])) for r in rows]

    async def claim_event(self, org: str, event_id: str, owner: str, *,
                          lease_seconds: float = 30.0) -> tuple[Claimed | None, str]:
        """As `InboxTables.claim_event`. Of two processes claiming it at once, the second waits for the first's
        row lock, then finds it leased."""
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        async with self._write() as db:
            row = await db.fetchrow(
                """UPDATE events SET status = 'processing', lease_owner = $1, lease_until = $2,
                                     attempts = attempts + 1, updated_at = $3
                   WHERE org = $4 AND id = $5
                     AND (status = 'accepted' OR (status = 'processing' AND lease_until < $3))
                   RETURNING envelope, attempts, channel""",
                owner, _iso(now_dt + timedelta(seconds=lease_seconds)), now, org, event_id)
            if row is not None:
                return common.claimed(row), "claimed"
            status = await db.fetchval("SELECT status FROM events WHERE org = $1 AND id = $2", org, event_id)
        return None, (status if status is not None else "missing")

    async def renew_leases(self, owner: str, keys: Sequence[tuple[str, str]], lease_seconds: float) -> int:
        """As `InboxTables.renew_leases`."""
        if not keys:
            return 0
        until = _iso(datetime.now(UTC) + timedelta(seconds=lease_seconds))
        async with self._write() as db:
            return len(await db.fetch(
                "UPDATE events e SET lease_until = $1 FROM unnest($2::text[], $3::text[]) AS k(org, id) "
                "WHERE e.org = k.org AND e.id = k.id AND e.status = 'processing' AND e.lease_owner = $4 "
                "RETURNING 1", until, [k[0] for k in keys], [k[1] for k in keys], owner))

    async def release_events(self, owner: str, keys: Sequence[tuple[str, str]] | None = None) -> int:
        """As `InboxTables.release_events`."""
        now = _now()
        async with self._write() as db:
            if keys is None:
                rows = await db.fetch(
                    "UPDATE events SET status = 'accepted', lease_owner = NULL, lease_until = NULL, "
                    "attempts = greatest(attempts - 1, 0), updated_at = $1 "
                    "WHERE status = 'processing' AND lease_owner = $2 RETURNING 1", now, owner)
            else:
                rows = await db.fetch(
                    "UPDATE events e SET status = 'accepted', lease_owner = NULL, lease_until = NULL, "
                    "attempts = greatest(attempts - 1, 0), updated_at = $1 "
                    "FROM unnest($3::text[], $4::text[]) AS k(org, id) "
                    "WHERE e.org = k.org AND e.id = k.id AND e.status = 'processing' AND e.lease_owner = $2 "
                    "RETURNING 1", now, owner, [k[0] for k in keys], [k[1] for k in keys])
        return len(rows)

    async def recover_events(self, *, dead_owners: Sequence[str] = (), max_attempts: int | None = None) -> int:
        """As `InboxTables.recover_events`."""
        now = _now()
        taken = "status = 'processing' AND (lease_until < $2 OR lease_owner = ANY($3::text[]))"
        async with self._write() as db:
            n = 0
            if max_attempts is not None:
                n += len(await db.fetch(
                    "UPDATE events SET status = 'dead', lease_owner = NULL, lease_until = NULL, updated_at = $1, "
                    "error = 'the process died while deciding this event, ' || attempts || ' times' "
                    f"WHERE {taken} AND attempts >= $4 RETURNING 1", now, now, list(dead_owners), max_attempts))
            n += len(await db.fetch(
                "UPDATE events SET status = 'accepted', lease_owner = NULL, lease_until = NULL, updated_at = $1 "
                f"WHERE {taken} RETURNING 1", now, now, list(dead_owners)))
        return n

    async def lease_owners(self) -> list[str]:
        """As `InboxTables.lease_owners`."""
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT DISTINCT lease_owner FROM events WHERE status = 'processing' AND lease_owner IS NOT NULL")
        return [r[0] for r in rows]

    async def fail_event(self, org: str, event_id: str, owner: str, error: str, *, max_attempts: int,
                         retry_in: float) -> str:
        """As `InboxTables.fail_event`."""
        now_dt = datetime.now(UTC)
        async with self._write() as db:
            row = await db.fetchrow(
                "SELECT attempts, status, lease_owner FROM events WHERE org = $1 AND id = $2 FOR UPDATE", org, event_id)
            held, status = common.failed_status(row, owner, max_attempts)
            if not held:
                return status
            await db.execute(
                "UPDATE events SET status = $1, error = $2, lease_owner = NULL, lease_until = NULL, "
                "available_at = $3, updated_at = $4 WHERE org = $5 AND id = $6",
                status, error[:2000], _iso(now_dt + timedelta(seconds=retry_in)), _iso(now_dt), org, event_id)
        return status

    async def retry_event(self, org: str, event_id: str) -> bool:
        """As `InboxTables.retry_event`."""
        async with self._write() as db:
            return await db.fetchval(
                "UPDATE events SET status = 'accepted', attempts = 0, available_at = NULL, updated_at = $1 "
                "WHERE org = $2 AND id = $3 AND status = 'dead' RETURNING true", _now(), org, event_id) or False

    async def list_events(self, org: str, *, status: str | None = None, limit: int = 50,
                          before: int | None = None, since: datetime | None = None,
                          until: datetime | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """As `InboxTables.list_events`."""
        where, args = event_filters(arg, org, status, since, until)
        return await self._page("events", where, args, limit=limit, before=before, row=event_row)

    async def event_info(self, org: str, event_id: str) -> dict[str, Any] | None:
        """As `InboxTables.event_info`."""
        async with self._read() as db:
            row = await db.fetchrow("SELECT * FROM events WHERE org = $1 AND id = $2", org, event_id)
        return event_row(row) if row is not None else None

    async def inbox_depth(self) -> dict[str, int]:
        """As `InboxTables.inbox_depth`."""
        async with self._read() as db:
            rows = await db.fetch("SELECT status, count(*) FROM events GROUP BY status")
        return common.status_counts(common.INBOX_STATUSES, rows)

    # ---- decisions of inbox events, approvals: `DecisionFlows`' SQL ---------------------------------------

    async def _dec_lock_events(self, db: asyncpg.Connection, keys: list[tuple[str, str]]) -> None:
        await db.execute(
            "SELECT 1 FROM events e JOIN unnest($1::text[], $2::text[]) AS k(org, id) "
            "ON e.org = k.org AND e.id = k.id ORDER BY e.org, e.id FOR UPDATE OF e",
            [k[0] for k in keys], [k[1] for k in keys])

    async def _dec_inbox_state(self, db: asyncpg.Connection, org: str, event_id: str) -> tuple[bool, str | None]:
        row = await db.fetchrow(
            "SELECT e.status, d.record FROM events e LEFT JOIN decisions d ON d.id = e.decision_id "
            "WHERE e.org = $1 AND e.id = $2", org, event_id)
        decided = row["record"] if row is not None and row["status"] == "decided" and row["record"] else None
        return row is not None, decided

    async def _dec_mark_decided(self, db: asyncpg.Connection, decision: Decision, now: str) -> None:
        await db.execute(
            "UPDATE events SET status = 'decided', decision_id = $1, error = NULL, lease_owner = NULL, "
            "lease_until = NULL, updated_at = $2 WHERE org = $3 AND id = $4",
            decision.id, now, decision.org, decision.event_id)

    async def _dec_review_record(self, db: asyncpg.Connection, org: str, decision_id: str) -> str | None:
        record: str | None = await db.fetchval(
            "SELECT record FROM decisions WHERE id = $1 AND org = $2 FOR UPDATE", decision_id, org)
        return record

    _dec_save = staticmethod(upsert_decision)
    _dec_actions = staticmethod(insert_actions)
    _dec_stream = staticmethod(append_stream)

    async def _dec_label(self, db: asyncpg.Connection, label: dict[str, Any]) -> None:
        await db.execute(
            "INSERT INTO labels (org, id, decision_id, event_id, kind, intent, priority, pipeline, assignee, by, note, "
            "at, decided, envelope) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
            "(SELECT envelope::text FROM events WHERE org = $1 AND id = $4)) ON CONFLICT (org, id) DO NOTHING",
            label["org"], label["id"], label["decision_id"], label["event_id"], label["kind"], label["intent"],
            label["priority"], label["pipeline"], label["assignee"], label["by"], label["note"], label["at"],
            json.dumps(label["decided"]))

    async def _labels(self, org: str, since: str | None, limit: int) -> list[dict[str, Any]]:
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT * FROM labels WHERE org = $1 AND ($2::text IS NULL OR at >= $2) ORDER BY at, id LIMIT $3",
                org, since, limit)
        return [common.common_label(r) for r in rows]

    # ---- live stream -----------------------------------------------------------------------------------

    async def stream_after(self, org: str, after: int, *, limit: int = 200) -> list[tuple[int, str, dict[str, Any]]]:
        """As `InboxTables.stream_after`."""
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT seq, kind, payload FROM stream WHERE org = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                org, after, limit)
        return [(int(r["seq"]), r["kind"], json.loads(r["payload"])) for r in rows]

    async def prune_stream(self, older_than: datetime) -> int:
        """As `InboxTables.prune_stream`."""
        async with self._write() as db:
            rows = await db.fetch("DELETE FROM stream WHERE created_at < $1 RETURNING 1",
                                  _bound(older_than, "older_than"))
        return len(rows)

    async def stream_head(self, org: str) -> int:
        """As `InboxTables.stream_head`."""
        async with self._read() as db:
            return int(await db.fetchval("SELECT coalesce(max(seq), 0) FROM stream WHERE org = $1", org))

    # ---- API keys --------------------------------------------------------------------------------------

    async def add_api_key(self, key_id: str, org: str, name: str, key_hash: str) -> None:
        """As `InboxTables.add_api_key`."""
        async with self._write() as db:
            await db.execute("INSERT INTO api_keys (id, org, name, hash, created_at) VALUES ($1, $2, $3, $4, $5)",
                             key_id, org, name, key_hash, _now())

    async def api_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        """As `InboxTables.api_key_by_hash`."""
        async with self._read() as db:
            row = await db.fetchrow(
                "SELECT id, org, name FROM api_keys WHERE hash = $1 AND revoked_at IS NULL", key_hash)
        return common.api_key_row(row)

    async def revoke_api_key(self, key_id: str) -> bool:
        """As `InboxTables.revoke_api_key`."""
        async with self._write() as db:
            return await db.fetchval("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL "
                                     "RETURNING true", _now(), key_id) or False

    async def list_api_keys(self, org: str | None = None) -> list[dict[str, Any]]:
        """As `InboxTables.list_api_keys`."""
        sql = "SELECT id, org, name, created_at, revoked_at FROM api_keys"
        args: list[Any] = []
        if org:
            sql += f" WHERE org = {arg(args, org)}"
        async with self._read() as db:
            rows = await db.fetch(sql + " ORDER BY created_at", *args)
        return [dict(r) for r in rows]

    # ---- timers (reminder:due and other delayed internal events) ---------------------------------------

    async def add_timer(self, event: Event, due_at: datetime) -> bool:
        """As `InboxTables.add_timer`."""
        async with self._write() as db:
            return await db.fetchval(
                "INSERT INTO timers (org, id, due_at, envelope) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING "
                "RETURNING true", event.org, event.id, _bound(due_at, "due_at"), event.model_dump_json()) or False

    async def fire_due_timers(self, now: datetime, *, limit: int = 500) -> list[Event]:
        """Move every timer due by `now` into the inbox (as channel 'timer') and mark it fired, in one
        transaction: a timer fires exactly once, also with several schedulers (due timers are locked with
        `SKIP LOCKED`: one that another process is firing is left to it). Returns the events that entered the
        inbox."""
        stamp = _bound(now, "now")
        fired: list[Event] = []
        async with self._write() as db:
            rows = await db.fetch(
                "SELECT org, id, envelope FROM timers WHERE fired_at IS NULL AND due_at <= $1 "
                "ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED", stamp, limit)
            for r in rows:
                event = Event.model_validate_json(r["envelope"])
                if await db.fetchval(
                        "INSERT INTO events (org, id, source, type, envelope, status, error, received_at, updated_at, "
                        "priority, channel) VALUES ($1, $2, $3, $4, $5, 'accepted', NULL, $6, $6, 3, 'timer') "
                        "ON CONFLICT (org, id) DO NOTHING RETURNING true",
                        event.org, event.id, str(event.source), event.type, r["envelope"], stamp):
                    fired.append(event)
                await db.execute("UPDATE timers SET fired_at = $1 WHERE org = $2 AND id = $3", stamp, r["org"], r["id"])
        return fired

    # ---- analytics -------------------------------------------------------------------------------------

    async def analytics(self, org: str, since: datetime, until: datetime) -> dict[str, Any]:
        """As `InboxTables.analytics`."""
        lo, hi = _bound(since, "since"), _bound(until, "until")
        window = "FROM decisions WHERE org = $1 AND created_at >= $2 AND created_at < $3"
        records = f"(SELECT created_at, record::jsonb AS r {window}) d"
        counts: dict[str, dict[str, int]] = {}
        # `nullif(…, 'null')`: a JSON null reads as absent, as SQLite's json_extract makes it. One snapshot for
        # every query, so the numbers agree with each other.
        async with self._read() as db, db.transaction(readonly=True, isolation="repeatable_read"):
            for column in common.ANALYTICS_COLUMNS:
                rows = await db.fetch(
                    f"SELECT {column}, count(*) {window} GROUP BY {column} ORDER BY {column}", org, lo, hi)
                counts[column] = {str(r[0]): int(r[1]) for r in rows}
            row = await db.fetchrow(
                f"""SELECT count(*), count(nullif(r -> 'llm', 'null')),
                           coalesce(sum((r #>> '{{llm,input_tokens}}')::numeric), 0),
                           coalesce(sum((r #>> '{{llm,output_tokens}}')::numeric), 0)
                    FROM {records}""", org, lo, hi)
            latencies = [float(r[0]) for r in await db.fetch(
                f"SELECT (r ->> 'execution_ms')::float8 AS v FROM {records} "
                "WHERE r ->> 'execution_ms' IS NOT NULL ORDER BY 1 LIMIT 200000", org, lo, hi)]
            llm_latencies = [float(r[0]) for r in await db.fetch(
                f"SELECT (r #>> '{{llm,latency_ms}}')::float8 FROM {records} "
                "WHERE nullif(r -> 'llm', 'null') IS NOT NULL AND r #>> '{llm,latency_ms}' IS NOT NULL "
                "ORDER BY 1 LIMIT 200000", org, lo, hi)]
            reviews = await db.fetch(
                f"SELECT created_at, r #>> '{{trace,review,at}}', r #>> '{{trace,review,verdict}}' FROM {records} "
                "WHERE nullif(r #> '{trace,review}', 'null') IS NOT NULL", org, lo, hi)
        return common.analytics_report(org, since, until, counts=counts, totals=row, latencies=latencies,
                                llm_latencies=llm_latencies, reviews=reviews)
