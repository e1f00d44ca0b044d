"""POST /api/agent/decisions/{id}/correct on both stores: a held decision approved with the change; an executed
one compensated through the outbox (intake moved and reassigned, the new assignee notified) exactly once; repeats
change nothing; every approval and correction is a label of its own org only."""

from __future__ import annotations

from collections import Counter

from server.app import SERVICE
from tests.server.conftest import auth

HELD = {"id": "evt-fix-held", "source": "EMAIL", "type": "email:received",
        "data": {"from": "Maya <maya@nordiclinens.com>", "subject": "Re: December retainer invoice",
                 "text": "Hi Kim, the checkout button does nothing on mobile again.\n\nOn Tue, Dec 8, 2026 Ana "
                         "wrote:\n> Attached is the invoice for the December retainer."}}
SALES = {"id": "evt-fix-sales", "source": "EMAIL", "type": "email:received",
         "data": {"from": "Dana <dana@example.com>", "subject": "Pricing for a small site",
                  "text": "Hi, could you send me your pricing for a 5-page brochure site? Thanks, Dana"}}


async def decide(client, key, event):
    r = await client.post("/api/agent/process?mode=sync", json=event, headers=auth(key))
    assert r.status == 200, await r.text()
    return await r.json()


async def detail(client, key, decision_id):
    r = await client.get(f"/api/agent/decisions/{decision_id}", headers=auth(key))
    assert r.status == 200
    return await r.json()


async def test_a_held_decision_is_approved_with_the_change(make_client):
    client, key_for = await make_client()
    acme = await key_for("acme", "ana@acme.example")
    held = await decide(client, acme, HELD)
    assert held["status"] == "REQUIRES_APPROVAL"
    body = {"intent": "SUPPORT_REQUEST", "assignee": "u-raj", "note": "checkout bug, not the invoice"}
    r = await client.post(f"/api/agent/decisions/{held['id']}/correct", json=body, headers=auth(acme))
    assert r.status == 200, await r.text()
    fixed = await r.json()
    assert fixed["status"] == "EXECUTED" and fixed["intent"] == "SUPPORT_REQUEST"
    assign = next(a for a in fixed["actions"] if a["type"] == "ASSIGN_PIPELINE")
    assert assign["params"]["pipeline"] == "support-requests" and assign["params"]["assignee"] == "u-raj"
    assert any("u-raj" in a["params"].get("to", []) for a in fixed["actions"] if a["type"] == "SEND_NOTIFICATION")
    assert await client.app[SERVICE].outbox.idle(15)
    d = await detail(client, acme, held["id"])
    assert d["trace"]["review"]["verdict"] == "approve" and d["trace"]["review"]["by"] == "ana@acme.example"
    assert d["trace"]["review"]["corrected"]["from"]["intent"] != "SUPPORT_REQUEST"
    assert len(d["outbox"]) == len(fixed["actions"]) and {a["status"] for a in d["outbox"]} == {"done"}
    again = await client.post(f"/api/agent/decisions/{held['id']}/correct", json=body, headers=auth(acme))
    assert again.status == 200 and again.headers.get("X-Astralis-Repeat") == "true"
    assert len((await detail(client, acme, held["id"]))["outbox"]) == len(d["outbox"])
    r = await client.get("/api/agent/labels", headers=auth(acme))
    [label] = (await r.json())["labels"]
    assert label["kind"] == "correction" and label["intent"] == "SUPPORT_REQUEST" and label["by"] == "ana@acme.example"
    assert label["assignee"] == "u-raj" and label["at"] and label["envelope"]["id"] == HELD["id"]
    assert label["decided"]["intent"] == d["trace"]["review"]["corrected"]["from"]["intent"]
    # the analytics page's per-rule precision: the rules that named the intent people kept, and those that did not
    report = await (await client.get("/api/agent/analytics", headers=auth(acme))).json()
    named = {r["rule"]: r["intent"] for r in d["trace"]["rules"] if r["intent"]}
    assert set(report["rule_precision"]) == set(named)
    for rule, intent in named.items():
        assert report["rule_precision"][rule]["precision"] == (1.0 if intent == "SUPPORT_REQUEST" else 0.0)


