"""Which store a URL names: a SQLite file (a path, or `sqlite:///path`) or a PostgreSQL database
(`postgresql://…` / `postgres://…`), opened behind the same store port."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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


def _schema_of(url: str) -> tuple[str, str | None]:
    """A PostgreSQL URL without our own `schema` query parameter, and that parameter (None when absent)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the store cannot be reached right now (a PostgreSQL server restarting or gone, a
    dropped connection), as opposed to a bug or a bad request: the request can be repeated later."""
    import asyncpg

    return isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.InterfaceError,
                            ConnectionError, OSError, TimeoutError))


async def open_store(url: str, **kw: Any) -> SQLiteStore | PGStore:
    """Open (and migrate) the store at `url`; keyword arguments go to that store's `open` (e.g. `synchronous`,
    which both take). A PostgreSQL URL may name the schema to keep the tables in (`…/db?schema=astralis`), so
    that several deployments or test runs share one database."""
    if store_kind(url) == "postgres":
        dsn, schema = _schema_of(url)
        if schema is not None:
            kw.setdefault("schema", schema)
        return await PGStore.open(dsn, **kw)
    path = url
    if url.lower().startswith("sqlite://"):
        # As SQLAlchemy spells them: sqlite:///relative.db, sqlite:////abs/path.db, sqlite:// (in memory).
        path = url[len("sqlite://"):]
        path = path[1:] if path.startswith("/") else path
    return await SQLiteStore.open(path or ":memory:", **kw)
