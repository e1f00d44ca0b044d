"""The API behind the dashboard's ruleset editor (issue 7): validation as you type with file and line, saving
with who changed what, the revision history with diffs, and one-click rollback."""

from __future__ import annotations

from server.app import REGISTRY
from tests.server.conftest import auth


async def test_validation_names_the_file_and_line_and_applies_nothing(make_client, config_dirs):
    client, key_for = await make_client()
    key = await key_for("acme")
    rulesets, _ = config_dirs
    text = (rulesets / "acme" / "intake.yaml").read_text()
    broken = text.replace("    then: {intent: BILLING_QUESTION, confidence: 0.85}",
                          "    then: {intent: BILLING_QUESTIONS, confidence: 0.85}", 1)
    line = broken.splitlines().index("    then: {intent: BILLING_QUESTIONS, confidence: 0.85}") + 1
    before = client.app[REGISTRY].get("acme").revision

    r = await client.post("/api/agent/config/validate", json={"files": {"intake.yaml": broken}}, headers=auth(key))
    assert r.status == 200
    body = await r.json()
    assert body["valid"] is False and body["revision"] is None
    [err] = body["errors"]
    assert err["file"] == "intake.yaml" and err["line"] == line and "BILLING_QUESTIONS" in err["message"]
    assert err["text"].startswith(f"intake.yaml:{line}: ")
    assert (rulesets / "acme" / "intake.yaml").read_text() == text  # nothing applied
    assert client.app[REGISTRY].get("acme").revision == before

    r = await client.post("/api/agent/config/validate", json={"files": {"intake.yaml": text}}, headers=auth(key))
    body = await r.json()
    assert body["valid"] is True and body["errors"] == [] and body["revision"] == before


async def test_saving_records_who_and_the_history_diffs_and_rollback_restores(make_client, config_dirs):
    client, key_for = await make_client()
    key = await key_for("acme", name="kim@acme")
    _, policies = config_dirs
    original = (policies / "acme.yaml").read_text()
    first = client.app[REGISTRY].get("acme").revision

    # the first save records the current files; the second changes the policy
    r = await client.post("/api/agent/config", json={"policy": original + "\n# a\n"}, headers=auth(key))
    assert r.status == 200
    r = await client.post("/api/agent/config", json={"policy": original + "\n# a\n# b\n"}, headers=auth(key))
    second = (await r.json())["revision"]

    r = await client.get("/api/agent/config/history", headers=auth(key))
    history = (await r.json())["history"]
    # the files active before the first change through the API are kept first, so that it can be rolled back
    assert [h["by"] for h in history] == ["kim@acme", "kim@acme", "files on disk"]
    assert history[2]["revision"] == first
    assert history[0]["revision"] == second and history[0]["active"]
    assert "+# b" in history[0]["diff"] and "b/policies/acme.yaml" in history[0]["diff"]
    target = history[1]["revision"]
    assert target != first

    r = await client.post("/api/agent/config/rollback", json={"revision": target}, headers=auth(key))
    assert r.status == 200 and (await r.json())["revision"] == target
    assert client.app[REGISTRY].get("acme").revision == target
    assert (policies / "acme.yaml").read_text() == original + "\n# a\n"
    r = await client.get("/api/agent/config/history", headers=auth(key))
    latest = (await r.json())["history"][0]
    assert latest["revision"] == target and latest["by"] == "kim@acme (rollback)" and "-# b" in latest["diff"]

    r = await client.post("/api/agent/config/rollback", json={"revision": "nope"}, headers=auth(key))
    assert r.status == 404
