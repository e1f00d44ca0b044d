"""The in-app notifications table on PostgreSQL — the same methods and results as
`adapters.sqlite_notifications.NotificationTables`. `UNIQUE (action_key, user_id)` with `ON CONFLICT DO NOTHING`
keeps a re-run of the same action (in this process or another) from notifying anyone twice."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from adapters.pg_base import PGBase, arg
from adapters.store_common import _now, notification_filters, notification_row, notification_values


class PGNotificationTables(PGBase):
    """In-app notifications (mixed into `PGStore`)."""

    async def add_notifications(self, rows: Iterable[Mapping[str, Any]], action_key: str) -> list[dict[str, Any]]:
        """As `NotificationTables.add_notifications`."""
        now = _now()
        rows = list(rows)
        async with self._write() as db:
            if rows:
                await db.executemany(
                    "INSERT INTO notifications (org, id, user_id, template, subject, body, priority, decision_id, "
                    "action_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
                    [notification_values(row, action_key, now) for row in rows])
            stored = await db.fetch("SELECT * FROM notifications WHERE action_key = $1 ORDER BY rowid", action_key)
        return [notification_row(r) for r in stored]

    async def list_notifications(self, org: str, user_id: str, *, unread_only: bool = False, limit: int = 50,
                                 before: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """As `NotificationTables.list_notifications`."""
        where, args = notification_filters(arg, org, user_id, unread_only)
        return await self._page("notifications", where, args, limit=limit, before=before, row=notification_row)

    async def get_notification(self, org: str, notification_id: str) -> dict[str, Any] | None:
        """As `NotificationTables.get_notification`."""
        async with self._read() as db:
            row = await db.fetchrow("SELECT * FROM notifications WHERE org = $1 AND id = $2", org, notification_id)
        return notification_row(row) if row is not None else None

    async def mark_notification_read(self, org: str, notification_id: str) -> dict[str, Any] | None:
        """As `NotificationTables.mark_notification_read`."""
        async with self._write() as db:
            row = await db.fetchrow(
                "UPDATE notifications SET read_at = coalesce(read_at, $1) WHERE org = $2 AND id = $3 RETURNING *",
                _now(), org, notification_id)
        return notification_row(row) if row is not None else None

    async def unread_count(self, org: str, user_id: str) -> int:
        """As `NotificationTables.unread_count`."""
        async with self._read() as db:
            return int(await db.fetchval(
                "SELECT count(*) FROM notifications WHERE org = $1 AND user_id = $2 AND read_at IS NULL",
                org, user_id))
