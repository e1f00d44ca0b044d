"""POST /api/webhooks/{org}/{kind}: signature checks that write nothing when they fail, replay and duplicate
protection (also under concurrency), each channel's envelope, and the JSON errors for bad requests."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import pytest

from server.app import SERVICE, STORE
from server.signing import HEADER, sign
from server.webhooks import DELIVERY
from tests.server.conftest import SECRET, auth, raw_rows

NOW = 1_900_000_000
"""The server's wall clock in these tests (`clock=`), so that timestamps at the tolerance edge are exact."""

SALES = {"form": "contact", "name": "Jo Client", "email": "jo@client.example", "category": None,
         "message": "Hi, could you send me pricing for the pro plan?"}
EMAIL = {"from": "jo@client.example", "to": "hello@acme.example", "subject": "Pricing",
         "text": "Hi, could you send me pricing for the pro plan?"}
URGENT = {"from": "ops@client.example", "to": "support@acme.example",
          "subject": "URGENT: our site is down, customers cannot order",
          "text": "URGENT: our site is down, customers cannot order"}


def encode(data: Any) -> bytes:
    """A JSON body as the sender would put it on the wire."""
    return json.dumps(data).encode()


def headers(body: bytes, *, secret: str = SECRET, t: int = NOW, delivery: str | None = None,
            content_type: str = "application/json", signature: str | None = None) -> dict[str, str]:
    """The headers of a delivery signed with `secret` at `t` (or carrying `signature` as given)."""
    out = {"Content-Type": content_type, HEADER: signature if signature is not None else sign(secret, body, t)}
    if delivery is not None:
        out[DELIVERY] = delivery
    return out


def v1(secret: str, body: bytes, t: int = NOW) -> str:
    """Just the hex HMAC of one `v1=` element."""
    return sign(secret, body, t).partition(",v1=")[2]


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> Any:
    """The service with its wall clock stopped at NOW."""
    c, _ = await make_client(clock=lambda: float(NOW))
    return c


async def post(client: Any, kind: str, body: bytes, hdrs: dict[str, str], org: str = "acme") -> Any:
    return await client.post(f"/api/webhooks/{org}/{kind}", data=body, headers=hdrs)


