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

import asyncio
import base64
import binascii
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiosqlite

from engine.models import Decision, Event

MAX_PAGE = 500
"""Upper bound of `list_decisions(limit=...)`."""


@dataclass(frozen=True)
class Migration:
    """One schema step: applied with its `schema_version` row in a single transaction."""

    version: int
    description: str
    statements: tuple[str, ...]


# Append only: never edit a step that has shipped; add a new one. Statements run one by one inside the
# step's transaction (no executescript, which would commit on its own).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "event inbox and decisions", (
        """CREATE TABLE events (
               org          TEXT NOT NULL,
               id           TEXT NOT NULL,
               source       TEXT NOT NULL,
               type         TEXT NOT NULL,
               envelope     TEXT NOT NULL CHECK (json_valid(envelope)),
               status       TEXT NOT NULL,
               error        TEXT,
               received_at  TEXT NOT NULL,
               updated_at   TEXT NOT NULL,
               PRIMARY KEY (org, id)
           )""",
        "CREATE INDEX events_org_status ON events (org, status)",
        """CREATE TABLE decisions (
               id             TEXT PRIMARY KEY,
               org            TEXT NOT NULL,
               event_id       TEXT NOT NULL,
               status         TEXT NOT NULL,
               intent         TEXT NOT NULL,
               decision_type  TEXT NOT NULL,
               decided_by     TEXT NOT NULL,
               created_at     TEXT NOT NULL,
               updated_at     TEXT NOT NULL,
               record         TEXT NOT NULL CHECK (json_valid(record))
           )""",
        "CREATE INDEX decisions_org_created ON decisions (org, created_at DESC, id)",
        "CREATE INDEX decisions_org_status ON decisions (org, status)",
        "CREATE INDEX decisions_org_intent ON decisions (org, intent)",
        "CREATE INDEX decisions_org_type ON decisions (org, decision_type)",
        "CREATE INDEX decisions_event ON decisions (event_id)",
    )),
    Migration(2, "decision source, agent configs and counters", (
        "ALTER TABLE decisions ADD COLUMN source TEXT",
        # The source is the decision's input.source, else the inbox's record of the event.
        """UPDATE decisions SET source = COALESCE(
               json_extract(record, '$.input.source'),
               (SELECT e.source FROM events e WHERE e.org = decisions.org AND e.id = decisions.event_id))""",
        "CREATE INDEX decisions_org_source ON decisions (org, source)",
        # Set once a decision has been saved as EXECUTED, never cleared: counts success only once.
        "ALTER TABLE decisions ADD COLUMN ever_executed INTEGER NOT NULL DEFAULT 0",
        "UPDATE decisions SET ever_executed = (status = 'EXECUTED')",
        """CREATE TABLE agent_configs (
               seq         INTEGER PRIMARY KEY AUTOINCREMENT,
               org         TEXT NOT NULL,
               revision    TEXT NOT NULL,
               files       TEXT NOT NULL CHECK (json_valid(files)),
               created_at  TEXT NOT NULL
           )""",
        "CREATE INDEX agent_configs_org_seq ON agent_configs (org, seq DESC)",
        """CREATE TABLE agent_counters (
               org                   TEXT PRIMARY KEY,
               total_decisions       INTEGER NOT NULL DEFAULT 0,
               successful_decisions  INTEGER NOT NULL DEFAULT 0,
               updated_at            TEXT NOT NULL
           )""",
        """INSERT INTO agent_counters (org, total_decisions, successful_decisions, updated_at)
           SELECT org, count(*), sum(ever_executed), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
           FROM decisions GROUP BY org""",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def _iso(dt: datetime) -> str:
    """Fixed-width UTC ISO-8601 (sorts as text). A naive datetime is taken to be UTC already."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(text: str) -> datetime:
    """Inverse of `_iso` (also reads SQLite's millisecond `strftime('%f')` form)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _prepare_path(name: str) -> str:
    """`name` with `~` expanded, after creating its parent directories."""
    path = Path(name).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def _now() -> str:
    return _iso(datetime.now(UTC))


def _bound(dt: datetime, name: str) -> str:
    if dt.tzinfo is None:
        raise ValueError(f"{name} needs a UTC offset (a timezone-aware datetime)")
    return _iso(dt)


def _encode_cursor(created_at: str, decision_id: str) -> str:
    raw = json.dumps({"c": created_at, "i": decision_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        created_at, decision_id = data["c"], data["i"]
    except (binascii.Error, ValueError, TypeError, KeyError) as err:
        raise ValueError("invalid cursor") from err
    if not isinstance(created_at, str) or not isinstance(decision_id, str):
        raise ValueError("invalid cursor")
    return created_at, decision_id


def _one_or_many(column: str, value: str | Sequence[str] | None, where: list[str], args: list[Any]) -> None:
    """Add `column = ?` (one value) or `column IN (...)` (several) to a WHERE clause."""
    if value is None:
        return
    values = [str(value)] if isinstance(value, str) else [str(v) for v in value]
    if not values:
        raise ValueError(f"{column}: empty filter")
    if len(values) == 1:
        where.append(f"{column} = ?")
    else:
        where.append(f"{column} IN ({', '.join('?' * len(values))})")
    args.extend(values)


class SQLiteStore:
    """Decisions, the event inbox, agent configs and counters in one SQLite file (WAL)."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        """Use `await SQLiteStore.open(path)`; this only wraps an already configured connection."""
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, *,
                   synchronous: Literal["FULL", "NORMAL"] = "FULL") -> SQLiteStore:
        """Open (creating it and its parent directories if needed) and migrate the database at `path`.

        `":memory:"` gives a private in-memory database (no WAL there).
        """
        # synchronous=FULL: with WAL, NORMAL never corrupts the file but can lose the last commits on power
        # loss or an OS crash. We acknowledge events to senders and hand decisions out as contracts right
        # after committing, so a commit must survive a power cut; FULL costs one WAL fsync per commit, which
        # is small next to an LLM call. Pass synchronous="NORMAL" where that trade-off is wrong (bulk loads).
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be 'FULL' or 'NORMAL'")
        name = str(path)
        if name != ":memory:":
            name = await asyncio.to_thread(_prepare_path, name)
        db = await aiosqlite.connect(name, isolation_level=None)  # autocommit: we issue BEGIN/COMMIT
        try:
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA busy_timeout = 5000")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(f"PRAGMA synchronous = {synchronous}")
            await db.execute("PRAGMA foreign_keys = ON")
            store = cls(db, name)
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            await self._db.close()

    async def __aenter__(self) -> SQLiteStore:
        """`async with await SQLiteStore.open(p) as store:` closes the store on exit."""
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """Close the store."""
        await self.close()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, for reads, while no other task of this store is inside a transaction."""
        async with self._lock:
            yield self._db

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One `BEGIN IMMEDIATE` … `COMMIT` transaction; rolled back on any exception (cancellation too)."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                # Suppressed: already ended (e.g. a cancelled COMMIT that went through after all).
                with contextlib.suppress(sqlite3.OperationalError):
                    await self._db.execute("ROLLBACK")
                raise

    async def _migrate(self) -> None:
        """Apply the missing steps of `MIGRATIONS`, each in its own transaction."""
        async with self._lock:
            await self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                "description TEXT NOT NULL, applied_at TEXT NOT NULL)")
        for step in MIGRATIONS:
            async with self._write() as db:
                # Re-read inside the write lock: another process may have migrated meanwhile.
                rows = await db.execute_fetchall("SELECT coalesce(max(version), 0) FROM schema_version")
                current = next(iter(rows))[0]
                if current > SCHEMA_VERSION:
                    raise RuntimeError(f"{self.path}: schema version {current} is newer than this code "
                                       f"knows ({SCHEMA_VERSION}); upgrade Astralis")
                if current >= step.version:
                    continue
                if current != step.version - 1:
                    raise RuntimeError(f"{self.path}: schema version {current} has no path to {step.version}")
                for statement in step.statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                    (step.version, step.description, _now()))

    async def schema_version(self) -> int:
        """The schema version of the open database (== `SCHEMA_VERSION` once opened)."""
        async with self._read() as db:
            rows = await db.execute_fetchall("SELECT coalesce(max(version), 0) FROM schema_version")
        return int(next(iter(rows))[0])

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
        if not rows:
            return None
        row = rows[0]
        return {"org": row["org"], "id": row["id"], "envelope": json.loads(row["envelope"]),
                "status": row["status"], "error": row["error"],
                "received_at": _parse_iso(row["received_at"]), "updated_at": _parse_iso(row["updated_at"])}

    async def set_event_status(self, org: str, event_id: str, status: str, error: str | None = None) -> None:
        """Move an inbox event to `status` (with `error`, cleared when None); KeyError if unknown."""
        async with self._write() as db:
            cur = await db.execute("UPDATE events SET status = ?, error = ?, updated_at = ? "
                                   "WHERE org = ? AND id = ?", (status, error, _now(), org, event_id))
            found = cur.rowcount == 1
            await cur.close()
        if not found:
            raise KeyError(f"no event {event_id!r} for org {org!r}")

    # ---- decisions -------------------------------------------------------------------------------

    async def save_decision(self, decision: Decision) -> None:
        """Insert or update `decision` by id, and the org's counters, in one transaction.

        `total_decisions` grows on first insert only; `successful_decisions` the first time the decision
        is saved as EXECUTED. Dry-run decisions are refused (ValueError): the simulator has no side effects.
        """
        if decision.dry_run:
            raise ValueError(f"decision {decision.id} is a dry run; dry runs are never stored")
        record = decision.model_dump_json()
        executed = decision.status == "EXECUTED"
        now = _now()
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                "SELECT org, ever_executed FROM decisions WHERE id = ?", (decision.id,)))
            if rows and rows[0]["org"] != decision.org:
                raise ValueError(f"decision {decision.id} belongs to another org")
            first_insert = not rows
            first_success = executed and (first_insert or not rows[0]["ever_executed"])
            await db.execute(
                """INSERT INTO decisions (id, org, event_id, source, status, intent, decision_type,
                                          decided_by, created_at, updated_at, ever_executed, record)
                   VALUES (?, ?, ?,
                           COALESCE(?, (SELECT e.source FROM events e WHERE e.org = ? AND e.id = ?)),
                           ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET
                       event_id = excluded.event_id, source = excluded.source, status = excluded.status,
                       intent = excluded.intent, decision_type = excluded.decision_type,
                       decided_by = excluded.decided_by, created_at = excluded.created_at,
                       updated_at = excluded.updated_at,
                       ever_executed = max(decisions.ever_executed, excluded.ever_executed),
                       record = excluded.record""",
                (decision.id, decision.org, decision.event_id,
                 decision.input.get("source"), decision.org, decision.event_id,
                 decision.status, str(decision.intent), str(decision.decision_type), decision.decided_by,
                 _iso(decision.created_at), now, int(executed), record))
            if first_insert or first_success:
                await db.execute(
                    """INSERT INTO agent_counters (org, total_decisions, successful_decisions, updated_at)
                       VALUES (?, ?, ?, ?)
                       ON CONFLICT (org) DO UPDATE SET
                           total_decisions = total_decisions + excluded.total_decisions,
                           successful_decisions = successful_decisions + excluded.successful_decisions,
                           updated_at = excluded.updated_at""",
                    (decision.org, int(first_insert), int(first_success), now))

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

    async def list_decisions(
        self, org: str, *,
        status: str | Sequence[str] | None = None,
        intent: str | Sequence[str] | None = None,
        decision_type: str | Sequence[str] | None = None,
        source: str | Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Decision], str | None]:
        """A page of `org`'s decisions, newest first, and the cursor of the next page (None at the end).

        Filters take one value or several (any of). `since` is inclusive, `until` exclusive (both need a
        timezone). Ties on `created_at` are ordered by id, ascending. `limit` is capped at 500. Pass the
        same filters with the returned cursor to continue; ValueError on a malformed cursor.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        limit = min(limit, MAX_PAGE)
        where, args = ["org = ?"], [org]
        _one_or_many("status", status, where, args)
        _one_or_many("intent", intent, where, args)
        _one_or_many("decision_type", decision_type, where, args)
        _one_or_many("source", source, where, args)
        if since is not None:
            where.append("created_at >= ?")
            args.append(_bound(since, "since"))
        if until is not None:
            where.append("created_at < ?")
            args.append(_bound(until, "until"))
        if cursor is not None:
            after_created, after_id = _decode_cursor(cursor)
            where.append("(created_at < ? OR (created_at = ? AND id > ?))")
            args.extend([after_created, after_created, after_id])
        sql = (f"SELECT id, created_at, record FROM decisions WHERE {' AND '.join(where)} "
               "ORDER BY created_at DESC, id ASC LIMIT ?")
        async with self._read() as db:
            rows = list(await db.execute_fetchall(sql, [*args, limit + 1]))
        page = rows[:limit]
        decisions = [Decision.model_validate_json(r["record"]) for r in page]
        next_cursor = _encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
        return decisions, next_cursor

    # ---- agent configs and counters ------------------------------------------------------------------

    async def save_agent_config(self, org: str, revision: str, files: dict[str, str]) -> None:
        """Record `org`'s agent configuration `revision` (file name → text) as its latest.

        Every save is kept as history; saving what is already the latest (same revision and files) is a
        no-op, saving an older revision again makes it the latest (a rollback).
        """
        payload = json.dumps(files, sort_keys=True, ensure_ascii=False)
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                "SELECT revision, files FROM agent_configs WHERE org = ? ORDER BY seq DESC LIMIT 1", (org,)))
            if rows and rows[0]["revision"] == revision and rows[0]["files"] == payload:
                return
            await db.execute(
                "INSERT INTO agent_configs (org, revision, files, created_at) VALUES (?, ?, ?, ?)",
                (org, revision, payload, _now()))

    async def agent_config(self, org: str) -> dict[str, Any] | None:
        """`org`'s latest configuration `{org, revision, files, created_at}`, or None."""
        history = await self.agent_config_history(org, limit=1)
        return history[0] if history else None

    async def agent_config_history(self, org: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """`org`'s configurations, latest first, in the shape of `agent_config`."""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT org, revision, files, created_at FROM agent_configs WHERE org = ? "
                "ORDER BY seq DESC LIMIT ?", (org, max(1, min(limit, MAX_PAGE))))
        return [{"org": r["org"], "revision": r["revision"], "files": json.loads(r["files"]),
                 "created_at": _parse_iso(r["created_at"])} for r in rows]

    async def counters(self, org: str) -> dict[str, int]:
        """`{"total_decisions", "successful_decisions"}` of `org` (zeros when it has none)."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                "SELECT total_decisions, successful_decisions FROM agent_counters WHERE org = ?", (org,)))
        if not rows:
            return {"total_decisions": 0, "successful_decisions": 0}
        return {"total_decisions": int(rows[0][0]), "successful_decisions": int(rows[0][1])}
