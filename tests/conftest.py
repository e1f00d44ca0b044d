"""Shared fixtures. Factory fixtures create a thing and clean it up."""

import uuid
from pathlib import Path

import pytest

from tests.standin import StandIn
from tests.stores import pg_database

__all__ = ["pg_database"]  # a fixture, used by name in every test module


@pytest.fixture
def standin():
    """A running LLM stand-in (OpenAI and Anthropic wire protocols) on 127.0.0.1, stopped after the test."""
    with StandIn() as s:
        yield s


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store a test's service, executors or agent run on, once per kind: a SQLite file, and a fresh schema
    in the module's PostgreSQL database (`tests/stores.py`: skipped, or under CI=true failed, without a server).
    A test marked `sqlite_only` (it reads SQLite's own files or query plans) runs on SQLite alone."""
    if request.param == "sqlite":
        return str(tmp_path / "astralis.db")
    if request.node.get_closest_marker("sqlite_only") is not None:
        pytest.skip("reads SQLite's own tables, files or query plans")
    return f"{request.getfixturevalue('pg_database')}?schema=t_{uuid.uuid4().hex[:12]}"
