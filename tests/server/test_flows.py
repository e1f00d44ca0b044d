"""End-to-end flows through the service and the executors, locked as snapshots of the whole trace: an intake
routed to a pipeline and its assignee (the seed's §5.1), and a booking form turned into a calendar event with
confirmations and reminders (§5.2). Real SQLite, a real SMTP server (aiosmtpd), the real outbox."""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import re
from collections import Counter
from collections.abc import AsyncIterator
from email.message import Message
from pathlib import Path
from typing import Any

import icalendar
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from syrupy.extensions.json import JSONSnapshotExtension

from server.app import SERVICE, STORE
from tests.server.conftest import auth

VOLATILE = {"at", "attempt_at", "created_at", "updated_at", "started_at", "finished_at", "duration_ms", "ms",
            "execution_ms", "executed_at", "available_at", "read_at", "id", "decision_id", "key", "event_id",
            "intake_id", "in_app", "timings"}


class Mailbox:
    """An aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(content, policy=email.policy.default)))
        return "250 OK"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Mailbox, int]]:
    box = Mailbox()
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(box), "127.0.0.1", 0)
    yield box, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


class OneSnapshotForEveryStore(JSONSnapshotExtension):
    """The flows run on each store (`store_url`) and must give the same decisions and effects: both runs are
    compared with one snapshot, named without the store."""

    @classmethod
    def get_snapshot_name(cls, *, test_location: Any, index: Any = 0) -> str:
        name = super().get_snapshot_name(test_location=test_location, index=index)
        return name.replace("[sqlite]", "").replace("[postgres]", "")


@pytest.fixture
def snapshot_json(snapshot: Any) -> Any:
    return snapshot.use_extension(OneSnapshotForEveryStore)


def scrub(value: Any, ids: dict[str, str]) -> Any:
    """`value` without volatile fields, with generated ids replaced by stable names."""
    if isinstance(value, dict):
        return {k: scrub(v, ids) for k, v in sorted(value.items()) if k not in VOLATILE}
    if isinstance(value, list):
        return [scrub(v, ids) for v in value]
    if isinstance(value, str):
        for raw, name in ids.items():
            value = value.replace(raw, name)
        return re.sub(r"\b(dec|int|ntf|cal|evt)_[0-9a-f]{12,}\b", r"<\1>", value)
    return value


async def run_flow(client: Any, key: str, event: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/api/agent/process?mode=sync", json=event, headers=auth(key))
    assert r.status == 200, await r.text()
    decision = await r.json()
    assert await client.app[SERVICE].outbox.idle(15)
    r = await client.get(f"/api/agent/decisions/{decision['id']}", headers=auth(key))
    return await r.json()


def mail_summary(box: Mailbox) -> list[dict[str, Any]]:
    out = []
    for rcpts, msg in box.messages:
        parts = [p.get_content_type() for p in msg.walk() if not p.is_multipart()]
        out.append({"to": rcpts, "subject": msg["Subject"], "from": msg["From"], "parts": parts})
    return sorted(out, key=lambda m: (m["to"], m["subject"]))


SMTP_ALLOWED = "127.0.0.1/32"
"""The operator's egress allow-list of the flows that mail: the test SMTP server listens on loopback, which is
refused by default."""


def with_email(config_dirs: tuple[Path, Path], port: int) -> None:
    acme = config_dirs[1] / "acme.yaml"
    acme.write_text(acme.read_text() + f"""
notifications:
  channels: [in_app, email]
  email: {{host: 127.0.0.1, port: {port}, from: agent@acme.example}}
