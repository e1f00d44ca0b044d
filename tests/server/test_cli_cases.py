"""`astralis test` (with --update, --fail-on-empty, --format json) and `astralis explain`, run as the
command runs: subprocesses whose exit status is checked, on copies of rulesets/ and policies/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working folder with copies of rulesets/ and policies/."""
    shutil.copytree(ROOT / "rulesets", tmp_path / "rulesets")
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    return tmp_path


def astralis(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=50)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_update_then_test_passes_and_an_edited_rule_fails_with_a_diff(work):
    run = astralis(work, "test", "--update")
    assert run.returncode == 0, run.stderr
    assert "recorded 18 cases in rulesets/acme/tests/cases.yaml" in run.stderr
    assert astralis(work, "test").returncode == 0
    edit(work / "rulesets/acme/intake.yaml", "any: [pricing, price, prices,", "any: [price, prices,")
    run = astralis(work, "test", "acme")
    assert run.returncode == 1
    out = run.stdout
    assert "FAIL acme rulesets/acme/tests/cases.yaml:14 pricing question goes to sales, assigned by load" in out
    assert "decided_by     expected rules\n                      got      model" in out  # the org model still places it
    assert "because: rule intake/sales no longer matches: text: none of its 81 `any` keywords occur" in out
    assert out.rstrip().endswith("17 passed, 1 failed")


def test_json_format(work):
    edit(work / "rulesets/acme/intake.yaml", "any: [pricing, price, prices,", "any: [price, prices,")
    run = astralis(work, "test", "acme", "--format", "json")
    assert run.returncode == 1
    results = json.loads(run.stdout)
    assert len(results) == 18
    assert set(results[0]) == {"org", "file", "line", "name", "ok", "problems", "observed", "diff", "rules"}
    failed = [r for r in results if not r["ok"]]
    assert [r["line"] for r in failed] == [14]
    assert failed[0]["observed"]["decided_by"] == "model"  # the org model covers for the lost keyword
    assert failed[0]["rules"][0].startswith("rule intake/sales no longer matches: text:")


def test_fail_on_empty_applies_per_org(work):
    shutil.rmtree(work / "rulesets/brightsmile/tests")
    assert astralis(work, "test").returncode == 0  # the suite as a whole is not empty
    run = astralis(work, "test", "--fail-on-empty")
    assert run.returncode == 1
    assert "no cases for brightsmile: --fail-on-empty" in run.stderr
    assert astralis(work, "test", "brightsmile").returncode == 1  # an empty suite fails anyway


def test_explain_text_json_and_errors(work):
    event = {"source": "EMAIL", "type": "email:received", "occurred_at": "2026-12-09T14:56:08-05:00",
             "data": {"subject": "annual billing",
                      "text": "hi, can we switch to annual billing for the hosting? would that give us a discount"}}
    (work / "e.json").write_text(json.dumps(event), encoding="utf-8")
    run = astralis(work, "explain", "--org", "acme", "e.json")
    assert run.returncode == 0, run.stderr
    assert "MATCH intake/billing" in run.stdout and "llm: would be asked: yes" in run.stdout
    run = astralis(work, "explain", "--org", "acme", "e.json", "--format", "json")
    doc = json.loads(run.stdout)
    assert doc["matched"] == ["intake/billing", "intake/sales"] and doc["llm"]["ambiguity"] == "conflict"
    (work / "bad.json").write_text(json.dumps({**event, "source": "FAX"}), encoding="utf-8")
    run = astralis(work, "explain", "--org", "acme", "bad.json")
    assert run.returncode == 1 and run.stderr.startswith("bad.json:1: invalid_event: source:")
