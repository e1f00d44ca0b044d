"""NotificationDispatcher against real parts: SQLite (the outbox hands out the jobs), an aiosmtpd server in the
test's loop, and a local aiohttp receiver for the signed outbound webhook."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP

from adapters import egress
from adapters.notify import NotificationDispatcher, message_id, next_opening
from adapters.stores import open_store
from engine.config import EmailSettings, Notifications, NotifyWebhook, Template
from engine.loader import OrgBundle, load_org
from engine.models import Action, Decision, Event
from engine.ports import ActionDeferred, ActionFailed, ActionJob
from server.signing import HEADER, verify

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-notify-test"
NOON_TUESDAY = datetime(2026, 12, 8, 17, 0, tzinfo=UTC)  # 12:00 in New York, a business day
SATURDAY = datetime(2026, 12, 12, 15, 0, tzinfo=UTC)


# ---- real parts -----------------------------------------------------------------------------------------

class Collector:
    """An aiosmtpd handler: keeps every message; refuses the recipients in `refuse` with 550."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.refuse: set[str] = set()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"

    def parsed(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(raw, policy=email.policy.default) for _, _, raw in self.messages]  # type: ignore[misc]


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Collector, int]]:
    handler = Collector()
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(handler), "127.0.0.1", 0)
    yield handler, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


class Receiver:
    """The outbound webhook's other end: records each request, answers the queued statuses (then 200)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[tuple[int, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        return web.json_response({"ok": status < 300}, status=status, headers=headers)


@pytest.fixture
async def receiver(aiohttp_server: Any) -> tuple[Receiver, str]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/notify", rec.handle)
    server = await aiohttp_server(app)
    return rec, str(server.make_url("/hooks/notify"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Any]:
    s = await open_store(store_url)
    yield s
    await s.close()


LOOPBACK = egress.EgressPolicy.from_text("127.0.0.1/32")
"""The operator's allow-list of these tests: the SMTP server and the receiver listen on loopback, refused by
default."""


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The service's kind of session (egress-guarded), with loopback allowed by the operator's setting."""
    async with egress.session(LOOPBACK) as s:
        yield s


ACME = load_org(ROOT / "rulesets" / "acme", ROOT / "policies")


def bundle_with(**notifications: Any) -> OrgBundle:
    """acme with its policy's `notifications` replaced."""
    policy = ACME.policy.model_copy(update={"notifications": Notifications(**notifications)})
    return dataclasses.replace(ACME, policy=policy)


def email_settings(port: int, **over: Any) -> EmailSettings:
    return EmailSettings.model_validate({"host": "127.0.0.1", "port": port, "from": "agent@acme.example",
                                         "timeout_seconds": 5, **over})


def dispatcher(store: Any, bundle: OrgBundle, session: aiohttp.ClientSession, *,
               env: dict[str, str] | None = None, now: datetime = NOON_TUESDAY) -> NotificationDispatcher:
    return NotificationDispatcher(store, lambda org: bundle if org == "acme" else None, lambda: session,
                                  env=env if env is not None else {"ACME_NOTIFY_SECRET": SECRET}, clock=lambda: now)


SALES_EMAIL = {"from": "Jo Buyer <jo@shop.example>", "subject": "Pricing for the pro plan",
               "text": "Hi, how much does the pro plan cost? We need 12 seats."}


async def decide(store: Any, actions: list[Action], *, created_at: datetime = NOON_TUESDAY,
                 data: dict[str, Any] | None = None, decision_type: str = "ASSIGN_PIPELINE",
                 status: str = "EXECUTED", event_type: str = "email:received") -> Decision:
    """An event and its executed decision, stored the way the workers store them (actions go to the outbox)."""
    event = Event(org="acme", source="EMAIL", type=event_type, data=data if data is not None else SALES_EMAIL)
    await store.record_event(event)
    decision = Decision(event_id=event.id, org="acme", input={"source": "EMAIL", "type": event_type},
                        intent="SALES_INQUIRY", priority=3, decision_type=decision_type, confidence=0.91,
                        decided_by="rules", matched_rules=["intake/pricing"], reasoning="Asks about pricing.",
                        actions=actions, status=status, created_at=created_at,
                        trace={"gate": {"outcome": "auto_execute",
                                        "reason": "confidence 0.91 ≥ auto-execute 0.80 for ASSIGN_PIPELINE"}})
    await store.complete_event(decision)
    return decision


