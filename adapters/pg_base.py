"""The PostgreSQL database underneath `PGStore`: the schema and its migrations, the pool, transactions.

The same tables, columns and indexes as the SQLite store (adapters/sqlite_base.py), so that both answer the
same store port with the same values. What differs is how the guarantees are kept: SQLite lets one writer in at
a time (`BEGIN IMMEDIATE`), while here several processes write at once through their own pools. Every guarantee
is therefore carried by the database itself — row locks (`SELECT … FOR UPDATE`, `FOR UPDATE SKIP LOCKED` for
claims), unique constraints with `ON CONFLICT`, and transaction-scoped advisory locks where there is no row to
lock yet (a host's calendar, an intake being created, a schema migration).

Representation choices, all so that values read back equal the SQLite store's:
- timestamps in indexed columns stay fixed-width UTC ISO-8601 text (`2026-01-02T03:04:05.000006Z`), and ids
  and timestamps are `COLLATE "C"`, so that text order is byte order as in SQLite (ties on ids sort alike);
- JSON columns are `json`, which keeps the text exactly as written (numbers, key order) and still validates it;
- every table that SQLite pages or orders by `rowid` has an explicit `rowid bigint` identity column.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, Self, TypeVar

import asyncpg

from adapters import store_common as common
from adapters.store_common import Migration, StoreBase, _now
from engine.models import Decision

T = TypeVar("T")

MIGRATION_LOCK = 0x617374726C  # the advisory lock that serialises migrations across processes ("astrl")


PGMigration = Migration
"""One schema step: applied with its `schema_migrations` row in a single transaction."""


ID = 'TEXT COLLATE "C"'
"""Ids and UTC timestamps: compared and ordered byte by byte, as SQLite does."""

# Append only, step for step with `adapters.sqlite_base.MIGRATIONS` (same versions, same descriptions): never
# edit a step that has shipped; add a new one to both.
PG_MIGRATIONS: tuple[PGMigration, ...] = (
    PGMigration(1, "event inbox and decisions", (
        f"""CREATE TABLE events (
               org          {ID} NOT NULL,
               id           {ID} NOT NULL,
               source       TEXT NOT NULL,
               type         TEXT NOT NULL,
               envelope     JSON NOT NULL,
               status       TEXT NOT NULL,
               error        TEXT,
               received_at  {ID} NOT NULL,
               updated_at   {ID} NOT NULL,
               rowid        BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
               PRIMARY KEY (org, id)
           )""",
        "CREATE INDEX events_org_status ON events (org, status)",
        f"""CREATE TABLE decisions (
               id             {ID} PRIMARY KEY,
               org            {ID} NOT NULL,
               event_id       {ID} NOT NULL,
               status         TEXT NOT NULL,
               intent         TEXT NOT NULL,
               decision_type  TEXT NOT NULL,
               decided_by     TEXT NOT NULL,
               created_at     {ID} NOT NULL,
               updated_at     {ID} NOT NULL,
               record         JSON NOT NULL,
               rowid          BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
           )""",
        "CREATE INDEX decisions_org_created ON decisions (org, created_at DESC, id)",
        "CREATE INDEX decisions_org_status ON decisions (org, status)",
        "CREATE INDEX decisions_org_intent ON decisions (org, intent)",
        "CREATE INDEX decisions_org_type ON decisions (org, decision_type)",
        "CREATE INDEX decisions_event ON decisions (event_id)",
    )),
    PGMigration(2, "decision source, agent configs and counters", (
        "ALTER TABLE decisions ADD COLUMN source TEXT",
        """UPDATE decisions SET source = COALESCE(
               record::jsonb #>> '{input,source}',
               (SELECT e.source FROM events e WHERE e.org = decisions.org AND e.id = decisions.event_id))""",
        "CREATE INDEX decisions_org_source ON decisions (org, source)",
        "ALTER TABLE decisions ADD COLUMN ever_executed INTEGER NOT NULL DEFAULT 0",
        "UPDATE decisions SET ever_executed = (status = 'EXECUTED')::int",
        f"""CREATE TABLE agent_configs (
               seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               org         {ID} NOT NULL,
               revision    TEXT NOT NULL,
               files       JSON NOT NULL,
               created_at  {ID} NOT NULL
           )""",
        "CREATE INDEX agent_configs_org_seq ON agent_configs (org, seq DESC)",
        f"""CREATE TABLE agent_counters (
               org                   {ID} PRIMARY KEY,
               total_decisions       BIGINT NOT NULL DEFAULT 0,
               successful_decisions  BIGINT NOT NULL DEFAULT 0,
               updated_at            {ID} NOT NULL
           )""",
        """INSERT INTO agent_counters (org, total_decisions, successful_decisions, updated_at)
           SELECT org, count(*), sum(ever_executed), to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
           FROM decisions GROUP BY org""",
    )),
    PGMigration(3, "durable inbox leases, outbox, live stream, API keys, timers", (
        "ALTER TABLE events ADD COLUMN priority INTEGER NOT NULL DEFAULT 3",
        "ALTER TABLE events ADD COLUMN channel TEXT",
        "ALTER TABLE events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE events ADD COLUMN lease_owner TEXT",
        f"ALTER TABLE events ADD COLUMN lease_until {ID}",
        f"ALTER TABLE events ADD COLUMN available_at {ID}",
        "ALTER TABLE events ADD COLUMN decision_id TEXT",
        "CREATE INDEX events_ready ON events (status, priority)",
        f"""CREATE TABLE actions (
               key          {ID} PRIMARY KEY,
               org          {ID} NOT NULL,
               decision_id  {ID} NOT NULL,
               idx          INTEGER NOT NULL,
               type         TEXT NOT NULL,
               params       JSON NOT NULL,
               status       TEXT NOT NULL,
               attempts     INTEGER NOT NULL DEFAULT 0,
               error        TEXT,
               created_at   {ID} NOT NULL,
               updated_at   {ID} NOT NULL,
               rowid        BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
           )""",
        "CREATE INDEX actions_decision ON actions (decision_id, idx)",
        "CREATE INDEX actions_status ON actions (status)",
        f"""CREATE TABLE stream (
               seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               org          {ID} NOT NULL,
               kind         TEXT NOT NULL,
               decision_id  TEXT NOT NULL,
               payload      JSON NOT NULL,
               created_at   {ID} NOT NULL
           )""",
        "CREATE INDEX stream_org_seq ON stream (org, seq)",
        f"""CREATE TABLE api_keys (
               id            {ID} PRIMARY KEY,
               org           {ID} NOT NULL,
               name          TEXT NOT NULL,
               hash          TEXT NOT NULL UNIQUE,
               created_at    {ID} NOT NULL,
               revoked_at    {ID}
           )""",
        "CREATE INDEX api_keys_org ON api_keys (org)",
        f"""CREATE TABLE timers (
               org       {ID} NOT NULL,
               id        {ID} NOT NULL,
               due_at    {ID} NOT NULL,
               envelope  JSON NOT NULL,
               fired_at  {ID},
               PRIMARY KEY (org, id)
           )""",
        "CREATE INDEX timers_due ON timers (fired_at, due_at)",
        f"""CREATE TABLE seen_signatures (
               digest   TEXT PRIMARY KEY,
               org      {ID} NOT NULL,
               seen_at  {ID} NOT NULL
           )""",
        "CREATE INDEX seen_signatures_at ON seen_signatures (seen_at)",
    )),
    PGMigration(4, "claim order straight from the index", (
        "DROP INDEX events_ready",
        # Only ready rows matter to a claim: a partial index stays small however long the decided history grows.
        "CREATE INDEX events_ready ON events (priority DESC, rowid) WHERE status = 'accepted'",
    )),
    PGMigration(5, "action executors: outbox runs, intakes, calendar, notifications", (
        f"ALTER TABLE actions ADD COLUMN available_at {ID}",
        "ALTER TABLE actions ADD COLUMN lease_owner TEXT",
        f"ALTER TABLE actions ADD COLUMN lease_until {ID}",
        f"ALTER TABLE actions ADD COLUMN started_at {ID}",
        f"ALTER TABLE actions ADD COLUMN finished_at {ID}",
        "ALTER TABLE actions ADD COLUMN duration_ms DOUBLE PRECISION",
        "ALTER TABLE actions ADD COLUMN result JSON",
        "ALTER TABLE actions ADD COLUMN attempt_log JSON NOT NULL DEFAULT '[]'",
        "UPDATE actions SET available_at = created_at WHERE available_at IS NULL",
        "DROP INDEX actions_status",
        "CREATE INDEX actions_ready ON actions (status, available_at, rowid)",
        f"""CREATE TABLE intakes (
               org          {ID} NOT NULL,
               id           {ID} NOT NULL,
               title        TEXT NOT NULL,
               contact      JSON NOT NULL DEFAULT '{{}}',
               pipeline     TEXT NOT NULL,
               stage        TEXT NOT NULL,
               assignee     TEXT,
               assigned_at  {ID},
               priority     INTEGER NOT NULL,
               closed       INTEGER NOT NULL DEFAULT 0,
               decision_id  TEXT,
               event_id     TEXT,
               action_key   TEXT UNIQUE,
               history      JSON NOT NULL DEFAULT '[]',
               created_at   {ID} NOT NULL,
               updated_at   {ID} NOT NULL,
               rowid        BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
               PRIMARY KEY (org, id)
           )""",
        "CREATE INDEX intakes_assignee ON intakes (org, assignee, closed)",
        "CREATE INDEX intakes_board ON intakes (org, pipeline, stage)",
        f"""CREATE TABLE calendar_events (
               org          {ID} NOT NULL,
               id           {ID} NOT NULL,
               host         TEXT NOT NULL,
               title        TEXT NOT NULL,
               start_at     {ID} NOT NULL,
               end_at       {ID} NOT NULL,
               attendees    JSON NOT NULL DEFAULT '[]',
               status       TEXT NOT NULL DEFAULT 'confirmed',
               sequence     INTEGER NOT NULL DEFAULT 0,
               decision_id  TEXT,
               action_key   TEXT UNIQUE,
               created_at   {ID} NOT NULL,
               updated_at   {ID} NOT NULL,
               PRIMARY KEY (org, id)
           )""",
        "CREATE INDEX calendar_host ON calendar_events (org, host, start_at)",
        f"""CREATE TABLE notifications (
               org          {ID} NOT NULL,
               id           {ID} NOT NULL,
               user_id      TEXT NOT NULL,
               template     TEXT NOT NULL,
               subject      TEXT NOT NULL,
               body         TEXT NOT NULL,
               priority     INTEGER NOT NULL,
               decision_id  TEXT,
               action_key   TEXT,
               created_at   {ID} NOT NULL,
               read_at      {ID},
               rowid        BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
               PRIMARY KEY (org, id),
               UNIQUE (action_key, user_id)
           )""",
        "CREATE INDEX notifications_user ON notifications (org, user_id, created_at)",
        """CREATE TABLE settings (
               key    TEXT PRIMARY KEY,
               value  TEXT NOT NULL
           )""",
    )),
    PGMigration(6, "calendar changes applied, by action", (
        f"""CREATE TABLE calendar_changes (
               action_key  TEXT PRIMARY KEY,
               org         {ID} NOT NULL,
               event_id    {ID} NOT NULL,
               outcome     TEXT NOT NULL,
               at          {ID} NOT NULL
           )""",
    )),
    PGMigration(7, "who changed an agent configuration", (
        "ALTER TABLE agent_configs ADD COLUMN changed_by TEXT",
    )),
    PGMigration(8, "labels: approvals and corrections", (
        f"""CREATE TABLE labels (
               org          {ID} NOT NULL,
               id           {ID} NOT NULL,
               decision_id  {ID} NOT NULL,
               event_id     {ID} NOT NULL,
               kind         TEXT NOT NULL,
               intent       TEXT NOT NULL,
               priority     INTEGER,
               pipeline     TEXT,
               assignee     TEXT,
               by           TEXT NOT NULL,
               note         TEXT,
               at           {ID} NOT NULL,
               decided      TEXT NOT NULL,
               envelope     TEXT,
               PRIMARY KEY (org, id)
           )""",
        "CREATE INDEX labels_org_at ON labels (org, at)",
    )),
)
PG_SCHEMA_VERSION = PG_MIGRATIONS[-1].version

STREAM_CHANNEL = "astralis_stream"
"""NOTIFY channel of the live stream: payload `<org>:<seq>`, sent in the transaction that wrote the entry."""


def arg(args: list[Any], value: Any) -> str:
    """Append `value` to a query's positional arguments; its placeholder (`$n`)."""
    args.append(value)
    return f"${len(args)}"


