"""/api/agent/notifications: listing a user's notifications with paging and the unread count, marking read,
tenancy, bad parameters — and every answer matches the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from server import api_notifications
from server.app import STORE, Settings, create_app
from server.auth import new_key
from server.openapi import spec
from tests.server.conftest import auth

PATH = "/api/agent/notifications"


@pytest.fixture
async def client(aiohttp_client: Any, make_settings: Callable[..., Settings], service_env: None):
    """A test client of the app with the notification routes (registered here while create_app does not yet)."""
    app = create_app(make_settings(workers=False))
    if not any(r.resource is not None and r.resource.canonical == PATH for r in app.router.routes()):
        api_notifications.setup(app)
    return await aiohttp_client(app)


async def key_for(client: Any, org: str = "acme") -> str:
    key_id, key, key_hash = new_key()
    await client.app[STORE].add_api_key(key_id, org, f"{org}-tester", key_hash)
    return key


async def seed(client: Any, user: str = "u-sam", n: int = 5, org: str = "acme") -> list[str]:
    ids = []
    for i in range(n):
        row = {"org": org, "id": f"ntf-{org}-{user}-{i}", "user_id": user, "template": "new_intake",
               "subject": f"Subject {i}", "body": f"Body {i}", "priority": 3, "decision_id": f"dec-{i}"}
        await client.app[STORE].add_notifications([row], f"dec-{org}-{i}:1")
        ids.append(row["id"])
    return ids


DOC = spec()


def conforms(body: Any, path: str, method: str, status: int) -> None:
    """`body` matches the response the document gives for this route and status."""
    response = DOC["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = DOC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"]["application/json"]["schema"]
    # The document's components ride along, so that its "#/components/..." references resolve.
    Draft202012Validator({**schema, "components": DOC["components"]}).validate(body)


async def test_list_pages_newest_first_with_the_unread_count(client):
    key = await key_for(client)
    ids = await seed(client)
    await seed(client, "u-lee", 1)
    r = await client.get(PATH, params={"user": "u-sam", "limit": "2"}, headers=auth(key))
    assert r.status == 200
    page = await r.json()
    conforms(page, PATH, "get", 200)
    assert [n["id"] for n in page["notifications"]] == [ids[4], ids[3]]
    assert page["unread"] == 5 and page["next_cursor"]
    assert page["notifications"][0]["subject"] == "Subject 4" and page["notifications"][0]["read"] is False
    seen = [n["id"] for n in page["notifications"]]
    while page["next_cursor"]:
        r = await client.get(PATH, params={"user": "u-sam", "limit": "2", "cursor": page["next_cursor"]},
                             headers=auth(key))
        page = await r.json()
        conforms(page, PATH, "get", 200)
        seen += [n["id"] for n in page["notifications"]]
    assert seen == ids[::-1]


async def test_mark_read_is_idempotent_and_counts(client):
    key = await key_for(client)
    ids = await seed(client, n=3)
    r = await client.post(f"{PATH}/{ids[1]}/read", headers=auth(key))
    assert r.status == 200
    first = await r.json()
    conforms(first, f"{PATH}/{{id}}/read", "post", 200)
    assert first["id"] == ids[1] and first["read"] and first["read_at"]
    again = await (await client.post(f"{PATH}/{ids[1]}/read", headers=auth(key))).json()
    assert again["read_at"] == first["read_at"]
    page = await (await client.get(PATH, params={"user": "u-sam", "unread": "true"}, headers=auth(key))).json()
    assert page["unread"] == 2 and [n["id"] for n in page["notifications"]] == [ids[2], ids[0]]


async def test_another_orgs_notifications_are_not_found(client):
    acme, bright = await key_for(client), await key_for(client, "brightsmile")
    (acme_id,) = await seed(client, n=1)
    r = await client.post(f"{PATH}/{acme_id}/read", headers=auth(bright))
    assert r.status == 404
    body = await r.json()
    conforms(body, f"{PATH}/{{id}}/read", "post", 404)
    assert body["error"]["code"] == "not_found"
    r = await client.get(PATH, params={"user": "u-sam"}, headers=auth(bright))  # not a brightsmile user
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    assert (await client.app[STORE].get_notification("acme", acme_id))["read_at"] is None
    r = await client.post(f"{PATH}/nope/read", headers=auth(acme))
    assert r.status == 404


@pytest.mark.parametrize(("params", "field"), [
    ({}, "user"), ({"user": ""}, "user"), ({"user": "u-sam", "unread": "yes"}, "unread"),
    ({"user": "u-sam", "limit": "0"}, "limit"), ({"user": "u-sam", "limit": "501"}, "limit"),
    ({"user": "u-sam", "limit": "x"}, "limit"), ({"user": "u-sam", "cursor": "abc"}, "cursor"),
    ({"user": "u-sam", "cursor": "1" * 19}, "cursor"),
])
async def test_bad_parameters_are_400_naming_them(client, params, field):
    key = await key_for(client)
    r = await client.get(PATH, params=params, headers=auth(key))
    assert r.status == 400
    body = await r.json()
    conforms(body, PATH, "get", 400)
    assert body["error"]["code"] == "bad_request" and body["error"]["details"] == {"field": field}


async def test_unknown_user_is_404(client):
    key = await key_for(client)
    r = await client.get(PATH, params={"user": "u-ghost"}, headers=auth(key))
    assert r.status == 404
    conforms(await r.json(), PATH, "get", 404)


async def test_a_key_is_required(client):
    r = await client.get(PATH, params={"user": "u-sam"})
    assert r.status == 401
    r = await client.post(f"{PATH}/x/read")
    assert r.status == 401


def test_routes_are_documented():
    ops = {(m, p) for p, item in DOC["paths"].items() for m in item}
    assert {("get", PATH), ("post", f"{PATH}/{{id}}/read")} <= ops
