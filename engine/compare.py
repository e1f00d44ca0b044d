"""What a ruleset change does: the per-event diff of two dry runs over the same events, and the change in
counts, rates, LLM tokens and cost, and decision time. Pure logic: the caller runs the agent.

The report is plain JSON data and deterministic for the same inputs, except for the keys listed in its
`volatile` entry (decision times, measured on this machine).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.config import LLMSettings
from engine.llm import system_prompt, user_prompt
from engine.models import Action, Decision, Event
from engine.resolve import resolve
from engine.rules import CompiledRules
from engine.text import extract

# The fields a decision "changes" on: any difference in one of them is a flip.
DIFF_FIELDS = ("intent", "decision_type", "status", "priority", "actions", "decided_by")
# The action parameters that say what an action does (not how it is worded or when it was computed).
KEY_PARAMS = ("pipeline", "stage", "assignee", "workflow", "host", "start", "duration_minutes", "event_id",
              "to", "to_email", "template", "address")
CHARS_PER_TOKEN = 4
# A classification answer is a small JSON object; a measured reply from the stand-in and real models is
# ~80–200 tokens. Used only when the output was not recorded.
ESTIMATED_OUTPUT_TOKENS = 150
BINS = 10
VOLATILE = ["baseline.stats.decision_ms", "candidate.stats.decision_ms"]


@dataclass(frozen=True)
class Side:
    """One dry run: its decisions (one per event, in the events' order), the LLM settings of its policy
    (model, price table) and, for events that would consult the LLM but carry no recorded usage, the
    length in characters of the prompt that would be sent."""

    decisions: Sequence[Decision]
    llm: LLMSettings = field(default_factory=LLMSettings)
    prompt_chars: Mapping[str, int] = field(default_factory=dict)
    revision: str = ""


@dataclass
class Report:
    """The comparison (or, without a baseline, the one run's figures), as plain JSON-able data."""

    org: str
    events: int
    candidate: dict[str, Any]
    baseline: dict[str, Any] | None = None
    changed_events: int = 0
    changes: dict[str, Any] | None = None
    flips: list[dict[str, Any]] = field(default_factory=list)
    flip_matrix: dict[str, dict[str, int]] | None = None
    status_matrix: dict[str, dict[str, int]] | None = None
    volatile: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as a dict (what `--format json` prints under `report`)."""
        return asdict(self)


# --------------------------------------------------------------------------- one decision

def action_key(action: Action) -> str:
    """An action as a short comparable string: its type and key parameters, e.g.
    `ASSIGN_PIPELINE(pipeline=sales-inquiries, stage=new, assignee=u-sam)`."""
    parts = []
    for k in KEY_PARAMS:
        v = action.params.get(k)
        if v is None or v == []:
            continue
        parts.append(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}")
    return f"{action.type}({', '.join(parts)})"


def view(d: Decision) -> dict[str, Any]:
    """The fields of a decision that the diff compares and explains with."""
    gate = d.trace.get("gate") or {}
    return {"intent": str(d.intent), "decision_type": str(d.decision_type), "status": d.status,
            "priority": d.priority, "confidence": d.confidence, "decided_by": d.decided_by,
            "actions": [action_key(a) for a in d.actions], "matched_rules": list(d.matched_rules),
            "gate": gate.get("reason", "")}


def changed_fields(before: Decision, after: Decision) -> list[str]:
    """The DIFF_FIELDS on which two decisions for the same event differ."""
    a, b = view(before), view(after)
    return [f for f in DIFF_FIELDS if a[f] != b[f]]


# --------------------------------------------------------------------------- LLM usage

def prompt_chars(compiled: CompiledRules, event: Event) -> int:
    """The length of the prompts (system + user) the LLM stage would send for this event under these rules;
    the basis of a token estimate when the LLM was not called (`--llm off`)."""
    org = compiled.bundle.org
    text = extract(event.data)
    envelope = event.envelope()
    matches, _ = compiled.match_fact(compiled.features(envelope, text))
    res = resolve(matches, compiled.bundle.policy.ambiguity)
    return len(system_prompt(org)) + len(user_prompt(org, envelope, text, res))


def consults_llm(d: Decision) -> bool:
    """Whether the LLM is (or, with none configured, would be) asked about this event: the rules left it
    ambiguous and the org model did not decide it, or the model disagreed strongly with the rules."""
    if d.llm is not None or d.decided_by in ("llm", "fallback"):
        return True
    role = str(d.trace.get("model", {}).get("role", ""))
    return role.startswith(("decided: LLM unavailable", "disagrees: LLM asked"))


def _usage(side: Side) -> dict[str, Any]:
    settings = side.llm
    tokens_in = tokens_out = recorded = estimated = 0
    cost = 0.0
    unpriced: set[str] = set()
    failures: list[dict[str, str]] = []
    for d in side.decisions:
        if not consults_llm(d):
            continue
        if d.llm is not None and d.llm.error and d.decided_by != "llm":
            failures.append({"event_id": d.event_id, "error": d.llm.error})
        model = settings.model
        if d.llm is not None and (d.llm.input_tokens or d.llm.output_tokens):
            t_in, t_out = d.llm.input_tokens, d.llm.output_tokens
            model = d.llm.model or model
            recorded += 1
        else:
            chars = side.prompt_chars.get(d.event_id)
            if chars is None:
                continue
            t_in, t_out = math.ceil(chars / CHARS_PER_TOKEN), ESTIMATED_OUTPUT_TOKENS
            estimated += 1
        tokens_in += t_in
        tokens_out += t_out
        price = settings.prices.get(model)
        if price is None:
            unpriced.add(model)
        else:
            cost += t_in * price.input_per_million / 1e6 + t_out * price.output_per_million / 1e6
    return {"provider": settings.provider, "model": settings.model, "input_tokens": tokens_in,
            "output_tokens": tokens_out, "recorded_events": recorded, "estimated_events": estimated,
            "cost_usd": round(cost, 6), "unpriced_models": sorted(unpriced), "failures": failures}


# --------------------------------------------------------------------------- one run

def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return round(s[min(len(s) - 1, math.ceil(q * len(s)) - 1)], 3)


def confidence_histogram(decisions: Sequence[Decision]) -> dict[str, int]:
    """Decisions per confidence decile: keys "0.0" … "0.9" (the last bin includes 1.0)."""
    counts = Counter(min(BINS - 1, int(d.confidence * BINS + 1e-9)) for d in decisions)
    return {f"{i / BINS:.1f}": counts.get(i, 0) for i in range(BINS)}


def stats(side: Side) -> dict[str, Any]:
    """Counts, rates, LLM usage and cost, the confidence histogram and decision times of one run."""
    ds = side.decisions
    n = len(ds) or 1

    def by(key: str) -> dict[str, int]:
        return dict(sorted(Counter(str(getattr(d, key)) for d in ds).items()))

    def rate(pred: Any) -> float:
        return round(sum(1 for d in ds if pred(d)) / n, 4)

    times = [d.execution_ms for d in ds]
    return {
        "events": len(ds),
        "by_intent": by("intent"),
        "by_decision_type": by("decision_type"),
        "by_status": by("status"),
        "by_decided_by": by("decided_by"),
        "llm_call_rate": rate(consults_llm),
        "auto_execute_rate": rate(lambda d: d.status == "EXECUTED"),
        "approval_rate": rate(lambda d: d.status == "REQUIRES_APPROVAL"),
        "rejection_rate": rate(lambda d: d.status == "REJECTED"),
        "escalation_rate": rate(lambda d: d.decision_type == "ESCALATE"),
        "llm": _usage(side),
        "confidence_histogram": confidence_histogram(ds),
        "decision_ms": {"p50": _percentile(times, 0.5), "p99": _percentile(times, 0.99),
                        "total": round(sum(times), 3)},
    }


# --------------------------------------------------------------------------- two runs

RATES = ("llm_call_rate", "auto_execute_rate", "approval_rate", "rejection_rate", "escalation_rate")
COUNTS = ("by_intent", "by_decision_type", "by_status", "by_decided_by")


def _delta(a: float, b: float) -> dict[str, float]:
    return {"baseline": a, "candidate": b, "delta": round(b - a, 6)}


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The aggregate changes between two runs' `stats`: counts by key, rates, tokens and cost."""
    out: dict[str, Any] = {}
    for key in COUNTS:
        keys = sorted(set(before[key]) | set(after[key]))
        out[key] = {k: _delta(before[key].get(k, 0), after[key].get(k, 0)) for k in keys}
    for key in RATES:
        out[key] = _delta(before[key], after[key])
    for key in ("input_tokens", "output_tokens", "cost_usd"):
        out[f"llm_{key}"] = _delta(before["llm"][key], after["llm"][key])
    return out


def compare(candidate: Side, baseline: Side | None = None, org: str = "") -> Report:
    """The report for a candidate run, against a baseline run over the same events when one is given.
    Raises ValueError when the two runs are not over the same events in the same order."""
    cand = list(candidate.decisions)
    org = org or (cand[0].org if cand else "")
    report = Report(org=org, events=len(cand),
                    candidate={"revision": candidate.revision, "stats": stats(candidate)},
                    volatile=["candidate.stats.decision_ms"])
    if baseline is None:
        return report
    base = list(baseline.decisions)
    if [d.event_id for d in base] != [d.event_id for d in cand]:
        raise ValueError("the baseline and the candidate were not run over the same events in the same order")
    report.baseline = {"revision": baseline.revision, "stats": stats(baseline)}
    report.volatile = list(VOLATILE)
    report.changes = changes(report.baseline["stats"], report.candidate["stats"])
    matrix: dict[str, Counter[str]] = {}
    statuses: dict[str, Counter[str]] = {}
    for b, c in zip(base, cand, strict=True):
        matrix.setdefault(str(b.decision_type), Counter())[str(c.decision_type)] += 1
        statuses.setdefault(b.status, Counter())[c.status] += 1
        fields = changed_fields(b, c)
        if not fields:
            continue
        vb, vc = view(b), view(c)
        report.flips.append({
            "event_id": c.event_id, "type": c.input.get("type", ""), "changed": fields,
            "rules_added": [r for r in vc["matched_rules"] if r not in vb["matched_rules"]],
            "rules_removed": [r for r in vb["matched_rules"] if r not in vc["matched_rules"]],
            "baseline": vb, "candidate": vc})
    report.changed_events = len(report.flips)
    report.flip_matrix = {k: dict(sorted(v.items())) for k, v in sorted(matrix.items())}
    report.status_matrix = {k: dict(sorted(v.items())) for k, v in sorted(statuses.items())}
    return report
