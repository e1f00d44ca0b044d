"""An org's own locked decision cases (`rulesets/<org>/tests/*.yaml`), run with the LLM off.

A case file:
    state: {calendar: [...], loads: {...}}     # optional
    cases:
      - name: pricing email goes to sales
        event: {source: EMAIL, type: email:received, data: {...}, occurred_at: ...}
        expect: {intent: SALES_INQUIRY, decision_type: ASSIGN_PIPELINE, priority: 3,
                 pipeline: sales-inquiries, status: EXECUTED, decided_by: rules, booking_start: ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.agent import Agent
from engine.llm import LLMStage
from engine.loader import Located, parse_yaml
from engine.models import Decision, Event
from engine.ports import StaticState
from engine.rules import CompiledRules


@dataclass
class CaseResult:
    """One case's outcome and, when it failed, what differed."""

    file: str
    line: int
    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every expectation held."""
        return not self.problems


def observed(decision: Decision) -> dict[str, Any]:
    """The decision's values that cases can lock."""
    first = {str(a.type): a.params for a in reversed(decision.actions)}
    assign = first.get("ASSIGN_PIPELINE", {})
    event = first.get("CREATE_EVENT", {})
    return {"intent": str(decision.intent), "decision_type": str(decision.decision_type),
            "priority": decision.priority, "status": decision.status, "decided_by": decision.decided_by,
            "pipeline": assign.get("pipeline"), "assignee": assign.get("assignee"),
            "booking_start": event.get("start"), "matched_rules": decision.matched_rules}


def _check(expect: dict[str, Any], got: dict[str, Any]) -> list[str]:
    problems = []
    for key, want in expect.items():
        if key not in got:
            problems.append(f"expect.{key}: unknown key (known: {', '.join(sorted(got))})")
        elif key == "matched_rules":
            missing = [r for r in want if r not in got[key]]
            if missing:
                problems.append(f"matched_rules: expected {missing} among {got[key]}")
        elif got[key] != want:
            problems.append(f"{key}: expected {want!r}, got {got[key]!r}")
    return problems


def case_files(folder: Path) -> list[tuple[Path, str]]:
    """The case files of an org's tests folder with their text."""
    paths = sorted(folder.glob("*.y*ml")) if folder.is_dir() else []
    return [(p, p.read_text(encoding="utf-8")) for p in paths]


async def run_cases(compiled: CompiledRules, files: list[tuple[Path, str]]) -> list[CaseResult]:
    """Run every case of `files` against `compiled` in a dry run with the LLM off."""
    results: list[CaseResult] = []
    org = compiled.bundle.org.org
    for path, text in files:
        doc = parse_yaml(text, str(path))
        if not isinstance(doc, Located):
            results.append(CaseResult(str(path), doc.line, "(file)", [str(doc)]))
            continue
        state = StaticState.from_json(doc.data.get("state") or {})
        agent = Agent(lambda o: compiled if o == org else None, LLMStage(None), state=state)
        for i, case in enumerate(doc.data.get("cases") or []):
            line = doc.line(("cases", i))
            name = str(case.get("name", f"case {i + 1}")) if isinstance(case, dict) else f"case {i + 1}"
            result = CaseResult(str(path), line, name)
            results.append(result)
            if not isinstance(case, dict) or not isinstance(case.get("expect"), dict):
                result.problems.append("a case needs `event` and `expect` mappings")
                continue
            try:
                event = Event.model_validate({"org": org, "id": f"case-{i + 1}", **(case.get("event") or {})})
            except ValidationError as exc:
                result.problems.append(f"event: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")
                continue
            decision = await agent.process(event, dry_run=True)
            result.problems = _check(case["expect"], observed(decision))
    return results
