"""The OpenAPI path items of the calendar routes (server/api_calendar.py), merged into /openapi.json by
server/openapi.py."""

from __future__ import annotations

from typing import Any

USER_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"


def event_schema() -> dict[str, Any]:
    """A calendar event as the API shows it (`CalendarEvent.to_json`)."""
    from server.openapi import _STR, _nullable, _obj

    return _obj({
        "id": _STR, "org": _STR, "host": {"type": "string", "description": "The host's user id."}, "title": _STR,
        "start": {"type": "string", "format": "date-time"}, "end": {"type": "string", "format": "date-time"},
        "attendees": {"type": "array", "items": {"type": "object", "properties": {"name": _STR, "email": _STR}}},
        "status": {"type": "string", "enum": ["confirmed", "cancelled"]},
        "sequence": {"type": "integer", "minimum": 0, "description": "iCalendar SEQUENCE: +1 per change."},
        "decision_id": _nullable(_STR), "created_at": _nullable(_STR), "updated_at": _nullable(_STR),
    }, description="An event on a host's calendar (times in UTC).")


def paths() -> dict[str, Any]:
    """`{path: path item}` for the calendar routes."""
    from server.openapi import _error, _obj, _ok, _op, _time_param

    user = {"name": "user", "in": "path", "required": True, "description": "The user id (a host).",
            "schema": {"type": "string", "pattern": USER_PATTERN, "maxLength": 64}}
    not_found = _error("No such user in the org (of the API key, or of the token).")
    p: dict[str, Any] = {}
    p["/api/calendar/{user}.ics"] = {"get": _op(
        "Calendar feed", "calendar", {200: _ok(
            {"type": "string"}, "The user's events as iCalendar (RFC 5545): the last 90 days and everything ahead; "
            "those the agent booked carry CATEGORIES:Astralis and X-ASTRALIS-DECISION.",
            content_type="text/calendar")},
        parameters=[user, {
            "name": "token", "in": "query", "required": False,
            "description": "The feed token from GET /api/agent/calendar/{user}/feed, for calendar apps that cannot "
                           "send an Authorization header: `<org>.<hex HMAC-SHA256(feed secret, \"<org>:<user>\")>`.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
        extra={404: not_found},
        description="Opened by the org's API key (`Authorization: Bearer`) or by the `token` of the feed URL; "
                    "neither, or a wrong one, answers 401.")}
    p["/api/agent/calendar"] = {"get": _op(
        "List calendar events", "calendar", {200: _ok(
            _obj({"events": {"type": "array", "items": event_schema()}}),
            "The org's confirmed events overlapping the window, by start.")},
        errors=(400,), parameters=[
            {"name": "host", "in": "query", "required": False, "description": "Only this host's events.",
             "schema": {"type": "string", "minLength": 1, "maxLength": 64}},
            _time_param("from", "Events that end after this time (with a UTC offset)."),
            _time_param("to", "Events that start before this time (with a UTC offset)."),
        ], extra={404: _error("The host is not a user of the org.")})}
    p["/api/agent/calendar/{user}/feed"] = {"get": _op(
        "Calendar feed link", "calendar", {200: _ok(
            _obj({"url": {"type": "string", "description": "The path of the user's feed with its token, to "
                          "subscribe to in a calendar app (relative to this server)."}}),
            "The subscribable feed URL.")},
        parameters=[user], extra={404: not_found})}
    for item in p.values():
        for op in item.values():
            op["operationId"] = op["summary"].lower().replace(" ", "_")
    return p
