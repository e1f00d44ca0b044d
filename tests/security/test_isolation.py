"""Issue 13, findings 6 and 7: configuration updates are all or nothing, and nothing an org can see (findings,
health, metrics, ids, cursors) tells it about another org or the host.

Each test reproduces the finding as the issue describes it and asserts the safe outcome.
"""

# ruff: noqa: F811  (the service fixtures are imported from tests/server/conftest.py, then named as arguments)
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from adapters.sqlite_store import SQLiteStore
from engine.registry import Registry
from server.app import REGISTRY, STORE
from server.config_sync import ConfigSync
from server.metrics import direct_loopback
from tests.server.conftest import (  # noqa: F401
    ROOT,
    auth,
    config_dirs,
    make_client,
    make_settings,
    operator,
    service_env,
)
from tests.server.test_api import HELD, SALES, ev

GOOD_RULES = """ruleset: extra
rules:
  - id: extra-pricing
    when: {text: {any: [quotation for a kiosk]}}
    then: {intent: SALES_INQUIRY, confidence: 0.9}
"""
LONG_NAME = "r" * 250 + ".yaml"
# What brightsmile's files hold and acme must never see: pipelines, user ids and addresses, its model.
BRIGHTSMILE_SECRETS = ("new-patients", "patient-care", "insurance-billing", "u-dr-chen", "brightsmile.example",
                       "claude-haiku", "DENTIST", "HYGIENIST")