async def claim(store: Any) -> ActionJob:
    jobs = await store.claim_actions("test", limit=1)
    assert jobs, "nothing to claim"
    return jobs[0]


def notify(to: list[str], template: str = "new_sales_inquiry", priority: int = 3, **extra: Any) -> Action:
    return Action(type="SEND_NOTIFICATION", params={"to": to, "template": template, "priority": priority,
                                                    "immediate": priority >= 5, **extra})


# ---- in-app ---------------------------------------------------------------------------------------------

async def test_in_app_rows_are_written_once_under_a_rerun(store, session):
    bundle = bundle_with(channels=["in_app"])
    await decide(store, [notify(["u-sam", "u-lee"])])
    job = await claim(store)
    d = dispatcher(store, bundle, session)
    first = await d.run(job)
    again = await d.run(job)  # the runner crashed after the effect: same job once more
    assert first["in_app"] == again["in_app"] and len(first["in_app"]) == 2
    rows, _ = await store.list_notifications("acme", "u-sam")
    assert len(rows) == 1
    assert rows[0]["subject"] == "[Acme Studio] New sales inquiry: Pricing for the pro plan"
    assert "Hi Sam Carter," in rows[0]["body"] and "how much does the pro plan cost" in rows[0]["body"]
    assert rows[0]["decision_id"] == job.decision_id and rows[0]["read_at"] is None
    assert await store.unread_count("acme", "u-lee") == 1


async def test_unknown_recipients_are_skipped_and_listed(store, session):
    await decide(store, [notify(["u-sam", "u-ghost"])])
    result = await dispatcher(store, bundle_with(), session).run(await claim(store))
    assert len(result["in_app"]) == 1
    assert result["skipped"] == [{"recipient": "u-ghost", "reason": "not a user of org 'acme'"}]


async def test_no_deliverable_recipient_is_a_permanent_failure(store, session):
    await decide(store, [notify(["u-ghost"])])
    with pytest.raises(ActionFailed) as err:
        await dispatcher(store, bundle_with(), session).run(await claim(store))
    assert err.value.permanent
    assert "no deliverable recipient" in str(err.value) and "u-ghost" in str(err.value)


async def test_policy_template_overrides_the_built_in(store, session):
    bundle = bundle_with(templates={"new_sales_inquiry": Template(
        subject="Lead for {{ user.name }}: {{ data.subject }}", body="{{ sender }} wrote: {{ excerpt }}{{ data.nope.deeper }}")})
    await decide(store, [notify(["u-sam"])])
    await dispatcher(store, bundle, session).run(await claim(store))
    rows, _ = await store.list_notifications("acme", "u-sam")
    assert rows[0]["subject"] == "Lead for Sam Carter: Pricing for the pro plan"
    assert rows[0]["body"].startswith("Jo Buyer <jo@shop.example> wrote: Hi, how much")


# ---- timing ---------------------------------------------------------------------------------------------

async def test_non_urgent_waits_for_business_hours(store, session):
    bundle = bundle_with(business_hours_only=True)
    await decide(store, [notify(["u-sam"])], created_at=SATURDAY)
    job = await claim(store)
    with pytest.raises(ActionDeferred) as deferred:
        await dispatcher(store, bundle, session, now=SATURDAY).run(job)
    assert deferred.value.until == datetime(2026, 12, 14, 14, 0, tzinfo=UTC)  # Monday 09:00 New York
    assert await store.unread_count("acme", "u-sam") == 0
    # Monday at opening time it goes.
    result = await dispatcher(store, bundle, session, now=deferred.value.until).run(job)
    assert len(result["in_app"]) == 1


