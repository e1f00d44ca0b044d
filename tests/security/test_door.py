"""Issue 13, findings 5 and 8: input is checked at the door, and a failure stays with its own request.

Finding 5 (one bad request fails others): an event id with a NUL is refused before anything is written, and a
row that makes the store raise all the same (the door bypassed) fails alone — the shared group commit writes
its batch again in parts. Finding 8 (500 for bad input): JSON nested 10,000 deep, integers of more than 4,300
digits, non-finite numbers, dates out of range, control characters in parameters and deep YAML are 4xx naming
the problem; an out-of-range date that got in before the door existed is decided (escalated), not retried until
dead, and `simulate` with `past` over it answers 200. The service tests run on SQLite and PostgreSQL."""

# ruff: noqa: F811  (the service fixtures are imported from tests/server/conftest.py, then named as arguments)
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, time
from typing import Any

import pytest

from adapters.sqlite_store import InboxItem
from engine.config import Source
from engine.models import Event
from engine.schedule import WorkHours, plan_booking
from server.app import SERVICE, STORE
from server.service import GroupCommit
from server.signing import sign
from tests.server.conftest import SECRET, auth, config_dirs, make_client, make_settings, service_env  # noqa: F401

SALES = {"source": "EMAIL", "type": "email:received",
         "data": {"from": "jo@shop.example", "subject": "Pricing for the pro plan", "text": "How much is it?"}}
BOOKING = {"form": "booking", "name": "Jo Client", "email": "jo@client.example", "host": "u-sam",
           "requested_start": "2026-12-08T10:00:00-05:00", "duration_minutes": 30, "purpose": "Demo"}
YEAR_ONE = "0001-01-01T00:00:00Z"


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    """The JSON error body of `resp`, which must have `status`: `{"code", "message", "details"}`."""
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body["error"]) == {"code", "message", "details"}
    return dict(body["error"])


def fields_of(err: dict[str, Any]) -> list[str]:
    """The fields a 422 names in its details."""
    return [d["field"] for d in err["details"]]


def signed(body: bytes, delivery: str | None = None) -> dict[str, str]:
    """Headers of an acme webhook delivery signed now."""
    out = {"Content-Type": "application/json", "X-Astralis-Signature": sign(SECRET, body, int(datetime.now(UTC)
                                                                                             .timestamp()))}
    if delivery:
        out["X-Astralis-Delivery"] = delivery
    return out


async def inbox_ids(client: Any, org: str) -> set[str]:
    rows, _ = await client.app[STORE].list_events(org, limit=500)
    return {r["id"] for r in rows}


# ---- finding 5: one bad request fails others ----------------------------------------------------------------

async def test_nul_event_id_among_240_concurrent_requests_of_another_org(make_client: Callable[..., Any]) -> None:
    """The finding as reported: acme posts an event id with a NUL while brightsmile posts 240 events at once.
    Every brightsmile event is stored and answered 202; the bad one is refused at the door, naming `id`."""
    client, key_for = await make_client(requests_per_minute=100_000)
    acme, bright = auth(await key_for("acme")), auth(await key_for("brightsmile"))

    async def one(i: int) -> Any:
        body = {**SALES, "id": f"bright-{i}"}
        return await client.post("/api/agent/process?mode=queue", json=body, headers=bright)

    bad = client.post("/api/agent/process?mode=queue", json={**SALES, "id": "evil\x00id"}, headers=acme)
    answers = await asyncio.gather(bad, *(one(i) for i in range(240)))
    err = await error_of(answers[0], 422)
    assert fields_of(err) == ["id"] and "U+0000" in err["message"]
    assert [r.status for r in answers[1:]] == [202] * 240
    assert await inbox_ids(client, "brightsmile") == {f"bright-{i}" for i in range(240)}
    assert await inbox_ids(client, "acme") == set()


