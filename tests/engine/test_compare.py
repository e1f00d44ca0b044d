"""The comparison of two dry runs: per-event diffs, flips, aggregate changes, tokens and cost."""

from __future__ import annotations

import dataclasses
import json

import pytest

from engine.agent import Agent
from engine.compare import (
    CHARS_PER_TOKEN,
    ESTIMATED_OUTPUT_TOKENS,
    Side,
    action_key,
    changed_fields,
    compare,
    confidence_histogram,
    consults_llm,
    prompt_chars,
    stats,
)
from engine.config import DecisionType, LLMSettings, Price, Threshold
from engine.llm import LLMStage
from engine.models import Action, Decision, LLMTrace
from engine.ports import LLMReply, LLMRequest
from engine.simulator import simulate


def decision(event_id: str = "e1", **over) -> Decision:
    base = {"event_id": event_id, "org": "acme", "input": {"source": "EMAIL", "type": "email:received"},
            "intent": "SALES_INQUIRY", "priority": 3, "decision_type": "ASSIGN_PIPELINE", "confidence": 0.9,
            "decided_by": "rules", "reasoning": "r.", "status": "EXECUTED",
            "actions": [Action(type=DecisionType.ASSIGN_PIPELINE,
                               params={"pipeline": "sales-inquiries", "stage": "new", "assignee": "u-sam", "priority": 3})]}
    base.update(over)
    return Decision.model_validate(base)


def with_policy(compiled, policy):
    return dataclasses.replace(compiled, bundle=dataclasses.replace(compiled.bundle, policy=policy))


async def run(compiled, events):
    agent = Agent(lambda org: compiled if org == "acme" else None, LLMStage(None))
    return await simulate(agent, events)


def side(compiled, decisions, events) -> Side:
    by_id = {e.id: e for e in events}
    chars = {d.event_id: prompt_chars(compiled, by_id[d.event_id]) for d in decisions if consults_llm(d)}
    return Side(decisions, compiled.bundle.policy.llm, chars, compiled.revision)


# --------------------------------------------------------------------------- one decision

def test_action_key_keeps_what_the_action_does():
    a = Action(type=DecisionType.SEND_NOTIFICATION,
               params={"to": ["u-kim", "u-raj"], "template": "new_support_request", "priority": 3, "immediate": False})
    assert action_key(a) == "SEND_NOTIFICATION(to=u-kim,u-raj, template=new_support_request)"


def test_changed_fields_name_each_difference():
    a = decision()
    assert changed_fields(a, decision()) == []
    b = decision(status="REQUIRES_APPROVAL", priority=5, confidence=0.5)  # confidence alone is no flip
    assert changed_fields(a, b) == ["status", "priority"]
    c = decision(actions=[Action(type=DecisionType.ASSIGN_PIPELINE,
                                 params={"pipeline": "general-intake", "stage": "new", "assignee": "u-sam"})])
    assert changed_fields(a, c) == ["actions"]
    d = decision(intent="OTHER", decided_by="fallback", decision_type="ESCALATE")
    assert changed_fields(a, d) == ["intent", "decision_type", "decided_by"]


def test_runs_over_other_events_are_refused():
    with pytest.raises(ValueError, match="same events"):
        compare(Side([decision("a"), decision("b")]), Side([decision("b"), decision("a")]))


# --------------------------------------------------------------------------- figures of one run

def test_confidence_histogram_has_ten_bins_and_keeps_1_0_in_the_last():
    h = confidence_histogram([decision(confidence=c) for c in (0.0, 0.05, 0.1, 0.85, 0.9, 1.0)])
    assert list(h) == ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]
    assert h["0.0"] == 2 and h["0.1"] == 1 and h["0.8"] == 1 and h["0.9"] == 2 and sum(h.values()) == 6


def test_rates_and_percentiles():
    ds = [decision(f"e{i}", execution_ms=float(i)) for i in range(1, 101)]
    ds[0] = decision("e1", status="REQUIRES_APPROVAL", execution_ms=1.0)
    ds[1] = decision("e2", status="REJECTED", execution_ms=2.0, decided_by="fallback")
    s = stats(Side(ds))
    assert s["approval_rate"] == 0.01 and s["rejection_rate"] == 0.01 and s["llm_call_rate"] == 0.01
    assert s["auto_execute_rate"] == 0.98
    assert s["decision_ms"]["p50"] == 50.0 and s["decision_ms"]["p99"] == 99.0
    assert s["by_status"] == {"EXECUTED": 98, "REJECTED": 1, "REQUIRES_APPROVAL": 1}


