"""The agent pipeline: context → rules → resolve → (LLM) → plan → gate → (execute) → record."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from engine.config import DecisionType, Intent, OrgConfig, Policy
from engine.gate import GateResult, Limiter, RateLimiter, gate
from engine.learning import OrgModel, Prediction
from engine.llm import LLMResult, LLMStage, fallback
from engine.models import Action, Decision, Event, new_id, utcnow
from engine.plan import escalation_action, make_plan
from engine.ports import DecisionStore, StateSource, StaticState
from engine.resolve import Candidate, Resolution, resolve
from engine.rules import CompiledRules
from engine.text import EventText, extract, keyword_set


class UnknownOrg(LookupError):
    """The event names an org that has no active configuration."""


class Executor(Protocol):
    """Runs a decision's actions (issue 4's outbox). Raises on failure."""

    async def execute(self, decision: Decision) -> None:
        """Execute every action of `decision` exactly once."""
        ...


def needs_state(policy: Policy, intent: Intent, decision_type: DecisionType | None) -> bool:
    """Whether planning this decision reads calendars (bookings) or loads (assignment by role)."""
    route = policy.routing.get(intent)
    dtype = decision_type or (route.decision_type if route is not None else DecisionType.ESCALATE)
    if dtype in (DecisionType.CREATE_EVENT, DecisionType.UPDATE_EVENT, DecisionType.CANCEL_EVENT):
        return True
    return route is not None and route.assignee is None and route.assignee_role is not None


def urgency_hits(keywords: list[str], text: EventText) -> list[str]:
    """The policy's urgency keywords present in the text and not negated ("not urgent" does not count)."""
    return keyword_set(tuple(keywords)).hits(text.scope("all", include_quoted=False), count_negated=False)


