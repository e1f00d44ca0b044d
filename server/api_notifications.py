"""/api/agent/notifications: a user's in-app notifications (newest first, cursor paging) and marking one read.

Scoped to the API key's org like every /api/agent route: another org's notification answers 404, exactly as
one that does not exist.
"""

from __future__ import annotations

from aiohttp import web

from server.api import _int, loaded, next_cursor, rowid_cursor, to_json
from server.app import STORE, principal
from server.errors import ApiError

UNREAD = ("true", "false")


async def list_notifications(request: web.Request) -> web.Response:
    """GET /api/agent/notifications?user=<id>&unread=true|false&limit=&cursor="""
    org = principal(request).org
    user = request.query.get("user")
    if not user:
        raise ApiError(400, "bad_request", "user: the id of a user of the org is required", {"field": "user"})
    unread = request.query.get("unread", "false")
    if unread not in UNREAD:
        raise ApiError(400, "bad_request", f"unread: true or false, not {unread!r}", {"field": "unread"})
    limit = _int(request, "limit", 50, 1, 500)
    before = rowid_cursor(request, "notifications")
    compiled = loaded(request, org)
    if compiled.bundle.org.user(user) is None:
        raise ApiError(404, "not_found", f"no user {user!r} in org '{org}'", {"field": "user"})
    store = request.app[STORE]
    rows, nxt = await store.list_notifications(org, user, unread_only=unread == "true", limit=limit,
                                               before=before)
    return to_json({"notifications": rows, "unread": await store.unread_count(org, user),
                    "next_cursor": next_cursor(request, "notifications", nxt)})


async def mark_read(request: web.Request) -> web.Response:
    """POST /api/agent/notifications/{id}/read: the notification, read (the first read time is kept)."""
    notification_id = request.match_info["id"]
    row = await request.app[STORE].mark_notification_read(principal(request).org, notification_id)
    if row is None:
        raise ApiError(404, "not_found", f"no notification {notification_id!r}")
    return to_json(row)


def setup(app: web.Application) -> None:
    """Register the routes of this module."""
    app.router.add_get("/api/agent/notifications", list_notifications)
    app.router.add_post("/api/agent/notifications/{id}/read", mark_read)
