"""AutomationTrigger (adapters/automations.py): TRIGGER_AUTOMATION actions POST to the policy's named n8n
workflow, against a real local aiohttp server that behaves like an n8n Webhook node."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters import egress
from adapters.automations import AutomationTrigger, classify, retry_after
from adapters.secrets import SecretResolver
from engine.config import Automation
from engine.loader import OrgBundle, load_org
from engine.models import Action, Decision
from engine.ports import ActionFailed, ActionJob

ROOT = Path(__file__).resolve().parents[2]
ACME = load_org(ROOT / "rulesets" / "acme", ROOT / "policies")
TOKEN = "n8n-secret-token-0123456789"
EVENT = {"id": "evt-lead-1", "org": "acme", "source": "EMAIL", "type": "email:received",
         "data": {"from": "Ana <ana@x.com>", "subject": "Pricing", "text": "How much for 40 seats?"}}


# --------------------------------------------------------------------------- a stand-in n8n Webhook node

@dataclass
class Seen:
    """One request the stand-in received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class N8n:
    """Answers `POST /webhook/<path>` like an n8n Webhook node (200 `{"message":"Workflow was started"}`),
    unless told otherwise: `script` holds one reply per request, in order (a status, headers, a body, or
    `hang` seconds before answering), and the default reply follows once it is used up."""

    script: list[dict[str, Any]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    elsewhere: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def webhook(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path, dict(request.headers), await request.read()))
        step = self.script.pop(0) if self.script else {}
        if "hang" in step:
            # Waits for the test to end (or the time given): a webhook that never answers in time.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), step["hang"])
        status = step.get("status", 200)
        if "text" in step:
            return web.Response(status=status, text=step["text"], headers=step.get("headers"))
        body = step.get("json", {"message": "Workflow was started"} if status == 200 else {"message": "nope"})
        return web.json_response(body, status=status, headers=step.get("headers"))

    async def other(self, request: web.Request) -> web.StreamResponse:
        self.elsewhere.append(Seen(request.method, request.path, dict(request.headers), await request.read()))
        return web.json_response({"message": "redirect target reached"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/webhook/{path}", self.webhook)
        app.router.add_post("/webhook-test/{path}", self.webhook)
        app.router.add_route("*", "/elsewhere", self.other)
        return app


@pytest.fixture
async def n8n(aiohttp_server: Any) -> AsyncIterator[tuple[N8n, str]]:
    """The stand-in, running; yields it and its base URL."""
    node = N8n()
    server = await aiohttp_server(node.app())
    yield node, str(server.make_url("")).rstrip("/")
    node.release.set()


LOOPBACK = egress.EgressPolicy.from_text("127.0.0.1/32")
"""The operator's allow-list of these tests: the stand-in listens on loopback, which is refused by default."""


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The service's kind of session (egress-guarded), with loopback allowed by the operator's setting (a long
    default timeout: the policy's per-workflow one rules)."""
    async with egress.session(LOOPBACK, timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


@pytest.fixture
def bundle_with(tmp_path: Path) -> Callable[[dict[str, Any]], OrgBundle]:
    """`bundle_with({"crm-sync": {...}})` → acme loaded from a private copy whose policy defines those
    automations."""
    shutil.copytree(ROOT / "rulesets" / "acme", tmp_path / "rulesets" / "acme")
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    policy = tmp_path / "policies" / "acme.yaml"
    original = policy.read_text(encoding="utf-8")

    def make(automations: dict[str, Any]) -> OrgBundle:
        policy.write_text(original + "\nautomations: " + json.dumps(automations) + "\n", encoding="utf-8")
        return load_org(tmp_path / "rulesets" / "acme", tmp_path / "policies")

    return make


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def decision() -> Decision:
    return Decision(id="dec_auto1", event_id=EVENT["id"], org="acme", input={"source": "EMAIL", "type": "email:received"},
                    intent="SALES_INQUIRY", priority=3, decision_type="TRIGGER_AUTOMATION", confidence=0.9,
                    decided_by="rules", matched_rules=["intake/pricing"], reasoning="a lead for the CRM",
                    actions=[Action(type="TRIGGER_AUTOMATION", params={"workflow": "crm-sync"})], status="EXECUTED",
                    trace={"internal": "not for n8n", "rules": ["intake/pricing"]})


def job(workflow: str = "crm-sync", *, attempt: int = 1, org: str = "acme") -> ActionJob:
    return ActionJob(key="dec_auto1:0", org=org, decision_id="dec_auto1", index=0, type="TRIGGER_AUTOMATION",
                     params={"workflow": workflow}, attempt=attempt, decision=decision(), event=EVENT)


Setup = tuple[N8n, Callable[..., AutomationTrigger]]


@pytest.fixture
def setup(n8n: tuple[N8n, str], session: aiohttp.ClientSession,
          bundle_with: Callable[[dict[str, Any]], OrgBundle]) -> Setup:
    """(stand-in, trigger(**automation overrides, env=..., path=...)): a trigger whose policy defines
    `crm-sync` pointing at the stand-in."""
    node, base = n8n

    def trigger(*, env: dict[str, str] | None = None, path: str = "/webhook/crm", **overrides: Any) -> AutomationTrigger:
        spec = {"url": base + path, "auth_env": "ACME_N8N_TOKEN", "timeout_seconds": 0.5, **overrides}
        spec = {k: v for k, v in spec.items() if v is not None}
        bundle = bundle_with({"crm-sync": spec})
        return AutomationTrigger(lambda org: bundle if org == "acme" else None, lambda: session,
                                 env={"ACME_N8N_TOKEN": TOKEN} if env is None else env,
                                 callback_base="https://astralis.example/")

    return node, trigger


def no_secret(*things: Any) -> None:
    for thing in things:
        assert TOKEN not in json.dumps(thing, default=str)


# --------------------------------------------------------------------------- the call

async def test_posts_once_to_the_configured_url_with_key_auth_and_payload(setup: Setup):
    node, trigger = setup
    result = await trigger().run(job())
    assert result["workflow"] == "crm-sync" and result["status"] == 200
    assert result["answer"] == {"message": "Workflow was started"}
    assert isinstance(result["ms"], float) and result["ms"] >= 0
    no_secret(result)
    [seen] = node.seen
    assert (seen.method, seen.path) == ("POST", "/webhook/crm")
    assert seen.headers["Idempotency-Key"] == "dec_auto1:0"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Authorization"] == TOKEN
    assert seen.headers["X-Astralis-Decision"] == "dec_auto1"
    body = seen.json()
    assert body["idempotency_key"] == "dec_auto1:0"
    assert (body["org"], body["workflow"], body["decision_id"]) == ("acme", "crm-sync", "dec_auto1")
    assert body["event"] == EVENT
    assert body["params"] == {"workflow": "crm-sync"}
    assert body["decision"]["id"] == "dec_auto1" and body["decision"]["intent"] == "SALES_INQUIRY"
    assert body["decision"]["reasoning"] == "a lead for the CRM"
    assert "trace" not in body["decision"] and "not for n8n" not in seen.body.decode()
    assert body["callback"] == {"url": "https://astralis.example/api/webhooks/acme/n8n",
                                "correlation": {"decision_id": "dec_auto1", "action": "dec_auto1:0"}}
    assert TOKEN not in seen.body.decode()
    assert node.elsewhere == []


async def test_every_attempt_carries_the_same_idempotency_key(setup: Setup):
    node, trigger = setup
    node.script = [{"status": 500}, {"status": 502}]
    t, first = trigger(), job()
    for attempt in (1, 2):
        with pytest.raises(ActionFailed) as err:
            await t.run(dataclasses.replace(first, attempt=attempt))
        assert not err.value.permanent
    result = await t.run(dataclasses.replace(first, attempt=3))
    assert result["status"] == 200
    assert [s.headers["Idempotency-Key"] for s in node.seen] == ["dec_auto1:0"] * 3
    assert len({s.body for s in node.seen}) == 1  # the very same payload each time


async def test_a_custom_auth_header_carries_the_secret(setup: Setup):
    node, trigger = setup
    await trigger(auth_header="X-N8N-Key").run(job())
    [seen] = node.seen
    assert seen.headers["X-N8N-Key"] == TOKEN
    assert "Authorization" not in seen.headers


async def test_without_auth_env_no_auth_header_is_sent(setup: Setup):
    node, trigger = setup
    await trigger(auth_env=None, env={}).run(job())
    [seen] = node.seen
    assert "Authorization" not in seen.headers


async def test_the_test_mode_webhook_path_works_too(setup: Setup):
    node, trigger = setup
    result = await trigger(path="/webhook-test/crm").run(job())
    assert result["status"] == 200 and node.seen[0].path == "/webhook-test/crm"


async def test_a_plain_text_answer_is_kept_as_text(setup: Setup):
    node, trigger = setup
    node.script = [{"text": "Workflow was started"}]
    result = await trigger().run(job())
    assert result["answer"] == "Workflow was started"


async def test_the_secret_is_read_from_the_process_environment_by_default(n8n, session, bundle_with, monkeypatch):
    node, base = n8n
    monkeypatch.setenv("ACME_N8N_TOKEN", TOKEN)
    bundle = bundle_with({"crm-sync": {"url": base + "/webhook/crm", "auth_env": "ACME_N8N_TOKEN"}})
    result = await AutomationTrigger(lambda org: bundle, lambda: session).run(job())
    assert result["status"] == 200 and node.seen[0].headers["Authorization"] == TOKEN



async def test_an_answer_echoing_the_request_keeps_the_secret_out_of_the_result(setup: Setup):
    node, trigger = setup
    # What n8n answers with "Respond: when last node finishes / first entry JSON" and only a Webhook node.
    node.script = [{"json": {"headers": {"authorization": TOKEN, "idempotency-key": "dec_auto1:0"},
                             "params": {}, "query": {}, "body": {"workflow": "crm-sync"}}}]
    result = await trigger().run(job())
    assert result["status"] == 200
    no_secret(result)


async def test_an_error_answer_echoing_the_secret_keeps_it_out_of_the_message(setup: Setup):
    node, trigger = setup
    node.script = [{"status": 400, "text": f"bad auth header {TOKEN}"}]
    with pytest.raises(ActionFailed) as err:
        await trigger().run(job())
    assert err.value.permanent
    no_secret(str(err.value), err.value.result)

# --------------------------------------------------------------------------- configuration failures

async def test_a_missing_env_var_is_permanent_and_names_it(setup: Setup):
    node, trigger = setup
    with pytest.raises(ActionFailed) as err:
        await trigger(env={"OTHER": "x"}).run(job())
    assert err.value.permanent
    assert "ACME_N8N_TOKEN" in str(err.value) and "crm-sync" in str(err.value)
    assert node.seen == []


async def test_an_unknown_workflow_is_permanent_and_lists_the_known_ones(setup: Setup):
    node, trigger = setup
    with pytest.raises(ActionFailed) as err:
        await trigger().run(job("http://evil.example/webhook/x"))
    assert err.value.permanent
    assert "'http://evil.example/webhook/x'" in str(err.value) and "(crm-sync)" in str(err.value)
    assert node.seen == []


async def test_an_org_without_configuration_is_transient(setup: Setup):
    node, trigger = setup
    with pytest.raises(ActionFailed) as err:
        await trigger().run(job(org="brightsmile"))
    assert not err.value.permanent and "brightsmile" in str(err.value)
    assert node.seen == []


# --------------------------------------------------------------------------- what the webhook answers

@pytest.mark.parametrize("status", [500, 503, 408])
async def test_server_errors_and_request_timeouts_are_transient(setup: Setup, status: int):
    node, trigger = setup
    node.script = [{"status": status, "json": {"message": "Error in workflow"}}]
    with pytest.raises(ActionFailed) as err:
        await trigger().run(job())
    assert not err.value.permanent and err.value.retry_after is None
    assert f"HTTP {status}" in str(err.value) and "Error in workflow" in str(err.value)
    assert err.value.result is not None and err.value.result["status"] == status
    no_secret(str(err.value), err.value.result)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_client_errors_are_permanent(setup: Setup, status: int):
    node, trigger = setup
    node.script = [{"status": status, "json": {"code": status, "message": "The requested webhook is not registered"}}]
    with pytest.raises(ActionFailed) as err:
        await trigger().run(job())
    assert err.value.permanent
    assert f"HTTP {status}" in str(err.value) and "not registered" in str(err.value)
    assert err.value.result is not None and err.value.result["status"] == status
    no_secret(str(err.value), err.value.result)
    assert len(node.seen) == 1


async def test_429_with_retry_after_is_transient_and_says_when(setup: Setup):
    node, trigger = setup
    node.script = [{"status": 429, "headers": {"Retry-After": "7"}}]
    with pytest.raises(ActionFailed) as err:
        await trigger().run(job())
    assert not err.value.permanent
    assert err.value.retry_after == 7
    assert "HTTP 429" in str(err.value)


@pytest.mark.parametrize("status", [301, 302, 307])
async def test_a_redirect_is_permanent_and_not_followed(setup: Setup, n8n: tuple[N8n, str], status: int):
    node, trigger = setup
    _, base = n8n
    node.script = [{"status": status, "text": "", "headers": {"Location": base + "/elsewhere"}}]
    with pytest.raises(ActionFailed) as err:
        await trigger().run(job())
    assert err.value.permanent
    assert f"HTTP {status}" in str(err.value)
    assert len(node.seen) == 1
    assert node.elsewhere == []  # the secret never travels to where the redirect points


async def test_a_webhook_slower_than_the_timeout_is_transient(setup: Setup):
    node, trigger = setup
    node.script = [{"hang": 5}]
    started = time.monotonic()
    with pytest.raises(ActionFailed) as err:
        await trigger(timeout_seconds=0.3).run(job())
    elapsed = time.monotonic() - started
    assert not err.value.permanent
    assert "did not answer within 0.3 s" in str(err.value)
    assert elapsed < 3


async def test_connection_refused_is_transient(session, bundle_with):
    bundle = bundle_with({"crm-sync": {"url": f"http://127.0.0.1:{free_port()}/webhook/crm", "auth_env": "ACME_N8N_TOKEN",
                                       "timeout_seconds": 2}})
    trigger = AutomationTrigger(lambda org: bundle, lambda: session, env={"ACME_N8N_TOKEN": TOKEN})
    with pytest.raises(ActionFailed) as err:
        await trigger.run(job())
    assert not err.value.permanent
    assert "could not be reached" in str(err.value)
    no_secret(str(err.value))


# --------------------------------------------------------------------------- helpers

@pytest.mark.parametrize(("status", "kind"), [
    (200, "ok"), (201, "ok"), (204, "ok"), (302, "permanent"), (400, "permanent"), (403, "permanent"),
    (408, "transient"), (429, "transient"), (500, "transient"), (504, "transient")])
def test_classify(status: int, kind: str):
    assert classify(status) == kind


def test_retry_after_reads_seconds_and_http_dates():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert retry_after("7") == 7.0
    assert retry_after(" 120 ") == 120.0
    assert retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert retry_after(None) is None and retry_after("") is None and retry_after("soon") is None


# --------------------------------------------------------------------------- tenant input: secrets and egress

async def test_a_secret_outside_the_orgs_prefix_is_refused_at_call_time_and_nothing_is_sent(n8n, session):
    node, base = n8n
    # a bundle that did not come through the loader (which refuses the name at its line): the executor checks again
    bundle = dataclasses.replace(ACME, policy=ACME.policy.model_copy(update={"automations": {
        "crm-sync": Automation(url=base + "/webhook/crm", auth_env="OPENAI_API_KEY")}}))
    trigger = AutomationTrigger(lambda org: bundle, lambda: session, env={"OPENAI_API_KEY": "sk-provider-key"})
    with pytest.raises(ActionFailed) as err:
        await trigger.run(job())
    assert err.value.permanent
    assert "automations.crm-sync.auth_env" in str(err.value) and "OPENAI_API_KEY" in str(err.value)
    assert "sk-provider-key" not in str(err.value)
    assert node.seen == []


async def test_a_name_under_a_longer_orgs_prefix_is_that_orgs_secret(n8n, session):
    node, base = n8n
    bundle = dataclasses.replace(ACME, policy=ACME.policy.model_copy(update={"automations": {
        "crm-sync": Automation(url=base + "/webhook/crm", auth_env="ACME_X_TOKEN")}}))
    secrets = SecretResolver({"ACME_X_TOKEN": "acme-x-only"}, orgs=lambda: ["acme", "acme_x"])
    with pytest.raises(ActionFailed) as err:
        await AutomationTrigger(lambda org: bundle, lambda: session, secrets=secrets).run(job())
    # Refused exactly as a secret the operator has not set: nothing tells acme that acme_x exists.
    assert err.value.permanent and "names the secret ACME_X_TOKEN, which the operator has not set" in str(err.value)
    assert "acme_x" not in str(err.value)
    assert node.seen == []


async def test_loopback_is_refused_by_default_and_recorded_as_a_permanent_reason(n8n, bundle_with):
    node, base = n8n
    bundle = bundle_with({"crm-sync": {"url": base + "/webhook/crm", "auth_env": "ACME_N8N_TOKEN"}})
    async with egress.session(egress.EgressPolicy()) as default:
        trigger = AutomationTrigger(lambda org: bundle, lambda: default, env={"ACME_N8N_TOKEN": TOKEN})
        with pytest.raises(ActionFailed) as err:
            await trigger.run(job())
    assert err.value.permanent
    assert "egress refused: 127.0.0.1 is loopback (not in ASTRALIS_EGRESS_ALLOW" in str(err.value)
    assert node.seen == []
    no_secret(str(err.value))


async def test_a_session_without_the_egress_guard_sends_nothing(n8n, bundle_with):
    node, base = n8n
    bundle = bundle_with({"crm-sync": {"url": base + "/webhook/crm"}})
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(ActionFailed) as err:
            await AutomationTrigger(lambda org: bundle, lambda: plain).run(job())
    assert err.value.permanent and "not made by adapters.egress.session" in str(err.value)
    assert node.seen == []


@pytest.mark.parametrize("url", ["http://0/webhook/x", "http://2130706433/webhook/x", "http://127.1/webhook/x"])
async def test_a_url_aiohttp_cannot_use_is_a_permanent_failure(url: str, session, bundle_with) -> None:
    """The red team's note: such URLs failed with InvalidUrlClientError and were retried as if transient."""
    bundle = bundle_with({"crm-sync": {"url": url}})
    with pytest.raises(ActionFailed) as err:
        await AutomationTrigger(lambda org: bundle, lambda: session, env={}).run(job())
    assert err.value.permanent, str(err.value)