async def test_a_row_the_store_refuses_fails_alone_in_its_group_commit(make_client: Callable[..., Any]) -> None:
    """The door bypassed: the service accepts 240 events of brightsmile and, in the same batch, an acme event
    whose id the store cannot write (a NUL). The 240 are stored and answered as new; only the bad one raises."""
    client, _ = await make_client()
    service = client.app[SERVICE]
    writes: list[int] = []
    store_write = service._accept._write  # the store's accept_events: counted, to see the batches

    async def counted(items: list[InboxItem]) -> Any:
        writes.append(len(items))
        return await store_write(items)

    service._accept._write = counted
    bad = Event(id="evil\x00id", org="acme", source=Source.API, type="email:received", data={})
    good = [Event(id=f"bright-{i}", org="brightsmile", source=Source.API, type="email:received", data={})
            for i in range(240)]
    results = await asyncio.gather(*(service.accept(e, channel="api") for e in [*good[:120], bad, *good[120:]]),
                                   return_exceptions=True)
    assert writes[0] == 241, f"not one shared batch: {writes}"
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and results[120] is failed[0]
    accepted = [r for r in results if not isinstance(r, BaseException)]
    assert all(a.new and a.status == "accepted" for a in accepted) and len(accepted) == 240
    assert await inbox_ids(client, "brightsmile") == {e.id for e in good}
    assert await inbox_ids(client, "acme") == set()
    assert len(writes) <= 1 + 2 * 9, f"the batch was not split in halves: {len(writes)} writes"


async def test_an_unreachable_store_fails_the_batch_at_once() -> None:
    """An outage is no row's fault: every waiter learns at once, without a retry per row."""
    calls: list[int] = []

    async def write(items: list[int]) -> list[int]:
        calls.append(len(items))
        raise ConnectionRefusedError("store down")

    gc: GroupCommit[int, int] = GroupCommit(write, split=lambda exc: not isinstance(exc, OSError))
    results = await asyncio.gather(*(gc.submit(i) for i in range(50)), return_exceptions=True)
    assert all(isinstance(r, ConnectionRefusedError) for r in results)
    assert calls == [50]  # one shared batch, not written again in parts


# ---- finding 8: 500 for bad input ---------------------------------------------------------------------------

async def test_json_nested_10000_deep_is_400_naming_the_problem(make_client: Callable[..., Any]) -> None:
    client, key_for = await make_client()
    key = auth(await key_for())
    deep = "[" * 10_000 + "]" * 10_000
    in_data = '{"type": "email:received", "data": {"a": ' + deep + "}}"
    for body in (deep, in_data):
        r = await client.post("/api/agent/process", data=body, headers={**key, "Content-Type": "application/json"})
        err = await error_of(r, 400)
        assert err["code"] == "too_deep" and "64 levels" in err["message"]
    r = await client.post("/api/webhooks/acme/form", data=in_data, headers=signed(in_data.encode()))
    assert (await error_of(r, 400))["code"] == "too_deep"
    assert await inbox_ids(client, "acme") == set()


@pytest.mark.parametrize("depth", [65, 500, 100_000])
async def test_json_nested_past_the_limit_is_400_at_any_depth(make_client: Callable[..., Any], depth: int) -> None:
    """Just past the limit (found by the door's walk, which names where), and far past it (the parser stops)."""
    client, key_for = await make_client()
    key = {**auth(await key_for()), "Content-Type": "application/json"}
    body = '{"type": "email:received", "data": ' + '{"a": ' * (depth - 1) + "1" + "}" * depth
    err = await error_of(await client.post("/api/agent/process", data=body, headers=key), 400)
    assert err["code"] == "too_deep" and err["details"]["limit"] == 64
    fits = '{"type": "email:received", "data": ' + '{"a": ' * 62 + "1" + "}" * 63
    assert (await client.post("/api/agent/process?mode=queue", data=fits, headers=key)).status == 202


