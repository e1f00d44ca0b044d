"""An org's own locked decision cases (`rulesets/<org>/tests/*.yaml`), run with the LLM off.

A case file:
    state: {calendar: [...], loads: {...}}     # optional
    cases:
      - name: pricing email goes to sales
        event: {source: EMAIL, type: email:received, data: {...}, occurred_at: ...}
        expect: {intent: SALES_INQUIRY, decision_type: ASSIGN_PIPELINE, priority: 3,
                 pipeline: sales-inquiries, status: EXECUTED, decided_by: rules, booking_start: ...}

`expect` may name any subset of the observed fields; `matched_rules` lists rules that must be among the
matched ones. `astralis test --update` rewrites each case's `expect:` in place (the rest of the file,
comments included, is left byte for byte) with every observed field, `matched_rules` being the full list
of rules matched at the time: when a later edit changes the outcome, comparing that list with today's
names the rule that changed it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engine.agent import Agent
from engine.explain import RuleCheck, rule_checks
from engine.llm import LLMStage
from engine.loader import Located, parse_yaml
from engine.models import Decision, Event
from engine.ports import StaticState
from engine.rules import CompiledRules

FIELDS = ("intent", "decision_type", "priority", "status", "decided_by", "pipeline", "assignee", "booking_start",
          "matched_rules")


@dataclass
class CaseResult:
    """One case's outcome and, when it failed, what differed and which rules changed it."""

    file: str
    line: int
    name: str
    problems: list[str] = field(default_factory=list)
    observed: dict[str, Any] | None = None
    diff: list[dict[str, Any]] = field(default_factory=list)  # {"field", "expected", "got"}
    rules: list[str] = field(default_factory=list)  # the rules that changed the outcome, in words
    index: int = -1  # position in the file's `cases` list

    @property
    def ok(self) -> bool:
        """Whether every expectation held."""
        return not self.problems

    def to_json(self, org: str = "") -> dict[str, Any]:
        """The result as plain JSON (`astralis test --format json`)."""
        out = {"file": self.file, "line": self.line, "name": self.name, "ok": self.ok, "problems": self.problems,
               "observed": self.observed, "diff": self.diff, "rules": self.rules}
        return {"org": org, **out} if org else out


def observed(decision: Decision) -> dict[str, Any]:
    """The decision's values that cases can lock."""
    first = {str(a.type): a.params for a in reversed(decision.actions)}
    assign = first.get("ASSIGN_PIPELINE", {})
    event = first.get("CREATE_EVENT", {})
    return {"intent": str(decision.intent), "decision_type": str(decision.decision_type),
            "priority": decision.priority, "status": decision.status, "decided_by": decision.decided_by,
            "pipeline": assign.get("pipeline"), "assignee": assign.get("assignee"),
            "booking_start": event.get("start"), "matched_rules": decision.matched_rules}


