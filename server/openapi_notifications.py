"""The OpenAPI description of /api/agent/notifications (server/api_notifications.py): `schemas()` (components)
and `paths()`, merged into the document by server/openapi.py."""

from __future__ import annotations

from typing import Any

from server.cursors import TOKEN_PATTERN


def schemas() -> dict[str, Any]:
    """The hand-written component schemas: a notification and a page of them."""
    from server.openapi import _INT, _STR, _nullable, _obj, _ref

    return {
        "Notification": _obj({
            "id": _STR, "org": _STR, "user_id": _STR,
            "template": {"type": "string", "description": "The template it was rendered from (new_intake, escalation, ...)."},
            "subject": _STR, "body": _STR, "priority": _INT,
            "decision_id": _nullable(_STR),
            "action_key": _nullable({"type": "string", "description": "The outbox action that sent it."}),
            "created_at": _STR, "read_at": _nullable(_STR), "read": {"type": "boolean"},
        }, description="An in-app notification of one user."),
        "NotificationPage": _obj({
            "notifications": {"type": "array", "items": _ref("Notification")},
            "unread": {"type": "integer", "minimum": 0, "description": "How many of the user's notifications are unread."},
            "next_cursor": _nullable({"type": "string", "pattern": TOKEN_PATTERN}),
        }, description="One page of a user's notifications, newest first."),
    }


def paths() -> dict[str, Any]:
    """`{path: path item}` for the notification routes."""
    from server.openapi import _error, _id, _limit, _ok, _op, _ref

    return {
        "/api/agent/notifications": {"get": _op(
            "List a user's notifications", "notifications",
            {200: _ok(_ref("NotificationPage"), "A page of the user's notifications.")},
            errors=(400, 404), extra={409: _error("The org has no valid configuration loaded (org_not_loaded).")},
            description="404 when `user` is not a user of the API key's org.",
            parameters=[
                {"name": "user", "in": "query", "required": True, "description": "The user's id (org.yaml).",
                 "schema": {"type": "string", "minLength": 1}},
                {"name": "unread", "in": "query", "required": False, "description": "Only unread notifications.",
                 "schema": {"type": "string", "enum": ["true", "false"], "default": "false"}},
                _limit(),
                {"name": "cursor", "in": "query", "required": False, "description": "`next_cursor` of the previous "
                 "page (with the same user and unread).", "schema": {"type": "string", "pattern": TOKEN_PATTERN}},
            ])},
        "/api/agent/notifications/{id}/read": {"post": _op(
            "Mark a notification read", "notifications",
            {200: _ok(_ref("Notification"), "The notification; `read_at` keeps the time it was first read.")},
            errors=(404,), parameters=[_id("notification")])},
    }
