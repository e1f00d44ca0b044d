"""Resolve: one candidate from the matched rules, or "ambiguous" with the reason in plain words
(engine/resolve.py)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import Ambiguity, DecisionType, Intent, Rule
from engine.loader import RuleRef
from engine.resolve import MAX_CONFIDENCE, SUPPORT_BONUS, resolve

POLICY = Ambiguity(consult_below=0.7, margin=0.1)


def ref(rid: str, intent: str | None = None, confidence: float = 0.8, salience: int = 0,
        ruleset: str = "intake", **then: Any) -> RuleRef:
    body = {"confidence": confidence, **({"intent": intent} if intent else {}), **then}
    return RuleRef(ruleset, Rule.model_validate({"id": rid, "salience": salience, "when": {}, "then": body}),
                   f"/virtual/{ruleset}.yaml", 1)


def test_no_match() -> None:
    r = resolve([], POLICY)
    assert (r.candidate, r.ambiguous, r.matched, r.scores) == (None, "no_match", (), {})
    assert r.reason == "no rule matched this event"


def test_matching_rules_that_name_no_intent_are_no_match() -> None:
    r = resolve([ref("vip", priority=4), ref("rush", urgent=True)], POLICY)
    assert r.candidate is None and r.ambiguous == "no_match"
    assert r.reason == "the matching rules (intake/vip, intake/rush) name no intent"
    # what they did say is kept
    assert (r.priority, r.urgent, r.matched) == (4, True, ("intake/vip", "intake/rush"))


def test_clear_winner() -> None:
    r = resolve([ref("billing", "BILLING_QUESTION", 0.85), ref("generic", "SUPPORT_REQUEST", 0.55)], POLICY)
    assert r.ambiguous is None
    assert r.candidate is not None
    assert (r.candidate.intent, r.candidate.confidence, r.candidate.rules) == (
        Intent.BILLING_QUESTION, 0.85, ("intake/billing",))
    assert r.scores == {"BILLING_QUESTION": 0.85, "SUPPORT_REQUEST": 0.55}
    assert r.reason == "rule intake/billing identified BILLING_QUESTION (0.85); SUPPORT_REQUEST scored 0.55"


def test_a_rule_asking_for_the_llm() -> None:
    r = resolve([ref("billing", "BILLING_QUESTION", 0.95), ref("legal", "OTHER", 0.5, consult_llm=True)], POLICY)
    assert r.ambiguous == "rule_requests_llm"
    assert r.candidate is not None and r.candidate.intent == Intent.BILLING_QUESTION  # still the best guess
    assert r.reason == "rule intake/legal asks for the LLM to decide"


def test_conflict_within_the_margin() -> None:
    r = resolve([ref("billing", "BILLING_QUESTION", 0.85), ref("broken", "SUPPORT_REQUEST", 0.8)], POLICY)
    assert r.ambiguous == "conflict"
    assert r.candidate is not None and r.candidate.intent == Intent.BILLING_QUESTION
    assert r.reason == ("rules disagree: BILLING_QUESTION (0.85, intake/billing) vs SUPPORT_REQUEST "
                        "(0.80, intake/broken), within the margin of 0.10")


@pytest.mark.parametrize(("second", "ambiguous"), [(0.75, "conflict"), (0.74, None)])
def test_the_margin_is_inclusive(second: float, ambiguous: str | None) -> None:
    r = resolve([ref("a", "SALES_INQUIRY", 0.85), ref("b", "PROJECT", second)], POLICY)
    assert r.ambiguous == ambiguous


def test_equal_scores_prefer_the_higher_salience_but_stay_a_conflict() -> None:
    r = resolve([ref("spam", "SPAM", 0.8, salience=50), ref("sales", "SALES_INQUIRY", 0.8)], POLICY)
    assert r.ambiguous == "conflict"
    assert r.candidate is not None and r.candidate.intent == Intent.SPAM


def test_low_confidence() -> None:
    r = resolve([ref("generic", "SUPPORT_REQUEST", 0.55)], POLICY)
    assert r.ambiguous == "low_confidence"
    assert r.candidate is not None and r.candidate.confidence == 0.55
    assert r.reason == "only weak evidence for SUPPORT_REQUEST: intake/generic gives 0.55, under 0.70"


def test_agreeing_rules_add_a_bonus() -> None:
    r = resolve([ref("form", "SUPPORT_REQUEST", 0.6), ref("generic", "SUPPORT_REQUEST", 0.55),
                 ref("words", "SUPPORT_REQUEST", 0.5)], POLICY)
    # best 0.6 + 2 agreeing rules × 0.05 = 0.7: no longer under consult_below
    assert r.scores == {"SUPPORT_REQUEST": pytest.approx(0.6 + 2 * SUPPORT_BONUS)}
    assert r.ambiguous is None
    assert r.candidate is not None and r.candidate.rules == ("intake/form", "intake/generic", "intake/words")
    assert r.reason.startswith("rule intake/form, intake/generic, intake/words identified SUPPORT_REQUEST (0.70)")


def test_agreement_bonus_can_break_a_conflict() -> None:
    two = resolve([ref("a", "BILLING_QUESTION", 0.8), ref("b", "SUPPORT_REQUEST", 0.8)], POLICY)
    four = resolve([ref("a", "BILLING_QUESTION", 0.8), ref("a2", "BILLING_QUESTION", 0.75),
                    ref("a3", "BILLING_QUESTION", 0.7), ref("a4", "BILLING_QUESTION", 0.6),
                    ref("b", "SUPPORT_REQUEST", 0.8)], POLICY)
    assert two.ambiguous == "conflict"
    assert four.ambiguous is None and four.scores["BILLING_QUESTION"] == pytest.approx(0.95)


def test_the_bonus_is_capped() -> None:
    r = resolve([ref(f"r{i}", "SPAM", 0.9) for i in range(10)], POLICY)
    assert r.scores == {"SPAM": MAX_CONFIDENCE}
    sure = resolve([ref("a", "SPAM", 1.0), ref("b", "SPAM", 0.9)], POLICY)
    assert sure.scores == {"SPAM": 1.0}  # a certain rule is not lowered to the cap


def test_candidate_carries_the_winning_rules_conclusions() -> None:
    r = resolve([
        ref("spam-hi", "SPAM", 0.95, salience=50, decision_type="NO_ACTION", priority=1, set={"why": "bounce"}),
        ref("spam-lo", "SPAM", 0.85, set={"why": "footer", "list": "yes"}),
        ref("billing", "BILLING_QUESTION", 0.6, priority=4, urgent=True),
    ], POLICY)
    c = r.candidate
    assert c is not None and r.ambiguous is None
    assert (c.intent, c.decision_type, c.priority, c.urgent) == (Intent.SPAM, DecisionType.NO_ACTION, 1, False)
    assert c.fields == {"why": "bounce", "list": "yes"}  # the better rule's values win
    # the losing intent's priority and urgency are still reported for the event as a whole
    assert (r.priority, r.urgent) == (4, True)


def test_a_rule_asking_for_the_llm_without_an_intent() -> None:
    r = resolve([ref("legal", consult_llm=True)], POLICY)
    assert r.ambiguous == "rule_requests_llm"
    assert r.reason == "rule intake/legal asks for the LLM to decide"
