"""The OpenAPI document: every registered route is documented (and nothing else), and a live `astralis serve`
answers schemathesis-generated requests (valid and invalid) exactly as the document says."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from schemathesis.specs.openapi.checks import positive_data_acceptance

from server.app import Settings, create_app
from server.openapi import spec
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
    undocumented = {(m, p) for m, p in registered if m != "HEAD"} - documented
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


def test_document_is_well_formed() -> None:
    doc = spec()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    for name, schema in schemas.items():
        Draft202012Validator.check_schema(schema)
        assert "$defs" not in schema, f"{name}: $defs should be hoisted into components.schemas"
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        kind, name = ref.removeprefix("#/components/").split("/")
        assert name in doc["components"][kind], f"dangling $ref {ref}"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], f"{method} {path} documents no response"
            for status, resp in op["responses"].items():
                if "$ref" not in resp and status != "204":
                    assert resp.get("content"), f"{method} {path} {status}: no content type"
            if op["security"]:
                assert "401" in op["responses"], f"{method} {path}: authenticated but 401 undocumented"
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    assert f"{{{p['name']}}}" in path


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


# ---- a live server, fuzzed --------------------------------------------------------------------------------

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


# The email webhook also reads a raw MIME message; send generated text as it is.
schemathesis.serializer.alias("message/rfc822", "text/plain")
schema = schemathesis.openapi.from_dict(spec()).exclude(path=list(NOT_CALLED))
KEY: dict[str, str] = {}
"""The live server's API key, once the `live` fixture has made it."""
PENDING = "pending-live-server-key"
"""Stands for the key in the coverage-phase cases, which schemathesis builds at collection, before the server."""


@schema.auth(refresh_interval=None).apply_to(path_regex="^/api/agent/")
class ApiKey:
    """The API key as `Authorization: Bearer`, left out where schemathesis tests a request without it."""

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        return KEY.get("acme", PENDING)

    def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def _time(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None


def not_applicable(case: schemathesis.Case) -> list[Any]:
    """Checks whose premise does not hold for this case, each for a reason the document cannot express."""
    body = case.body if isinstance(case.body, dict) else {}
    if case.method == "POST" and case.path == "/api/agent/config":
        # The body carries YAML files: whether they are a valid ruleset or policy (structure, references) is
        # not something a JSON Schema of a string can say, and an invalid one answers 422 by design.
        return [positive_data_acceptance]
    if case.path == "/api/agent/simulate" and body.get("config") is not None:
        return [positive_data_acceptance]  # the same proposed configuration files
    if case.path == "/api/agent/analytics":
        since, until = _time((case.query or {}).get("since")), _time((case.query or {}).get("until"))
        if since and until and since >= until:
            return [positive_data_acceptance]  # an empty window: 400, "since must be before until"
    return []


@schema.parametrize()
@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_live_server_conforms(case: schemathesis.Case, live: Live) -> None:
    """Every default check: no 5xx; documented status codes, content types, headers and bodies; invalid data
    rejected and valid data accepted; authentication enforced; undocumented methods answer 405 with Allow."""
    live.cases.append(f"{case.method} {case.path}")
    if (case.headers or {}).get("Authorization") == f"Bearer {PENDING}":
        case.headers["Authorization"] = f"Bearer {live.key}"
    case.call_and_validate(base_url=live.url, excluded_checks=not_applicable(case), timeout=30)
