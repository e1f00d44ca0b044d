"""Issue 13, findings 1 and 2 (the secret half): secrets by reference, per org.

Finding 1 ("secrets by any name"): one policy update by acme named OPENAI_API_KEY, ANTHROPIC_API_KEY and
BRIGHTSMILE_WEBHOOK_SECRET as its automation's auth header, its SMTP login and its webhook's signing secret, and
the values went to a listener and an SMTP server of acme's choosing. Finding 2: acme signed with brightsmile's
webhook secret. Now a secret name in tenant YAML must be under the org's own prefix (`ACME_...`), not under a
longer org's prefix, and never one of the server's variables: a `forbidden_secret` finding at its file and line
(`astralis validate`, the config API), refused again when an executor or the webhook endpoint resolves it.

Receivers are real local servers that the operator allows here (127.0.0.1), so that only the secret rule stands
between the values and acme's listener.
"""
# ruff: noqa: F811  (the service fixtures are imported from tests/server/conftest.py, then named as arguments)

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP

from adapters import egress
from adapters.automations import AutomationTrigger
from adapters.secrets import SecretRefused, SecretResolver
from engine.boundaries import secret_problem
from engine.config import Automation
from engine.loader import load_org
from engine.models import Decision
from engine.ports import ActionFailed, ActionJob
from server.app import REGISTRY, SERVICE
from server.signing import HEADER, sign
from tests.server.conftest import SECRET, auth, config_dirs, make_client, make_settings, service_env  # noqa: F401
from tests.server.test_crash import ROOT

SERVER_SECRETS = {"OPENAI_API_KEY": "sk-openai-server-key-0123", "ANTHROPIC_API_KEY": "sk-ant-server-key-4567",
                  "BRIGHTSMILE_WEBHOOK_SECRET": "whsec-brightsmile-89ab"}
SALES = {"source": "EMAIL", "type": "email:received",
         "data": {"from": "Jo Rivera <jo@shop.example>", "to": "hello@acme.example",
                  "subject": "Pricing for a new store",
                  "text": "Hi, how much would a Shopify build cost? We'd like a quote and a demo."}}


class Listener:
    """acme's listener: records whatever reaches it."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.json_response({"ok": True})


@pytest.fixture
async def listener(aiohttp_server: Any) -> Listener:
    rec = Listener()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    rec.url = f"http://127.0.0.1:{server.port}"
    return rec


class Mailbox:
    def __init__(self) -> None:
        self.sessions: list[Any] = []
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Mailbox, int]]:
    box = Mailbox()
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(box, auth_require_tls=False), "127.0.0.1", 0)
    yield box, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def attack_policy(original: str, listener: Listener, smtp_port: int) -> str:
    """acme's policy as the finding wrote it: the server's provider keys and brightsmile's webhook secret as its
    automation's auth header, its SMTP login and its webhook's signing secret, sent to acme's own receivers."""
    return original.replace(
        "    notify: {team: true, template: new_sales_inquiry}",
        "    notify: {team: true, template: new_sales_inquiry}\n    automations: [leak]", 1) + f"""
automations:
  leak: {{url: "{listener.url}/collect", auth_env: OPENAI_API_KEY}}
notifications:
  channels: [in_app, email, webhook]
  email:
    host: 127.0.0.1
    port: {smtp_port}
    from: agent@acme.example
    username_env: ANTHROPIC_API_KEY
    password_env: BRIGHTSMILE_WEBHOOK_SECRET
  webhook: {{url: "{listener.url}/hook", secret_env: BRIGHTSMILE_WEBHOOK_SECRET}}
"""


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def no_value(*texts: str) -> None:
    for text in texts:
        for value in SERVER_SECRETS.values():
            assert value not in text


