"""The OpenAPI document: every registered route is documented (and nothing else), and a live `astralis serve`
answers schemathesis-generated requests (valid and invalid) exactly as the document says."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from server.app import Settings, create_app
from server.openapi import spec
from server.signing import HEADER, sign
from server.webhooks import KINDS
from tests.server.conftest import ROOT, SECRET

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
NOT_CALLED = ("/api/stream",)
"""Documented but never called by the fuzzer: it streams until the client goes away."""


def registered_routes() -> set[tuple[str, str]]:
    """(METHOD, path pattern) of every route the app registers; HEAD stands for aiohttp's automatic
    HEAD-for-GET and is checked separately."""
    app = create_app(Settings(db=":memory:", rulesets=ROOT / "rulesets", policies=ROOT / "policies"))
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}


def documented_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the document."""
    return {(m.upper(), path) for path, item in spec()["paths"].items() for m in item if m in METHODS}


# ---- the document ---------------------------------------------------------------------------------------

def test_every_registered_route_is_documented() -> None:
    registered = registered_routes()
    documented = documented_routes()
    from server.dashboard import PAGE_ROUTES

    # The dashboard's pages (HTML, static files, the login form) are for browsers, not part of the API.
    pages = {*PAGE_ROUTES, "/login", "/logout", "/static", "/favicon.ico"}
    undocumented = {(m, p) for m, p in registered if m != "HEAD" and p not in pages} - documented
    assert not undocumented, f"routes without documentation in server/openapi.py: {sorted(undocumented)}"
    heads = {p for m, p in registered if m == "HEAD"}
    assert heads == {p for m, p in registered if m == "GET"}, "a HEAD route that is not aiohttp's HEAD-for-GET"


def test_every_documented_route_exists() -> None:
    registered = {(m, p) for m, p in registered_routes() if m != "HEAD"}
    stale = documented_routes() - registered
    assert not stale, f"documented routes the app does not register: {sorted(stale)}"


def test_webhook_kinds_match_the_route() -> None:
    op = spec()["paths"]["/api/webhooks/{org}/{kind}"]["post"]
    kind = next(p for p in op["parameters"] if p["name"] == "kind")
    assert kind["schema"]["enum"] == list(KINDS)


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_document_is_well_formed() -> None:
    doc = spec()
    assert doc["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(doc).validate()  # against the OpenAPI 3.1 meta-schema
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        assert "$defs" not in schema, f"{name}: $defs should be hoisted into components.schemas"
    for ref in set(_refs(doc)):
        kind, name = ref.removeprefix("#/components/").split("/")
        assert name in doc["components"][kind], f"dangling $ref {ref}"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], f"{method} {path} documents no response"
            for status, resp in op["responses"].items():
                assert "$ref" in resp or resp.get("content"), f"{method} {path} {status}: no content type"
            if op["security"]:
                assert "401" in op["responses"], f"{method} {path}: authenticated but 401 undocumented"
            if op["security"] == [{"bearer": []}]:
                assert "429" in op["responses"], f"{method} {path}: rate-limited but 429 undocumented"
            assert {p["name"] for p in op.get("parameters", []) if p["in"] == "path"} == set(
                re.findall(r"{(\w+)}", path)), f"{method} {path}: path parameters"


def test_spec_is_built_once_and_callers_get_their_own_copy() -> None:
    a = spec()
    a["paths"].clear()
    assert spec()["paths"], "spec() handed out the cached document itself"


async def test_served_document_is_the_spec(make_client) -> None:
    client, _ = await make_client()
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == spec()


# ---- a live server ----------------------------------------------------------------------------------------

KEY: dict[str, str] = {}
"""The live server's API key, once the `live` fixture has made it."""
PENDING = "pending-live-server-key"
"""Stands for the key in the coverage-phase cases, which schemathesis builds at collection, before the server."""


