"""Issue 13, findings 2 and 3: where the service connects on an org's behalf.

Finding 3 ("any outbound address"): automation URLs, notification webhooks and SMTP hosts could be loopback,
private or link-local. Now each connection is checked when it is made (adapters/egress.py), against the address
actually connected to, and refused by default; the operator opens ranges with ASTRALIS_EGRESS_ALLOW /
--egress-allow. Finding 2 ("writing as another org"): acme's notification webhook, aimed at brightsmile's form
webhook, landed an event in brightsmile's inbox. Now the service's own addresses are refused even where the
operator allows their range, and acme cannot name brightsmile's secret (tests/security/test_secrets.py).

Receivers are real local servers; the in-process tests use the app (`create_app`) with the service's own
egress-guarded session, and the finding-2 test a real `astralis serve`.
"""
# ruff: noqa: F811  (the service fixtures are imported from tests/server/conftest.py, then named as arguments)

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiosmtpd.smtp import SMTP

from adapters import egress
from server.app import SERVICE
from tests.server.conftest import auth, config_dirs, make_client, make_settings, service_env  # noqa: F401
from tests.server.test_crash import ROOT, Serve

SALES = {"source": "EMAIL", "type": "email:received",
         "data": {"from": "Jo Rivera <jo@shop.example>", "to": "hello@acme.example",
                  "subject": "Pricing for a new store",
                  "text": "Hi, how much would a Shopify build cost? We'd like a quote and a demo."}}
"""An acme event decided SALES_INQUIRY by the rules: an intake, and the sales team notified."""


class Receiver:
    """A local HTTP server that records every request it gets (the attacker's listener, an internal service)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, await request.read()))
        return web.json_response({"message": "Workflow was started"})


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    rec.port = server.port
    return rec


class Mailbox:
    """An aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Mailbox, int]]:
    box = Mailbox()
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(box), "127.0.0.1", 0)
    yield box, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def with_policy(dirs: tuple[Path, Path], extra: str) -> None:
    acme = dirs[1] / "acme.yaml"
    acme.write_text(acme.read_text() + extra)


async def decide(client: Any, key: str, event: dict[str, Any]) -> dict[str, Any]:
    """Process `event` in sync mode and wait for its actions to settle; the decision with its outbox."""
    r = await client.post("/api/agent/process?mode=sync", json=event, headers=auth(key))
    assert r.status == 200, await r.text()
    decision = await r.json()
    assert await client.app[SERVICE].outbox.idle(15)
    r = await client.get(f"/api/agent/decisions/{decision['id']}", headers=auth(key))
    return await r.json()


def action(detail: dict[str, Any], type_: str) -> dict[str, Any]:
    [row] = [a for a in detail["outbox"] if a["type"] == type_]
    return row


# --------------------------------------------------------------------------- finding 3, address by address