async def upsert_decision(db: asyncpg.Connection, decision: Decision) -> None:
    """Insert or update `decision` and the org's counters, inside the caller's transaction.

    Concurrent saves of the same decision are serialised on its row: the existing row is locked (`FOR UPDATE`),
    and when there is none yet, `INSERT … ON CONFLICT DO NOTHING` either creates it (the first insert, counted
    once) or waits for the process that did and then locks its row — so the counters never count a decision
    twice."""
    now = _now()
    values = common.decision_params(decision, now)
    row = await db.fetchrow("SELECT org, ever_executed FROM decisions WHERE id = $1 FOR UPDATE", decision.id)
    first_insert = False
    if row is None:
        first_insert = await db.fetchval(
            """INSERT INTO decisions (id, org, event_id, source, status, intent, decision_type,
                                      decided_by, created_at, updated_at, ever_executed, record)
               VALUES ($1, $2, $3, COALESCE($4, (SELECT e.source FROM events e WHERE e.org = $2 AND e.id = $3)),
                       $5, $6, $7, $8, $9, $10, $11, $12)
               ON CONFLICT (id) DO NOTHING RETURNING true""", *values) or False
        if not first_insert:
            row = await db.fetchrow("SELECT org, ever_executed FROM decisions WHERE id = $1 FOR UPDATE", decision.id)
    if row is not None:
        common.check_decision_org(row["org"], decision)
        await db.execute(
            """UPDATE decisions SET
                   event_id = $3,
                   source = COALESCE($4, (SELECT e.source FROM events e WHERE e.org = $2 AND e.id = $3)),
                   status = $5, intent = $6, decision_type = $7, decided_by = $8, created_at = $9, updated_at = $10,
                   ever_executed = greatest(ever_executed, $11), record = $12
               WHERE id = $1""", *values)
    success = common.first_success(decision, first_insert, row is None or row["ever_executed"])
    if first_insert or success:
        await db.execute(
            """INSERT INTO agent_counters (org, total_decisions, successful_decisions, updated_at)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (org) DO UPDATE SET
                   total_decisions = agent_counters.total_decisions + excluded.total_decisions,
                   successful_decisions = agent_counters.successful_decisions + excluded.successful_decisions,
                   updated_at = excluded.updated_at""",
            decision.org, int(first_insert), int(success), now)


