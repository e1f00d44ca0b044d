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
from typing import Any, Literal

import asyncpg

from adapters.pg_base import PGBase, append_stream, arg, upsert_decision
from adapters.sqlite_base import _bound, _iso, _now, _parse_iso
from adapters.sqlite_inbox import (
    AWAITING,
    SIGNATURE_MEMORY_SECONDS,
    Accepted,
    Claimed,
    InboxItem,
    _event_row,
    _kind,
    _percentiles,
)
from engine.models import Decision, Event


class PGInboxTables(PGBase):
    """Inbox, outbox, stream, approvals, keys, timers and analytics (mixed into `PGStore`)."""

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
                its = [it for _, it in bulk]
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
                       RETURNING org, id""",
                    [it.event.org for it in its], [it.event.id for it in its], [str(it.event.source) for it in its],
                    [it.event.type for it in its], [it.event.model_dump_json() for it in its],
                    ["processing" if it.lease_owner else "accepted" for it in its], [it.priority for it in its],
                    [it.channel for it in its], [1 if it.lease_owner else 0 for it in its],
                    [it.lease_owner for it in its],
                    [_iso(now_dt + timedelta(seconds=it.lease_seconds)) if it.lease_owner else None for it in its],
                    now)
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
                    out[i] = Accepted(key[0], key[1], True, "processing" if it.lease_owner else "accepted", None)
                else:
                    out[i] = Accepted(key[0], key[1], False, stored[key]["status"], stored[key]["decision_id"])
        return [out[i] for i in range(len(items))]

    async def claim_events(self, owner: str, *, limit: int = 8, lease_seconds: float = 30.0) -> list[Claimed]:
        """Lease up to `limit` ready events to `owner`, most urgent first, then oldest first. Rows another
        process is claiming at the same moment are skipped (`SKIP LOCKED`), never claimed twice."""
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
        return [Claimed(Event.model_validate_json(r["envelope"]), int(r["attempts"]), r["channel"])
                for r in sorted(rows, key=lambda r: r["rowid"])]

    async def waiting_events(self, *, received_before: datetime, limit: int = 500) -> list[tuple[Event, int]]:
        """Events waiting to be decided (accepted, due), received before `received_before`, most urgent then
        oldest first, with their priority: what a queue sweeper makes sure has a job."""
        async with self._read() as db:
            rows = await db.fetch(
                """SELECT envelope, priority FROM events
                   WHERE status = 'accepted' AND (available_at IS NULL OR available_at <= $1) AND received_at < $2
                   ORDER BY priority DESC, rowid LIMIT $3""", _now(), _iso(received_before), limit)
        return [(Event.model_validate_json(r["envelope"]), int(r["priority"])) for r in rows]

    async def claim_event(self, org: str, event_id: str, owner: str, *,
                          lease_seconds: float = 30.0) -> tuple[Claimed | None, str]:
        """Lease one named event to `owner` (a queue job names the event it is for): `(claimed, "claimed")` when
        it is waiting or its lease has run out (its holder died), else `(None, status)` with its status:
        `processing` (leased by a live holder: try again later), `decided`, `dead`, or `missing`. Of two
        processes claiming it at once, the second waits for the first's row lock, then finds it leased."""
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
                return Claimed(Event.model_validate_json(row["envelope"]), int(row["attempts"]), row["channel"]), \
                    "claimed"
            status = await db.fetchval("SELECT status FROM events WHERE org = $1 AND id = $2", org, event_id)
        return None, (status if status is not None else "missing")

    async def renew_leases(self, owner: str, keys: Sequence[tuple[str, str]], lease_seconds: float) -> int:
        """Extend `owner`'s leases on the given (org, id) events; how many it still held."""
        if not keys:
            return 0
        until = _iso(datetime.now(UTC) + timedelta(seconds=lease_seconds))
        async with self._write() as db:
            return len(await db.fetch(
                "UPDATE events e SET lease_until = $1 FROM unnest($2::text[], $3::text[]) AS k(org, id) "
                "WHERE e.org = k.org AND e.id = k.id AND e.status = 'processing' AND e.lease_owner = $4 "
                "RETURNING 1", until, [k[0] for k in keys], [k[1] for k in keys], owner))

    async def release_events(self, owner: str, keys: Sequence[tuple[str, str]] | None = None) -> int:
        """Give `owner`'s leased events back to the queue (graceful shutdown); the claim is not counted
        as an attempt. All of the owner's leases when `keys` is None."""
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
        """Take back every event whose lease expired or whose owner is known to be dead (crash recovery):
        back to the queue, or — once it has been claimed `max_attempts` times, i.e. it was being decided each
        time a process died — to the dead-letter state, so that a poison event cannot crash-loop the service.
        Returns how many were taken back."""
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
        """Owners currently holding leases (for crash recovery: which of them are still alive?)."""
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT DISTINCT lease_owner FROM events WHERE status = 'processing' AND lease_owner IS NOT NULL")
        return [r[0] for r in rows]

    async def complete_event(self, decision: Decision) -> tuple[Decision, bool]:
        """Record the decision of an inbox event, its outbox actions and its stream entry, and mark the event
        decided — all in one transaction. Exactly one decision per event: when the event is already decided
        (another worker got there first after a lease expired), nothing is written and the stored decision
        is returned with False."""
        return (await self.complete_events([decision]))[0]

    async def complete_events(self, decisions: Sequence[Decision]) -> list[tuple[Decision, bool]]:
        """`complete_event` for several decisions in ONE transaction (the workers' group commit).

        The batch's inbox rows are locked first, in key order (two workers completing overlapping batches
        wait for each other instead of deadlocking); a worker that waited then reads the event as the other
        left it — decided — and writes nothing."""
        for d in decisions:
            if d.dry_run:
                raise ValueError(f"decision {d.id} is a dry run; dry runs are never stored")
        now = _now()
        out: list[tuple[Decision, bool]] = []
        async with self._write() as db:
            keys = sorted({(d.org, d.event_id) for d in decisions})
            await db.execute(
                "SELECT 1 FROM events e JOIN unnest($1::text[], $2::text[]) AS k(org, id) "
                "ON e.org = k.org AND e.id = k.id ORDER BY e.org, e.id FOR UPDATE OF e",
                [k[0] for k in keys], [k[1] for k in keys])
            for decision in decisions:
                row = await db.fetchrow(
                    "SELECT e.status, d.record FROM events e LEFT JOIN decisions d ON d.id = e.decision_id "
                    "WHERE e.org = $1 AND e.id = $2", decision.org, decision.event_id)
                if row is not None and row["status"] == "decided" and row["record"]:
                    out.append((Decision.model_validate_json(row["record"]), False))
                    continue
                await upsert_decision(db, decision)
                if decision.status == "EXECUTED":
                    await insert_actions(db, decision, now)
                if row is not None:
                    await db.execute(
                        "UPDATE events SET status = 'decided', decision_id = $1, error = NULL, lease_owner = NULL, "
                        "lease_until = NULL, updated_at = $2 WHERE org = $3 AND id = $4",
                        decision.id, now, decision.org, decision.event_id)
                await append_stream(db, decision, _kind(decision), new=True, now=now)
                out.append((decision, True))
        return out

    async def fail_event(self, org: str, event_id: str, owner: str, error: str, *, max_attempts: int,
                         retry_in: float) -> str:
        """Record a failed attempt: back to the queue after `retry_in` seconds, or to the dead-letter state
        ('dead') once `max_attempts` claims have failed. Returns the new status."""
        now_dt = datetime.now(UTC)
        async with self._write() as db:
            row = await db.fetchrow(
                "SELECT attempts, status, lease_owner FROM events WHERE org = $1 AND id = $2 FOR UPDATE", org, event_id)
            if row is None or row["status"] != "processing" or row["lease_owner"] != owner:
                return row["status"] if row is not None else "missing"
            status = "dead" if row["attempts"] >= max_attempts else "accepted"
            await db.execute(
                "UPDATE events SET status = $1, error = $2, lease_owner = NULL, lease_until = NULL, "
                "available_at = $3, updated_at = $4 WHERE org = $5 AND id = $6",
                status, error[:2000], _iso(now_dt + timedelta(seconds=retry_in)), _iso(now_dt), org, event_id)
        return status

    async def retry_event(self, org: str, event_id: str) -> bool:
        """Move a dead-lettered event back to the queue with a fresh attempt count; False if it is not dead."""
        async with self._write() as db:
            return await db.fetchval(
                "UPDATE events SET status = 'accepted', attempts = 0, available_at = NULL, updated_at = $1 "
                "WHERE org = $2 AND id = $3 AND status = 'dead' RETURNING true", _now(), org, event_id) or False

    async def list_events(self, org: str, *, status: str | None = None, limit: int = 50,
                          before: int | None = None, since: datetime | None = None,
                          until: datetime | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """A page of `org`'s inbox, newest first (`before` is the cursor: a rowid), received in [since, until)
        when given; and the next cursor."""
        args: list[Any] = []
        where = [f"org = {arg(args, org)}"]
        if status:
            where.append(f"status = {arg(args, status)}")
        if since is not None:
            where.append(f"received_at >= {arg(args, _bound(since, 'since'))}")
        if until is not None:
            where.append(f"received_at < {arg(args, _bound(until, 'until'))}")
        return await self._page("events", where, args, limit=limit, before=before, row=_event_row)

    async def event_info(self, org: str, event_id: str) -> dict[str, Any] | None:
        """One inbox event of `org` with its status, attempts, error and decision id; None if absent."""
        async with self._read() as db:
            row = await db.fetchrow("SELECT * FROM events WHERE org = $1 AND id = $2", org, event_id)
        return _event_row(row) if row is not None else None

    async def inbox_depth(self) -> dict[str, int]:
        """How many inbox events are in each status (for /metrics and /healthz)."""
        async with self._read() as db:
            rows = await db.fetch("SELECT status, count(*) FROM events GROUP BY status")
        counts = {"accepted": 0, "processing": 0, "decided": 0, "dead": 0}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    # ---- approvals -------------------------------------------------------------------------------------

    async def resolve_decision(self, org: str, decision_id: str, verdict: Literal["approve", "reject"],
                               by: str, note: str | None) -> tuple[Decision | None, str]:
        """Approve (status EXECUTED, actions into the outbox) or reject (REJECTED, nothing runs) a decision
        awaiting approval, in one transaction. Returns (decision, outcome): outcome is "done", "repeat" (the
        same verdict was already given: nothing changes), "conflict" (not awaiting approval) or "missing".
        The decision's row is locked first: of two reviewers at once, the second sees the first's verdict."""
        async with self._write() as db:
            record = await db.fetchval(
                "SELECT record FROM decisions WHERE id = $1 AND org = $2 FOR UPDATE", decision_id, org)
            if record is None:
                return None, "missing"
            decision = Decision.model_validate_json(record)
            review = decision.trace.get("review") or {}
            if review.get("verdict") == verdict:
                return decision, "repeat"
            if decision.status not in AWAITING:
                return decision, "conflict"
            now_dt = datetime.now(UTC)
            now = _iso(now_dt)
            decision.trace["review"] = {"verdict": verdict, "by": by, "note": note, "at": now_dt.isoformat(),
                                        "previous_status": decision.status}
            if verdict == "approve":
                decision.status = "EXECUTED"
                decision.executed_at = now_dt
                await upsert_decision(db, decision)
                await insert_actions(db, decision, now)
                await append_stream(db, decision, "approved", new=False, now=now)
            else:
                decision.status = "REJECTED"
                await upsert_decision(db, decision)
                await append_stream(db, decision, "rejected", new=False, now=now)
        return decision, "done"

    # ---- live stream -----------------------------------------------------------------------------------

    async def stream_after(self, org: str, after: int, *, limit: int = 200) -> list[tuple[int, str, dict[str, Any]]]:
        """`org`'s stream entries with seq > `after`, oldest first: (seq, kind, payload)."""
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT seq, kind, payload FROM stream WHERE org = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                org, after, limit)
        return [(int(r["seq"]), r["kind"], json.loads(r["payload"])) for r in rows]

    async def prune_stream(self, older_than: datetime) -> int:
        """Delete stream entries created before `older_than` (a client resuming from before that starts at the
        oldest entry kept); how many were deleted."""
        async with self._write() as db:
            rows = await db.fetch("DELETE FROM stream WHERE created_at < $1 RETURNING 1",
                                  _bound(older_than, "older_than"))
        return len(rows)

    async def stream_head(self, org: str) -> int:
        """The latest stream seq of `org` (0 when empty): where a client without Last-Event-ID starts."""
        async with self._read() as db:
            return int(await db.fetchval("SELECT coalesce(max(seq), 0) FROM stream WHERE org = $1", org))

    # ---- API keys --------------------------------------------------------------------------------------

    async def add_api_key(self, key_id: str, org: str, name: str, key_hash: str) -> None:
        """Store a new API key by its hash (the key itself is never stored)."""
        async with self._write() as db:
            await db.execute("INSERT INTO api_keys (id, org, name, hash, created_at) VALUES ($1, $2, $3, $4, $5)",
                             key_id, org, name, key_hash, _now())

    async def api_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        """The active (not revoked) key with this hash: `{id, org, name}`; None otherwise."""
        async with self._read() as db:
            row = await db.fetchrow(
                "SELECT id, org, name FROM api_keys WHERE hash = $1 AND revoked_at IS NULL", key_hash)
        return {"id": row["id"], "org": row["org"], "name": row["name"]} if row is not None else None

    async def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key by id; False if there is no such active key."""
        async with self._write() as db:
            return await db.fetchval("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL "
                                     "RETURNING true", _now(), key_id) or False

    async def list_api_keys(self, org: str | None = None) -> list[dict[str, Any]]:
        """Keys (never their secrets): id, org, name, created_at, revoked_at."""
        sql = "SELECT id, org, name, created_at, revoked_at FROM api_keys"
        args: list[Any] = []
        if org:
            sql += f" WHERE org = {arg(args, org)}"
        async with self._read() as db:
            rows = await db.fetch(sql + " ORDER BY created_at", *args)
        return [dict(r) for r in rows]

    # ---- timers (reminder:due and other delayed internal events) ---------------------------------------

    async def add_timer(self, event: Event, due_at: datetime) -> bool:
        """Schedule `event` to enter the inbox at `due_at`; False if a timer with its id already exists."""
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
        """Counts, LLM usage, latency percentiles and approval turnaround of `org`'s decisions created in
        [since, until)."""
        lo, hi = _bound(since, "since"), _bound(until, "until")
        window = "FROM decisions WHERE org = $1 AND created_at >= $2 AND created_at < $3"
        records = f"(SELECT created_at, record::jsonb AS r {window}) d"
        counts: dict[str, dict[str, int]] = {}
        # `nullif(…, 'null')`: a JSON null reads as absent, as SQLite's json_extract makes it. One snapshot for
        # every query, so the numbers agree with each other.
        async with self._read() as db, db.transaction(readonly=True, isolation="repeatable_read"):
            for column in ("status", "intent", "decision_type", "source", "decided_by"):
                rows = await db.fetch(
                    f"SELECT {column}, count(*) {window} GROUP BY {column} ORDER BY {column}", org, lo, hi)
                counts[column] = {str(r[0]): int(r[1]) for r in rows}
            row = await db.fetchrow(
                f"""SELECT count(*), count(nullif(r -> 'llm', 'null')),
                           coalesce(sum((r #>> '{{llm,input_tokens}}')::numeric), 0),
                           coalesce(sum((r #>> '{{llm,output_tokens}}')::numeric), 0)
                    FROM {records}""", org, lo, hi)
            total, llm_calls, tokens_in, tokens_out = (int(v or 0) for v in row)
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
        turnaround = sorted((_parse_iso(r[1]) - _parse_iso(r[0])).total_seconds() for r in reviews)
        return {
            "org": org, "since": since.isoformat(), "until": until.isoformat(), "total": total,
            "by_status": counts["status"], "by_intent": counts["intent"],
            "by_decision_type": counts["decision_type"], "by_source": counts["source"],
            "by_decided_by": counts["decided_by"],
            "llm": {"calls": llm_calls, "call_rate": round(llm_calls / total, 4) if total else 0.0,
                    "input_tokens": tokens_in, "output_tokens": tokens_out,
                    "latency_ms": _percentiles(llm_latencies)},
            "latency_ms": _percentiles(latencies),
            "approvals": {"reviewed": len(reviews),
                          "approved": sum(1 for r in reviews if r[2] == "approve"),
                          "rejected": sum(1 for r in reviews if r[2] == "reject"),
                          "awaiting": counts["status"].get("REQUIRES_APPROVAL", 0) + counts["status"].get("PENDING", 0),
                          "turnaround_seconds": _percentiles(turnaround)},
        }


async def insert_actions(db: asyncpg.Connection, decision: Decision, now: str) -> None:
    """The decision's actions into the outbox; an action already there (same key) is left alone."""
    if not decision.actions:
        return
    await db.executemany(
        "INSERT INTO actions (key, org, decision_id, idx, type, params, status, available_at, created_at, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7, $7) ON CONFLICT (key) DO NOTHING",
        [(a.idempotency_key or f"{decision.id}:{i}", decision.org, decision.id, i, str(a.type),
          json.dumps(a.params, default=str), now) for i, a in enumerate(decision.actions)])