async def test_an_executed_decision_is_compensated_once(make_client):
    client, key_for = await make_client()
    acme = await key_for("acme")
    done = await decide(client, acme, SALES)
    assert done["status"] == "EXECUTED" and done["intent"] == "SALES_INQUIRY"
    assert await client.app[SERVICE].outbox.idle(15)
    first = await detail(client, acme, done["id"])
    intake_id = next(a["result"]["intake_id"] for a in first["outbox"] if a["type"] == "ASSIGN_PIPELINE")
    body = {"intent": "BILLING_QUESTION", "assignee": "u-ana", "priority": 4, "by": "omar", "note": "an invoice"}
    r = await client.post(f"/api/agent/decisions/{done['id']}/correct", json=body, headers=auth(acme))
    assert r.status == 200, await r.text()
    fixed = await r.json()
    assert fixed["intent"] == "SALES_INQUIRY"  # what was decided stays on record; the correction is beside it
    assert await client.app[SERVICE].outbox.idle(15)
    d = await detail(client, acme, done["id"])
    [fix] = d["trace"]["corrections"]
    assert fix["change"] == {"intent": "BILLING_QUESTION", "priority": 4, "pipeline": None, "assignee": "u-ana"}
    assert fix["by"] == "omar"
    extra = [a for a in d["outbox"] if a["key"].startswith(f"{done['id']}:fix1:")]
    assert Counter(a["type"] for a in extra)["ASSIGN_PIPELINE"] == 1 and {a["status"] for a in extra} == {"done"}
    r = await client.get(f"/api/agent/intakes/{intake_id}", headers=auth(acme))
    intake = await r.json()
    assert (intake["pipeline"], intake["assignee"], intake["priority"]) == ("general-intake", "u-ana", 4)
    r = await client.get("/api/agent/notifications?user=u-ana", headers=auth(acme))
    mine = [n for n in (await r.json())["notifications"] if n["decision_id"] == done["id"]]
    assert len(mine) == 1
    # the same correction again: nothing new anywhere
    again = await client.post(f"/api/agent/decisions/{done['id']}/correct", json=body, headers=auth(acme))
    assert again.status == 200 and again.headers.get("X-Astralis-Repeat") == "true"
    assert await client.app[SERVICE].outbox.idle(15)
    after = await detail(client, acme, done["id"])
    assert len(after["outbox"]) == len(d["outbox"]) and len(after["trace"]["corrections"]) == 1
    r = await client.get("/api/agent/notifications?user=u-ana", headers=auth(acme))
    assert len([n for n in (await r.json())["notifications"] if n["decision_id"] == done["id"]]) == 1


async def test_approvals_are_labels_and_labels_never_cross_orgs(make_client):
    client, key_for = await make_client()
    acme, bright = await key_for("acme", "kim"), await key_for("brightsmile")
    held = await decide(client, acme, HELD)
    r = await client.post(f"/api/agent/decisions/{held['id']}/approve", json={"note": "fine"}, headers=auth(acme))
    assert r.status == 200
    [label] = (await (await client.get("/api/agent/labels", headers=auth(acme))).json())["labels"]
    assert (label["kind"], label["intent"], label["by"]) == ("approval", held["intent"], "kim")
    assert (await (await client.get("/api/agent/labels", headers=auth(bright))).json())["labels"] == []
    r = await client.post(f"/api/agent/decisions/{held['id']}/correct", json={"intent": "SPAM"}, headers=auth(bright))
    assert r.status == 404
    assert len((await (await client.get("/api/agent/labels", headers=auth(acme))).json())["labels"]) == 1


async def test_a_correction_naming_what_the_org_lacks_is_refused(make_client):
    client, key_for = await make_client()
    acme = await key_for("acme")
    held = await decide(client, acme, HELD)
    for body in ({"intent": "SUPPORT_REQUEST", "pipeline": "billing-team"}, {"intent": "SUPPORT_REQUEST",
                                                                            "assignee": "u-nobody"}):
        r = await client.post(f"/api/agent/decisions/{held['id']}/correct", json=body, headers=auth(acme))
        assert r.status == 422 and (await r.json())["error"]["code"] == "invalid_correction"
    r = await client.post(f"/api/agent/decisions/{held['id']}/correct", json={"intent": "NOPE"}, headers=auth(acme))
    assert r.status == 422
    assert (await detail(client, acme, held["id"]))["status"] == "REQUIRES_APPROVAL"
