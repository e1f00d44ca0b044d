"""Gate: thresholds per decision type, capabilities, LLM approval requests and rate limits
(engine/gate.py)."""

from __future__ import annotations

import pytest

from engine.config import Capabilities, DecisionType, Policy, RateLimits, Threshold
from engine.gate import RateLimiter, gate
from engine.loader import OrgBundle
from engine.models import Action

ASSIGN = Action(type=DecisionType.ASSIGN_PIPELINE, params={"pipeline": "sales-inquiries", "assignee": "u-sam"})
NOTIFY = Action(type=DecisionType.SEND_NOTIFICATION, params={"to": ["u-sam"], "template": "new_sales_inquiry"})
ESCALATION = Action(type=DecisionType.ESCALATE, params={"address": "ops@acme.example", "reason": "low confidence"})


@pytest.fixture
def policy(acme_bundle: OrgBundle) -> Policy:
    """acme: ASSIGN_PIPELINE auto-executes at ≥ 0.8, needs approval at ≥ 0.55, else is rejected."""
    p = acme_bundle.policy
    assert p.threshold(DecisionType.ASSIGN_PIPELINE) == Threshold(auto_execute=0.8, require_approval=0.55)
    return p


def without(policy: Policy, **caps: bool) -> Policy:
    return policy.model_copy(update={"capabilities": Capabilities(**caps)})


# --------------------------------------------------------------------------- threshold bands

@pytest.mark.parametrize(("confidence", "status", "outcome"), [
    (0.95, "EXECUTED", "auto_execute"),
    (0.8, "EXECUTED", "auto_execute"),  # the threshold itself auto-executes
    (0.79, "REQUIRES_APPROVAL", "requires_approval"),
    (0.55, "REQUIRES_APPROVAL", "requires_approval"),
    (0.54, "REJECTED", "reject"),
    (0.0, "REJECTED", "reject"),
])
def test_threshold_bands(policy: Policy, confidence: float, status: str, outcome: str) -> None:
    g = gate(policy, DecisionType.ASSIGN_PIPELINE, confidence, [ASSIGN, NOTIFY], escalation=ESCALATION)
    assert (g.status, g.outcome) == (status, outcome)
    if status != "REJECTED":
        assert g.actions == [ASSIGN, NOTIFY] and g.blocked == []


def test_reasons_name_the_numbers(policy: Policy) -> None:
    assert gate(policy, DecisionType.ASSIGN_PIPELINE, 0.9, [ASSIGN]).reason == (
        "confidence 0.90 ≥ auto-execute 0.80 for ASSIGN_PIPELINE")
    assert gate(policy, DecisionType.ASSIGN_PIPELINE, 0.6, [ASSIGN]).reason == (
        "confidence 0.60 is between require-approval 0.55 and auto-execute 0.80 for ASSIGN_PIPELINE")
    assert gate(policy, DecisionType.ASSIGN_PIPELINE, 0.3, [ASSIGN]).reason == (
        "confidence 0.30 < require-approval 0.55 for ASSIGN_PIPELINE; rejected and escalated")


def test_each_decision_type_uses_its_own_thresholds(policy: Policy) -> None:
    # CREATE_EVENT needs 0.9; a type without its own entry uses `default` (0.85); ESCALATE always runs
    assert gate(policy, DecisionType.CREATE_EVENT, 0.85, []).status == "REQUIRES_APPROVAL"
    assert gate(policy, DecisionType.ASSIGN_PIPELINE, 0.85, []).status == "EXECUTED"
    assert gate(policy, DecisionType.SEND_NOTIFICATION, 0.84, []).status == "REQUIRES_APPROVAL"
    assert gate(policy, DecisionType.SEND_NOTIFICATION, 0.85, []).status == "EXECUTED"
    assert gate(policy, DecisionType.ESCALATE, 0.0, [ESCALATION]).status == "EXECUTED"


def test_rejected_replaces_the_actions_with_the_escalation(policy: Policy) -> None:
    g = gate(policy, DecisionType.ASSIGN_PIPELINE, 0.3, [ASSIGN, NOTIFY], escalation=ESCALATION)
    assert g.status == "REJECTED"
    assert g.actions == [ESCALATION]
    # what was planned is recorded, with why it did not run
    assert [(b["action"]["type"], b["reason"]) for b in g.blocked] == [  # type: ignore[index]
        ("ASSIGN_PIPELINE", "decision rejected: confidence too low"),
        ("SEND_NOTIFICATION", "decision rejected: confidence too low")]


def test_rejected_without_the_escalate_capability_runs_nothing(policy: Policy) -> None:
    g = gate(without(policy, escalate=False), DecisionType.ASSIGN_PIPELINE, 0.3, [ASSIGN], escalation=ESCALATION)
    assert g.status == "REJECTED" and g.actions == []


# --------------------------------------------------------------------------- capabilities