def test_tokens_recorded_or_estimated_and_priced_per_model():
    settings = LLMSettings(provider="openai", model="gpt-4o-mini",
                           prices={"gpt-4o-mini": Price(input_per_million=0.15, output_per_million=0.6)})
    recorded = decision("r", decided_by="llm", llm=LLMTrace(provider="openai", model="gpt-4o-mini", prompt="p",
                                                             input_tokens=1000, output_tokens=100))
    unpriced = decision("u", decided_by="llm", llm=LLMTrace(provider="openai", model="gpt-9", prompt="p",
                                                            input_tokens=500, output_tokens=50))
    estimated = decision("x", decided_by="fallback")
    failed = decision("f", decided_by="fallback", llm=LLMTrace(provider="replay", model="gpt-4o-mini", prompt="p",
                                                              error="attempt 1: config: no recorded answer for event f"))
    s = stats(Side([recorded, unpriced, estimated, failed, decision("rules-only")], settings, {"x": 4001, "f": 400}))
    llm = s["llm"]
    assert llm["recorded_events"] == 2 and llm["estimated_events"] == 2
    assert llm["input_tokens"] == 1000 + 500 + 1001 + 100
    assert llm["output_tokens"] == 100 + 50 + 2 * ESTIMATED_OUTPUT_TOKENS
    expected = ((1000 + 1001 + 100) * 0.15 + (100 + 2 * ESTIMATED_OUTPUT_TOKENS) * 0.6) / 1e6
    assert llm["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert llm["unpriced_models"] == ["gpt-9"]
    assert llm["failures"] == [{"event_id": "f", "error": "attempt 1: config: no recorded answer for event f"}]
    assert 4001 // CHARS_PER_TOKEN + 1 == 1001


# --------------------------------------------------------------------------- real runs of the acme rules

async def test_identical_runs_do_not_flip(acme_rules, corpus):
    a, b = await run(acme_rules, corpus), await run(acme_rules, corpus)
    report = compare(side(acme_rules, b, corpus), side(acme_rules, a, corpus))
    assert report.changed_events == 0 and report.flips == []
    assert report.flip_matrix is not None
    assert all(set(cols) == {row} for row, cols in report.flip_matrix.items())
    assert report.changes is not None
    assert all(v["delta"] == 0 for k, v in report.changes.items() if k.endswith("_rate") or k.startswith("llm_"))


async def test_a_stricter_threshold_flips_status_only(acme_rules, corpus):
    policy = acme_rules.bundle.policy
    thresholds = dict(policy.thresholds)
    thresholds[DecisionType.ASSIGN_PIPELINE] = Threshold(auto_execute=0.85, require_approval=0.55)
    stricter = with_policy(acme_rules, policy.model_copy(update={"thresholds": thresholds}))
    before, after = await run(acme_rules, corpus), await run(stricter, corpus)
    report = compare(side(stricter, after, corpus), side(acme_rules, before, corpus))
    assert report.flips, "the corpus has ASSIGN_PIPELINE decisions between 0.80 and 0.85"
    for f in report.flips:
        assert f["changed"] == ["status"]
        assert f["baseline"]["status"] == "EXECUTED" and f["candidate"]["status"] == "REQUIRES_APPROVAL"
        assert f["candidate"]["decision_type"] == "ASSIGN_PIPELINE" and 0.8 <= f["candidate"]["confidence"] < 0.85
    assert report.changes is not None
    status = report.changes["by_status"]
    assert status["REQUIRES_APPROVAL"]["delta"] == len(report.flips) == -status["EXECUTED"]["delta"]
    assert report.status_matrix is not None and report.status_matrix["EXECUTED"]["REQUIRES_APPROVAL"] == len(report.flips)
    # deterministic apart from the fields it flags as volatile
    again = compare(side(stricter, await run(stricter, corpus), corpus), side(acme_rules, before, corpus)).to_dict()
    first = report.to_dict()
    for r in (first, again):
        assert r["volatile"] == ["baseline.stats.decision_ms", "candidate.stats.decision_ms"]
        for s in ("baseline", "candidate"):
            r[s]["stats"].pop("decision_ms")
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)


class Capture:
    """A provider that records the prompts it is sent and answers with a fixed classification."""

    name = "capture"

    def __init__(self) -> None:
        self.requests: list[LLMRequest] = []

    async def complete(self, request: LLMRequest) -> LLMReply:
        self.requests.append(request)
        return LLMReply("capture", request.model, '{"intent": "OTHER", "confidence": 0.9}', 10, 5)


async def test_prompt_estimate_is_the_prompt_the_llm_stage_sends(acme_rules, corpus):
    cap = Capture()
    agent = Agent(lambda org: acme_rules, LLMStage(cap))
    ambiguous = [e for e, d in zip(corpus, await run(acme_rules, corpus), strict=True) if d.decided_by != "rules"][:5]
    assert ambiguous
    for e in ambiguous:
        await agent.process(e, dry_run=True)
        req = cap.requests[-1]
        assert prompt_chars(acme_rules, e) == len(req.system) + len(req.user)
