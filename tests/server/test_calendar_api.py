"""The calendar routes (server/api_calendar.py): the iCalendar feed by API key or feed token, events as JSON,
and the feed link."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from icalendar import Calendar

from server import api_calendar
from server.app import STORE, create_app
from server.auth import new_key
from tests.server.conftest import auth


@pytest.fixture
async def calendar_client(aiohttp_client: Any, make_settings: Any, service_env: None) -> tuple[Any, Any]:
    """A test app with the calendar routes, a booked event for u-sam and one for u-lee; and key_for(org)."""
    app = create_app(make_settings())
    if not any(r.resource is not None and r.resource.canonical == "/api/calendar/{user}.ics"
               for r in app.router.routes()):
        api_calendar.setup(app)  # until create_app registers them
    client = await aiohttp_client(app)

    async def key_for(org: str = "acme") -> str:
        key_id, key, key_hash = new_key()
        await client.app[STORE].add_api_key(key_id, org, f"{org}-tester", key_hash)
        return key

    store = client.app[STORE]
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)

    def never(busy: list[Any]) -> str:
        return "taken"

    for host, key in (("u-sam", "dec_s:0"), ("u-lee", "dec_l:0")):
        await store.book_event("acme", host=host, title=f"Intro call with {host}", start=start,
                               end=start + timedelta(minutes=30), attendees=[{"name": "Ada", "email": "ada@example.com"}],
                               decision_id=key.split(":")[0], action_key=key, buffer_minutes=0, replan=never)
    return client, key_for


async def test_the_feed_link_opens_the_feed(calendar_client: tuple[Any, Any]) -> None:
    client, key_for = calendar_client
    key = await key_for()
    link = await client.get("/api/agent/calendar/u-sam/feed", headers=auth(key))
    assert link.status == 200
    url = (await link.json())["url"]
    assert url.startswith("/api/calendar/u-sam.ics?token=acme.")
    feed = await client.get(url)
    assert feed.status == 200 and feed.content_type == "text/calendar" and feed.charset == "utf-8"
    cal = Calendar.from_ical(await feed.read())
    assert [str(e["summary"]) for e in cal.walk("VEVENT")] == ["Intro call with u-sam"]
    assert [e["categories"].cats for e in cal.walk("VEVENT")] == [["Astralis"]]


async def test_the_feed_with_an_api_key(calendar_client: tuple[Any, Any]) -> None:
    client, key_for = calendar_client
    resp = await client.get("/api/calendar/u-lee.ics", headers=auth(await key_for()))
    assert resp.status == 200
    cal = Calendar.from_ical(await resp.read())
    assert [str(e["summary"]) for e in cal.walk("VEVENT")] == ["Intro call with u-lee"]


async def test_the_feed_refuses_wrong_credentials(calendar_client: tuple[Any, Any]) -> None:
    client, key_for = calendar_client
    for headers, query in (({}, ""), ({}, "?token=acme.00ff"), ({}, "?token=nodot"),
                           ({"Authorization": "Bearer ak_nope_nope"}, "")):
        resp = await client.get(f"/api/calendar/u-sam.ics{query}", headers=headers)
        assert resp.status == 401, (headers, query)
        assert (await resp.json())["error"]["code"] == "unauthorized"
    # a token opens one user's feed only
    link = await (await client.get("/api/agent/calendar/u-sam/feed", headers=auth(await key_for()))).json()
    token = link["url"].split("token=")[1]
    assert (await client.get(f"/api/calendar/u-lee.ics?token={token}")).status == 401
    # another org's key knows no such user
    resp = await client.get("/api/calendar/u-sam.ics", headers=auth(await key_for("brightsmile")))
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    assert (await client.get("/api/calendar/u-ghost.ics", headers=auth(await key_for()))).status == 404


async def test_events_as_json(calendar_client: tuple[Any, Any]) -> None:
    client, key_for = calendar_client
    key = await key_for()
    resp = await client.get("/api/agent/calendar", headers=auth(key))
    assert resp.status == 200
    events = (await resp.json())["events"]
    assert sorted(e["host"] for e in events) == ["u-lee", "u-sam"]
    assert events[0]["status"] == "confirmed" and events[0]["attendees"] == [{"name": "Ada", "email": "ada@example.com"}]
    only = await (await client.get("/api/agent/calendar", params={"host": "u-lee"}, headers=auth(key))).json()
    assert [e["host"] for e in only["events"]] == ["u-lee"]
    past = await client.get("/api/agent/calendar", params={"to": "2000-01-01T00:00:00Z"}, headers=auth(key))
    assert (await past.json())["events"] == []
    far = await client.get("/api/agent/calendar", params={"from": "0001-01-01T00:00:00+05:00"}, headers=auth(key))
    assert far.status == 200 and len((await far.json())["events"]) == 2
    assert (await client.get("/api/agent/calendar", params={"from": "soon"}, headers=auth(key))).status == 400
    assert (await client.get("/api/agent/calendar", params={"from": "2026-01-01T00:00"}, headers=auth(key))).status == 400
    assert (await client.get("/api/agent/calendar", params={"host": "u-ghost"}, headers=auth(key))).status == 404
    other = await (await client.get("/api/agent/calendar", headers=auth(await key_for("brightsmile")))).json()
    assert other["events"] == []
    assert (await client.get("/api/agent/calendar")).status == 401


async def test_the_documented_paths_match_the_routes() -> None:
    from aiohttp import web

    from server.openapi_calendar import paths

    app = web.Application()
    api_calendar.setup(app)
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource and r.method != "HEAD"}
    documented = {(m.upper(), p) for p, item in paths().items() for m in item}
    assert routes == documented
