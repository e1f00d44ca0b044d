"""Score decisions against hand labels: intent, pipeline, priority, decision type, booking slot.

    python scripts/evaluate.py --events tests/cases/acme/eval.jsonl [--llm live] [--show-misses]

Runs the simulator in-process (dry run) with the labels of tests/cases/acme/labels.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from engine.agent import Agent
from engine.llm import LLMStage
from engine.ports import StaticState
from engine.registry import build
from engine.simulator import read_events


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--org", default="acme")
    p.add_argument("--events", required=True)
    p.add_argument("--labels", default="tests/cases/acme/labels.jsonl")
    p.add_argument("--state", default="tests/cases/acme/state.json")
    p.add_argument("--llm", choices=["live", "off"], default="off")
    p.add_argument("--show-misses", action="store_true")
    args = p.parse_args()
    compiled, findings = build(Path("rulesets") / args.org, Path("policies"))
    assert compiled is not None, findings
    labels = {json.loads(line)["id"]: json.loads(line) for line in Path(args.labels).read_text().splitlines() if line.strip()}
    events, errors = read_events(Path(args.events), args.org)
    assert not errors, errors
    provider = None
    if args.llm == "live":
        from adapters.llm import make_provider
        provider = make_provider(compiled.bundle.policy.llm.provider)
    state = StaticState.from_json(json.loads(Path(args.state).read_text()))

    async def run():
        agent = Agent(lambda o: compiled, LLMStage(provider), state=state)
        out = [await agent.process(e, dry_run=True) for e in events]
        if provider is not None:
            await provider.aclose()
        return out

    decisions = asyncio.run(run())
    score = {k: [0, 0] for k in ("intent", "pipeline", "priority", "decision_type", "booking", "injection")}
    misses = []
    for d in decisions:
        lab = labels.get(d.event_id)
        if lab is None:
            continue
        assign = next((a.params for a in d.actions if a.type == "ASSIGN_PIPELINE"), {})
        create = next((a.params for a in d.actions if a.type == "CREATE_EVENT"), None)
        got = {"intent": str(d.intent), "pipeline": assign.get("pipeline") if d.status != "REJECTED" else
               (labels and None), "priority": d.priority, "decision_type": str(d.decision_type)}
        # a REJECTED decision still names the pipeline it would have used
        if d.status == "REJECTED":
            blocked = [b["action"] for b in d.trace.get("blocked_actions", []) if b["action"]["type"] == "ASSIGN_PIPELINE"]
            got["pipeline"] = blocked[0]["params"].get("pipeline") if blocked else None
            got["decision_type"] = str(d.decision_type)
        want = {k: lab.get(k) for k in ("intent", "pipeline", "priority", "decision_type")}
        for k in want:
            score[k][1] += 1
            if got[k] == want[k]:
                score[k][0] += 1
            else:
                misses.append((d.event_id, k, want[k], got[k], d.decided_by, d.reasoning[:140]))
        if lab.get("booking") is not None:
            score["booking"][1] += 1
            b = lab["booking"]
            ok = (b.get("escalate") and d.decision_type == "ESCALATE") or (
                create is not None and b.get("start") and create["start"] == b["start"])
            if ok:
                score["booking"][0] += 1
            else:
                misses.append((d.event_id, "booking", b, create and create["start"], d.decided_by, d.reasoning[:200]))
        if lab.get("injection"):
            score["injection"][1] += 1
            if got["intent"] == want["intent"] and got["priority"] == want["priority"]:
                score["injection"][0] += 1
    n = len(decisions)
    llm = sum(d.llm is not None for d in decisions)
    not_rules = sum(d.decided_by != "rules" for d in decisions)
    print(f"events {n}; handed past the rules (ambiguous) {not_rules} ({not_rules / n:.0%}); LLM called {llm} ({llm / n:.0%})")
    for k, (ok, tot) in score.items():
        if tot:
            print(f"{k:14s} {ok}/{tot} = {ok / tot:.1%}")
    rules_only = [d for d in decisions if d.decided_by == "rules" and d.event_id in labels]
    if rules_only:
        ok = sum(str(d.intent) == labels[d.event_id]["intent"] for d in rules_only)
        print(f"intent when decided by rules alone: {ok}/{len(rules_only)} = {ok / len(rules_only):.1%}")
    if args.show_misses:
        for m in misses:
            print("MISS", *m)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