async def test_urgent_and_escalations_never_wait(store, session):
    bundle = bundle_with(business_hours_only=True, delay_minutes=30)
    await decide(store, [notify(["u-sam"], priority=5)], created_at=SATURDAY)
    assert (await dispatcher(store, bundle, session, now=SATURDAY).run(await claim(store)))["in_app"]
    await decide(store, [Action(type="ESCALATE", params={"address": None, "to": ["u-omar"], "reason": "x",
                                                         "priority": 3})], created_at=SATURDAY)
    assert (await dispatcher(store, bundle, session, now=SATURDAY).run(await claim(store)))["in_app"]


async def test_delay_minutes_after_the_decision(store, session):
    bundle = bundle_with(delay_minutes=15)
    await decide(store, [notify(["u-sam"])], created_at=NOON_TUESDAY)
    job = await claim(store)
    with pytest.raises(ActionDeferred) as deferred:
        await dispatcher(store, bundle, session, now=NOON_TUESDAY + timedelta(minutes=5)).run(job)
    assert deferred.value.until == NOON_TUESDAY + timedelta(minutes=15)
    assert await dispatcher(store, bundle, session, now=NOON_TUESDAY + timedelta(minutes=15)).run(job)


def test_next_opening():
    org = ACME.org
    assert next_opening(NOON_TUESDAY, org) == NOON_TUESDAY
    evening = datetime(2026, 12, 8, 23, 30, tzinfo=UTC)  # 18:30 Tuesday
    assert next_opening(evening, org) == datetime(2026, 12, 9, 14, 0, tzinfo=UTC)
    early = datetime(2026, 12, 9, 12, 0, tzinfo=UTC)  # 07:00 Wednesday
    assert next_opening(early, org) == datetime(2026, 12, 9, 14, 0, tzinfo=UTC)
    friday_night = datetime(2026, 12, 12, 2, 0, tzinfo=UTC)  # 21:00 Friday
    assert next_opening(friday_night, org) == datetime(2026, 12, 14, 14, 0, tzinfo=UTC)


# ---- email ----------------------------------------------------------------------------------------------

async def test_email_to_users_and_a_guest_with_the_invitation(store, session, smtp):
    handler, port = smtp
    bundle = bundle_with(channels=["in_app", "email"], email=email_settings(port))
    start = datetime(2026, 12, 8, 15, 0, tzinfo=UTC)
    booking = Action(type="CREATE_EVENT", params={
        "host": "u-sam", "start": start.isoformat(), "end": (start + timedelta(minutes=30)).isoformat(),
        "duration_minutes": 30, "title": "Intro call", "attendee": {"name": "Jo Buyer", "email": "jo@shop.example"}})
    data = {"form": "booking", "name": "Jo Buyer", "email": "jo@shop.example", "purpose": "Intro call",
            "requested_start": "2026-12-08T09:30:00-05:00", "host": "u-sam"}
    decision = await decide(store, [booking, notify(["u-sam"], "booking_confirmation", start=start.isoformat(),
                                                    attach_ics=True),
                                    notify([], "booking_confirmation_guest", start=start.isoformat(),
                                           to_email=["jo@shop.example"], attach_ics=True)],
                            data=data, decision_type="CREATE_EVENT", event_type="booking:created")
    # The calendar action: the slot was taken meanwhile, so it was booked half an hour later.
    cal_job = await claim(store)
    moved = start + timedelta(minutes=30)
    event, _ = await store.book_event("acme", host="u-sam", title="Intro call", start=moved,
                                      end=moved + timedelta(minutes=30),
                                      attendees=[{"name": "Jo Buyer", "email": "jo@shop.example"}],
                                      decision_id=decision.id, action_key=cal_job.key, buffer_minutes=0,
                                      replan=lambda busy: "no other slot")
    assert event is not None
    assert await store.finish_action(cal_job.key, "test", {
        "event_id": event.id, "host": "u-sam", "start": moved.isoformat(),
        "end": (moved + timedelta(minutes=30)).isoformat(), "status": "moved", "reason": "09:30 was taken"},
        duration_ms=1.0)
    d = dispatcher(store, bundle, session)

    host_job = await claim(store)
    result = await d.run(host_job)
    assert result["email"] == ["sam@acme.example"] and result["attachment"] == "invite.ics"
    assert await store.finish_action(host_job.key, "test", result, duration_ms=1.0)
    guest_job = await claim(store)
    result = await d.run(guest_job)
    assert result["email"] == ["jo@shop.example"] and result["in_app"] == []

    host_msg, guest_msg = handler.parsed()
    assert handler.messages[0][1] == ["sam@acme.example"] and handler.messages[1][1] == ["jo@shop.example"]
    assert host_msg["From"] == "agent@acme.example"
    assert host_msg["Message-ID"] == message_id(host_job.key, 0) == f"<{decision.id}.1.0@astralis>"
    assert guest_msg["Message-ID"] == f"<{decision.id}.2.0@astralis>"
    assert host_msg["Auto-Submitted"] == "auto-generated"
    # The time actually booked (10:30 New York), not the one planned.
    assert "10:30 EST" in host_msg["Subject"] and "09:30 was taken" in host_msg.get_body().get_content()
    guest_text = guest_msg.get_body(("plain",)).get_content()
    assert "Hello Jo Buyer" in guest_text and "Tue 8 Dec 2026, 10:30 EST until 11:00" in guest_text
    assert "The calendar invitation is attached." in guest_text
    for msg in (host_msg, guest_msg):
        (part,) = list(msg.iter_attachments())
        assert part.get_content_type() == "text/calendar"
        assert part.get_filename() == "invite.ics"
        assert part.get_param("method") == "REQUEST"
        ics = part.get_payload(decode=True)
        assert b"BEGIN:VEVENT" in ics and f"{event.id}@astralis".encode() in ics
        assert b"METHOD:REQUEST" in ics