class Agent:
    """Decides what to do with events, one at a time, for every org the resolver knows."""

    def __init__(self, rules_for: Callable[[str], CompiledRules | None], llm: LLMStage, *,
                 store: DecisionStore | None = None, state: Any = None, executor: Executor | None = None,
                 clock: Callable[[], datetime] = utcnow, rate_limiter: Limiter | None = None,
                 on_decision: Callable[[Decision], Awaitable[None]] | None = None,
                 state_source: StateSource | None = None) -> None:
        self._rules_for = rules_for
        self.llm = llm
        self.store = store
        self.state = state if state is not None else StaticState()
        self.state_source = state_source
        self.executor = executor
        self._clock = clock
        self.rate_limiter: Limiter = rate_limiter or RateLimiter()
        self._on_decision = on_decision

    async def _choose(self, org: OrgConfig, policy: Policy, envelope: dict[str, Any], text: EventText,
                      res: Resolution, model: OrgModel | None) -> _Choice:
        """The rules' candidate when it is clear (unless the org model strongly disagrees: then the LLM); else
        the org model's when it is confident enough; else the LLM's classification; else, with the LLM off or
        down, the model's if it clears the policy's lower bar, and last the fallback keywords'."""
        cand = res.candidate
        bar = policy.learning
        t = time.perf_counter()
        pred = model.predict(envelope, text) if model is not None else None
        seen = ModelView(pred, ms=_ms(t) if model is not None else 0.0)
        if pred is not None and pred.words < bar.min_words:
            seen.role = f"not used: {pred.words} words, under {bar.min_words}"
            pred = None
        if res.ambiguous is None and cand is not None:
            if pred is None or pred.intent == cand.intent or pred.confidence < bar.disagree:
                if pred is not None:
                    seen.role = "agrees" if pred.intent == cand.intent else "disagrees, under the bar: the rules decided"
                return _Choice(cand.intent, cand.confidence, cand.decision_type, "rules", model=seen)
            why = (f"the org model ({pred.version}) strongly disagrees: {pred.intent} ({pred.confidence:.2f}) "
                   f"against the rules' {cand.intent}, so the LLM was asked")
            seen.role = "disagrees: LLM asked"
            result = await self.llm.classify(org, policy.llm, envelope, text, res, policy.capabilities)
            c = result.classification
            if c is None:
                return _Choice(cand.intent, cand.confidence, cand.decision_type, "rules", result, None,
                               [_sentence(f"{why}; it could not answer ({_first(result.failure)}): the rules' "
                                          "decision stands")], seen)
            dtype = cand.decision_type if c.intent == cand.intent else None
            return _Choice(c.intent, round(c.confidence, 4), dtype, "llm", result, c.effective_priority(),
                           [_sentence(why), _sentence(f"LLM: {c.reasoning or 'no reasoning given'}")], seen)
        if pred is not None and model is not None and pred.confidence >= bar.min_confidence \
                and res.ambiguous != "rule_requests_llm":
            seen.role = "decided"
            return self._model_choice(model, pred, cand, seen, f"clears the bar of {bar.min_confidence:.2f}")
        result = await self.llm.classify(org, policy.llm, envelope, text, res, policy.capabilities)
        c = result.classification
        if c is not None:
            intent, confidence, decided_by = c.intent, round(c.confidence, 4), "llm"
            note = _sentence(f"LLM: {c.reasoning or 'no reasoning given'}")
            if pred is not None:
                seen.role = f"below the bar ({bar.min_confidence:.2f}): LLM asked"
        elif pred is not None and model is not None and pred.confidence >= bar.fallback_confidence:
            seen.role = "decided: LLM unavailable"
            choice = self._model_choice(model, pred, cand, seen, f"clears the LLM-unavailable bar of "
                                        f"{bar.fallback_confidence:.2f}")
            choice.llm = result
            choice.notes.insert(0, _sentence(f"LLM unavailable ({_first(result.failure)})"))
            return choice
        else:
            fb = fallback(policy.fallback, text, res)
            intent, confidence, decided_by = fb.intent, fb.confidence, "fallback"
            note = _sentence(f"LLM unavailable ({_first(result.failure)}); {fb.reason}")
            if pred is not None:
                seen.role = f"below the bar ({bar.fallback_confidence:.2f}): fallback keywords"
        # the rules' decision type belongs to their intent only
        dtype = cand.decision_type if cand is not None and cand.intent == intent else None
        return _Choice(intent, confidence, dtype, decided_by, result,
                       c.effective_priority() if c is not None else None, [note], seen)

    @staticmethod
    def _model_choice(model: OrgModel, pred: Prediction, cand: Candidate | None, seen: ModelView,
                      why: str) -> _Choice:
        t = time.perf_counter()
        terms = model.terms(pred)
        seen.terms = terms
        seen.ms = round(seen.ms + _ms(t), 3)
        said = ", ".join(repr(t) for t in terms) or "no particular words"
        note = _sentence(f"Org model {pred.version}: {pred.intent} ({pred.confidence:.2f}, {why}), from {said}")
        dtype = cand.decision_type if cand is not None and cand.intent == pred.intent else None
        return _Choice(pred.intent, pred.confidence, dtype, "model", None, None, [note], seen)

    def triage(self, event: Event) -> int:
        """The priority the rules stage alone gives an event (no LLM, nothing recorded): the service uses it
        to process urgent events synchronously and queue the rest."""
        compiled = self._rules_for(event.org)
        if compiled is None:
            raise UnknownOrg(f"org '{event.org}' has no active configuration")
        policy = compiled.bundle.policy
        text = extract(event.data)
        matches, _ = compiled.match_fact(compiled.features(event.envelope(), text))
        res = resolve(matches, policy.ambiguity)
        if res.urgent or urgency_hits(policy.urgency.keywords, text):
            return policy.urgency.priority
        if res.candidate is not None and res.candidate.intent == Intent.SPAM:
            return 1
        return res.priority or policy.urgency.normal_priority

    async def process(self, event: Event, *, dry_run: bool = False, decision_id: str | None = None) -> Decision:
        """Decide for one event. In a dry run nothing is executed, recorded or rate-limited. `decision_id`
        lets the caller log with the decision's id before it exists."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        compiled = self._rules_for(event.org)
        if compiled is None:
            raise UnknownOrg(f"org '{event.org}' has no active configuration")
        bundle, policy, org = compiled.bundle, compiled.bundle.policy, compiled.bundle.org
        envelope = event.envelope()
        now = event.occurred_at or self._clock()

        # 2. rules
        t = time.perf_counter()
        text = extract(event.data)
        fact = compiled.features(envelope, text)
        matches, engine = compiled.match_fact(fact)
        timings["rules_ms"] = _ms(t)
        # 3. resolve
        res = resolve(matches, policy.ambiguity)

        # 4. llm, only if ambiguous
        reasoning: list[str] = [_sentence(res.reason)]
        cand = res.candidate
        t = time.perf_counter()
        model = bundle.model if policy.learning.enabled else None
        choice = await self._choose(org, policy, envelope, text, res, model)
        if choice.llm is not None:
            timings["llm_ms"] = _ms(t)
        intent, confidence, decision_type, decided_by = (choice.intent, choice.confidence, choice.decision_type,
                                                         choice.decided_by)
        llm_result = choice.llm
        reasoning += choice.notes
        hits = urgency_hits(policy.urgency.keywords, text)
        priority, why = _priority(policy, intent, res, hits, choice.llm_priority, bool(text.injection))
        if why:
            reasoning.append(why)

        # 5. plan
        t = time.perf_counter()
        override = cand.pipeline if cand is not None and cand.intent == intent else None
        state = self.state
        if self.state_source is not None and needs_state(policy, intent, decision_type):
            # Loads and calendars as they are now (the store), read only when the plan uses them.
            state = await self.state_source.snapshot(org.org, now)
            timings["state_ms"] = _ms(t)
        plan = make_plan(bundle, intent, decision_type, priority, envelope, text, state, state, now,
                         pipeline_override=override)
        timings["plan_ms"] = _ms(t)
        reasoning.extend(_sentence(n) for n in plan.notes[:2])

        # 6. gate
        limited = None if dry_run else await self.rate_limiter.acquire(org.org, policy.rate_limits)
        # The escalation replaces the actions of a rejected decision only: made when the confidence rejects.
        escalation = (escalation_action(policy, org, f"low confidence ({confidence:.2f}) for {intent}", priority)
                      if confidence < policy.threshold(plan.decision_type).require_approval else None)
        g: GateResult = gate(policy, plan.decision_type, confidence, plan.actions,
                             llm_wants_approval=bool(llm_result and llm_result.classification
                                                     and llm_result.classification.requires_approval),
                             escalation=escalation, rate_limited=limited)
        reasoning.append(_sentence(g.reason))

        dec_id = decision_id or new_id("dec")
        decision = Decision(
            id=dec_id, event_id=event.id, org=org.org, input={"source": str(event.source), "type": event.type},
            intent=intent, priority=priority, decision_type=plan.decision_type, confidence=confidence,
            decided_by=decided_by,  # type: ignore[arg-type]
            matched_rules=list(res.matched), reasoning=" ".join(reasoning), status=g.status,
            llm=llm_result.trace if llm_result else None, revision=compiled.revision, dry_run=dry_run,
            created_at=self._clock(),
            actions=[Action(type=a.type, params=a.params, idempotency_key=f"{dec_id}:{i}")
                     for i, a in enumerate(g.actions)],
            trace=_trace(compiled, engine, matches, res, text, hits, plan, g, llm_result, timings))
        if model is not None:
            decision.model_version = model.version
            decision.trace["model"] = choice.model.to_json()
            timings["model_ms"] = choice.model.ms

        # 7. execute (skipped in a dry run)
        if not dry_run and g.status == "EXECUTED":
            if self.executor is None:
                decision.status = "PENDING"
                decision.trace["execution"] = "held: no executor is configured in this process"
            else:
                t = time.perf_counter()
                try:
                    await self.executor.execute(decision)
                    decision.executed_at = datetime.now(UTC)
                except Exception as exc:  # an executor failure is recorded on the decision, never lost
                    decision.status = "FAILED"
                    decision.error = f"{type(exc).__name__}: {exc}"
                timings["execute_ms"] = _ms(t)
        decision.execution_ms = _ms(t0)

        # 8. record
        if not dry_run:
            if self.store is not None:
                await self.store.save_decision(decision)
            if self._on_decision is not None:
                await self._on_decision(decision)
        return decision


@dataclass
class _Choice:
    """The intent the decision goes with, and who chose it."""

    intent: Intent
    confidence: float
    decision_type: DecisionType | None
    decided_by: str
    llm: LLMResult | None = None
    llm_priority: int | None = None
    notes: list[str] = field(default_factory=list)
    model: ModelView = field(default_factory=lambda: ModelView(None))


@dataclass
class ModelView:
    """What the org model said about an event and what became of it (the decision trace's `model`)."""

    prediction: Prediction | None
    role: str = "not consulted"
    terms: list[str] = field(default_factory=list)
    ms: float = 0.0  # time spent in the model (the decision's timings_ms.model_ms)

    def to_json(self) -> dict[str, Any]:
        """For the trace."""
        out: dict[str, Any] = {"role": self.role}
        if self.prediction is not None:
            out.update(self.prediction.to_json())
        if self.terms:
            out["terms"] = self.terms
        return out


def _priority(policy: Policy, intent: Intent, res: Resolution, hits: list[str], llm_priority: int | None,
              injected: bool) -> tuple[int, str | None]:
    """The decision's priority and, when urgent, why. Urgency words (never negated, never from an
    injected instruction) win; spam is always the route's low priority; the LLM's opinion counts only
    when no instruction was found in the text."""
    route = policy.routing.get(intent)
    cand = res.candidate
    if intent == Intent.SPAM:
        return (route.priority if route and route.priority else 1), None
    if hits or res.urgent:
        return policy.urgency.priority, _sentence(f"Urgent: {', '.join(repr(h) for h in hits) or 'a rule says so'}")
    if llm_priority is not None and not injected:
        return llm_priority, None
    rule_priority = cand.priority if cand is not None and cand.intent == intent else res.priority
    return rule_priority or (route.priority if route and route.priority else policy.urgency.normal_priority), None


def _trace(compiled: CompiledRules, engine: str, matches: list[Any], res: Resolution, text: EventText,
           hits: list[str], plan: Any, g: GateResult, llm_result: LLMResult | None,
           timings: dict[str, float]) -> dict[str, Any]:
    booking = plan.booking
    return {
        "revision": compiled.revision,
        "engine": engine,
        "rules": [{"rule": m.key, "intent": str(m.rule.then.intent) if m.rule.then.intent else None,
                   "confidence": m.rule.then.confidence, "at": m.at} for m in matches],
        "resolution": {"ambiguous": res.ambiguous, "reason": res.reason, "scores": res.scores},
        "fields": dict(res.candidate.fields) if res.candidate else {},
        "urgency_words": hits,
        "injection_removed": text.injection,
        **({"limits": list(text.notes)} if text.notes else {}),
        "quoted_text_ignored": bool(text.quoted),
        "plan": plan.notes,
        "booking": None if booking is None else {
            "status": booking.status, "requested": booking.requested.isoformat() if booking.requested else None,
            "start": booking.start.isoformat() if booking.start else None,
            "time_source": booking.time_source, "reason": booking.reason},
        "gate": {"outcome": g.outcome, "reason": g.reason},
        "blocked_actions": g.blocked,
        "llm_proposed_actions": [a.model_dump(mode="json") for a in llm_result.accepted_actions] if llm_result else [],
        "timings_ms": timings,
    }


def _ms(t: float) -> float:
    return round((time.perf_counter() - t) * 1000, 3)


def _first(s: str | None) -> str:
    return (s or "unknown failure").split("; ")[-1][:200]


_ID_CHARS = frozenset("-_/:0123456789")


def _sentence(s: str) -> str:
    s = s.strip()
    if s and _ID_CHARS.isdisjoint(s.split(" ", 1)[0]):  # never capitalize an id like u-raj
        s = s[0].upper() + s[1:]
    return s if s.endswith((".", "!", "?")) else s + "."
