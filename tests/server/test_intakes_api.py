"""The intakes API (server/api_intakes.py): intakes made by the outbox from decided events, moves between stages
(which raise `pipeline:stage_changed`), the pipeline boards with loads, and the outbox's dead letters."""

from __future__ import annotations

from typing import Any

from engine.models import Action, Decision
from server.app import SERVICE, STORE
from tests.server.conftest import auth
from tests.server.test_api import SALES, assert_error, ev, wait_decided


def sales(n: int) -> dict[str, Any]:
    """The n-th sales inquiry (its own event id and sender)."""
    return ev(SALES, id=f"evt-sales-{n}", data={**SALES["data"], "from": f"Client {n} <client{n}@shop.example>"})


async def settle(client: Any) -> None:
    """Wait until the outbox has run everything that is due."""
    assert await client.app[SERVICE].outbox.idle(10)


async def decide(client: Any, key: str, event: dict[str, Any]) -> dict[str, Any]:
    """Process `event` synchronously and let the outbox run its actions; the decision."""
    r = await client.post("/api/agent/process?mode=sync", json=event, headers=auth(key))
    assert r.status == 200, await r.text()
    decision = await r.json()
    await settle(client)
    return decision


async def get(client: Any, key: str, path: str, status: int = 200) -> dict[str, Any]:
    r = await client.get(path, headers=auth(key))
    assert r.status == status, (path, await r.text())
    return await r.json()


async def intakes(client: Any, key: str, query: str = "") -> list[dict[str, Any]]:
    return (await get(client, key, "/api/agent/intakes" + query))["intakes"]