""")


async def test_intake_routing_flow(make_client, config_dirs, smtp, snapshot_json) -> None:
    """§5.1: an inquiry by e-mail → rules → SALES_INQUIRY → intake in sales-inquiries with the least loaded
    salesperson → the sales team notified in the app and by e-mail."""
    box, port = smtp
    with_email(config_dirs, port)
    client, key_for = await make_client(egress_allow=SMTP_ALLOWED)
    key = await key_for()
    event = {"id": "flow-intake-1", "source": "EMAIL", "type": "email:received",
             "data": {"from": "Jo Rivera <jo@shop.example>", "to": "hello@acme.example",
                      "subject": "Pricing for a new store",
                      "text": "Hi, how much would a Shopify build cost? We'd like a quote and a demo."}}
    detail = await run_flow(client, key, event)
    assert detail["status"] == "EXECUTED" and {a["status"] for a in detail["outbox"]} == {"done"}
    store = client.app[STORE]
    [intake], _ = await store.list_intakes("acme")
    notes = {u: (await store.list_notifications("acme", u))[0] for u in ("u-sam", "u-lee")}
    ids = {detail["id"]: "<decision>", intake.id: "<intake>"}
    snapshot = {
        "decision": scrub({k: detail[k] for k in ("intent", "decision_type", "status", "priority", "confidence",
                                                  "decided_by", "matched_rules", "reasoning", "actions")}, ids),
        "outbox": scrub([{k: a[k] for k in ("index", "type", "status", "attempts", "error", "result")}
                         for a in detail["outbox"]], ids),
        "intake": scrub(intake.to_json(), ids),
        "in_app": scrub({u: [{k: n[k] for k in ("template", "subject", "priority")} for n in rows]
                         for u, rows in notes.items()}, ids),
        "emails": mail_summary(box),
    }
    assert snapshot == snapshot_json


async def test_booking_form_flow(make_client, config_dirs, smtp, snapshot_json) -> None:
    """§5.2: a booking form → rules → CREATE_EVENT with the slot checked → the host's calendar event, reminders
    24 h and 1 h before, the host told (in the app, and by e-mail with the invitation), the guest's confirmation
    with the invitation; the host's feed lists it."""
    box, port = smtp
    with_email(config_dirs, port)
    client, key_for = await make_client(egress_allow=SMTP_ALLOWED)
    key = await key_for()
    event = {"id": "flow-booking-1", "source": "WEBHOOK", "type": "booking:created",
             "data": {"form": "booking", "name": "Luca Bianchi", "email": "luca@example.com",
                      "requested_start": "2031-03-11T10:00:00-04:00", "duration_minutes": 30,
                      "purpose": "Discuss the new menu pages", "host": "u-sam"}}
    detail = await run_flow(client, key, event)
    assert detail["status"] == "EXECUTED" and {a["status"] for a in detail["outbox"]} == {"done"}, detail["outbox"]
    store = client.app[STORE]
    [booked] = await store.list_calendar_events("acme", host="u-sam")
    reminders = await store.calendar_reminders("acme", booked.id)
    ids = {detail["id"]: "<decision>", booked.id: "<calendar event>"}
    host_notes, *_ = await store.list_notifications("acme", "u-sam")
    snapshot = {
        "decision": scrub({k: detail[k] for k in ("intent", "decision_type", "status", "priority", "confidence",
                                                  "decided_by", "matched_rules", "reasoning", "actions")}, ids),
        "outbox": scrub([{k: a[k] for k in ("index", "type", "status", "attempts", "error", "result")}
                         for a in detail["outbox"]], ids),
        "calendar_event": scrub(booked.to_json(), ids),
        "reminders": scrub(reminders, ids),
        "in_app": scrub([{k: n[k] for k in ("template", "subject")} for n in host_notes], ids),
        "emails": mail_summary(box),
    }
    assert snapshot == snapshot_json
    # the guest's invitation parses as RFC 5545 and names the booked slot
    [(_, guest)] = [(to, m) for to, m in box.messages if to == ["luca@example.com"]]
    [ics] = [p for p in guest.walk() if p.get_content_type() == "text/calendar"]
    cal = icalendar.Calendar.from_ical(ics.get_payload(decode=True))
    [vevent] = cal.walk("VEVENT")
    assert vevent.decoded("DTSTART") == booked.start and str(vevent["SUMMARY"]) == "Discuss the new menu pages"
    # the host's feed lists it
    r = await client.get("/api/calendar/u-sam.ics", headers=auth(key))
    assert r.status == 200 and r.content_type == "text/calendar"
    feed = icalendar.Calendar.from_ical(await r.read())
    assert [str(e["UID"]) for e in feed.walk("VEVENT")] == [str(vevent["UID"])]