def _leftovers(rulesets: Path, policies: Path) -> list[str]:
    """Anything an update may leave behind: staged folders, temporary or backup policy files."""
    staged = [str(p) for p in (rulesets / ".staging").glob("*")] if (rulesets / ".staging").exists() else []
    return staged + [p.name for p in policies.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- finding 6

async def test_finding_6_a_250_character_file_name_fails_the_whole_update_and_changes_nothing(
        make_client, config_dirs) -> None:
    client, key_for = await make_client()
    key = await key_for("acme")
    rulesets, policies = config_dirs
    before = client.app[REGISTRY].get("acme").revision
    files_before = sorted(p.name for p in (rulesets / "acme").iterdir())

    r = await client.post("/api/agent/config", json={"files": {"extra.yaml": GOOD_RULES, LONG_NAME: GOOD_RULES}},
                          headers=auth(key))
    assert r.status == 422, await r.text()
    error = (await r.json())["error"]
    assert error["code"] == "invalid" and "'rrrrrrrr" in error["message"] and "255 characters" in error["message"]
    assert not (rulesets / "acme" / "extra.yaml").exists()  # the good file was not written
    assert sorted(p.name for p in (rulesets / "acme").iterdir()) == files_before
    assert client.app[REGISTRY].get("acme").revision == before  # nor loaded
    assert await client.app[STORE].agent_config_history("acme", limit=10) == []  # nor recorded
    assert _leftovers(rulesets, policies) == []

    # the same update without the bad name goes through, as one revision, recorded, and keeps the org's cases
    r = await client.post("/api/agent/config", json={"files": {"extra.yaml": GOOD_RULES}}, headers=auth(key))
    assert r.status == 200, await r.text()
    revision = (await r.json())["revision"]
    assert (rulesets / "acme" / "extra.yaml").read_text() == GOOD_RULES
    assert client.app[REGISTRY].get("acme").revision == revision != before
    assert (rulesets / "acme" / "tests").is_dir()
    assert [h["revision"] for h in await client.app[STORE].agent_config_history("acme", limit=10)] == [revision,
                                                                                                       before]
    assert _leftovers(rulesets, policies) == []


@pytest.mark.parametrize(("name", "why"), [
    ("sub/rules.yaml", "not a path"), ("..\\rules.yaml", "not a path"), ("a..yaml", "no '..'"),
    (".hidden.yaml", "no hidden files"), ("rules.txt", "ends in .yaml or .yml"), ("rules\n.yaml", "letters, digits"),
])
async def test_finding_6_each_bad_file_name_is_a_4xx_naming_the_file(make_client, config_dirs, name, why) -> None:
    client, key_for = await make_client()
    key = await key_for("acme")
    rulesets, _ = config_dirs
    before = sorted(p.name for p in (rulesets / "acme").iterdir())
    for path in ("/api/agent/config", "/api/agent/config/validate"):
        r = await client.post(path, json={"files": {"extra.yaml": GOOD_RULES, name: GOOD_RULES}}, headers=auth(key))
        assert r.status == 422, (path, await r.text())
        error = (await r.json())["error"]
        assert repr(name) in error["message"] and why in error["message"], error
    assert sorted(p.name for p in (rulesets / "acme").iterdir()) == before


async def test_finding_6_too_many_or_too_large_files_are_refused_before_anything_is_written(
        make_client, config_dirs) -> None:
    client, key_for = await make_client()
    key = await key_for("acme")
    rulesets, _ = config_dirs
    before = sorted(p.name for p in (rulesets / "acme").iterdir())
    many = {f"r{i}.yaml": GOOD_RULES.replace("extra", f"extra{i}") for i in range(60)}
    r = await client.post("/api/agent/config", json={"files": many}, headers=auth(key))
    assert r.status == 422 and "at most 50" in (await r.json())["error"]["message"]
    big = GOOD_RULES + "#" * (300 * 1024) + "\n"
    r = await client.post("/api/agent/config", json={"files": {"big.yaml": big}}, headers=auth(key))
    assert r.status in (413, 422)  # the body limit (1 MiB) or the file limit (256 KiB), never written
    if r.status == 422:
        assert "'big.yaml'" in (await r.json())["error"]["message"]
    assert sorted(p.name for p in (rulesets / "acme").iterdir()) == before


async def test_finding_6_config_sync_never_writes_a_stored_configuration_that_does_not_load(tmp_path) -> None:
    rulesets, policies = tmp_path / "rulesets", tmp_path / "policies"
    shutil.copytree(ROOT / "rulesets", rulesets)
    shutil.copytree(ROOT / "policies", policies)
    registry = Registry(rulesets, policies)
    registry.load_all()
    revision = registry.get("acme").revision
    files = {p.name: p.read_text() for p in (rulesets / "acme").glob("*.yaml")}
    on_disk = dict(files)
    files["extra.yaml"] = GOOD_RULES  # loads
    files["intake.yaml"] = files["intake.yaml"].replace("intent: BILLING_QUESTION", "intent: NOPE", 1)  # does not
    store = await SQLiteStore.open(tmp_path / "astralis.db")
    try:
        await store.save_agent_config("acme", "from-another-machine", files)
        sync = ConfigSync("redis://127.0.0.1:1/0", registry, store)  # no Redis needed to catch up
        await sync.catch_up()
        await sync.close()
    finally:
        await store.close()
    assert {p.name: p.read_text() for p in (rulesets / "acme").glob("*.yaml")} == on_disk
    assert registry.get("acme").revision == revision
    assert _leftovers(rulesets, policies) == []


# --------------------------------------------------------------------------- finding 7: extends and findings

def _policy(extends: str) -> str:
    return (ROOT / "policies" / "acme.yaml").read_text().replace(
        "extends: default", f"extends: {extends}")


@pytest.mark.parametrize("target", ["brightsmile", "../policies/brightsmile", "/etc/passwd", "/etc/hostname"])
async def test_finding_7_extends_never_reads_another_org_or_a_host_path(make_client, config_dirs, target) -> None:
    client, key_for = await make_client()
    key = await key_for("acme")
    rulesets, policies = config_dirs
    before = client.app[REGISTRY].get("acme").revision
    unchanged = (policies / "acme.yaml").read_text()  # the copy's own (acme's org model off: tests/server/conftest.py)
    answers = []
    r = await client.post("/api/agent/config/validate", json={"policy": _policy(target)}, headers=auth(key))
    body = await r.json()
    assert r.status == 200 and not body["valid"]
    [finding] = body["errors"]
    assert finding["file"] == "policies/acme.yaml" and finding["code"] in ("unknown_policy", "invalid_value")
    answers.append(json.dumps(body))
    for path, payload in (("/api/agent/config", {"policy": _policy(target)}),
                          ("/api/agent/simulate", {"events": [ev(SALES)], "config": {"policy": _policy(target)}})):
        r = await client.post(path, json=payload, headers=auth(key))
        assert r.status == 422, await r.text()
        text = await r.text()
        assert json.loads(text)["error"]["message"].startswith("policies/acme.yaml:")
        answers.append(text)
    for text in answers:
        assert not any(s in text for s in BRIGHTSMILE_SECRETS), text
        assert str(rulesets.parent) not in text and "passwd.yaml" not in text and "hostname.yaml" not in text
        assert "root:" not in text
    assert client.app[REGISTRY].get("acme").revision == before
    assert (policies / "acme.yaml").read_text() == unchanged


async def test_finding_7_another_orgs_policy_answers_exactly_as_a_missing_one(make_client) -> None:
    client, key_for = await make_client()
    key = await key_for("acme")

    async def message(target: str) -> str:
        r = await client.post("/api/agent/config/validate", json={"policy": _policy(target)}, headers=auth(key))
        [finding] = (await r.json())["errors"]
        return str(finding["text"]).replace(target, "<name>")

    assert await message("brightsmile") == await message("no-such-policy")


async def test_finding_7_findings_shown_to_an_org_name_files_relative_to_it(make_client, config_dirs) -> None:
    client, key_for = await make_client()
    key = await key_for("acme")
    rulesets, _ = config_dirs
    root = str(rulesets.parent)
    broken = {"files": {"dupe.yaml": GOOD_RULES, "dupe2.yaml": GOOD_RULES, "bad.yaml": "ruleset: [x\n"}}
    r = await client.post("/api/agent/config/validate", json=broken, headers=auth(key))
    body = await r.json()
    assert {e["file"] for e in body["errors"]} == {"bad.yaml", "dupe2.yaml"}
    assert root not in json.dumps(body)
    r = await client.post("/api/agent/config", json=broken, headers=auth(key))
    error = (await r.json())["error"]
    assert {e.split(":")[0] for e in error["details"]} == {"rulesets/acme/bad.yaml", "rulesets/acme/dupe2.yaml"}, error["details"]
    assert root not in json.dumps(error)
    # one finding names the other file: as the org knows it too
    assert any("rulesets/acme/dupe.yaml" in e for e in error["details"]), error["details"]
    r = await client.post("/api/agent/simulate", json={"events": [ev(SALES)], "config": broken}, headers=auth(key))
    assert r.status == 422 and root not in await r.text()

    # a broken file on disk: GET /api/agent/config shows the kept errors relative too
    (rulesets / "acme" / "spam.yaml").write_text("ruleset: [spam\n")
    client.app[REGISTRY].reload("acme")
    described = await (await client.get("/api/agent/config", headers=auth(key))).json()
    assert described["errors"] and all(e.startswith("rulesets/acme/spam.yaml:") for e in described["errors"])


# --------------------------------------------------------------------------- finding 7: healthz and metrics

async def test_finding_7_public_healthz_says_only_ok_or_not(make_client) -> None:
    client, key_for = await make_client()
    key = await key_for("acme")
    await client.post("/api/agent/process?mode=sync", json=SALES, headers=auth(key))
    r = await client.get("/healthz")
    assert r.status == 200 and await r.json() == {"status": "ok"}
    revision = client.app[REGISTRY].get("acme").revision
    text = await r.text()
    assert "acme" not in text and "brightsmile" not in text and revision not in text
    detailed = await client.get("/healthz", headers=operator())
    body = await detailed.json()
    assert body["checks"]["rulesets"]["orgs"]["acme"]["revision"] == revision
    assert (await client.get("/healthz", headers=auth(key))).status == 401  # an org's key is not the operator's


async def test_finding_7_metrics_need_the_operator_token(make_client) -> None:
    client, key_for = await make_client()
    key = await key_for("acme")
    await client.post("/api/agent/process?mode=sync", json=SALES, headers=auth(key))
    for headers in ({}, auth(key), {"Authorization": "Bearer wrong"}):
        r = await client.get("/metrics", headers=headers)
        assert r.status == 401 and "acme" not in await r.text(), headers
    r = await client.get("/metrics", headers=operator())
    assert r.status == 200 and 'org="acme"' in await r.text()


async def test_finding_7_without_a_token_metrics_answer_only_this_host(make_client) -> None:
    client, _ = await make_client(operator_token="")
    assert (await client.get("/metrics")).status == 200  # the test client connects over loopback
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):  # a proxy on this host forwards someone else
        r = await client.get("/metrics", headers={header: "203.0.113.7"})
        assert r.status == 403 and "ASTRALIS_OPERATOR_TOKEN" in (await r.json())["error"]["message"]
    assert await (await client.get("/healthz")).json() == {"status": "ok"}  # no details without a token