async def move(client: Any, key: str, intake_id: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    r = await client.post(f"/api/agent/intakes/{intake_id}/move", json=body, headers=auth(key))
    assert r.status == status, await r.text()
    return await r.json()


# ---- intakes from decisions ---------------------------------------------------------------------------

async def test_a_sales_email_becomes_an_intake(make_client):
    client, key_for = await make_client()
    key = await key_for()
    decision = await decide(client, key, SALES)
    assert decision["status"] == "EXECUTED" and decision["intent"] == "SALES_INQUIRY"
    [intake] = await intakes(client, key)
    assert (intake["pipeline"], intake["stage"], intake["assignee"]) == ("sales-inquiries", "new", "u-lee")
    assert intake["title"] == "Pricing for the pro plan"
    assert intake["contact"] == {"name": "Jo", "email": "jo@shop.example"}
    assert (intake["decision_id"], intake["event_id"], intake["closed"]) == (decision["id"], SALES["id"], False)
    assert [h["what"] for h in intake["history"]] == ["assigned"]
    # the outbox row says what it did
    actions = (await get(client, key, f"/api/agent/decisions/{decision['id']}"))["outbox"]
    [assign] = [a for a in actions if a["type"] == "ASSIGN_PIPELINE"]
    assert assign["status"] == "done" and assign["result"]["intake_id"] == intake["id"]
    assert assign["result"]["new"] is True


async def test_filters(make_client):
    client, key_for = await make_client()
    key = await key_for()
    await decide(client, key, SALES)
    [intake] = await intakes(client, key)
    for query, expected in [("?pipeline=sales-inquiries", 1), ("?pipeline=support-requests", 0),
                            ("?stage=new", 1), ("?stage=qualified", 0), ("?assignee=u-lee", 1),
                            ("?assignee=u-sam", 0), ("?open=true", 1), ("?open=false", 0),
                            ("?pipeline=sales-inquiries&stage=new&assignee=u-lee&open=true", 1),
                            ("?pipeline=sales-inquiries&assignee=u-sam", 0)]:
        assert [i["id"] for i in await intakes(client, key, query)] == [intake["id"]] * expected, query
    body = await get(client, key, "/api/agent/intakes?open=maybe", 400)
    assert_error(body, "bad_request")
    assert_error(await get(client, key, "/api/agent/intakes?cursor=abc", 400), "bad_request")


async def test_assignment_reads_live_loads_round_robin_and_pages(make_client):
    client, key_for = await make_client()
    key = await key_for()
    for n in (1, 2, 3):
        await decide(client, key, sales(n))
    # u-lee (by id), then u-sam (u-lee holds one), then u-lee again: equal loads, u-lee's turn came longer ago
    listed = await intakes(client, key)
    assert [(i["event_id"], i["assignee"]) for i in listed] == [
        ("evt-sales-3", "u-lee"), ("evt-sales-2", "u-sam"), ("evt-sales-1", "u-lee")]
    # cursor paging, one at a time, newest first
    seen, cursor = [], None
    while True:
        page = await get(client, key, "/api/agent/intakes?limit=1" + (f"&cursor={cursor}" if cursor else ""))
        assert len(page["intakes"]) == 1
        seen.append(page["intakes"][0]["id"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert seen == [i["id"] for i in listed]


async def test_get_one_intake(make_client):
    client, key_for = await make_client()
    key = await key_for()
    await decide(client, key, SALES)
    [listed] = await intakes(client, key)
    assert await get(client, key, f"/api/agent/intakes/{listed['id']}") == listed
    assert_error(await get(client, key, "/api/agent/intakes/int_nope", 404), "not_found")


# ---- moving between stages --------------------------------------------------------------------------------

async def test_a_move_grows_the_history_and_raises_a_decided_event(make_client):
    client, key_for = await make_client()
    key = await key_for()
    await decide(client, key, SALES)
    [intake] = await intakes(client, key)
    moved = await move(client, key, intake["id"], {"stage": "qualified", "note": "budget confirmed"})
    assert (moved["id"], moved["stage"], moved["assignee"], moved["closed"]) == (
        intake["id"], "qualified", "u-lee", False)
    event_id = moved["stage_event_id"]
    assert isinstance(event_id, str) and event_id
    assert len(moved["history"]) == 2
    step = moved["history"][1]
    assert (step["what"], step["from_stage"], step["stage"], step["by"], step["note"]) == (
        "moved", "new", "qualified", "acme-tester", "budget confirmed")
    assert (step["from_assignee"], step["assignee"]) == ("u-lee", "u-lee")
    stored = await get(client, key, f"/api/agent/intakes/{intake['id']}")
    assert stored["stage"] == "qualified" and stored["history"] == moved["history"]
    # the event is in the inbox and gets decided by the workers
    info = await wait_decided(client, "acme", event_id)
    assert info["status"] == "decided" and info["decision_id"]
    events = (await get(client, key, "/api/agent/events"))["events"]
    [raised] = [e for e in events if e["id"] == event_id]
    assert raised["type"] == "pipeline:stage_changed"
    data = raised["envelope"]["data"]
    assert (data["intakeId"], data["pipeline"], data["from_stage"], data["stage"]) == (
        intake["id"], "sales-inquiries", "new", "qualified")
    decision = await get(client, key, f"/api/agent/decisions/{info['decision_id']}")
    assert decision["event_id"] == event_id
    assert decision["input"] == {"source": "API", "type": "pipeline:stage_changed"}


async def test_moving_to_the_same_stage_raises_nothing(make_client):
    client, key_for = await make_client()
    key = await key_for()
    await decide(client, key, SALES)
    [intake] = await intakes(client, key)
    first = await move(client, key, intake["id"], {"stage": "qualified"})
    again = await move(client, key, intake["id"], {"stage": "qualified"})
    assert again["stage_event_id"] is None
    assert again["history"] == first["history"] and len(again["history"]) == 2
    await settle(client)
    events = (await get(client, key, "/api/agent/events"))["events"]
    assert [e["type"] for e in events].count("pipeline:stage_changed") == 1


async def test_a_move_can_reassign_unassign_and_close(make_client):
    client, key_for = await make_client()
    key = await key_for()
    await decide(client, key, SALES)
    [intake] = await intakes(client, key)
    iid = intake["id"]
    moved = await move(client, key, iid, {"stage": "proposal", "assignee": "u-sam", "by": "Dana"})
    assert (moved["stage"], moved["assignee"], moved["history"][-1]["by"]) == ("proposal", "u-sam", "Dana")
    # the same stage with another assignee is a change too
    moved = await move(client, key, iid, {"stage": "proposal", "assignee": None})
    assert moved["assignee"] is None and moved["stage_event_id"] is not None
    moved = await move(client, key, iid, {"stage": "lost", "assignee": "u-sam"})
    assert moved["closed"] is True
    assert [i["id"] for i in await intakes(client, key, "?open=false")] == [iid]
    assert await intakes(client, key, "?open=true") == []
    # back from a closed stage: open again
    moved = await move(client, key, iid, {"stage": "qualified"})
    assert moved["closed"] is False and moved["assignee"] == "u-sam"
    assert len(moved["history"]) == 5


async def test_unknown_stage_or_assignee_is_422_and_changes_nothing(make_client):
    client, key_for = await make_client()
    key = await key_for()
    await decide(client, key, SALES)
    [intake] = await intakes(client, key)
    body = await move(client, key, intake["id"], {"stage": "triage"}, 422)  # a stage of another pipeline
    assert_error(body, "invalid")
    assert "triage" in body["error"]["message"] and "sales-inquiries" in body["error"]["message"]
    body = await move(client, key, intake["id"], {"stage": "qualified", "assignee": "u-ghost"}, 422)
    assert_error(body, "invalid")
    assert "u-ghost" in body["error"]["message"]
    await move(client, key, intake["id"], {"stage": "qualified", "surprise": 1}, 422)
    await move(client, key, intake["id"], {}, 422)
    assert await get(client, key, f"/api/agent/intakes/{intake['id']}") == intake
    assert_error(await move(client, key, "int_nope", {"stage": "qualified"}, 404), "not_found")


async def test_another_orgs_key_sees_no_intake(make_client):
    client, key_for = await make_client()
    acme, bright = await key_for("acme"), await key_for("brightsmile")
    await decide(client, acme, SALES)
    [intake] = await intakes(client, acme)
    assert_error(await get(client, bright, f"/api/agent/intakes/{intake['id']}", 404), "not_found")
    assert_error(await move(client, bright, intake["id"], {"stage": "qualified"}, 404), "not_found")
    assert await intakes(client, bright) == []
    assert await get(client, acme, f"/api/agent/intakes/{intake['id']}") == intake


# ---- pipeline boards -------------------------------------------------------------------------------------

async def test_pipelines_show_counts_per_stage_and_loads(make_client):
    client, key_for = await make_client()
    key = await key_for()
    for n in (1, 2, 3):
        await decide(client, key, sales(n))
    listed = await intakes(client, key)
    await move(client, key, listed[0]["id"], {"stage": "qualified"})  # u-lee's second
    await move(client, key, listed[1]["id"], {"stage": "lost"})  # u-sam's only one, closed
    board = await get(client, key, "/api/agent/pipelines")
    by_id = {p["id"]: p for p in board["pipelines"]}
    assert set(by_id) == {"sales-inquiries", "support-requests", "general-intake"}
    sales_board = by_id["sales-inquiries"]
    assert sales_board["team"] == ["u-sam", "u-lee"] and sales_board["closed_stages"] == ["lost"]
    assert [(s["id"], s["intakes"]) for s in sales_board["stages"]] == [
        ("new", 1), ("qualified", 1), ("proposal", 0), ("won", 0), ("lost", 0)]
    assert all(s["intakes"] == 0 for p in ("support-requests", "general-intake") for s in by_id[p]["stages"])
    users = {u["id"]: u for u in board["users"]}
    assert users["u-lee"] == {"id": "u-lee", "name": "Lee Park", "role": "SALES", "capacity": 12, "open": 2}
    assert users["u-sam"]["open"] == 0 and users["u-omar"]["open"] == 0
    # brightsmile's board knows nothing of acme's intakes
    bright = await key_for("brightsmile")
    other = await get(client, bright, "/api/agent/pipelines")
    assert all(s["intakes"] == 0 for p in other["pipelines"] for s in p["stages"])


# ---- the outbox ------------------------------------------------------------------------------------------

def broken_decision() -> Decision:
    """An executed decision whose one action triggers a workflow the policy does not define."""
    return Decision(event_id="evt-handmade-1", org="acme", input={"source": "API", "type": "lead:scored"},
                    intent="SALES_INQUIRY", priority=3, decision_type="TRIGGER_AUTOMATION", confidence=0.9,
                    decided_by="rules", reasoning="made by the test", status="EXECUTED",
                    actions=[Action(type="TRIGGER_AUTOMATION", params={"workflow": "no-such-workflow"})])


async def dead_action(client: Any) -> tuple[Decision, str]:
    decision = broken_decision()
    await client.app[STORE].complete_events([decision])
    await client.app[SERVICE].notify()
    await settle(client)
    return decision, f"{decision.id}:0"


async def test_a_dead_action_is_listed_and_can_be_retried(make_client):
    client, key_for = await make_client()
    key = await key_for()
    decision, action_key = await dead_action(client)
    dead = (await get(client, key, "/api/agent/actions?status=dead"))["actions"]
    [row] = [a for a in dead if a["key"] == action_key]
    assert (row["type"], row["status"], row["decision_id"], row["index"]) == (
        "TRIGGER_AUTOMATION", "dead", decision.id, 0)
    assert "no-such-workflow" in row["error"]
    assert row["attempts"] == 1 and [e["outcome"] for e in row["attempt_log"]] == ["dead"]
    failed = await get(client, key, f"/api/agent/decisions/{decision.id}")
    assert failed["status"] == "FAILED" and "no-such-workflow" in failed["error"]
    # every listed action has the status asked for
    assert all(a["status"] == "dead" for a in dead)
    assert all(a["status"] == "pending" for a in (await get(client, key, "/api/agent/actions?status=pending"))["actions"])

    r = await client.post(f"/api/agent/actions/{action_key}/retry", headers=auth(key))
    assert r.status == 202, await r.text()
    body = await r.json()
    assert body["key"] == action_key and body["status"] in ("pending", "running", "dead")
    await settle(client)
    # still undefined: it fails again, after a second attempt that is on record
    row = await client.app[STORE].get_action("acme", action_key)
    assert row is not None and row["status"] == "dead"
    assert [e["outcome"] for e in row["attempt_log"]] == ["dead", "dead"]
    stored = await client.app[STORE].get_decision("acme", decision.id)
    assert stored is not None and stored.status == "FAILED"
    assert [r["by"] for r in stored.trace["action_retries"]] == ["acme-tester"]


async def test_retrying_an_action_that_is_not_dead_is_409_and_unknown_is_404(make_client):
    client, key_for = await make_client()
    key = await key_for()
    decision = await decide(client, key, SALES)
    r = await client.post(f"/api/agent/actions/{decision['id']}:0/retry", headers=auth(key))
    assert r.status == 409
    body = await r.json()
    assert_error(body, "not_dead")
    assert body["error"]["details"] == {"status": "done"}
    r = await client.post("/api/agent/actions/dec_nope:0/retry", headers=auth(key))
    assert r.status == 404
    assert_error(await r.json(), "not_found")


async def test_another_orgs_dead_actions_are_invisible(make_client):
    client, key_for = await make_client()
    bright = await key_for("brightsmile")
    _, action_key = await dead_action(client)
    assert (await get(client, bright, "/api/agent/actions"))["actions"] == []
    r = await client.post(f"/api/agent/actions/{action_key}/retry", headers=auth(bright))
    assert r.status == 404
    row = await client.app[STORE].get_action("acme", action_key)
    assert row is not None and row["status"] == "dead" and row["attempts"] == 1


async def test_actions_filter_and_paging(make_client):
    client, key_for = await make_client()
    key = await key_for()
    await decide(client, key, SALES)
    everything = (await get(client, key, "/api/agent/actions"))["actions"]
    assert len(everything) >= 2  # the assignment and the team's notification (and perhaps a failure notice)
    done = (await get(client, key, "/api/agent/actions?status=done"))["actions"]
    assert "ASSIGN_PIPELINE" in [a["type"] for a in done] and all(a["status"] == "done" for a in done)
    seen, cursor = [], None
    while True:
        page = await get(client, key, "/api/agent/actions?limit=1" + (f"&cursor={cursor}" if cursor else ""))
        seen += [a["key"] for a in page["actions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [a["key"] for a in everything]
    assert_error(await get(client, key, "/api/agent/actions?status=lost", 400), "bad_request")


async def test_intake_routes_need_a_key(make_client):
    client, _ = await make_client()
    for method, path in [("GET", "/api/agent/intakes"), ("GET", "/api/agent/intakes/x"),
                         ("POST", "/api/agent/intakes/x/move"), ("GET", "/api/agent/pipelines"),
                         ("GET", "/api/agent/actions"), ("POST", "/api/agent/actions/x:0/retry")]:
        r = await client.request(method, path, json={"stage": "new"} if method == "POST" else None)
        assert r.status == 401, path



# ---- the host platform's intakes ----------------------------------------------------------------------

def host_intake(intake_id: str) -> dict[str, Any]:
    """The host platform announces an intake of its own (a sales question)."""
    return {"id": "evt-host-1", "source": "WEBHOOK", "type": "intake:created",
            "data": {"intakeId": intake_id, "title": "Quote for the pro plan",
                     "description": "How much does the pro plan cost? Please send a quote.", "channel": "web"}}


async def test_a_host_intake_keeps_its_id_and_can_be_moved(make_client):
    client, key_for = await make_client()
    key = await key_for()
    await decide(client, key, host_intake("crm-4711"))
    intake = await get(client, key, "/api/agent/intakes/crm-4711")
    assert (intake["pipeline"], intake["title"], intake["event_id"]) == (
        "sales-inquiries", "Quote for the pro plan", "evt-host-1")
    moved = await move(client, key, "crm-4711", {"stage": "qualified"})
    info = await wait_decided(client, "acme", moved["stage_event_id"])
    assert info["status"] == "decided"
    [raised] = [e for e in (await get(client, key, "/api/agent/events"))["events"] if e["id"] == moved["stage_event_id"]]
    assert raised["envelope"]["data"]["intakeId"] == "crm-4711"


async def test_a_host_intake_with_a_long_id_can_be_moved(make_client):
    client, key_for = await make_client()
    key = await key_for()
    long_id = "crm-" + "x" * 196  # intake_id() keeps host ids up to 200 characters
    await decide(client, key, host_intake(long_id))
    assert (await get(client, key, f"/api/agent/intakes/{long_id}"))["id"] == long_id
    moved = await move(client, key, long_id, {"stage": "qualified"})
    assert moved["stage"] == "qualified" and moved["stage_event_id"]