async def test_email_rerun_sends_the_same_message_id(store, session, smtp):
    handler, port = smtp
    bundle = bundle_with(channels=["email"], email=email_settings(port))
    await decide(store, [notify(["u-sam", "u-lee"])])
    job = await claim(store)
    d = dispatcher(store, bundle, session)
    await d.run(job)
    await d.run(job)
    ids = [m["Message-ID"] for m in handler.parsed()]
    assert ids[:2] == ids[2:] and len(set(ids)) == 2


async def test_smtp_down_is_transient(store, session):
    import socket

    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bundle = bundle_with(channels=["email"], email=email_settings(port, timeout_seconds=2))
    await decide(store, [notify(["u-sam"])])
    with pytest.raises(ActionFailed) as err:
        await dispatcher(store, bundle, session).run(await claim(store))
    assert not err.value.permanent
    assert f"127.0.0.1:{port}" in str(err.value)


async def test_recipient_refused_is_permanent(store, session, smtp):
    handler, port = smtp
    handler.refuse.add("lee@acme.example")
    bundle = bundle_with(channels=["email"], email=email_settings(port))
    await decide(store, [notify(["u-sam", "u-lee"])])
    with pytest.raises(ActionFailed) as err:
        await dispatcher(store, bundle, session).run(await claim(store))
    assert err.value.permanent
    assert "lee@acme.example" in str(err.value) and "550" in str(err.value)
    assert err.value.result is not None and err.value.result["email"] == ["sam@acme.example"]


async def test_missing_smtp_password_variable_is_permanent_and_sends_nothing(store, session, smtp):
    handler, port = smtp
    bundle = bundle_with(channels=["in_app", "email"], email=email_settings(port, username_env="ACME_SMTP_USER",
                                                                            password_env="ACME_SMTP_PASS"))
    await decide(store, [notify(["u-sam"])])
    with pytest.raises(ActionFailed) as err:
        await dispatcher(store, bundle, session, env={"ACME_SMTP_USER": "agent"}).run(await claim(store))
    assert err.value.permanent and "ACME_SMTP_PASS" in str(err.value)
    assert handler.messages == [] and await store.unread_count("acme", "u-sam") == 0


# ---- webhook --------------------------------------------------------------------------------------------

def hook_bundle(url: str) -> OrgBundle:
    return bundle_with(channels=["in_app", "webhook"], webhook=NotifyWebhook(url=url, secret_env="ACME_NOTIFY_SECRET",
                                                                              timeout_seconds=5))


