"""Why an event got its decision: every rule of the org, matched or not and on which condition it
failed, the resolution, whether the LLM would be asked, the plan and the gate (`astralis explain`).

Conditions are evaluated one by one with the rules compiler and the reference evaluator of
`engine.rules` (the semantics of the engine), so an explanation never disagrees with a decision. The
decision itself comes from a dry run of the agent with the LLM off: nothing is called or executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.agent import Agent
from engine.config import FieldCondition
from engine.llm import LLMStage
from engine.loader import RuleRef
from engine.models import Decision, Event
from engine.ports import StaticState
from engine.rules import CompiledRules, Cond, TextFeature, _Compiler, evaluate, resolve_path
from engine.text import EventText, Term, extract


@dataclass
class RuleCheck:
    """One rule's verdict on an event: matched, or the first condition that failed and why."""

    rule: str
    at: str
    intent: str | None
    confidence: float
    salience: int
    matched: bool
    passed: int  # conditions that held, in declaration order, before the first failure
    total: int
    failed: dict[str, Any] | None = None  # {"condition": "text", "detail": ..., ...}

    @property
    def why(self) -> str:
        """The failure in one line (empty when the rule matched)."""
        return "" if self.failed is None else str(self.failed["detail"])

    def to_json(self) -> dict[str, Any]:
        """The check as plain JSON."""
        return {"rule": self.rule, "at": self.at, "intent": self.intent, "confidence": self.confidence,
                "salience": self.salience, "matched": self.matched, "passed": self.passed, "total": self.total,
                "failed": self.failed}


@dataclass
class Explanation:
    """The whole trace of one event through an org's rules, resolution, LLM decision, plan and gate."""

    org: str
    revision: str
    event: dict[str, Any]
    rules: list[RuleCheck]
    decision: Decision
    llm: dict[str, Any]
    gate: dict[str, Any]
    text: dict[str, Any] = field(default_factory=dict)

    @property
    def matched(self) -> list[RuleCheck]:
        """The rules that matched, in file order."""
        return [r for r in self.rules if r.matched]

    def nearest(self, n: int = 5) -> list[RuleCheck]:
        """The unmatched rules that came closest (most conditions held before the failing one)."""
        misses = [r for r in self.rules if not r.matched and r.passed > 0]
        misses.sort(key=lambda r: (-(r.passed / r.total), not (r.failed or {}).get("negated"), -r.confidence))
        return misses[:n]

    def check(self, rule: str) -> RuleCheck | None:
        """The verdict on one rule, by its `ruleset/id` name."""
        return next((r for r in self.rules if r.rule == rule), None)

    def to_json(self) -> dict[str, Any]:
        """The explanation as plain JSON (for tools)."""
        d = self.decision
        trace = d.trace
        return {
            "org": self.org, "revision": self.revision, "event": self.event, "text": self.text,
            "rules": [r.to_json() for r in self.rules],
            "matched": [r.rule for r in self.matched],
            "resolution": trace.get("resolution", {}),
            "llm": self.llm,
            "decision": {"intent": str(d.intent), "decision_type": str(d.decision_type), "priority": d.priority,
                         "confidence": d.confidence, "decided_by": d.decided_by, "status": d.status,
                         "reasoning": d.reasoning},
            "plan": {"notes": trace.get("plan", []), "booking": trace.get("booking"),
                     "actions": [a.model_dump(mode="json", exclude={"idempotency_key"}) for a in d.actions],
                     "blocked_actions": trace.get("blocked_actions", [])},
            "gate": self.gate,
        }


# --------------------------------------------------------------------------- conditions

def _kw(words: list[str], terms: list[Term], hits: list[bool]) -> list[str]:
    return [w for w, t, h in zip(words, terms, hits, strict=True) if h]