@pytest.mark.parametrize(("peer", "expected"), [("127.0.0.1", True), ("::1", True), ("10.0.0.5", False),
                                                ("203.0.113.7", False), ("", False)])
def test_finding_7_only_a_loopback_peer_is_this_host(peer, expected) -> None:
    class Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return (peer, 5555) if name == "peername" and peer else default

    request = make_mocked_request("GET", "/metrics", transport=Transport())
    assert direct_loopback(request) is expected


# --------------------------------------------------------------------------- finding 7: ids and cursors

async def test_finding_7_stream_ids_count_nothing_of_other_orgs(make_client) -> None:
    from tests.server.test_stream import read_events

    client, key_for = await make_client()
    acme, bright = await key_for("acme"), await key_for("brightsmile")
    stream = await client.get("/api/stream", headers=auth(acme))
    ready = (await read_events(stream, 1))[0]
    assert not str(json.loads(ready["data"])["after"]).isdigit()
    await client.post("/api/agent/process?mode=sync", json=ev(SALES, id="a1"), headers=auth(acme))
    brightsmile_event = {"source": "API", "type": "email:received",
                         "data": {"from": "pat@mail.example", "subject": "Cleaning", "text": "I'd like a cleaning"}}
    for i in range(5):  # another org's activity between two of acme's events
        await client.post("/api/agent/process?mode=sync", json={**brightsmile_event, "id": f"b{i}"},
                          headers=auth(bright))
    await client.post("/api/agent/process?mode=sync", json=ev(SALES, id="a2"), headers=auth(acme))
    first, second = await read_events(stream, 2)
    stream.close()
    for e in (first, second):
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", e["id"]), e["id"]  # opaque: no sequence to subtract
    # resuming works with acme's own id; brightsmile cannot use it (it names a position of acme's stream)
    again = await client.get("/api/stream", headers={**auth(acme), "Last-Event-ID": first["id"]})
    assert again.status == 200
    await read_events(again, 1)
    (resumed,) = await read_events(again, 1)
    assert resumed["id"] == second["id"] and json.loads(resumed["data"])["decision"]["event_id"] == "a2"
    again.close()
    r = await client.get("/api/stream", headers={**auth(bright), "Last-Event-ID": first["id"]})
    assert r.status == 400
    r = await client.get("/api/stream", headers={**auth(acme), "Last-Event-ID": "3"})  # a guessed sequence
    assert r.status == 400


