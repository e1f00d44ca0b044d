"""GET /api/stream: server-sent events of the key's org's decisions, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.server.conftest import auth
from tests.server.test_api import HELD, SALES, ev


async def read_events(resp: Any, n: int, within: float = 5.0) -> list[dict[str, Any]]:
    """The next `n` SSE events (id, event, data) from a streaming response; comments (pings) skipped."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}

    async def go() -> None:
        nonlocal current
        while len(out) < n:
            raw = await resp.content.readline()
            if not raw:
                raise AssertionError(f"stream ended after {out}")
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if current:
                    out.append(current)
                current = {}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                current[field] = value.lstrip(" ")

    await asyncio.wait_for(go(), within)
    return out


async def test_stream_sends_new_decisions_and_reviews_of_the_keys_org_only(make_client):
    client, key_for = await make_client()
    acme, bright = await key_for("acme"), await key_for("brightsmile")
    resp = await client.get("/api/stream", headers=auth(acme))
    other = await client.get("/api/stream", headers=auth(bright))
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    ready = (await read_events(resp, 1))[0]
    assert ready["event"] == "ready" and json.loads(ready["data"])["org"] == "acme"
    await read_events(other, 1)

    d1 = await (await client.post("/api/agent/process?mode=sync", json=SALES, headers=auth(acme))).json()
    d2 = await (await client.post("/api/agent/process?mode=sync", json=HELD, headers=auth(acme))).json()
    await client.post(f"/api/agent/decisions/{d2['id']}/approve", headers=auth(acme))
    events = await read_events(resp, 3)
    assert [e["event"] for e in events] == ["decision.executed", "decision.awaiting_approval", "decision.approved"]
    payloads = [json.loads(e["data"]) for e in events]
    assert [p["decision"]["id"] for p in payloads] == [d1["id"], d2["id"], d2["id"]]
    assert [p["new"] for p in payloads] == [True, True, False]
    assert payloads[2]["decision"]["status"] == "EXECUTED"
    ids = [e["id"] for e in events]
    assert len(set(ids)) == 3 and not any(i.isdigit() for i in ids)  # opaque, per org (server/cursors.py)

    # brightsmile's stream saw nothing of acme's
    try:
        leaked = await read_events(other, 1, within=0.5)
    except TimeoutError:
        leaked = []
    assert leaked == []
    resp.close()
    other.close()

    # resume after the first event: the two later ones come again, and a new one after them
    again = await client.get("/api/stream", headers={**auth(acme), "Last-Event-ID": ids[0]})
    await read_events(again, 1)  # ready
    await client.post("/api/agent/process?mode=sync", json=ev(SALES, id="later"), headers=auth(acme))
    resumed = await read_events(again, 3)
    assert [e["id"] for e in resumed[:2]] == ids[1:]  # the same entry keeps its id
    assert json.loads(resumed[2]["data"])["decision"]["event_id"] == "later"
    again.close()


async def test_stream_needs_a_key_and_a_last_event_id_of_its_own(make_client):
    client, key_for = await make_client()
    assert (await client.get("/api/stream")).status == 401
    key = await key_for()
    r = await client.get("/api/stream", headers={**auth(key), "Last-Event-ID": "abc"})
    assert r.status == 400
    assert (await r.json())["error"]["code"] == "bad_request"


async def test_queued_decisions_reach_the_stream(make_client):
    client, key_for = await make_client()
    key = await key_for()
    resp = await client.get("/api/stream", headers=auth(key))
    await read_events(resp, 1)
    await client.post("/api/agent/process?mode=queue", json=ev(SALES, id="q1"), headers=auth(key))
    (e,) = await read_events(resp, 1)
    assert e["event"] == "decision.executed" and json.loads(e["data"])["decision"]["event_id"] == "q1"
    resp.close()
