"""Store fixtures for tests that must hold on every store: `any_store` runs a test on SQLite and on PostgreSQL.

Import the fixtures a module uses (`from tests.stores import any_store, pg_database, pg_target`).

PostgreSQL comes from `ASTRALIS_TEST_PG_URL` (default: the local server, trust auth). Each test module gets a
database of its own (`astralis_test_<random>`, dropped after the module) and each test a fresh schema in it,
so tests are independent of each other and of other test runs on the machine (NOTIFY channels are per
database too). Without a reachable server the PostgreSQL cases are skipped, saying why — except under
`CI=true`, where they fail: CI must not pass by testing one store only.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from adapters.pg_store import PGStore
from adapters.sqlite_store import SQLiteStore
from engine.config import DecisionType, Intent, Source
from engine.models import Action, Decision, Event

PG_URL = os.environ.get("ASTRALIS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

MakeDecision = Callable[..., Decision]


def _with_database(url: str, name: str) -> str:
    """`url` with its database replaced by `name`."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def _admin(sql: str) -> None:
    """Run one statement on the server's maintenance database, on a loop of its own in a thread of its own
    (the caller may be a fixture running inside the test's event loop)."""

    async def run() -> None:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database for this test module, dropped after it (skip or, under CI, fail
    when no server answers)."""
    name = f"astralis_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        reason = f"PostgreSQL is not reachable at {PG_URL} ({type(exc).__name__}: {exc}); set ASTRALIS_TEST_PG_URL"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true needs PostgreSQL: {reason}")
        pytest.skip(reason)
    try:
        yield _with_database(PG_URL, name)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PGTarget:
    """A fresh schema in the module's database: `open()` gives stores on it (each with its own pool), all
    closed after the test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        self._opened: list[PGStore] = []

    async def open(self, **kw: Any) -> PGStore:
        """Another store on this test's schema."""
        store = await PGStore.open(self.url, schema=self.schema, **kw)
        self._opened.append(store)
        return store

    async def close(self) -> None:
        """Close every store opened here."""
        for store in self._opened:
            await store.close()


@pytest.fixture
async def pg_target(pg_database: str) -> AsyncIterator[PGTarget]:
    """A fresh schema in the module's PostgreSQL database; its stores are closed after the test."""
    target = PGTarget(pg_database)
    try:
        yield target
    finally:
        await target.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLiteStore | PGStore]:
    """An open, empty store of each kind (a SQLite file; a fresh PostgreSQL schema), closed after the test."""
    if request.param == "sqlite":
        store = await SQLiteStore.open(tmp_path / "astralis.db")
        try:
            yield store
        finally:
            await store.close()
        return
    target = PGTarget(request.getfixturevalue("pg_database"))
    try:
        yield await target.open()
    finally:
        await target.close()


@pytest.fixture
def make_decision() -> MakeDecision:
    """Build a valid Decision; keyword arguments override any field. Ids are unique per test."""
    counter = itertools.count(1)

    def make(**overrides: Any) -> Decision:
        n = next(counter)
        fields: dict[str, Any] = {
            "id": f"dec_{n:04d}",
            "event_id": f"evt_{n:04d}",
            "org": "acme",
            "input": {"source": "EMAIL", "type": "email:received", "subject": f"hello {n}"},
            "intent": Intent.SALES_INQUIRY,
            "priority": 2,
            "decision_type": DecisionType.ASSIGN_PIPELINE,
            "confidence": 0.9,
            "decided_by": "rules",
            "matched_rules": ["sales-basic"],
            "reasoning": "matched rule sales-basic",
            "actions": [Action(type=DecisionType.ASSIGN_PIPELINE, params={"pipeline": "sales"},
                               idempotency_key=f"dec_{n:04d}:0")],
            "status": "PENDING",
            "created_at": T0 + timedelta(minutes=n),
            "revision": "r1",
        }
        fields.update(overrides)
        return Decision(**fields)

    return make


def event(**overrides: Any) -> Event:
    """An inbound event of org acme."""
    fields: dict[str, Any] = {"id": "evt_1", "org": "acme", "source": Source.WEBHOOK,
                              "type": "form:submitted", "data": {"name": "Zoë", "budget": 1200}}
    fields.update(overrides)
    return Event(**fields)


async def all_pages(store: SQLiteStore | PGStore, org: str, limit: int, **filters: Any) -> list[Decision]:
    """Follow the cursor to the end, checking that no page is longer than `limit`."""
    out: list[Decision] = []
    cursor: str | None = None
    while True:
        page, cursor = await store.list_decisions(org, limit=limit, cursor=cursor, **filters)
        assert len(page) <= limit
        out.extend(page)
        if cursor is None:
            return out
        assert page, "a cursor is only returned after a non-empty page"