async def test_finding_7_paging_cursors_are_opaque_and_bound_to_the_org_and_listing(make_client) -> None:
    client, key_for = await make_client()
    acme, bright = await key_for("acme"), await key_for("brightsmile")
    for i in range(3):
        await client.post("/api/agent/process?mode=sync", json=ev(SALES, id=f"s{i}"), headers=auth(acme))
    await client.post("/api/agent/process?mode=sync", json=ev(HELD, id="h0"), headers=auth(acme))
    for path in ("/api/agent/events", "/api/agent/intakes", "/api/agent/actions"):
        seen: list[Any] = []
        cursor = None
        while True:
            page = await (await client.get(f"{path}?limit=1" + (f"&cursor={cursor}" if cursor else ""),
                                           headers=auth(acme))).json()
            listing = next(v for k, v in page.items() if isinstance(v, list))
            seen += listing
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cursor) and not cursor.isdigit(), cursor
            r = await client.get(f"{path}?limit=1&cursor={cursor}", headers=auth(bright))
            assert r.status == 400, path  # brightsmile cannot use acme's cursor
            other = "/api/agent/events" if path != "/api/agent/events" else "/api/agent/intakes"
            assert (await client.get(f"{other}?limit=1&cursor={cursor}", headers=auth(acme))).status == 400
        assert len(seen) >= 2, path
        keys = [json.dumps(x, sort_keys=True) for x in seen]
        assert len(set(keys)) == len(keys), path  # paging still works: every row once
    for guess in ("1", "100", "0" * 22):
        assert (await client.get(f"/api/agent/events?cursor={guess}", headers=auth(acme))).status == 400


