"""The calendar tables: hosts' events (create, update, cancel with a conflict check at commit time), their
reminder timers, and the secret that signs calendar feed URLs."""

from __future__ import annotations

from adapters.sqlite_base import SQLiteBase


class CalendarTables(SQLiteBase):
    """Calendar events of hosts (mixed into `SQLiteStore`)."""