def explain_text(tf: TextFeature, keywords: dict[str, list[str]], text: EventText) -> dict[str, Any]:
    """Why a text condition holds or not: keywords excluded (`none`), missing or only negated (`all`),
    and whether any `any` keyword or regex was found. `keywords` are the rule's words as written."""
    sc = text.scope(tf.scope, tf.include_quoted)
    neg = tf.count_negated
    where = f"scope {tf.scope}" + (" with quoted text" if tf.include_quoted else "")
    out: dict[str, Any] = {"condition": "text", "scope": tf.scope, "include_quoted": tf.include_quoted}
    excluded = _kw(keywords["none"], list(tf.none), [sc.has(t, True) for t in tf.none])
    if excluded:
        out.update(excluded=excluded, detail=f"text.none: excluded by {_list(excluded)} ({where})")
        return out
    missing = _kw(keywords["all"], list(tf.all), [not sc.has(t, neg) for t in tf.all])
    if missing:
        negated = _kw(keywords["all"], list(tf.all), [not sc.has(t, neg) and sc.has(t, True) for t in tf.all])
        out.update(missing=missing, negated=negated,
                   detail=f"text.all: lacks {_list(missing)}" + (f" ({_list(negated)} only negated)" if negated else "")
                   + f" ({where})")
        return out
    if not (tf.any or tf.regex):
        out["detail"] = ""
        return out
    found = _kw(keywords["any"], list(tf.any), [sc.has(t, neg) for t in tf.any])
    raw = text.raw(tf.scope, tf.include_quoted) if tf.regex else ""
    regex_hits = [r.pattern for r in tf.regex if r.search(raw)]
    if found or regex_hits:
        out.update(found=found, regex=regex_hits, detail="")
        return out
    negated = _kw(keywords["any"], list(tf.any), [sc.has(t, True) for t in tf.any])
    parts = []
    if tf.any:
        parts.append(f"none of its {len(tf.any)} `any` keywords occur" +
                     (f" ({_list(negated)} only negated)" if negated else ""))
    if tf.regex:
        parts.append(f"none of its {len(tf.regex)} regexes matches")
    out.update(found=[], negated=negated, detail="text: " + "; ".join(parts) + f" ({where})")
    return out


def _list(words: list[str], most: int = 6) -> str:
    shown = ", ".join(repr(w) for w in words[:most])
    return shown + (f" and {len(words) - most} more" if len(words) > most else "")


def _field_detail(fc: FieldCondition, event: dict[str, Any]) -> str:
    seen = resolve_path(event, tuple(fc.field.split(".")))
    op = fc.operator
    want = fc.value
    shown = "absent" if seen is None else repr(seen)
    return f"field {fc.field} {op} {want!r}: the event has {shown}"


class _Checker:
    """Each rule's conditions compiled separately, so each can be evaluated on its own."""

    def __init__(self, compiled: CompiledRules) -> None:
        self.compiled = compiled
        self.c = _Compiler(compiled.bundle)
        self.parts: list[list[tuple[str, Cond, Any]]] = [self._parts(ref) for ref in compiled.rules]
        self.probe = CompiledRules(
            bundle=compiled.bundle, rules=compiled.rules, definition_json="{}",
            text_features=list(self.c.text.values()), match_features=list(self.c.matches.values()),
            value_slots={k: p for p, k in self.c.values.items()}, number_slots={k: p for p, k in self.c.numbers.items()},
            exists_slots={k: p for p, k in self.c.present.items()}, set_features=list(self.c.sets.values()))
        self.by_key = {tf.key: tf for tf in self.c.text.values()}

    def _parts(self, ref: RuleRef) -> list[tuple[str, Cond, Any]]:
        w = ref.rule.when
        parts: list[tuple[str, Cond, Any]] = []
        if w.types():
            parts.append(("type", self.c.member("type", w.types()), w.types()))
        if w.sources():
            parts.append(("source", self.c.member("source", w.sources()), w.sources()))
        parts.extend(("field", self.c.field_cond(fc), fc) for fc in w.fields)
        if w.text is not None:
            parts.append(("text", {self.c.text_feature(w.text): True}, w.text))
        return parts

    def check(self, event: dict[str, Any], text: EventText) -> list[RuleCheck]:
        fact = self.probe.features(event, text)
        out = []
        for ref, parts in zip(self.compiled.rules, self.parts, strict=True):
            then = ref.rule.then
            rc = RuleCheck(ref.key, ref.at, str(then.intent) if then.intent else None,
                           then.confidence, ref.rule.salience, True, 0, len(parts))
            for kind, cond, spec in parts:
                if evaluate(cond, fact):
                    rc.passed += 1
                    continue
                rc.matched = False
                rc.failed = self._failure(kind, cond, spec, event, text)
                break
            out.append(rc)
        return out

    def _failure(self, kind: str, cond: Cond, spec: Any, event: dict[str, Any], text: EventText) -> dict[str, Any]:
        if kind in ("type", "source"):
            seen = event.get(kind)
            return {"condition": kind, "expected": spec, "seen": seen,
                    "detail": f"{kind} is {seen!r}, not {' or '.join(map(str, spec))}"}
        if kind == "field":
            fc: FieldCondition = spec
            seen = resolve_path(event, tuple(fc.field.split(".")))
            return {"condition": "field", "field": fc.field, "operator": fc.operator, "value": fc.value,
                    "seen": seen, "detail": _field_detail(fc, event)}
        (key, _), = cond.items()
        words = {"any": list(spec.any), "all": list(spec.all), "none": list(spec.none)}
        return explain_text(self.by_key[key], words, text)


# --------------------------------------------------------------------------- the whole trace

