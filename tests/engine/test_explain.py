"""`engine.explain`: every rule's verdict with the condition it failed on, agreeing with the engine."""

from __future__ import annotations

import json

from engine.explain import explain, render, rule_checks
from engine.models import Event
from engine.registry import build
from engine.rules import CompiledRules


def _compiled(org_copy) -> CompiledRules:
    compiled, findings = build(org_copy.org_dir(), org_copy.policies)
    assert compiled is not None, [str(f) for f in findings]
    return compiled


def _event(corpus, event_id: str) -> Event:
    return next(e for e in corpus if e.id == event_id)


async def test_verdicts_agree_with_the_engine_on_the_whole_corpus(acme_rules, corpus):
    from engine.agent import Agent
    from engine.llm import LLMStage

    agent = Agent(lambda o: acme_rules, LLMStage(None))
    for e in corpus:
        decision = await agent.process(e, dry_run=True)
        matched = [c.rule for c in rule_checks(acme_rules, e) if c.matched]
        assert sorted(matched) == sorted(decision.matched_rules), e.id


async def test_a_matched_sales_email(acme_rules, corpus):
    x = await explain(acme_rules, _event(corpus, "acme-c-098"))
    assert [r.rule for r in x.matched] == ["intake/sales"]
    assert x.llm["would_ask"] is False
    assert x.decision.decided_by == "rules" and str(x.decision.intent) == "SALES_INQUIRY"
    assert x.gate["outcome"] == "auto_execute" and x.gate["auto_execute"] == 0.8
    billing = x.check("intake/billing")
    assert billing is not None and billing.failed is not None
    assert billing.failed["condition"] == "text" and billing.passed == 1
    booking = x.check("bookings/booking-form")
    assert booking is not None and booking.failed == {
        "condition": "type", "expected": ["booking:created"], "seen": "email:received",
        "detail": "type is 'email:received', not booking:created"}
    text = render(x)
    assert "MATCH intake/sales" in text and "llm: would be asked: no" in text
    assert "instructions removed before matching: 1" in text  # the hidden HTML comment
    assert "gate: auto_execute -> EXECUTED" in text


async def test_an_unmatched_email_shows_the_nearest_rules_failing_conditions(acme_rules, corpus):
    x = await explain(acme_rules, _event(corpus, "acme-c-064"))
    assert x.matched == []
    assert x.decision.trace["resolution"]["ambiguous"] == "no_match"
    near = x.nearest()
    assert near and all(r.passed == 1 and r.total == 2 for r in near)
    assert all(r.why for r in near)
    assert x.llm["would_ask"] is True and x.llm["called"] is False
    assert "nearest misses:" in render(x)
    assert x.gate["outcome"] == "reject"


async def test_an_ambiguous_email_says_the_llm_would_be_asked_and_why(acme_rules, corpus):
    x = await explain(acme_rules, _event(corpus, "acme-c-020"))
    assert {r.rule for r in x.matched} == {"intake/billing", "intake/sales"}
    assert x.llm["would_ask"] is True and x.llm["ambiguity"] == "conflict"
    assert "within the margin of 0.10" in x.llm["why"]
    text = render(x)
    assert "resolution: conflict: rules disagree: BILLING_QUESTION (0.85, intake/billing) vs SALES_INQUIRY" in text
    assert "llm: would be asked: yes (openai gpt-4o-mini)" in text
    out = x.to_json()
    json.dumps(out)
    assert out["decision"]["decided_by"] == "fallback" and out["resolution"]["ambiguous"] == "conflict"


async def test_text_and_field_failures_name_keywords_and_values(org_copy):
    org_copy.replace("rulesets/acme/intake.yaml", "any: [pricing, price, prices,",
                     "all: [budget]\n        none: [unsubscribe]\n        any: [pricing, price, prices,")
    compiled = _compiled(org_copy)
    e = Event(org="acme", source="EMAIL", type="email:received",
              data={"subject": "pricing", "text": "No budget yet. Please send your pricing. Unsubscribe here"})
    sales = next(c for c in rule_checks(compiled, e) if c.rule == "intake/sales")
    assert sales.failed is not None and sales.failed["excluded"] == ["unsubscribe"]
    e2 = e.model_copy(update={"data": {"subject": "pricing", "text": "We have no budget yet."}})
    sales = next(c for c in rule_checks(compiled, e2) if c.rule == "intake/sales")
    assert sales.failed is not None
    assert sales.failed["missing"] == ["budget"] and sales.failed["negated"] == ["budget"]
    form = Event(org="acme", source="WEBHOOK", type="form:submitted", data={"form": "contact", "category": "Support"})
    billing = next(c for c in rule_checks(compiled, form) if c.rule == "intake/billing-form-category")
    assert billing.failed is not None and billing.failed["seen"] == "Support"
    assert billing.why == "field data.category equals 'billing': the event has 'Support'"
