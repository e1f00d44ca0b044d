"""What the dashboard reads besides decisions (issue 16): each decision's event as a person reads it
(`include=event`: sender, subject, first lines without the quoted reply), scoped to the key's org, and the org's
profile (`/api/agent/org`: name, time zone, users who take bookings, pipelines)."""

from __future__ import annotations

from tests.server.conftest import auth
from tests.server.test_api import HELD, SALES


async def test_decisions_include_their_events_as_a_person_reads_them(make_client):
    client, key_for = await make_client()
    key, other = await key_for("acme"), await key_for("brightsmile")
    for event in (SALES, HELD):
        assert (await client.post("/api/agent/process?mode=sync", json=event, headers=auth(key))).status == 200
    plain = await (await client.get("/api/agent/decisions", headers=auth(key))).json()
    assert "events" not in plain  # only when asked
    page = await (await client.get("/api/agent/decisions?include=event", headers=auth(key))).json()
    assert len(page["decisions"]) == 2
    assert page["events"]["evt-held-1"] == {
        "sender": "Maya <maya@nordiclinens.com>", "subject": "Re: December retainer invoice",
        "snippet": "Hi Kim, sorry to bug you - the same bug is back. The checkout button does nothing on mobile again "
                   "(iPhone, Safari and Chrome). Maya"}  # the quoted invoice reply left out
    assert page["events"]["evt-sales-1"]["subject"] == "Pricing for the pro plan"
    # another org sees neither the decisions nor their events
    theirs = await (await client.get("/api/agent/decisions?include=event", headers=auth(other))).json()
    assert theirs == {"decisions": [], "next_cursor": None, "events": {}}
    bad = await client.get("/api/agent/decisions?include=trace", headers=auth(key))
    assert bad.status == 400 and (await bad.json())["error"]["details"] == {"field": "include"}


async def test_the_org_profile_names_the_zone_hosts_and_pipelines(make_client):
    client, key_for = await make_client()
    r = await client.get("/api/agent/org", headers=auth(await key_for("acme")))
    assert r.status == 200
    org = await r.json()
    assert org["id"] == "acme" and org["timezone"] == "America/New_York"
    assert [u["id"] for u in org["users"] if u["takes_bookings"]] == ["u-sam", "u-lee"]
    assert {"id": "general-intake", "name": "General intake"} in org["pipelines"]


async def test_decisions_oldest_first_page_through_the_queue(make_client):
    client, key_for = await make_client()
    key = await key_for("acme")
    for i in range(5):
        r = await client.post("/api/agent/process?mode=sync", json={**HELD, "id": f"held-{i}"}, headers=auth(key))
        assert r.status == 200
    seen, cursor = [], None
    while True:
        q = "status=REQUIRES_APPROVAL&order=oldest&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(f"/api/agent/decisions?{q}", headers=auth(key))).json()
        seen += [d["event_id"] for d in page["decisions"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [f"held-{i}" for i in range(5)]
    newest = await (await client.get("/api/agent/decisions?status=REQUIRES_APPROVAL", headers=auth(key))).json()
    assert [d["event_id"] for d in newest["decisions"]] == [f"held-{i}" for i in reversed(range(5))]
    bad = await client.get("/api/agent/decisions?order=random", headers=auth(key))
    assert bad.status == 400 and (await bad.json())["error"]["details"] == {"field": "order"}