async def append_stream(db: asyncpg.Connection, decision: Decision, kind: str, *, new: bool, now: str) -> int:
    """Write a stream entry and NOTIFY `astralis_stream` with `<org>:<seq>`, both in the caller's transaction
    (listeners hear of it only once it is committed). Returns the entry's seq."""
    seq: int = await db.fetchval(
        """WITH s AS (INSERT INTO stream (org, kind, decision_id, payload, created_at)
                      VALUES ($1, $2, $3, $4, $5) RETURNING seq)
           SELECT seq, pg_notify($6, $1 || ':' || seq) FROM s""",
        decision.org, kind, decision.id, common.stream_payload(decision, kind, new), now, STREAM_CHANNEL)
    return seq


class PGBase(StoreBase):
    """A connection pool to one PostgreSQL database (optionally one schema of it), migrated to the current
    schema; transactions for subclasses."""

    def __init__(self, pool: asyncpg.Pool, url: str, connect_kw: dict[str, Any]) -> None:
        """Use `await PGStore.open(url)`; this only wraps an already configured pool."""
        super().__init__()
        self._pool = pool
        self.url = url
        self._connect_kw = connect_kw
        self._listener: asyncpg.Connection | None = None
        self._listener_lock = asyncio.Lock()
        self._callbacks: dict[str, list[tuple[Callable[..., Any], Callable[..., None]]]] = {}
        """channel → (the subscriber's callback, the listener registered for it on `_listener`)."""
        self._tasks: set[asyncio.Future[Any]] = set()

    # ---- lifecycle -------------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 10,
                   synchronous: Literal["FULL", "NORMAL"] = "FULL") -> Self:
        """Connect a pool to the database at `url` (`postgresql://user@host:port/db`) and migrate it.

        `schema` keeps every table in that schema (created if missing): several stores, or test runs, can
        share one database. `synchronous="NORMAL"` turns `synchronous_commit` off — like SQLite's NORMAL, a
        crash of the server can lose the last commits but never corrupts anything; FULL (the default) waits
        for each commit to be flushed, because events are acknowledged and decisions handed out right after.
        """
        common.check_synchronous(synchronous)
        settings = {"synchronous_commit": "on" if synchronous == "FULL" else "off", "timezone": "UTC"}
        if schema is not None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
            except asyncpg.UniqueViolationError:
                pass  # another process created it at the same moment
            finally:
                await conn.close()
            settings["search_path"] = _ident(schema)
        connect_kw: dict[str, Any] = {"server_settings": settings}
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, **connect_kw)
        store = cls(pool, url, connect_kw)
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _release(self) -> None:
        """Stop listening and close the pool."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self._pool.close()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, for reads (each statement sees what was committed before it started)."""
        async with self._pool.acquire() as db:
            yield db

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside one transaction (READ COMMITTED); rolled back on any exception."""
        async with self._pool.acquire() as db, db.transaction():
            yield db

    async def _page(self, table: str, where: list[str], args: list[Any], *, limit: int, before: int | None,
                    row: Callable[[Any], T]) -> tuple[list[T], int | None]:
        """As `SQLiteBase._page`."""
        args = list(args)
        if before is not None:
            where = [*where, f"rowid < {arg(args, before)}"]
        limit = common.page_limit(limit)
        async with self._read() as db:
            rows = await db.fetch(
                f"SELECT * FROM {table} WHERE {' AND '.join(where)} ORDER BY rowid DESC LIMIT {arg(args, limit + 1)}",
                *args)
        return common.split_page(rows, limit, row)

    # ---- schema ----------------------------------------------------------------------------------

    async def _migrate(self) -> None:
        """Apply the missing steps of `PG_MIGRATIONS`, each in its own transaction, under an advisory lock so
        that processes starting together migrate one after the other."""
        for step in PG_MIGRATIONS:
            async with self._write() as db:
                await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                    "description TEXT NOT NULL, applied_at TEXT NOT NULL)")
                current = await db.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
                if not common.step_pending(_redacted(self.url), current, step.version, PG_SCHEMA_VERSION):
                    continue
                for statement in step.statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
                    step.version, step.description, _now())

    async def schema_version(self) -> int:
        """As `SQLiteBase.schema_version`."""
        async with self._read() as db:
            return int(await db.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


def _ident(name: str) -> str:
    """`name` quoted as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _redacted(url: str) -> str:
    """`url` without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