@dataclass
class Live:
    """A running `astralis serve` on a private database and a copy of the repo's configuration."""

    url: str
    key: str
    cases: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _astralis() -> list[str]:
    script = Path(sys.executable).with_name("astralis")
    return [str(script)] if script.exists() else [sys.executable, "-m", "server.cli"]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"astralis serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"astralis serve did not become ready in {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """`astralis serve` on a free port with a temporary DB, LLM off, no watcher or cron, and a rate limit high
    enough never to interfere; an acme API key made with `astralis keys create`."""
    tmp = tmp_path_factory.mktemp("openapi-live")
    rulesets, policies, db, log = tmp / "rulesets", tmp / "policies", tmp / "astralis.db", tmp / "serve.log"
    # A copy: the fuzzer posts configuration updates, and a valid one would be written into the folder.
    shutil.copytree(ROOT / "rulesets", rulesets, ignore=shutil.ignore_patterns("tests"))
    shutil.copytree(ROOT / "policies", policies)
    env = {**os.environ, "ACME_WEBHOOK_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(name, None)
    dirs = ["--db", str(db), "--rulesets", str(rulesets), "--policies", str(policies)]
    created = subprocess.run([*_astralis(), "keys", "create", "--org", "acme", "--name", "fuzzer", *dirs],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=30, check=True)
    key = created.stdout.strip().splitlines()[-1]
    port = _free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*_astralis(), "serve", "--host", "127.0.0.1", "--port", str(port), *dirs,
                                 "--llm", "off", "--no-watch", "--no-schedules", "--rate-limit", "1000000",
                                 "--log-level", "WARNING", "--shutdown-grace", "1"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        live = Live(url=url, key=key)
        KEY["acme"] = key
        yield live
        print(f"\nschemathesis: {len(live.cases)} generated cases against {url}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -15), f"astralis serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
    errors = [line for line in log.read_text().splitlines() if "unhandled error" in line]
    assert not errors, "the server logged unhandled errors:\n" + "\n".join(errors[:5])


# ---- documented answers the fuzzer rarely reaches (success paths need ids that exist) -------------------

DOC = schemathesis.openapi.from_dict(spec())
HELD = {"source": "EMAIL", "type": "email:received",
        "data": {"from": "Maya <maya@nordiclinens.com>", "subject": "Re: December retainer invoice",
                 "text": "Hi Kim, the checkout button does nothing on mobile again.\n\nOn Tue, Dec 8, 2026 Ana "
                         "wrote:\n> Attached is the invoice for the December retainer."}}
"""Ambiguous for acme's rules; with the LLM off the fallback holds it for approval."""
SALES = {"source": "EMAIL", "type": "email:received",
         "data": {"from": "jo@shop.example", "subject": "Pricing for the pro plan", "text": "How much is it?"}}


def conforms(resp: requests.Response, path: str, status: int) -> requests.Response:
    """`resp` has the expected status, and the document lists that status for the route with this content type,
    headers and body."""
    method = resp.request.method or "GET"
    assert resp.status_code == status, f"{method} {path}: {resp.status_code} {resp.text[:300]}"
    documented = spec()["paths"][path][method.lower()]["responses"]
    assert str(status) in documented, f"{method} {path}: {status} is not documented"
    DOC[path][method].validate_response(resp)
    return resp


def test_documented_answers(live: Live) -> None:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {live.key}"
    url, run = live.url, f"{time.time_ns()}"

    def post(path: str, body: Any = None, **kw: Any) -> requests.Response:
        return s.post(url + path, json=body, timeout=30, **kw)

    held = conforms(post("/api/agent/process?mode=sync", {**HELD, "id": f"held-{run}"}), "/api/agent/process", 200)
    decision = held.json()
    dec = f"/api/agent/decisions/{decision['id']}"
    conforms(s.get(url + dec), "/api/agent/decisions/{id}", 200)
    # On a fresh server it awaits approval; after the fuzzer, busy assignees may have made it an escalation.
    if decision["status"] == "REQUIRES_APPROVAL":
        conforms(post(dec + "/approve"), "/api/agent/decisions/{id}/approve", 200)
        assert conforms(post(dec + "/approve"), "/api/agent/decisions/{id}/approve", 200).headers["X-Astralis-Repeat"]
    conforms(post(dec + "/reject", {"reason": "too late"}), "/api/agent/decisions/{id}/reject", 409)
    conforms(post("/api/agent/decisions/nope/reject", {"reason": "x"}), "/api/agent/decisions/{id}/reject", 404)
    again = conforms(post("/api/agent/process?mode=sync", {**HELD, "id": f"held-{run}"}), "/api/agent/process", 200)
    assert again.headers["X-Astralis-Duplicate"] == "true"
    conforms(post("/api/agent/process", {**HELD, "id": f"held-{run}"}), "/api/agent/process", 200)  # AcceptedOut

    queued = conforms(post("/api/agent/process?mode=queue", {**SALES, "id": f"sales-{run}"}),
                      "/api/agent/process", 202)
    event = f"/api/agent/events/{queued.json()['event_id']}"
    conforms(s.get(url + event), "/api/agent/events/{id}", 200)
    assert conforms(post(event + "/retry"), "/api/agent/events/{id}/retry", 409).json()["error"]["code"] == "not_dead"
    conforms(post("/api/agent/db-trigger", {"table": "intakes", "operation": "INSERT", "row": {"title": "Hi"}}),
             "/api/agent/db-trigger", 202)

    page = conforms(s.get(url + "/api/agent/decisions?limit=1"), "/api/agent/decisions", 200).json()
    assert page["next_cursor"]
    conforms(s.get(url + "/api/agent/decisions", params={"limit": 1, "cursor": page["next_cursor"]}),
             "/api/agent/decisions", 200)
    page = conforms(s.get(url + "/api/agent/events?limit=1"), "/api/agent/events", 200).json()
    conforms(s.get(url + "/api/agent/events", params={"limit": 1, "cursor": page["next_cursor"]}),
             "/api/agent/events", 200)
    conforms(s.get(url + "/api/agent/analytics"), "/api/agent/analytics", 200)
    conforms(s.get(url + "/api/agent/config"), "/api/agent/config", 200)
    conforms(post("/api/agent/config", {"delete": ["nope.yaml"]}), "/api/agent/config", 422)
    conforms(post("/api/agent/simulate", {"past": 2}), "/api/agent/simulate", 200)
    conforms(post("/api/agent/simulate", {"events": [{**SALES, "org": "globex"}]}), "/api/agent/simulate", 403)

    conforms(post("/api/agent/process", data=b"x" * (1024 * 1024 + 1), headers={"Content-Type": "application/json"}),
             "/api/agent/process", 413)
    conforms(post("/api/agent/process", data=b"hi", headers={"Content-Type": "text/plain"}), "/api/agent/process", 415)
    conforms(post("/api/agent/process", data=b"{", headers={"Content-Type": "application/json"}),
             "/api/agent/process", 400)
    conforms(post("/api/agent/process", {"type": "nope"}), "/api/agent/process", 422)
    conforms(requests.get(url + "/api/agent/decisions", timeout=30), "/api/agent/decisions", 401)

    body = json.dumps({"from": "jo@shop.example", "subject": "Hello", "text": "A question about pricing"}).encode()
    hook = "/api/webhooks/{org}/{kind}"
    signed = {"Content-Type": "application/json", HEADER: sign(SECRET, body, int(time.time())),
              "X-Astralis-Delivery": f"hook-{run}"}
    conforms(requests.post(url + "/api/webhooks/acme/email", data=body, headers=signed, timeout=30), hook, 202)
    signed[HEADER] = sign(SECRET, body, int(time.time()) + 1)
    conforms(requests.post(url + "/api/webhooks/acme/email", data=body, headers=signed, timeout=30), hook, 409)
    conforms(requests.post(url + "/api/webhooks/acme/email", data=body, timeout=30), hook, 401)

    conforms(requests.get(url + "/healthz", timeout=30), "/healthz", 200)
    conforms(requests.get(url + "/metrics", timeout=30), "/metrics", 200)
    conforms(requests.get(url + "/openapi.json", timeout=30), "/openapi.json", 200)


def test_stream_answers_as_documented(live: Live) -> None:
    path = "/api/stream"
    conforms(requests.get(live.url + path, timeout=30), path, 401)
    key = {"Authorization": f"Bearer {live.key}"}
    conforms(requests.get(live.url + path, headers={**key, "Last-Event-ID": "x"}, timeout=30), path, 400)
    with requests.get(live.url + path, headers=key, stream=True, timeout=30) as resp:
        assert resp.status_code == 200
        documented = spec()["paths"][path]["get"]["responses"]["200"]["content"]
        assert resp.headers["Content-Type"].split(";")[0] in documented
        first = next(resp.iter_lines())
        assert first.startswith(b"id:") or first.startswith(b"event: ready") or first.startswith(b"retry:"), first


def test_stream_events_match_the_document(live: Live) -> None:
    """Each server-sent event, `ready` included, is what the document's event schema says (schemathesis ST108)."""
    path, key = "/api/stream", {"Authorization": f"Bearer {live.key}"}
    with requests.get(live.url + path, params={"limit": 1}, headers=key, stream=True, timeout=30) as resp:
        assert resp.status_code == 200
        decided = requests.post(live.url + "/api/agent/process?mode=sync", json={**SALES, "id": f"sse-{time.time_ns()}"},
                                headers=key, timeout=30)
        assert decided.status_code == 200, decided.text
        body = resp.content  # the stream ends after one decision (limit=1)
    events = [block for block in body.decode().replace("\r\n", "\n").split("\n\n") if "data:" in block]
    assert [e.partition("event: ")[2].split("\n")[0] for e in events] == ["ready", "decision.executed"], body[:500]
    DOC[path]["GET"].validate_response(resp)  # every event against the document's schema


# ---- the fuzzer ----------------------------------------------------------------------------------------

# The email webhook also reads a raw MIME message; send generated text as it is.
schemathesis.serializer.alias("message/rfc822", "text/plain")
schema = schemathesis.openapi.from_dict(spec()).exclude(path=list(NOT_CALLED))
schema.config.update(parameters={"path.org": "acme"})  # the one org whose webhook secret the server has


@schema.auth(refresh_interval=None).apply_to(path_regex="^/api/agent/")
class ApiKey:
    """The API key as `Authorization: Bearer`, left out where schemathesis tests a request without it."""

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        return KEY.get("acme", PENDING)

    def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


EARLIEST, LATEST = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)


class Signed(requests.auth.AuthBase):
    """Signs the webhook body exactly as sent (requests has serialised it by now), wherever the case carries a
    signature header: a case that leaves the header out on purpose stays unsigned, and the checks' probes
    without credentials drop this `auth` altogether."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if HEADER in r.headers:
            body = r.body or b""
            r.headers[HEADER] = sign(SECRET, body.encode() if isinstance(body, str) else body, int(time.time()))
        return r


def _time(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None


PAGED = ("/api/agent/decisions", "/api/agent/events", "/api/agent/intakes", "/api/agent/actions",
         "/api/agent/notifications")
"""Listings paged by an opaque `cursor` (server/cursors.py, and the decisions' own)."""


def not_applicable(case: schemathesis.Case) -> list[Any]:
    """Checks whose premise does not hold for this case, each for a reason the document cannot express."""
    body = case.body if isinstance(case.body, dict) else {}
    query = case.query or {}
    if case.method == "POST" and case.path in ("/api/agent/config", "/api/agent/config/validate"):
        # The body carries YAML files: whether they are a valid ruleset or policy (structure, references) is
        # not something a JSON Schema of a string can say, and an invalid one answers 422 by design.
        return [positive_data_acceptance]
    if case.path == "/api/agent/simulate" and body.get("config") is not None:
        return [positive_data_acceptance]  # the same proposed configuration files
    if case.path.startswith("/api/webhooks/") and case.media_type != "application/json":
        # A raw email must be readable (a From, Subject or body): 422 if not. And it has no JSON types: a
        # generated "not a string" (71) goes out as the text 71, which is a string again.
        return [positive_data_acceptance, *([] if isinstance(case.body, str) else [negative_data_rejection])]
    if case.path in PAGED and "cursor" in query:
        return [positive_data_acceptance]  # an opaque token from a previous page; a made-up one answers 400
    headers = case.headers or {}
    if case.path == "/api/stream" and ("Last-Event-ID" in headers or "last_event_id" in query):
        return [positive_data_acceptance]  # an id this stream sent (opaque, per org); a made-up one answers 400
    if case.path in ("/api/agent/decisions", "/api/agent/analytics"):
        since, until = _time(query.get("since")), _time(query.get("until"))
        if any(t is not None and not EARLIEST <= t <= LATEST for t in (since, until)):
            return [positive_data_acceptance]  # a date-time format has no range: the description gives it
        if case.path == "/api/agent/analytics":
            until = until or datetime.now(UTC)
            if since is not None and since >= until:
                return [positive_data_acceptance]  # an empty window: 400, "since must be before until"
    return []


@schema.parametrize()
@settings(max_examples=int(os.environ.get("ASTRALIS_FUZZ_EXAMPLES", "20")), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_live_server_conforms(case: schemathesis.Case, live: Live) -> None:
    """Every default check: no 5xx; documented status codes, content types, headers and bodies; invalid data
    rejected and valid data accepted; authentication enforced; undocumented methods answer 405 with Allow."""
    live.cases.append(f"{case.method} {case.path}")
    if (case.headers or {}).get("Authorization") == f"Bearer {PENDING}":
        case.headers["Authorization"] = f"Bearer {live.key}"
    signed = {"auth": Signed()} if case.path.startswith("/api/webhooks/") else {}
    case.call_and_validate(base_url=live.url, excluded_checks=not_applicable(case), timeout=30, **signed)
