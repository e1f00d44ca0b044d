"""Where the org model sits in the agent (step 3b): it decides ambiguous events it is sure of, sends strong
disagreements with the rules to the LLM, stands in before the fallback keywords when the LLM is off or down, and
changes nothing when `learning.enabled` is false."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from engine.agent import Agent
from engine.config import Intent
from engine.learning import Prediction
from engine.llm import LLMStage
from engine.ports import LLMReply, LLMRequest, StaticState
from engine.registry import build
from engine.simulator import read_events

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "cases" / "acme"


@pytest.fixture(scope="module")
def acme():
    compiled, findings = build(ROOT / "rulesets" / "acme", ROOT / "policies")
    assert compiled is not None, [str(f) for f in findings]
    assert compiled.bundle.model is not None, "acme ships a trained model (astralis train --org acme)"
    return compiled


class FixedModel:
    """A model that always answers the same (to steer the agent's branches)."""

    version = "m-fixed0000000"

    def __init__(self, intent: Intent, confidence: float) -> None:
        self.intent, self.confidence = intent, confidence
        self.asked = 0

    def predict(self, envelope, text) -> Prediction:
        self.asked += 1
        return Prediction(self.intent, self.confidence, Intent.OTHER, round(1 - self.confidence, 4),
                          np.zeros(0, dtype=np.int64), np.zeros(0), self.version, words=20)

    def terms(self, pred, top: int = 4) -> list[str]:
        return ["refund", "charged"]


def configured(compiled, *, model=None, **learning):
    """The compiled rules with the policy's learning block changed (and the model swapped when given)."""
    bundle = compiled.bundle
    policy = bundle.policy.model_copy(update={"learning": bundle.policy.learning.model_copy(update=learning)})
    bundle = dataclasses.replace(bundle, policy=policy, model=model if model is not None else bundle.model)
    return dataclasses.replace(compiled, bundle=bundle)


class Answering:
    """An LLM provider that answers with one classification and counts the calls."""

    name = "fake"

    def __init__(self, intent: str, confidence: float = 0.9) -> None:
        self.reply = json.dumps({"intent": intent, "confidence": confidence, "reasoning": "stand-in"})
        self.calls: list[LLMRequest] = []

    async def complete(self, request: LLMRequest) -> LLMReply:
        self.calls.append(request)
        return LLMReply("fake", request.model, self.reply, 10, 5, 1.0)


def email(text: str, subject: str = ""):
    from engine.models import Event

    return Event(org="acme", source="EMAIL", type="email:received", occurred_at="2026-12-03T10:00:00-05:00",
                 data={"from": "x@example.com", "subject": subject, "text": text})


NO_MATCH = "Hello there, following up on what we discussed with your colleague last week."
CLEAR_SALES = "Could you send a quote for a five-page site?"


async def run(compiled, event, llm=None):
    return await Agent(lambda o: compiled, LLMStage(llm)).process(event, dry_run=True)


async def test_learning_off_gives_exactly_the_decisions_without_a_model(acme):
    """Every corpus event: with `learning.enabled: false` the decision is the one an org without any model gets
    (ids, clocks and the revision aside)."""
    events, _ = read_events(CASES / "corpus.jsonl", "acme")
    state = StaticState.from_json(json.loads((CASES / "state.json").read_text()))
    off = configured(acme, enabled=False)
    none = dataclasses.replace(off, bundle=dataclasses.replace(off.bundle, model=None))

    def stable(d):
        out = d.model_dump(mode="json")
        for k in ("id", "created_at", "execution_ms", "executed_at"):
            out.pop(k)
        out["trace"].pop("timings_ms")
        for a in out["actions"]:
            a["idempotency_key"] = a["idempotency_key"].replace(d.id, "")
        return out

    for e in events:
        a = await Agent(lambda o: off, LLMStage(None), state=state).process(e, dry_run=True)
        b = await Agent(lambda o: none, LLMStage(None), state=state).process(e, dry_run=True)
        assert stable(a) == stable(b)
        assert "model_version" not in a.model_dump() and "model" not in a.trace


async def test_model_decides_an_ambiguous_event_it_is_sure_of(acme):
    model = FixedModel(Intent.BILLING_QUESTION, 0.93)
    d = await run(configured(acme, enabled=True, model=model), email(NO_MATCH))
    assert d.decided_by == "model" and d.intent == Intent.BILLING_QUESTION and d.confidence == 0.93
    assert d.model_version == "m-fixed0000000" and d.trace["model"]["role"] == "decided"
    assert "Org model m-fixed0000000: BILLING_QUESTION (0.93" in d.reasoning and "'refund', 'charged'" in d.reasoning
    assert d.status == "EXECUTED"  # the gate treats it like any decision: 0.93 ≥ ASSIGN_PIPELINE's 0.8


async def test_model_below_the_bar_leaves_the_event_to_the_llm(acme):
    llm = Answering("SALES_INQUIRY")
    d = await run(configured(acme, enabled=True, min_confidence=0.9, model=FixedModel(Intent.PROJECT, 0.7)),
                  email(NO_MATCH), llm)
    assert d.decided_by == "llm" and d.intent == Intent.SALES_INQUIRY and len(llm.calls) == 1
    assert d.trace["model"]["role"].startswith("below the bar")


async def test_strong_disagreement_with_the_rules_asks_the_llm(acme):
    llm = Answering("SPAM", 0.95)
    d = await run(configured(acme, enabled=True, disagree=0.9, model=FixedModel(Intent.SPAM, 0.96)),
                  email(CLEAR_SALES), llm)
    assert len(llm.calls) == 1 and d.decided_by == "llm" and d.intent == Intent.SPAM
    assert "strongly disagrees" in d.reasoning and d.trace["model"]["role"] == "disagrees: LLM asked"
    mild = await run(configured(acme, enabled=True, disagree=0.99, model=FixedModel(Intent.SPAM, 0.96)),
                     email(CLEAR_SALES), llm)
    assert mild.decided_by == "rules" and mild.intent == Intent.SALES_INQUIRY and len(llm.calls) == 1


async def test_disagreement_without_an_llm_keeps_the_rules(acme):
    d = await run(configured(acme, enabled=True, disagree=0.9, model=FixedModel(Intent.SPAM, 0.99)),
                  email(CLEAR_SALES))
    assert d.decided_by == "rules" and d.intent == Intent.SALES_INQUIRY
    assert "the rules' decision stands" in d.reasoning


async def test_llm_off_the_model_comes_before_the_fallback_keywords(acme):
    text = "Hello, a question about the invoice and also the project, following up."
    middling = configured(acme, enabled=True, min_confidence=0.9, fallback_confidence=0.5,
                          model=FixedModel(Intent.PARTNERSHIP, 0.6))
    d = await run(middling, email(text))
    assert d.decided_by == "model" and d.intent == Intent.PARTNERSHIP and d.trace["model"]["role"] == \
        "decided: LLM unavailable"
    assert d.reasoning.count("LLM unavailable") >= 1 and d.status == "REQUIRES_APPROVAL"  # 0.6 < auto 0.8
    weak = configured(acme, enabled=True, min_confidence=0.9, fallback_confidence=0.7,
                      model=FixedModel(Intent.PARTNERSHIP, 0.6))
    d = await run(weak, email(text))
    assert d.decided_by == "fallback" and d.trace["model"]["role"].startswith("below the bar")


async def test_the_shipped_model_decides_held_out_mail(acme):
    """The real acme model on a held-out event the rules cannot place (dev2 is never trained on)."""
    on = configured(acme, enabled=True)
    events, _ = read_events(CASES / "dev2.jsonl", "acme")
    decided = [await run(on, e) for e in events[:40]]
    by_model = [d for d in decided if d.decided_by == "model"]
    assert by_model, "some held-out events are decided by the model"
    for d in by_model:
        assert d.model_version == acme.bundle.model.version and d.trace["model"]["terms"]
        assert d.confidence >= on.bundle.policy.learning.fallback_confidence


async def test_too_few_words_are_never_decided_by_the_model(acme):
    d = await run(configured(acme, enabled=True), email("call me", "hi"))
    assert d.decided_by == "fallback" and d.trace["model"]["role"] == "not used: 3 words, under 4"


async def test_replaying_a_model_decision_reproduces_it(acme):
    on = configured(acme, enabled=True)
    events, _ = read_events(CASES / "dev2.jsonl", "acme")
    for e in events[:40]:
        first = await run(on, e)
        if first.decided_by == "model":
            again = await run(on, e)
            assert (again.intent, again.confidence, again.reasoning, again.model_version) == \
                (first.intent, first.confidence, first.reasoning, first.model_version)
            return
    pytest.fail("no model decision among the first 40 dev2 events")