async def test_finding_1_the_policy_update_is_refused_at_each_line_and_nothing_leaves(
        make_client, config_dirs, listener: Listener, smtp: tuple[Mailbox, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SERVER_SECRETS.items():
        monkeypatch.setenv(name, value)
    box, smtp_port = smtp
    client, key_for = await make_client(egress_allow="127.0.0.1/32")  # acme's receivers are reachable
    key = await key_for("acme")
    path = config_dirs[1] / "acme.yaml"
    original = path.read_text()
    policy = attack_policy(original, listener, smtp_port)
    before = client.app[REGISTRY].get("acme").revision

    r = await client.post("/api/agent/config/validate", json={"policy": policy}, headers=auth(key))
    checked = await r.text()
    body = json.loads(checked)
    assert body["valid"] is False
    found = {(e["file"], e["line"], e["code"]) for e in body["errors"]}
    assert found == {("policies/acme.yaml", line_of(policy, "auth_env: OPENAI_API_KEY"), "forbidden_secret"),
                     ("policies/acme.yaml", line_of(policy, "username_env: ANTHROPIC_API_KEY"), "forbidden_secret"),
                     ("policies/acme.yaml", line_of(policy, "password_env: BRIGHTSMILE"), "forbidden_secret"),
                     ("policies/acme.yaml", line_of(policy, "secret_env: BRIGHTSMILE"), "forbidden_secret")}
    messages = " ".join(e["message"] for e in body["errors"])
    assert "automations.leak.auth_env: 'OPENAI_API_KEY' is one of the server's own variables" in messages
    assert "notifications.webhook.secret_env: 'BRIGHTSMILE_WEBHOOK_SECRET' is outside the secrets of org 'acme'" \
        in messages

    r = await client.post("/api/agent/config", json={"policy": policy}, headers=auth(key))
    refused = await r.text()
    assert r.status == 422 and "forbidden_secret" in refused
    assert path.read_text() == original and client.app[REGISTRY].get("acme").revision == before

    # the event that would have triggered the leak: decided on the unchanged policy, nothing reaches acme's ends
    r = await client.post("/api/agent/process?mode=sync", json=SALES, headers=auth(key))
    assert r.status == 200
    assert await client.app[SERVICE].outbox.idle(15)
    assert listener.requests == [] and box.messages == []
    no_value(checked, refused)


async def test_finding_1_and_2_org_yaml_cannot_take_brightsmiles_webhook_secret(
        make_client, config_dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIGHTSMILE_WEBHOOK_SECRET", SERVER_SECRETS["BRIGHTSMILE_WEBHOOK_SECRET"])
    client, key_for = await make_client()
    key = await key_for("acme")
    org_yaml = (config_dirs[0] / "acme" / "org.yaml").read_text()
    taken = org_yaml.replace("webhook_secret_env: ACME_WEBHOOK_SECRET", "webhook_secret_env: BRIGHTSMILE_WEBHOOK_SECRET")
    r = await client.post("/api/agent/config", json={"files": {"org.yaml": taken}}, headers=auth(key))
    body = await r.json()
    assert r.status == 422 and body["error"]["code"] == "invalid_config"
    assert (f"rulesets/acme/org.yaml:{line_of(taken, 'webhook_secret_env:')}: forbidden_secret: webhook_secret_env: "
            "'BRIGHTSMILE_WEBHOOK_SECRET' is outside the secrets of org 'acme'") in body["error"]["details"][0]
    assert (config_dirs[0] / "acme" / "org.yaml").read_text() == org_yaml  # nothing applied
    no_value(json.dumps(body))

    # acme's webhooks still take acme's own secret, and never brightsmile's (a signature is per org)
    raw = json.dumps({"form": "contact", "name": "Jo", "email": "jo@shop.example", "message": "hello"}).encode()
    for secret, status in ((SECRET, 202), (SERVER_SECRETS["BRIGHTSMILE_WEBHOOK_SECRET"], 401)):
        r = await client.post("/api/webhooks/acme/form", data=raw, headers={
            "Content-Type": "application/json", HEADER: sign(secret, raw, int(time.time()))})
        assert r.status == status, await r.text()


def test_finding_1_astralis_validate_names_file_line_and_code(tmp_path: Path) -> None:
    rulesets, policies = tmp_path / "rulesets", tmp_path / "policies"
    shutil.copytree(ROOT / "rulesets", rulesets)
    shutil.copytree(ROOT / "policies", policies)
    acme = policies / "acme.yaml"
    text = acme.read_text() + "automations:\n  leak: {url: 'https://hooks.example/x', auth_env: ANTHROPIC_API_KEY}\n"
    acme.write_text(text)
    out = subprocess.run([sys.executable, "-m", "server.cli", "validate", "--rulesets", str(rulesets),
                          "--policies", str(policies)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 1
    assert (f"{acme}:{line_of(text, 'auth_env: ANTHROPIC_API_KEY')}: forbidden_secret: automations.leak.auth_env: "
            "'ANTHROPIC_API_KEY' is one of the server's own variables") in out.stdout + out.stderr


def test_a_name_under_a_longer_orgs_prefix_is_that_orgs_and_resolves_as_unset_for_the_shorter(tmp_path: Path) -> None:
    """With orgs acme and acme_x, `ACME_X_…` is acme_x's. acme naming it is no finding (a finding, or its absence,
    would tell acme which org ids begin like its own: the red team's F8) and resolves exactly as a secret the
    operator has not set, while `ACME_NOPE_…` (no such org) looks the same."""
    rulesets, policies = tmp_path / "rulesets", tmp_path / "policies"
    shutil.copytree(ROOT / "rulesets" / "acme", rulesets / "acme")
    shutil.copytree(ROOT / "rulesets" / "acme", rulesets / "acme_x")
    shutil.copytree(ROOT / "policies", policies)
    x_org = rulesets / "acme_x" / "org.yaml"
    x_org.write_text(x_org.read_text().replace("org: acme", "org: acme_x")
                     .replace("ACME_WEBHOOK_SECRET", "ACME_X_WEBHOOK_SECRET"))
    acme_org = rulesets / "acme" / "org.yaml"
    acme_org.write_text(acme_org.read_text().replace("ACME_WEBHOOK_SECRET", "ACME_X_WEBHOOK_SECRET"))
    out = subprocess.run([sys.executable, "-m", "server.cli", "validate", "--rulesets", str(rulesets),
                          "--policies", str(policies)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    printed = out.stdout + out.stderr
    assert out.returncode == 0 and "forbidden_secret" not in printed, printed
    env = {"ACME_X_WEBHOOK_SECRET": "x-only", "ACME_NOPE_TOKEN": ""}
    secrets = SecretResolver(env, orgs=lambda: ["acme", "acme_x"])
    assert secrets.values("acme_x", "ACME_X_WEBHOOK_SECRET", field="webhook_secret_env") == ["x-only"]
    assert secrets.values("acme", "ACME_X_WEBHOOK_SECRET", field="webhook_secret_env") == []
    answers = []
    for name in ("ACME_X_WEBHOOK_SECRET", "ACME_NOPE_TOKEN"):
        with pytest.raises(SecretRefused) as err:
            secrets.resolve("acme", name, field="automations.crm.auth_env")
        answers.append(str(err.value).replace(name, "NAME"))
    assert answers[0] == answers[1] == ("automations.crm.auth_env of org 'acme' names the secret NAME, which the "
                                        "operator has not set")


@pytest.mark.parametrize(("org", "name"), [
    ("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"), ("agent", "AGENT_DEFAULT_PROVIDER"),
    ("astralis", "ASTRALIS_EGRESS_ALLOW"), ("database", "DATABASE_URL"), ("redis", "REDIS_URL")])
def test_an_org_named_like_the_servers_variables_still_cannot_reach_them(org: str, name: str) -> None:
    assert secret_problem(org, name) == f"'{name}' is one of the server's own variables, never an org's secret"
    with pytest.raises(SecretRefused):
        SecretResolver({name: "server-value"}).resolve(org, name, field="automations.x.auth_env")


async def test_finding_1_a_config_that_bypassed_the_loader_is_refused_when_resolved(listener: Listener) -> None:
    """Defense in depth: an executor handed a bundle nobody validated (built in code here) resolves nothing
    outside the org's prefix, and sends nothing."""
    acme = load_org(ROOT / "rulesets" / "acme", ROOT / "policies")
    decision = Decision(id="dec_leak", event_id="evt-leak", org="acme", input={"source": "EMAIL"},
                        intent="SALES_INQUIRY", priority=3, decision_type="TRIGGER_AUTOMATION", confidence=0.9,
                        decided_by="rules", reasoning="leak", status="EXECUTED")
    job = ActionJob(key="dec_leak:0", org="acme", decision_id="dec_leak", index=0, type="TRIGGER_AUTOMATION",
                    params={"workflow": "leak"}, attempt=1, decision=decision, event={"id": "evt-leak"})
    async with egress.session(egress.EgressPolicy.from_text("127.0.0.1/32")) as http:
        for name in SERVER_SECRETS:
            policy = acme.policy.model_copy(update={"automations": {
                "leak": Automation(url=f"{listener.url}/collect", auth_env=name)}})
            bundle = type(acme)(**{**acme.__dict__, "policy": policy})
            trigger = AutomationTrigger(lambda org, b=bundle: b, lambda: http, env=SERVER_SECRETS,
                                        secrets=SecretResolver(SERVER_SECRETS, orgs=lambda: ["acme", "brightsmile"]))
            with pytest.raises(ActionFailed) as err:
                await trigger.run(job)
            assert err.value.permanent and f"'{name}'" in str(err.value) and "secret refused" in str(err.value)
            no_value(str(err.value))
    assert listener.requests == []


def test_the_shipped_configuration_keeps_its_names() -> None:
    """Back-compat: the shipped org files name their own prefix (DESIGN §6: acme's secret is ACME_WEBHOOK_SECRET)."""
    for org in ("acme", "brightsmile"):
        bundle = load_org(ROOT / "rulesets" / org, ROOT / "policies")
        assert bundle.org.webhook_secret_env == f"{org.upper()}_WEBHOOK_SECRET"
        assert secret_problem(org, f"{org.upper()}_WEBHOOK_SECRET", ["acme", "brightsmile"]) is None
