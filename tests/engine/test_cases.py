"""Locked decision cases: running them, `--update` rewriting `expect:` in place, and naming the rule
that changed an outcome."""

from __future__ import annotations

from pathlib import Path

import yaml

from engine.cases import case_files, format_expect, run_cases, update_text
from engine.learning import with_learning
from engine.registry import build
from engine.rules import CompiledRules


def _compiled(org_copy) -> CompiledRules:
    """The copy compiled, its org model off: these tests pin down what rule edits alone change."""
    compiled, findings = build(org_copy.org_dir(), org_copy.policies)
    assert compiled is not None, [str(f) for f in findings]
    return with_learning(compiled, False)


async def _update(org_copy) -> None:
    files = case_files(org_copy.org_dir() / "tests")
    results = await run_cases(_compiled(org_copy), files, explain=False, record=True)
    for path, text in files:
        new, notes = update_text(text, [r for r in results if r.file == str(path)])
        assert not notes
        path.write_text(new, encoding="utf-8")


async def test_shipped_cases_pass(org_copy):
    results = await run_cases(_compiled(org_copy), case_files(org_copy.org_dir() / "tests"))
    assert len(results) >= 18
    assert [r.name for r in results if not r.ok] == []


async def test_update_then_run_passes_and_keeps_the_rest_of_the_file(org_copy):
    path = org_copy.org_dir() / "tests" / "cases.yaml"
    before = path.read_text(encoding="utf-8")
    await _update(org_copy)
    after = path.read_text(encoding="utf-8")
    assert after != before
    # Only `expect:` blocks changed: every other line (comments, events, state) is still there, in order.
    kept = [ln for ln in before.splitlines() if not ln.lstrip().startswith(("expect:", "decided_by", "matched_rules"))
            and not ln.startswith("             ")]
    rest = iter(after.splitlines())
    assert all(any(ln == other for other in rest) for ln in kept)
    results = await run_cases(_compiled(org_copy), case_files(path.parent))
    assert results and all(r.ok for r in results)
    first = yaml.safe_load(after)["cases"][0]["expect"]
    assert first == {"intent": "SALES_INQUIRY", "decision_type": "ASSIGN_PIPELINE", "priority": 3,
                     "status": "EXECUTED", "decided_by": "rules", "pipeline": "sales-inquiries", "assignee": "u-lee",
                     "matched_rules": ["intake/sales"]}


async def test_removing_a_keyword_names_the_rule_that_no_longer_matches(org_copy):
    await _update(org_copy)
    org_copy.replace("rulesets/acme/intake.yaml", "any: [pricing, price, prices,", "any: [price, prices,")
    results = await run_cases(_compiled(org_copy), case_files(org_copy.org_dir() / "tests"))
    failed = [r for r in results if not r.ok]
    assert [r.name for r in failed] == ["pricing question goes to sales, assigned by load"]
    r = failed[0]
    assert {d["field"] for d in r.diff} == {"status", "decided_by", "matched_rules"}
    assert {"field": "decided_by", "expected": "rules", "got": "fallback"} in r.diff
    assert r.rules == ["rule intake/sales no longer matches: text: none of its 81 `any` keywords occur (scope all)"]


async def test_a_new_exclusion_is_named_with_its_keyword(org_copy):
    await _update(org_copy)
    org_copy.replace("rulesets/acme/intake.yaml", "any: [pricing, price, prices,",
                     "none: [brochure]\n        any: [pricing, price, prices,")
    results = await run_cases(_compiled(org_copy), case_files(org_copy.org_dir() / "tests"))
    r = next(r for r in results if not r.ok)
    assert r.rules == ["rule intake/sales no longer matches: text.none: excluded by 'brochure' (scope all)"]


async def test_hand_written_expect_names_the_expected_intents_rule(org_copy):
    tests = org_copy.org_dir() / "tests"
    for f in tests.glob("*"):
        f.unlink()
    (tests / "mine.yaml").write_text(
        "# hand-written\ncases:\n  - name: rates question\n    event:\n      source: EMAIL\n"
        "      type: email:received\n      data: {subject: hello, text: \"What do you charge for a landing page?\"}\n"
        "    expect: {intent: SALES_INQUIRY}\n", encoding="utf-8")
    compiled = _compiled(org_copy)
    assert all(r.ok for r in await run_cases(compiled, case_files(tests)))
    org_copy.replace("rulesets/acme/intake.yaml", '"what do you charge", ', "")
    [r] = await run_cases(_compiled(org_copy), case_files(tests))
    assert r.diff == [{"field": "intent", "expected": "SALES_INQUIRY", "got": "BILLING_QUESTION"}]
    assert r.rules[0].startswith("rule intake/sales (SALES_INQUIRY) does not match: text: none of its")


async def test_a_case_without_expect_fails_until_recorded(org_copy):
    tests = org_copy.org_dir() / "tests"
    path = tests / "new.yaml"
    path.write_text("cases:\n  - name: spam\n    event:\n      source: EMAIL\n      type: email:received\n"
                    "      data:\n        subject: \"Automatic reply: away\"\n        text: |\n"
                    "          I am out of the office.\n\n  # a trailing comment\n", encoding="utf-8")
    compiled = _compiled(org_copy)
    [r] = await run_cases(compiled, [(path, path.read_text(encoding="utf-8"))])
    assert r.problems == ["no `expect` mapping (run `astralis test --update` to record one)"]
    results = await run_cases(compiled, [(path, path.read_text(encoding="utf-8"))], record=True)
    new, _ = update_text(path.read_text(encoding="utf-8"), results)
    assert new.endswith("  # a trailing comment\n")
    doc = yaml.safe_load(new)["cases"][0]
    assert doc["event"]["data"]["text"] == "I am out of the office.\n"
    assert doc["expect"]["intent"] == "SPAM"
    path.write_text(new, encoding="utf-8")
    [r] = await run_cases(compiled, [(path, new)])
    assert r.ok


def test_format_expect_quotes_what_yaml_would_misread():
    text = format_expect({"booking_start": "2026-12-08T14:00:00-05:00", "pipeline": "null", "priority": 3,
                          "matched_rules": ["a/b", "c/d"]}, column=4)
    assert yaml.safe_load(text) == {"expect": {"booking_start": "2026-12-08T14:00:00-05:00", "pipeline": "null",
                                               "priority": 3, "matched_rules": ["a/b", "c/d"]}}
    long = format_expect({f"k{i}": "x" * 20 for i in range(8)}, column=4)
    assert all(len(line) + 4 <= 110 for line in long.splitlines())
    assert long.splitlines()[1].startswith(" " * 13)


def test_a_broken_case_file_is_reported_with_its_line(tmp_path: Path, org_copy):
    import asyncio

    bad = tmp_path / "bad.yaml"
    bad.write_text("cases:\n  - name: x\n    event: [\n", encoding="utf-8")
    [r] = asyncio.run(run_cases(_compiled(org_copy), [(bad, bad.read_text())]))
    assert not r.ok and r.name == "(file)" and "yaml_syntax" in r.problems[0]
