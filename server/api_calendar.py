"""Calendars over HTTP: a host's iCalendar feed for calendar apps, and the org's events as JSON.

Calendar apps subscribe to a URL and cannot send headers, so the feed takes either the org's API key
(`Authorization: Bearer`) or a `token` in the URL: `<org>.<hex HMAC-SHA256(feed secret, "<org>:<user>")>`. The
feed secret is made once per database (`settings` table); a token grants read access to one user's feed only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from adapters.ics import feed_ics
from engine.config import OrgConfig, User
from server.api import _time
from server.app import KEYS, REGISTRY, STORE, principal
from server.auth import bearer
from server.errors import ApiError

FEED_PAST_DAYS = 90
"""How far back the feed reaches (calendar apps keep what they already have)."""


def feed_token(secret: bytes, org: str, user: str) -> str:
    """The token that opens `user`'s feed in `org`."""
    return f"{org}.{hmac.new(secret, f'{org}:{user}'.encode(), hashlib.sha256).hexdigest()}"


def feed_url(secret: bytes, org: str, user: str) -> str:
    """The subscribable path of `user`'s feed, token included."""
    return f"/api/calendar/{user}.ics?token={feed_token(secret, org, user)}"


def _org_config(request: web.Request, org: str) -> OrgConfig | None:
    compiled = request.app[REGISTRY].get(org)
    return compiled.bundle.org if compiled is not None else None


def _user(org: OrgConfig | None, user_id: str) -> User:
    user = org.user(user_id) if org is not None else None
    if user is None:
        raise ApiError(404, "not_found", f"no user {user_id!r} in this org", {"user": user_id})
    return user


async def _feed_org(request: web.Request, user: str) -> str:
    """The org whose feed is asked for: the API key's, or the token's when it is valid."""
    key = bearer(request)
    if key is not None:
        p = await request.app[KEYS].principal(key)
        if p is None:
            raise ApiError(401, "unauthorized", "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        return p.org
    token = request.query.get("token")
    if not token:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <key>, or the feed URL's ?token=",
                       headers={"WWW-Authenticate": "Bearer"})
    org, _, _digest = token.rpartition(".")
    secret = await request.app[STORE].feed_secret()
    if not org or not hmac.compare_digest(token.encode(), feed_token(secret, org, user).encode()):
        raise ApiError(401, "unauthorized", f"the token does not open the feed of {user!r}",
                       headers={"WWW-Authenticate": "Bearer"})
    return org


async def calendar_feed(request: web.Request) -> web.Response:
    """GET /api/calendar/{user}.ics: the user's events as iCalendar (API key or feed token)."""
    user_id = request.match_info["user"]
    org_id = await _feed_org(request, user_id)
    org = _org_config(request, org_id)
    user = _user(org, user_id)
    assert org is not None
    since = datetime.now(UTC) - timedelta(days=FEED_PAST_DAYS)
    events = await request.app[STORE].list_calendar_events(org_id, host=user.id, since=since)
    return web.Response(body=feed_ics(events, org=org, user=user), content_type="text/calendar", charset="utf-8",
                        headers={"Cache-Control": "private, max-age=300"})


def _json(data: Any) -> web.Response:
    return web.json_response(data, dumps=lambda d: json.dumps(d) + "\n")


async def list_events(request: web.Request) -> web.Response:
    """GET /api/agent/calendar?host=&from=&to=: the org's confirmed events overlapping the window, by start."""
    org_id = principal(request).org
    host = request.query.get("host")
    if host is not None:
        _user(_org_config(request, org_id), host)
    since, until = _time(request, "from", clamp=True), _time(request, "to", clamp=True)
    events = await request.app[STORE].list_calendar_events(org_id, host=host, since=since, until=until)
    return _json({"events": [e.to_json() for e in events]})


async def feed_link(request: web.Request) -> web.Response:
    """GET /api/agent/calendar/{user}/feed: the URL (with its token) to subscribe to the user's calendar."""
    org_id = principal(request).org
    user = _user(_org_config(request, org_id), request.match_info["user"])
    secret = await request.app[STORE].feed_secret()
    return _json({"url": feed_url(secret, org_id, user.id)})


def setup(app: web.Application) -> None:
    """Register the calendar routes."""
    app.router.add_get("/api/calendar/{user}.ics", calendar_feed)
    app.router.add_get("/api/agent/calendar", list_events)
    app.router.add_get("/api/agent/calendar/{user}/feed", feed_link)