async def test_integer_over_4300_digits_is_422_naming_the_field(make_client: Callable[..., Any]) -> None:
    client, key_for = await make_client()
    key = {**auth(await key_for()), "Content-Type": "application/json"}
    body = '{"type": "email:received", "data": {"order": {"amount": ' + "9" * 5000 + "}}}"
    err = await error_of(await client.post("/api/agent/process", data=body, headers=key), 422)
    assert fields_of(err) == ["data.order.amount"] and "5000 digits" in err["message"]
    r = await client.post("/api/webhooks/acme/form", data=body, headers=signed(body.encode()))
    assert fields_of(await error_of(r, 422)) == ["data.order.amount"]
    ok = '{"type": "email:received", "data": {"n": ' + "9" * 4300 + "}}"
    assert (await client.post("/api/agent/process?mode=queue", data=ok, headers=key)).status == 202


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_numbers_that_are_not_finite_are_422_naming_the_field(make_client: Callable[..., Any],
                                                                     number: str) -> None:
    client, key_for = await make_client()
    key = {**auth(await key_for()), "Content-Type": "application/json"}
    body = '{"type": "email:received", "data": {"score": [1, ' + number + "]}}"
    assert fields_of(await error_of(await client.post("/api/agent/process", data=body, headers=key), 422)) == [
        "data.score.1"]


async def test_lone_surrogate_is_422_naming_the_field(make_client: Callable[..., Any]) -> None:
    client, key_for = await make_client()
    key = {**auth(await key_for()), "Content-Type": "application/json"}
    body = '{"type": "email:received", "data": {"text": "hi \\ud800 there"}}'
    assert fields_of(await error_of(await client.post("/api/agent/process", data=body, headers=key), 422)) == [
        "data.text"]


@pytest.mark.parametrize("when", [YEAR_ONE, "9999-12-31T23:59:59-05:00", "1969-12-31T23:59:59Z"])
async def test_occurred_at_out_of_range_is_422_naming_the_field(make_client: Callable[..., Any], when: str) -> None:
    client, key_for = await make_client()
    key = auth(await key_for())
    err = await error_of(await client.post("/api/agent/process", json={**SALES, "occurred_at": when},
                                           headers=key), 422)
    assert "occurred_at" in fields_of(err) and "1970-2200" in err["message"]
    trigger = {"table": "intakes", "operation": "INSERT", "row": {}, "occurred_at": when}
    assert "occurred_at" in fields_of(await error_of(await client.post("/api/agent/db-trigger", json=trigger,
                                                                       headers=key), 422))
    envelope = json.dumps({"id": "hook-old", "data": BOOKING, "occurred_at": when}).encode()
    r = await client.post("/api/webhooks/acme/booking", data=envelope, headers=signed(envelope))
    assert "occurred_at" in fields_of(await error_of(r, 422))
    r = await client.post("/api/agent/simulate", json={"events": [{**SALES, "occurred_at": when}]}, headers=key)
    assert "occurred_at" in fields_of(await error_of(r, 422))
    assert await inbox_ids(client, "acme") == set()


async def test_control_characters_in_ids_and_names_are_422(make_client: Callable[..., Any]) -> None:
    client, key_for = await make_client()
    key = auth(await key_for())
    err = await error_of(await client.post("/api/agent/process", json={**SALES, "id": "a\x01b"}, headers=key), 422)
    assert fields_of(err) == ["id"] and "U+0001" in err["message"]
    r = await client.post("/api/webhooks/acme/form", data=b"{}", headers=signed(b"{}", delivery="x\tz"))
    assert fields_of(await error_of(r, 422)) == ["id"]
    r = await client.post("/api/agent/decisions/d1/reject", json={"reason": "no", "by": "mallory\x00"}, headers=key)
    assert fields_of(await error_of(r, 422)) == ["by"]


@pytest.mark.parametrize("path", ["/api/agent/decisions/a%00b", "/api/agent/events/a%00b",
                                  "/api/agent/decisions?cursor=%00", "/api/agent/events/x%01/retry"])