@pytest.mark.parametrize(("capability", "action_type"), [
    ("assign_pipelines", DecisionType.ASSIGN_PIPELINE),
    ("create_events", DecisionType.CREATE_EVENT),
    ("create_events", DecisionType.UPDATE_EVENT),
    ("create_events", DecisionType.CANCEL_EVENT),
    ("send_notifications", DecisionType.SEND_NOTIFICATION),
    ("trigger_automations", DecisionType.TRIGGER_AUTOMATION),
    ("escalate", DecisionType.ESCALATE),
])
def test_a_disabled_capability_blocks_its_action_type(policy: Policy, capability: str,
                                                      action_type: DecisionType) -> None:
    blocked_action = Action(type=action_type, params={"x": 1})
    other = NOTIFY if action_type != DecisionType.SEND_NOTIFICATION else ASSIGN
    g = gate(without(policy, **{capability: False}), DecisionType.ASSIGN_PIPELINE, 0.95, [blocked_action, other])
    assert g.status == "EXECUTED"
    assert g.actions == [other]
    assert g.blocked == [{"action": blocked_action.model_dump(mode="json"),
                          "reason": f"capability {capability} is disabled"}]


def test_every_action_blocked_needs_a_person(policy: Policy) -> None:
    g = gate(without(policy, assign_pipelines=False, send_notifications=False), DecisionType.ASSIGN_PIPELINE, 0.95,
             [ASSIGN, NOTIFY])
    assert (g.status, g.outcome) == ("REQUIRES_APPROVAL", "requires_approval")
    assert g.actions == [] and len(g.blocked) == 2
    assert g.reason == "every planned action is blocked by a disabled capability; a person must act"


def test_no_actions_at_all_is_not_blocked(policy: Policy) -> None:
    assert gate(policy, DecisionType.NO_ACTION, 0.9, []).status == "EXECUTED"


# --------------------------------------------------------------------------- the LLM asking for approval

@pytest.mark.parametrize(("confidence", "status"), [
    (0.95, "REQUIRES_APPROVAL"),  # narrowed
    (0.6, "REQUIRES_APPROVAL"),  # unchanged
    (0.3, "REJECTED"),  # never widened
])
def test_llm_requires_approval_only_narrows(policy: Policy, confidence: float, status: str) -> None:
    g = gate(policy, DecisionType.ASSIGN_PIPELINE, confidence, [ASSIGN], llm_wants_approval=True,
             escalation=ESCALATION)
    assert g.status == status
    if confidence == 0.95:
        assert g.reason == ("confidence 0.95 clears auto-execute 0.80, but the LLM asked for human approval")
        assert g.actions == [ASSIGN]


# --------------------------------------------------------------------------- rate limits

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_per_minute() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    limits = RateLimits(per_minute=3, per_hour=100)
    assert [limiter.check("acme", limits) for _ in range(3)] == [None, None, None]
    assert limiter.check("acme", limits) == "rate limit of 3 decisions per minute reached"
    clock.now += 59.9
    assert limiter.check("acme", limits) is not None
    clock.now += 0.1  # the first three are a minute old now
    assert limiter.check("acme", limits) is None


def test_rate_limit_per_hour() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    limits = RateLimits(per_minute=100, per_hour=3)
    for _ in range(3):
        assert limiter.check("acme", limits) is None
        clock.now += 600
    assert limiter.check("acme", limits) == "rate limit of 3 decisions per hour reached"
    clock.now = 1000.0 + 3600  # the first one is an hour old
    assert limiter.check("acme", limits) is None
    assert limiter.check("acme", limits) == "rate limit of 3 decisions per hour reached"


def test_rate_limits_are_per_org_and_held_decisions_do_not_count() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    limits = RateLimits(per_minute=1, per_hour=100)
    assert limiter.check("acme", limits) is None
    assert limiter.check("beta", limits) is None  # another org has its own count
    for _ in range(5):
        assert limiter.check("acme", limits) is not None
    clock.now += 60
    assert limiter.check("acme", limits) is None  # the refused ones were not counted


def test_rate_limited_decisions_are_pending_never_dropped(policy: Policy) -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    limits = RateLimits(per_minute=1, per_hour=100)
    first = gate(policy, DecisionType.ASSIGN_PIPELINE, 0.95, [ASSIGN], rate_limited=limiter.check("acme", limits))
    second = gate(policy, DecisionType.ASSIGN_PIPELINE, 0.95, [ASSIGN], rate_limited=limiter.check("acme", limits))
    assert first.status == "EXECUTED"
    assert (second.status, second.outcome) == ("PENDING", "rate_limited")
    assert second.reason == "held: rate limit of 1 decisions per minute reached"
    assert second.actions == [ASSIGN]  # kept, to run once released
    low = gate(policy, DecisionType.ASSIGN_PIPELINE, 0.1, [ASSIGN], rate_limited="over", escalation=ESCALATION)
    assert low.status == "PENDING"
