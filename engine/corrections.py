"""Corrections: a person says what a decision should have been (intent, and optionally priority, pipeline and
assignee). On a held decision it is approved with the change; on an executed one the correction is recorded and
compensating actions are planned (the intake moved and reassigned, the new assignee notified). Either way it is a
label the org model learns from. Pure: the store applies the result in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.config import DecisionType, Intent
from engine.loader import OrgBundle
from engine.models import Action, Decision
from engine.plan import make_plan
from engine.ports import StaticState
from engine.text import extract

HELD = ("REQUIRES_APPROVAL", "PENDING")
FIX_IDX = 1000  # compensating actions of correction n take outbox positions n*1000 + i: after the original ones

Outcome = Literal["approved", "corrected", "repeat", "conflict"]


class Correction(BaseModel):
    """The body of `POST /api/agent/decisions/{id}/correct`."""

    model_config = ConfigDict(extra="forbid")

    intent: Intent
    priority: int | None = Field(default=None, ge=1, le=5)
    pipeline: str | None = Field(default=None, min_length=1, max_length=64)
    assignee: str | None = Field(default=None, min_length=1, max_length=64)
    by: str | None = Field(default=None, max_length=200, description="Who corrects (default: the API key's name).")
    note: str | None = Field(default=None, max_length=2000)

    def change(self) -> dict[str, Any]:
        """What the correction sets (for comparing a repeat)."""
        return {"intent": str(self.intent), "priority": self.priority, "pipeline": self.pipeline,
                "assignee": self.assignee}


def problems(bundle: OrgBundle, c: Correction) -> list[str]:
    """Why the correction cannot apply to this org (a pipeline or user it does not have), if anything."""
    out = []
    if c.pipeline is not None and bundle.org.pipeline(c.pipeline) is None:
        out.append(f"pipeline '{c.pipeline}' is not defined in org '{bundle.org.org}'")
    if c.assignee is not None and bundle.org.user(c.assignee) is None:
        out.append(f"assignee '{c.assignee}' is not a user of org '{bundle.org.org}'")
    return out


@dataclass
class Result:
    """What to write: the decision, the actions to put in the outbox, the label, and how it went."""

    decision: Decision
    outcome: Outcome
    actions: list[Action] = field(default_factory=list)
    label: dict[str, Any] | None = None


def label_of(decision: Decision, kind: str, by: str, note: str | None, at: str, *, intent: str,
             priority: int | None, pipeline: str | None = None, assignee: str | None = None) -> dict[str, Any]:
    """A label (an approval or a correction) with who and when, and what had been decided (for per-rule
    precision: the rules that matched, with their intents)."""
    n = len(decision.trace.get("corrections") or []) if kind == "correction" else 0
    return {
        "id": f"{decision.id}:{kind}" + (f":{n}" if kind == "correction" else ""), "org": decision.org,
        "decision_id": decision.id, "event_id": decision.event_id, "kind": kind, "intent": intent,
        "priority": priority, "pipeline": pipeline, "assignee": assignee, "by": by, "note": note, "at": at,
        "decided": {"intent": str(decision.intent), "priority": decision.priority, "decided_by": decision.decided_by,
                    "confidence": decision.confidence, "model_version": decision.model_version,
                    "rules": [{"rule": r["rule"], "intent": r.get("intent")} for r in decision.trace.get("rules", [])]},
    }


def plan_for(bundle: OrgBundle, decision: Decision, envelope: dict[str, Any], c: Correction, state: Any,
             now: datetime) -> list[Action]:
    """The actions of the decision as corrected: the routing of the corrected intent (or the named pipeline),
    the named assignee in place of the one chosen by load, and that assignee notified."""
    priority = c.priority or (1 if c.intent == Intent.SPAM else decision.priority)
    text = extract(envelope.get("data") or {})
    state = state if state is not None else StaticState()
    plan = make_plan(bundle, c.intent, None, priority, envelope, text, state, state, now, pipeline_override=c.pipeline)
    actions = [Action(type=a.type, params=dict(a.params)) for a in plan.actions]
    if c.assignee is not None:
        template = "new_intake"
        route = bundle.policy.routing.get(c.intent)
        if route is not None:
            template = route.notify.template
        for a in actions:
            if a.type == DecisionType.ASSIGN_PIPELINE:
                a.params["assignee"] = c.assignee
        notices = [a for a in actions if a.type == DecisionType.SEND_NOTIFICATION]
        if notices:
            to = list(notices[0].params.get("to") or [])
            notices[0].params["to"] = [*to, c.assignee] if c.assignee not in to else to
        else:
            actions.append(Action(type=DecisionType.SEND_NOTIFICATION,
                                  params={"to": [c.assignee], "template": template, "priority": priority}))
    return actions


def apply(decision: Decision, c: Correction, by: str, at: datetime, *, planned: list[Action],
          intake: str | None, bundle: OrgBundle) -> Result:
    """The correction applied to a stored decision. `planned`: `plan_for`'s actions; `intake`: the id of the
    intake the decision's ASSIGN_PIPELINE made (None when it made none)."""
    stamp = at.isoformat()
    review = decision.trace.get("review") or {}
    fixes = list(decision.trace.get("corrections") or [])
    last = fixes[-1]["change"] if fixes else (review.get("corrected") or {}).get("change")
    if last == c.change():
        return Result(decision, "repeat")
    priority = c.priority or (1 if c.intent == Intent.SPAM else decision.priority)
    if decision.status in HELD or (decision.status == "REJECTED" and not review):
        # approved with the change: the corrected plan replaces the held one
        before = {"intent": str(decision.intent), "priority": decision.priority,
                  "decision_type": str(decision.decision_type),
                  "actions": [a.model_dump(mode="json") for a in decision.actions]}
        decision.trace["review"] = {"verdict": "approve", "by": by, "note": c.note, "at": stamp,
                                    "previous_status": decision.status,
                                    "corrected": {"change": c.change(), "from": before}}
        decision.intent = c.intent
        decision.priority = priority
        decision.actions = [Action(type=a.type, params=a.params, idempotency_key=f"{decision.id}:{i}")
                            for i, a in enumerate(planned)]
        decision.decision_type = planned[0].type if len(planned) == 1 else (
            DecisionType.ASSIGN_PIPELINE if any(a.type == DecisionType.ASSIGN_PIPELINE for a in planned)
            else decision.decision_type)
        decision.status = "EXECUTED"
        decision.executed_at = at
        label = label_of(decision, "correction", by, c.note, stamp, intent=str(c.intent), priority=priority,
                         pipeline=c.pipeline, assignee=c.assignee)
        label["decided"] = {**label["decided"], "intent": before["intent"], "priority": before["priority"]}
        return Result(decision, "approved", list(decision.actions), label)
    if decision.status != "EXECUTED":
        return Result(decision, "conflict")
    # executed: record the correction; compensate through the outbox
    n = len(fixes) + 1
    actions = _compensation(decision, planned, intake, bundle)
    keyed = [Action(type=a.type, params=a.params, idempotency_key=f"{decision.id}:fix{n}:{i}")
             for i, a in enumerate(actions)]
    label = label_of(decision, "correction", by, c.note, stamp, intent=str(c.intent), priority=priority,
                     pipeline=c.pipeline, assignee=c.assignee)
    label["id"] = f"{decision.id}:correction:{n}"
    fixes.append({"n": n, "change": c.change(), "by": by, "note": c.note, "at": stamp,
                  "actions": [a.model_dump(mode="json") for a in keyed]})
    decision.trace["corrections"] = fixes
    return Result(decision, "corrected", keyed, label)


def _compensation(decision: Decision, planned: list[Action], intake: str | None, bundle: OrgBundle) -> list[Action]:
    """The corrected plan as changes to what was done: its ASSIGN_PIPELINE re-routes the intake already made
    (or, when the corrected intent has no pipeline, closes it); notifications and bookings as planned."""
    out: list[Action] = []
    moved = False
    for a in planned:
        if a.type == DecisionType.ASSIGN_PIPELINE and intake is not None:
            out.append(Action(type=a.type, params={**a.params, "intake": intake}))
            moved = True
        elif a.type != DecisionType.ESCALATE:
            out.append(a)
    if intake is not None and not moved:
        original = next((a for a in decision.actions if a.type == DecisionType.ASSIGN_PIPELINE), None)
        pipeline = bundle.org.pipeline(str(original.params.get("pipeline"))) if original is not None else None
        if pipeline is not None:  # nothing to do for the corrected intent: the intake is closed
            out.insert(0, Action(type=DecisionType.ASSIGN_PIPELINE, params={
                "pipeline": pipeline.id, "stage": pipeline.closed_stages[0], "assignee": None,
                "priority": original.params.get("priority") if original else None, "intake": intake}))
    return out
