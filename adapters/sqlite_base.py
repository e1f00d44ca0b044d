"""The SQLite file underneath every store: the schema and its migrations, the connection, transactions.

One `aiosqlite` connection per store. SQLite serialises writers anyway, and one connection shared by many
asyncio tasks would interleave their transactions, so every operation holds `self._lock` for its whole
transaction. Writes use `BEGIN IMMEDIATE` so that a second process waits (busy_timeout) instead of failing
half-way through. Timestamps in indexed columns are UTC ISO-8601 strings of fixed width
(`2026-01-02T03:04:05.000006Z`) so that text order is time order. Nothing secret is stored here.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import aiosqlite

from adapters.store_common import (  # noqa: F401  (re-exported: the SQLite store's names since the start)
    MAX_PAGE,
    Migration,
    StoreBase,
    _bound,
    _iso,
    _now,
    _parse_iso,
    check_decision_org,
    check_synchronous,
    decision_params,
    first_success,
    page_limit,
    split_page,
    step_pending,
)
from engine.models import Decision

T = TypeVar("T")

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
    Migration(3, "durable inbox leases, outbox, live stream, API keys, timers", (
        # Inbox: claimed by a worker with a lease; `attempts` counts claims, so an event that crashes its
        # worker every time still reaches the dead-letter state. FIFO by rowid within a priority.
        "ALTER TABLE events ADD COLUMN priority INTEGER NOT NULL DEFAULT 3",
        "ALTER TABLE events ADD COLUMN channel TEXT",
        "ALTER TABLE events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE events ADD COLUMN lease_owner TEXT",
        "ALTER TABLE events ADD COLUMN lease_until TEXT",
        "ALTER TABLE events ADD COLUMN available_at TEXT",
        "ALTER TABLE events ADD COLUMN decision_id TEXT",
        "CREATE INDEX events_ready ON events (status, priority)",
        # Outbox: one row per action of an executed decision, keyed by its idempotency key; the executors
        # (issue 4) run from here. Written in the same transaction as the decision's status.
        """CREATE TABLE actions (
               key          TEXT PRIMARY KEY,
               org          TEXT NOT NULL,
               decision_id  TEXT NOT NULL,
               idx          INTEGER NOT NULL,
               type         TEXT NOT NULL,
               params       TEXT NOT NULL CHECK (json_valid(params)),
               status       TEXT NOT NULL,
               attempts     INTEGER NOT NULL DEFAULT 0,
               error        TEXT,
               created_at   TEXT NOT NULL,
               updated_at   TEXT NOT NULL
           )""",
        "CREATE INDEX actions_decision ON actions (decision_id, idx)",
        "CREATE INDEX actions_status ON actions (status)",
        """CREATE TABLE stream (
               seq          INTEGER PRIMARY KEY AUTOINCREMENT,
               org          TEXT NOT NULL,
               kind         TEXT NOT NULL,
               decision_id  TEXT NOT NULL,
               payload      TEXT NOT NULL CHECK (json_valid(payload)),
               created_at   TEXT NOT NULL
           )""",
        "CREATE INDEX stream_org_seq ON stream (org, seq)",
        """CREATE TABLE api_keys (
               id            TEXT PRIMARY KEY,
               org           TEXT NOT NULL,
               name          TEXT NOT NULL,
               hash          TEXT NOT NULL UNIQUE,
               created_at    TEXT NOT NULL,
               revoked_at    TEXT
           )""",
        "CREATE INDEX api_keys_org ON api_keys (org)",
        """CREATE TABLE timers (
               org       TEXT NOT NULL,
               id        TEXT NOT NULL,
               due_at    TEXT NOT NULL,
               envelope  TEXT NOT NULL CHECK (json_valid(envelope)),
               fired_at  TEXT,
               PRIMARY KEY (org, id)
           )""",
        "CREATE INDEX timers_due ON timers (fired_at, due_at)",
        # Webhook signatures seen within the tolerance window: a captured request replayed with another
        # delivery id is still refused.
        """CREATE TABLE seen_signatures (
               digest   TEXT PRIMARY KEY,
               org      TEXT NOT NULL,
               seen_at  TEXT NOT NULL
           )""",
        "CREATE INDEX seen_signatures_at ON seen_signatures (seen_at)",
    )),
    Migration(4, "claim order straight from the index", (
        # (status, priority DESC) + the implicit rowid is exactly `ORDER BY priority DESC, rowid`: a claim
        # reads the first rows of the index instead of sorting the whole backlog each time.
        "DROP INDEX events_ready",
        "CREATE INDEX events_ready ON events (status, priority DESC)",
    )),
    Migration(5, "action executors: outbox runs, intakes, calendar, notifications", (
        # Outbox runs: a runner leases an action, tries it, and records the outcome of every attempt.
        # Actions of one decision run in index order; `available_at` holds a retry back (backoff).
        "ALTER TABLE actions ADD COLUMN available_at TEXT",
        "ALTER TABLE actions ADD COLUMN lease_owner TEXT",
        "ALTER TABLE actions ADD COLUMN lease_until TEXT",
        "ALTER TABLE actions ADD COLUMN started_at TEXT",
        "ALTER TABLE actions ADD COLUMN finished_at TEXT",
        "ALTER TABLE actions ADD COLUMN duration_ms REAL",
        "ALTER TABLE actions ADD COLUMN result TEXT CHECK (result IS NULL OR json_valid(result))",
        "ALTER TABLE actions ADD COLUMN attempt_log TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(attempt_log))",
        "UPDATE actions SET available_at = created_at WHERE available_at IS NULL",
        "DROP INDEX actions_status",
        # (status, available_at) + the implicit rowid is exactly `ORDER BY available_at, rowid`: a claim reads the
        # first due rows of the index instead of sorting every pending action (a backlog) each time.
        "CREATE INDEX actions_ready ON actions (status, available_at)",
        # Intakes: the work items of the pipelines. `action_key` makes the ASSIGN_PIPELINE executor idempotent.
        """CREATE TABLE intakes (
               org          TEXT NOT NULL,
               id           TEXT NOT NULL,
               title        TEXT NOT NULL,
               contact      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(contact)),
               pipeline     TEXT NOT NULL,
               stage        TEXT NOT NULL,
               assignee     TEXT,
               assigned_at  TEXT,
               priority     INTEGER NOT NULL,
               closed       INTEGER NOT NULL DEFAULT 0,
               decision_id  TEXT,
               event_id     TEXT,
               action_key   TEXT UNIQUE,
               history      TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(history)),
               created_at   TEXT NOT NULL,
               updated_at   TEXT NOT NULL,
               PRIMARY KEY (org, id)
           )""",
        "CREATE INDEX intakes_assignee ON intakes (org, assignee, closed)",
        "CREATE INDEX intakes_board ON intakes (org, pipeline, stage)",
        # Calendar events of hosts. Times in UTC (fixed-width text, so they compare as text).
        """CREATE TABLE calendar_events (
               org          TEXT NOT NULL,
               id           TEXT NOT NULL,
               host         TEXT NOT NULL,
               title        TEXT NOT NULL,
               start_at     TEXT NOT NULL,
               end_at       TEXT NOT NULL,
               attendees    TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(attendees)),
               status       TEXT NOT NULL DEFAULT 'confirmed',
               sequence     INTEGER NOT NULL DEFAULT 0,
               decision_id  TEXT,
               action_key   TEXT UNIQUE,
               created_at   TEXT NOT NULL,
               updated_at   TEXT NOT NULL,
               PRIMARY KEY (org, id)
           )""",
        "CREATE INDEX calendar_host ON calendar_events (org, host, start_at)",
        # In-app notifications (email and webhook deliveries are recorded on their outbox row).
        """CREATE TABLE notifications (
               org          TEXT NOT NULL,
               id           TEXT NOT NULL,
               user_id      TEXT NOT NULL,
               template     TEXT NOT NULL,
               subject      TEXT NOT NULL,
               body         TEXT NOT NULL,
               priority     INTEGER NOT NULL,
               decision_id  TEXT,
               action_key   TEXT,
               created_at   TEXT NOT NULL,
               read_at      TEXT,
               PRIMARY KEY (org, id),
               UNIQUE (action_key, user_id)
           )""",
        "CREATE INDEX notifications_user ON notifications (org, user_id, created_at)",
        # Server-side secrets and settings (e.g. the key that signs calendar feed URLs).
        """CREATE TABLE settings (
               key    TEXT PRIMARY KEY,
               value  TEXT NOT NULL
           )""",
    )),
    Migration(6, "calendar changes applied, by action", (
        # UPDATE_EVENT and CANCEL_EVENT record their idempotency key with the change, in its transaction: a
        # replay after a later change to the same event must not undo it.
        """CREATE TABLE calendar_changes (
               action_key  TEXT PRIMARY KEY,
               org         TEXT NOT NULL,
               event_id    TEXT NOT NULL,
               outcome     TEXT NOT NULL,
               at          TEXT NOT NULL
           )""",
    )),
    Migration(7, "who changed an agent configuration", (
        "ALTER TABLE agent_configs ADD COLUMN changed_by TEXT",
    )),
    # Labels the org model learns from: every approval and correction, with who and when, what had been decided,
    # and the event as it came in (kept here: the inbox may be pruned).
    Migration(8, "labels: approvals and corrections", (
        """CREATE TABLE labels (
               org          TEXT NOT NULL,
               id           TEXT NOT NULL,
               decision_id  TEXT NOT NULL,
               event_id     TEXT NOT NULL,
               kind         TEXT NOT NULL,
               intent       TEXT NOT NULL,
               priority     INTEGER,
               pipeline     TEXT,
               assignee     TEXT,
               by           TEXT NOT NULL,
               note         TEXT,
               at           TEXT NOT NULL,
               decided      TEXT NOT NULL CHECK (json_valid(decided)),
               envelope     TEXT CHECK (envelope IS NULL OR json_valid(envelope)),
               PRIMARY KEY (org, id)
           )""",
        "CREATE INDEX labels_org_at ON labels (org, at)",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def _prepare_path(name: str) -> str:
    """`name` with `~` expanded, after creating its parent directories."""
    path = Path(name).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


async def _upsert_decision(db: aiosqlite.Connection, decision: Decision) -> None:
    """Insert or update `decision` and the org's counters, inside the caller's transaction."""
    now = _now()
    rows = list(await db.execute_fetchall(
        "SELECT org, ever_executed FROM decisions WHERE id = ?", (decision.id,)))
    if rows:
        check_decision_org(rows[0]["org"], decision)
    first_insert = not rows
    success = first_success(decision, first_insert, rows[0]["ever_executed"] if rows else None)
    await db.execute(
        """INSERT INTO decisions (id, org, event_id, source, status, intent, decision_type,
                                  decided_by, created_at, updated_at, ever_executed, record)
           VALUES (?1, ?2, ?3,
                   COALESCE(?4, (SELECT e.source FROM events e WHERE e.org = ?2 AND e.id = ?3)),
                   ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
           ON CONFLICT (id) DO UPDATE SET
               event_id = excluded.event_id, source = excluded.source, status = excluded.status,
               intent = excluded.intent, decision_type = excluded.decision_type,
               decided_by = excluded.decided_by, created_at = excluded.created_at,
               updated_at = excluded.updated_at,
               ever_executed = max(decisions.ever_executed, excluded.ever_executed),
               record = excluded.record""",
        decision_params(decision, now))
    if first_insert or success:
        await db.execute(
            """INSERT INTO agent_counters (org, total_decisions, successful_decisions, updated_at)
               VALUES (?, ?, ?, ?)
               ON CONFLICT (org) DO UPDATE SET
                   total_decisions = total_decisions + excluded.total_decisions,
                   successful_decisions = successful_decisions + excluded.successful_decisions,
                   updated_at = excluded.updated_at""",
            (decision.org, int(first_insert), int(success), now))


class SQLiteBase(StoreBase):
    """The connection to one SQLite file (WAL), migrated to the current schema; transactions for subclasses."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        """Use `await SQLiteStore.open(path)`; this only wraps an already configured connection."""
        super().__init__()
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, *,
                   synchronous: Literal["FULL", "NORMAL"] = "FULL") -> Self:
        """Open (creating it and its parent directories if needed) and migrate the database at `path`.

        `":memory:"` gives a private in-memory database (no WAL there).
        """
        # synchronous=FULL: with WAL, NORMAL never corrupts the file but can lose the last commits on power
        # loss or an OS crash. We acknowledge events to senders and hand decisions out as contracts right
        # after committing, so a commit must survive a power cut; FULL costs one WAL fsync per commit, which
        # is small next to an LLM call. Pass synchronous="NORMAL" where that trade-off is wrong (bulk loads).
        check_synchronous(synchronous)
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

    async def _release(self) -> None:
        """Close the connection."""
        async with self._lock:
            await self._db.close()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, for reads, while no other task of this store is inside a transaction."""
        async with self._lock:
            yield self._db

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One `BEGIN IMMEDIATE` … `COMMIT` transaction; rolled back on any exception (cancellation too)."""
        async with self._lock:
            try:
                # Inside the try: a task cancelled while BEGIN runs in aiosqlite's thread must still roll back,
                # or the connection would stay inside a transaction that nobody owns.
                await self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                # Suppressed: already ended (e.g. a cancelled COMMIT that went through after all).
                with contextlib.suppress(sqlite3.OperationalError):
                    await self._db.execute("ROLLBACK")
                raise

    async def _page(self, table: str, where: list[str], args: list[Any], *, limit: int, before: int | None,
                    row: Callable[[Any], T]) -> tuple[list[T], int | None]:
        """A page of `table`'s rows matching every condition of `where`, newest first, and the cursor of the next
        page (a rowid, passed back as `before`; None at the end)."""
        if before is not None:
            where = [*where, "rowid < ?"]
            args = [*args, before]
        limit = page_limit(limit)
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                f"SELECT rowid, * FROM {table} WHERE {' AND '.join(where)} ORDER BY rowid DESC LIMIT ?",
                [*args, limit + 1]))
        return split_page(rows, limit, row)

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
                if not step_pending(self.path, next(iter(rows))[0], step.version, SCHEMA_VERSION):
                    continue
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

