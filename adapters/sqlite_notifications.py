"""The in-app notifications table: stored per user, listed over the API, marked read.

Rows are written by the notification executor under the action's idempotency key: `UNIQUE (action_key,
user_id)` makes a re-run of the same action (a crash after the insert, before the action was marked done)
insert nothing new. Email and webhook deliveries are recorded on the outbox row, not here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from adapters.sqlite_base import SQLiteBase, _now
from adapters.store_common import notification_filters, notification_row, notification_values, qmark


class NotificationTables(SQLiteBase):
    """In-app notifications (mixed into `SQLiteStore`)."""

    async def add_notifications(self, rows: Iterable[Mapping[str, Any]], action_key: str) -> list[dict[str, Any]]:
        """Store one notification per row (`org, id, user_id, template, subject, body, priority, decision_id`) under
        `action_key`, in one transaction. Idempotent: a row for a user who already has one under this key is not
        inserted again. Returns every notification stored under the key, in insertion order."""
        now = _now()
        rows = list(rows)
        async with self._write() as db:
            for row in rows:
                await db.execute(
                    "INSERT INTO notifications (org, id, user_id, template, subject, body, priority, decision_id, "
                    "action_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    notification_values(row, action_key, now))
            stored = await db.execute_fetchall(
                "SELECT * FROM notifications WHERE action_key = ? ORDER BY rowid", (action_key,))
        return [notification_row(r) for r in stored]

    async def list_notifications(self, org: str, user_id: str, *, unread_only: bool = False, limit: int = 50,
                                 before: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """A page of a user's notifications, newest first, and the cursor of the next page (None at the end).
        The cursor is a rowid: pass it back as `before`."""
        where, args = notification_filters(qmark, org, user_id, unread_only)
        return await self._page("notifications", where, args, limit=limit, before=before, row=notification_row)

    async def get_notification(self, org: str, notification_id: str) -> dict[str, Any] | None:
        """One notification of `org`, or None (absent, or another org's)."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                "SELECT * FROM notifications WHERE org = ? AND id = ?", (org, notification_id)))
        return notification_row(rows[0]) if rows else None

    async def mark_notification_read(self, org: str, notification_id: str) -> dict[str, Any] | None:
        """Mark a notification read and return it; None if `org` has no such notification. Idempotent: `read_at`
        keeps the time it was first read."""
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                "UPDATE notifications SET read_at = coalesce(read_at, ?) WHERE org = ? AND id = ? RETURNING *",
                (_now(), org, notification_id)))
        return notification_row(rows[0]) if rows else None

    async def unread_count(self, org: str, user_id: str) -> int:
        """How many of a user's notifications are unread."""
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                "SELECT count(*) FROM notifications WHERE org = ? AND user_id = ? AND read_at IS NULL",
                (org, user_id)))
        return int(rows[0][0])