REFUSED = [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.5", "private"), ("172.16.3.4", "private"), ("192.168.1.10", "private"), ("fd12:3456::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("100.64.0.1", "shared address space (CGNAT)"),
    ("224.0.0.251", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"),
    ("::ffff:127.0.0.1", "loopback (as 127.0.0.1)"), ("::ffff:169.254.169.254", "link-local (as 169.254.169.254)"),
    ("::ffff:10.0.0.5", "private (as 10.0.0.5)"), ("2002:a00:5::1", "private (as 10.0.0.5)"),
    ("64:ff9b::a9fe:a9fe", "link-local (as 169.254.169.254)"),
]


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_finding_3_non_public_addresses_are_refused_by_default_with_the_reason(address: str, kind: str) -> None:
    reason = egress.EgressPolicy().refusal(address, 443)
    assert reason == f"egress refused: {address} is {kind} (not in ASTRALIS_EGRESS_ALLOW / --egress-allow)"


def test_public_addresses_pass_and_the_operator_opens_only_the_ranges_given() -> None:
    default = egress.EgressPolicy()
    assert default.refusal("93.184.216.34", 443) is None and default.refusal("2606:4700::1111", 443) is None
    allowed = egress.EgressPolicy.from_text("10.0.0.0/8, 127.0.0.1")
    assert allowed.refusal("10.20.30.40", 80) is None and allowed.refusal("127.0.0.1", 80) is None
    assert allowed.refusal("::ffff:10.1.2.3", 80) is None  # the same address written the IPv6 way
    assert "127.0.0.2 is loopback" in str(allowed.refusal("127.0.0.2", 80))
    assert "192.168.1.1 is private" in str(allowed.refusal("192.168.1.1", 80))
    assert "169.254.169.254 is link-local" in str(allowed.refusal("169.254.169.254", 80))
    with pytest.raises(ValueError, match=r"'n8n\.internal' is not an IP address or CIDR range"):
        egress.EgressPolicy.from_text("10.0.0.0/8,n8n.internal")


async def test_finding_3_every_form_of_a_loopback_url_sends_nothing(receiver: Receiver) -> None:
    """Literal addresses never reach a resolver: the socket is refused before it is opened; a name is refused
    when any of its addresses is."""
    urls = [f"http://127.0.0.1:{receiver.port}/x", f"http://localhost:{receiver.port}/x",
            f"http://[::ffff:127.0.0.1]:{receiver.port}/x", f"http://127.1.2.3:{receiver.port}/x",
            f"http://0x7f.1:{receiver.port}/x"]  # a name to aiohttp, which the system resolver reads as 127.0.0.1
    async with egress.session(egress.EgressPolicy()) as http:
        with pytest.raises(aiohttp.InvalidURL):  # aiohttp refuses this spelling of 127.0.0.1 outright
            await http.post(f"http://2130706433:{receiver.port}/x", data=b"{}", allow_redirects=False)
        for url in urls:
            with pytest.raises(aiohttp.ClientError) as err:
                async with http.post(url, data=b"{}", allow_redirects=False):
                    pass
            refused = egress.refusal_in(err.value)
            assert refused is not None and "egress refused" in str(refused), (url, err.value)
    assert receiver.requests == []


class Answers(AbstractResolver):
    """A DNS answer for the test: a name that resolves to a public address and to a loopback one (what a
    rebinding attacker's name returns)."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=ip, port=self.port, family=socket.AF_INET, proto=0, flags=0)
                for ip in ("93.184.216.34", "127.0.0.1")]

    async def close(self) -> None:
        return None


async def test_finding_3_a_name_with_one_refused_address_is_refused_whole(receiver: Receiver) -> None:
    resolver = egress.EgressResolver(egress.EgressPolicy(), Answers(receiver.port))
    with pytest.raises(egress.EgressRefused, match=r"rebind\.example resolves to 127\.0\.0\.1, which is loopback"):
        await resolver.resolve("rebind.example", receiver.port)
    assert receiver.requests == []


# --------------------------------------------------------------------------- finding 3, through the service

async def test_finding_3_an_automation_on_loopback_is_refused_and_recorded_on_the_action(
        make_client, config_dirs, receiver: Receiver) -> None:
    text = (config_dirs[1] / "acme.yaml").read_text()
    (config_dirs[1] / "acme.yaml").write_text(text.replace(
        "    notify: {team: true, template: new_sales_inquiry}",
        "    notify: {team: true, template: new_sales_inquiry}\n    automations: [crm]", 1) + f"""
execution: {{max_attempts: 3, backoff_seconds: 0.05, backoff_max_seconds: 0.1}}
automations:
  crm: {{url: "http://127.0.0.1:{receiver.port}/webhook/crm"}}
""")
    client, key_for = await make_client()  # the operator allows nothing: the default
    detail = await decide(client, await key_for("acme"), SALES)
    crm = action(detail, "TRIGGER_AUTOMATION")
    assert crm["status"] == "dead" and crm["attempts"] == 1  # permanent: not retried
    assert "egress refused: 127.0.0.1 is loopback (not in ASTRALIS_EGRESS_ALLOW" in crm["error"]
    assert detail["status"] == "FAILED" and "egress refused" in detail["error"]
    assert receiver.requests == []


async def test_finding_3_a_notification_webhook_on_loopback_is_refused_and_recorded(
        make_client, config_dirs, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_NOTIFY_SECRET", "whsec-acme-notify")
    with_policy(config_dirs, f"""
notifications:
  channels: [in_app, webhook]
  webhook: {{url: "http://localhost:{receiver.port}/hooks", secret_env: ACME_NOTIFY_SECRET}}
""")
    client, key_for = await make_client()
    detail = await decide(client, await key_for("acme"), SALES)
    note = action(detail, "SEND_NOTIFICATION")
    assert note["status"] == "dead" and note["attempts"] == 1
    assert f"notification webhook http://localhost:{receiver.port}/hooks: egress refused: localhost resolves to" \
        in note["error"] and "which is loopback (not in ASTRALIS_EGRESS_ALLOW" in note["error"]
    assert receiver.requests == []


async def test_finding_3_an_smtp_host_on_loopback_is_refused_and_recorded(
        make_client, config_dirs, smtp: tuple[Mailbox, int]) -> None:
    box, port = smtp
    with_policy(config_dirs, f"""
notifications:
  channels: [in_app, email]
  email: {{host: 127.0.0.1, port: {port}, from: agent@acme.example}}
""")
    client, key_for = await make_client()
    detail = await decide(client, await key_for("acme"), SALES)
    note = action(detail, "SEND_NOTIFICATION")
    assert note["status"] == "dead" and note["attempts"] == 1
    assert f"SMTP server 127.0.0.1:{port}: egress refused: 127.0.0.1 is loopback" in note["error"]
    assert box.messages == []


async def test_the_operators_allow_list_opens_loopback_for_all_three(
        make_client, config_dirs, receiver: Receiver, smtp: tuple[Mailbox, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    box, port = smtp
    monkeypatch.setenv("ACME_NOTIFY_SECRET", "whsec-acme-notify")
    text = (config_dirs[1] / "acme.yaml").read_text()
    (config_dirs[1] / "acme.yaml").write_text(text.replace(
        "    notify: {team: true, template: new_sales_inquiry}",
        "    notify: {team: true, template: new_sales_inquiry}\n    automations: [crm]", 1) + f"""
automations:
  crm: {{url: "http://127.0.0.1:{receiver.port}/webhook/crm"}}
notifications:
  channels: [in_app, email, webhook]
  email: {{host: localhost, port: {port}, from: agent@acme.example}}
  webhook: {{url: "http://127.0.0.1:{receiver.port}/hooks", secret_env: ACME_NOTIFY_SECRET}}
""")
    client, key_for = await make_client(egress_allow="127.0.0.0/8,::1")
    detail = await decide(client, await key_for("acme"), SALES)
    assert {a["status"] for a in detail["outbox"]} == {"done"}, detail["outbox"]
    assert sorted(p for p, _ in receiver.requests) == ["/hooks", "/webhook/crm"]
    assert len(box.messages) == 2  # the sales team: u-sam and u-lee


def test_a_bad_allow_list_entry_stops_the_start_with_the_entry_named(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--db", str(tmp_path / "a.db"),
                          "--egress-allow", "10.0.0.0/8,n8n.internal"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode != 0
    assert "--egress-allow: 'n8n.internal' is not an IP address or CIDR range" in out.stderr


# --------------------------------------------------------------------------- finding 2, against astralis serve

@pytest.fixture
def server(tmp_path: Path) -> Iterator[Serve]:
    """`astralis serve` (a child process) on a private copy of the rulesets, with API keys of acme and
    brightsmile; the operator allows loopback (as for a local n8n): the own-address rule must hold anyway."""
    rulesets, policies = tmp_path / "rulesets", tmp_path / "policies"
    shutil.copytree(ROOT / "rulesets", rulesets)
    shutil.copytree(ROOT / "policies", policies)
    s = Serve(tmp_path, "--rulesets", str(rulesets), "--policies", str(policies), "--egress-allow", "127.0.0.0/8")
    yield s
    s.stop()
    print(s.logs()[-20000:])


def brightsmile_key(db: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "server.cli", "keys", "create", "--org", "brightsmile", "--db",
                          str(db)], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


async def test_finding_2_acmes_webhook_aimed_at_brightsmiles_form_webhook_lands_nothing(server: Serve) -> None:
    shared = "whsec-brightsmile-0123456789"
    # Even a valid signature gains nothing: acme's own notify secret is given brightsmile's value here (an
    # operator who reused a value), so only the egress rule stands between acme and brightsmile's inbox.
    server.start(env={"ACME_WEBHOOK_SECRET": "whsec-acme", "BRIGHTSMILE_WEBHOOK_SECRET": shared,
                      "ACME_NOTIFY_SECRET": shared})
    await server.ready()
    bright = brightsmile_key(server.db)
    target = f"http://127.0.0.1:{server.port}/api/webhooks/brightsmile/form"
    policy = (server.dir / "policies" / "acme.yaml").read_text() + f"""
notifications:
  channels: [in_app, webhook]
  webhook: {{url: "{target}", secret_env: ACME_NOTIFY_SECRET}}
"""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        # the org admin's policy update, through the API
        async with http.post(f"{server.url}/api/agent/config", json={"policy": policy},
                             headers=auth(server.key)) as r:
            assert r.status == 200, await r.text()
        async with http.post(f"{server.url}/api/agent/process?mode=sync", json=SALES, headers=auth(server.key)) as r:
            assert r.status == 200, await r.text()
            decision = await r.json()
        deadline = time.monotonic() + 20
        while True:
            async with http.get(f"{server.url}/api/agent/decisions/{decision['id']}", headers=auth(server.key)) as r:
                detail = await r.json()
            note = next(a for a in detail["outbox"] if a["type"] == "SEND_NOTIFICATION")
            if note["status"] in ("done", "dead"):
                break
            assert time.monotonic() < deadline, detail["outbox"]
            await asyncio.sleep(0.1)
        async with http.get(f"{server.url}/api/agent/events", headers=auth(bright)) as r:
            inbox = await r.json()
    assert note["status"] == "dead" and note["attempts"] == 1
    assert f"notification webhook {target}: egress refused: 127.0.0.1 port {server.port} is this service's own " \
        "address" in note["error"]
    assert inbox["events"] == []  # nothing landed in brightsmile's inbox
    assert all(json.dumps(line).find(shared) < 0 for line in server.log_lines())  # the secret is in no log line


def test_serve_refuses_its_own_listening_address_whatever_the_allow_list() -> None:
    policy = egress.EgressPolicy.from_text("127.0.0.0/8", listen=[("0.0.0.0", 8080)],
                                           public_url="https://agent.example")
    assert "is this service's own address" in str(policy.refusal("127.0.0.1", 8080))
    assert policy.refusal("127.0.0.1", 8081) is None  # another local service the operator allowed
    assert "agent.example:443 is this service's own address" in str(
        policy.refusal("93.184.216.34", 443, host="agent.example"))
