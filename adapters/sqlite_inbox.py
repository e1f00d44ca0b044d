"""The service's tables: the durable inbox (group-committed accepts, leases, recovery, dead letters), the
outbox rows and stream entries written with each decision, approvals, API keys, timers and analytics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite

from adapters.sqlite_base import SQLiteBase, _bound, _iso, _now, _upsert_decision
from adapters.store_common import (  # noqa: F401  (re-exported: the inbox's names since the start)
    ANALYTICS_COLUMNS,
    AWAITING,
    INBOX_STATUSES,
    SIGNATURE_MEMORY_SECONDS,
    Accepted,
    Claimed,
    DecisionFlows,
    InboxItem,
    _kind,
    _percentiles,
    accept_values,
    accepted_new,
    action_values,
    analytics_report,
    api_key_row,
    claimed,
    common_label,
    event_filters,
    event_row,
    failed_status,
    qmark,
    refuse_dry_runs,
    review_decision,
    status_counts,
    stream_payload,
)
from engine.models import Decision, Event


async def _insert_actions(db: aiosqlite.Connection, decision: Decision, now: str, *, base: int = 0) -> None:
    """The decision's actions into the outbox at positions `base`.. (a correction's compensation at n*1000..); an
    action already there (same key) is left alone."""
    if not decision.actions:
        return
    await db.executemany(
        "INSERT INTO actions (key, org, decision_id, idx, type, params, status, available_at, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?7, ?7, ?7) ON CONFLICT (key) DO NOTHING",
        [(*values, now) for values in action_values(decision, base)])


async def _append_stream(db: aiosqlite.Connection, decision: Decision, kind: str, *, new: bool, now: str) -> None:
    await db.execute("INSERT INTO stream (org, kind, decision_id, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                     (decision.org, kind, decision.id, stream_payload(decision, kind, new), now))


class InboxTables(DecisionFlows, SQLiteBase):
    """Inbox, outbox, stream, approvals, keys, timers and analytics (mixed into `SQLiteStore`)."""

    # ---- durable inbox ---------------------------------------------------------------------------------

    async def accept_events(self, items: Sequence[InboxItem]) -> list[Accepted]:
        """Put many events in the inbox in ONE transaction (group commit); per item, whether it was new.

        A duplicate (same org and id, already in the inbox or earlier in `items`) changes nothing and
        reports the stored event's status and decision. An item carrying a webhook `signature` digest that was
        already seen is a replay: nothing is written and its status reads "replayed". The signature is
        remembered in the same transaction as the event, so a failed accept never blocks the sender's retry.
        Items with `lease_owner` are written already claimed by that owner (synchronous processing); they go
        back to the queue if the lease expires.
        """
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        out: dict[int, Accepted] = {}
        bulk: list[tuple[int, InboxItem]] = []
        async with self._write() as db:
            if any(it.signature for it in items):
                await db.execute("DELETE FROM seen_signatures WHERE seen_at < ?",
                                 (_iso(now_dt - timedelta(seconds=SIGNATURE_MEMORY_SECONDS)),))
            for i, it in enumerate(items):
                if not it.signature:
                    bulk.append((i, it))
                    continue
                fresh = await db.execute_fetchall(
                    "INSERT INTO seen_signatures (digest, org, seen_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING "
                    "RETURNING 1", (it.signature, it.event.org, now))
                if not fresh:
                    out[i] = Accepted(it.event.org, it.event.id, False, "replayed", None)
                else:
                    bulk.append((i, it))
            # One statement for the whole batch (a round trip to SQLite's thread per row would cost more than
            # the insert): the rows travel as one JSON array, RETURNING names those that were new.
            rows = [accept_values(it, now_dt) for _, it in bulk]
            inserted: set[tuple[str, str]] = set()
            if rows:
                returned = await db.execute_fetchall(
                    """INSERT INTO events (org, id, source, type, envelope, status, error, received_at, updated_at,
                                           priority, channel, attempts, lease_owner, lease_until)
                       SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
                              json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),
                              NULL, ?, ?, json_extract(value, '$[6]'), json_extract(value, '$[7]'),
                              json_extract(value, '$[8]'), json_extract(value, '$[9]'), json_extract(value, '$[10]')
                       FROM json_each(?) WHERE true
                       ON CONFLICT (org, id) DO NOTHING
                       RETURNING org, id""", (now, now, json.dumps(rows)))
                inserted = {(r[0], r[1]) for r in returned}
            for i, it in bulk:
                key = (it.event.org, it.event.id)
                if key in inserted:
                    inserted.discard(key)  # a second copy later in the batch is a duplicate of this one
                    out[i] = accepted_new(it)
                    continue
                found = list(await db.execute_fetchall(
                    "SELECT status, decision_id FROM events WHERE org = ? AND id = ?", key))
                out[i] = Accepted(key[0], key[1], False, found[0]["status"], found[0]["decision_id"])
        return [out[i] for i in range(len(items))]

    async def claim_events(self, owner: str, *, limit: int = 8, lease_seconds: float = 30.0) -> list[Claimed]:
        """Lease up to `limit` ready events to `owner`, most urgent first, then oldest first."""
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        until = _iso(now_dt + timedelta(seconds=lease_seconds))
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                """UPDATE events SET status = 'processing', lease_owner = ?, lease_until = ?,
                                     attempts = attempts + 1, updated_at = ?
                   WHERE rowid IN (SELECT rowid FROM events
                                   WHERE status = 'accepted' AND (available_at IS NULL OR available_at <= ?)
                                   ORDER BY priority DESC, rowid LIMIT ?)
                   RETURNING org, id, envelope, attempts, channel, rowid""",
                (owner, until, now, now, limit)))
        rows.sort(key=lambda r: r["rowid"])
        return [claimed(r) for r in rows]

    async def waiting_events(self, *, received_before: datetime, limit: int = 500) -> list[tuple[Event, int]]:
        """Events waiting to be decided (accepted, due), received before `received_before`, most urgent then
        oldest first, with their priority: what a queue sweeper makes sure has a job."""
        now = _now()
        async with self._read() as db:
            rows = await db.execute_fetchall(
                """SELECT envelope, priority FROM events
                   WHERE status = 'accepted' AND (available_at IS NULL OR available_at <= ?) AND received_at < ?
                   ORDER BY priority DESC, rowid LIMIT ?""", (now, _iso(received_before), limit))
        return [(Event.model_validate_json(r["envelope"]), int(r["priority"])) for r in rows]

    async def claim_event(self, org: str, event_id: str, owner: str, *,
                          lease_seconds: float = 30.0) -> tuple[Claimed | None, str]:
        """Lease one named event to `owner` (a queue job names the event it is for): `(claimed, "claimed")` when
        it is waiting or its lease has run out (its holder died), else `(None, status)` with its status:
        `processing` (leased by a live holder: try again later), `decided`, `dead`, or `missing`."""
        now_dt = datetime.now(UTC)
        now = _iso(now_dt)
        until = _iso(now_dt + timedelta(seconds=lease_seconds))
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                """UPDATE events SET status = 'processing', lease_owner = ?, lease_until = ?,
                                     attempts = attempts + 1, updated_at = ?
                   WHERE org = ? AND id = ?
                     AND (status = 'accepted' OR (status = 'processing' AND lease_until < ?))
                   RETURNING envelope, attempts, channel""",
                (owner, until, now, org, event_id, now)))
            if rows:
                return claimed(rows[0]), "claimed"
            found = list(await db.execute_fetchall("SELECT status FROM events WHERE org = ? AND id = ?",
                                                   (org, event_id)))
        return None, (found[0]["status"] if found else "missing")

    async def renew_leases(self, owner: str, keys: Sequence[tuple[str, str]], lease_seconds: float) -> int:
        """Extend `owner`'s leases on the given (org, id) events; how many it still held."""
        if not keys:
            return 0
        until = _iso(datetime.now(UTC) + timedelta(seconds=lease_seconds))
        held = 0
        async with self._write() as db:
            for org, event_id in keys:
                cur = await db.execute(
                    "UPDATE events SET lease_until = ? WHERE org = ? AND id = ? AND status = 'processing' "
                    "AND lease_owner = ?", (until, org, event_id, owner))
                held += cur.rowcount
                await cur.close()
        return held

    async def release_events(self, owner: str, keys: Sequence[tuple[str, str]] | None = None) -> int:
        """Give `owner`'s leased events back to the queue (graceful shutdown); the claim is not counted
        as an attempt. All of the owner's leases when `keys` is None."""
        now = _now()
        async with self._write() as db:
            if keys is None:
                cur = await db.execute(
                    "UPDATE events SET status = 'accepted', lease_owner = NULL, lease_until = NULL, "
                    "attempts = max(attempts - 1, 0), updated_at = ? WHERE status = 'processing' AND lease_owner = ?",
                    (now, owner))
                n = cur.rowcount
                await cur.close()
                return n
            n = 0
            for org, event_id in keys:
                cur = await db.execute(
                    "UPDATE events SET status = 'accepted', lease_owner = NULL, lease_until = NULL, "
                    "attempts = max(attempts - 1, 0), updated_at = ? "
                    "WHERE org = ? AND id = ? AND status = 'processing' AND lease_owner = ?",
                    (now, org, event_id, owner))
                n += cur.rowcount
                await cur.close()
            return n

    async def recover_events(self, *, dead_owners: Sequence[str] = (), max_attempts: int | None = None) -> int:
        """Take back every event whose lease expired or whose owner is known to be dead (crash recovery):
        back to the queue, or — once it has been claimed `max_attempts` times, i.e. it was being decided each
        time a process died — to the dead-letter state, so that a poison event cannot crash-loop the service.
        Returns how many were taken back."""
        now = _now()
        taken = ("status = 'processing' AND lease_until < ?", (now,))
        clauses = [taken] + [("status = 'processing' AND lease_owner = ?", (o,)) for o in dead_owners]
        n = 0
        async with self._write() as db:
            for where, args in clauses:
                if max_attempts is not None:
                    cur = await db.execute(
                        "UPDATE events SET status = 'dead', lease_owner = NULL, lease_until = NULL, updated_at = ?, "
                        "error = 'the process died while deciding this event, ' || attempts || ' times' "
                        f"WHERE {where} AND attempts >= ?", (now, *args, max_attempts))
                    n += cur.rowcount
                    await cur.close()
                cur = await db.execute(
                    "UPDATE events SET status = 'accepted', lease_owner = NULL, lease_until = NULL, updated_at = ? "
                    f"WHERE {where}", (now, *args))
                n += cur.rowcount
                await cur.close()
        return n

    async def lease_owners(self) -> list[str]:
        """Owners currently holding leases (for crash recovery: which of them are still alive?)."""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT DISTINCT lease_owner FROM events WHERE status = 'processing' AND lease_owner IS NOT NULL")
        return [r[0] for r in rows]

    async def fail_event(self, org: str, event_id: str, owner: str, error: str, *, max_attempts: int,
                         retry_in: float) -> str:
        """Record a failed attempt: back to the queue after `retry_in` seconds, or to the dead-letter state
        ('dead') once `max_attempts` claims have failed. Returns the new status."""
        now_dt = datetime.now(UTC)
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                "SELECT attempts, status, lease_owner FROM events WHERE org = ? AND id = ?", (org, event_id)))
            held, status = failed_status(rows[0] if rows else None, owner, max_attempts)
            if not held:
                return status
            await db.execute(
                "UPDATE events SET status = ?, error = ?, lease_owner = NULL, lease_until = NULL, "
                "available_at = ?, updated_at = ? WHERE org = ? AND id = ?",
                (status, error[:2000], _iso(now_dt + timedelta(seconds=retry_in)), _iso(now_dt), org, event_id))
        return status

    async def retry_event(self, org: str, event_id: str) -> bool:
        """Move a dead-lettered event back to the queue with a fresh attempt count; False if it is not dead."""
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE events SET status = 'accepted', attempts = 0, available_at = NULL, updated_at = ? "
                "WHERE org = ? AND id = ? AND status = 'dead'", (_now(), org, event_id))
            ok = cur.rowcount == 1
            await cur.close()
        return ok

    async def list_events(self, org: str, *, status: str | None = None, limit: int = 50,
                          before: int | None = None, since: datetime | None = None,
                          until: datetime | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """A page of `org`'s inbox, newest first (`before` is the cursor: a rowid), received in [since, until)
        when given; and the next cursor."""
        where, args = event_filters(qmark, org, status, since, until)
        return await self._page("events", where, args, limit=limit, before=before, row=event_row)

    async def event_info(self, org: str, event_id: str) -> dict[str, Any] | None:
        """One inbox event of `org` with its status, attempts, error and decision id; None if absent."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                "SELECT rowid, * FROM events WHERE org = ? AND id = ?", (org, event_id)))
        return event_row(rows[0]) if rows else None

    async def inbox_depth(self) -> dict[str, int]:
        """How many inbox events are in each status (for /metrics and /healthz)."""
        async with self._read() as db:
            rows = await db.execute_fetchall("SELECT status, count(*) FROM events GROUP BY status")
        return status_counts(INBOX_STATUSES, rows)

    # ---- decisions of inbox events, approvals: `DecisionFlows`' SQL ---------------------------------------

    async def _dec_inbox_state(self, db: aiosqlite.Connection, org: str, event_id: str) -> tuple[bool, str | None]:
        rows = list(await db.execute_fetchall(
            "SELECT e.status, e.decision_id, d.record FROM events e LEFT JOIN decisions d "
            "ON d.id = e.decision_id WHERE e.org = ? AND e.id = ?", (org, event_id)))
        decided = rows[0]["record"] if rows and rows[0]["status"] == "decided" and rows[0]["record"] else None
        return bool(rows), decided

    async def _dec_mark_decided(self, db: aiosqlite.Connection, decision: Decision, now: str) -> None:
        await db.execute(
            "UPDATE events SET status = 'decided', decision_id = ?, error = NULL, lease_owner = NULL, "
            "lease_until = NULL, updated_at = ? WHERE org = ? AND id = ?",
            (decision.id, now, decision.org, decision.event_id))

    async def _dec_review_record(self, db: aiosqlite.Connection, org: str, decision_id: str) -> str | None:
        rows = list(await db.execute_fetchall(
            "SELECT record FROM decisions WHERE id = ? AND org = ?", (decision_id, org)))
        return rows[0]["record"] if rows else None

    _dec_save = staticmethod(_upsert_decision)
    _dec_actions = staticmethod(_insert_actions)
    _dec_stream = staticmethod(_append_stream)

    async def _dec_label(self, db: aiosqlite.Connection, label: dict[str, Any]) -> None:
        await db.execute(
            "INSERT INTO labels (org, id, decision_id, event_id, kind, intent, priority, pipeline, assignee, by, note, "
            "at, decided, envelope) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, "
            "(SELECT envelope FROM events WHERE org = ?1 AND id = ?4)) ON CONFLICT (org, id) DO NOTHING",
            (label["org"], label["id"], label["decision_id"], label["event_id"], label["kind"], label["intent"],
             label["priority"], label["pipeline"], label["assignee"], label["by"], label["note"], label["at"],
             json.dumps(label["decided"])))

    async def _labels(self, org: str, since: str | None, limit: int) -> list[dict[str, Any]]:
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT * FROM labels WHERE org = ? AND (? IS NULL OR at >= ?) ORDER BY at, id LIMIT ?",
                (org, since, since, limit))
        return [common_label(r) for r in rows]

    # ---- live stream -----------------------------------------------------------------------------------

    async def stream_after(self, org: str, after: int, *, limit: int = 200) -> list[tuple[int, str, dict[str, Any]]]:
        """`org`'s stream entries with seq > `after`, oldest first: (seq, kind, payload)."""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT seq, kind, payload FROM stream WHERE org = ? AND seq > ? ORDER BY seq LIMIT ?",
                (org, after, limit))
        return [(int(r["seq"]), r["kind"], json.loads(r["payload"])) for r in rows]

    async def prune_stream(self, older_than: datetime) -> int:
        """Delete stream entries created before `older_than` (a client resuming from before that starts at the
        oldest entry kept); how many were deleted."""
        async with self._write() as db:
            rows = await db.execute_fetchall("DELETE FROM stream WHERE created_at < ? RETURNING 1",
                                             (_bound(older_than, "older_than"),))
        return len(list(rows))

    async def stream_head(self, org: str) -> int:
        """The latest stream seq of `org` (0 when empty): where a client without Last-Event-ID starts."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall("SELECT coalesce(max(seq), 0) FROM stream WHERE org = ?", (org,)))
        return int(rows[0][0])

    # ---- API keys --------------------------------------------------------------------------------------

    async def add_api_key(self, key_id: str, org: str, name: str, key_hash: str) -> None:
        """Store a new API key by its hash (the key itself is never stored)."""
        async with self._write() as db:
            await db.execute("INSERT INTO api_keys (id, org, name, hash, created_at) VALUES (?, ?, ?, ?, ?)",
                             (key_id, org, name, key_hash, _now()))

    async def api_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        """The active (not revoked) key with this hash: `{id, org, name}`; None otherwise."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                "SELECT id, org, name FROM api_keys WHERE hash = ? AND revoked_at IS NULL", (key_hash,)))
        return api_key_row(rows[0] if rows else None)

    async def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key by id; False if there is no such active key."""
        async with self._write() as db:
            cur = await db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                   (_now(), key_id))
            ok = cur.rowcount == 1
            await cur.close()
        return ok

    async def list_api_keys(self, org: str | None = None) -> list[dict[str, Any]]:
        """Keys (never their secrets): id, org, name, created_at, revoked_at."""
        sql = "SELECT id, org, name, created_at, revoked_at FROM api_keys"
        args: list[Any] = []
        if org:
            sql += " WHERE org = ?"
            args.append(org)
        async with self._read() as db:
            rows = await db.execute_fetchall(sql + " ORDER BY created_at", args)
        return [dict(r) for r in rows]

    # ---- timers (reminder:due and other delayed internal events) ---------------------------------------

    async def add_timer(self, event: Event, due_at: datetime) -> bool:
        """Schedule `event` to enter the inbox at `due_at`; False if a timer with its id already exists."""
        async with self._write() as db:
            cur = await db.execute(
                "INSERT INTO timers (org, id, due_at, envelope) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (event.org, event.id, _bound(due_at, "due_at"), event.model_dump_json()))
            ok = cur.rowcount == 1
            await cur.close()
        return ok

    async def fire_due_timers(self, now: datetime, *, limit: int = 500) -> list[Event]:
        """Move every timer due by `now` into the inbox (as channel 'timer') and mark it fired, in one
        transaction: a timer fires exactly once. Returns the events that entered the inbox."""
        stamp = _bound(now, "now")
        fired: list[Event] = []
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                "SELECT org, id, envelope FROM timers WHERE fired_at IS NULL AND due_at <= ? ORDER BY due_at LIMIT ?",
                (stamp, limit)))
            for r in rows:
                event = Event.model_validate_json(r["envelope"])
                cur = await db.execute(
                    "INSERT INTO events (org, id, source, type, envelope, status, error, received_at, updated_at, "
                    "priority, channel) VALUES (?, ?, ?, ?, ?, 'accepted', NULL, ?, ?, 3, 'timer') "
                    "ON CONFLICT (org, id) DO NOTHING",
                    (event.org, event.id, str(event.source), event.type, r["envelope"], stamp, stamp))
                if cur.rowcount == 1:
                    fired.append(event)
                await cur.close()
                await db.execute("UPDATE timers SET fired_at = ? WHERE org = ? AND id = ?", (stamp, r["org"], r["id"]))
        return fired

    # ---- analytics -------------------------------------------------------------------------------------

    async def analytics(self, org: str, since: datetime, until: datetime) -> dict[str, Any]:
        """Counts, LLM usage, latency percentiles and approval turnaround of `org`'s decisions created in
        [since, until)."""
        lo, hi = _bound(since, "since"), _bound(until, "until")
        counts: dict[str, dict[str, int]] = {}
        async with self._read() as db:
            for column in ANALYTICS_COLUMNS:
                rows = await db.execute_fetchall(
                    f"SELECT {column}, count(*) FROM decisions WHERE org = ? AND created_at >= ? AND created_at < ? "
                    f"GROUP BY {column} ORDER BY {column}", (org, lo, hi))
                counts[column] = {str(r[0]): int(r[1]) for r in rows}
            rows = list(await db.execute_fetchall(
                """SELECT count(*),
                          sum(json_extract(record, '$.llm') IS NOT NULL),
                          coalesce(sum(json_extract(record, '$.llm.input_tokens')), 0),
                          coalesce(sum(json_extract(record, '$.llm.output_tokens')), 0)
                   FROM decisions WHERE org = ? AND created_at >= ? AND created_at < ?""", (org, lo, hi)))
            latencies = [float(r[0]) for r in await db.execute_fetchall(
                "SELECT json_extract(record, '$.execution_ms') FROM decisions "
                "WHERE org = ? AND created_at >= ? AND created_at < ? ORDER BY 1 LIMIT 200000", (org, lo, hi))
                if r[0] is not None]
            llm_latencies = [float(r[0]) for r in await db.execute_fetchall(
                "SELECT json_extract(record, '$.llm.latency_ms') FROM decisions "
                "WHERE org = ? AND created_at >= ? AND created_at < ? AND json_extract(record, '$.llm') IS NOT NULL "
                "ORDER BY 1 LIMIT 200000", (org, lo, hi)) if r[0] is not None]
            reviews = list(await db.execute_fetchall(
                "SELECT created_at, json_extract(record, '$.trace.review.at'), "
                "json_extract(record, '$.trace.review.verdict') FROM decisions "
                "WHERE org = ? AND created_at >= ? AND created_at < ? "
                "AND json_extract(record, '$.trace.review') IS NOT NULL", (org, lo, hi)))
        return analytics_report(org, since, until, counts=counts, totals=rows[0], latencies=latencies,
                                llm_latencies=llm_latencies, reviews=reviews)
