"""The `astralis` command: validate, schema, simulate (without side effects), test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from server.cli import main, schema_texts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A copy of the repository's rulesets, policies and acme cases, as the current directory."""
    for d in ("rulesets", "policies"):
        shutil.copytree(ROOT / d, tmp_path / d)
    shutil.copytree(ROOT / "tests" / "cases" / "acme", tmp_path / "cases")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_validate_ok(workdir, capsys):
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    assert "ok   acme" in out and "ok   brightsmile" in out


def test_validate_reports_path_line_code(workdir, capsys):
    intake = workdir / "rulesets" / "acme" / "intake.yaml"
    lines = intake.read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if "then: {intent: BILLING_QUESTION, confidence: 0.85}" in line)
    lines[n] = lines[n].replace("BILLING_QUESTION", "BILLING_QUESTIONS")
    intake.write_text("\n".join(lines) + "\n")
    assert main(["validate", "rulesets/acme"]) == 1
    err = capsys.readouterr().err
    assert f"rulesets/acme/intake.yaml:{n + 1}: schema:" in err
    assert "BILLING_QUESTIONS" in err


def test_schemas_are_up_to_date():
    """The committed schemas/ match the models; run `astralis schema` after changing engine/config.py."""
    for name, text in schema_texts().items():
        assert (ROOT / "schemas" / name).read_text() == text, f"schemas/{name} is stale: run `astralis schema`"


def test_schema_check_fails_when_stale(tmp_path):
    assert main(["schema", "--out", str(tmp_path)]) == 0
    assert main(["schema", "--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "policy.schema.json").write_text("{}")
    assert main(["schema", "--check", "--out", str(tmp_path)]) == 1


def test_yaml_files_point_editors_at_the_schemas():
    for path in [*ROOT.glob("rulesets/*/*.yaml"), *ROOT.glob("policies/*.yaml")]:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        target = (path.parent / first.split("$schema=")[1]).resolve()
        assert target.exists(), f"{path}: {target} does not exist"


def test_simulate_has_no_side_effects(workdir, capsys, standin, monkeypatch):
    """Neither files nor the LLM's absence change anything; with --llm live only the model is asked."""
    before = tree(workdir)
    assert main(["simulate", "--org", "acme", "--events", "cases/corpus.jsonl", "--state", "cases/state.json",
                 "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len((workdir / "cases" / "corpus.jsonl").read_text().splitlines())
    decisions = [json.loads(x) for x in lines]
    assert all(d["dry_run"] and d["executed_at"] is None for d in decisions)
    assert standin.requests == []
    for k, v in standin.env().items():
        monkeypatch.setenv(k, v)
    assert main(["simulate", "--org", "acme", "--events", "cases/corpus.jsonl", "--format", "json", "--llm", "live"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["llm_consulted_rate"] > 0 and len(standin.requests) > 0
    assert tree(workdir) == before
    assert not any(p.suffix in (".db", ".sqlite") for p in workdir.rglob("*"))


def test_simulate_rejects_bad_events_with_line_numbers(workdir, capsys):
    bad = workdir / "bad.jsonl"
    bad.write_text('{"org": "acme", "source": "EMAIL", "type": "email:received", "data": {}}\n'
                   "not json\n"
                   '{"org": "acme", "source": "FAX", "type": "email:received"}\n')
    assert main(["simulate", "--org", "acme", "--events", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl:2: invalid_event: not JSON" in err
    assert "bad.jsonl:3: invalid_event: source:" in err


def test_simulate_refuses_an_invalid_org(workdir, capsys):
    (workdir / "policies" / "acme.yaml").write_text("extends: default\nthresholds: {default: {auto_execute: 2}}\n")
    assert main(["simulate", "--org", "acme", "--events", "cases/corpus.jsonl"]) == 1
    assert "policies/acme.yaml" in capsys.readouterr().err


def test_org_cases_pass(workdir, capsys):
    assert main(["test"]) == 0
    assert " 0 failed" in capsys.readouterr().out


def test_empty_case_suite_fails(workdir, capsys):
    shutil.rmtree(workdir / "rulesets" / "brightsmile")
    for f in (workdir / "rulesets" / "acme" / "tests").glob("*"):
        f.unlink()
    assert main(["test", "acme"]) == 1
    assert "empty suite" in capsys.readouterr().err


def test_keys_create_list_revoke(workdir, capsys):
    import asyncio

    from adapters.sqlite_store import SQLiteStore
    from server.auth import hash_key

    db = str(workdir / "k.db")
    assert main(["keys", "create", "--org", "acme", "--name", "ops", "--db", db]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("ak_") and "shown once" in err
    key_id = key.split("_")[1]

    async def lookup() -> object:
        async with await SQLiteStore.open(db) as store:
            return await store.api_key_by_hash(hash_key(key))

    assert asyncio.run(lookup()) == {"id": key_id, "org": "acme", "name": "ops"}
    assert key not in (workdir / "k.db").read_bytes().decode("latin-1")
    assert main(["keys", "list", "--db", db]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and "active" in listed and key.split("_", 2)[2] not in listed
    assert main(["keys", "revoke", key_id, "--db", db]) == 0
    assert asyncio.run(lookup()) is None
    assert main(["keys", "revoke", key_id, "--db", db]) == 1
    assert main(["keys", "create", "--org", "nobody", "--db", db]) == 1
    assert "no such org" in capsys.readouterr().err


def test_event_loop_choice():
    import asyncio

    import uvloop

    from server.app import new_loop

    for kind, cls in (("auto", uvloop.Loop), ("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)):
        loop = new_loop(kind)
        try:
            assert isinstance(loop, cls), kind
            assert kind != "asyncio" or not isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