async def test_webhook_is_signed_and_carries_the_idempotency_key(store, session, receiver):
    rec, url = receiver
    decision = await decide(store, [notify(["u-sam", "u-lee"], priority=5)])
    job = await claim(store)
    result = await dispatcher(store, hook_bundle(url), session).run(job)
    assert result["webhook"] == 200
    (headers, raw), = rec.requests
    assert verify(headers[HEADER], raw, [SECRET], now=NOON_TUESDAY.timestamp()) == int(NOON_TUESDAY.timestamp())
    assert headers["Idempotency-Key"] == job.key
    body = json.loads(raw)
    assert body["id"] == job.key and body["org"] == "acme" and body["decision_id"] == decision.id
    assert body["template"] == "new_sales_inquiry" and body["priority"] == 5 and body["to"] == ["u-sam", "u-lee"]
    assert body["subject"] == "[Acme Studio] New sales inquiry (URGENT): Pricing for the pro plan"
    assert "Jo Buyer" in body["body"]


@pytest.mark.parametrize(("status", "headers", "permanent", "retry"), [
    (500, {}, False, None),
    (429, {"Retry-After": "7"}, False, 7.0),
    (408, {}, False, None),
    (400, {}, True, None),
    (410, {}, True, None),
])
async def test_webhook_outcomes(store, session, receiver, status, headers, permanent, retry):
    rec, url = receiver
    rec.answers.append((status, headers))
    await decide(store, [notify(["u-sam"])])
    with pytest.raises(ActionFailed) as err:
        await dispatcher(store, hook_bundle(url), session).run(await claim(store))
    assert err.value.permanent is permanent
    assert err.value.retry_after == retry
    assert f"HTTP {status}" in str(err.value)


async def test_webhook_unreachable_is_transient(store, session):
    await decide(store, [notify(["u-sam"])])
    with pytest.raises(ActionFailed) as err:
        await dispatcher(store, hook_bundle("http://127.0.0.1:9/hook"), session).run(await claim(store))
    assert not err.value.permanent and "could not be reached" in str(err.value)


async def test_webhook_secret_missing_is_permanent_and_delivers_nothing(store, session, receiver):
    rec, url = receiver
    await decide(store, [notify(["u-sam"])])
    with pytest.raises(ActionFailed) as err:
        await dispatcher(store, hook_bundle(url), session, env={}).run(await claim(store))
    assert err.value.permanent and "ACME_NOTIFY_SECRET" in str(err.value)
    assert rec.requests == [] and await store.unread_count("acme", "u-sam") == 0


async def test_a_signing_secret_outside_the_orgs_prefix_is_refused_and_delivers_nothing(store, session, receiver):
    rec, url = receiver
    # brightsmile's secret, in a bundle that did not come through the loader (which refuses it at its line)
    bundle = bundle_with(channels=["in_app", "webhook"],
                         webhook=NotifyWebhook(url=url, secret_env="BRIGHTSMILE_WEBHOOK_SECRET"))
    await decide(store, [notify(["u-sam"])])
    with pytest.raises(ActionFailed) as err:
        await dispatcher(store, bundle, session, env={"BRIGHTSMILE_WEBHOOK_SECRET": "whsec-brightsmile"}).run(
            await claim(store))
    assert err.value.permanent and "secret refused" in str(err.value) and "ACME_" in str(err.value)
    assert "whsec-brightsmile" not in str(err.value)
    assert rec.requests == [] and await store.unread_count("acme", "u-sam") == 0


async def test_smtp_login_with_a_provider_key_is_refused_and_sends_nothing(store, session, smtp):
    handler, port = smtp
    bundle = bundle_with(channels=["in_app", "email"], email=email_settings(port, username_env="ACME_SMTP_USER",
                                                                            password_env="ANTHROPIC_API_KEY"))
    await decide(store, [notify(["u-sam"])])
    with pytest.raises(ActionFailed) as err:
        await dispatcher(store, bundle, session, env={"ACME_SMTP_USER": "agent", "ANTHROPIC_API_KEY": "sk-ant"}).run(
            await claim(store))
    assert err.value.permanent and "ANTHROPIC_API_KEY" in str(err.value) and "server's own" in str(err.value)
    assert handler.messages == [] and await store.unread_count("acme", "u-sam") == 0