async def test_finding_7_decision_ids_are_random_not_sequential(make_client) -> None:
    client, key_for = await make_client()
    key = await key_for("acme")
    ids = []
    for i in range(3):
        r = await client.post("/api/agent/process?mode=sync", json=ev(SALES, id=f"r{i}"), headers=auth(key))
        ids.append((await r.json())["id"])
    assert all(re.fullmatch(r"dec_[0-9a-f]{20}", i) for i in ids) and len(set(ids)) == 3


# --------------------------------------------------------------------------- host paths in decisions

def _host_paths(text: str, *folders: Path) -> list[str]:
    """Every absolute path of the host in `text`: the given folders, and any `/...yaml` path."""
    found = [str(f) for f in folders if str(f) in text]
    return found + re.findall(r"(?<![\w.:/])/[^\s\"':]+\.ya?ml", text)


async def test_decision_traces_name_rule_files_as_the_org_knows_them_never_a_host_path(
        make_client, config_dirs) -> None:
    # `astralis serve --rulesets /abs/path`: each matched rule's `at` used to be the file as the registry was
    # given it, so GET /api/agent/decisions/{id} showed the operator's absolute path to the org.
    rulesets, policies = config_dirs
    assert rulesets.is_absolute() and policies.is_absolute()
    client, key_for = await make_client()
    key = await key_for("acme")
    r = await client.post("/api/agent/process?mode=sync", json=ev(SALES, id="paths-1"), headers=auth(key))
    assert r.status == 200, await r.text()
    decision_id = (await r.json())["id"]
    r = await client.get(f"/api/agent/decisions/{decision_id}", headers=auth(key))
    text = await r.text()
    at = [m["at"] for m in (await r.json())["trace"]["rules"]]
    assert at and all(re.fullmatch(r"rulesets/acme/[a-z]+\.yaml:\d+", a) for a in at), at
    assert _host_paths(text, rulesets.parent, ROOT) == []
    listing = await (await client.get("/api/agent/decisions", headers=auth(key))).text()
    assert decision_id in listing and _host_paths(listing, rulesets.parent, ROOT) == []

    # simulate, against the active configuration and against a proposed one (compiled in a scratch folder)
    proposed = {"files": {"extra.yaml": GOOD_RULES}}
    for body in ({"events": [ev(SALES)]}, {"events": [ev(SALES, data={"text": "a quotation for a kiosk"})],
                                           "config": proposed}):
        r = await client.post("/api/agent/simulate", json=body, headers=auth(key))
        assert r.status == 200, await r.text()
        text = await r.text()
        at = [m["at"] for d in (await r.json())["decisions"] for m in d["trace"]["rules"]]
        assert at and all(re.fullmatch(r"rulesets/acme/[a-z]+\.yaml:\d+", a) for a in at), (body, at)
        assert _host_paths(text, rulesets.parent, ROOT) == [], body
    assert "rulesets/acme/extra.yaml:3" in text  # the proposed file, by the name the org gave it