def compare(expect: dict[str, Any], got: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The problems (one line each) and the per-field differences between `expect` and `got`."""
    problems: list[str] = []
    diff: list[dict[str, Any]] = []
    for key, want in expect.items():
        if key not in got:
            problems.append(f"expect.{key}: unknown key (known: {', '.join(sorted(got))})")
        elif key == "matched_rules":
            want_list = want if isinstance(want, list) else [want]
            missing = [r for r in want_list if r not in got[key]]
            if missing:
                problems.append(f"matched_rules: expected {missing} among {got[key]}")
                diff.append({"field": key, "expected": want_list, "got": got[key]})
        elif got[key] != want:
            problems.append(f"{key}: expected {want!r}, got {got[key]!r}")
            diff.append({"field": key, "expected": want, "got": got[key]})
    return problems, diff


def changed_rules(checks: list[RuleCheck], expect: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Name the rules behind a changed outcome. With the rules matched when the case was recorded
    (`expect.matched_rules`): those no longer matching (and the condition that now fails) and those
    newly matching. Without: for a changed intent, the expected intent's nearest rules and why they fail."""
    by_name = {c.rule: c for c in checks}
    now = list(got.get("matched_rules") or [])
    before = expect.get("matched_rules")
    out: list[str] = []
    if isinstance(before, list):
        for r in before:
            if r in now:
                continue
            check = by_name.get(r)
            if check is None:
                out.append(f"rule {r} no longer exists (removed, renamed or disabled)")
            else:
                out.append(f"rule {r} no longer matches: {check.why}" if check.why else f"rule {r} no longer matches")
        for r in now:
            if r not in before:
                c = by_name.get(r)
                what = f" ({c.intent or 'no intent'} {c.confidence:.2f}, {c.at})" if c else ""
                out.append(f"rule {r} now matches{what}")
        if not out and any(d != "matched_rules" for d in expect):
            out.append("the same rules match as when recorded (" + (", ".join(now) or "none") + "): the change "
                       "comes from a rule's `then`, the policy (thresholds, routing, ambiguity) or the state")
        return out
    want = expect.get("intent")
    if want is not None and want != got.get("intent"):
        candidates = [c for c in checks if c.intent == want and not c.matched and c.passed > 0]
        candidates.sort(key=lambda c: (-(c.passed / c.total), -c.confidence))
        out.extend(f"rule {c.rule} ({want}) does not match: {c.why}" for c in candidates[:3])
        if not candidates:
            out.append(f"no rule for {want} gets past its type/source conditions")
        out.extend(f"rule {c.rule} matches ({c.intent or 'no intent'} {c.confidence:.2f})" for c in checks
                   if c.matched and c.intent == got.get("intent"))
    return out


def case_files(folder: Path) -> list[tuple[Path, str]]:
    """The case files of an org's tests folder with their text."""
    paths = sorted(folder.glob("*.y*ml")) if folder.is_dir() else []
    return [(p, p.read_text(encoding="utf-8")) for p in paths]


async def run_cases(compiled: CompiledRules, files: list[tuple[Path, str]], *, explain: bool = True,
                    record: bool = False) -> list[CaseResult]:
    """Run every case of `files` against `compiled` in a dry run with the LLM off. A failed case is
    explained (`rules`) unless `explain` is false; with `record`, a case without `expect` is run too
    (to be recorded by `update_text`) instead of failing."""
    results: list[CaseResult] = []
    org = compiled.bundle.org.org
    for path, text in files:
        doc = parse_yaml(text, str(path))
        if not isinstance(doc, Located):
            results.append(CaseResult(str(path), doc.line, "(file)", [str(doc)]))
            continue
        try:
            state = StaticState.from_json(doc.data.get("state") or {})
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            results.append(CaseResult(str(path), doc.line(("state",)), "(file)", [f"state: {exc}"]))
            continue
        agent = Agent(lambda o: compiled if o == org else None, LLMStage(None), state=state)
        cases = doc.data.get("cases") or []
        if not isinstance(cases, list):
            results.append(CaseResult(str(path), doc.line(("cases",)), "(file)", ["`cases` must be a list"]))
            continue
        for i, case in enumerate(cases):
            line = doc.line(("cases", i))
            name = str(case.get("name", f"case {i + 1}")) if isinstance(case, dict) else f"case {i + 1}"
            result = CaseResult(str(path), line, name, index=i)
            results.append(result)
            if not isinstance(case, dict) or not isinstance(case.get("event"), dict):
                result.problems.append("a case needs `event` and `expect` mappings")
                continue
            expect = case.get("expect")
            if not isinstance(expect, dict) and not record:
                result.problems.append("no `expect` mapping (run `astralis test --update` to record one)")
                continue
            try:
                event = Event.model_validate({"org": org, "id": f"case-{i + 1}", **case["event"]})
            except ValidationError as exc:
                result.problems.append(f"event: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")
                continue
            decision = await agent.process(event, dry_run=True)
            result.observed = observed(decision)
            if isinstance(expect, dict):
                result.problems, result.diff = compare(expect, result.observed)
                if result.diff and explain:
                    result.rules = changed_rules(rule_checks(compiled, event), expect, result.observed)
    return results


# --------------------------------------------------------------------------- --update

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool | int | float):
        return json.dumps(v)
    s = str(v)
    if _PLAIN.match(s) and yaml.safe_load(s) == s:
        return s
    return json.dumps(s, ensure_ascii=False)


