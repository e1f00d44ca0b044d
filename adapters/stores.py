"""Which store a URL names: a SQLite file (a path, or `sqlite:///path`) or a PostgreSQL database
(`postgresql://…` / `postgres://…`), opened behind the same store port."""

from __future__ import annotations

from typing import Any, Literal

from adapters.pg_store import PGStore
from adapters.sqlite_store import SQLiteStore

StoreKind = Literal["sqlite", "postgres"]


def store_kind(url: str) -> StoreKind:
    """"postgres" for a `postgresql://` or `postgres://` URL; "sqlite" for anything else (a file path,
    `:memory:` or `sqlite:///path`). ValueError for another URL scheme, which would otherwise become a file."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        return "sqlite"
    scheme = scheme.lower()
    if scheme in ("postgresql", "postgres"):
        return "postgres"
    if scheme == "sqlite":
        return "sqlite"
    raise ValueError(f"unsupported store URL scheme {scheme!r}: use a file path, sqlite:///path or postgresql://")


async def open_store(url: str, **kw: Any) -> SQLiteStore | PGStore:
    """Open (and migrate) the store at `url`; keyword arguments go to that store's `open` (e.g. `synchronous`,
    which both take)."""
    if store_kind(url) == "postgres":
        return await PGStore.open(url, **kw)
    path = url
    if url.lower().startswith("sqlite://"):
        # As SQLAlchemy spells them: sqlite:///relative.db, sqlite:////abs/path.db, sqlite:// (in memory).
        path = url[len("sqlite://"):]
        path = path[1:] if path.startswith("/") else path
    return await SQLiteStore.open(path or ":memory:", **kw)
