"""Dry runs: decisions for a stream of past events, with no side effects, and their summary."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.agent import Agent
from engine.models import Decision, Event


@dataclass(frozen=True)
class EventError:
    """A line of an events file that is not a valid event."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: invalid_event: {self.message}"


def read_events(path: Path, org: str | None = None) -> tuple[list[Event], list[EventError]]:
    """Parse a JSONL file of event envelopes; every bad line is reported with its number and field."""
    events: list[Event] = []
    errors: list[EventError] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(EventError(str(path), n, f"not JSON: {exc.msg} at column {exc.colno}"))
            continue
        if isinstance(raw, dict) and org and "org" not in raw:
            raw["org"] = org
        try:
            event = Event.model_validate(raw)
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors())
            errors.append(EventError(str(path), n, detail))
            continue
        if org and event.org != org:
            errors.append(EventError(str(path), n, f"org: event is for '{event.org}', simulating '{org}'"))
            continue
        if event.id in seen:
            errors.append(EventError(str(path), n, f"id: '{event.id}' repeats line {seen[event.id]}"))
            continue
        seen[event.id] = n
        events.append(event)
    return events, errors


async def simulate(agent: Agent, events: Iterable[Event]) -> list[Decision]:
    """Decide for each event in a dry run: nothing executed, stored, published or rate-limited."""
    return [await agent.process(e, dry_run=True) for e in events]


def summarize(decisions: list[Decision]) -> dict[str, Any]:
    """Counts and rates an operator compares between two rule revisions."""
    n = len(decisions) or 1
    by = lambda key: dict(sorted(Counter(str(getattr(d, key)) for d in decisions).items()))  # noqa: E731
    llm_calls = [d for d in decisions if d.llm is not None]
    return {
        "events": len(decisions),
        "by_intent": by("intent"),
        "by_decision_type": by("decision_type"),
        "by_status": by("status"),
        "by_decided_by": by("decided_by"),
        "ambiguous_rate": round(sum(d.decided_by != "rules" for d in decisions) / n, 4),
        "llm_consulted_rate": round(len(llm_calls) / n, 4),
        "auto_execute_rate": round(sum(d.status == "EXECUTED" for d in decisions) / n, 4),
        "approval_rate": round(sum(d.status == "REQUIRES_APPROVAL" for d in decisions) / n, 4),
        "llm_tokens": sum(d.llm.input_tokens + d.llm.output_tokens for d in llm_calls if d.llm is not None),
        "revisions": sorted({d.revision for d in decisions}),
    }


def _cell(s: object, width: int) -> str:
    text = str(s)
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(decisions: list[Decision]) -> str:
    """A fixed-width table, one decision a row, then the summary."""
    cols = [("event", 18), ("type", 16), ("intent", 16), ("pri", 3), ("decision", 17), ("conf", 4),
            ("by", 8), ("status", 17), ("why", 60)]
    lines = ["  ".join(name.ljust(w) for name, w in cols)]
    for d in decisions:
        row = [d.event_id, d.input.get("type", ""), d.intent, d.priority, d.decision_type, f"{d.confidence:.2f}",
               d.decided_by, d.status, d.reasoning]
        lines.append("  ".join(_cell(v, w).ljust(w) for v, (_, w) in zip(row, cols, strict=True)))
    s = summarize(decisions)
    lines += ["", f"{s['events']} events · ambiguous for the rules {s['ambiguous_rate']:.0%} · LLM consulted "
              f"{s['llm_consulted_rate']:.0%} · auto-execute "
              f"{s['auto_execute_rate']:.0%} · approval {s['approval_rate']:.0%}",
              "intents: " + ", ".join(f"{k} {v}" for k, v in s["by_intent"].items()),
              "decided by: " + ", ".join(f"{k} {v}" for k, v in s["by_decided_by"].items())]
    return "\n".join(lines)