async def error(resp: Any, status: int, code: str) -> dict[str, Any]:
    """Assert a JSON error answer `{"error": {"code", "message", "details"}}`; return the error object."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"code", "message", "details"}
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    return err


async def events(client: Any, org: str = "acme") -> list[dict[str, Any]]:
    page, _ = await client.app[STORE].list_events(org)
    return page


async def decisions(client: Any, org: str = "acme") -> list[Any]:
    page, _ = await client.app[STORE].list_decisions(org)
    return page


async def seen_signatures(client: Any) -> int:
    # The store has no public reader for the replay table (only remember_signature, which writes).
    rows = await raw_rows(client.app[STORE], "SELECT count(*) AS n FROM seen_signatures")
    return int(rows[0]["n"])


async def assert_nothing_written(client: Any, org: str = "acme") -> None:
    assert await events(client, org) == []
    assert await decisions(client, org) == []
    assert await seen_signatures(client) == 0


async def decided(client: Any, event_id: str, org: str = "acme", seconds: float = 1.5) -> dict[str, Any]:
    """The inbox row of `event_id` once a worker has decided it."""
    store = client.app[STORE]
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        info = await store.event_info(org, event_id)
        if info is not None and info["status"] == "decided":
            return info
        assert asyncio.get_running_loop().time() < deadline, f"event {event_id} not decided: {info}"
        await asyncio.sleep(0.02)


# ---- signatures: refused, and nothing written -------------------------------------------------------------

async def test_missing_signature_header_is_refused(client: Any) -> None:
    body = encode(SALES)
    resp = await post(client, "form", body, {"Content-Type": "application/json", DELIVERY: "d-1"})
    err = await error(resp, 401, "invalid_signature")
    assert err["details"] == {"reason": "missing_signature"}
    await assert_nothing_written(client)


@pytest.mark.parametrize("signature", [
    "v1=" + "ab" * 32,  # no timestamp
    f"t={NOW}",  # no signature
    f"t={NOW},v1=xyz",  # not hex
    f"t=+{NOW},v1=" + "ab" * 32,  # not plain digits
    "garbage",
])
async def test_malformed_signature_header_is_refused(client: Any, signature: str) -> None:
    body = encode(SALES)
    resp = await post(client, "form", body, headers(body, signature=signature, delivery="d-1"))
    err = await error(resp, 401, "invalid_signature")
    assert err["details"] == {"reason": "malformed_signature"}
    await assert_nothing_written(client)


async def test_forged_signature_is_refused(client: Any) -> None:
    body = encode(SALES)
    resp = await post(client, "form", body,
                      headers(body, signature=f"t={NOW},v1={secrets.token_hex(32)}", delivery="d-1"))
    err = await error(resp, 401, "invalid_signature")
    assert err["details"] == {"reason": "signature_mismatch"}
    await assert_nothing_written(client)


async def test_signature_by_another_secret_is_refused(client: Any) -> None:
    body = encode(SALES)
    resp = await post(client, "form", body, headers(body, secret="whsec-someone-else", delivery="d-1"))
    err = await error(resp, 401, "invalid_signature")
    assert err["details"] == {"reason": "signature_mismatch"}
    await assert_nothing_written(client)


async def test_body_changed_by_one_byte_after_signing_is_refused(client: Any) -> None:
    body = encode(SALES)
    hdrs = headers(body, delivery="d-1")
    tampered = body.replace(b"pro plan", b"pro plam")
    assert len(tampered) == len(body) and sum(a != b for a, b in zip(body, tampered, strict=True)) == 1
    err = await error(await post(client, "form", tampered, hdrs), 401, "invalid_signature")
    assert err["details"] == {"reason": "signature_mismatch"}
    await assert_nothing_written(client)


@pytest.mark.parametrize(("t", "skew"), [(NOW - 301, "301 s old"), (NOW + 301, "301 s in the future")])
async def test_timestamp_beyond_tolerance_is_refused(client: Any, t: int, skew: str) -> None:
    body = encode(SALES)
    resp = await post(client, "form", body, headers(body, t=t, delivery="d-1"))
    err = await error(resp, 401, "invalid_signature")
    assert err["details"] == {"reason": "timestamp_out_of_tolerance"}
    assert skew in err["message"]
    await assert_nothing_written(client)


async def test_timestamp_at_the_tolerance_edge_is_accepted(client: Any) -> None:
    for i, t in enumerate((NOW - 300, NOW + 300)):
        body = encode({**SALES, "name": f"Jo {i}"})
        resp = await post(client, "form", body, headers(body, t=t, delivery=f"edge-{i}"))
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["event_id"] == f"edge-{i}"
    assert sorted(e["id"] for e in await events(client)) == ["edge-0", "edge-1"]


# ---- replays -------------------------------------------------------------------------------------------

async def test_replayed_delivery_answers_409_with_the_original_event(client: Any) -> None:
    body = encode(SALES)
    hdrs = headers(body, delivery="d-replay")
    first = await post(client, "form", body, hdrs)
    assert first.status == 202
    assert (await first.json())["event_id"] == "d-replay"
    before = await client.app[STORE].event_info("acme", "d-replay")

    # The very same request again, then the same delivery freshly signed (a sender's retry).
    for again in (hdrs, headers(body, t=NOW + 1, delivery="d-replay")):
        err = await error(await post(client, "form", body, again), 409, "duplicate_delivery")
        assert err["details"]["event_id"] == "d-replay"
        assert err["details"]["status"] in ("accepted", "processing", "decided")

    assert [e["id"] for e in await events(client)] == ["d-replay"]
    after = await client.app[STORE].event_info("acme", "d-replay")
    assert after is not None and before is not None
    assert after["received_at"] == before["received_at"] and after["envelope"] == before["envelope"]
    assert await seen_signatures(client) == 1  # the refused retries left no trace


async def test_same_signed_request_with_another_delivery_id_is_a_replay(client: Any) -> None:
    body = encode(SALES)
    signature = sign(SECRET, body, NOW)
    assert (await post(client, "form", body, headers(body, signature=signature, delivery="d-1"))).status == 202
    resp = await post(client, "form", body, headers(body, signature=signature, delivery="d-2"))
    err = await error(resp, 409, "replayed_signature")
    assert set(err["details"]) == {"event_id", "status", "decision_id"}
    assert [e["id"] for e in await events(client)] == ["d-1"]
    assert await seen_signatures(client) == 1


async def test_a_delivery_whose_accept_failed_can_be_retried_with_the_same_bytes(client: Any) -> None:
    # The signature is remembered in the inbox transaction: when that fails, the sender's identical retry
    # must not be taken for a replay.
    body = encode(SALES)
    hdrs = headers(body, delivery="d-retry")
    inbox = client.app[SERVICE]._accept
    real = inbox._write

    async def broken(items: Any) -> Any:
        raise RuntimeError("disk full")

    inbox._write = broken
    try:
        resp = await post(client, "form", body, hdrs)
    finally:
        inbox._write = real
    await error(resp, 500, "internal")
    assert await seen_signatures(client) == 0
    assert (await post(client, "form", body, hdrs)).status == 202
    assert [e["id"] for e in await events(client)] == ["d-retry"]


@pytest.mark.parametrize("rewrite", [
    lambda t, sig: f"t={t}, v1={sig}",  # whitespace
    lambda t, sig: f"v1={sig},t={t}",  # order
    lambda t, sig: f"t={t},v1={sig.upper()}",  # hex case
    lambda t, sig: f"t={t},v1={sig},v0=ignored",  # an unknown scheme
    lambda t, sig: f"t={t},v1={secrets.token_hex(32)},v1={sig}",  # a decoy signature
], ids=["whitespace", "order", "case", "extra-scheme", "decoy"])
async def test_replay_with_a_reformatted_signature_header_is_still_a_replay(
        client: Any, rewrite: Callable[[int, str], str]) -> None:
    body = encode(SALES)
    assert (await post(client, "form", body, headers(body, delivery="d-1"))).status == 202
    # The header verifies just as well written differently; the signed content is the same, so it is a replay.
    resp = await post(client, "form", body, headers(body, signature=rewrite(NOW, v1(SECRET, body)), delivery="d-2"))
    await error(resp, 409, "replayed_signature")
    assert [e["id"] for e in await events(client)] == ["d-1"]


# ---- which orgs can receive -----------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["signed", "missing", "malformed", "stale"])
async def test_unknown_org_answers_exactly_like_a_bad_signature(client: Any, case: str) -> None:
    body = encode(SALES)
    if case == "missing":
        for_acme = for_unknown = {"Content-Type": "application/json"}
    elif case == "malformed":
        for_acme = for_unknown = headers(body, signature="t=soon,v1=abc")
    elif case == "stale":
        for_acme = for_unknown = headers(body, t=NOW - 3600)
    else:
        # A correctly signed request to an org that does not exist, next to a wrongly signed one to acme.
        for_unknown = headers(body)
        for_acme = headers(body, secret="whsec-someone-else")
    known = await post(client, "form", body, for_acme)
    unknown = await post(client, "form", body, for_unknown, org="no-such-org")
    assert unknown.status == known.status == 401
    assert await unknown.json() == await known.json()
    assert unknown.headers.get("Content-Type") == known.headers.get("Content-Type")
    await assert_nothing_written(client)
    await assert_nothing_written(client, "no-such-org")


async def test_org_without_its_secret_in_the_environment_accepts_nothing(
        client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIGHTSMILE_WEBHOOK_SECRET", raising=False)
    body = encode(SALES)
    for secret in (SECRET, "whsec-anything"):
        resp = await post(client, "form", body, headers(body, secret=secret, delivery="d-1"), org="brightsmile")
        err = await error(resp, 401, "invalid_signature")
        # Nothing tells the caller that the org exists but has no secret: it reads as any bad signature.
        assert err["details"] == {"reason": "signature_mismatch"}
    await assert_nothing_written(client, "brightsmile")


@pytest.mark.parametrize("which", ["new", "old"])
async def test_receiver_with_two_secrets_accepts_either(
        make_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    monkeypatch.setenv("ACME_WEBHOOK_SECRET", "whsec-new,whsec-old")
    client, _ = await make_client(clock=lambda: float(NOW))
    body = encode(SALES)
    resp = await post(client, "form", body, headers(body, secret=f"whsec-{which}", delivery=f"d-{which}"))
    assert resp.status == 202, await resp.text()
    assert [e["id"] for e in await events(client)] == [f"d-{which}"]


async def test_sender_with_two_signatures_is_accepted_by_a_receiver_with_only_the_new_secret(
        make_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_WEBHOOK_SECRET", "whsec-new")
    client, _ = await make_client(clock=lambda: float(NOW))
    body = encode(SALES)
    both = f"t={NOW},v1={v1('whsec-old', body)},v1={v1('whsec-new', body)}"
    resp = await post(client, "form", body, headers(body, signature=both, delivery="d-rotated"))
    assert resp.status == 202, await resp.text()
    assert [e["id"] for e in await events(client)] == ["d-rotated"]
    # ...while a signature by the old secret alone no longer is.
    old_only = encode({**SALES, "name": "Old"})
    resp = await post(client, "form", old_only, headers(old_only, secret="whsec-old", delivery="d-old"))
    await error(resp, 401, "invalid_signature")


async def test_oversized_body_is_refused_with_413(make_client: Callable[..., Any]) -> None:
    client, _ = await make_client(clock=lambda: float(NOW), max_body_bytes=1024)
    body = encode({**SALES, "message": "x" * 2048})
    err = await error(await post(client, "form", body, headers(body, delivery="d-big")), 413, "payload_too_large")
    assert "1024" in err["message"]
    await assert_nothing_written(client)


# ---- duplicates under concurrency -----------------------------------------------------------------------

async def test_ten_concurrent_copies_of_a_delivery_make_one_event_one_decision(client: Any) -> None:
    body = encode(SALES)
    hdrs = headers(body, delivery="d-concurrent")
    answers = await asyncio.gather(*(post(client, "form", body, hdrs) for _ in range(10)))
    statuses = sorted(r.status for r in answers)
    assert statuses == [202] + [409] * 9
    refused = [(await r.json())["error"]["code"] for r in answers if r.status == 409]
    # Whichever check a copy reached first: the delivery id (already in the inbox) or the signature (already seen).
    assert set(refused) <= {"duplicate_delivery", "replayed_signature"}

    info = await decided(client, "d-concurrent")
    assert [e["id"] for e in await events(client)] == ["d-concurrent"]
    [decision] = await decisions(client)
    assert decision.id == info["decision_id"] and decision.event_id == "d-concurrent"
    assert decision.status == "EXECUTED" and decision.intent == "SALES_INQUIRY"
    actions = await client.app[STORE].list_actions("acme", decision.id)
    assert len(actions) == len(decision.actions) > 0
    assert [a["key"] for a in actions] == [a.idempotency_key for a in decision.actions]


async def test_ten_concurrent_copies_to_the_api_make_one_event_one_decision(
        make_client: Callable[..., Any]) -> None:
    client, key_for = await make_client()
    key = await key_for("acme")
    envelope = {"id": "api-concurrent", "source": "EMAIL", "type": "email:received", "data": EMAIL}
    answers = await asyncio.gather(*(client.post("/api/agent/process?mode=sync", json=envelope, headers=auth(key))
                                     for _ in range(10)))
    assert all(r.status in (200, 202) for r in answers), [r.status for r in answers]
    originals = [r for r in answers if r.headers.get("X-Astralis-Duplicate") != "true"]
    assert len(originals) == 1 and originals[0].status == 200
    decision_id = (await originals[0].json())["id"]
    for r in answers:
        out = await r.json()
        assert out.get("event_id") == "api-concurrent"
        assert out.get("decision_id", out.get("id")) in (decision_id, None)
    assert [e["id"] for e in await events(client)] == ["api-concurrent"]
    assert [d.id for d in await decisions(client)] == [decision_id]


# ---- channels --------------------------------------------------------------------------------------------

async def envelope(client: Any, event_id: str) -> dict[str, Any]:
    info = await client.app[STORE].event_info("acme", event_id)
    assert info is not None
    return info["envelope"]


async def test_email_json_becomes_an_email_received_event(client: Any) -> None:
    body = encode(EMAIL)
    resp = await post(client, "email", body, headers(body, delivery="mail-1"))
    assert resp.status == 202  # a normal email is queued
    assert await resp.json() == {"event_id": "mail-1", "status": "accepted", "duplicate": False,
                                 "decision_id": None, "mode": "queue"}
    env = await envelope(client, "mail-1")
    assert (env["org"], env["source"], env["type"]) == ("acme", "EMAIL", "email:received")
    assert env["data"] == EMAIL


async def test_urgent_email_is_decided_at_once(client: Any) -> None:
    body = encode(URGENT)
    resp = await post(client, "email", body, headers(body, delivery="mail-urgent"))
    assert resp.status == 200, await resp.text()
    decision = await resp.json()
    assert decision["event_id"] == "mail-urgent"
    assert decision["priority"] == 5 and decision["status"] == "EXECUTED"
    info = await client.app[STORE].event_info("acme", "mail-urgent")
    assert info is not None and info["status"] == "decided" and info["decision_id"] == decision["id"]


def _mime(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Jo Client <jo@client.example>"
    msg["To"] = "hello@acme.example"
    msg["Subject"] = subject
    return msg


async def test_raw_mime_reply_is_parsed_with_quoted_history_marked(client: Any) -> None:
    msg = _mime("Re: Pricing")
    msg.set_content("Thanks! Could you send me pricing for the pro plan?\n\n"
                    "On Mon, 3 Mar 2025 at 10:00, Sam Carter <sam@acme.example> wrote:\n"
                    "Happy to help.\nWhich plan are you on?\n")
    raw = msg.as_bytes()
    resp = await post(client, "email", raw, headers(raw, content_type="message/rfc822", delivery="mime-reply"))
    assert resp.status == 202, await resp.text()
    env = await envelope(client, "mime-reply")
    assert (env["source"], env["type"]) == ("EMAIL", "email:received")
    data = env["data"]
    assert data["from"] == "Jo Client <jo@client.example>"
    assert data["to"] == "hello@acme.example"
    assert data["subject"] == "Re: Pricing"
    assert data["text"].split("\n") == [
        "Thanks! Could you send me pricing for the pro plan?",
        "",
        "> On Mon, 3 Mar 2025 at 10:00, Sam Carter <sam@acme.example> wrote:",
        "> Happy to help.",
        "> Which plan are you on?",
    ]


async def test_raw_mime_html_only_message_is_converted_to_text(client: Any) -> None:
    msg = _mime("Pricing")
    msg.set_content("<html><body><p>Hello <b>team</b>,</p>"
                    "<p>Could you send me pricing for the <i>pro</i> plan?</p></body></html>", subtype="html")
    raw = msg.as_bytes()
    resp = await post(client, "email", raw, headers(raw, content_type="message/rfc822", delivery="mime-html"))
    assert resp.status == 202, await resp.text()
    data = (await envelope(client, "mime-html"))["data"]
    assert data["subject"] == "Pricing" and data["from"] == "Jo Client <jo@client.example>"
    assert data["text"] == "Hello team,\n\nCould you send me pricing for the pro plan?"


async def test_form_becomes_a_form_submitted_event(client: Any) -> None:
    body = encode(SALES)
    assert (await post(client, "form", body, headers(body, delivery="form-1"))).status == 202
    env = await envelope(client, "form-1")
    assert (env["source"], env["type"], env["data"]) == ("WEBHOOK", "form:submitted", SALES)


async def test_whole_envelope_body_gives_its_id_and_time(client: Any) -> None:
    body = encode({"id": "form-env", "occurred_at": "2030-01-08T10:00:00-05:00", "data": SALES})
    resp = await post(client, "form", body, headers(body))  # no delivery header: the body's id is used
    assert resp.status == 202 and (await resp.json())["event_id"] == "form-env"
    env = await envelope(client, "form-env")
    assert env["data"] == SALES
    assert datetime.fromisoformat(env["occurred_at"]) == datetime(2030, 1, 8, 15, tzinfo=UTC)


async def test_booking_becomes_a_booking_created_event(client: Any) -> None:
    booking = {"form": "booking", "name": "Jo Client", "email": "jo@client.example",
               "requested_start": "2030-01-08T10:00:00-05:00", "duration_minutes": 30, "purpose": "demo",
               "host": "u-sam"}
    body = encode(booking)
    assert (await post(client, "booking", body, headers(body, delivery="book-1"))).status == 202
    env = await envelope(client, "book-1")
    assert (env["source"], env["type"], env["data"]) == ("WEBHOOK", "booking:created", booking)


async def test_n8n_callback_keeps_its_payload(client: Any) -> None:
    callback = {"workflow": "send-quote", "execution_id": "812", "decision_id": "dec_1",
                "idempotency_key": "dec_1:0", "result": {"sent": True}, "data": {"rows": 3}}
    body = encode(callback)
    assert (await post(client, "n8n", body, headers(body, delivery="n8n-1"))).status == 202
    env = await envelope(client, "n8n-1")
    assert (env["source"], env["type"]) == ("WEBHOOK", "automation:completed")
    assert env["data"] == {**callback, "status": "success"}


async def test_n8n_failure_callback_gets_error_status_and_the_missing_fields(client: Any) -> None:
    body = encode({"error": "SMTP timeout"})
    assert (await post(client, "n8n", body, headers(body, delivery="n8n-2"))).status == 202
    data = (await envelope(client, "n8n-2"))["data"]
    assert data == {"error": "SMTP timeout", "status": "error", "workflow": None, "execution_id": None,
                    "decision_id": None, "idempotency_key": None}


# ---- bad requests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "content_type"), [("form", "text/plain"), ("booking", "application/x-www-form-urlencoded"),
                                                    ("email", "text/html")])
async def test_wrong_content_type_is_415(client: Any, kind: str, content_type: str) -> None:
    body = encode(SALES)
    resp = await post(client, kind, body, headers(body, content_type=content_type, delivery="d-1"))
    await error(resp, 415, "unsupported_media_type")
    await assert_nothing_written(client)


async def test_invalid_json_is_400(client: Any) -> None:
    body = b'{"form": "contact", "message": '
    resp = await post(client, "form", body, headers(body, delivery="d-1"))
    await error(resp, 400, "bad_json")
    await assert_nothing_written(client)


async def test_json_that_is_not_an_object_is_422(client: Any) -> None:
    body = encode(["not", "an", "object"])
    await error(await post(client, "form", body, headers(body, delivery="d-1")), 422, "invalid")
    await assert_nothing_written(client)


async def test_unknown_kind_is_404(client: Any) -> None:
    body = encode(SALES)
    resp = await post(client, "invoice", body, headers(body, delivery="d-1"))
    err = await error(resp, 404, "not_found")
    assert "email" in err["message"]  # names the kinds there are
    await assert_nothing_written(client)


def test_signature_helper_matches_the_scheme() -> None:
    body = encode(SALES)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers(body)[HEADER] == f"t={NOW},v1={expected}"