async def test_twenty_concurrent_bookings_of_one_slot(make_client) -> None:
    """20 booking requests for the same host and slot at once: exactly one is booked there; every other one is
    moved to another free slot (no two overlap) or, failing that, escalated — none is lost or double-booked."""
    client, key_for = await make_client()
    key = await key_for()
    slot = "2031-03-11T10:00:00-04:00"

    async def book(i: int) -> dict[str, Any]:
        event = {"id": f"race-{i:02d}", "source": "WEBHOOK", "type": "booking:created",
                 "data": {"form": "booking", "name": f"Guest {i}", "email": f"guest{i}@example.com",
                          "requested_start": slot, "duration_minutes": 30, "purpose": f"Call {i}", "host": "u-sam"}}
        r = await client.post("/api/agent/process?mode=sync", json=event, headers=auth(key))
        assert r.status == 200, await r.text()
        return dict(await r.json())

    decisions = await asyncio.gather(*(book(i) for i in range(20)))
    assert await client.app[SERVICE].outbox.idle(20)
    store = client.app[STORE]
    events = await store.list_calendar_events("acme", host="u-sam")
    at_slot = [e for e in events if e.start.isoformat() == "2031-03-11T14:00:00+00:00"]
    assert len(at_slot) == 1
    ordered = sorted(events, key=lambda e: e.start)
    assert all(a.end <= b.start for a, b in itertools.pairwise(ordered)), "two bookings overlap"
    booked = {e.attendees[0]["email"] for e in events}
    outcomes = {}
    for d in decisions:
        detail = await (await client.get(f"/api/agent/decisions/{d['id']}", headers=auth(key))).json()
        guest = d["actions"][0]["params"].get("attendee", {}).get("email") if d["actions"] else None
        create = next((a for a in detail["outbox"] if a["type"] == "CREATE_EVENT"), None)
        if create is not None and create["status"] == "done":
            outcomes[d["id"]] = create["result"]["status"]
            assert guest in booked
        else:
            outcomes[d["id"]] = detail["status"]  # escalated at planning time, or failed and escalated at commit
            assert detail["status"] in ("FAILED",) or detail["decision_type"] == "ESCALATE", detail
    counts = Counter(outcomes.values())
    print(f"20 bookings of one slot: {dict(counts)}")
    assert counts["booked"] == 1 and sum(counts.values()) == 20, counts
    assert len(events) == counts["booked"] + counts["moved"]


async def test_a_mail_asking_to_move_the_meeting_moves_it(make_client, config_dirs, smtp) -> None:
    """A booked guest writes "can we move Tuesday's call to 3pm?": UPDATE_EVENT finds their meeting, moves it
    (sequence + 1, reminders replaced), and the host and the guest get the updated invitation; then "I need to
    cancel" cancels it and its reminders."""
    box, port = smtp
    with_email(config_dirs, port)
    client, key_for = await make_client(egress_allow=SMTP_ALLOWED)
    key = await key_for()
    booking = {"id": "flow-move-1", "source": "WEBHOOK", "type": "booking:created",
               "data": {"form": "booking", "name": "Ada Lovelace", "email": "ada@example.com",
                        "requested_start": "2031-03-11T10:00:00-04:00", "duration_minutes": 30,
                        "purpose": "Intro call", "host": "u-sam"}}
    await run_flow(client, key, booking)
    store = client.app[STORE]
    [event] = await store.list_calendar_events("acme", host="u-sam")
    before = {r["id"] for r in await store.calendar_reminders("acme", event.id)}

    move = {"id": "flow-move-2", "source": "EMAIL", "type": "email:received", "occurred_at": "2031-03-04T09:00:00-05:00",
            "data": {"from": "Ada Lovelace <ada@example.com>", "to": "hello@acme.example", "subject": "Tuesday",
                     "text": "Hi Sam, can we move Tuesday's call to 3pm? Thanks, Ada"}}
    detail = await run_flow(client, key, move)
    assert detail["decision_type"] == "UPDATE_EVENT" and detail["status"] == "EXECUTED", detail["reasoning"]
    assert {a["status"] for a in detail["outbox"]} == {"done"}, detail["outbox"]
    moved = await store.get_calendar_event("acme", event.id)
    assert moved is not None and moved.sequence == 1
    assert moved.start.isoformat() == "2031-03-11T19:00:00+00:00"  # 15:00 in New York (EDT)
    after = {r["id"] for r in await store.calendar_reminders("acme", event.id)}
    assert after and not after & before
    updates = [(to, m) for to, m in box.messages if "Intro call" in str(m["Subject"]) or to == ["ada@example.com"]]
    methods = {str(p.get_param("method")) for _, m in updates for p in m.walk() if p.get_content_type() == "text/calendar"}
    assert "REQUEST" in methods

    cancel = {"id": "flow-move-3", "source": "EMAIL", "type": "email:received",
              "occurred_at": "2031-03-05T09:00:00-05:00",
              "data": {"from": "ada@example.com", "to": "hello@acme.example", "subject": "Tuesday",
                       "text": "Hi Sam, sorry, I need to cancel our meeting on Tuesday. Ada"}}
    detail = await run_flow(client, key, cancel)
    assert detail["decision_type"] == "CANCEL_EVENT" and detail["status"] == "EXECUTED", detail["reasoning"]
    cancelled = await store.get_calendar_event("acme", event.id)
    assert cancelled is not None and cancelled.status == "cancelled" and cancelled.sequence == 2
    assert await store.calendar_reminders("acme", event.id) == []
    last = box.messages[-1][1]
    assert any(p.get_param("method") == "CANCEL" for p in last.walk() if p.get_content_type() == "text/calendar")