async def test_control_characters_in_parameters_are_400_naming_them(make_client: Callable[..., Any],
                                                                    path: str) -> None:
    client, key_for = await make_client()
    key = auth(await key_for())
    method = client.post if path.endswith("/retry") else client.get
    err = await error_of(await method(path, headers=key), 400)
    assert err["details"]["field"] in ("id", "cursor") and "control character" in err["message"]


async def test_an_event_stored_with_year_one_is_decided_not_retried_until_dead(make_client: Callable[..., Any]) -> None:
    """An event stored before the door refused such dates: a booking at year 1 is escalated (the planner does
    no date arithmetic with it) on the first attempt, and simulate with past over it answers 200."""
    client, key_for = await make_client()
    key = auth(await key_for())
    service = client.app[SERVICE]
    old = Event(id="year-one", org="acme", source=Source.WEBHOOK, type="booking:created", data=BOOKING,
                occurred_at=datetime.fromisoformat(YEAR_ONE))
    assert (await service.accept(old, channel="api")).new
    for _ in range(200):
        info = await client.app[STORE].event_info("acme", "year-one")
        if info["status"] in ("decided", "dead"):
            break
        await asyncio.sleep(0.02)
    assert info["status"] == "decided" and info["attempts"] == 1, info
    decision = await client.app[STORE].get_decision("acme", info["decision_id"])
    assert decision.decision_type == "ESCALATE" and "1970-2200" in decision.reasoning

    r = await client.post("/api/agent/simulate", json={"past": 5}, headers=key)
    assert r.status == 200, await r.text()
    out = await r.json()
    assert [(d["event_id"], d["decision_type"]) for d in out["decisions"]] == [("year-one", "ESCALATE")]


HOURS = WorkHours("America/New_York", time(9), time(17), time(12), time(13), frozenset(range(5)))


@pytest.mark.parametrize("now", [datetime(2026, 12, 1, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC),
                                 datetime.fromisoformat("9999-12-31T23:59:59-05:00"),
                                 datetime.fromisoformat("0001-01-01T00:00:00+05:00")])
@pytest.mark.parametrize("requested", [None, "9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00",
                                       "9999-12-31T10:00:00", "2201-01-01T10:00:00Z"])
@pytest.mark.parametrize("text", ["on 9999-12-31 at 10:00", "Dec 31 9999 at 3pm", "0001-01-01 10:00"])
def test_the_planner_escalates_dates_outside_its_years_instead_of_overflowing(now: datetime, requested: str | None,
                                                                               text: str) -> None:
    """Whatever date gets in (the event's time, the requested start, a date in the text), the booking planner
    answers: such a booking escalates, saying which date is outside 1970–2200."""
    out = plan_booking(requested_start=requested, duration_minutes=30, text=text, host="u-sam", hours=HOURS,
                       busy=[], now=now)
    assert out.status == "escalate" and out.start is None
    assert "outside the years 1970–2200" in out.reason


# ---- deep YAML in config validate and simulate ----------------------------------------------------------------

DEEP_YAML = "rules: " + "[" * 10_000 + "]" * 10_000 + "\n"


async def test_deep_yaml_in_config_validate_and_simulate_is_4xx(make_client: Callable[..., Any]) -> None:
    """YAML nested 10,000 deep (engine/loader.py refuses it while parsing): 422 naming the file and the problem
    from config validate, simulate with a proposed config, and config update, which changes nothing."""
    client, key_for = await make_client()
    key = auth(await key_for())
    before = (await (await client.get("/api/agent/config", headers=key)).json())["revision"]
    config = {"files": {"deep.yaml": DEEP_YAML}}
    for path, body in (("/api/agent/config/validate", config), ("/api/agent/config", config),
                       ("/api/agent/simulate", {"events": [SALES], "config": config})):
        err = await error_of(await client.post(path, json=body, headers=key), 422)
        assert "deep.yaml" in json.dumps(err) and "yaml_too_deep" in json.dumps(err), (path, err)
    assert (await (await client.get("/api/agent/config", headers=key)).json())["revision"] == before