def rule_checks(compiled: CompiledRules, event: Event) -> list[RuleCheck]:
    """Every rule's verdict on `event` (no decision): what `astralis test` uses to name changed rules."""
    return _Checker(compiled).check(event.envelope(), extract(event.data))


async def explain(compiled: CompiledRules, event: Event, state: StaticState | None = None) -> Explanation:
    """Trace one event: rule by rule, then resolution, LLM (asked or not, never called), plan and gate."""
    envelope = event.envelope()
    text = extract(event.data)
    checks = _Checker(compiled).check(envelope, text)
    org = compiled.bundle.org.org
    agent = Agent(lambda o: compiled if o == org else None, LLMStage(None), state=state or StaticState())
    decision = await agent.process(event, dry_run=True)
    policy = compiled.bundle.policy
    res = decision.trace.get("resolution", {})
    asked = res.get("ambiguous") is not None
    settings = policy.llm
    llm: dict[str, Any] = {"would_ask": asked, "why": res.get("reason", ""), "ambiguity": res.get("ambiguous"),
                           "provider": settings.provider, "model": settings.model, "called": False}
    if asked:
        llm["note"] = ("not called here: the decision below is the policy fallback's (what happens when the "
                       "LLM is off or down)")
        if settings.provider == "none":
            llm["note"] = "the policy's LLM provider is none: the fallback decides"
    else:
        llm["note"] = "the rules decided; the LLM would not be asked"
    dtype = decision.decision_type
    t = policy.threshold(dtype)
    g = decision.trace.get("gate", {})
    gate_info = {"outcome": g.get("outcome"), "reason": g.get("reason"), "status": decision.status,
                 "decision_type": str(dtype), "confidence": decision.confidence,
                 "auto_execute": t.auto_execute, "require_approval": t.require_approval}
    text_info = {"subject": text.subject, "body": text.body[:2000], "quoted_ignored": bool(text.quoted),
                 "injection_removed": text.injection}
    return Explanation(org, compiled.revision, envelope, checks, decision, llm, gate_info, text_info)


def render(x: Explanation, all_rules: bool = True) -> str:
    """The explanation as text for an operator."""
    d = x.decision
    ev = x.event
    lines = [f"event {ev.get('id')} ({ev.get('source')} {ev.get('type')}) for {x.org}, revision {x.revision}"]
    if x.text.get("subject"):
        lines.append(f"  subject: {x.text['subject']}")
    if x.text.get("body"):
        body = " ".join(str(x.text["body"]).split())
        lines.append(f"  text:    {body[:160]}{'…' if len(body) > 160 else ''}")
    if x.text.get("injection_removed"):
        lines.append(f"  instructions removed before matching: {len(x.text['injection_removed'])}")
    lines.append("")
    lines.append(f"rules: {len(x.matched)} of {len(x.rules)} matched")
    for r in x.matched:
        lines.append(f"  MATCH {r.rule:<34} {r.intent or '-':<17} {r.confidence:.2f}  {r.at}")
    near = x.nearest()
    if near:
        lines.append("nearest misses:")
        for r in near:
            lines.append(f"  miss  {r.rule:<34} {r.passed}/{r.total} held; {r.why}")
    if all_rules:
        rest = [r for r in x.rules if not r.matched and r not in near]
        if rest:
            lines.append("other rules:")
            lines.extend(f"  miss  {r.rule:<34} {r.why}" for r in rest)
    res = d.trace.get("resolution", {})
    lines.append("")
    lines.append(f"resolution: {res.get('ambiguous') or 'clear'}: {res.get('reason', '')}")
    if res.get("scores"):
        lines.append("  scores: " + ", ".join(f"{k} {v:.2f}" for k, v in res["scores"].items()))
    llm = x.llm
    ask = "yes" if llm["would_ask"] else "no"
    lines.append(f"llm: would be asked: {ask} ({llm['provider']} {llm['model']}): {llm['note']}")
    lines.append("")
    lines.append(f"decision: {d.intent} {d.decision_type} priority {d.priority}, confidence {d.confidence:.2f}, "
                 f"decided by {d.decided_by}")
    lines.append(f"  {d.reasoning}")
    lines.append("plan:")
    for note in d.trace.get("plan", []):
        lines.append(f"  - {note}")
    for a in d.actions:
        params = ", ".join(f"{k}={v}" for k, v in a.params.items() if not isinstance(v, dict | list))
        lines.append(f"  action {a.type}: {params}")
    for b in d.trace.get("blocked_actions", []):
        lines.append(f"  held back {b['action']['type']}: {b['reason']}")
    g = x.gate
    lines.append(f"gate: {g['outcome']} -> {g['status']}: {g['reason']} (thresholds for {g['decision_type']}: "
                 f"auto-execute {g['auto_execute']:.2f}, require-approval {g['require_approval']:.2f})")
    return "\n".join(lines)