def format_expect(values: dict[str, Any], column: int, width: int = 110) -> str:
    """`expect: {...}` as a flow mapping, wrapped under the brace like the hand-written cases."""
    items = []
    for k, v in values.items():
        text = "[" + ", ".join(_scalar(x) for x in v) + "]" if isinstance(v, list) else _scalar(v)
        items.append(f"{k}: {text}")
    head = "expect: {"
    indent = " " * (column + len(head))
    lines: list[str] = []
    cur = head
    for n, item in enumerate(items):
        piece = item + ("}" if n == len(items) - 1 else ",")
        if cur not in (head, indent) and column + len(cur) + 1 + len(piece) > width:
            lines.append(cur)
            cur = indent + piece
        else:
            cur = cur + ("" if cur in (head, indent) else " ") + piece
    lines.append(cur if items else head + "}")
    return "\n".join(lines)


def recorded(obs: dict[str, Any]) -> dict[str, Any]:
    """The expectation `--update` writes for an observation: every field that has a value, in a fixed
    order (a pipeline or booking time that is absent follows from the locked decision type)."""
    return {k: obs[k] for k in FIELDS if obs.get(k) is not None}


def _end(node: yaml.Node, text: str) -> int:
    # Where the node's own text ends: the last leaf of a block collection (a block mapping's end mark
    # lies at the next key, past comments and blank lines), without trailing whitespace.
    while isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(last, tuple) else last
    end = node.end_mark.index
    while end > 0 and text[end - 1] in " \t\r\n":
        end -= 1
    return end


def update_text(text: str, results: list[CaseResult]) -> tuple[str, list[str]]:
    """`text` with the `expect:` of every case in `results` (by index, with an observation) replaced
    by what was observed; a case without `expect` gets one after its last key. Returns the new text
    and notes on cases left alone."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return text, ["not a mapping: nothing recorded"]
    seq = next((v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "cases"), None)
    if not isinstance(seq, yaml.SequenceNode):
        return text, ["no `cases` list: nothing recorded"]
    edits: list[tuple[int, int, str]] = []
    notes: list[str] = []
    wanted: dict[int, dict[str, Any]] = {}
    for r in results:
        if r.observed is None or not 0 <= r.index < len(seq.value):
            continue
        case = seq.value[r.index]
        if not isinstance(case, yaml.MappingNode) or case.flow_style or not case.value:
            notes.append(f"{r.name}: a case written as a flow mapping is not rewritten")
            continue
        values = recorded(r.observed)
        wanted[r.index] = values
        key = next((k for k, _ in case.value if isinstance(k, yaml.ScalarNode) and k.value == "expect"), None)
        if key is not None:
            node = next(v for k, v in case.value if k is key)
            edits.append((key.start_mark.index, _end(node, text), format_expect(values, key.start_mark.column)))
        else:
            column = case.value[0][0].start_mark.column
            at = _end(case.value[-1][1], text)
            edits.append((at, at, "\n" + " " * column + format_expect(values, column)))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    check = yaml.safe_load(text) or {}
    got = {i: c.get("expect") for i, c in enumerate(check.get("cases") or []) if isinstance(c, dict)}
    bad = [i for i, v in wanted.items() if got.get(i) != v]
    if bad:
        raise ValueError(f"rewriting `expect:` of case(s) {bad} would not read back the same values")
    return text, notes
