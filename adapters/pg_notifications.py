"""The in-app notifications table on PostgreSQL — the same methods and results as
`adapters.sqlite_notifications.NotificationTables`. `UNIQUE (action_key, user_id)` with `ON CONFLICT DO NOTHING`
keeps a re-run of the same action (in this process or another) from notifying anyone twice."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from adapters.pg_base import PGBase, arg
from adapters.sqlite_base import _now
from adapters.sqlite_notifications import notification_row


class PGNotificationTables(PGBase):
    """In-app notifications (mixed into `PGStore`)."""

    async def add_notifications(self, rows: Iterable[Mapping[str, Any]], action_key: str) -> list[dict[str, Any]]:
        """Store one notification per row (`org, id, user_id, template, subject, body, priority, decision_id`) under
        `action_key`, in one transaction. Idempotent: a row for a user who already has one under this key is not
        inserted again. Returns every notification stored under the key, in insertion order."""
        now = _now()
        rows = list(rows)
        async with self._write() as db:
            if rows:
                await db.executemany(
                    "INSERT INTO notifications (org, id, user_id, template, subject, body, priority, decision_id, "
                    "action_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
                    [(row["org"], row["id"], row["user_id"], row["template"], row["subject"], row["body"],
                      int(row.get("priority", 3)), row.get("decision_id"), action_key, now) for row in rows])
            stored = await db.fetch("SELECT * FROM notifications WHERE action_key = $1 ORDER BY rowid", action_key)
        return [notification_row(r) for r in stored]

    async def list_notifications(self, org: str, user_id: str, *, unread_only: bool = False, limit: int = 50,
                                 before: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """A page of a user's notifications, newest first, and the cursor of the next page (None at the end).
        The cursor is a rowid: pass it back as `before`."""
        args: list[Any] = []
        where = [f"org = {arg(args, org)}", f"user_id = {arg(args, user_id)}"]
        if unread_only:
            where.append("read_at IS NULL")
        return await self._page("notifications", where, args, limit=limit, before=before, row=notification_row)

    async def get_notification(self, org: str, notification_id: str) -> dict[str, Any] | None:
        """One notification of `org`, or None (absent, or another org's)."""
        async with self._read() as db:
            row = await db.fetchrow("SELECT * FROM notifications WHERE org = $1 AND id = $2", org, notification_id)
        return notification_row(row) if row is not None else None

    async def mark_notification_read(self, org: str, notification_id: str) -> dict[str, Any] | None:
        """Mark a notification read and return it; None if `org` has no such notification. Idempotent: `read_at`
        keeps the time it was first read."""
        async with self._write() as db:
            row = await db.fetchrow(
                "UPDATE notifications SET read_at = coalesce(read_at, $1) WHERE org = $2 AND id = $3 RETURNING *",
                _now(), org, notification_id)
        return notification_row(row) if row is not None else None

    async def unread_count(self, org: str, user_id: str) -> int:
        """How many of a user's notifications are unread."""
        async with self._read() as db:
            return int(await db.fetchval(
                "SELECT count(*) FROM notifications WHERE org = $1 AND user_id = $2 AND read_at IS NULL",
                org, user_id))
