"""Scoring decisions against labels (`astralis eval`): accuracy per tier (rules, model, LLM, fallback), the
LLM's share, the intent confusion matrix, priority and urgency, and each rule's precision."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.compare import consults_llm
from engine.models import Decision, Event

TIERS = ("rules", "model", "llm", "fallback")


@dataclass(frozen=True)
class Label:
    """What a person says the decision should have been (any field may be absent)."""

    intent: str | None = None
    priority: int | None = None
    decision_type: str | None = None
    pipeline: str | None = None


def read_labelled(path: Path, org: str, labels_path: Path | None = None) -> tuple[list[Event], dict[str, Label], list[str]]:
    """Events and their labels from one JSONL file — each line `{"event": envelope, "intent", "priority"?,
    "decision_type"?, "pipeline"?}` (the format of `rulesets/<org>/examples/`) — or from an events file and a
    labels file keyed by event id (`{"id", "intent", ...}`, as tests/cases/acme/*labels*.jsonl)."""
    events: list[Event] = []
    labels: dict[str, Label] = {}
    errors: list[str] = []
    side: dict[str, dict[str, Any]] = {}
    if labels_path is not None:
        for n, line in enumerate(labels_path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    raw = json.loads(line)
                    side[str(raw["id"])] = raw
                except (ValueError, KeyError, TypeError) as exc:
                    errors.append(f"{labels_path}:{n}: invalid_label: {exc}")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            raw = json.loads(line)
            env = raw["event"] if isinstance(raw.get("event"), dict) else raw
            env = {"org": org, **env}
            event = Event.model_validate(env)
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
            errors.append(f"{path}:{n}: invalid_event: {str(exc).splitlines()[0][:200]}")
            continue
        lab = side.get(event.id) or (raw if "event" in raw else raw.get("label") or {})
        events.append(event)
        if lab.get("intent"):
            labels[event.id] = Label(lab.get("intent"), lab.get("priority"), lab.get("decision_type"),
                                     lab.get("pipeline"))
    return events, labels, errors


def _pipeline(d: Decision) -> str | None:
    for a in d.actions:
        if str(a.type) == "ASSIGN_PIPELINE":
            return a.params.get("pipeline")
    for b in d.trace.get("blocked_actions", []):  # a rejected decision still names where it would have gone
        if b["action"]["type"] == "ASSIGN_PIPELINE":
            return b["action"]["params"].get("pipeline")
    return None


def _rate(ok: int, n: int) -> dict[str, Any]:
    return {"correct": ok, "of": n, "accuracy": round(ok / n, 4) if n else None}


def score(decisions: list[Decision], labels: dict[str, Label], *, urgent: int = 5) -> dict[str, Any]:
    """The evaluation report of `decisions` against `labels` (decisions without a label are counted, not
    scored)."""
    scored = [(d, labels[d.event_id]) for d in decisions if d.event_id in labels]
    n = len(decisions)
    intent_ok = [str(d.intent) == lab.intent for d, lab in scored]
    by_tier: dict[str, list[bool]] = defaultdict(list)
    for (d, _), ok in zip(scored, intent_ok, strict=True):
        by_tier[d.decided_by].append(ok)
    prio = [(d, lab) for d, lab in scored if lab.priority is not None]
    dtype = [(d, lab) for d, lab in scored if lab.decision_type is not None]
    pipe = [(d, lab) for d, lab in scored if lab.decision_type == "ASSIGN_PIPELINE"]
    want_urgent = [d for d, lab in prio if lab.priority == urgent]
    false_alarms = [d.event_id for d, lab in prio if d.priority == urgent and lab.priority != urgent]
    classes = sorted({lab.intent for _, lab in scored if lab.intent} | {str(d.intent) for d, _ in scored})
    matrix = {c: dict.fromkeys(classes, 0) for c in classes}
    for d, lab in scored:
        matrix[str(lab.intent)][str(d.intent)] += 1
    # a rule's precision: of the labelled events it matched (naming an intent), how many had that intent
    rule_hits: dict[str, list[bool]] = defaultdict(list)
    for d, lab in scored:
        for r in d.trace.get("rules", []):
            if r.get("intent"):
                rule_hits[r["rule"]].append(r["intent"] == lab.intent)
    misses = [{"event": d.event_id, "want": lab.intent, "got": str(d.intent), "decided_by": d.decided_by,
               "confidence": d.confidence, "reasoning": d.reasoning[:240]}
              for (d, lab), ok in zip(scored, intent_ok, strict=True) if not ok]
    return {
        "events": n, "labelled": len(scored),
        "decided_by": dict(Counter(d.decided_by for d in decisions)),
        "llm_share": round(sum(consults_llm(d) for d in decisions) / n, 4) if n else None,
        "llm_called_share": round(sum(d.llm is not None for d in decisions) / n, 4) if n else None,
        "past_rules_share": round(sum(d.decided_by != "rules" for d in decisions) / n, 4) if n else None,
        "intent": _rate(sum(intent_ok), len(scored)),
        "intent_by_tier": {t: _rate(sum(by_tier[t]), len(by_tier[t])) for t in TIERS if by_tier.get(t)},
        "priority": _rate(sum(d.priority == lab.priority for d, lab in prio), len(prio)),
        "urgent": {"recall": _rate(sum(d.priority == urgent for d in want_urgent), len(want_urgent)),
                   "false_alarms": len(false_alarms), "false_alarm_events": false_alarms},
        "decision_type": _rate(sum(str(d.decision_type) == lab.decision_type for d, lab in dtype), len(dtype)),
        "pipeline": _rate(sum(_pipeline(d) == lab.pipeline for d, lab in pipe), len(pipe)),
        "confusion": {"labels": classes, "rows_are": "label", "matrix": matrix},
        "rule_precision": {k: {"matched": len(v), "precision": round(sum(v) / len(v), 4)}
                           for k, v in sorted(rule_hits.items())},
        "model_versions": sorted({d.model_version for d in decisions if d.model_version}),
        "misses": misses,
    }


def _pct(r: dict[str, Any]) -> str:
    return "–" if r["accuracy"] is None else f"{r['accuracy']:.1%} ({r['correct']}/{r['of']})"


def render_text(report: dict[str, Any], *, misses: bool = False) -> str:
    """The report for a terminal."""
    lines = [f"{report['events']} events, {report['labelled']} labelled · decided by "
             + ", ".join(f"{k} {v}" for k, v in sorted(report["decided_by"].items()))
             + f" · LLM asked (or, when off, would be) {report['llm_share']:.1%} · past the rules "
             f"{report['past_rules_share']:.1%}",
             f"intent        {_pct(report['intent'])}"]
    for tier, r in report["intent_by_tier"].items():
        lines.append(f"  by {tier:9s} {_pct(r)}")
    u = report["urgent"]
    lines += [f"priority      {_pct(report['priority'])}",
              f"urgent        recall {_pct(u['recall'])}, false alarms {u['false_alarms']}",
              f"decision type {_pct(report['decision_type'])}",
              f"pipeline      {_pct(report['pipeline'])}", "", "confusion (rows: label, columns: decided)"]
    cls = report["confusion"]["labels"]
    short = [c[:7] for c in cls]
    lines.append(" " * 17 + " ".join(f"{s:>7s}" for s in short))
    for c in cls:
        lines.append(f"{c[:16]:16s} " + " ".join(f"{report['confusion']['matrix'][c][k]:7d}" for k in cls))
    lines += ["", "rule precision (labelled events each rule matched)"]
    for rule, r in sorted(report["rule_precision"].items(), key=lambda kv: (kv[1]["precision"], kv[0])):
        lines.append(f"  {r['precision']:6.1%}  of {r['matched']:3d}  {rule}")
    if misses:
        lines += ["", "misses"]
        lines += [f"  {m['event']}: {m['want']} → {m['got']} ({m['decided_by']}, {m['confidence']:.2f}) "
                  f"{m['reasoning']}" for m in report["misses"]]
    return "\n".join(lines)


def rule_precision_from_labels(labels: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each rule's precision as people judged it: of the labelled decisions (approvals and corrections) where the
    rule matched naming an intent, how many had that intent in the end. The latest label of a decision counts."""
    last: dict[str, dict[str, Any]] = {}
    for lab in sorted(labels, key=lambda x: (x["at"], x["id"])):
        last[lab["decision_id"]] = lab
    hits: dict[str, list[bool]] = defaultdict(list)
    for lab in last.values():
        for r in (lab.get("decided") or {}).get("rules", []):
            if r.get("intent"):
                hits[r["rule"]].append(r["intent"] == lab["intent"])
    return {k: {"labelled": len(v), "right": sum(v), "precision": round(sum(v) / len(v), 4)}
            for k, v in sorted(hits.items())}
