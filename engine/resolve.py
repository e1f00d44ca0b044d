"""Resolve: from the matched rules, one candidate — or "ambiguous", with the reason in plain words."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.config import Ambiguity, DecisionType, Intent
from engine.loader import RuleRef

AmbiguityCode = Literal["no_match", "conflict", "low_confidence", "rule_requests_llm"]

SUPPORT_BONUS = 0.05  # each further rule agreeing on an intent adds this, up to MAX_CONFIDENCE
MAX_CONFIDENCE = 0.99


@dataclass(frozen=True)
class Candidate:
    """What the rules concluded: an intent with its confidence, and what the winning rules set."""

    intent: Intent
    confidence: float
    decision_type: DecisionType | None
    priority: int | None
    urgent: bool
    rules: tuple[str, ...]
    fields: dict[str, object] = field(default_factory=dict)
    pipeline: str | None = None


@dataclass(frozen=True)
class Resolution:
    """The rules stage's answer: a candidate, and whether the LLM must be consulted and why."""

    candidate: Candidate | None
    ambiguous: AmbiguityCode | None
    reason: str
    matched: tuple[str, ...]
    scores: dict[str, float]
    priority: int | None = None
    urgent: bool = False


def _score(refs: list[RuleRef]) -> float:
    best = max(r.rule.then.confidence for r in refs)
    return min(MAX_CONFIDENCE, round(best + SUPPORT_BONUS * (len(refs) - 1), 4)) if best < MAX_CONFIDENCE else best


def _names(refs: list[RuleRef]) -> str:
    return ", ".join(r.key for r in refs)


def resolve(matches: list[RuleRef], ambiguity: Ambiguity) -> Resolution:
    """Pick the intent with the best score (best rule's confidence, plus a bonus per agreeing rule).

    Ambiguous when no rule matched, when a rule asks for the LLM, when the runner-up intent is within
    the policy's margin of the best, or when the best score is under the policy's `consult_below`.
    """
    matched = tuple(m.key for m in matches)
    priority = max((m.rule.then.priority for m in matches if m.rule.then.priority is not None), default=None)
    urgent = any(m.rule.then.urgent for m in matches)
    by_intent: dict[Intent, list[RuleRef]] = {}
    for m in matches:
        if m.rule.then.intent is not None:
            by_intent.setdefault(m.rule.then.intent, []).append(m)
    scores = {str(i): _score(refs) for i, refs in by_intent.items()}
    asking = [m for m in matches if m.rule.then.consult_llm]
    if not by_intent and asking:
        return Resolution(None, "rule_requests_llm", f"rule {_names(asking)} asks for the LLM to decide",
                          matched, scores, priority, urgent)
    if not by_intent:
        why = ("no rule matched this event" if not matches else
               f"the matching rules ({', '.join(matched)}) name no intent")
        return Resolution(None, "no_match", why, matched, scores, priority, urgent)

    ranked = sorted(by_intent.items(), key=lambda kv: (-scores[str(kv[0])], kv[1][0].rule.salience * -1))
    intent, refs = ranked[0]
    top = scores[str(intent)]
    decision_type = next((r.rule.then.decision_type for r in refs if r.rule.then.decision_type), None)
    fields: dict[str, object] = {}
    for r in reversed(refs):
        fields.update(r.rule.then.set)
    cand = Candidate(intent=intent, confidence=top, decision_type=decision_type,
                     priority=max((r.rule.then.priority for r in refs if r.rule.then.priority), default=None),
                     urgent=any(r.rule.then.urgent for r in refs), rules=tuple(r.key for r in refs), fields=fields,
                     pipeline=next((r.rule.then.pipeline for r in refs if r.rule.then.pipeline), None))

    if asking:
        return Resolution(cand, "rule_requests_llm", f"rule {_names(asking)} asks for the LLM to decide",
                          matched, scores, priority, urgent)
    if len(ranked) > 1:
        second, second_refs = ranked[1]
        gap = top - scores[str(second)]
        if gap <= ambiguity.margin + 1e-9:
            return Resolution(cand, "conflict",
                              f"rules disagree: {intent} ({top:.2f}, {_names(refs)}) vs {second} "
                              f"({scores[str(second)]:.2f}, {_names(second_refs)}), within the margin of "
                              f"{ambiguity.margin:.2f}", matched, scores, priority, urgent)
    if top < ambiguity.consult_below:
        return Resolution(cand, "low_confidence",
                          f"only weak evidence for {intent}: {_names(refs)} gives {top:.2f}, under "
                          f"{ambiguity.consult_below:.2f}", matched, scores, priority, urgent)
    runner = ""
    if len(ranked) > 1:
        runner = f"; {ranked[1][0]} scored {scores[str(ranked[1][0])]:.2f}"
    return Resolution(cand, None, f"rule {_names(refs)} identified {intent} ({top:.2f}){runner}",
                      matched, scores, priority, urgent)