async def test_a_loopback_smtp_host_is_refused_by_default_and_sends_nothing(store, smtp):
    handler, port = smtp
    bundle = bundle_with(channels=["email"], email=email_settings(port))
    await decide(store, [notify(["u-sam"])])
    async with egress.session(egress.EgressPolicy()) as default:
        with pytest.raises(ActionFailed) as err:
            await dispatcher(store, bundle, default).run(await claim(store))
    assert err.value.permanent
    assert f"SMTP server 127.0.0.1:{port}: egress refused: 127.0.0.1 is loopback (not in ASTRALIS_EGRESS_ALLOW" \
        in str(err.value)
    assert handler.messages == []


async def test_a_name_resolving_to_loopback_is_refused_for_smtp_too(store, smtp):
    handler, port = smtp
    bundle = bundle_with(channels=["email"], email=email_settings(port, host="localhost"))
    await decide(store, [notify(["u-sam"])])
    async with egress.session(egress.EgressPolicy()) as default:
        with pytest.raises(ActionFailed) as err:
            await dispatcher(store, bundle, default).run(await claim(store))
    assert err.value.permanent and "localhost resolves to 127.0.0.1, which is loopback" in str(err.value)
    assert handler.messages == []


async def test_smtp_through_an_allowed_name_keeps_the_name_and_delivers(store, session, smtp):
    handler, port = smtp
    bundle = bundle_with(channels=["email"], email=email_settings(port, host="localhost"))
    await decide(store, [notify(["u-sam"])])
    result = await dispatcher(store, bundle, session).run(await claim(store))
    assert result["email"] == ["sam@acme.example"] and len(handler.messages) == 1


