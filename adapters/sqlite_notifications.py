"""The in-app notifications table: stored per user, listed over the API, marked read."""

from __future__ import annotations

from adapters.sqlite_base import SQLiteBase


class NotificationTables(SQLiteBase):
    """In-app notifications (mixed into `SQLiteStore`)."""