@pytest.fixture
def localhost_cert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A self-signed certificate for the name `localhost` (no IP address in it), trusted by this test's clients
    through SSL_CERT_FILE: (certificate, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return cert, key


@pytest.mark.parametrize(("host", "delivered"), [("localhost", True), ("127.0.0.1", False)])
async def test_starttls_checks_the_certificate_against_the_host_name_not_the_checked_address(
        store, session, localhost_cert, host, delivered):
    """The socket goes to an address the egress policy checked; TLS still verifies the name the policy wrote."""
    cert, key = localhost_cert
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    handler = Collector()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(handler, tls_context=tls, require_starttls=True), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        bundle = bundle_with(channels=["email"], email=email_settings(port, host=host, starttls=True))
        await decide(store, [notify(["u-sam"])])
        d = dispatcher(store, bundle, session)
        if delivered:
            result = await d.run(await claim(store))
            assert result["email"] == ["sam@acme.example"] and len(handler.messages) == 1
        else:  # the certificate names localhost, not 127.0.0.1: refused by the client before any mail
            with pytest.raises(ActionFailed, match=r"CERTIFICATE_VERIFY_FAILED|certificate") as err:
                await d.run(await claim(store))
            assert "Hostname mismatch" in str(err.value) or "IP address mismatch" in str(err.value), err.value
            assert handler.messages == []
    finally:
        server.close()
        await server.wait_closed()


async def test_a_loopback_webhook_is_refused_by_default_and_delivers_nothing(store, receiver):
    rec, url = receiver
    await decide(store, [notify(["u-sam"])])
    async with egress.session(egress.EgressPolicy()) as default:
        with pytest.raises(ActionFailed) as err:
            await dispatcher(store, hook_bundle(url), default).run(await claim(store))
    assert err.value.permanent and "egress refused: 127.0.0.1 is loopback" in str(err.value)
    assert rec.requests == []


async def test_a_session_without_the_egress_guard_delivers_nothing(store, receiver):
    rec, url = receiver
    await decide(store, [notify(["u-sam"])])
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(ActionFailed) as err:
            await dispatcher(store, hook_bundle(url), plain).run(await claim(store))
    assert err.value.permanent and "not made by adapters.egress.session" in str(err.value)
    assert rec.requests == [] and await store.unread_count("acme", "u-sam") == 0


# ---- escalations ----------------------------------------------------------------------------------------

async def test_escalation_tells_a_person_what_to_decide(store, session, smtp):
    handler, port = smtp
    bundle = bundle_with(channels=["in_app"], email=email_settings(port))
    reason = "the booking names host 'u-zed', who is not a user of acme; a person must pick the host"
    decision = await decide(store, [Action(type="ESCALATE", params={
        "address": "ops@acme.example", "to": ["u-omar", "u-ana"], "reason": reason, "priority": 3})],
        decision_type="ESCALATE")
    result = await dispatcher(store, bundle, session).run(await claim(store))
    assert result["email"] == ["ops@acme.example"] and len(result["in_app"]) == 2
    (msg,) = handler.parsed()
    text = msg.get_body(("plain",)).get_content()
    assert msg["Subject"].startswith("[Acme Studio] Needs a person: the booking names host 'u-zed'")
    for expected in (reason, "Event: email:received from EMAIL", "From: Jo Buyer <jo@shop.example>",
                     "Subject: Pricing for the pro plan", "how much does the pro plan cost",
                     "Reasoning: Asks about pricing.", "Matched rules: intake/pricing", "confidence 0.91",
                     "auto-execute 0.80", f"POST /api/agent/decisions/{decision.id}/approve",
                     f"POST /api/agent/decisions/{decision.id}/reject"):
        assert expected in text, expected
    rows, _ = await store.list_notifications("acme", "u-omar")
    assert rows[0]["template"] == "escalation" and reason in rows[0]["body"]


async def test_failure_notice_uses_action_failed(store, session):
    await decide(store, [Action(type="ESCALATE", params={
        "address": "ops@acme.example", "to": ["u-omar"], "reason": "an action failed", "priority": 4,
        "failed_action": "dec:0 (TRIGGER_AUTOMATION)", "error": "automation 'x' answered HTTP 404"})])
    result = await dispatcher(store, bundle_with(), session).run(await claim(store))
    # No email configured: the address is skipped, the in-app notice still goes.
    assert result["skipped"] == [{"recipient": "ops@acme.example",
                                  "reason": "the policy configures no email (notifications.email)"}]
    rows, _ = await store.list_notifications("acme", "u-omar")
    assert rows[0]["template"] == "action_failed"
    assert rows[0]["subject"].startswith("[Acme Studio] Action failed: dec:0 (TRIGGER_AUTOMATION)")
    assert "automation 'x' answered HTTP 404" in rows[0]["body"]


# ---- the store ------------------------------------------------------------------------------------------

async def test_list_mark_read_and_cursor(store):
    rows = [{"org": "acme", "id": f"n{i}", "user_id": "u-sam", "template": "t", "subject": f"s{i}", "body": "b",
             "priority": 3, "decision_id": None} for i in range(5)]
    for i, row in enumerate(rows):
        await store.add_notifications([row], f"k{i}")
    await store.add_notifications([{**rows[0], "org": "globex", "id": "g1"}], "g")
    page, cursor = await store.list_notifications("acme", "u-sam", limit=2)
    assert [r["id"] for r in page] == ["n4", "n3"] and cursor is not None
    page2, cursor2 = await store.list_notifications("acme", "u-sam", limit=2, before=cursor)
    assert [r["id"] for r in page2] == ["n2", "n1"]
    page3, cursor3 = await store.list_notifications("acme", "u-sam", limit=2, before=cursor2)
    assert [r["id"] for r in page3] == ["n0"] and cursor3 is None
    first = await store.mark_notification_read("acme", "n3")
    assert first is not None and first["read"] and first["read_at"]
    await asyncio.sleep(0.002)
    again = await store.mark_notification_read("acme", "n3")
    assert again is not None and again["read_at"] == first["read_at"]
    assert await store.mark_notification_read("acme", "g1") is None  # another org's
    assert await store.unread_count("acme", "u-sam") == 4
    unread, _ = await store.list_notifications("acme", "u-sam", unread_only=True)
    assert "n3" not in [r["id"] for r in unread] and len(unread) == 4
